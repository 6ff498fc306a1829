//! The ring layer driven directly, without a core: relay sockets opened and closed as the
//! core would, completions read back from a real ring.
//!
//! Relay sockets bind on 127.77.x.y with port 0, so the many sockets these tests open take
//! nothing from the ephemeral ports of 127.0.0.1 that other tests use.

use super::io::Sock;
use super::*;
use crate::turn::RelaySockets;
use std::net::UdpSocket;

fn test_shard(relays: usize, knobs: &TestKnobs) -> Shard {
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
    )
    .expect("io_uring set-up (these tests need io_uring)")
}

/// Waits up to `wait` for completions and returns them all (buffers given back).
fn reap(shard: &mut Shard, wait: Duration) -> Vec<cqueue::Entry> {
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
    let cancel = opcode::AsyncCancel::new(op.encode())
        .build()
        .user_data(Op::Cancel.encode());
    shard.io.push(&cancel);
    shard.io.submit().unwrap();
    let lost = reap(&mut shard, Duration::from_millis(50));
    assert!(lost.iter().any(|e| Op::decode(e.user_data()) == Some(op)));
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

/// A relay socket's datagram arrives through the ring, and one it sends leaves from its
/// address; returns how the ring names the socket.
fn relay_round_trip(shard: &mut Shard, id: u32, addr: SocketAddr) -> Sock {
    let (sock, _) = shard.io.relay_fd(RelayId(id)).expect("open");
    let gen = shard.io.relays[id as usize].gen;
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    other.send_to(b"in", addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = false;
    while !got && Instant::now() < deadline {
        got = reap(shard, Duration::from_millis(10)).iter().any(|e| {
            Op::decode(e.user_data()) == Some(Op::RelayRecv { index: id, gen }) && e.result() > 0
        });
    }
    assert!(got, "relay {id} ({sock:?}) receives");
    let sent = shard.io.send(
        &shard.buffers,
        (sock, None),
        other.local_addr().unwrap(),
        SendBuf::Owned(b"out".to_vec()),
    );
    assert!(sent.is_ok());
    shard.io.flush_group();
    reap(shard, Duration::from_millis(10));
    let mut buf = [0u8; 16];
    let (n, from) = other.recv_from(&mut buf).expect("the send arrives");
    assert_eq!((&buf[..n], from), (&b"out"[..], addr));
    sock
}

/// A registered file table smaller than the relay sockets: the listener and the first
/// relays take its slots, the next one is named by descriptor, and a closed relay's slot
/// goes to the next relay opened; every one of them receives and sends.
#[test]
fn relays_beyond_the_file_table_use_descriptors_and_closed_slots_are_reused() {
    let mut shard = test_shard(
        16,
        &TestKnobs {
            fixed_files: Some(3),
            ..TestKnobs::default()
        },
    );
    assert!(shard.describe().contains("3 registered files"));
    let mut addrs = Vec::new();
    for i in 0..3u32 {
        let addr = UdpSocket::bind(format!("127.77.4.{}:0", i + 1))
            .unwrap()
            .local_addr()
            .unwrap();
        shard.io.open(RelayId(i), addr).unwrap();
        addrs.push(addr);
    }
    shard.io.submit().unwrap();
    let socks: Vec<Sock> = (0..3)
        .map(|i| relay_round_trip(&mut shard, i, addrs[i as usize]))
        .collect();
    assert!(matches!(socks[0], Sock::Fixed(_)), "{socks:?}");
    assert!(matches!(socks[1], Sock::Fixed(_)), "{socks:?}");
    assert!(matches!(socks[2], Sock::Raw(_)), "{socks:?}");
    shard.io.close(RelayId(0));
    assert_eq!(shard.io.closing(), 0);
    let addr = UdpSocket::bind("127.77.4.9:0")
        .unwrap()
        .local_addr()
        .unwrap();
    shard.io.open(RelayId(3), addr).unwrap();
    shard.io.submit().unwrap();
    let reused = relay_round_trip(&mut shard, 3, addr);
    assert_eq!(reused, socks[0], "the closed relay's slot is reused");
    // The closed relay's port is free again: nothing holds its socket.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        reap(&mut shard, Duration::from_millis(10));
        match UdpSocket::bind(addrs[0]) {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "port still held: {e}"),
        }
    }
}
