//! SIGHUP live reload of the `-c` file, against the real binary: ten reloads under
//! relaying traffic lose nothing; a removed user can no longer allocate while its
//! allocation keeps relaying; options that cannot change live are reported; a file that
//! does not parse leaves the running configuration.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uturn::client::{Client, Incoming};

mod common;
use common::*;

/// A listening port and 100 relay ports nobody holds (tests/common).
fn free_block() -> (u16, u16, u16) {
    let (min, max) = free_port_block(100);
    (free_listen_port(), min, max)
}

/// uturn started with nothing but `-c FILE` (the file's user list must not be replaced by
/// a command-line one).
struct Server {
    child: Child,
    addr: SocketAddr,
    conf: PathBuf,
    log: PathBuf,
    min: u16,
    max: u16,
}

impl Server {
    fn start(users: &[&str]) -> Server {
        let (port, min, max) = free_block();
        let dir = std::env::temp_dir().join(format!("uturn-reload-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("turnserver.conf");
        let log = dir.join("uturn.log");
        let mut s = Server {
            child: Command::new("true").spawn().unwrap(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conf,
            log,
            min,
            max,
        };
        s.write(users, "info", &[]);
        let file = std::fs::File::create(&s.log).unwrap();
        s.child = Command::new(env!("CARGO_BIN_EXE_uturn"))
            .arg("-c")
            .arg(&s.conf)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        wait_for("uturn answers Binding", Duration::from_secs(10), || {
            binding(s.addr, Duration::from_millis(200)).is_some()
        });
        s
    }

    fn write(&self, users: &[&str], log_level: &str, extra: &[&str]) {
        let mut text = format!(
            "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={}\nmin-port={}\nmax-port={}\nrealm=example.org\nallow-loopback-peers\nlog-level={log_level}\n",
            self.addr.port(),
            self.min,
            self.max
        );
        for u in users {
            text.push_str(&format!("user={u}\n"));
        }
        for e in extra {
            text.push_str(e);
            text.push('\n');
        }
        std::fs::write(&self.conf, text).unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn count(&self, line: &str) -> usize {
        self.log_text().matches(line).count()
    }

    /// SIGHUP, then waits for the reload's log line (done or refused).
    fn reload(&self) {
        let before = self.count("reload (SIGHUP)");
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        wait_for("the reload's log line", Duration::from_secs(10), || {
            self.count("reload (SIGHUP) done") + self.count("reload (SIGHUP) refused") > before
                || self.count("reload (SIGHUP)") > before + 1
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.conf.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
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
    wait_for("traffic flows", Duration::from_secs(5), || {
        sent.load(Ordering::Relaxed) > 100
    });
    for i in 0..9 {
        let level = if i % 2 == 0 { "debug" } else { "info" };
        server.write(&["alice:secret", "bob:bobpw"], level, &[]);
        server.reload();
    }
    // The tenth removes bob.
    server.write(&["alice:secret"], "info", &[]);
    server.reload();
    let at_last_reload = sent.load(Ordering::Relaxed);
    wait_for("traffic after the reloads", Duration::from_secs(5), || {
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

    // Options that cannot change live are named, and keep their running values.
    server.write(
        &["alice:secret"],
        "info",
        &["max-bps=1000", "listening-port=1"],
    );
    server.reload();
    let log = server.log_text();
    assert!(
        log.contains("need a restart")
            && log.contains("\"max-bps\"")
            && log.contains("\"listening-port\""),
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
