//! Bounds of the TCP/TLS side against the real `uturn` binary on loopback: a client that
//! stops reading does not make the server's memory grow (its frames are dropped and
//! counted), and a flood of 2,000 idle, half-open and stuck connections does not stop a
//! UDP client and a TCP client from relaying; more clients that stop reading than the
//! io_uring shard has provided buffers do not stop it either. Figures are printed for
//! SECURITY.md.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

mod common;
mod stream_support;
use common::*;
use stream_support::*;

/// Raises this process's descriptor limit: the flood holds thousands of sockets. Never
/// lowers it (tests run in parallel; another may hold more).
fn raise_nofile(want: u64) {
    let (current, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let soft = want.min(hard).max(current);
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).unwrap();
    assert!(
        soft >= want,
        "the descriptor limit {hard} is too low for this test (needs {want})"
    );
}

fn slow_reader(backend: &str) {
    let mut server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let pid = server.pid();
    let mut client = TcpTurn::connect(server.addr(), "alice", "secret");
    let relay = client.allocate();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    client.bind(0x4001, peer_addr);
    // The client proves the path works, then stops reading.
    client.send_channel_data(0x4001, b"hello");
    let mut buf = [0u8; 64];
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (n, _) = peer
        .recv_from(&mut buf)
        .expect("ChannelData over TCP reaches the peer");
    assert_eq!(&buf[..n], b"hello");
    let payload = vec![0x5a; 1000];
    let flood = |count: usize| {
        for i in 0..count {
            let _ = peer.send_to(&payload, relay);
            if i % 64 == 0 {
                // Keeps the relay socket's receive queue from overflowing, so the bytes
                // reach the server's user space and the send queue bound is what is tested.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    };
    let settled = || {
        wait_quiescent(
            "server memory",
            Duration::from_secs(20),
            Duration::from_millis(300),
            || rss_anon(pid),
        )
    };
    // A first flood fills every buffer that is filled once (kernel socket buffers, the
    // send queue, the provided-buffer pool, allocator caches); the second must add nothing.
    flood(10_000);
    let before = settled();
    flood(40_000);
    let after = settled();
    let grown = after.saturating_sub(before);
    println!(
        "slow reader ({backend}): 40,000 x 1000 B more to a client that does not read; server anonymous RSS {before} -> {after} (+{grown} B)"
    );
    assert!(
        grown < 2 << 20,
        "server memory grew by {grown} bytes while a client did not read (40 MB sent)"
    );
    // A client that does not read holds no provided buffers: with the flood still
    // queued for it, another TCP client relays both ways.
    {
        let mut other = TcpTurn::connect(server.addr(), "alice", "secret");
        let other_relay = other.allocate();
        other.bind(0x4002, peer_addr);
        other.send_channel_data(0x4002, b"second");
        let (n, _) = peer
            .recv_from(&mut buf)
            .expect("the second client's ChannelData reaches the peer");
        assert_eq!(&buf[..n], b"second");
        for i in 0..1000 {
            peer.send_to(b"back", other_relay).unwrap();
            if i % 64 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let mut back = 0;
        while back < 1000 && other.recv(Duration::from_secs(5)).is_some() {
            back += 1;
        }
        assert_eq!(back, 1000, "the second client got every answer");
    }
    // The connection still works: the client reads what was queued, then a fresh frame.
    let mut got = 0;
    while client.recv(Duration::from_millis(500)).is_some() {
        got += 1;
    }
    assert!(got > 0, "the slow client's connection was lost");
    assert!(server.alive());
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    let drops = log_counter(&log, "queue_drops");
    println!("slow reader ({backend}): client read {got} frames, server dropped {drops}");
    assert!(
        drops > 0,
        "50 MB to a client that did not read, yet nothing was dropped:\n{log}"
    );
}

#[test]
fn slow_reader_does_not_grow_memory_portable() {
    slow_reader("portable");
}

#[test]
fn slow_reader_does_not_grow_memory_io_uring() {
    slow_reader("auto");
}

/// More clients than the io_uring shard has provided buffers (64 here) stop reading while
/// their peer keeps sending; a new client still allocates and relays. Then they all close
/// with their queues full: the server goes on, and stops cleanly (every buffer back,
/// nothing leaked). (On loopback the kernel's socket buffers take most of this flood, so
/// few sends find a full socket here.)
#[test]
fn clients_that_stop_reading_then_close_leave_the_shard_working() {
    raise_nofile(1024);
    let mut server = Uturn::start_with(Launch {
        backend: "io-uring",
        extra: &["--allow-loopback-peers"],
        env: &[("UTURN_TEST_BUFFERS", "64")],
        ..Launch::default()
    });
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut slow = Vec::new();
    for _ in 0..80 {
        // A small window: the server's socket for it fills after a few kilobytes.
        let mut client = TcpTurn::connect_small(server.addr(), "alice", "secret", 2048);
        let relay = client.allocate();
        client.bind(0x4001, peer_addr);
        slow.push((client, relay));
    }
    let payload = vec![0x5a; 1000];
    for round in 0..400 {
        for (_, relay) in &slow {
            let _ = peer.send_to(&payload, *relay);
        }
        if round % 4 == 0 {
            // Keeps the relay sockets' receive queues from overflowing.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let relays_both_ways = |what: &str| {
        let mut client = TcpTurn::connect(server.addr(), "alice", "secret");
        let relay = client.allocate();
        client.bind(0x4002, peer_addr);
        client.send_channel_data(0x4002, b"fresh");
        let mut buf = [0u8; 2048];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (n, _) = peer
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{what}: the new client's data never came: {e}"));
            if &buf[..n] == b"fresh" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: no fresh data"
            );
        }
        peer.send_to(b"answer", relay).unwrap();
        let frame = client
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{what}: the peer's answer never came back"));
        assert_eq!(&frame[4..10], b"answer", "{what}");
    };
    relays_both_ways("with 80 clients not reading");
    drop(slow);
    relays_both_ways("after they closed with sends in flight");
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    assert!(!log.contains("leaking"), "{log}");
    println!(
        "80 clients not reading, 64 provided buffers: queue_drops {}",
        log_counter(&log, "queue_drops")
    );
}

fn flood(backend: &str) {
    raise_nofile(4096);
    let (tls, tls_port) = tls_args(&format!("flood-{backend}"));
    let mut extra = vec!["--allow-loopback-peers".to_string()];
    extra.extend(tls);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut server = Uturn::start(backend, &extra);
    let before = rss_anon(server.pid());
    let tcp = server.addr();
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let mut held = Vec::with_capacity(2000);
    for i in 0..2000 {
        let target = if i % 2 == 0 { tcp } else { tls };
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        match i % 4 {
            // Idle TCP, and TLS that never says hello: nothing sent.
            0 | 1 => {}
            // A STUN header announcing 4,000 bytes (under the limit before an allocation)
            // that never come.
            2 => s
                .write_all(&[0x00, 0x03, 0x0f, 0xa0, 0x21, 0x12, 0xa4, 0x42, 1, 2])
                .unwrap(),
            // Half a TLS ClientHello.
            _ => s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap(),
        }
        held.push(s);
    }
    let pid = server.pid();
    let during = wait_quiescent(
        "server memory",
        Duration::from_secs(20),
        Duration::from_millis(300),
        || rss_anon(pid),
    );
    println!(
        "flood ({backend}): 2,000 idle/half-open/stuck connections held; server anonymous RSS {before} -> {during} (+{} B, {} B per connection)",
        during.saturating_sub(before),
        during.saturating_sub(before) / 2000
    );
    let peer = Peer::start();
    let args = ["-m", "2", "-n", "100", "-l", "170"];
    let (code, out) = uclient(server.port, peer.port, &args, Duration::from_secs(60));
    assert_eq!(code, Some(0), "UDP client during the flood:\n{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
    let tcp_args = ["-m", "2", "-n", "100", "-l", "170", "-t"];
    let (code, out) = uclient(server.port, peer.port, &tcp_args, Duration::from_secs(60));
    assert_eq!(code, Some(0), "TCP client during the flood:\n{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
    assert_eq!(number_after(&out, "tot_recv_msgs="), Some(200), "{out}");
    drop(held);
    assert!(server.alive());
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    assert!(
        log_counter(&log, "accepted") >= 2000,
        "the server did not accept the flood:\n{log}"
    );
}

#[test]
fn flood_of_idle_connections_does_not_stop_relaying_portable() {
    flood("portable");
}

#[test]
fn flood_of_idle_connections_does_not_stop_relaying_io_uring() {
    flood("auto");
}

/// A TLS connection that never finishes its handshake is closed after the handshake
/// timeout (10 s), and one that sends garbage instead of frames at once.
#[test]
fn stalled_tls_handshakes_and_garbage_are_closed() {
    use std::io::Read;
    let (tls, tls_port) = tls_args("stalled");
    let mut extra = vec!["--allow-loopback-peers".to_string()];
    extra.extend(tls);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut server = Uturn::start("auto", &extra);
    let mut stalled = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let mut garbage = TcpStream::connect(server.addr()).unwrap();
    garbage.write_all(&[0xff; 64]).unwrap();
    let closed = |s: &mut TcpStream, limit: Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 64];
        // EOF or a reset both mean the server let go; a timeout means it did not.
        !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
    };
    assert!(
        closed(&mut garbage, Duration::from_secs(5)),
        "bytes that are not STUN or ChannelData must close the connection"
    );
    let started = std::time::Instant::now();
    assert!(
        closed(&mut stalled, Duration::from_secs(15)),
        "a stalled TLS handshake was not closed within 15 s"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(8),
        "closed too early: {waited:?}"
    );
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    assert_eq!(log_counter(&log, "handshake_timeouts"), 1, "{log}");
    assert_eq!(log_counter(&log, "framing_errors"), 1, "{log}");
}

/// Starts an in-process server with one shard and the stream bounds `tweak` sets.
fn start_streams(
    tweak: impl Fn(&mut uturn::shard::stream::StreamOptions),
) -> uturn::shard::Running {
    for _ in 0..20 {
        let mut config = loopback_config(1, |_| {});
        config.listening_port = free_listen_port();
        (config.min_port, config.max_port) = free_port_block(20);
        let mut streams = uturn::shard::stream::StreamOptions::from_config(&config).unwrap();
        tweak(&mut streams);
        let observer = uturn::observer_from_config(&config);
        match uturn::shard::start_with_streams(
            &config,
            streams,
            observer,
            None,
            uturn::shard::TestKnobs::default(),
        ) {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("start: {e}"),
        }
    }
    panic!("no free ports");
}

/// Whether the server closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
}

/// Connections beyond `max_connections` are closed at accept; silent ones without an
/// allocation are closed after the idle timeout; one holding an allocation stays.
#[test]
fn idle_connections_are_closed_and_connections_are_capped() {
    let running = start_streams(|s| {
        s.idle_timeout = Duration::from_secs(1);
        s.max_connections = 4;
    });
    let server = running.local_addrs()[0];
    let mut client = TcpTurn::connect(server, "alice", "secret");
    client.allocate();
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server).unwrap())
        .collect();
    // The fifth is one too many.
    let mut extra = TcpStream::connect(server).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "a connection over --max-connections was kept"
    );
    let started = std::time::Instant::now();
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "an idle connection without an allocation was kept"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    // The client with an allocation is still served (a Refresh answers), after the idle
    // ones were closed.
    client
        .request(uturn::stun::Method::REFRESH, &|b| {
            b.add_u32(uturn::stun::LIFETIME, 600);
        })
        .expect("the connection with an allocation stays open");
    let reports = running.stop();
    let streams = &reports[0].streams;
    assert_eq!(streams.refused, 1, "{streams:?}");
    assert_eq!(streams.idle_closed, 3, "{streams:?}");
}

