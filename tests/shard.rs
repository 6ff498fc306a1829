//! The shards below the core, over loopback: failure containment, with faults injected
//! through the test knobs (`UTURN_TEST_*`, `shard::start_with`). A shard that cannot go on
//! stops the real binary with an error within a second, after deleting the allocations;
//! transient errors and a completion queue overflow leave relaying working. Datagram
//! limits, send drops, wildcard listeners and buffer exhaustion are in `shard_io.rs`.

mod common;
mod shard_support;
use common::{Launch, Uturn};
use shard_support::{binding_request, start, Events, Relay};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uturn::client::Client;
use uturn::config::Backend;
use uturn::shard::{Fault, FaultKind, ShardReport, TestKnobs};
use uturn::turn::DeleteReason;

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
