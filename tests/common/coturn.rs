//! coturn's tools (`turnutils_peer`, `turnutils_uclient`) and bounded child processes.

use super::wait::{echoes, wait_for, wait_until, within};
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's coturn package (scripts/test.sh does)");
}

/// `turnutils_peer` echoing on two consecutive free loopback ports (it binds `-p PORT` and
/// PORT+1, and `turnutils_uclient` sends its RTCP half to PORT+1: with PORT+1 taken by
/// another process half the traffic is lost). The ports are ephemeral ones, outside every
/// test relay range.
pub struct Peer {
    child: Child,
    pub port: u16,
}

impl Peer {
    pub fn start() -> Peer {
        let free = |p: u16| UdpSocket::bind(("127.0.0.1", p)).is_ok();
        let port = (0..1000)
            .map(|_| {
                UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .find(|&p| p < u16::MAX && free(p + 1))
            .expect("two consecutive free ports");
        let child = Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer");
        for p in [port, port + 1] {
            let addr = SocketAddr::from(([127, 0, 0, 1], p));
            wait_for("turnutils_peer to echo", Duration::from_secs(10), || {
                echoes(addr)
            });
        }
        Peer { child, port }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command with a time limit; returns (exit code, stdout+stderr).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut status = None;
    let exited = wait_until(within(limit), || match child.try_wait() {
        Ok(Some(s)) => {
            status = s.code();
            true
        }
        _ => false,
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    (status, out)
}

pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.rfind(key)? + key.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Runs `turnutils_uclient` against `server_port` with echo peer `peer_port` and `args`
/// (e.g. `-m 10 -n 300 -l 170`), as user alice/secret unless `args` names a user (`-u`);
/// returns (exit code, output).
pub fn uclient(
    server_port: u16,
    peer_port: u16,
    args: &[&str],
    limit: Duration,
) -> (Option<i32>, String) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["-e", "127.0.0.1", "-r", &peer_port.to_string()].map(String::from));
    if !args.contains(&"-u") {
        all.extend(["-u", "alice", "-w", "secret"].map(String::from));
    }
    all.extend([
        "-p".to_string(),
        server_port.to_string(),
        "127.0.0.1".to_string(),
    ]);
    run_bounded(Command::new(tool("turnutils_uclient")).args(&all), limit)
}
