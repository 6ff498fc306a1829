//! Writes the seed corpora into `fuzz/corpus/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus` (from the repo root).
//!
//! stun_message: the RFC 5769 test vectors and requests, responses and indications built
//! with `MessageBuilder`. channel_data: ChannelData frames. core_datagrams: op sequences in
//! the format described in `fuzz_targets/core_datagrams.rs` (allocate, permission, channel
//! bind, relaying both ways, refresh, expiry).

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use uturn::stun::{self, ChannelData, Class, MessageBuilder, Method};

use uturn::stun::rfc5769::{
    REQUEST as REQ, REQUEST_LONG_TERM as REQ_LTC, RESPONSE_V4 as RESP_V4, RESPONSE_V6 as RESP_V6,
};

const REALM: &str = "example.org";
const NONCE: &str = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA";

fn build(
    class: Class,
    method: Method,
    tid: u8,
    attrs: impl FnOnce(&mut MessageBuilder<'_>),
) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, class, method, &[tid; 12]);
    attrs(&mut b);
    buf
}

/// A request with long-term credentials for alice, MESSAGE-INTEGRITY and FINGERPRINT.
fn authed(method: Method, tid: u8, attrs: impl FnOnce(&mut MessageBuilder<'_>)) -> Vec<u8> {
    build(Class::Request, method, tid, |b| {
        attrs(b);
        b.add_str(stun::USERNAME, "alice");
        b.add_str(stun::REALM, REALM);
        b.add_str(stun::NONCE, NONCE);
        b.add_message_integrity(&stun::long_term_key("alice", REALM, "secret"));
        b.add_fingerprint();
    })
}

fn stun_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let peer: SocketAddr = "203.0.113.1:5000".parse().unwrap();
    let peer6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
    let relay: SocketAddr = "192.0.2.10:50000".parse().unwrap();
    let key = stun::long_term_key("alice", REALM, "secret");
    vec![
        ("rfc5769-request", REQ.to_vec()),
        ("rfc5769-response-v4", RESP_V4.to_vec()),
        ("rfc5769-response-v6", RESP_V6.to_vec()),
        ("rfc5769-request-long-term", REQ_LTC.to_vec()),
        ("binding", build(Class::Request, Method::BINDING, 1, |_| {})),
        (
            "binding-fingerprint",
            build(Class::Request, Method::BINDING, 2, |b| {
                b.add_fingerprint();
            }),
        ),
        (
            "allocate-noauth",
            build(Class::Request, Method::ALLOCATE, 3, |b| {
                b.add_requested_transport(stun::TRANSPORT_UDP);
            }),
        ),
        (
            "allocate",
            authed(Method::ALLOCATE, 4, |b| {
                b.add_requested_transport(stun::TRANSPORT_UDP);
                b.add_u32(stun::LIFETIME, 600);
            }),
        ),
        (
            "allocate-even-port",
            authed(Method::ALLOCATE, 5, |b| {
                b.add_requested_transport(stun::TRANSPORT_UDP);
                b.add_even_port(true);
                b.add(stun::DONT_FRAGMENT, &[]);
            }),
        ),
        (
            "allocate-token-v6",
            authed(Method::ALLOCATE, 6, |b| {
                b.add_requested_transport(stun::TRANSPORT_UDP);
                b.add_reservation_token(0x0123_4567_89ab_cdef);
                b.add_address_family(stun::REQUESTED_ADDRESS_FAMILY, stun::FAMILY_IPV6);
                b.add_address_family(stun::ADDITIONAL_ADDRESS_FAMILY, stun::FAMILY_IPV6);
            }),
        ),
        (
            "allocate-sha256",
            build(Class::Request, Method::ALLOCATE, 7, |b| {
                b.add_requested_transport(stun::TRANSPORT_UDP);
                b.add_str(stun::USERNAME, "alice");
                b.add_str(stun::REALM, REALM);
                b.add_str(stun::NONCE, NONCE);
                b.add_message_integrity_sha256(&key);
                b.add_fingerprint();
            }),
        ),
        (
            "allocate-unknown-attr",
            build(Class::Request, Method::ALLOCATE, 8, |b| {
                b.add_requested_transport(stun::TRANSPORT_UDP);
                b.add(0x7777, &[1, 2, 3]);
                b.add(0xC001, &[9]);
            }),
        ),
        (
            "refresh",
            authed(Method::REFRESH, 9, |b| {
                b.add_u32(stun::LIFETIME, 0);
            }),
        ),
        (
            "create-permission",
            authed(Method::CREATE_PERMISSION, 10, |b| {
                b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
                b.add_xor_address(stun::XOR_PEER_ADDRESS, peer6);
            }),
        ),
        (
            "channel-bind",
            authed(Method::CHANNEL_BIND, 11, |b| {
                b.add_channel_number(0x4000);
                b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
            }),
        ),
        (
            "send",
            build(Class::Indication, Method::SEND, 12, |b| {
                b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
                b.add(stun::DATA, b"hello");
            }),
        ),
        (
            "data",
            build(Class::Indication, Method::DATA, 13, |b| {
                b.add_xor_address(stun::XOR_PEER_ADDRESS, peer6);
                b.add(stun::DATA, b"hi");
            }),
        ),
        (
            "allocate-success",
            build(Class::Success, Method::ALLOCATE, 14, |b| {
                b.add_xor_address(stun::XOR_RELAYED_ADDRESS, relay);
                b.add_xor_address(stun::XOR_MAPPED_ADDRESS, peer);
                b.add_u32(stun::LIFETIME, 600);
                b.add_reservation_token(7);
                b.add_str(stun::SOFTWARE, "uturn");
                b.add_message_integrity(&key);
                b.add_fingerprint();
            }),
        ),
        (
            "error-401",
            build(Class::Error, Method::ALLOCATE, 15, |b| {
                b.add_error_code(401, stun::reason_phrase(401));
                b.add_str(stun::REALM, REALM);
                b.add_str(stun::NONCE, NONCE);
            }),
        ),
        (
            "error-420",
            build(Class::Error, Method::ALLOCATE, 16, |b| {
                b.add_error_code(420, stun::reason_phrase(420));
                b.add_unknown_attributes(&[0x7777, 0x0030]);
            }),
        ),
        (
            "alternate-server",
            build(Class::Error, Method::ALLOCATE, 17, |b| {
                b.add_error_code(300, stun::reason_phrase(300));
                b.add_address(stun::ALTERNATE_SERVER, relay);
                b.add_address(stun::MAPPED_ADDRESS, peer6);
            }),
        ),
        (
            "integrity-then-more",
            build(Class::Request, Method::REFRESH, 18, |b| {
                b.add_message_integrity(&key);
                b.add_u32(stun::LIFETIME, 60);
                b.add_message_integrity_sha256(&key);
                b.add_fingerprint();
            }),
        ),
    ]
}

