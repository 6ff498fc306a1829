//! The stream side's ring operations driven directly: accepts and receives of TCP
//! connections whose last completion was lost, and the recheck that arms them again.

use super::tests::reap;
use super::*;

/// A shard with one TCP listener (no UDP), all of its stream side on the ring.
fn stream_shard() -> (Shard, std::net::SocketAddr) {
    let shard = Shard::new(
        &["127.0.0.1:0".parse().unwrap()],
        false,
        &crate::shard::stream::StreamOptions {
            tcp: true,
            tls: None,
            ..Default::default()
        },
        16,
        (0, true),
        &TestKnobs::default(),
        None,
    )
    .expect("io_uring set-up (these tests need io_uring)");
    let addr = shard
        .streams
        .as_ref()
        .and_then(|s| s.listener_addr(0))
        .expect("a TCP listener");
    (shard, addr)
}

/// Reaps until `want` says a completion is the one awaited, handing accepts to the
/// stream side and rechecks to the shard as the loop does; gives up after 2 s.
fn reap_until(shard: &mut Shard, mut want: impl FnMut(&cqueue::Entry) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let done = reap(shard, Duration::from_millis(10));
        let mut found = false;
        for e in &done {
            match Op::decode(e.user_data()) {
                Some(Op::StreamAccept { index }) => {
                    shard.stream_accepted(false, Instant::now(), index, e)
                }
                Some(op @ (Op::RecheckStream { .. } | Op::RecheckAccept { .. })) => {
                    shard.rechecked(false, op, e.result())
                }
                _ => {}
            }
            found |= want(e);
        }
        shard.arm_stream_recvs();
        shard.rearm_accepts(Instant::now());
        if found {
            return true;
        }
    }
    false
}

/// The receive of a TCP connection whose last completion the kernel dropped is armed
/// again by the recheck that follows, once: bytes the client sends then arrive.
#[test]
fn a_recheck_rearms_a_stream_receive_whose_end_was_lost() {
    let (mut shard, addr) = stream_shard();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    // Accepted on the ring, and its receive armed.
    assert!(reap_until(&mut shard, |e| {
        matches!(Op::decode(e.user_data()), Some(Op::StreamAccept { .. })) && e.result() >= 0
    }));
    shard.io.submit().unwrap();
    let (slot, gen) = shard
        .streams
        .as_ref()
        .and_then(|s| s.ring_receives().next())
        .expect("the connection was accepted on the ring");
    let op = Op::StreamRecv { index: slot, gen };
    let armed = shard.io.armed;
    assert_eq!(armed, 1, "one stream receive armed");
    // End the receive behind the shard's back and lose its last completion.
    let cancel = opcode::AsyncCancel::new(op.encode())
        .build()
        .user_data(Op::Cancel.encode());
    shard.io.push(&cancel);
    shard.io.submit().unwrap();
    let lost = reap(&mut shard, Duration::from_millis(50));
    assert!(lost.iter().any(|e| Op::decode(e.user_data()) == Some(op)));
    assert_eq!(shard.io.armed, armed, "the shard still counts it as armed");
    shard.recheck_receives();
    shard.io.submit().unwrap();
    reap_until(&mut shard, |e| {
        matches!(Op::decode(e.user_data()), Some(Op::RecheckStream { .. }))
    });
    assert_eq!(shard.io.armed, armed, "armed again, once");
    shard.io.submit().unwrap();
    std::io::Write::write_all(&mut client, b"\x00\x01\x00\x00").unwrap();
    let got = reap_until(&mut shard, |e| {
        Op::decode(e.user_data()) == Some(op) && e.result() > 0
    });
    assert!(got, "the receive works again");
}

/// The same for a listener's multishot accept: a connection made after the recheck is
/// accepted.
#[test]
fn a_recheck_rearms_an_accept_whose_end_was_lost() {
    let (mut shard, addr) = stream_shard();
    let op = Op::StreamAccept { index: 0 };
    let cancel = opcode::AsyncCancel::new(op.encode())
        .build()
        .user_data(Op::Cancel.encode());
    shard.io.push(&cancel);
    shard.io.submit().unwrap();
    // Lost: the accept's end is reaped without the shard seeing it.
    let lost = reap(&mut shard, Duration::from_millis(50));
    assert!(lost.iter().any(|e| Op::decode(e.user_data()) == Some(op)));
    shard.recheck_receives();
    shard.io.submit().unwrap();
    assert!(
        reap_until(&mut shard, |e| matches!(
            Op::decode(e.user_data()),
            Some(Op::RecheckAccept { .. })
        )),
        "the recheck completes"
    );
    shard.io.submit().unwrap();
    let _client = std::net::TcpStream::connect(addr).unwrap();
    let accepted = reap_until(&mut shard, |e| {
        Op::decode(e.user_data()) == Some(op) && e.result() >= 0
    });
    assert!(accepted, "a connection is accepted after the recheck");
    let open = shard
        .streams
        .as_ref()
        .map_or(0, |s| s.ring_receives().count());
    assert_eq!(open, 1);
}
