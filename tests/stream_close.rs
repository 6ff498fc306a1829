//! A TCP client's allocation lives and dies with its connection (RFC 8656 §3.1): closing the
//! connection deletes the allocation, and Redis (coturn's schema, `type=TCP`) and the
//! observer each hear of it exactly once.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uturn::auth::{AuthDecision, AuthRequest, Observer, StaticUsers};
use uturn::turn::{AllocationInfo, Traffic, Transport};

mod common;
mod stream_support;
use common::*;
use stream_support::TcpTurn;

/// Closes and opens the allocation of one TCP client; returns its relayed address's port
/// and the client's address.
fn allocate_send_close(server: std::net::SocketAddr) -> std::net::SocketAddr {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut client = TcpTurn::connect(server, "alice", "secret");
    let relay = client.allocate();
    client.bind(0x4000, peer.local_addr().unwrap());
    client.send_channel_data(0x4000, b"over tcp");
    let mut buf = [0u8; 64];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"over tcp");
    // And back: the peer's datagram arrives as ChannelData padded to 4 on the stream.
    peer.send_to(b"12345", relay).unwrap();
    let frame = client
        .recv(Duration::from_secs(5))
        .expect("ChannelData back");
    assert_eq!(
        frame,
        [0x40, 0x00, 0x00, 0x05, b'1', b'2', b'3', b'4', b'5', 0, 0, 0]
    );
    let me = client.stream.local_addr().unwrap();
    drop(client);
    me
}

#[test]
fn closing_the_connection_deletes_the_allocation_in_redis_once() {
    let redis = RedisServer::start();
    let sub = Subscriber::start(redis.url(), "turn/realm/*/user/*/allocation/*");
    let mut server = Uturn::start(
        "auto",
        &["--allow-loopback-peers", "--redis-url", &redis.url()],
    );
    let client = allocate_send_close(server.addr());
    let messages = sub.wait_for(
        "deleted and the totals of the closed connection's allocation",
        Duration::from_secs(10),
        |m| m.iter().any(|(c, _)| c.ends_with("/total_traffic/peer")),
    );
    let statuses: Vec<&str> = messages
        .iter()
        .filter(|(c, _)| c.ends_with("/status"))
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(
        statuses,
        vec![
            format!(
                "new lifetime=600, type=TCP, local=127.0.0.1:{}, remote={client}, ssl=NONE, cipher=NONE",
                server.port
            )
            .as_str(),
            "deleted"
        ],
        "{messages:?}"
    );
    let totals: Vec<&str> = messages
        .iter()
        .filter(|(c, _)| c.ends_with("/total_traffic"))
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(totals.len(), 1, "{messages:?}");
    // Nothing more comes for it, even at shutdown.
    assert_eq!(server.stop(), Some(0));
    let after = sub.snapshot();
    assert_eq!(
        after.iter().filter(|(_, p)| p == "deleted").count(),
        1,
        "{after:?}"
    );
}

/// Counts lifecycle callbacks per allocation.
struct Counting {
    users: StaticUsers,
    created: Mutex<HashMap<u64, (usize, Transport)>>,
    removed: Mutex<HashMap<u64, usize>>,
    calls: AtomicUsize,
}

impl Observer for Counting {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        self.users.authenticate(request)
    }

    fn on_allocation_created(&self, info: &AllocationInfo) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut created = self.created.lock().unwrap();
        let entry = created
            .entry(info.id)
            .or_insert((0, info.five_tuple.transport));
        entry.0 += 1;
    }

    fn on_allocation_removed(&self, info: &AllocationInfo, _totals: &Traffic) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.removed.lock().unwrap().entry(info.id).or_default() += 1;
    }
}

#[test]
fn closing_the_connection_tells_the_observer_once() {
    let mut users = StaticUsers::new();
    users.add("alice", "secret", "example.org");
    let observer = Arc::new(Counting {
        users,
        created: Mutex::default(),
        removed: Mutex::default(),
        calls: AtomicUsize::new(0),
    });
    let config = loopback_config(2, |_| {});
    let running = start_in_process(&config, Some(observer.clone()), None, 200);
    let server = running.local_addrs()[0];
    for _ in 0..3 {
        allocate_send_close(server);
    }
    wait_for("three removals", Duration::from_secs(10), || {
        observer.removed.lock().unwrap().len() == 3
    });
    let reports = running.stop();
    let created = observer.created.lock().unwrap().clone();
    let removed = observer.removed.lock().unwrap().clone();
    assert_eq!(created.len(), 3);
    assert!(
        created
            .values()
            .all(|&(n, t)| n == 1 && t == Transport::Tcp),
        "{created:?}"
    );
    assert!(removed.values().all(|&n| n == 1), "{removed:?}");
    assert_eq!(
        observer.calls.load(Ordering::SeqCst),
        6,
        "nothing more at shutdown"
    );
    let accepted: u64 = reports.iter().map(|r| r.streams.accepted).sum();
    let closed: u64 = reports.iter().map(|r| r.streams.closed).sum();
    assert_eq!((accepted, closed), (3, 3), "{reports:?}");
}

