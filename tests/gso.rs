//! Bursts through the relay arrive exactly as sent: the io_uring backend sends runs of
//! equal-size datagrams to one destination as one UDP GSO send, and the kernel must cut
//! them back at the very same boundaries, in order, with nothing merged across
//! destinations, sizes or framings. Real loopback sockets, both backends.

mod common;
use common::{loopback_config, start_in_process};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use uturn::client::{Client, Incoming};
use uturn::config::Backend;

/// Payload `i` of a burst: its index in the first byte, then `len - 1` bytes of a pattern
/// that differs per index, so a segment cut at the wrong place cannot pass.
fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut p = vec![i as u8; 1];
    p.extend((1..len).map(|j| (j * 7 + i * 13) as u8));
    p
}

/// Sizes of a burst: runs of equal sizes, a shorter one ending a run, then a new run.
const SIZES: [usize; 21] = [
    300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 120, 300,
    300, 1200,
];

fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn receive_all(peer: &UdpSocket, count: usize, from: SocketAddr) -> Vec<Vec<u8>> {
    let mut buf = [0u8; 4096];
    (0..count)
        .map(|_| {
            let (n, src) = peer.recv_from(&mut buf).expect("peer receives the burst");
            assert_eq!(src, from);
            buf[..n].to_vec()
        })
        .collect()
}

fn bursts(backend: Backend, udp_gso: bool) {
    let config = loopback_config(1, |c| {
        c.backend = backend;
        c.udp_gso = udp_gso;
    });
    let running = start_in_process(&config, None, None, 20);
    let server = running.local_addrs()[0];
    let mut client = Client::connect(server, "alice", "secret").unwrap();
    let relayed = client.allocate(None).unwrap();
    let (a, b) = (peer(), peer());
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    client.channel_bind(0x4000, a_addr).unwrap();
    client.create_permission(&[b_addr]).unwrap();

    // Client → peers: a ChannelData burst to A interleaved with nothing, then Send
    // indications to B, then both alternating (no group may span two destinations).
    for (i, &len) in SIZES.iter().enumerate() {
        client.send_channel_data(0x4000, &payload(i, len)).unwrap();
    }
    for (i, &len) in SIZES.iter().enumerate() {
        client.send_indication(b_addr, &payload(i, len)).unwrap();
    }
    for i in 0..8 {
        client
            .send_channel_data(0x4000, &payload(100 + i, 200))
            .unwrap();
        client
            .send_indication(b_addr, &payload(200 + i, 200))
            .unwrap();
    }
    let expected: Vec<Vec<u8>> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &len)| payload(i, len))
        .collect();
    let mut got_a = receive_all(&a, SIZES.len() + 8, relayed);
    let mut got_b = receive_all(&b, SIZES.len() + 8, relayed);
    assert_eq!(got_a.drain(..SIZES.len()).collect::<Vec<_>>(), expected);
    assert_eq!(got_b.drain(..SIZES.len()).collect::<Vec<_>>(), expected);
    assert_eq!(
        got_a,
        (0..8).map(|i| payload(100 + i, 200)).collect::<Vec<_>>()
    );
    assert_eq!(
        got_b,
        (0..8).map(|i| payload(200 + i, 200)).collect::<Vec<_>>()
    );

    // Peers → client: A's burst comes back as ChannelData, B's as Data indications.
    for (i, &len) in SIZES.iter().enumerate() {
        a.send_to(&payload(i, len), relayed).unwrap();
    }
    let mut back = Vec::new();
    while back.len() < SIZES.len() {
        match client
            .recv(Duration::from_secs(5))
            .expect("client receives")
        {
            Incoming::ChannelData { channel, data } => {
                assert_eq!(channel, 0x4000);
                back.push(data);
            }
            other => panic!("expected ChannelData, got {other:?}"),
        }
    }
    assert_eq!(back, expected);
    for (i, &len) in SIZES.iter().enumerate() {
        b.send_to(&payload(i, len), relayed).unwrap();
    }
    back.clear();
    while back.len() < SIZES.len() {
        match client
            .recv(Duration::from_secs(5))
            .expect("client receives")
        {
            Incoming::Data { peer, data } => {
                assert_eq!(peer, b_addr);
                back.push(data);
            }
            other => panic!("expected a Data indication, got {other:?}"),
        }
    }
    assert_eq!(back, expected);
    running.stop();
}

#[test]
fn bursts_arrive_as_sent_on_io_uring() {
    bursts(Backend::IoUring, true);
}

#[test]
fn bursts_arrive_as_sent_on_io_uring_without_gso() {
    bursts(Backend::IoUring, false);
}

#[test]
fn bursts_arrive_as_sent_on_portable() {
    bursts(Backend::Portable, true);
}
