//! The ring layer driven directly, without a core: relay sockets opened and closed as the
//! core would, completions read back from a real ring.
//!
//! Relay sockets bind on 127.77.x.y with port 0, so the many sockets these tests open take
//! nothing from the ephemeral ports of 127.0.0.1 that other tests use.

use super::*;
use crate::testing::netns::{in_own_netns, run};
use crate::turn::RelaySockets;
use std::net::UdpSocket;
use std::os::fd::BorrowedFd;

pub(super) fn test_shard(relays: usize, knobs: &TestKnobs) -> Shard {
    Shard::new(
        &["127.0.0.1:0".parse().unwrap()],
        true,
        &crate::shard::stream::StreamOptions {
            tcp: false,
            ..Default::default()
        },
        relays,
        (0, true),
        knobs,
        None,
    )
    .expect("io_uring set-up (these tests need io_uring)")
}

/// Waits up to `wait` for completions and returns them all (buffers given back).
pub(super) fn reap(shard: &mut Shard, wait: Duration) -> Vec<cqueue::Entry> {
    shard.buffers.publish();
    let ts = Timespec::new()
        .sec(wait.as_secs())
        .nsec(wait.subsec_nanos());
    let args = SubmitArgs::new().timespec(&ts);
    let _ = shard.io.ring.submitter().submit_with_args(1, &args);
    shard.io.submitted();
    let done: Vec<cqueue::Entry> = shard.io.ring.completion().collect();
    for entry in &done {
        if let Some(lent) = shard.buffers.take(entry) {
            shard.buffers.give_back(lent);
        }
    }
    done
}

fn relay_ends(entries: &[cqueue::Entry]) -> usize {
    entries
        .iter()
        .filter(|e| {
            matches!(Op::decode(e.user_data()), Some(Op::RelayRecv { .. }))
                && !cqueue::more(e.flags())
        })
        .count()
}

#[test]
fn cq_sizing_covers_a_burst_of_cancellations_of_every_relay_socket() {
    // One shard on the default port range (49152-65535) holds up to 16,384 relay sockets.
    const RELAYS: u32 = 16_500;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    if soft < hard {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).unwrap();
    }
    assert!(
        hard >= u64::from(RELAYS) + 512,
        "NOT RUN: this test needs {} open files, the hard limit is {hard} (ulimit -Hn)",
        RELAYS + 512
    );
    let mut shard = test_shard(RELAYS as usize, &TestKnobs::default());
    let ip = "127.77.0.1:0".parse().unwrap();
    for i in 0..RELAYS {
        shard.io.open(RelayId(i), ip).expect("open relay socket");
    }
    shard.io.submit().unwrap();
    let mut entries = reap(&mut shard, Duration::from_millis(1));
    // A shutdown: every relay closed within one turn.
    for i in 0..RELAYS {
        shard.io.close(RelayId(i));
    }
    // The ends of the cancelled receives are posted on the next wait.
    let ts = Timespec::new().nsec(10_000_000);
    let _ = shard
        .io
        .ring
        .submitter()
        .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
    let (queued, room) = {
        let cq = shard.io.ring.completion();
        (cq.len(), cq.capacity())
    };
    eprintln!("after the burst: {queued} completions queued in {room}");
    assert!(
        !shard.io.ring.submission().cq_overflow(),
        "the completion queue overflowed"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay_ends(&entries) < RELAYS as usize && Instant::now() < deadline {
        entries.extend(reap(&mut shard, Duration::from_millis(10)));
    }
    assert_eq!(relay_ends(&entries), RELAYS as usize, "every receive ended");
    assert_eq!(shard.io.ring.completion().overflow(), 0, "nothing dropped");
}

#[test]
fn cq_size_grows_with_the_relay_sockets() {
    assert_eq!(cq_entries(100, 1), CQ_MIN);
    assert!(cq_entries(10_000, 2) as usize >= 2 * 10_002 + SEND_SLOTS);
    assert_eq!(cq_entries(1_000_000, 2), CQ_MAX);
}

