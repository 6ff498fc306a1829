//! The whole relay in-process over real loopback UDP sockets, for both data-path backends:
//! every TURN method, both data directions in both framings, Refresh, expiry, shutdown, and
//! several shards each allocating from its own slice of the relay port range.

mod common;
use common::{loopback_config, start_in_process};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uturn::client::{Client, Incoming};
use uturn::config::{Backend, Config};
use uturn::shard::Running;
use uturn::stats::EventSink;
use uturn::turn::{DeleteReason, Event};

#[derive(Default)]
struct Events(Mutex<Vec<Event>>);

impl EventSink for Events {
    fn send(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    fn deleted(&self) -> Vec<DeleteReason> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::AllocationDeleted { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    fn created(&self) -> Vec<(u64, SocketAddr)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::AllocationCreated { info, .. } => Some((info.id, info.relay)),
                _ => None,
            })
            .collect()
    }
}

fn config(backend: Backend, shards: usize, tweak: impl FnOnce(&mut Config)) -> Config {
    loopback_config(shards, |c| {
        c.backend = backend;
        tweak(c);
    })
}

/// Starts a server on a free listening port and a free relay range.
fn start(config: Config, events: &Arc<Events>) -> Running {
    start_in_process(
        &config,
        None,
        Some(events.clone() as Arc<dyn EventSink>),
        10000..14100,
        100,
    )
}

fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn recv_from(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("peer receives");
    (buf[..n].to_vec(), from)
}

fn nothing_arrives(s: &UdpSocket) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let r = s.recv_from(&mut buf).is_err();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    r
}

