//! The forwarding path allocates nothing: a counting global allocator watches 100,000
//! ChannelData packets (50,000 each way) and 20,000 Send/Data indications (10,000 each way)
//! relayed through a real server on loopback, after a warm-up, for each backend. Packets go
//! in bursts of 16 to one destination, so the io_uring backend's UDP GSO path is the one
//! measured. Then 40,000 datagrams between the relay addresses of two allocations on two
//! io_uring shards, handed over through the shards' queues. Then the same ChannelData and
//! indications over a TCP client connection on the io_uring backend (the payloads the
//! client sends are copied into the shard's pool of send buffers, never into a fresh
//! allocation). This binary holds a single test so that no other test's allocations are
//! counted.
//!
//! Then the same over TLS (TLS 1.3 and 1.2, io_uring backend). The TLS client runs on
//! threads whose allocations are not counted (rustls's client allocates per record); only
//! the server's are. uturn's side of TLS (rustls's unbuffered API, records decrypted in
//! place and encrypted into the send queue) allocates nothing of its own, but rustls 0.23
//! itself allocates one buffer for each record it decrypts (the plaintext it hands out) and
//! one for each record it encrypts (the ciphertext, before copying it into the caller's
//! buffer), with either API: so the bound checked over TLS is one allocation per record the
//! server took in or sent, and nothing more.

mod common;
mod stream_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uturn::client::Client;
use uturn::config::Backend;
use uturn::stun::{self, Class, MessageBuilder, Method};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// TLS records the TLS client has sent.
static CLIENT_RECORDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's allocations are not counted (the TLS client's threads).
    static UNCOUNTED: Cell<bool> = const { Cell::new(false) };
}

