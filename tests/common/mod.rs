//! Helpers shared by the integration tests: the real `uturn` binary on loopback with its
//! own ports, coturn's tools, bounded child processes, a redis-server of the tests' own.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use uturn::stun::{self, Class, Message, MessageBuilder, Method};

/// Each server in this binary gets its own listening port and relay range, derived from
/// the process id so parallel test binaries rarely meet; binding failures are retried.
pub fn next_ports() -> (u16, u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 20000 + (std::process::id() % 40) as u16 * 1000 + slot * 100;
    // listen, relay min, relay max (relay ranges live above 45000).
    let relay = 45000 + (std::process::id() % 40) as u16 * 500 + slot * 40;
    (base, relay, relay + 39)
}

pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's coturn package (scripts/test.sh does)");
}

pub struct Uturn {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Uturn {
    /// Starts `uturn` with the interop options plus `extra`, waits until it answers Binding.
    pub fn start(backend: &str, extra: &[&str]) -> Uturn {
        for _attempt in 0..5 {
            let (port, min, max) = next_ports();
            let log = std::env::temp_dir()
                .join(format!("uturn-interop-{}-{port}.log", std::process::id()));
            let file = std::fs::File::create(&log).unwrap();
            let mut args: Vec<String> = [
                "--listening-ip",
                "127.0.0.1",
                "--relay-ip",
                "127.0.0.1",
                "--listening-port",
                &port.to_string(),
                "--min-port",
                &min.to_string(),
                "--max-port",
                &max.to_string(),
                "--realm",
                "example.org",
                "--user",
                "alice:secret",
                "--lt-cred-mech",
                "--backend",
                backend,
                "--log-level",
                "debug",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let child = Command::new(env!("CARGO_BIN_EXE_uturn"))
                .args(&args)
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .expect("spawn uturn");
            let mut server = Uturn { child, port, log };
            if server.wait_ready(Duration::from_secs(10)) {
                return server;
            }
            let log = server.log_text();
            server.stop();
            if !log.contains("in use") {
                panic!("uturn did not answer Binding; log:\n{log}");
            }
        }
        panic!("could not find free ports for uturn");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if binding(self.addr(), Duration::from_millis(200)).is_some() {
                return true;
            }
        }
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Uturn {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A STUN Binding round trip; returns the reflexive address.
pub fn binding(server: SocketAddr, timeout: Duration) -> Option<SocketAddr> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Class::Request, Method::BINDING, &[7; 12]);
    sock.send_to(&req, server).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let msg = Message::parse(&buf[..n]).ok()?;
    if msg.class() != Class::Success {
        return None;
    }
    msg.xor_address(stun::XOR_MAPPED_ADDRESS).ok()?
}

/// `turnutils_peer` echoing on a free loopback port.
pub struct Peer {
    child: Child,
    pub port: u16,
}

impl Peer {
    pub fn start() -> Peer {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer");
        std::thread::sleep(Duration::from_millis(200));
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
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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

