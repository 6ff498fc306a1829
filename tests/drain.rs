//! Graceful drain of the real binary: SIGUSR1 (until the allocations are gone), SIGTERM
//! bounded by --drain-timeout, a second SIGTERM, /readyz while draining, the refusal of new
//! allocations (403, or 300 with ALTERNATE-SERVER that coturn's uclient follows), existing
//! allocations relaying and refreshing meanwhile.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use uturn::client::{Client, Incoming};

mod common;
use common::*;

/// The binary with metrics and probes on, on free ports (tests/common).
struct Server {
    uturn: Uturn,
    addr: SocketAddr,
    http: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut args = vec!["--allow-loopback-peers"];
        args.extend(extra);
        let uturn = Uturn::start_with(Launch {
            backend: "auto",
            extra: &args,
            prometheus: true,
            ..Launch::default()
        });
        Server {
            addr: uturn.addr(),
            http: uturn.http.unwrap(),
            uturn,
        }
    }

    fn signal(&self, name: &str) {
        self.uturn.signal(name);
    }

    fn readyz(&self) -> Option<u16> {
        let mut s = TcpStream::connect_timeout(&self.http, Duration::from_secs(10)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split_whitespace().nth(1)?.parse().ok()
    }

    fn log_text(&self) -> String {
        self.uturn.log_text()
    }

    /// Waits for the process to exit; its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        self.uturn.wait_exit(limit)
    }
}

fn relaying_client(server: SocketAddr, peer: &UdpSocket) -> Client {
    let mut c = Client::connect(server, "alice", "secret").unwrap();
    c.set_timeout(Duration::from_millis(500));
    c.allocate(None).expect("allocate");
    c.channel_bind(0x4000, peer.local_addr().unwrap()).unwrap();
    c
}

fn round_trip(c: &mut Client, peer: &UdpSocket, seq: u32) {
    let data = seq.to_be_bytes();
    c.send_channel_data(0x4000, &data).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
    peer.send_to(&buf[..n], from).unwrap();
    match c.recv(Duration::from_secs(2)).expect("echo") {
        Incoming::ChannelData { data: got, .. } => assert_eq!(got, data),
        other => panic!("unexpected {other:?}"),
    }
}

fn new_allocation(server: SocketAddr) -> Result<(), Option<u16>> {
    let mut c = Client::connect(server, "alice", "secret").map_err(|_| None)?;
    c.set_timeout(Duration::from_millis(500));
    c.allocate(None).map(|_| ()).map_err(|e| e.code())
}

#[test]
fn sigusr1_refuses_new_allocations_keeps_old_ones_and_stops_when_they_are_gone() {
    let mut server = Server::start(&[]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut c = relaying_client(server.addr, &peer);
    round_trip(&mut c, &peer, 0);
    assert_eq!(server.readyz(), Some(200));

    server.signal("USR1");
    wait_for("/readyz says not ready", Duration::from_secs(5), || {
        server.readyz() == Some(503)
    });
    assert_eq!(
        new_allocation(server.addr),
        Err(Some(403)),
        "new allocation while draining"
    );
    for seq in 1..=20 {
        round_trip(&mut c, &peer, seq);
    }
    c.refresh(600).expect("refresh while draining");
    c.create_permission(&[peer.local_addr().unwrap()])
        .expect("CreatePermission while draining");
    wait_for(
        "the remaining allocations logged",
        Duration::from_secs(10),
        || {
            server
                .log_text()
                .contains("draining: allocations remaining")
        },
    );
    assert!(server.uturn.alive(), "stopped with an allocation left");

    c.refresh(0).unwrap();
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        server.log_text().contains("why=\"drained\""),
        "{}",
        server.log_text()
    );
}