fn full_exchange(backend: Backend) {
    let events = Arc::new(Events::default());
    let running = start(config(backend, 2, |_| {}), &events);
    let server = running.local_addrs()[0];
    let peer = peer();
    let peer_addr = peer.local_addr().unwrap();

    let mut client = Client::connect(server, "alice", "secret").unwrap();
    let relayed = client.allocate(None).expect("allocate");
    assert_eq!(
        relayed.ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(client.mapped, Some(client.local_addr().unwrap()));
    assert_eq!(client.lifetime, Some(600));

    // No permission yet: nothing reaches the peer.
    client.send_indication(peer_addr, b"too early").unwrap();
    assert!(nothing_arrives(&peer));

    client.create_permission(&[peer_addr]).expect("permission");
    client.send_indication(peer_addr, b"hello peer").unwrap();
    assert_eq!(recv_from(&peer), (b"hello peer".to_vec(), relayed));
    peer.send_to(b"hello client", relayed).unwrap();
    assert_eq!(
        client.recv(Duration::from_secs(2)).unwrap(),
        Incoming::Data {
            peer: peer_addr,
            data: b"hello client".to_vec()
        }
    );

    client
        .channel_bind(0x4001, peer_addr)
        .expect("channel bind");
    for i in 0..50u8 {
        let payload = vec![i; 1 + usize::from(i) * 7];
        client.send_channel_data(0x4001, &payload).unwrap();
        assert_eq!(recv_from(&peer), (payload.clone(), relayed));
        peer.send_to(&payload, relayed).unwrap();
        assert_eq!(
            client.recv(Duration::from_secs(2)).unwrap(),
            Incoming::ChannelData {
                channel: 0x4001,
                data: payload
            }
        );
    }

    // A stranger without permission cannot reach the client.
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    stranger.send_to(b"spam", relayed).unwrap();
    assert!(client.recv(Duration::from_millis(300)).is_err());

    // Like coturn: below the default lifetime is raised to it, above the maximum cut to it.
    assert_eq!(client.refresh(300).unwrap(), 600);
    assert_eq!(client.refresh(1200).unwrap(), 1200);
    assert_eq!(client.refresh(100_000).unwrap(), 3600);
    assert_eq!(client.refresh(0).unwrap(), 0);
    client.send_channel_data(0x4001, b"after delete").unwrap();
    assert!(nothing_arrives(&peer));
    assert_eq!(client.refresh(300).unwrap_err().code(), Some(437));
    let reports = running.stop();
    assert_eq!(reports.len(), 2);
    assert_eq!(events.deleted(), vec![DeleteReason::Deleted]);
}

fn expiry_and_shutdown(backend: Backend) {
    let events = Arc::new(Events::default());
    let running = start(
        config(backend, 1, |c| {
            c.default_allocate_lifetime = 2;
            c.max_allocate_lifetime = 2;
        }),
        &events,
    );
    let server = running.local_addrs()[0];
    let peer = peer();
    let mut short = Client::connect(server, "alice", "secret").unwrap();
    let relayed = short.allocate(Some(2)).unwrap();
    short
        .create_permission(&[peer.local_addr().unwrap()])
        .unwrap();
    short
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .unwrap();
    let created = Instant::now();
    // Kept alive by Refresh, a second allocation outlives the first.
    let mut kept = Client::connect(server, "alice", "secret").unwrap();
    kept.allocate(Some(2)).unwrap();
    while events.deleted().is_empty() {
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "allocation did not expire"
        );
        kept.refresh(2).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let lived = created.elapsed();
    assert!(
        lived >= Duration::from_millis(1500) && lived <= Duration::from_millis(3500),
        "expired after {lived:?}"
    );
    assert_eq!(events.deleted(), vec![DeleteReason::Expired]);
    short.send_channel_data(0x4000, b"late").unwrap();
    assert!(nothing_arrives(&peer));
    peer.send_to(b"late", relayed).unwrap();
    assert!(short.recv(Duration::from_millis(300)).is_err());
    assert_eq!(short.refresh(2).unwrap_err().code(), Some(437));
    running.stop();
    assert_eq!(
        events.deleted(),
        vec![DeleteReason::Expired, DeleteReason::Shutdown]
    );
}

fn shard_slices(backend: Backend) {
    let events = Arc::new(Events::default());
    let running = start(config(backend, 2, |_| {}), &events);
    assert_eq!(running.shard_count(), 2);
    let slices = running.port_slices().to_vec();
    assert_eq!(slices.len(), 2);
    assert!(slices[0].1 < slices[1].0, "disjoint: {slices:?}");
    let server = running.local_addrs()[0];
    let mut clients = Vec::new();
    for _ in 0..24 {
        let mut c = Client::connect(server, "alice", "secret").unwrap();
        c.allocate(None).expect("allocate");
        clients.push(c);
    }
    // The shard answers before it hands the event to the sink: wait for the last ones.
    let deadline = Instant::now() + Duration::from_secs(2);
    while events.created().len() < 24 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let created = events.created();
    assert_eq!(created.len(), 24);
    let mut per_shard = [0usize; 2];
    for (id, relay) in created {
        // Allocation ids step by the shard count from a per-shard base.
        let shard = (id % 2) as usize;
        let (lo, hi) = slices[shard];
        assert!(
            (lo..=hi).contains(&relay.port()),
            "shard {shard} relayed on {relay}, its slice is {lo}-{hi}"
        );
        per_shard[shard] += 1;
    }
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "every shard allocates: {per_shard:?}"
    );
    let reports = running.stop();
    let total: u64 = reports.iter().map(|r| r.io.received).sum();
    assert!(total >= 48, "each allocation took two requests: {total}");
    assert_eq!(
        events.deleted().len(),
        24,
        "shutdown deletes every allocation"
    );
}

macro_rules! both_backends {
    ($($name:ident => $body:expr;)*) => {
        mod io_uring {
            use super::*;
            $(#[test] fn $name() { $body(Backend::IoUring); })*
        }
        mod portable {
            use super::*;
            $(#[test] fn $name() { $body(Backend::Portable); })*
        }
    };
}

both_backends! {
    every_method_and_both_directions => full_exchange;
    expiry_to_the_second_and_shutdown => expiry_and_shutdown;
    shards_allocate_from_their_own_slices => shard_slices;
}