/// A request followed at once by the client's FIN: the server answers and then sees the end
/// (it does not wait for the idle timeout to notice the connection is gone).
#[test]
fn a_request_and_the_end_arriving_together_are_both_seen() {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use uturn::stun::{Class, MessageBuilder, Method};
    let config = loopback_config(1, |_| {});
    let running = start_in_process(&config, None, None, 20);
    let server = running.local_addrs()[0];
    for _ in 0..20 {
        let mut s = TcpStream::connect(server).unwrap();
        let mut out = Vec::new();
        MessageBuilder::new(&mut out, Class::Request, Method::BINDING, &[3; 12]);
        s.write_all(&out).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        // read_to_end returns only once the server closed its side.
        s.read_to_end(&mut answer)
            .expect("the server closes the connection after the client's end");
        let msg = uturn::stun::Message::parse(&answer).expect("a Binding response");
        assert_eq!(msg.class(), Class::Success);
    }
    let reports = running.stop();
    assert_eq!(reports[0].streams.closed, 20, "{:?}", reports[0].streams);
    assert_eq!(reports[0].streams.idle_closed, 0);
}

/// TCP clients over IPv6 (a listener on ::1): allocation, relaying and the close work as
/// over IPv4.
#[test]
fn tcp_over_ipv6() {
    assert!(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "this host has no IPv6 loopback (::1): the IPv6 TCP test cannot run"
    );
    let config = loopback_config(1, |c| {
        c.listening_ips = vec!["::1".parse().unwrap()];
    });
    let running = start_in_process(&config, None, None, 20);
    let server = running.local_addrs()[0];
    assert!(server.is_ipv6());
    let client = allocate_send_close(server);
    assert!(client.is_ipv6());
    wait_for(
        "the allocation to go with its connection",
        Duration::from_secs(10),
        || {
            running
                .metrics()
                .iter()
                .all(|m| m.snapshot().allocations == 0)
        },
    );
    let reports = running.stop();
    assert_eq!(reports[0].streams.accepted, 1);
}

/// coturn's TLS client through uturn with Redis: the status names the transport
/// `TLS/TCP` and the session's protocol and cipher as coturn does, and the allocation goes
/// when the client's connection does.
#[test]
fn tls_allocations_name_their_session_in_redis() {
    let redis = RedisServer::start();
    let sub = Subscriber::start(redis.url(), "turn/realm/*/user/*/allocation/*");
    let (tls, tls_port) = stream_support::tls_args("redis");
    let mut args = vec![
        "--allow-loopback-peers".to_string(),
        "--redis-url".to_string(),
        redis.url(),
    ];
    args.extend(tls);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Uturn::start("auto", &args);
    let peer = Peer::start();
    let (code, out) = uclient(
        tls_port,
        peer.port,
        &["-t", "-S", "-m", "1", "-n", "10", "-l", "100"],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{out}");
    let messages = sub.wait_for(
        "the TLS allocation's totals",
        Duration::from_secs(10),
        |m| m.iter().any(|(c, _)| c.ends_with("/total_traffic/peer")),
    );
    let new: Vec<&str> = messages
        .iter()
        .filter(|(c, p)| c.ends_with("/status") && p.starts_with("new "))
        .map(|(_, p)| p.as_str())
        .collect();
    assert!(!new.is_empty(), "{messages:?}");
    for status in new {
        let rest = status
            .split_once(&format!(
                ", type=TLS/TCP, local=127.0.0.1:{tls_port}, remote=127.0.0.1:"
            ))
            .unwrap_or_else(|| panic!("not coturn's TLS status: {status}"))
            .1;
        let (_, session) = rest.split_once(", ").unwrap();
        assert!(
            [
                "ssl=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384",
                "ssl=TLSv1.3, cipher=TLS_AES_128_GCM_SHA256",
                "ssl=TLSv1.3, cipher=TLS_CHACHA20_POLY1305_SHA256",
                "ssl=TLSv1.2, cipher=ECDHE-ECDSA-AES256-GCM-SHA384",
                "ssl=TLSv1.2, cipher=ECDHE-ECDSA-AES128-GCM-SHA256",
                "ssl=TLSv1.2, cipher=ECDHE-ECDSA-CHACHA20-POLY1305",
            ]
            .contains(&session),
            "{status}"
        );
    }
    assert_eq!(server.stop(), Some(0));
}

/// Before an allocation, only request-sized frames are accepted (a long announced frame
/// closes the connection); with one, a 10 KB ChannelData goes through.
#[test]
fn long_frames_need_an_allocation() {
    use std::io::{Read, Write};
    let config = loopback_config(1, |_| {});
    let running = start_in_process(&config, None, None, 20);
    let server = running.local_addrs()[0];
    let mut stranger = std::net::TcpStream::connect(server).unwrap();
    // A STUN header announcing 10,000 bytes, and the first of them.
    let mut header = vec![0x00, 0x01, 0x27, 0x10, 0x21, 0x12, 0xa4, 0x42];
    header.extend_from_slice(&[0; 512]);
    stranger.write_all(&header).unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(stranger.read(&mut buf), Ok(0) | Err(_)),
        "a long frame without an allocation must close the connection"
    );

    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut client = TcpTurn::connect(server, "alice", "secret");
    client.allocate();
    client.bind(0x4000, peer.local_addr().unwrap());
    let big = vec![0x42; 10_000];
    client.send_channel_data(0x4000, &big);
    let mut got = vec![0u8; 20_000];
    let (n, _) = peer
        .recv_from(&mut got)
        .expect("the long ChannelData reaches the peer");
    assert_eq!(&got[..n], &big[..]);
    let reports = running.stop();
    assert_eq!(reports[0].streams.framing_errors, 1);
}
