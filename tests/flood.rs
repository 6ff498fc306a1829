//! Floods over real loopback sockets that must not cost memory, reach a peer, or starve an
//! authenticated relay: unauthenticated Allocates against the real binary, ChannelData on
//! unbound channels in-process. The default suite runs each at a small size (pass/fail);
//! the `proof_*` tests (ignored by default) run the sizes SECURITY.md quotes and print its
//! figures as `| test | figure | value |` rows:
//! `cargo test --release --test flood -- --ignored --nocapture --test-threads 1`.
#![allow(non_snake_case)]

mod common;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uturn::client::Client;
use uturn::stun::{ChannelData, Class, Message, MessageBuilder, Method};

/// 200 flooding sockets that send bare Allocates and count the 401s that come back.
struct AllocateFlood {
    sockets: Vec<UdpSocket>,
    server: SocketAddr,
    req: Vec<u8>,
    sent: u64,
    /// Size of a 401 answer, for the amplification figure.
    answer_len: usize,
}

impl AllocateFlood {
    fn new(server: SocketAddr, sockets: usize) -> AllocateFlood {
        AllocateFlood {
            sockets: (0..sockets)
                .map(|_| {
                    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect(),
            server,
            req: bare_allocate(&tid(0, 0)),
            sent: 0,
            answer_len: 0,
        }
    }

    /// One request from every socket.
    fn round(&mut self) {
        for s in &self.sockets {
            self.req[8..20].copy_from_slice(&tid(self.sent, 0xF100D));
            // A full send buffer only means this datagram is not offered.
            let _ = s.send_to(&self.req, self.server);
            self.sent += 1;
        }
    }

    /// Reads every answer waiting; returns how many were 401s.
    fn drain(&mut self) -> u64 {
        let mut buf = [0u8; 1500];
        let mut n401 = 0;
        for s in &self.sockets {
            while let Ok(n) = s.recv(&mut buf) {
                if error_code(&buf[..n]) == Some(401) {
                    n401 += 1;
                    self.answer_len = n;
                }
            }
        }
        n401
    }

    /// `rounds` rounds as fast as the server answers: never more than `window` requests
    /// unanswered. The window fits every socket buffer on the way (the listening socket
    /// asks for 4 MiB; each flooding socket holds at most `window / sockets + 1` answers),
    /// so loopback cannot drop a request or an answer: every one is waited for, however
    /// long a loaded machine pauses the server. Returns (offered, answered, time).
    fn closed_loop(&mut self, rounds: usize, window: u64) -> (u64, u64, Duration) {
        let started = Instant::now();
        let first = self.sent;
        let mut answered = 0u64;
        for _ in 0..rounds {
            self.round();
            let mut stalled = Instant::now();
            loop {
                let got = self.drain();
                answered += got;
                if got > 0 {
                    stalled = Instant::now();
                }
                if (self.sent - first).saturating_sub(answered) <= window {
                    break;
                }
                assert!(
                    stalled.elapsed() < Duration::from_secs(30),
                    "no answer for 30 s with {} requests unanswered",
                    self.sent - first - answered
                );
                // Yield the core to the server rather than spin against it.
                std::thread::sleep(Duration::from_micros(200));
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "flood took too long"
            );
        }
        wait_until(within(Duration::from_secs(30)), || {
            answered += self.drain();
            answered >= self.sent - first
        });
        (self.sent - first, answered, started.elapsed())
    }

    /// `rounds` rounds as fast as this thread can send, answers unread until the end.
    fn open_loop(&mut self, rounds: usize) -> (u64, Duration) {
        let started = Instant::now();
        let first = self.sent;
        for _ in 0..rounds {
            self.round();
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "flood took too long"
            );
        }
        (self.sent - first, started.elapsed())
    }
}

/// How big a flood: the default suite runs a small one (pass/fail), the proof the full one.
struct Size {
    sockets: usize,
    rounds: usize,
    min_round_trips: u64,
    /// Whether RSS growth is pass/fail. Only at the proof's size: a small run's RSS moves by
    /// several MiB with the allocator's purging and the first touches of the io_uring
    /// buffer ring (8 MiB per shard), more than a small flood could leak.
    memory: bool,
}

#[test]
fn unauthenticated_allocate_flood_costs_no_memory_and_no_relay_loss() {
    allocate_flood(Size {
        sockets: 50,
        rounds: 100,
        min_round_trips: 200,
        memory: false,
    });
}

#[test]
#[ignore = "proof for SECURITY.md: cargo test --release --test flood -- --ignored --nocapture --test-threads 1"]
fn proof_unauthenticated_allocate_flood() {
    allocate_flood(Size {
        sockets: 200,
        rounds: 1000, // 200,000 requests per flood
        min_round_trips: 2000,
        memory: true,
    });
}

fn allocate_flood(size: Size) {
    let Size {
        sockets: SOCKETS,
        rounds: ROUNDS,
        min_round_trips: MIN_ROUND_TRIPS,
        memory,
    } = size;
    let _heavy = heavy();
    // Per-request debug lines would measure the log, not the server.
    let mut server = Uturn::start("auto", &["--allow-loopback-peers", "--log-level", "info"]);
    let addr = server.addr();
    let peer = EchoPeer::start(true);
    let mut flood = AllocateFlood::new(addr, SOCKETS);
    let t = "allocate flood (binary)";

    // Warm-up: the relay path and a small flood, so the allocator has its working set.
    let mut client = relaying_client(addr, peer.addr, None);
    for seq in 0..200 {
        assert!(round_trip(&mut client, 0x4000, seq, Duration::from_secs(2)));
    }
    let (_, warm_answered, _) = flood.closed_loop(20, 1000);
    let rss_before = rss_kib(server.pid());
    figure(
        t,
        "bare Allocate / its 401 answer (amplification)",
        format!(
            "{} B / {} B ({:.1}x)",
            flood.req.len(),
            flood.answer_len,
            flood.answer_len as f64 / flood.req.len() as f64
        ),
    );

    // 1. At the server's full speed (at most 1,000 requests in flight): nothing may be lost.
    let stop = Arc::new(AtomicBool::new(false));
    let relay = relay_in_background(
        client,
        MIN_ROUND_TRIPS,
        Duration::from_micros(500),
        None,
        stop.clone(),
    );
    let (offered, answered, took) = flood.closed_loop(ROUNDS, 1000);
    stop.store(true, Ordering::Relaxed);
    let (round_trips, lost) = relay.join().unwrap();
    let rss_after = rss_kib(server.pid());
    figure(
        t,
        "1. unauthenticated Allocates, at the server's pace (≤1,000 in flight)",
        offered,
    );
    figure(t, "1. answered 401", answered);
    figure(
        t,
        "1. took",
        format!(
            "{:.2} s ({:.0}/s)",
            took.as_secs_f64(),
            offered as f64 / took.as_secs_f64()
        ),
    );
    figure(
        t,
        "1. authenticated ChannelData round trips meanwhile / lost",
        format!("{round_trips} / {lost}"),
    );
    figure(
        t,
        "1. server RSS after warm-up → after flood",
        format!("{rss_before} KiB → {rss_after} KiB"),
    );
    assert_eq!(
        lost, 0,
        "the authenticated client lost {lost} of {round_trips} round trips"
    );
    assert!(round_trips >= MIN_ROUND_TRIPS);
    assert_eq!(
        answered, offered,
        "every request the server could take was answered"
    );
    assert!(
        !memory || rss_after.saturating_sub(rss_before) < 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // 2. Open loop, faster than the server can answer: the kernel drops what does not fit
    // the listening socket's buffer, whoever sent it. Measured, not a pass/fail figure,
    // except that the server must come out of it unharmed.
    let client = relaying_client(addr, peer.addr, None);
    let stop = Arc::new(AtomicBool::new(false));
    let relay = relay_in_background(
        client,
        MIN_ROUND_TRIPS,
        Duration::from_micros(500),
        None,
        stop.clone(),
    );
    let (offered2, took2) = flood.open_loop(ROUNDS);
    stop.store(true, Ordering::Relaxed);
    let (round_trips2, lost2) = relay.join().unwrap();
    // Answers still in flight: read until none arrives for a while.
    wait_quiescent(
        "401 answers after the open loop",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || flood.drain() == 0,
    );
    let rss_after2 = rss_kib(server.pid());
    let mut after = relaying_client(addr, peer.addr, None);
    for seq in 0..100 {
        assert!(
            round_trip(&mut after, 0x4000, seq, Duration::from_secs(2)),
            "relaying after the flood"
        );
    }
    assert!(server.alive(), "server died under the flood");
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    let unauthenticated = log_counter(&log, "unauthenticated");
    figure(t, "2. unauthenticated Allocates, open loop", offered2);
    figure(
        t,
        "2. offered in",
        format!(
            "{:.2} s ({:.0}/s)",
            took2.as_secs_f64(),
            offered2 as f64 / took2.as_secs_f64()
        ),
    );
    figure(
        t,
        "2. of which the server took and answered 401",
        // Less the warm-up, phase 1 and the three relaying clients' first (challenged) Allocate.
        unauthenticated.saturating_sub(warm_answered + answered + 3),
    );
    figure(
        t,
        "2. authenticated round trips meanwhile / lost",
        format!("{round_trips2} / {lost2}"),
    );
    figure(t, "2. server RSS after", format!("{rss_after2} KiB"));
    assert!(
        !memory || rss_after2.saturating_sub(rss_before) < 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after2} KiB"
    );
    assert!(!log.contains("panicked"));
}

#[test]
fn channel_data_flood_on_unbound_channels_reaches_no_peer() {
    channel_data_flood(20_000, 2_000, 200);
}

#[test]
#[ignore = "proof for SECURITY.md: cargo test --release --test flood -- --ignored --nocapture --test-threads 1"]
fn proof_channel_data_flood_on_unbound_channels() {
    channel_data_flood(200_000, 20_000, 2000);
}

/// Sends STUN Binding requests from `sock` until one is answered; returns (sent, answered).
/// The server handles one source's datagrams in order, so an answer proves every earlier
/// datagram from `sock` was handled.
fn binding_marker(sock: &UdpSocket, server: SocketAddr) -> (i64, i64) {
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Class::Request, Method::BINDING, &tid(7, 7));
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let mut sent = 0;
    let answered = wait_until(within(Duration::from_secs(10)), || {
        let _ = sock.send_to(&req, server);
        sent += 1;
        while let Ok(n) = sock.recv(&mut buf) {
            if Message::parse(&buf[..n]).is_ok_and(|m| m.class() == Class::Success) {
                return true;
            }
        }
        false
    });
    assert!(answered, "no answer to a Binding request after the flood");
    (sent, 1)
}

