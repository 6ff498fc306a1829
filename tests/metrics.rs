//! The Prometheus endpoint of the real `uturn` binary: scraped over real HTTP, parsed
//! with a Prometheus text-format parser, values checked against the traffic the test
//! sent; the probes `/healthz` and `/readyz`.

use prometheus_parse::{Scrape, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;
use uturn::client::{Client, Incoming};

mod common;
use common::*;

/// One HTTP GET; returns (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

struct Metrics(Scrape);

impl Metrics {
    fn scrape(addr: SocketAddr) -> Metrics {
        let (code, body) = http_get(addr, "/metrics").expect("scrape /metrics");
        assert_eq!(code, 200);
        let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parse");
        assert!(!scrape.samples.is_empty(), "empty scrape:\n{body}");
        Metrics(scrape)
    }

    /// Sum of `name` over the samples whose labels include every `labels` pair.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let mut found = false;
        let mut total = 0.0;
        for s in &self.0.samples {
            if s.metric != name || !labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
                continue;
            }
            found = true;
            total += match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => panic!("{name} is not a plain value"),
            };
        }
        found.then_some(total as u64)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.sum(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }
}

#[test]
fn metrics_count_the_traffic_sent_and_probes_answer() {
    let redis = RedisServer::start();
    let statsdb = format!("ip=127.0.0.1 port={} dbname=0", redis.port);
    let mut server = Uturn::start_with(Launch {
        backend: "auto",
        extra: &[
            "--allow-loopback-peers",
            "--redis-statsdb",
            &statsdb,
            "--redis-userdb",
            &statsdb,
        ],
        prometheus: true,
        ..Launch::default()
    });
    let http = server.http.unwrap();
    // The endpoint listens before "uturn ready"; a loaded machine may still be slow to
    // answer the first request.
    let mut health = None;
    wait_until(within(Duration::from_secs(60)), || {
        health = http_get(http, "/healthz").map(|r| r.0);
        health.is_some()
    });
    assert_eq!(health, Some(200), "/healthz");
    assert_eq!(http_get(http, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(http_get(http, "/other").map(|r| r.0), Some(404));

    let before = Metrics::scrape(http);
    assert_eq!(before.get("turn_total_allocations", &[("type", "UDP")]), 0);
    assert_eq!(before.get("turn_total_traffic_rcvp", &[]), 0);
    assert!(before.sum("uturn_shard_allocations", &[]).is_some());
    assert!(
        wait_until(within(Duration::from_secs(5)), || Metrics::scrape(http)
            .get("uturn_stats_redis_connected", &[])
            == 1),
        "stats connection never shown as up"
    );
    assert!(
        wait_until(within(Duration::from_secs(5)), || Metrics::scrape(http)
            .get("uturn_userdb_redis_connected", &[])
            == 1),
        "user database connection never shown as up"
    );

    // A refused attempt (wrong password) shows as a 401 refusal.
    let mut bad = Client::connect(server.addr(), "alice", "wrong").unwrap();
    assert_eq!(bad.allocate(None).unwrap_err().code(), Some(401));

    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut alice = Client::connect(server.addr(), "alice", "secret").unwrap();
    alice.allocate(None).unwrap();
    alice
        .channel_bind(0x4001, peer.local_addr().unwrap())
        .unwrap();
    let during = Metrics::scrape(http);
    assert_eq!(during.get("turn_total_allocations", &[("type", "UDP")]), 1);
    assert_eq!(during.get("turn_total_allocations", &[("type", "TCP")]), 0);
    assert_eq!(during.get("turn_total_allocations", &[("type", "TLS")]), 0);
    assert!(during.sum("uturn_stream_connections", &[]).is_some());
    assert_eq!(during.get("uturn_shard_allocations", &[]), 1);

    const N: u64 = 300;
    const PAYLOAD: usize = 100;
    let payload = [0x5a; PAYLOAD];
    for _ in 0..N {
        alice.send_channel_data(0x4001, &payload).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
        peer.send_to(&buf[..n], from).unwrap();
        match alice.recv(Duration::from_secs(2)).expect("echo") {
            Incoming::ChannelData { data, .. } => assert_eq!(data.len(), PAYLOAD),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Live: the per-shard packet counters show every relayed packet at once.
    assert!(
        wait_until(within(Duration::from_secs(5)), || {
            let m = Metrics::scrape(http);
            m.get("uturn_relayed_packets_total", &[("direction", "to_peer")]) == N
                && m.get("uturn_relayed_packets_total", &[("direction", "to_client")]) == N
        }),
        "relayed packets never reached {N}"
    );
    // Deleting the allocation reports its traffic: coturn's totals, exactly.
    alice.refresh(0).unwrap();
    let header = 4;
    let expect = [
        ("turn_total_traffic_rcvp", N),
        ("turn_total_traffic_rcvb", N * (PAYLOAD as u64 + header)),
        ("turn_total_traffic_sentp", N),
        ("turn_total_traffic_sentb", N * (PAYLOAD as u64 + header)),
        ("turn_total_traffic_peer_rcvp", N),
        ("turn_total_traffic_peer_rcvb", N * PAYLOAD as u64),
        ("turn_total_traffic_peer_sentp", N),
        ("turn_total_traffic_peer_sentb", N * PAYLOAD as u64),
    ];
    assert!(
        wait_until(within(Duration::from_secs(5)), || {
            let m = Metrics::scrape(http);
            m.get("turn_total_allocations", &[]) == 0
                && expect.iter().all(|(name, v)| m.get(name, &[]) == *v)
        }),
        "traffic totals differ from what was sent: {:?}",
        {
            let m = Metrics::scrape(http);
            expect
                .iter()
                .map(|(n, _)| (n.to_string(), m.get(n, &[])))
                .collect::<Vec<_>>()
        }
    );
    let after = Metrics::scrape(http);
    assert!(
        after.get("uturn_refused_total", &[("reason", "unauthenticated")])
            > before.get("uturn_refused_total", &[("reason", "unauthenticated")])
    );
    assert!(after.get("uturn_auth_decisions_total", &[("decision", "authorized")]) >= 1);
    assert!(
        after.get("uturn_datagrams_received_total", &[]) >= 2 * N,
        "every relayed datagram was received"
    );
    assert_eq!(after.get("uturn_ready", &[]), 1);
    assert_eq!(after.get("uturn_draining", &[]), 0);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_taken_metrics_port_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (listen, min, max) = next_ports();
    let (code, out) = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_uturn"))
            .args(base_args(listen, min, max))
            .args(["--prometheus", "--prometheus-port", &port]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot serve metrics"), "{out}");
}
