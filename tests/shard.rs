//! The shards below the core, over loopback. Failure containment, with faults injected
//! through the test knobs (`UTURN_TEST_*`, `shard::start_with`): a shard that cannot go on
//! stops the real binary with an error within a second, after deleting the allocations;
//! transient errors and a completion queue overflow leave relaying working. Limits: both
//! backends take the same largest datagram and count larger ones.

mod common;
use common::{wait_until, Launch, Uturn};
use std::net::{SocketAddr, UdpSocket};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uturn::client::{Client, Incoming};
use uturn::config::{Backend, Config};
use uturn::shard::{Fault, FaultKind, Running, ShardReport, TestKnobs};
use uturn::stats::EventSink;
use uturn::stun::{Class, MessageBuilder, Method};
use uturn::turn::{DeleteReason, Event};

fn binding_request() -> Vec<u8> {
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Class::Request, Method::BINDING, &[9; 12]);
    req
}

// ---- the real binary ----

/// Starts the binary with two shards and `fault`; ready once it logs so (a Binding probe
/// could fire the fault).
fn spawn_faulty(backend: &str, fault: &str) -> Uturn {
    Uturn::start_with(Launch {
        backend,
        extra: &["--cores", "0-1", "--log-level", "info"],
        env: &[("UTURN_TEST_FAULT", fault)],
        // As a service runs it: scripts/test.sh sets RUST_BACKTRACE=1, and symbolising a
        // debug binary's backtrace alone took over a second on the loaded test machine.
        env_remove: &["RUST_BACKTRACE"],
        no_probe: true,
        ..Launch::default()
    })
}

/// Seconds since midnight UTC of a log line's RFC 3339 timestamp ("…T09:16:39.123456Z").
fn time_of_day(line: &str) -> Option<f64> {
    let clock = line.split_whitespace().next()?.split_once('T')?.1;
    let clock = clock.strip_suffix('Z')?;
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Datagrams from 32 client ports reach shard 0 (each of two shards gets a given 5-tuple
/// with probability 1/2); the fault fires on its first. The process must exit with an
/// error within a second of the fault firing (the time from the log line the fault writes
/// to when this test sees the exit: this test's own delays only make it stricter).
fn exits_nonzero_within_a_second(backend: &str, fault: &str, cause: &str) {
    let mut p = spawn_faulty(backend, fault);
    let server = p.addr();
    let clients: Vec<UdpSocket> = (0..32)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for c in &clients {
        c.send_to(&binding_request(), server).unwrap();
    }
    // Generous: the exit's own deadline is checked against the fault's timestamp below.
    let status = p.try_wait_exit(Duration::from_secs(60));
    let exited_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 86_400.0;
    let log = p.log_text();
    let status =
        status.unwrap_or_else(|| panic!("still running 60 s after the fault; log:\n{log}"));
    let fired = log
        .lines()
        .find(|l| l.contains("injected test fault fires"))
        .and_then(time_of_day)
        .unwrap_or_else(|| panic!("no timestamped line for the fault; log:\n{log}"));
    let took = (exited_at - fired).rem_euclid(86_400.0);
    assert!(
        took <= 1.0,
        "exited {took:.3} s after the fault fired; log:\n{log}"
    );
    assert_eq!(status.code(), Some(1), "exit status; log:\n{log}");
    assert!(
        log.contains(&format!("shard 0 ({backend}) failed")) && log.contains(cause),
        "the log names the failed shard and the cause; log:\n{log}"
    );
    assert!(
        log.contains("shard stopped"),
        "the other shard stopped cleanly; log:\n{log}"
    );
}

#[test]
fn a_fatal_ring_error_stops_the_process_with_an_error() {
    exits_nonzero_within_a_second("io-uring", "wait:EFAULT", "Bad address");
}

#[test]
fn a_panicking_io_uring_shard_stops_the_process_with_an_error() {
    exits_nonzero_within_a_second("io-uring", "panic", "panicked: injected test fault");
}

#[test]
fn a_fatal_epoll_error_stops_the_process_with_an_error() {
    exits_nonzero_within_a_second("portable", "wait:EFAULT", "Bad address");
}

// ---- in process ----

#[derive(Default)]
struct Events(Mutex<Vec<Event>>);

impl EventSink for Events {
    fn send(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    fn created(&self) -> Vec<(u64, SocketAddr)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                Event::AllocationCreated { info, .. } => Some((info.id, info.relay)),
                _ => None,
            })
            .collect()
    }

    fn deleted(&self) -> Vec<(u64, DeleteReason)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                Event::AllocationDeleted { info, reason, .. } => Some((info.id, *reason)),
                _ => None,
            })
            .collect()
    }
}