fn channel_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let frame = |number: u16, payload: &[u8], pad: bool| {
        let mut out = Vec::new();
        ChannelData::encode(number, payload, pad, &mut out);
        out
    };
    let mut trailing = frame(0x4001, b"abc", false);
    trailing.extend_from_slice(b"trailing");
    vec![
        ("empty-4000", frame(0x4000, b"", false)),
        ("hello-4000", frame(0x4000, b"hello", false)),
        ("hello-4000-padded", frame(0x4000, b"hello", true)),
        ("max-channel", frame(0x7FFF, &[0x55; 16], false)),
        ("rfc8656-max", frame(0x4FFF, &[1, 2, 3, 4], false)),
        ("below-min", frame(0x3FFF, b"x", false)),
        ("above-max", frame(0x8000, b"x", false)),
        ("trailing", trailing),
        ("length-too-long", vec![0x40, 0x00, 0x00, 0x10, 1, 2, 3]),
        ("header-only-short", vec![0x40, 0x00, 0x00]),
        (
            "stun-binding",
            build(Class::Request, Method::BINDING, 1, |_| {}),
        ),
    ]
}

/// Encoders for the core_datagrams op format.
struct Ops(Vec<u8>);

impl Ops {
    fn new() -> Self {
        Ops(Vec::new())
    }
    fn data(&mut self, d: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(d.len() as u16).to_be_bytes());
        self.0.extend_from_slice(d);
        self
    }
    fn raw(&mut self, client: u8, d: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[0, client, 0]);
        self.data(d)
    }
    fn allocate(&mut self, client: u8, user: u8, flags: u8) -> &mut Self {
        self.0.extend_from_slice(&[1, client, user, flags]);
        if flags & 1 != 0 {
            self.0.extend_from_slice(&300u32.to_be_bytes());
        }
        if flags & 8 != 0 {
            self.0.push(stun::FAMILY_IPV4);
        }
        if flags & 16 != 0 {
            self.0
                .extend_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        }
        self
    }
    fn refresh(&mut self, client: u8, lifetime: Option<u32>) -> &mut Self {
        self.0
            .extend_from_slice(&[2, client, 0, u8::from(lifetime.is_some())]);
        if let Some(l) = lifetime {
            self.0.extend_from_slice(&l.to_be_bytes());
        }
        self
    }
    fn permission(&mut self, client: u8, peers: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[3, client, 0, peers.len() as u8]);
        self.0.extend_from_slice(peers);
        self
    }
    fn bind(&mut self, client: u8, channel: u16, peer: u8) -> &mut Self {
        self.0.extend_from_slice(&[4, client, 0]);
        self.0.extend_from_slice(&channel.to_be_bytes());
        self.0.push(peer);
        self
    }
    fn send(&mut self, client: u8, peer: u8, d: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[5, client, peer]);
        self.data(d)
    }
    fn channel_data(&mut self, client: u8, channel: u16, d: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[6, client]);
        self.0.extend_from_slice(&channel.to_be_bytes());
        self.0.push(0);
        self.data(d)
    }
    fn peer(&mut self, relay: u8, peer: u8, d: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[7, relay, peer, 0]);
        self.data(d)
    }
    fn advance(&mut self, secs: u16, stepwise: bool) -> &mut Self {
        self.0.push(8);
        self.0.extend_from_slice(&secs.to_be_bytes());
        self.0.extend_from_slice(&0u16.to_be_bytes());
        self.0.push(u8::from(stepwise));
        self
    }
    fn busy(&mut self, port: u8) -> &mut Self {
        self.0.extend_from_slice(&[9, port]);
        self
    }
    fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