#[test]
fn sigterm_drains_until_the_timeout_then_deletes_the_rest() {
    let redis = RedisServer::start();
    let sub = Subscriber::start(redis.url(), "turn/*");
    sub.wait_subscribed(1);
    let mut server = Server::start(&["--drain-timeout", "2", "--redis-url", &redis.url()]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut c = relaying_client(server.addr, &peer);
    let sent = Instant::now();
    server.signal("TERM");
    wait_for("/readyz says not ready", Duration::from_secs(5), || {
        server.readyz() == Some(503)
    });
    round_trip(&mut c, &peer, 1);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "stopped before the timeout: {took:?}"
    );
    let log = server.log_text();
    assert!(log.contains("--drain-timeout reached"), "{log}");
    // What was left at the timeout was deleted through the core: Redis heard `deleted`
    // and the totals, which count the round trip made while draining.
    let messages = sub.wait_for("deleted and totals", Duration::from_secs(10), |m| {
        m.iter()
            .any(|(c, p)| c.ends_with("/status") && p == "deleted")
            && m.iter().any(|(c, _)| c.ends_with("/total_traffic"))
    });
    let totals = messages
        .iter()
        .find(|(c, _)| c.ends_with("/total_traffic"))
        .map(|(_, p)| p.clone())
        .unwrap();
    assert!(totals.starts_with("rcvp=1,"), "{totals}");
}

#[test]
fn a_second_sigterm_stops_at_once_and_min_allocations_ends_a_drain() {
    let mut server = Server::start(&["--drain-timeout", "600"]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _c = relaying_client(server.addr, &peer);
    server.signal("TERM");
    wait_for("draining", Duration::from_secs(5), || {
        server.readyz() == Some(503)
    });
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(server.log_text().contains("second SIGTERM"));

    // One allocation left is enough when --drain-min-allocations is 1.
    let mut server = Server::start(&["--drain-min-allocations", "1"]);
    let _c = relaying_client(server.addr, &peer);
    server.signal("USR1");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn a_draining_server_sends_coturns_uclient_to_the_alternate_server() {
    let mut other = Server::start(&[]);
    let alternate = other.addr.to_string();
    let draining = Server::start(&["--alternate-server", &alternate]);
    // One allocation keeps the drain going (with none it would stop at once).
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _held = relaying_client(draining.addr, &peer);
    draining.signal("USR1");
    assert!(
        wait_until(within(Duration::from_secs(5)), || draining.readyz()
            == Some(503)),
        "not draining:\n{}",
        draining.log_text()
    );
    // uturn's own client sees 300.
    assert_eq!(
        new_allocation(draining.addr),
        Err(Some(300)),
        "{}",
        draining.log_text()
    );
    // coturn's client follows ALTERNATE-SERVER and relays through the other server.
    let echo = Peer::start();
    let (code, out) = uclient(
        draining.addr.port(),
        echo.port,
        &["-m", "1", "-n", "20", "-l", "120"],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("error 300 (Try Alternate)"), "{out}");
    // uclient makes two allocations (msz=2), 20 messages each, both redirected.
    assert_eq!(number_after(&out, "tot_recv_msgs="), Some(40), "{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
    let http = other.http;
    let mut s = TcpStream::connect(http).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    let relayed = metrics
        .lines()
        .filter(|l| l.starts_with("uturn_relayed_packets_total{") && l.contains("to_peer"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum::<u64>();
    assert!(relayed >= 40, "the alternate relayed {relayed}:\n{metrics}");
    other.signal("INT");
    assert_eq!(other.wait_exit(Duration::from_secs(10)), Some(0));
}

/// A stopped server leaves its ports free the moment it has exited, so a restart (systemd,
/// a rolling update) can bind them at once: the listening UDP and TCP port and the relay
/// port of an allocation. On io_uring the ring's registered file table holds a reference
/// to every socket until the kernel tears the ring down, in a worker after the exit; the
/// shard drops the table before it returns.
#[test]
fn a_stopped_server_leaves_its_ports_free_at_once() {
    for backend in ["io-uring", "portable"] {
        for round in 0..3 {
            let mut uturn = Uturn::start(backend, &["--allow-loopback-peers"]);
            let addr = uturn.addr();
            let mut c = Client::connect(addr, "alice", "secret").unwrap();
            let relay = c.allocate(None).expect("allocate");
            assert_eq!(uturn.stop(), Some(0), "{backend}: exit status");
            let taken = |what: &str, r: std::io::Result<()>| {
                if let Err(e) = r {
                    panic!("{backend}, round {round}: {what} still in use after exit: {e}");
                }
            };
            taken("listening UDP port", UdpSocket::bind(addr).map(drop));
            taken(
                "listening TCP port",
                std::net::TcpListener::bind(addr).map(drop),
            );
            taken("relay port", UdpSocket::bind(relay).map(drop));
        }
    }
}
