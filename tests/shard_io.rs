//! The shards' datagram path over loopback, in process: both backends take the same
//! largest datagram and count larger ones (io_uring with and without registered files); a dropped send is counted once; a wildcard
//! listener answers from the address used; default listening covers IPv4 and IPv6; buffer
//! exhaustion neither blocks other clients nor spins.

mod common;
mod shard_support;
use common::wait_until;
use shard_support::{binding_request, start, start_finding_threads, Events, Relay};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uturn::client::Incoming;
use uturn::config::Backend;
use uturn::shard::TestKnobs;

/// Both backends relay a datagram of `MAX_DATAGRAM` bytes either way and drop, counting
/// it, one byte more.
fn largest_datagram(backend: Backend, knobs: TestKnobs) {
    use uturn::shard::MAX_DATAGRAM;
    let events = Arc::new(Events::default());
    let config = common::loopback_config(1, |c| c.backend = backend);
    let running = start(config, &events, knobs);
    let mut relay = Relay::new(running.local_addrs()[0]);
    relay
        .peer
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = vec![0u8; 70_000];
    // Client to peer: a ChannelData datagram is 4 bytes of header and the payload.
    let largest = vec![7u8; MAX_DATAGRAM - 4];
    relay.client.send_channel_data(0x4000, &largest).unwrap();
    let (n, _) = relay
        .peer
        .recv_from(&mut buf)
        .expect("largest datagram relayed");
    assert_eq!(n, largest.len());
    relay
        .client
        .send_channel_data(0x4000, &vec![8u8; MAX_DATAGRAM - 3])
        .unwrap();
    // Peer to client.
    relay
        .peer
        .send_to(&vec![9u8; MAX_DATAGRAM], relay.relayed)
        .unwrap();
    match relay.client.recv(Duration::from_secs(2)).unwrap() {
        Incoming::ChannelData { data, .. } => assert_eq!(data.len(), MAX_DATAGRAM),
        other => panic!("{other:?}"),
    }
    relay
        .peer
        .send_to(&vec![10u8; MAX_DATAGRAM + 1], relay.relayed)
        .unwrap();
    // The oversize ones arrive nowhere; a round trip after them proves they were handled.
    assert!(relay.round_trip(1));
    relay
        .peer
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        relay.peer.recv_from(&mut buf).is_err(),
        "an oversize datagram reached the peer"
    );
    let report = running.stop().remove(0);
    assert_eq!(report.io.truncated, 2, "{:?}", report.io);
}

#[test]
fn io_uring_takes_the_largest_datagram_and_counts_larger() {
    largest_datagram(Backend::IoUring, TestKnobs::default());
}

/// The same with sockets named by descriptor instead of through the registered file table.
#[test]
fn io_uring_with_plain_descriptors_takes_the_largest_datagram_and_counts_larger() {
    let knobs = TestKnobs {
        fixed_files: Some(0),
        ..TestKnobs::default()
    };
    largest_datagram(Backend::IoUring, knobs);
}

#[test]
fn portable_takes_the_largest_datagram_and_counts_larger() {
    largest_datagram(Backend::Portable, TestKnobs::default());
}

/// With one send slot a flood from the peer drops most sends; each drop is counted once:
/// every send the shard attempted is either sent or a send error.
#[test]
fn a_dropped_send_is_counted_once() {
    let events = Arc::new(Events::default());
    let config = common::loopback_config(1, |c| c.backend = Backend::IoUring);
    let knobs = TestKnobs {
        send_slots: Some(1),
        ..TestKnobs::default()
    };
    let running = start(config, &events, knobs);
    // Allocate (401, then success), CreatePermission, ChannelBind: four responses.
    let relay = Relay::new(running.local_addrs()[0]);
    // In batches of 64 per system call, so several datagrams wait in the relay socket
    // whenever the shard wakes, each a byte longer than the one before, so no two can leave
    // as one GSO send: sent one by one, or all of one size, the shard's sends can keep up
    // with one slot and drop nothing (the test would then prove nothing, and fails).
    flood_in_batches(&relay.peer, relay.relayed, 2_048);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    // Quiet once the client has read everything it will get.
    while Instant::now() < deadline {
        let mut buf = [0u8; 64];
        relay
            .client
            .socket()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        if relay.client.socket().recv_from(&mut buf).is_err() {
            last = Some(());
            break;
        }
    }
    assert!(last.is_some(), "the flood did not end");
    let report = running.stop().remove(0);
    let attempts = 4 + report.counters.relayed_to_peer + report.counters.relayed_to_client;
    assert!(
        report.io.send_errors > 0,
        "no send was dropped: {:?}",
        report.io
    );
    assert_eq!(
        report.io.sent + report.io.send_errors,
        attempts,
        "{:?} {:?}",
        report.io,
        report.counters
    );
}