/// Counts an allocation unless the current thread is exempt. A const-initialised
/// `Cell<bool>` needs no destructor and allocates nothing, so the allocator may read it.
fn count() {
    if !UNCOUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PACKETS_EACH_WAY: usize = 50_000;
const WARM_UP: usize = 2_000;
const INDICATIONS_EACH_WAY: usize = 10_000;
const WINDOW: usize = 16;
const CROSS_SHARD_EACH_WAY: usize = 20_000;
const STREAM_PACKETS_EACH_WAY: usize = 20_000;
const STREAM_INDICATIONS_EACH_WAY: usize = 5_000;

fn relay(backend: Backend) -> u64 {
    let config = common::loopback_config(1, |c| c.backend = backend);
    // Free UDP and TCP ports, tried again when another process takes one first.
    let running = common::start_in_process(&config, None, None, 20);
    let server = running.local_addrs()[0];
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut client = Client::connect(server, "alice", "secret").unwrap();
    let relayed = client.allocate(None).unwrap();
    client
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .unwrap();
    // A second peer reached through Send indications (permission only, no channel).
    let peer2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer2
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let peer2_addr = peer2.local_addr().unwrap();
    client.create_permission(&[peer2_addr]).unwrap();
    let socket = client.socket().try_clone().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();

    let (channel_data, payload, send_indication) = frames(peer2_addr);
    let mut buf = [0u8; 2048];
    let mut buf2 = [0u8; 2048];
    // Windows of 16 packets each way, so the shard sees batches as under real load.
    let mut round_trip = |count: usize| {
        for _ in 0..count / WINDOW {
            for _ in 0..WINDOW {
                socket.send_to(&channel_data, server).unwrap();
            }
            for _ in 0..WINDOW {
                let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
                assert_eq!((n, from), (160, relayed));
            }
            for _ in 0..WINDOW {
                peer.send_to(&payload, relayed).unwrap();
            }
            for _ in 0..WINDOW {
                let (n, _) = socket.recv_from(&mut buf).expect("client receives");
                assert_eq!(&buf[..n], &channel_data[..]);
            }
        }
    };
    // The same with Send indications out and Data indications back.
    let mut indications = |count: usize| {
        for _ in 0..count / WINDOW {
            for _ in 0..WINDOW {
                socket.send_to(&send_indication, server).unwrap();
            }
            for _ in 0..WINDOW {
                let (n, from) = peer2.recv_from(&mut buf2).expect("peer 2 receives");
                assert_eq!((n, from), (160, relayed));
            }
            for _ in 0..WINDOW {
                peer2.send_to(&payload, relayed).unwrap();
            }
            for _ in 0..WINDOW {
                let (n, _) = socket.recv_from(&mut buf2).expect("client receives");
                assert!(
                    buf2[..n].windows(160).any(|w| w == payload),
                    "a Data indication carrying the payload"
                );
            }
        }
    };
    round_trip(WARM_UP);
    indications(WARM_UP);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    round_trip(PACKETS_EACH_WAY);
    indications(INDICATIONS_EACH_WAY);
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    running.stop();
    after - before
}

/// Relay to relay between two io_uring shards: A's client sends ChannelData to B's relay
/// address (B's client gets Data indications), B's client answers with Send indications
/// to A's relay address (A's client gets ChannelData); every datagram crosses through a
/// shard's queue.
fn cross_shard() -> u64 {
    let config = common::loopback_config(2, |c| c.backend = Backend::IoUring);
    let running = common::start_in_process(&config, None, None, 80);
    let server = running.local_addrs()[0];
    let shard_of = |relay: std::net::SocketAddr| {
        running
            .port_slices()
            .iter()
            .position(|&(lo, hi)| (lo..=hi).contains(&relay.port()))
            .unwrap()
    };
    let mut a = Client::connect(server, "alice", "secret").unwrap();
    let ra = a.allocate(None).unwrap();
    let (mut b, rb) = (0..30)
        .find_map(|_| {
            let mut b = Client::connect(server, "alice", "secret").unwrap();
            let rb = b.allocate(None).unwrap();
            (shard_of(rb) != shard_of(ra)).then_some((b, rb))
        })
        .expect("a client on the other shard");
    a.channel_bind(0x4000, rb).unwrap();
    b.create_permission(&[ra]).unwrap();
    let (sa, sb) = (
        a.socket().try_clone().unwrap(),
        b.socket().try_clone().unwrap(),
    );
    for s in [&sa, &sb] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    let (channel_data, payload, send_indication) = frames(ra);
    let mut buf = [0u8; 2048];
    let mut round_trip = |count: usize| {
        for _ in 0..count / WINDOW {
            for _ in 0..WINDOW {
                sa.send_to(&channel_data, server).unwrap();
            }
            for _ in 0..WINDOW {
                let (n, _) = sb.recv_from(&mut buf).expect("B's client receives");
                assert!(
                    buf[..n].windows(160).any(|w| w == payload),
                    "a Data indication carrying the payload"
                );
            }
            for _ in 0..WINDOW {
                sb.send_to(&send_indication, server).unwrap();
            }
            for _ in 0..WINDOW {
                let (n, _) = sa.recv_from(&mut buf).expect("A's client receives");
                assert_eq!(&buf[..n], &channel_data[..]);
            }
        }
    };
    round_trip(WARM_UP);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    round_trip(CROSS_SHARD_EACH_WAY);
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    let reports = running.stop();
    let crossed: u64 = reports.iter().map(|r| r.io.cross_shard_received).sum();
    assert_eq!(
        crossed,
        2 * (WARM_UP + CROSS_SHARD_EACH_WAY) as u64,
        "every datagram crossed through a queue: {reports:?}"
    );
    after - before
}

/// ChannelData and Send indications from a TCP client (io_uring backend) to two peers,
/// ChannelData and Data indications back, each way in windows of 16 frames; over TLS
/// `version` when given (through [`tls_tunnel`]). Returns the allocations counted and the
/// TLS records the server took in meanwhile (those the client sent).
fn stream_relay(tls: Option<&'static rustls::SupportedProtocolVersion>) -> (u64, u64) {
    let (cert, key) = stream_support::make_cert("alloc-free");
    let tls_port = stream_support::free_tcp_port();
    let config = common::loopback_config(1, |c| {
        c.backend = Backend::IoUring;
        if tls.is_some() {
            c.cert = Some(cert);
            c.pkey = Some(key);
            c.tls_listening_port = tls_port;
        }
    });
    let running = common::start_in_process(&config, None, None, 20);
    let server = match tls {
        None => running.local_addrs()[0],
        Some(version) => tls_tunnel(SocketAddr::from(([127, 0, 0, 1], tls_port)), version),
    };
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in [&peer, &peer2] {
        p.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    let peer2_addr = peer2.local_addr().unwrap();
    let mut client = stream_support::TcpTurn::connect(server, "alice", "secret");
    let relayed = client.allocate();
    client.bind(0x4000, peer.local_addr().unwrap());
    client
        .request(Method::CREATE_PERMISSION, &|b| {
            b.add_xor_address(stun::XOR_PEER_ADDRESS, peer2_addr);
        })
        .expect("CreatePermission over TCP");
    let mut stream = client.stream.try_clone().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // 160 bytes: ChannelData over TCP needs no padding.
    let (channel_data, payload, send_indication) = frames(peer2_addr);
    let mut buf = [0u8; 2048];
    let mut frame = [0u8; 2048];
    let mut exchange = |count: usize, out: &[u8], peer: &UdpSocket| {
        for _ in 0..count / WINDOW {
            for _ in 0..WINDOW {
                stream.write_all(out).unwrap();
            }
            for _ in 0..WINDOW {
                let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
                assert_eq!((&buf[..n], from), (&payload[..], relayed));
            }
            for _ in 0..WINDOW {
                peer.send_to(&payload, relayed).unwrap();
            }
            for _ in 0..WINDOW {
                let n = read_frame(&mut stream, &mut frame);
                assert!(
                    frame[..n].windows(160).any(|w| w == payload),
                    "a frame carrying the payload"
                );
            }
        }
    };
    exchange(WARM_UP, &channel_data, &peer);
    exchange(WARM_UP, &send_indication, &peer2);
    let (before, records_before) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        CLIENT_RECORDS.load(Ordering::SeqCst),
    );
    exchange(STREAM_PACKETS_EACH_WAY, &channel_data, &peer);
    exchange(STREAM_INDICATIONS_EACH_WAY, &send_indication, &peer2);
    let (after, records_after) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        CLIENT_RECORDS.load(Ordering::SeqCst),
    );
    drop(client);
    running.stop();
    (after - before, records_after - records_before)
}