/// A relay's multishot receive ends, its allocation is deleted and a new one reuses the
/// slot, all within one turn: the stale re-arm entry must not arm the new socket a second
/// time (a second receive would survive `close`, holding the port for ever).
#[test]
fn a_stale_rearm_entry_does_not_arm_a_reused_slot() {
    let mut shard = test_shard(16, &TestKnobs::default());
    shard
        .io
        .open(RelayId(0), "127.77.1.1:0".parse().unwrap())
        .unwrap();
    let gen = shard.io.relays[0].gen;
    // As the loop does when the receive's last completion arrives.
    shard.io.rearm.push(Op::RelayRecv { index: 0, gen });
    shard.io.close(RelayId(0));
    let second = UdpSocket::bind("127.77.1.2:0").unwrap();
    let addr = second.local_addr().unwrap();
    drop(second);
    shard.io.open(RelayId(0), addr).unwrap();
    shard.rearm();
    shard.io.close(RelayId(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        reap(&mut shard, Duration::from_millis(10));
        // Once no receive holds it, the port can be bound again.
        match UdpSocket::bind(addr) {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "port still held by an armed receive: {e}"
            ),
        }
    }
}

/// `close` when the submit fails: a send queued for the old socket must still leave from
/// the old socket's address, never from a new socket that got the same descriptor number
/// or registered file slot.
#[test]
fn a_queued_send_never_leaves_from_another_relay_address() {
    a_queued_send_leaves_from_its_own_relay(&TestKnobs::default());
}

#[test]
fn a_queued_send_never_leaves_from_another_relay_address_with_plain_descriptors() {
    a_queued_send_leaves_from_its_own_relay(&TestKnobs {
        fixed_files: Some(0),
        ..TestKnobs::default()
    });
}

