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

/// Each server in this binary gets its own listening port and a relay range of 100 ports,
/// below the kernel's ephemeral range (32768-60999) so client sockets never hold a relay
/// port; the block depends on the process id so test binaries running at the same time
/// rarely meet, and binding failures are retried with the next slot.
pub fn next_ports() -> (u16, u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) % 18;
    let base = 22000 + (std::process::id() % 5) as u16 * 2000 + slot * 110;
    // listen, relay min, relay max.
    (base, base + 2, base + 101)
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

/// A `redis-server` of the tests' own on a free loopback port, nothing persisted.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer { child: None, port };
        r.restart();
        r
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        // Its own directory: `turnadmin` makes Redis SAVE, and a dump.rdb in a shared
        // directory would be loaded by every later redis-server started there.
        let dir = std::env::temp_dir().join(format!("uturn-redis-{}", self.port));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install Debian's redis-server (scripts/test.sh does)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.connection().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not come up on port {}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and forgets what it saved.
    pub fn kill_and_wipe(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("uturn-redis-{}", self.port)),
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn connection(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_and_wipe();
    }
}

/// Collects every message published on `pattern`, resubscribing when Redis comes back.
pub struct Subscriber {
    pub messages: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    subscribed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Subscriber {
    pub fn start(url: String, pattern: &str) -> Subscriber {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::{Arc, Mutex};
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicU64::new(0));
        let (m, s, sub, pattern) = (
            messages.clone(),
            stop.clone(),
            subscribed.clone(),
            pattern.to_owned(),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok(mut conn) = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(300)))
                else {
                    std::thread::sleep(Duration::from_millis(30));
                    continue;
                };
                let mut pubsub = conn.as_pubsub();
                if pubsub.psubscribe(&pattern).is_err() {
                    continue;
                }
                let _ = pubsub.set_read_timeout(Some(Duration::from_millis(100)));
                sub.fetch_add(1, Ordering::SeqCst);
                while !s.load(Ordering::Relaxed) {
                    match pubsub.get_message() {
                        Ok(msg) => {
                            let payload: String = msg.get_payload().unwrap_or_default();
                            m.lock()
                                .unwrap()
                                .push((msg.get_channel_name().to_owned(), payload));
                        }
                        Err(e) if e.is_timeout() => {}
                        Err(_) => break,
                    }
                }
            }
        });
        let me = Subscriber {
            messages,
            stop,
            thread: Some(thread),
            subscribed,
        };
        me.wait_subscribed(1);
        me
    }

    /// Waits until the subscriber has (re)subscribed `n` times in all.
    pub fn wait_subscribed(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.subscribed.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "could not subscribe");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until `pred` holds on the messages so far.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[(String, String)]) -> bool,
    ) -> Vec<(String, String)> {
        let deadline = Instant::now() + limit;
        loop {
            let snap = self.snapshot();
            if pred(&snap) {
                return snap;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; messages:\n{}",
                    snap.iter()
                        .map(|(c, p)| format!("{c} {p}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
