//! SIGHUP live reload of the `-c` file, against the real binary: ten reloads under
//! relaying traffic lose nothing; a removed user can no longer allocate while its
//! allocation keeps relaying; options that cannot change live are reported; a file that
//! does not parse leaves the running configuration.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uturn::client::{Client, Incoming};

mod common;
use common::*;

/// uturn started with nothing but `-c FILE` (the file's user list must not be replaced by
/// a command-line one).
struct Server {
    uturn: Uturn,
    addr: SocketAddr,
    conf: PathBuf,
    min: u16,
    max: u16,
}

/// Reloads, starts and traffic wait this long at most: generous, since it costs nothing
/// when things work and a loaded machine can stall the server for seconds.
const LIMIT: Duration = Duration::from_secs(60);

impl Server {
    fn start(users: &[&str]) -> Server {
        Server::start_with(users, &["allow-loopback-peers"])
    }

    /// Starts on free ports (tests/common), on new ones when another process took one.
    fn start_with(users: &[&str], extra: &[&str]) -> Server {
        for _attempt in 0..10 {
            let (port, min, max) = next_ports();
            let dir =
                std::env::temp_dir().join(format!("uturn-reload-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("turnserver.conf");
            let args = ["-c".to_owned(), conf.display().to_string()];
            write_conf(&conf, (port, min, max), users, "info", extra);
            let mut s = Server {
                uturn: Uturn::launch(&args, port, dir.join("uturn.log")),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                conf,
                min,
                max,
            };
            if s.uturn.wait_ready(LIMIT) {
                return s;
            }
            let log = s.log_text();
            assert!(log.contains("in use"), "uturn did not start:\n{log}");
        }
        panic!("no free ports for uturn");
    }

    fn write(&self, users: &[&str], log_level: &str, extra: &[&str]) {
        let ports = (self.addr.port(), self.min, self.max);
        write_conf(&self.conf, ports, users, log_level, extra);
    }

    fn log_text(&self) -> String {
        self.uturn.log_text()
    }

    fn count(&self, line: &str) -> usize {
        self.log_text().matches(line).count()
    }

    /// SIGHUP, then waits for the reload's log line (done or refused).
    fn reload(&self) {
        let before = self.count("reload (SIGHUP)");
        self.uturn.signal("HUP");
        wait_for("the reload's log line", LIMIT, || {
            self.count("reload (SIGHUP) done") + self.count("reload (SIGHUP) refused") > before
                || self.count("reload (SIGHUP)") > before + 1
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(dir) = self.conf.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes the `-c` file: listening on 127.0.0.1:`port`, relay ports `min..=max`, `users`,
/// `log_level`, then the `extra` lines.
fn write_conf(
    conf: &std::path::Path,
    (port, min, max): (u16, u16, u16),
    users: &[&str],
    log_level: &str,
    extra: &[&str],
) {
    let mut text = format!(
        "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\nmin-port={min}\nmax-port={max}\nrealm=example.org\nlog-level={log_level}\n"
    );
    for u in users {
        text.push_str(&format!("user={u}\n"));
    }
    for e in extra {
        text.push_str(e);
        text.push('\n');
    }
    std::fs::write(conf, text).unwrap();
}

fn allocate(server: SocketAddr, user: &str, password: &str) -> Result<Client, Option<u16>> {
    let mut c = Client::connect(server, user, password).map_err(|_| None)?;
    c.set_timeout(Duration::from_millis(500));
    c.allocate(None).map(|_| c).map_err(|e| e.code())
}

/// An echo peer on its own thread; returns its address.
fn echo_peer(stop: Arc<AtomicBool>) -> SocketAddr {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = peer.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = peer.recv_from(&mut buf) {
                let _ = peer.send_to(&buf[..n], from);
            }
        }
    });
    addr
}

/// One ChannelData round trip through the relay and the echo peer.
fn round_trip(c: &mut Client, channel: u16, seq: u64) -> bool {
    let data = seq.to_be_bytes();
    if c.send_channel_data(channel, &data).is_err() {
        return false;
    }
    loop {
        match c.recv(Duration::from_secs(2)) {
            Ok(Incoming::ChannelData { data: got, .. }) if got == data => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn ten_reloads_under_relaying_load_lose_nothing_and_a_removed_user_cannot_allocate() {
    let server = Server::start(&["alice:secret", "bob:bobpw"]);
    let stop = Arc::new(AtomicBool::new(false));
    let peer = echo_peer(stop.clone());
    let mut bob = allocate(server.addr, "bob", "bobpw").expect("bob allocates");
    bob.channel_bind(0x4002, peer).unwrap();
    let mut alice = allocate(server.addr, "alice", "secret").expect("alice allocates");
    alice.channel_bind(0x4001, peer).unwrap();

    // alice relays round trips without pause while the reloads happen.
    let sent = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let relay = {
        let (stop, sent, lost) = (stop.clone(), sent.clone(), lost.clone());
        std::thread::spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                if !round_trip(&mut alice, 0x4001, seq) {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            alice
        })
    };
    wait_for("traffic flows", LIMIT, || {
        sent.load(Ordering::Relaxed) > 100
    });
    for i in 0..9 {
        let level = if i % 2 == 0 { "debug" } else { "info" };
        server.write(
            &["alice:secret", "bob:bobpw"],
            level,
            &["allow-loopback-peers"],
        );
        server.reload();
    }
    // The tenth removes bob.
    server.write(&["alice:secret"], "info", &["allow-loopback-peers"]);
    server.reload();
    let at_last_reload = sent.load(Ordering::Relaxed);
    wait_for("traffic after the reloads", LIMIT, || {
        sent.load(Ordering::Relaxed) > at_last_reload + 100
    });
    let log = server.log_text();
    assert_eq!(server.count("reload (SIGHUP) done"), 10, "{log}");
    assert!(log.contains("applied=[\"log-level\"]"), "{log}");
    assert!(log.contains("applied=[\"user\""), "{log}");

    // bob was removed: no new allocation; the one he has keeps relaying and refreshing.
    assert_eq!(allocate(server.addr, "bob", "bobpw").err(), Some(Some(401)));
    assert!(
        round_trip(&mut bob, 0x4002, 1),
        "bob's allocation stopped relaying"
    );
    bob.refresh(600)
        .expect("bob's existing allocation refreshes");

    // A file that does not parse leaves everything as it runs.
    std::fs::write(&server.conf, "realm=example.org\nno-such-option=1\n").unwrap();
    server.reload();
    assert!(server.log_text().contains("reload (SIGHUP) refused"));
    assert!(allocate(server.addr, "alice", "secret").is_ok());

    // The peer policy is live: without allow-loopback-peers a new permission for a
    // loopback peer is refused, while alice's channel (made before) keeps relaying.
    let other_loopback: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let mut carol = allocate(server.addr, "alice", "secret").unwrap();
    carol
        .create_permission(&[other_loopback])
        .expect("loopback peers allowed");
    server.write(&["alice:secret"], "info", &["max-bps=1000000"]);
    server.reload();
    let mut dave = allocate(server.addr, "alice", "secret").unwrap();
    assert_eq!(
        dave.create_permission(&[other_loopback])
            .unwrap_err()
            .code(),
        Some(403),
        "the reloaded peer policy was not applied"
    );
    let log = server.log_text();
    assert!(
        log.contains("\"max-bps\"") && log.contains("\"allow-loopback-peers\""),
        "{log}"
    );

    // Quotas are live: at total-quota=1 (alice holds several) a new allocation gets 486,
    // and again one when the limit is lifted.
    server.write(&["alice:secret"], "info", &["total-quota=1"]);
    server.reload();
    assert_eq!(
        allocate(server.addr, "alice", "secret").err(),
        Some(Some(486))
    );
    server.write(&["alice:secret"], "info", &[]);
    server.reload();
    assert!(allocate(server.addr, "alice", "secret").is_ok());

    // Options that cannot change live are named, and keep their running values.
    server.write(&["alice:secret"], "info", &["listening-port=1"]);
    server.reload();
    let log = server.log_text();
    assert!(
        log.contains("need a restart") && log.contains("\"listening-port\""),
        "{log}"
    );
    assert!(binding(server.addr, Duration::from_secs(1)).is_some());

    stop.store(true, Ordering::Relaxed);
    let _alice = relay.join().unwrap();
    let (sent, lost) = (sent.load(Ordering::Relaxed), lost.load(Ordering::Relaxed));
    println!("reloads: 10 under load, {sent} round trips, {lost} lost");
    assert!(sent > 200, "too little traffic to show anything: {sent}");
    assert_eq!(lost, 0, "{lost} of {sent} round trips lost across reloads");
}

/// A self-signed certificate for `cn` written over `cert` and `key` (openssl).
fn make_cert(cn: &str, cert: &std::path::Path, key: &std::path::Path) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}"), "-keyout"])
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("the openssl tool is needed to make a test certificate (Debian: openssl)");
    assert!(out.status.success(), "openssl failed: {out:?}");
}

/// The subject of the certificate the TLS listener at `port` presents (openssl s_client).
fn served_subject(port: u16) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    x509.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let subject = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&subject.stdout).trim().to_owned()
}

#[test]
fn sighup_rotates_tls_certificates_and_keeps_them_when_the_new_files_fail() {
    let dir = std::env::temp_dir().join(format!("uturn-reload-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    make_cert("first", &cert, &key);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lines = [
        format!("cert={}", cert.display()),
        format!("pkey={}", key.display()),
        format!("tls-listening-port={tls_port}"),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let server = Server::start_with(&["alice:secret"], &lines);
    wait_for("the TLS listener", LIMIT, || {
        served_subject(tls_port).contains("first")
    });

    make_cert("second", &cert, &key);
    assert!(
        served_subject(tls_port).contains("first"),
        "changed before the reload"
    );
    server.write(&["alice:secret"], "info", &lines);
    server.reload();
    assert!(
        served_subject(tls_port).contains("second"),
        "{}",
        server.log_text()
    );
    assert!(server.log_text().contains("tls=\"reloaded\""));

    // A half-written key during the next rotation: the reload keeps the running pair.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\ntruncated").unwrap();
    server.reload();
    assert!(server.log_text().contains("TLS certificates kept"));
    assert!(served_subject(tls_port).contains("second"));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