/// A TLS client as a plain TCP endpoint on loopback: the one connection it accepts is
/// carried over TLS `version` to `server`, a write from it as one record, each record's
/// plaintext back as one write. Runs on two threads whose allocations are not counted;
/// returns the address to connect to.
fn tls_tunnel(
    server: SocketAddr,
    version: &'static rustls::SupportedProtocolVersion,
) -> SocketAddr {
    use rustls::ClientConnection;
    use uturn::testing::tls::{client_config, AnyCertificate};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let entry = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        UNCOUNTED.with(|u| u.set(true));
        let (mut plain, _) = listener.accept().unwrap();
        plain.set_nodelay(true).unwrap();
        let config = client_config(version, Arc::new(AnyCertificate::new()));
        let name = "localhost".try_into().unwrap();
        let tls = Arc::new(Mutex::new(
            ClientConnection::new(Arc::new(config), name).unwrap(),
        ));
        let mut wire = TcpStream::connect(server).unwrap();
        wire.set_nodelay(true).unwrap();
        // Server to client: records in, plaintext out.
        let (tls2, mut wire2, mut plain2) = (
            tls.clone(),
            wire.try_clone().unwrap(),
            plain.try_clone().unwrap(),
        );
        std::thread::spawn(move || {
            UNCOUNTED.with(|u| u.set(true));
            let mut buf = vec![0u8; 64 * 1024];
            let mut clear = vec![0u8; 64 * 1024];
            loop {
                let n = match wire2.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut tls = tls2.lock().unwrap();
                let mut records = &buf[..n];
                while !records.is_empty() {
                    if tls.read_tls(&mut records).is_err() || tls.process_new_packets().is_err() {
                        return;
                    }
                }
                loop {
                    match tls.reader().read(&mut clear) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if plain2.write_all(&clear[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                while tls.wants_write() {
                    if tls.write_tls(&mut wire2).is_err() {
                        return;
                    }
                }
            }
        });
        // Client to server: plaintext in, records out.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match plain.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut tls = tls.lock().unwrap();
            tls.writer().write_all(&buf[..n]).unwrap();
            // rustls cuts plaintext into records of at most 16 KiB.
            CLIENT_RECORDS.fetch_add(n.div_ceil(16 * 1024) as u64, Ordering::SeqCst);
            while tls.wants_write() {
                if tls.write_tls(&mut wire).is_err() {
                    return;
                }
            }
        }
        let mut tls = tls.lock().unwrap();
        tls.send_close_notify();
        while tls.wants_write() && tls.write_tls(&mut wire).is_ok() {}
    });
    entry
}