fn start(config: Config, events: &Arc<Events>, knobs: TestKnobs) -> Running {
    for _attempt in 0..20 {
        let mut c = config.clone();
        c.listening_port = common::free_listen_port();
        (c.min_port, c.max_port) = common::free_port_block(100);
        let observer = uturn::observer_from_config(&c);
        let sink = Some(events.clone() as Arc<dyn EventSink>);
        match uturn::shard::start_with(&c, observer, sink, knobs.clone()) {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("start: {e}"),
        }
    }
    panic!("no free ports");
}

fn fault(kind: FaultKind, shard: usize, after: u64) -> TestKnobs {
    TestKnobs {
        fault: Some(Fault {
            kind,
            shard,
            after,
            times: 1,
        }),
        ..TestKnobs::default()
    }
}

/// Shard 1 fails with `kind` once it has received 40 datagrams: it deletes its
/// allocations (observers and stats see them) and reports; stopping the server deletes
/// the other shard's.
fn failed_shard_deletes_its_allocations(backend: Backend, kind: FaultKind, cause: &str) {
    let events = Arc::new(Events::default());
    let config = common::loopback_config(2, |c| c.backend = backend);
    let running = start(config, &events, fault(kind, 1, 40));
    let server = running.local_addrs()[0];
    // Each shard relays from its own slice of the port range.
    let slices = running.port_slices().to_vec();
    let shard_of = |relayed: SocketAddr| {
        slices
            .iter()
            .position(|(lo, hi)| (*lo..=*hi).contains(&relayed.port()))
            .unwrap()
    };
    let mut on_shard = [Vec::new(), Vec::new()];
    while on_shard.iter().any(Vec::is_empty) {
        assert!(
            on_shard[0].len() + on_shard[1].len() < 12,
            "no allocation on each shard"
        );
        let mut c = Client::connect(server, "alice", "secret").unwrap();
        let relayed = c.allocate(None).expect("allocate");
        on_shard[shard_of(relayed)].push((relayed, c));
    }
    let on_failing: Vec<SocketAddr> = on_shard[1].iter().map(|(r, _)| *r).collect();
    let trigger = on_shard[1][0].1.socket().try_clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let failure = loop {
        trigger.send_to(&binding_request(), server).unwrap();
        if let Some(f) = running.wait_failure(Duration::from_millis(10)) {
            break f;
        }
        if Instant::now() >= deadline {
            let reports = running.stop();
            panic!("the shard did not fail: {reports:?}");
        }
    };
    assert_eq!(failure.index, 1);
    assert!(failure.cause.contains(cause), "{failure}");
    let created = events.created();
    let deleted = events.deleted();
    for relayed in &on_failing {
        let (id, _) = created.iter().find(|(_, r)| r == relayed).unwrap();
        assert!(
            deleted.contains(&(*id, DeleteReason::Shutdown)),
            "allocation {id} of the failed shard deleted at once: {deleted:?}"
        );
    }
    let reports: Vec<ShardReport> = running.stop();
    assert!(reports[1].failure.is_some() && reports[0].failure.is_none());
    let deleted = events.deleted();
    for (id, _) in events.created() {
        assert!(
            deleted.iter().any(|(d, _)| *d == id),
            "{id} deleted at stop"
        );
    }
}

#[test]
fn a_panicking_io_uring_shard_deletes_its_allocations() {
    failed_shard_deletes_its_allocations(Backend::IoUring, FaultKind::Panic, "panicked");
}

#[test]
fn a_failing_io_uring_shard_deletes_its_allocations() {
    failed_shard_deletes_its_allocations(
        Backend::IoUring,
        FaultKind::WaitError(libc::EFAULT),
        "io_uring_enter failed",
    );
}

#[test]
fn a_failing_portable_shard_deletes_its_allocations() {
    failed_shard_deletes_its_allocations(
        Backend::Portable,
        FaultKind::WaitError(libc::EFAULT),
        "epoll_wait failed",
    );
}

/// One allocation with a channel to a peer; `rounds` ChannelData round trips.
struct Relay {
    client: Client,
    peer: UdpSocket,
    relayed: SocketAddr,
}

impl Relay {
    fn new(server: SocketAddr) -> Relay {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut client = Client::connect(server, "alice", "secret").unwrap();
        let relayed = client.allocate(None).expect("allocate");
        let peer_addr = peer.local_addr().unwrap();
        client.create_permission(&[peer_addr]).unwrap();
        client.channel_bind(0x4000, peer_addr).unwrap();
        Relay {
            client,
            peer,
            relayed,
        }
    }

    /// A round trip with a payload no other datagram carries; earlier datagrams still
    /// queued at either end are skipped, lost ones retried, within two seconds.
    fn round_trip(&mut self, tag: u32) -> bool {
        let payload = format!("round trip {tag}").into_bytes();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 4096];
        let mut at_peer = false;
        while !at_peer && Instant::now() < deadline {
            self.client.send_channel_data(0x4000, &payload).unwrap();
            while let Ok((n, _)) = self.peer.recv_from(&mut buf) {
                if buf[..n] == payload[..] {
                    at_peer = true;
                    break;
                }
            }
        }
        while at_peer && Instant::now() < deadline {
            self.peer.send_to(&payload, self.relayed).unwrap();
            while let Ok(incoming) = self.client.recv(Duration::from_millis(200)) {
                if incoming
                    == (Incoming::ChannelData {
                        channel: 0x4000,
                        data: payload.clone(),
                    })
                {
                    return true;
                }
            }
        }
        false
    }
}