/// Sum of the samples of `name` whose label text contains every `labels` piece, from the
/// binary's Prometheus endpoint.
fn scrape_sum(port: u16, name: &str, labels: &[&str]) -> Option<u64> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((metric, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, label_text) = metric.split_once('{').unwrap_or((metric, ""));
        if metric_name == name && labels.iter().all(|l| label_text.contains(l)) {
            *found.get_or_insert(0) += value.parse::<u64>().ok()?;
        }
    }
    found
}

/// The metrics endpoint counts stream connections (open now, accepted, closed for bad
/// framing) and allocations by client transport, as the stream side and the core see them.
#[test]
fn stream_connections_are_in_the_metrics() {
    let prom = free_tcp_port();
    let mut server = Uturn::start(
        "auto",
        &["--prometheus", "--prometheus-port", &prom.to_string()],
    );
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    let mut garbage = TcpStream::connect(server.addr()).unwrap();
    garbage.write_all(&[0xff; 8]).unwrap();
    let mut client = TcpTurn::connect(server.addr(), "alice", "secret");
    client.allocate();
    let total = |name: &str| scrape_sum(prom, name, &[]);
    let allocations = |kind: &str| {
        let label = format!("type=\"{kind}\"");
        scrape_sum(prom, "turn_total_allocations", &[label.as_str()])
    };
    wait_for(
        "the connections in the metrics",
        Duration::from_secs(10),
        || {
            scrape_sum(prom, "uturn_stream_connections", &[]) == Some(4)
                && total("uturn_stream_accepted_total") == Some(5)
                && total("uturn_stream_framing_errors_total") == Some(1)
                && allocations("TCP") == Some(1)
                && allocations("UDP") == Some(0)
        },
    );
    drop(held);
    drop(client);
    wait_for("the closes in the metrics", Duration::from_secs(10), || {
        scrape_sum(prom, "uturn_stream_connections", &[]) == Some(0)
            && allocations("TCP") == Some(0)
    });
    assert_eq!(server.stop(), Some(0));
}