fn core_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let binding = build(Class::Request, Method::BINDING, 1, |_| {});
    vec![
        ("binding", Ops::new().raw(0, &binding).done()),
        ("allocate", Ops::new().allocate(0, 0, 0).done()),
        ("allocate-v6", Ops::new().allocate(3, 1, 1 | 8).done()),
        (
            "allocate-wrong-password",
            Ops::new().allocate(0, 2, 0).done(),
        ),
        (
            "allocate-even-port-reserve",
            Ops::new()
                .allocate(0, 0, 2 | 4)
                .allocate(1, 1, 16 | 128)
                .done(),
        ),
        (
            "allocate-tcp-sha256",
            Ops::new().allocate(0, 0, 32 | 64).done(),
        ),
        (
            "allocate-quota",
            Ops::new()
                .allocate(0, 0, 0)
                .allocate(1, 0, 0)
                .allocate(2, 0, 0)
                .allocate(3, 1, 0)
                .done(),
        ),
        (
            "allocate-busy-ports",
            Ops::new().busy(0).busy(1).busy(2).allocate(0, 0, 2).done(),
        ),
        (
            "relay-send-data",
            Ops::new()
                .allocate(0, 0, 0)
                .permission(0, &[0, 2])
                .send(0, 0, b"to peer")
                .peer(0, 0, b"from peer")
                .peer(0, 2, b"peer 2")
                .done(),
        ),
        (
            "relay-channel",
            Ops::new()
                .allocate(0, 0, 0)
                .bind(0, 0x4000, 0)
                .channel_data(0, 0, b"chan to peer")
                .peer(0, 0, b"chan from peer")
                .done(),
        ),
        (
            "refused-peers",
            Ops::new()
                .allocate(0, 0, 0)
                .permission(0, &[3, 4, 6])
                .bind(0, 0x4001, 3)
                .done(),
        ),
        (
            "refresh-delete",
            Ops::new()
                .allocate(0, 0, 1)
                .refresh(0, Some(0))
                .peer(0, 0, b"late")
                .done(),
        ),
        (
            "refresh-extend",
            Ops::new()
                .allocate(0, 0, 1)
                .refresh(0, None)
                .advance(400, true)
                .refresh(0, Some(3600))
                .done(),
        ),
        (
            "expire-stepwise",
            Ops::new()
                .allocate(0, 0, 0)
                .permission(0, &[0])
                .advance(700, true)
                .peer(0, 0, b"late")
                .done(),
        ),
        (
            "expire-jump",
            Ops::new()
                .allocate(0, 0, 1)
                .bind(0, 0x4002, 1)
                .advance(700, false)
                .advance(700, false)
                .allocate(0, 0, 0)
                .done(),
        ),
        (
            "stale-nonce",
            Ops::new()
                .allocate(0, 0, 0)
                .advance(650, false)
                .refresh(0, None)
                .done(),
        ),
        (
            "traffic-reports",
            Ops::new()
                .allocate(0, 0, 0)
                .bind(0, 0x4000, 0)
                .channel_data(0, 0, b"1")
                .channel_data(0, 0, b"2")
                .channel_data(0, 0, b"3")
                .peer(0, 0, b"4")
                .peer(0, 0, b"5")
                .peer(0, 0, b"6")
                .peer(0, 0, b"7")
                .peer(0, 0, b"8")
                .advance(31, true)
                .done(),
        ),
    ]
}

fn write(dir: &Path, seeds: Vec<(String, Vec<u8>)>) {
    fs::create_dir_all(dir).unwrap();
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let stun = stun_seeds();
    let channel = channel_seeds();
    // Every STUN seed is also a useful raw client datagram for the core.
    let mut core: Vec<(String, Vec<u8>)> = core_seeds()
        .into_iter()
        .map(|(name, ops)| (name.to_owned(), ops))
        .collect();
    for (name, bytes) in stun.iter().chain(channel.iter()) {
        let mut ops = Ops::new();
        ops.allocate(0, 0, 0);
        core.push((format!("raw-{name}"), ops.raw(0, bytes).done()));
    }
    let owned = |seeds: Vec<(&str, Vec<u8>)>| {
        seeds
            .into_iter()
            .map(|(name, bytes)| (name.to_owned(), bytes))
            .collect()
    };
    write(&root.join("stun_message"), owned(stun));
    write(&root.join("channel_data"), owned(channel));
    write(&root.join("core_datagrams"), core);
}
