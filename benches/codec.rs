//! The STUN codec on its own: ChannelData framing, parsing an authenticated Allocate,
//! MESSAGE-INTEGRITY verification, encoding a Data indication header in place.
//!
//! `cargo bench --bench codec`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::net::SocketAddr;
use uturn::stun::{self, ChannelData, Class, Message, MessageBuilder, Method};

fn codec(c: &mut Criterion) {
    let key = stun::long_term_key("alice", "example.org", "secret");
    let mut allocate = Vec::new();
    MessageBuilder::new(&mut allocate, Class::Request, Method::ALLOCATE, &[7; 12])
        .add_requested_transport(stun::TRANSPORT_UDP)
        .add_u32(stun::LIFETIME, 600)
        .add_str(stun::USERNAME, "alice")
        .add_str(stun::REALM, "example.org")
        .add_str(stun::NONCE, "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
        .add_message_integrity(&key)
        .add_fingerprint();
    let mut channel_data = Vec::new();
    ChannelData::encode(0x4000, &[0x5a; 170], false, &mut channel_data);
    let peer: SocketAddr = "198.51.100.7:9000".parse().unwrap();

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("channel_data_parse_170B", |b| {
        b.iter(|| {
            ChannelData::parse(black_box(&channel_data))
                .unwrap()
                .payload
                .len()
        })
    });
    g.bench_function("allocate_parse_authenticated", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&allocate)).unwrap();
            (
                m.username().unwrap(),
                m.nonce().unwrap(),
                m.requested_transport().unwrap(),
            )
        })
    });
    let parsed = Message::parse(&allocate).unwrap();
    g.bench_function("message_integrity_verify", |b| {
        b.iter(|| assert!(black_box(&parsed).verify_integrity(black_box(&key))))
    });
    let mut prefix = [0u8; 48];
    g.bench_function("data_indication_prefix", |b| {
        b.iter(|| {
            stun::data_indication_prefix(&mut prefix, &[3; 12], black_box(peer), black_box(170))
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