fn a_queued_send_leaves_from_its_own_relay(knobs: &TestKnobs) {
    let mut shard = test_shard(16, knobs);
    assert_eq!(shard.io.fixed_files(), knobs.fixed_files != Some(0));
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let a_addr = {
        let probe = UdpSocket::bind("127.77.2.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    shard.io.open(RelayId(0), a_addr).unwrap();
    shard.io.submit().unwrap();
    let fd_a = shard.io.relay_fd(RelayId(0)).unwrap();
    let sent = shard.io.send(
        &shard.buffers,
        fd_a,
        receiver.local_addr().unwrap(),
        SendBuf::Owned(b"from a".to_vec()),
    );
    assert!(sent.is_ok());
    // The submit inside close fails; the send stays queued.
    shard.io.fail_submits = 1;
    shard.io.close(RelayId(0));
    shard
        .io
        .open(RelayId(1), "127.77.2.2:0".parse().unwrap())
        .unwrap();
    let fd_b = shard.io.relay_fd(RelayId(1)).unwrap();
    assert_ne!(
        fd_a.0, fd_b.0,
        "the descriptor or file slot of a relay being closed was reused"
    );
    reap(&mut shard, Duration::from_millis(10));
    let mut buf = [0u8; 64];
    let (n, from) = receiver
        .recv_from(&mut buf)
        .expect("the queued send arrives");
    assert_eq!(&buf[..n], b"from a");
    assert_eq!(from, a_addr, "sent from another allocation's relay address");
    // Once everything queued reached the kernel, the old descriptor is closed.
    reap(&mut shard, Duration::from_millis(10));
    assert_eq!(shard.io.closing(), 0);
}

/// A receive whose last completion the kernel dropped is armed again by the recheck that
/// follows, once: data sent to its socket then arrives, and one receive is armed.
#[test]
fn a_recheck_rearms_a_receive_whose_end_was_lost() {
    let mut shard = test_shard(16, &TestKnobs::default());
    let addr = UdpSocket::bind("127.77.3.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    shard.io.open(RelayId(0), addr).unwrap();
    let armed = shard.io.armed;
    let gen = shard.io.relays[0].gen;
    let op = Op::RelayRecv { index: 0, gen };
    // End the receive behind the shard's back and lose its last completion.
    lose_the_end_of(&mut shard, op);
    assert_eq!(shard.io.armed, armed, "the shard still counts it as armed");
    // The loop's reaction to a drop: rechecks after the turn's re-arms.
    shard.recheck_receives();
    let deadline = Instant::now() + Duration::from_secs(2);
    while shard.io.rearm.is_empty() && Instant::now() < deadline {
        for e in reap(&mut shard, Duration::from_millis(10)) {
            if let Some(recheck @ Op::RecheckRelay { .. }) = Op::decode(e.user_data()) {
                shard.rechecked(false, recheck, e.result());
            }
        }
    }
    assert_eq!(shard.io.rearm, vec![op], "re-armed once");
    shard.rearm();
    assert_eq!(shard.io.armed, armed);
    shard.io.submit().unwrap();
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"after", addr)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = false;
    while !got && Instant::now() < deadline {
        got = reap(&mut shard, Duration::from_millis(10))
            .iter()
            .any(|e| Op::decode(e.user_data()) == Some(op) && e.result() > 0);
    }
    assert!(got, "the receive works again");
}

/// The payload of test send `i`: recognisable in every byte.
fn payload(i: u8) -> Vec<u8> {
    let mut p = vec![i; 64];
    p[..4].copy_from_slice(b"send");
    p
}

/// A drain that reaches its bound with sends in flight keeps their send slots (msghdr,
/// address, and the bytes of a response the core built) for the life of the process: the
/// kernel reads those bytes when it gets round to the send, which it may do after the
/// shard has given up on it.
///
/// Sends are held in flight by a token bucket of 1 byte/s on the loopback of a namespace
/// of the test's own and a listening socket with the smallest send buffer: the first
/// datagrams pass or wait in the qdisc, charged to the socket, and every further send
/// waits in the kernel for room (poll-armed). The drain then cannot finish and must
/// report what it leaked.
///
/// The observable: the kernel reading those slots after the shard is gone. When the ring
/// itself lets go of a send is the kernel's affair (its teardown runs on a kernel worker,
/// after `close`); the test makes "later" deterministic by keeping a second descriptor of
/// the ring open past the shard's drop, then removing the qdisc (room in the send buffer
/// again) and entering the ring, so the held sends leave. Each must carry the bytes it was
/// given. With the slots freed instead of leaked (`Io::leak` not called) the allocator
/// reuses their memory and the datagrams leave with other bytes, or not at all.
#[test]
fn a_drain_past_its_bound_leaks_the_slots_of_sends_in_flight() {
    in_own_netns(|| {
        run(
            "tc",
            &["qdisc", "add", "dev", "lo", "root", "tbf", "rate", "8bit"]
                .into_iter()
                .chain(["burst", "4kb", "limit", "1mb"])
                .collect::<Vec<_>>(),
        );
        let mut shard = test_shard(16, &TestKnobs::default());
        let listener = &shard.io.listeners[0].1;
        socket2::SockRef::from(listener)
            .set_send_buffer_size(1)
            .unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_nonblocking(true).unwrap();
        let to = receiver.local_addr().unwrap();
        let fd = shard
            .io
            .listener_for(shard.io.listeners[0].0)
            .expect("listener");
        const SENDS: u8 = 100;
        for i in 0..SENDS {
            let queued = shard
                .io
                .send(&shard.buffers, fd, to, SendBuf::Owned(payload(i)));
            assert!(queued.is_ok(), "send {i} not queued");
        }
        shard.io.submit().unwrap();
        // The sends that can go out complete at once; the others wait for room. Settled
        // once the count of sends in flight holds still over several waits.
        let mut completed = 0;
        let (mut held, mut still) = (usize::MAX, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while still < 5 {
            assert!(Instant::now() < deadline, "sends in flight never settled");
            let ts = Timespec::new().nsec(20_000_000);
            let _ = shard
                .io
                .ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            let done: Vec<cqueue::Entry> = shard.io.ring.completion().collect();
            for e in &done {
                if let Some(Op::Send { slot }) = Op::decode(e.user_data()) {
                    assert!(e.result() > 0, "send failed: {}", e.result());
                    let buffers = &mut shard.buffers;
                    completed += shard.io.finish_send(slot, |b| give_back(buffers, b));
                }
            }
            let now = shard.io.sends_in_flight();
            still = if now == held { still + 1 } else { 0 };
            held = now;
        }
        assert!(
            held > 0 && completed > 0,
            "no send held in flight ({completed} completed): the qdisc did not hold them"
        );
        assert_eq!(completed + held, usize::from(SENDS));
        // What left before the drain arrived intact (or waits in the qdisc).
        let mut buf = [0u8; 256];
        let mut seen = std::collections::BTreeSet::new();
        while let Ok(n) = receiver.recv(&mut buf) {
            assert_eq!(&buf[..n], &payload(buf[n - 1])[..], "a datagram changed");
            seen.insert(buf[n - 1]);
        }
        // SAFETY: the ring's descriptor is open while `shard` lives; it is only duplicated.
        let ring = unsafe { BorrowedFd::borrow_raw(shard.io.ring.as_raw_fd()) }
            .try_clone_to_owned()
            .unwrap();
        let started = Instant::now();
        let leaked = shard.drain().expect("the drain reached its bound");
        assert!(started.elapsed() >= super::drain::BOUND);
        assert_eq!(leaked.send_slots, held, "{leaked:?}");
        drop(shard);
        // Whatever the allocator does with memory handed back to it, in this thread.
        let reuse: Vec<Vec<u8>> = (0..1024).map(|_| vec![0xee; 64]).collect();
        run("tc", &["qdisc", "del", "dev", "lo", "root"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut after = 0;
        while after < held && Instant::now() < deadline {
            enter(&ring);
            std::thread::sleep(Duration::from_millis(5));
            while let Ok(n) = receiver.recv(&mut buf) {
                let i = buf[n - 1];
                assert_eq!(
                    &buf[..n],
                    &payload(i)[..],
                    "a send in flight at the drain left with bytes that were not its own"
                );
                assert!(seen.insert(i), "datagram {i} twice");
                after += 1;
            }
        }
        eprintln!("{completed} sends completed, {held} held in flight at the drain ({leaked:?}), {after} arrived intact after it");
        assert_eq!(
            after, held,
            "sends held at the drain that arrived afterwards"
        );
        drop(reuse);
    });
}

/// Runs a ring's pending work through descriptor `ring` (io_uring_enter with GETEVENTS,
/// nothing to submit, no completion to wait for).
fn enter(ring: &std::os::fd::OwnedFd) {
    const IORING_ENTER_GETEVENTS: libc::c_long = 1;
    // SAFETY: with nothing to submit and no argument pointer the call reads and writes no
    // memory of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            ring.as_raw_fd(),
            0,
            0,
            IORING_ENTER_GETEVENTS,
            std::ptr::null::<u8>(),
            0,
        )
    };
    assert!(
        r >= 0,
        "io_uring_enter: {}",
        std::io::Error::last_os_error()
    );
}

/// Ends `op` behind the shard's back (a cancel the loop never hears of) and reaps its last
/// completion, as if the kernel had dropped it.
pub(super) fn lose_the_end_of(shard: &mut Shard, op: Op) {
    let cancel = opcode::AsyncCancel::new(op.encode())
        .build()
        .user_data(Op::Cancel.encode());
    shard.io.push(&cancel);
    shard.io.submit().unwrap();
    let lost = reap(shard, Duration::from_millis(50));
    assert!(lost.iter().any(|e| Op::decode(e.user_data()) == Some(op)));
}

/// ENOBUFS: a receive that ran out of buffers is armed again only once an eighth of the
/// buffers is back, not as soon as one is. A flood waits in a relay socket's queue while a
/// slow consumer holds every buffer it was given (sends still in flight) and lets one go
/// per turn, the loop's bookkeeping driven by hand: each turn takes the completions (every
/// received buffer is held), gives one held buffer back, and calls the loop's `rearm`.
///
/// With the threshold the receive is armed again every eighth turn (`BUFFERS / 8` buffers
/// back) and each time takes them all before it fails; re-armed as soon as one buffer is
/// back, it would fail with ENOBUFS every turn, a wasted arm and completion per turn for
/// as long as the consumer is slow. Counts, not time: deterministic.
#[test]
fn a_starved_receive_waits_for_an_eighth_of_the_buffers() {
    const BUFFERS: u16 = 64;
    const TURNS: usize = 256;
    let knobs = TestKnobs {
        buffers: Some(BUFFERS),
        ..TestKnobs::default()
    };
    let mut shard = test_shard(16, &knobs);
    // Port 0: the kernel picks a free one for the relay socket itself.
    shard
        .io
        .open(RelayId(0), "127.77.4.1:0".parse().unwrap())
        .unwrap();
    let relay = shard.io.relays[0].socket.as_ref().expect("open");
    let addr = relay.local_addr().unwrap();
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    // More than every buffer, and one more datagram per turn than the consumer frees, so
    // the socket's queue never runs dry.
    for _ in 0..2 * BUFFERS {
        flood.send_to(&[7; 32], addr).unwrap();
    }
    one_buffer_back_per_turn(
        &mut shard,
        BUFFERS,
        TURNS,
        || {
            flood.send_to(&[7; 32], addr).unwrap();
        },
        |e| matches!(Op::decode(e.user_data()), Some(Op::RelayRecv { .. })),
        // As the loop does (`received`).
        |shard, e| shard.io.starved.push(Op::decode(e.user_data()).unwrap()),
        Shard::rearm,
    );
}

/// Drives the loop's receive bookkeeping by hand for `turns` turns against a consumer that
/// holds every buffer a receive filled and gives one back per turn: each turn `feed`s the
/// sender, takes the completions of the receive (`ours`), keeps their buffers, lets
/// `ended` do the loop's part when the receive ended (it must have ended with ENOBUFS),
/// gives one buffer back and calls `rearm`, the loop's re-arming under test. Then checks
/// that the receive ran dry once per `buffers / 8` turns: re-armed as soon as one buffer
/// is back, it would run dry every turn.
pub(super) fn one_buffer_back_per_turn(
    shard: &mut Shard,
    buffers: u16,
    turns: usize,
    mut feed: impl FnMut(),
    ours: impl Fn(&cqueue::Entry) -> bool,
    mut ended: impl FnMut(&mut Shard, &cqueue::Entry),
    mut rearm: impl FnMut(&mut Shard),
) {
    let mut held: std::collections::VecDeque<Lent> = Default::default();
    let (mut armed, mut arms, mut starved) = (true, 1, 0);
    for _ in 0..turns {
        feed();
        // A receive armed with data waiting takes the free buffers and fails: wait for
        // its end.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ts = Timespec::new().nsec(1_000_000);
            let _ = shard
                .io
                .ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            shard.io.submitted();
            let done: Vec<cqueue::Entry> = shard.io.ring.completion().collect();
            for e in done.iter().filter(|e| ours(e)) {
                if let Some(lent) = shard.buffers.take(e) {
                    held.push_back(lent);
                }
                if !cqueue::more(e.flags()) {
                    shard.io.armed -= 1;
                    armed = false;
                    assert_eq!(e.result(), -libc::ENOBUFS, "the receive ended otherwise");
                    starved += 1;
                    ended(shard, e);
                }
            }
            if !armed {
                break;
            }
            assert!(Instant::now() < deadline, "the armed receive never ran dry");
        }
        // One buffer of the slow consumer goes back.
        if let Some(lent) = held.pop_front() {
            shard.buffers.give_back(lent);
        }
        let before = shard.io.armed;
        rearm(shard);
        if shard.io.armed > before {
            arms += 1;
            armed = true;
        }
        shard.buffers.publish();
    }
    eprintln!("{turns} turns: {arms} arms, {starved} ENOBUFS ends");
    let eighth = turns / usize::from(buffers / 8);
    assert!(
        starved <= eighth + 1,
        "ENOBUFS {starved} times in {turns} turns, one buffer back per turn (re-armed \
         before an eighth of the buffers was back)"
    );
    assert!(
        starved >= eighth - 1,
        "ENOBUFS only {starved} times in {turns} turns: the sender did not starve the receive"
    );
    for lent in held {
        shard.buffers.give_back(lent);
    }
}
