//! Servers under test: the real `uturn` binary on loopback with its own ports, and
//! in-process servers started through the library.

use super::wait::{wait_until, within};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use uturn::stun::{self, Class, Message, MessageBuilder, Method};

/// Each server in this binary gets its own listening port and a relay range of 100 ports,
/// below the kernel's ephemeral range (32768-60999) so client sockets never hold a relay
/// port; the block depends on the process id so test binaries running at the same time
/// rarely meet, and binding failures are retried with the next slot. A slot whose
/// listening port another process holds is skipped: uturn binds with SO_REUSEPORT, so a
/// second server on the same port would start fine and silently take half the traffic.
pub fn next_ports() -> (u16, u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let mut base = 0;
    for _ in 0..18 {
        let slot = NEXT.fetch_add(1, Ordering::Relaxed) % 18;
        base = 22000 + (std::process::id() % 5) as u16 * 2000 + slot * 110;
        if UdpSocket::bind(("127.0.0.1", base)).is_ok() {
            break;
        }
    }
    // listen, relay min, relay max.
    (base, base + 2, base + 101)
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

    /// Waits until the server answers Binding; false if it exited or `timeout` passed.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let addr = self.addr();
        let child = &mut self.child;
        let mut exited = false;
        wait_until(within(timeout), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited || binding(addr, Duration::from_millis(200)).is_some()
        }) && !exited
    }

    /// The server's process id (for /proc/<pid>/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        let mut code = None;
        let child = &mut self.child;
        if wait_until(within(Duration::from_secs(10)), || match child.try_wait() {
            Ok(Some(status)) => {
                code = status.code();
                true
            }
            _ => false,
        }) {
            return code;
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

/// The configuration in-process tests start from: listening and relaying on 127.0.0.1,
/// realm example.org, user alice/secret, loopback peers allowed, `shards` shards (all on
/// core 0), then `tweak`.
pub fn loopback_config(
    shards: usize,
    tweak: impl FnOnce(&mut uturn::config::Config),
) -> uturn::config::Config {
    let mut c = uturn::config::Config {
        listening_ips: vec!["127.0.0.1".parse().unwrap()],
        relay_ips: vec!["127.0.0.1".parse().unwrap()],
        realm: "example.org".into(),
        users: vec![("alice".into(), "secret".into())],
        allow_loopback_peers: true,
        cores: vec![0; shards],
        ..uturn::config::Config::default()
    };
    tweak(&mut c);
    c
}

/// Starts an in-process server from `config` on a free listening port and a relay range of
/// `ports` ports inside `area` (a block below the ephemeral port range, so no client socket
/// holds a relay port), trying other ranges while ports are in use.
pub fn start_in_process(
    config: &uturn::config::Config,
    observer: Option<std::sync::Arc<dyn uturn::auth::Observer>>,
    sink: Option<std::sync::Arc<dyn uturn::stats::EventSink>>,
    area: std::ops::Range<u16>,
    ports: u16,
) -> uturn::shard::Running {
    let span = area.end - area.start - ports;
    for attempt in 0..20u16 {
        let mut c = config.clone();
        c.listening_port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        c.min_port = area.start + ((std::process::id() as u16 % 50) * 200 + attempt * 1429) % span;
        c.max_port = c.min_port + ports - 1;
        let observer = observer
            .clone()
            .unwrap_or_else(|| uturn::observer_from_config(&c));
        match uturn::shard::start(&c, observer, sink.clone()) {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("start: {e}"),
        }
    }
    panic!("no free ports");
}

/// Starts a server with relay ports `min..=max` (each test has its own range) on a free
/// listening port.
pub fn start_with_range(
    mut config: uturn::config::Config,
    observer: Option<std::sync::Arc<dyn uturn::auth::Observer>>,
    sink: Option<std::sync::Arc<dyn uturn::stats::EventSink>>,
    (min, max): (u16, u16),
) -> uturn::shard::Running {
    config.min_port = min;
    config.max_port = max;
    let observer = observer.unwrap_or_else(|| uturn::observer_from_config(&config));
    for _ in 0..20 {
        config.listening_port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        match uturn::shard::start(&config, observer.clone(), sink.clone()) {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("start: {e}"),
        }
    }
    panic!("no free listening port");
}

pub fn sum(
    reports: &[uturn::shard::ShardReport],
    f: impl Fn(&uturn::turn::ServerCounters) -> u64,
) -> u64 {
    reports.iter().map(|r| f(&r.counters)).sum()
}

/// Sums `key: N` over every shard's final counters in a binary's log.
pub fn log_counter(log: &str, key: &str) -> u64 {
    let pat = format!("{key}: ");
    log.match_indices(&pat)
        .filter_map(|(at, _)| {
            let digits: String = log[at + pat.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}