/// Reads one STUN message or ChannelData frame (padded to 4) from `stream` into `buf`;
/// returns its length.
fn read_frame(stream: &mut TcpStream, buf: &mut [u8]) -> usize {
    stream.read_exact(&mut buf[..4]).expect("a frame's start");
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let total = if buf[0] & 0xc0 == 0x40 {
        4 + len.next_multiple_of(4)
    } else {
        20 + len
    };
    stream
        .read_exact(&mut buf[4..total])
        .expect("the rest of the frame");
    total
}

#[test]
fn forwarding_allocates_nothing_on_either_backend() {
    let uring = relay(Backend::IoUring);
    let portable = relay(Backend::Portable);
    let cross = cross_shard();
    let (tcp, _) = stream_relay(None);
    let tls13 = stream_relay(Some(&rustls::version::TLS13));
    let tls12 = stream_relay(Some(&rustls::version::TLS12));
    assert_eq!(
        (uring, portable, cross, tcp),
        (0, 0, 0, 0),
        "heap allocations while relaying {} ChannelData packets and {} indications (io_uring, portable), \
         {} datagrams between two shards' relays, and {} ChannelData frames and {} indications \
         over TCP (io_uring)",
        2 * PACKETS_EACH_WAY,
        2 * INDICATIONS_EACH_WAY,
        2 * CROSS_SHARD_EACH_WAY,
        2 * STREAM_PACKETS_EACH_WAY,
        2 * STREAM_INDICATIONS_EACH_WAY,
    );
    // The server encrypts one record per frame for the client and decrypts the records
    // the client sent (several frames in one when the client's writes met): rustls's one
    // allocation per record, none of ours.
    let sent = (STREAM_PACKETS_EACH_WAY + STREAM_INDICATIONS_EACH_WAY) as u64;
    for (version, (allocations, received)) in [("1.3", tls13), ("1.2", tls12)] {
        eprintln!(
            "over TLS {version}: {allocations} allocations for {received} records received \
             and {sent} sent"
        );
        assert!(
            allocations <= received + sent,
            "heap allocations while relaying {} frames over TLS {version} (io_uring): \
             {allocations}, more than rustls's one per record ({received} records received, \
             {sent} sent)",
            2 * sent,
        );
    }
}

/// The datagrams a client sends: ChannelData on channel 0x4000 with 160 bytes, those 160
/// bytes, and a Send indication carrying them to `peer`.
fn frames(peer: SocketAddr) -> ([u8; 4 + 160], [u8; 160], Vec<u8>) {
    let mut channel_data = [0x5au8; 4 + 160];
    channel_data[..4].copy_from_slice(&[0x40, 0x00, 0, 160]);
    let payload = [0x5au8; 160];
    let mut send_indication = Vec::new();
    MessageBuilder::new(
        &mut send_indication,
        Class::Indication,
        Method::SEND,
        &[7; 12],
    )
    .add_xor_address(stun::XOR_PEER_ADDRESS, peer)
    .add(stun::DATA, &payload);
    (channel_data, payload, send_indication)
}