fn channel_data_flood(FLOOD: u64, NO_ALLOC_FLOOD: u64, min_round_trips: u64) {
    let _heavy = heavy();
    let running = start_with_range(loopback_config(2, |_| {}), None, None, free_port_block(100));
    let server = running.local_addrs()[0];
    let echo = EchoPeer::start(true);
    let bystander = EchoPeer::start(false);

    // A: an allocation with a permission for `bystander` but no channel.
    let mut a = Client::connect(server, "alice", "secret").unwrap();
    a.allocate(None).unwrap();
    a.create_permission(&[bystander.addr]).unwrap();
    // B: relays through `echo` all along.
    let b = relaying_client(server, echo.addr, None);
    // C: no allocation at all.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let relay = relay_in_background(
        b,
        min_round_trips,
        Duration::from_micros(500),
        None,
        stop.clone(),
    );
    let started = Instant::now();
    let mut frame = Vec::with_capacity(64);
    for i in 0..FLOOD {
        frame.clear();
        // Every channel number, none bound on A.
        ChannelData::encode(
            0x4000 + (i % 0x4000) as u16,
            b"unbound channel flood!",
            false,
            &mut frame,
        );
        let _ = a.socket().send_to(&frame, server);
        if i < NO_ALLOC_FLOOD {
            let _ = c.send_to(&frame, server);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "flood took too long"
        );
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (round_trips, lost) = relay.join().unwrap();
    let (sent_a, answered_a) = binding_marker(a.socket(), server);
    let (sent_c, answered_c) = binding_marker(&c, server);
    let reports = running.stop();
    let no_channel = sum(&reports, |c| c.no_channel);
    let no_allocation = sum(&reports, |c| c.no_allocation);
    let to_peer = sum(&reports, |c| c.relayed_to_peer);
    let to_client = sum(&reports, |c| c.relayed_to_client);
    let received: u64 = reports.iter().map(|r| r.io.received).sum();
    // Everything the shards dequeued is either B's relayed traffic (both directions), a
    // setup request, or a flood datagram counted as dropped.
    let setup = received as i64 - (to_peer + to_client + no_channel + no_allocation) as i64;

    let t = "unbound ChannelData flood";
    figure(t, "ChannelData offered on unbound channels (A)", FLOOD);
    figure(
        t,
        "ChannelData offered without allocation (C)",
        NO_ALLOC_FLOOD,
    );
    figure(t, "offered in", format!("{:.2} s", took.as_secs_f64()));
    figure(
        t,
        "dequeued by the server and counted no_channel",
        no_channel,
    );
    figure(
        t,
        "dequeued by the server and counted no_allocation",
        no_allocation,
    );
    figure(
        t,
        "datagrams reaching the permitted bystander peer",
        bystander.received(),
    );
    figure(
        t,
        "B round trips during flood / lost",
        format!("{round_trips} / {lost}"),
    );
    assert_eq!(
        bystander.received(),
        0,
        "unbound ChannelData reached a peer"
    );
    // A and C send open loop: when they outrun the shards the kernel drops datagrams at the
    // listening socket whoever sent them, B's included. B must keep relaying, and nothing
    // but B's datagrams may reach a peer.
    assert!(lost * 100 <= round_trips, "B lost {lost} of {round_trips}");
    assert_eq!(
        echo.received(),
        to_peer,
        "only B's datagrams went to a peer"
    );
    assert!(to_peer <= round_trips && to_peer + lost >= round_trips);
    assert!(no_channel <= FLOOD && no_allocation <= NO_ALLOC_FLOOD);
    // The floods are not dropped by the kernel wholesale: most of them are counted.
    assert!(
        no_channel >= FLOOD / 2,
        "only {no_channel} of {FLOOD} counted"
    );
    assert!(
        no_allocation >= NO_ALLOC_FLOOD / 2,
        "only {no_allocation} of {NO_ALLOC_FLOOD} counted"
    );
    // Setup requests: 6 (A and B each: challenge, Allocate, CreatePermission/ChannelBind),
    // plus the Binding markers the server dequeued (the answered ones at least).
    assert!(
        (6 + answered_a + answered_c..=6 + sent_a + sent_c).contains(&setup),
        "{setup} datagrams neither relayed nor counted as dropped"
    );
}
