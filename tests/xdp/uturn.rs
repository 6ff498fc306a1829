//! The real `uturn` binary run inside a test's network namespace, its log in the tests'
//! tmp dir (kept for a look after a failure); killed by its own pid on drop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::lab::Netns;

pub struct Server {
    child: Child,
    pub log: PathBuf,
}

impl Server {
    /// `uturn ARGS` in `ns`; as user `nobody` (no capabilities) when `unprivileged`.
    pub fn start(ns: &Netns, args: &[&str], unprivileged: bool) -> Server {
        let log = PathBuf::from(format!("{}/{}.log", env!("CARGO_TARGET_TMPDIR"), ns.name));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name]);
        if unprivileged {
            cmd.args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
            cmd.args(["--inh-caps=-all", "--bounding-set=-all"]);
        }
        let child = cmd
            .arg(env!("CARGO_BIN_EXE_uturn"))
            .args(args)
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .stderr(Stdio::null())
            .spawn()
            .expect("start uturn");
        Server { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing every one of `parts`; returns that line.
    pub fn wait_for_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(line) = self
                .log_text()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?} in {}:\n{}",
                self.log.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
