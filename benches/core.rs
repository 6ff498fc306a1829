//! The TURN core's forwarding path without I/O: ChannelData from a client in, a send
//! decision out; a peer datagram in, the ChannelData header written in place.
//!
//! `cargo bench --bench core`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uturn::auth::Quotas;
use uturn::stun::{self, Class, Message};
use uturn::testing::{users, Client, World, REALM};
use uturn::turn::{
    ClientAction, FiveTuple, PeerAction, RelayId, Server, ServerConfig, PEER_HEADROOM,
    PEER_TAILROOM,
};

fn server(now: Instant) -> Server {
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
    Server::new(config, users(), Arc::new(Quotas::new(0, 0)))
}

/// A simulated world whose client (at `client`) has allocated and bound channel 0x4000 to
/// `peer`; returns it, the relay id and the client's 5-tuple.
fn setup(client: &str, peer: SocketAddr) -> (World, RelayId, FiveTuple) {
    let now = Instant::now();
    let mut world = World::from_server(server(now), now);
    let mut c = Client::new(client);
    let relay = c.allocate(&mut world);
    let resp = c.bind_channel(&mut world, 0x4000, peer);
    assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);
    world.events();
    let id = world.relay_id(relay);
    let tuple = world.tuple(c.addr, world.local);
    (world, id, tuple)
}

fn forwarding(c: &mut Criterion) {
    let peer: SocketAddr = "203.0.114.7:9000".parse().unwrap();
    let (world, relay, tuple) = setup("203.0.113.5:40000", peer);
    let World {
        mut server,
        mut sockets,
        now,
        ..
    } = world;

    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    let mut datagram = Vec::new();
    stun::ChannelData::encode(0x4000, &[0xAB; 170], false, &mut datagram);
    group.bench_function("channel_data_client_to_peer_170B", |b| {
        b.iter(|| {
            let action = server.handle_client(now, tuple, black_box(&datagram), &mut sockets);
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
    let peer: SocketAddr = "203.0.114.7:9000".parse().unwrap();
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
        let (world, _, tuple) = setup("203.0.113.5:40000", peer);
        let World {
            mut server,
            mut sockets,
            now,
            ..
        } = world;
        let name = if on {
            "forward_170B_stats_on"
        } else {
            "forward_170B_stats_off"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let action = server.handle_client(now, tuple, black_box(&datagram), &mut sockets);
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
