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