/// A transient wait error (injected once, after the set-up) is retried: relaying goes on,
/// the shard reports no failure.
fn transient_error_keeps_relaying(backend: Backend, errno: i32) -> ShardReport {
    let events = Arc::new(Events::default());
    let config = common::loopback_config(1, |c| c.backend = backend);
    let running = start(config, &events, fault(FaultKind::WaitError(errno), 0, 10));
    let mut relay = Relay::new(running.local_addrs()[0]);
    for i in 0..20 {
        assert!(relay.round_trip(i), "round trip {i} after errno {errno}");
    }
    assert!(running.wait_failure(Duration::ZERO).is_none());
    let report = running.stop().remove(0);
    assert!(report.failure.is_none());
    assert!(report.io.received >= 10, "the fault was reached");
    report
}

#[test]
fn transient_io_uring_errors_are_retried() {
    for errno in [libc::EAGAIN, libc::EBUSY, libc::ENOMEM, libc::EINTR] {
        transient_error_keeps_relaying(Backend::IoUring, errno);
    }
}

#[test]
fn dropped_completions_are_counted_and_relaying_goes_on() {
    let report = transient_error_keeps_relaying(Backend::IoUring, libc::EBADR);
    assert!(report.io.cq_lost >= 1, "{:?}", report.io);
}

/// A transient error that does not go away is not retried for ever: after 5 s the shard
/// counts as unable to go on.
#[test]
fn a_transient_error_that_persists_is_fatal() {
    let events = Arc::new(Events::default());
    let config = common::loopback_config(1, |c| c.backend = Backend::IoUring);
    let mut knobs = fault(FaultKind::WaitError(libc::EAGAIN), 0, 1);
    if let Some(f) = &mut knobs.fault {
        f.times = 0;
    }
    let running = start(config, &events, knobs);
    let server = running.local_addrs()[0];
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(&binding_request(), server).unwrap();
    let sent = Instant::now();
    let failure = running
        .wait_failure(Duration::from_secs(15))
        .expect("the shard gave up");
    let took = sent.elapsed();
    assert!(failure.cause.contains("kept failing"), "{failure}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(10),
        "gave up after {took:?}"
    );
    running.stop();
}

#[test]
fn an_interrupted_epoll_wait_is_retried() {
    transient_error_keeps_relaying(Backend::Portable, libc::EINTR);
}

/// A completion queue of 8 entries and a peer flooding the relay: the queue overflows
/// into the kernel's list many times, and relaying goes on.
#[test]
fn an_overflowing_completion_queue_keeps_relaying() {
    let events = Arc::new(Events::default());
    let config = common::loopback_config(1, |c| c.backend = Backend::IoUring);
    let knobs = TestKnobs {
        cq_entries: Some(8),
        ..TestKnobs::default()
    };
    let running = start(config, &events, knobs);
    let mut relay = Relay::new(running.local_addrs()[0]);
    // The peer has a permission; its flood is relayed to a client that reads only what it
    // looks for.
    let flood = relay.peer.try_clone().unwrap();
    for round in 0..5u32 {
        for _ in 0..2_000 {
            let _ = flood.send_to(b"flood", relay.relayed);
        }
        assert!(relay.round_trip(round), "round trip {round} after a flood");
    }
    let report = running.stop().remove(0);
    assert!(report.failure.is_none());
    assert!(
        report.io.cq_overflowed > 0,
        "the test did not overflow the completion queue: {:?}",
        report.io
    );
}

/// Both backends relay a datagram of `MAX_DATAGRAM` bytes either way and drop, counting
/// it, one byte more.
fn largest_datagram(backend: Backend) {
    use uturn::shard::MAX_DATAGRAM;
    let events = Arc::new(Events::default());
    let config = common::loopback_config(1, |c| c.backend = backend);
    let running = start(config, &events, TestKnobs::default());
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
    largest_datagram(Backend::IoUring);
}

#[test]
fn portable_takes_the_largest_datagram_and_counts_larger() {
    largest_datagram(Backend::Portable);
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
    for _ in 0..2_000 {
        let _ = relay.peer.send_to(b"flood", relay.relayed);
    }
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

/// Ids of this process's threads named `name` (other tests' servers have shard threads of
/// the same names).
fn thread_ids(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .map(|t| t.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
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
    let earlier = thread_ids("uturn-shard-0");
    let running = start(config, &events, knobs);
    let mut ours = thread_ids("uturn-shard-0");
    ours.retain(|t| !earlier.contains(t));
    assert_eq!(
        ours.len(),
        1,
        "another test started a shard at the same moment: {ours:?}"
    );
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
