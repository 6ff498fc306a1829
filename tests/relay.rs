//! The whole relay in-process over real loopback UDP sockets, for both data-path backends:
//! every TURN method, both data directions in both framings, Refresh, expiry, shutdown, and
//! several shards each allocating from its own slice of the relay port range.

mod common;
use common::{loopback_config, start_in_process, udp_bound, wait_for, wait_until, within};
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

/// Nothing is queued on `s` right now. Callers first prove the server has handled what
/// they sent (a later answer on the same path), so "nothing yet" means "nothing at all".
fn queue_empty(s: &UdpSocket) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let r = matches!(s.recv_from(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
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

    // No permission yet: nothing reaches the peer. The server handles one client's
    // datagrams in order, so the first thing the peer gets must be the permitted one.
    client.send_indication(peer_addr, b"too early").unwrap();

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
    // The relay socket's queue is ordered: once the permitted peer's later datagram
    // arrives, the spam has been handled, and it must not have come first.
    peer.send_to(b"marker", relayed).unwrap();
    assert_eq!(
        client.recv(Duration::from_secs(2)).unwrap(),
        Incoming::ChannelData {
            channel: 0x4001,
            data: b"marker".to_vec()
        }
    );

    // Like coturn: below the default lifetime is raised to it, above the maximum cut to it.
    assert_eq!(client.refresh(300).unwrap(), 600);
    assert_eq!(client.refresh(1200).unwrap(), 1200);
    assert_eq!(client.refresh(100_000).unwrap(), 3600);
    assert_eq!(client.refresh(0).unwrap(), 0);
    client.send_channel_data(0x4001, b"after delete").unwrap();
    // Answered after the ChannelData was handled (same client, in order).
    assert_eq!(client.refresh(300).unwrap_err().code(), Some(437));
    assert!(queue_empty(&peer));
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
    let mut refreshed = Instant::now();
    let expired = wait_until(created + Duration::from_secs(5), || {
        if refreshed.elapsed() >= Duration::from_millis(100) {
            kept.refresh(2).unwrap();
            refreshed = Instant::now();
        }
        !events.deleted().is_empty()
    });
    assert!(expired, "allocation did not expire");
    let lived = created.elapsed();
    assert!(
        lived >= Duration::from_millis(1500) && lived <= Duration::from_millis(3500),
        "expired after {lived:?}"
    );
    assert_eq!(events.deleted(), vec![DeleteReason::Expired]);
    short.send_channel_data(0x4000, b"late").unwrap();
    assert_eq!(short.refresh(2).unwrap_err().code(), Some(437));
    assert!(queue_empty(&peer));
    // The relay port is closed: nothing a peer sends can reach the client any more.
    wait_for(
        "the expired relay port to close",
        Duration::from_secs(5),
        || !udp_bound(relayed),
    );
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
    wait_until(within(Duration::from_secs(10)), || {
        events.created().len() >= 24
    });
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
