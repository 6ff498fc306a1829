//! Interop with clients uturn did not write: coturn's `turnutils_stunclient`,
//! `turnutils_uclient` + `turnutils_peer`, and the webrtc-rs `turn` crate, against the real
//! `uturn` binary on loopback, for both data-path backends. Plus a hostile-datagram barrage.
//!
//! The coturn tools come from Debian's `coturn` package (scripts/test.sh installs it); a
//! missing tool fails the test with a message saying so, it is never skipped silently.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use uturn::stun::{self, Class, Message, MessageBuilder, Method};

/// Each server in this binary gets its own listening port and relay range, derived from
/// the process id so parallel test binaries rarely meet; binding failures are retried.
fn next_ports() -> (u16, u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 20000 + (std::process::id() % 40) as u16 * 1000 + slot * 100;
    // listen, relay min, relay max (relay ranges live above 45000).
    let relay = 45000 + (std::process::id() % 40) as u16 * 500 + slot * 40;
    (base, relay, relay + 39)
}

fn tool(name: &str) -> PathBuf {
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

    fn wait_ready(&mut self, timeout: Duration) -> bool {
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
fn binding(server: SocketAddr, timeout: Duration) -> Option<SocketAddr> {
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
struct Peer {
    child: Child,
    port: u16,
}

impl Peer {
    fn start() -> Peer {
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
fn run_bounded(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
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

fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.rfind(key)? + key.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn stunclient(backend: &str) {
    let server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let (code, out) = run_bounded(
        Command::new(tool("turnutils_stunclient")).args([
            "-p",
            &server.port.to_string(),
            "127.0.0.1",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
}

fn uclient(backend: &str, send_indications: bool) {
    let mut server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let peer = Peer::start();
    let mut args = vec!["-m", "10", "-n", "300", "-l", "170", "-e", "127.0.0.1"];
    if send_indications {
        args.push("-s");
    }
    let peer_port = peer.port.to_string();
    let port = server.port.to_string();
    args.extend([
        "-r",
        &peer_port,
        "-u",
        "alice",
        "-w",
        "secret",
        "-p",
        &port,
        "127.0.0.1",
    ]);
    let (code, out) = run_bounded(
        Command::new(tool("turnutils_uclient")).args(&args),
        Duration::from_secs(60),
    );
    let log = server.log_text();
    assert_eq!(code, Some(0), "uclient failed:\n{out}\nserver log:\n{log}");
    assert_eq!(number_after(&out, "tot_send_msgs="), Some(3000), "{out}");
    assert_eq!(number_after(&out, "tot_recv_msgs="), Some(3000), "{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
    assert!(server.alive());
    assert_eq!(server.stop(), Some(0), "graceful stop exits 0");
}

fn loopback_peer_refused(backend: &str) {
    let server = Uturn::start(backend, &[]);
    let peer = Peer::start();
    let (_, out) = run_bounded(
        Command::new(tool("turnutils_uclient")).args([
            "-m",
            "1",
            "-n",
            "5",
            "-l",
            "100",
            "-e",
            "127.0.0.1",
            "-r",
            &peer.port.to_string(),
            "-u",
            "alice",
            "-w",
            "secret",
            "-p",
            &server.port.to_string(),
            "127.0.0.1",
        ]),
        Duration::from_secs(30),
    );
    assert!(
        out.contains("error 403"),
        "expected a 403 for a loopback peer:\n{out}"
    );
}

fn webrtc_client(backend: &str) {
    let server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let server_addr = server.addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use webrtc_util::Conn;
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        // Echo peer.
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = peer.recv_from(&mut buf).await {
                let _ = peer.send_to(&buf[..n], from).await;
            }
        });
        let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = turn::client::Client::new(turn::client::ClientConfig {
            stun_serv_addr: server_addr.to_string(),
            turn_serv_addr: server_addr.to_string(),
            username: "alice".into(),
            password: "secret".into(),
            realm: "example.org".into(),
            software: String::new(),
            rto_in_ms: 0,
            conn: std::sync::Arc::new(conn),
            vnet: None,
        })
        .await
        .expect("client");
        client.listen().await.expect("listen");
        let mapped = client.send_binding_request().await.expect("binding");
        assert_eq!(mapped.ip().to_string(), "127.0.0.1");
        let relay = client.allocate().await.expect("allocate");
        let relay_addr = relay.local_addr().expect("relay addr");
        assert_eq!(relay_addr.ip().to_string(), "127.0.0.1");
        // The first send installs a permission; later ones go over a channel once bound.
        let mut echoed = 0;
        let mut buf = vec![0u8; 1500];
        for i in 0..30u32 {
            let msg = format!("webrtc-rs packet {i}");
            relay
                .send_to(msg.as_bytes(), peer_addr)
                .await
                .expect("send");
            match tokio::time::timeout(Duration::from_secs(2), relay.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => {
                    assert_eq!(from, peer_addr);
                    assert_eq!(&buf[..n], msg.as_bytes());
                    echoed += 1;
                }
                other => panic!("no echo for packet {i}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(echoed, 30);
        relay.close().await.expect("close relay");
        client.close().await.expect("close client");
    });
    drop(server);
}

fn hostile_datagrams(backend: &str) {
    let mut server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let target = server.addr();
    let socks: Vec<UdpSocket> = (0..16)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut buf = [0u8; 600];
    for i in 0..30_000usize {
        let len = (rand() % 600) as usize;
        for b in buf[..len].iter_mut() {
            *b = rand() as u8;
        }
        match i % 5 {
            // STUN header with a lying length and the right cookie.
            0 if len >= 20 => {
                buf[0] = 0x00;
                buf[1] = 0x03;
                buf[2..4].copy_from_slice(&(rand() as u16).to_be_bytes());
                buf[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
            }
            // ChannelData with a lying length.
            1 if len >= 4 => {
                buf[0] = 0x40 | (rand() as u8 & 0x3F);
            }
            // A valid-looking STUN header, truncated attributes.
            2 if len >= 24 => {
                buf[0] = 0x00;
                buf[1] = 0x01;
                buf[2..4].copy_from_slice(&((len - 20) as u16 & !3).to_be_bytes());
                buf[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
                buf[20..22].copy_from_slice(&0x0006u16.to_be_bytes());
                buf[22..24].copy_from_slice(&0xFFFFu16.to_be_bytes());
            }
            _ => {}
        }
        let _ = socks[i % socks.len()].send_to(&buf[..len], target);
        if i % 2000 == 0 {
            // Let the server breathe so the kernel queue is not what drops everything.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(server.alive(), "server died:\n{}", server.log_text());
    let mut answered = false;
    for _ in 0..20 {
        if binding(target, Duration::from_millis(500)).is_some() {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "no Binding answer after the barrage:\n{}",
        server.log_text()
    );
    assert_eq!(server.stop(), Some(0));
}

macro_rules! both_backends {
    ($($name:ident => $body:expr;)*) => {
        mod io_uring {
            use super::*;
            $(#[test] fn $name() { let f: fn(&str) = $body; f("io-uring"); })*
        }
        mod portable {
            use super::*;
            $(#[test] fn $name() { let f: fn(&str) = $body; f("portable"); })*
        }
    };
}

both_backends! {
    stunclient_gets_reflexive_address => stunclient;
    uclient_channel_data_zero_loss => |b| uclient(b, false);
    uclient_send_indications_zero_loss => |b| uclient(b, true);
    uclient_loopback_peer_refused_without_option => loopback_peer_refused;
    webrtc_rs_client_allocates_and_relays => webrtc_client;
    hostile_datagrams_leave_server_answering => hostile_datagrams;
}
