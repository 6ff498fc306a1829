//! The TURN core's forwarding path without I/O: ChannelData from a client in, a send
//! decision out; a peer datagram in, the ChannelData header written in place.
//!
//! `cargo bench --bench core`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uturn::auth::{Quotas, StaticUsers};
use uturn::stun::{self, Class, Message, MessageBuilder, Method};
use uturn::turn::{
    ClientAction, PeerAction, RelayId, RelaySockets, Server, ServerConfig, PEER_HEADROOM,
    PEER_TAILROOM,
};

struct NoSockets;

impl RelaySockets for NoSockets {
    fn open(&mut self, _: RelayId, _: SocketAddr) -> std::io::Result<()> {
        Ok(())
    }
    fn close(&mut self, _: RelayId) {}
}

const REALM: &str = "example.org";

fn server(now: Instant) -> Server {
    let mut users = StaticUsers::new();
    users.add("alice", "secret", REALM);
    let config = ServerConfig {
        software: String::new(),
        max_allocations: 100_000,
        ..ServerConfig::new(
            REALM,
            "192.0.2.10".parse().unwrap(),
            50000..=60000,
            [9; 32],
            now,
        )
    };
    Server::new(config, Arc::new(users), Arc::new(Quotas::new(0, 0)))
}

fn request(
    method: Method,
    tid: u8,
    nonce: Option<&str>,
    attrs: impl FnOnce(&mut MessageBuilder<'_>),
) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &[tid; 12]);
    attrs(&mut b);
    if let Some(nonce) = nonce {
        b.add_str(stun::USERNAME, "alice");
        b.add_str(stun::REALM, REALM);
        b.add_str(stun::NONCE, nonce);
        b.add_message_integrity(&stun::long_term_key("alice", REALM, "secret"));
    }
    b.add_fingerprint();
    buf
}

/// Allocates for `client` and binds channel 0x4000 to `peer`; returns the relay id.
fn setup(
    server: &mut Server,
    now: Instant,
    client: SocketAddr,
    local: SocketAddr,
    peer: SocketAddr,
) -> RelayId {
    let transport = |b: &mut MessageBuilder<'_>| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
    };
    server.handle_client(
        now,
        client,
        local,
        &request(Method::ALLOCATE, 1, None, transport),
        &mut NoSockets,
    );
    let challenge = server.poll_transmit().expect("401").data;
    let nonce = Message::parse(&challenge)
        .unwrap()
        .nonce()
        .unwrap()
        .unwrap()
        .to_owned();
    server.handle_client(
        now,
        client,
        local,
        &request(Method::ALLOCATE, 2, Some(&nonce), transport),
        &mut NoSockets,
    );
    server.poll_transmit().expect("allocate response");
    let bind = request(Method::CHANNEL_BIND, 3, Some(&nonce), |b| {
        b.add_channel_number(0x4000);
        b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
    });
    server.handle_client(now, client, local, &bind, &mut NoSockets);
    let resp = server.poll_transmit().expect("channel bind response").data;
    assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);
    while server.poll_event().is_some() {}
    RelayId(0)
}

fn forwarding(c: &mut Criterion) {
    let now = Instant::now();
    let mut server = server(now);
    let client: SocketAddr = "203.0.113.5:40000".parse().unwrap();
    let local: SocketAddr = "192.0.2.10:3478".parse().unwrap();
    let peer: SocketAddr = "198.51.100.7:9000".parse().unwrap();
    let relay = setup(&mut server, now, client, local, peer);

    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    let mut datagram = Vec::new();
    stun::ChannelData::encode(0x4000, &[0xAB; 170], false, &mut datagram);
    group.bench_function("channel_data_client_to_peer_170B", |b| {
        b.iter(|| {
            let action =
                server.handle_client(now, client, local, black_box(&datagram), &mut NoSockets);
            assert!(matches!(action, ClientAction::ToPeer { .. }));
            while server.poll_event().is_some() {}
        })
    });
    let mut buf = vec![0u8; PEER_HEADROOM + 170 + PEER_TAILROOM];
    group.bench_function("channel_data_peer_to_client_170B", |b| {
        b.iter(|| {
            let action = server.handle_peer(
                now,
                relay,
                peer,
                black_box(&mut buf),
                PEER_HEADROOM..PEER_HEADROOM + 170,
            );
            assert!(matches!(action, PeerAction::ToClient { .. }));
            while server.poll_event().is_some() {}
        })
    });
    group.finish();
}

/// The same client→peer path with the stats thread on (every event handed to a real
/// `stats::Publisher` over its bounded channel) and off (events dropped). Redis is
/// `REDIS_URL` if set, else an address where nothing listens (the thread queues and merges).
fn stats_on_off(c: &mut Criterion) {
    let now = Instant::now();
    let client: SocketAddr = "203.0.113.5:40000".parse().unwrap();
    let local: SocketAddr = "192.0.2.10:3478".parse().unwrap();
    let peer: SocketAddr = "198.51.100.7:9000".parse().unwrap();
    let target = std::env::var("REDIS_URL")
        .ok()
        .and_then(|u| uturn::config::parse_redis_url(&u).ok())
        .unwrap_or_else(|| {
            uturn::config::parse_statsdb("ip=127.0.0.1 port=1 connect_timeout=1").unwrap()
        });
    let publisher = uturn::stats::Publisher::start(target, uturn::stats::Options::default());
    let sink = publisher.sink();
    let mut datagram = Vec::new();
    stun::ChannelData::encode(0x4000, &[0xAB; 170], false, &mut datagram);
    let mut group = c.benchmark_group("stats");
    group.throughput(Throughput::Elements(1));
    for on in [false, true] {
        let mut server = server(now);
        setup(&mut server, now, client, local, peer);
        let name = if on {
            "forward_170B_stats_on"
        } else {
            "forward_170B_stats_off"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let action =
                    server.handle_client(now, client, local, black_box(&datagram), &mut NoSockets);
                assert!(matches!(action, ClientAction::ToPeer { .. }));
                while let Some(event) = server.poll_event() {
                    if on {
                        sink.send(event);
                    }
                }
            })
        });
    }
    group.finish();
    drop(sink);
    publisher.stop(Duration::from_millis(100));
}

criterion_group!(benches, forwarding, stats_on_off);
criterion_main!(benches);