/// A client that holds an allocation and stops reading while its peer keeps sending: the
/// ring send of its queue waits in the kernel and does not complete. After the send timeout
/// the connection is closed and counted; before, it stayed open as long as the client did.
#[test]
fn a_send_that_does_not_complete_closes_the_connection() {
    use std::io::Read;
    let running = start_streams(|s| s.send_timeout = Duration::from_secs(1));
    if running.backends().iter().any(|b| *b != "io-uring") {
        eprintln!("NOT RUN: the send timeout is for ring sends; this host has no io_uring");
        running.stop();
        return;
    }
    let server = running.local_addrs()[0];
    let mut client = TcpTurn::connect_small(server, "alice", "secret", 2048);
    let relay = client.allocate();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.bind(0x4001, peer.local_addr().unwrap());
    // Far more than the client's window, the server's socket and its queue hold, over
    // longer than the timeout.
    let payload = [0x5au8; 1000];
    let flood_until = std::time::Instant::now() + Duration::from_secs(3);
    let mut i = 0u32;
    while std::time::Instant::now() < flood_until {
        let _ = peer.send_to(&payload, relay);
        i += 1;
        if i.is_multiple_of(64) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    // The client reads again: what the server had sent, then the end of the stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 65536];
    let closed = loop {
        match client.stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) if std::time::Instant::now() < deadline => {}
            Ok(_) => break false,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    assert!(closed, "the connection with a stuck send stayed open");
    let reports = running.stop();
    let streams = &reports[0].streams;
    assert_eq!(streams.send_timeouts, 1, "{streams:?}");
}
