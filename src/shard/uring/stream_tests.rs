//! The stream side's ring operations driven directly: accepts and receives of TCP
//! connections whose last completion was lost, the recheck that arms them again, and a
//! receive starved of provided buffers.

use super::tests::{lose_the_end_of, reap};
use super::*;

/// A shard with one TCP listener (no UDP), all of its stream side on the ring.
fn stream_shard() -> (Shard, std::net::SocketAddr) {
    stream_shard_with(&TestKnobs::default())
}

fn stream_shard_with(knobs: &TestKnobs) -> (Shard, std::net::SocketAddr) {
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
        knobs,
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
    lose_the_end_of(&mut shard, op);
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
    lose_the_end_of(&mut shard, op);
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

/// ENOBUFS on a stream connection: its receive, ended for want of buffers, is armed again
/// only once an eighth of the buffers is back (`arm_stream_recvs`), as the UDP receives
/// are. The client keeps far more bytes queued than the buffers hold while a slow consumer
/// holds every buffer the receive filled and lets one go per turn; the loop's bookkeeping
/// is driven by hand (each turn: take the completions, keep their buffers, ask for the
/// receive again when it ended, give one buffer back, `arm_stream_recvs`).
///
/// With the threshold the receive ends every eighth turn; armed as soon as one buffer is
/// back it would end every turn. Counts, not time: deterministic.
#[test]
fn a_starved_stream_receive_waits_for_an_eighth_of_the_buffers() {
    const BUFFERS: u16 = 64;
    const TURNS: usize = 256;
    let knobs = TestKnobs {
        buffers: Some(BUFFERS),
        ..TestKnobs::default()
    };
    let (mut shard, addr) = stream_shard_with(&knobs);
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    assert!(reap_until(&mut shard, |e| {
        matches!(Op::decode(e.user_data()), Some(Op::StreamAccept { .. })) && e.result() >= 0
    }));
    shard.io.submit().unwrap();
    assert_eq!(shard.io.armed, 1, "the connection's receive armed");
    client.set_nonblocking(true).unwrap();
    let chunk = [7u8; 16 * 1024];
    // As much as the sockets take: many times what the buffers hold.
    let fill = |client: &mut std::net::TcpStream| {
        while std::io::Write::write(client, &chunk).is_ok() {}
    };
    fill(&mut client);
    super::tests::one_buffer_back_per_turn(
        &mut shard,
        BUFFERS,
        TURNS,
        || fill(&mut client),
        |e| matches!(Op::decode(e.user_data()), Some(Op::StreamRecv { .. })),
        // As the loop does (`stream_received`).
        |shard, e| {
            let Some(Op::StreamRecv { index, gen }) = Op::decode(e.user_data()) else {
                unreachable!("a stream receive")
            };
            let streams = shard.streams.as_mut().expect("a stream side");
            assert!(streams.rearm_ring(index, gen), "asked for again");
        },
        Shard::arm_stream_recvs,
    );
}