/// A wildcard listener answers from the address each client sent to: Binding responses,
/// TURN responses and relayed data, on a host with two addresses (127.0.0.1, 127.0.0.2).
fn wildcard_listener_answers_from_the_address_used(backend: Backend) {
    let events = Arc::new(Events::default());
    let config = common::loopback_config(1, |c| {
        c.backend = backend;
        c.listening_ips = vec!["0.0.0.0".parse().unwrap()];
    });
    let running = start(config, &events, TestKnobs::default());
    let port = running.local_addrs()[0].port();
    let mut buf = [0u8; 2048];
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let server: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.send_to(&binding_request(), server).unwrap();
        let (_, from) = client.recv_from(&mut buf).expect("binding answered");
        assert_eq!(from, server, "binding response source");
    }
    let server: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let mut relay = Relay::new(server);
    assert!(relay.round_trip(0));
    relay.peer.send_to(b"to the client", relay.relayed).unwrap();
    let (_, from) = relay
        .client
        .socket()
        .recv_from(&mut buf)
        .expect("relayed data arrives");
    assert_eq!(from, server, "relayed data source");
    let created = events.created();
    running.stop();
    assert_eq!(created.len(), 1);
}

#[test]
fn io_uring_wildcard_listener_answers_from_the_address_used() {
    wildcard_listener_answers_from_the_address_used(Backend::IoUring);
}

#[test]
fn portable_wildcard_listener_answers_from_the_address_used() {
    wildcard_listener_answers_from_the_address_used(Backend::Portable);
}

/// Without a listening address the server listens on IPv4 and IPv6 (this host has both,
/// or the test fails saying so) and answers each family from the address used.
#[test]
fn default_listening_covers_ipv4_and_ipv6() {
    assert!(
        UdpSocket::bind("[::1]:0").is_ok(),
        "NOT RUN: this host has no IPv6 loopback; the test needs it"
    );
    let events = Arc::new(Events::default());
    let config = common::loopback_config(1, |c| c.listening_ips = Vec::new());
    let running = start(config, &events, TestKnobs::default());
    let addrs = running.local_addrs().to_vec();
    assert!(
        addrs.iter().any(|a| a.ip().is_unspecified() && a.is_ipv4())
            && addrs.iter().any(|a| a.ip().is_unspecified() && a.is_ipv6()),
        "{addrs:?}"
    );
    let port = addrs[0].port();
    let mut buf = [0u8; 2048];
    for (bind, server) in [("127.0.0.1:0", "127.0.0.2"), ("[::1]:0", "[::1]")] {
        let server: SocketAddr = format!("{server}:{port}").parse().unwrap();
        let client = UdpSocket::bind(bind).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.send_to(&binding_request(), server).unwrap();
        let (_, from) = client.recv_from(&mut buf).expect("binding answered");
        assert_eq!(from, server);
    }
    running.stop();
}

/// CPU time (user + system, clock ticks) of this process's thread `tid`.
fn thread_ticks(tid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A peer floods a client that never reads, through a shard with 16 provided buffers:
/// receives run out of buffers again and again, yet another client keeps relaying, and
/// once the flood is over the shard sleeps (no re-arming spin).
#[test]
fn buffer_exhaustion_neither_blocks_other_clients_nor_spins() {
    let events = Arc::new(Events::default());
    let config = common::loopback_config(1, |c| c.backend = Backend::IoUring);
    let knobs = TestKnobs {
        buffers: Some(16),
        ..TestKnobs::default()
    };
    let (running, mut ours) = start_finding_threads(config, &events, knobs, "uturn-shard-0");
    assert_eq!(ours.len(), 1, "one new shard thread: {ours:?}");
    let shard_thread = ours.remove(0);
    let server = running.local_addrs()[0];
    let flooded = Relay::new(server);
    let mut other = Relay::new(server);
    let flood = flooded.peer.try_clone().unwrap();
    let target = flooded.relayed;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooding = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let payload = [0u8; 1200];
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 5_000_000 {
                let _ = flood.send_to(&payload, target);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    assert!(
        wait_until(Instant::now() + Duration::from_secs(5), || sent
            .load(Ordering::Relaxed)
            >= 20_000),
        "the flood did not start"
    );
    for i in 0..20 {
        assert!(other.round_trip(i), "round trip {i} during the flood");
    }
    stop.store(true, Ordering::Relaxed);
    flooding.join().unwrap();
    // Quiet: a shard that keeps re-arming starved receives burns its core.
    let before = thread_ticks(&shard_thread).expect("shard thread");
    // A measurement window (CPU over one second), not a wait for an event.
    std::thread::sleep(Duration::from_secs(1));
    let used = thread_ticks(&shard_thread).expect("shard thread") - before;
    assert!(other.round_trip(100), "relaying after the flood");
    drop(flooded);
    let report = running.stop().remove(0);
    assert!(
        report.io.no_buffers > 0,
        "the flood never ran the buffers out: {:?}",
        report.io
    );
    assert!(
        used <= 10,
        "the idle shard used {used} clock ticks in one second"
    );
}

/// Sends `count` datagrams from `socket` to `to`, 64 per `sendmmsg`, of 1 to 64 bytes: each
/// of a batch a byte longer than the one before.
fn flood_in_batches(socket: &UdpSocket, to: SocketAddr, count: usize) {
    use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    const BATCH: usize = 64;
    let to = SockaddrStorage::from(to);
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let payload = [0x5au8; BATCH];
    let iovs: Vec<[IoSlice<'_>; 1]> = (1..=BATCH).map(|n| [IoSlice::new(&payload[..n])]).collect();
    let addrs = vec![Some(to); BATCH];
    let no_cmsgs: [ControlMessage<'_>; 0] = [];
    let mut sent = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        let done = sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            iovs[..n].iter(),
            &addrs[..n],
            no_cmsgs,
            MsgFlags::empty(),
        )
        .expect("sendmmsg")
        .count();
        sent += done.max(1);
    }
}
