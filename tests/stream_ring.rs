//! TCP clients on the io_uring shard: accepted, read and written on the ring (multishot
//! accept, multishot receives into the provided buffers, sends from the peer datagram's
//! own buffer or the connection's queue); with `UTURN_TEST_STREAM_RING_SENDS=false` read on
//! the ring but accepted and written through the epoll set; with
//! `UTURN_TEST_STREAM_EPOLL=true` all through the epoll set. On every path a frame split
//! into tiny writes, a frame longer than a provided buffer and many frames in one write
//! arrive whole and in order, and the peer's answers come back as ChannelData, in order,
//! padded to 4 with zero bytes (never stale bytes of a reused buffer).

mod common;
mod stream_support;
use common::*;
use std::io::Write;
use std::net::UdpSocket;
use std::time::Duration;
use stream_support::TcpTurn;
use uturn::stun::ChannelData;

const CHANNEL: u16 = 0x4000;

fn relays_whole_frames(server: &Uturn) {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut client = TcpTurn::connect(server.addr(), "alice", "secret");
    client.allocate();
    client.bind(CHANNEL, peer.local_addr().unwrap());
    let mut got = vec![0u8; 20_000];

    // 10,000 bytes (several provided buffers) written 7 bytes at a time.
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut frame = Vec::new();
    ChannelData::encode(CHANNEL, &big, true, &mut frame);
    for chunk in frame.chunks(7) {
        client.stream.write_all(chunk).unwrap();
        client.stream.flush().unwrap();
    }
    let (n, relay) = peer
        .recv_from(&mut got)
        .expect("the split frame reaches the peer");
    assert_eq!(&got[..n], &big[..], "the split frame arrives whole");

    // 50 frames in one write: each reaches the peer, in order.
    let mut burst = Vec::new();
    for i in 0..50u32 {
        ChannelData::encode(CHANNEL, &i.to_be_bytes(), true, &mut burst);
    }
    client.stream.write_all(&burst).unwrap();
    for i in 0..50u32 {
        let (n, _) = peer.recv_from(&mut got).expect("a burst frame");
        assert_eq!(&got[..n], &i.to_be_bytes(), "burst frame {i}");
    }

    // The peer answers: ChannelData on the connection.
    peer.send_to(b"answer from the peer", relay).unwrap();
    let back = client
        .recv(Duration::from_secs(5))
        .expect("the peer's answer over TCP");
    let decoded = ChannelData::parse(&back).expect("ChannelData");
    assert_eq!(decoded.number, CHANNEL);
    assert_eq!(decoded.payload, b"answer from the peer");

    // A burst from the peer: large datagrams leave non-zero bytes in the provided buffers,
    // odd-sized ones after them need padding. Every frame comes back whole, in order,
    // padded with zeros.
    let sizes: Vec<usize> = (0..400)
        .map(|i| if i % 2 == 0 { 1200 } else { 1 + i % 7 })
        .collect();
    for (i, &len) in sizes.iter().enumerate() {
        let payload = vec![0xa0 | (i % 16) as u8; len];
        peer.send_to(&payload, relay).unwrap();
        if i % 32 == 0 {
            // Keeps the relay socket's receive queue from overflowing on a loaded host.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for (i, &len) in sizes.iter().enumerate() {
        let frame = client
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("peer datagram {i} of {}", sizes.len()));
        let padded = 4 + len.next_multiple_of(4);
        assert_eq!(frame.len(), padded, "frame {i}: ChannelData padded to 4");
        let decoded = ChannelData::parse(&frame).expect("ChannelData");
        assert_eq!(
            decoded.payload,
            &vec![0xa0 | (i % 16) as u8; len][..],
            "frame {i}"
        );
        assert!(
            frame[4 + len..].iter().all(|&b| b == 0),
            "frame {i}: padding {:?} is not zero",
            &frame[4 + len..]
        );
    }
}

fn check(server: Uturn, path: &str) {
    let result = std::panic::catch_unwind(|| {
        assert!(
            server.log_text().contains(path),
            "the io_uring shard reports {path:?}"
        );
        relays_whole_frames(&server);
    });
    if let Err(panic) = result {
        eprintln!("server log:\n{}", server.log_text());
        std::panic::resume_unwind(panic);
    }
}

/// One test, so the knobs set for the later servers do not reach another test's.
#[test]
fn tcp_frames_on_the_ring_and_through_epoll() {
    check(
        Uturn::start("io-uring", &["--allow-loopback-peers"]),
        "TCP and TLS accepts, receives and sends on the ring",
    );
    std::env::set_var("UTURN_TEST_STREAM_RING_SENDS", "false");
    let reads = Uturn::start("io-uring", &["--allow-loopback-peers"]);
    std::env::remove_var("UTURN_TEST_STREAM_RING_SENDS");
    check(
        reads,
        "TCP and TLS receives on the ring, accepts and writes through epoll",
    );
    std::env::set_var("UTURN_TEST_STREAM_EPOLL", "true");
    let epoll = Uturn::start("io-uring", &["--allow-loopback-peers"]);
    std::env::remove_var("UTURN_TEST_STREAM_EPOLL");
    check(epoll, "TCP/TLS clients through epoll");
}
