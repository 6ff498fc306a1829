//! One `turn::Server` driven by an arbitrary sequence of client datagrams (raw bytes, and
//! well-formed authenticated requests so the fuzzer gets past the 401), peer datagrams on
//! relay ids, and clock steps. Checks, after every step: each queued response parses as
//! STUN, the allocation count stays within the limit, forwarding ranges lie inside their
//! buffers, and the relay sockets are opened and closed in pairs. After `shutdown`: no
//! allocation and no socket is left.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use uturn::auth::{Quotas, StaticUsers};
use uturn::stun::{self, ChannelData, Class, Message, MessageBuilder, Method};
use uturn::testing::{peer_buffer, World};
use uturn::turn::{ClientAction, PeerAction, RelayId, Server, ServerConfig, Transport};

const REALM: &str = "example.org";
const MAX_ALLOCATIONS: usize = 3;
const FIRST_PORT: u16 = 50000;
const LAST_PORT: u16 = 50007;

const CLIENTS: [&str; 5] = [
    "198.51.100.1:40000",
    "198.51.100.1:40001",
    "198.51.100.2:40000",
    "[2001:db8::5]:40000",
    "[::ffff:198.51.100.1]:40000",
];
const LOCALS: [&str; 2] = ["192.0.2.10:3478", "[2001:db8::10]:3478"];
/// Public, private, loopback, IPv6 and IPv4-mapped peers: some allowed, some refused; the
/// server's own relay address on a relay port and on another port.
const PEERS: [&str; 9] = [
    "203.0.114.1:5000",
    "203.0.114.1:5001",
    "203.0.114.2:5000",
    "10.0.0.1:5000",
    "127.0.0.1:5000",
    "[2001:db9::1]:5000",
    "[::ffff:203.0.114.1]:5000",
    "192.0.2.10:50001",
    "192.0.2.10:22",
];
/// (username, password): two real users and one with a wrong password.
const USERS: [(&str, &str); 3] = [("alice", "secret"), ("bob", "hunter2"), ("alice", "wrong")];

/// One step, decoded from the fuzz input by [`decode`]. The byte format is simple on
/// purpose, so that `examples/gen_corpus.rs` can write meaningful seeds:
/// a tag byte (taken modulo 10) followed by that op's fields; `data` fields are a
/// big-endian u16 length and that many bytes (cut short at the end of the input).
///
/// | tag | op               | fields                                              |
/// |-----|------------------|-----------------------------------------------------|
/// | 0   | Raw              | client, local (bit 7: the client's connection closes), data |
/// | 1   | Allocate         | client, user, flags, [lifetime u32], [family], [token u64] |
/// | 2   | Refresh          | client, user, flags, [lifetime u32]                 |
/// | 3   | CreatePermission | client, user, n, n peer indexes                     |
/// | 4   | ChannelBind      | client, user, channel u16, peer                     |
/// | 5   | Send             | client, peer, data                                  |
/// | 6   | ChannelData      | client, channel u16, pad, data                      |
/// | 7   | Peer             | relay, peer, extra headroom, data                   |
/// | 8   | Advance          | secs u16, millis u16, stepwise                      |
/// | 9   | Busy             | port index (bit 7: toggle draining instead)         |
///
/// Allocate flags: 1 LIFETIME, 2 EVEN-PORT, 4 its R bit, 8 REQUESTED-ADDRESS-FAMILY,
/// 16 RESERVATION-TOKEN (the u64 read, or with 128 the last token the server handed out),
/// 32 TCP transport, 64 MESSAGE-INTEGRITY-SHA256.
/// Refresh flags: 1 LIFETIME.
#[derive(Debug)]
enum Op {
    /// Raw bytes from a client.
    Raw {
        client: u8,
        local: u8,
        data: Vec<u8>,
    },
    Allocate {
        client: u8,
        user: u8,
        lifetime: Option<u32>,
        even_port: Option<bool>,
        family: Option<u8>,
        token: Option<u64>,
        last_token: bool,
        tcp: bool,
        sha256: bool,
    },
    Refresh {
        client: u8,
        user: u8,
        lifetime: Option<u32>,
    },
    CreatePermission {
        client: u8,
        user: u8,
        peers: Vec<u8>,
    },
    ChannelBind {
        client: u8,
        user: u8,
        channel: u16,
        peer: u8,
    },
    Send {
        client: u8,
        peer: u8,
        data: Vec<u8>,
    },
    ChannelData {
        client: u8,
        channel: u16,
        data: Vec<u8>,
        pad: u8,
    },
    /// A datagram from a peer on relay socket `relay`.
    Peer {
        relay: u8,
        peer: u8,
        data: Vec<u8>,
        extra_head: u8,
    },
    /// Advance the clock; either follow `poll_timeout` second by second or jump at once.
    Advance {
        secs: u16,
        millis: u16,
        stepwise: bool,
    },
    /// Make a relay port fail to bind, or free it again.
    Busy {
        port: u8,
    },
}

/// Reads fields from the fuzz input; past its end every field reads as zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }

    fn data(&mut self) -> Vec<u8> {
        let n = usize::from(self.u16()).min(self.0.len());
        let (data, rest) = self.0.split_at(n);
        self.0 = rest;
        data.to_vec()
    }
}

fn decode(input: &[u8]) -> Vec<Op> {
    let mut r = Reader(input);
    let mut ops = Vec::new();
    while !r.0.is_empty() {
        let op = match r.u8() % 10 {
            0 => Op::Raw {
                client: r.u8(),
                local: r.u8(),
                data: r.data(),
            },
            1 => {
                let (client, user, flags) = (r.u8(), r.u8(), r.u8());
                Op::Allocate {
                    client,
                    user,
                    lifetime: (flags & 1 != 0).then(|| r.u32()),
                    even_port: (flags & 2 != 0).then_some(flags & 4 != 0),
                    family: (flags & 8 != 0).then(|| r.u8()),
                    token: (flags & 16 != 0).then(|| r.u64()),
                    last_token: flags & 128 != 0,
                    tcp: flags & 32 != 0,
                    sha256: flags & 64 != 0,
                }
            }
            2 => {
                let (client, user, flags) = (r.u8(), r.u8(), r.u8());
                Op::Refresh {
                    client,
                    user,
                    lifetime: (flags & 1 != 0).then(|| r.u32()),
                }
            }
            3 => {
                let (client, user) = (r.u8(), r.u8());
                let n = r.u8() % 7;
                Op::CreatePermission {
                    client,
                    user,
                    peers: (0..n).map(|_| r.u8()).collect(),
                }
            }
            4 => Op::ChannelBind {
                client: r.u8(),
                user: r.u8(),
                channel: r.u16(),
                peer: r.u8(),
            },
            5 => Op::Send {
                client: r.u8(),
                peer: r.u8(),
                data: r.data(),
            },
            6 => Op::ChannelData {
                client: r.u8(),
                channel: r.u16(),
                pad: r.u8(),
                data: r.data(),
            },
            7 => Op::Peer {
                relay: r.u8(),
                peer: r.u8(),
                extra_head: r.u8(),
                data: r.data(),
            },
            8 => Op::Advance {
                secs: r.u16(),
                millis: r.u16(),
                stepwise: r.u8() & 1 != 0,
            },
            _ => Op::Busy { port: r.u8() },
        };
        ops.push(op);
    }
    ops
}

/// The second client address speaks TCP (framing and padding differ), the others UDP.
fn transport_of(client: SocketAddr) -> Transport {
    if client.port() == 40001 {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}

/// `UTURN_FUZZ_TRACE=1` prints each op and response, to see what a seed reaches.
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("UTURN_FUZZ_TRACE").is_some())
}

struct Harness {
    /// The core, the fake relay sockets (which check the port range and open/close
    /// pairing) and the clock.
    world: World,
    /// Last NONCE the server gave each client address.
    nonces: [Option<String>; CLIENTS.len()],
    clients: Vec<SocketAddr>,
    locals: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
    tid: u32,
    /// Last RESERVATION-TOKEN the server sent.
    last_token: Option<u64>,
}

fn config(epoch: Instant) -> ServerConfig {
    ServerConfig {
        software: "uturn-fuzz".into(),
        relay_ip_v6: Some("2001:db8::10".parse().unwrap()),
        max_allocations: MAX_ALLOCATIONS,
        max_permissions_per_allocation: 4,
        max_channels_per_allocation: 4,
        max_pending_auth: 4,
        pending_auth_timeout: Duration::from_secs(5),
        stats_packet_trigger: 8,
        stats_interval: Duration::from_secs(30),
        ..ServerConfig::new(
            REALM,
            "192.0.2.10".parse().unwrap(),
            FIRST_PORT..=LAST_PORT,
            [7; 32],
            epoch,
        )
    }
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        let mut users = StaticUsers::new();
        users.add("alice", "secret", REALM);
        users.add("bob", "hunter2", REALM);
        let server = Server::new(config(now), Arc::new(users), Arc::new(Quotas::new(2, 3)));
        let mut world = World::from_server(server, now);
        world.sockets.range = Some(FIRST_PORT..=LAST_PORT);
        Harness {
            world,
            nonces: Default::default(),
            clients: CLIENTS.iter().map(|s| s.parse().unwrap()).collect(),
            locals: LOCALS.iter().map(|s| s.parse().unwrap()).collect(),
            peers: PEERS.iter().map(|s| s.parse().unwrap()).collect(),
            tid: 0,
            last_token: None,
        }
    }

    fn client(&self, i: u8) -> (usize, SocketAddr) {
        let i = usize::from(i) % self.clients.len();
        (i, self.clients[i])
    }

    fn local_for(&self, client: SocketAddr) -> SocketAddr {
        // The listening socket of the client's family, so allocations can exist.
        if client.is_ipv4() {
            self.locals[0]
        } else {
            self.locals[1]
        }
    }

    fn peer(&self, i: u8) -> SocketAddr {
        self.peers[usize::from(i) % self.peers.len()]
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid = self.tid.wrapping_add(1);
        let mut tid = [0xAB; 12];
        tid[..4].copy_from_slice(&self.tid.to_be_bytes());
        tid
    }

    /// Feeds one client datagram, checks the action and drains the outputs; remembers any
    /// NONCE the responses carry for the sender.
    fn feed(&mut self, client: SocketAddr, local: SocketAddr, data: &[u8]) {
        self.world.transport = transport_of(client);
        let action = self.world.feed(client, local, data);
        if trace() && action != ClientAction::None {
            eprintln!("  -> {action:?}");
        }
        if let ClientAction::ToPeer { relay, payload, .. } = action {
            assert!(payload.start <= payload.end && payload.end <= data.len());
            assert!(
                self.world.sockets.open.contains(&relay),
                "forward on closed {relay:?}"
            );
        }
        self.drain();
    }

    /// Takes every queued transmit and event; checks each transmit is STUN and records
    /// NONCEs.
    fn drain(&mut self) {
        while let Some(t) = self.world.server.poll_transmit() {
            let msg = Message::parse(&t.data)
                .unwrap_or_else(|e| panic!("transmit does not parse ({e}): {:02x?}", t.data));
            assert!(
                matches!(msg.class(), Class::Success | Class::Error),
                "server sent a {:?}",
                msg.class()
            );
            if trace() {
                eprintln!(
                    "  -> {:?} {:?} {:?}",
                    msg.method().name(),
                    msg.class(),
                    msg.error_code()
                );
            }
            if let Ok(Some(token)) = msg.reservation_token() {
                self.last_token = Some(token);
            }
            if let Ok(Some(nonce)) = msg.nonce() {
                if let Some(i) = self.clients.iter().position(|c| *c == t.remote) {
                    self.nonces[i] = Some(nonce.to_owned());
                }
            }
        }
        while self.world.server.poll_event().is_some() {}
        assert!(self.world.server.allocation_count() <= MAX_ALLOCATIONS);
    }

    /// Sends an authenticated request built by `attrs`, first getting a nonce (401) when
    /// the client has none, and retrying once after a 438 Stale Nonce.
    fn authenticated(
        &mut self,
        client: u8,
        user: u8,
        method: Method,
        sha256: bool,
        attrs: impl Fn(&mut MessageBuilder<'_>),
    ) {
        let (ci, addr) = self.client(client);
        let local = self.local_for(addr);
        let (username, password) = USERS[usize::from(user) % USERS.len()];
        if self.nonces[ci].is_none() {
            let mut buf = Vec::new();
            let tid = self.next_tid();
            let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &tid);
            attrs(&mut b);
            self.feed(addr, local, &buf);
        }
        for _ in 0..2 {
            let Some(nonce) = self.nonces[ci].clone() else {
                return;
            };
            let key = stun::long_term_key(username, REALM, password);
            let mut buf = Vec::new();
            let tid = self.next_tid();
            let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &tid);
            attrs(&mut b);
            b.add_str(stun::USERNAME, username);
            b.add_str(stun::REALM, REALM);
            b.add_str(stun::NONCE, &nonce);
            if sha256 {
                b.add_message_integrity_sha256(&key);
            } else {
                b.add_message_integrity(&key);
            }
            b.add_fingerprint();
            self.feed(addr, local, &buf);
            if self.nonces[ci].as_deref() == Some(nonce.as_str()) {
                return;
            }
            // A new nonce came back (438 or 401): try once more with it.
        }
    }

    fn peer_datagram(&mut self, relay: u8, peer: u8, data: &[u8], extra_head: u8) {
        let relay = RelayId(u32::from(relay) % (MAX_ALLOCATIONS as u32 + 2));
        let peer = self.peer(peer);
        let (mut buf, payload) = peer_buffer(data, usize::from(extra_head % 8));
        let action = self
            .world
            .server
            .handle_peer(self.world.now, relay, peer, &mut buf, payload);
        if trace() {
            eprintln!("  -> {action:?}");
        }
        if let PeerAction::ToClient { range, client, .. } = action {
            assert!(range.start <= range.end && range.end <= buf.len());
            let out = &buf[range];
            if stun::is_channel_data(out) {
                let cd = ChannelData::parse(out).expect("relayed ChannelData parses");
                assert_eq!(cd.payload, data);
                let pad = if transport_of(client).is_stream() {
                    (4 - data.len() % 4) % 4
                } else {
                    0
                };
                assert_eq!(out.len(), stun::CHANNEL_DATA_HEADER_LEN + data.len() + pad);
            } else {
                let msg = Message::parse(out).expect("Data indication parses");
                assert_eq!(msg.method(), Method::DATA);
                assert_eq!(msg.class(), Class::Indication);
                assert_eq!(msg.data().map(|a| a.value), Some(data));
                assert_eq!(msg.xor_address(stun::XOR_PEER_ADDRESS), Ok(Some(peer)));
            }
            assert!(self.clients.contains(&client));
        }
        self.drain();
    }

    fn advance(&mut self, secs: u16, millis: u16, stepwise: bool) {
        let step = Duration::from_secs(u64::from(secs % 701))
            + Duration::from_millis(u64::from(millis % 1000));
        // Stepwise as a shard does: wake at each poll_timeout up to the target.
        let target = self.world.now + step;
        self.world.advance_to(target, stepwise);
        self.drain();
    }

    fn run(&mut self, op: Op) {
        if trace() {
            eprintln!("{op:?}");
        }
        match op {
            Op::Raw {
                client,
                local,
                data,
            } => {
                let (_, addr) = self.client(client);
                if local & 0x80 != 0 {
                    let tuple = self.world.tuple(addr, self.local_for(addr));
                    let now = self.world.now;
                    let sockets = &mut self.world.sockets;
                    self.world.server.connection_closed(now, tuple, sockets);
                    return self.drain();
                }
                let local = self.locals[usize::from(local) % self.locals.len()];
                self.feed(addr, local, &data);
            }
            Op::Allocate {
                client,
                user,
                lifetime,
                even_port,
                family,
                token,
                last_token,
                tcp,
                sha256,
            } => {
                let token = match (token, last_token) {
                    (Some(t), true) => Some(self.last_token.unwrap_or(t)),
                    (t, _) => t,
                };
                let transport = if tcp {
                    stun::TRANSPORT_TCP
                } else {
                    stun::TRANSPORT_UDP
                };
                self.authenticated(client, user, Method::ALLOCATE, sha256, |b| {
                    b.add_requested_transport(transport);
                    if let Some(l) = lifetime {
                        b.add_u32(stun::LIFETIME, l);
                    }
                    if let Some(r) = even_port {
                        b.add_even_port(r);
                    }
                    if let Some(f) = family {
                        b.add_address_family(stun::REQUESTED_ADDRESS_FAMILY, f % 4);
                    }
                    if let Some(t) = token {
                        b.add_reservation_token(t);
                    }
                });
            }
            Op::Refresh {
                client,
                user,
                lifetime,
            } => {
                self.authenticated(client, user, Method::REFRESH, false, |b| {
                    if let Some(l) = lifetime {
                        b.add_u32(stun::LIFETIME, l);
                    }
                });
            }
            Op::CreatePermission {
                client,
                user,
                peers,
            } => {
                let peers: Vec<SocketAddr> = peers.iter().take(6).map(|p| self.peer(*p)).collect();
                self.authenticated(client, user, Method::CREATE_PERMISSION, false, |b| {
                    for p in &peers {
                        b.add_xor_address(stun::XOR_PEER_ADDRESS, *p);
                    }
                });
            }
            Op::ChannelBind {
                client,
                user,
                channel,
                peer,
            } => {
                // Mostly valid channel numbers, sometimes not.
                let channel = if channel & 0x8000 == 0 {
                    stun::MIN_CHANNEL + (channel % 8)
                } else {
                    channel
                };
                let peer = self.peer(peer);
                self.authenticated(client, user, Method::CHANNEL_BIND, false, |b| {
                    b.add_channel_number(channel);
                    b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
                });
            }
            Op::Send { client, peer, data } => {
                let (_, addr) = self.client(client);
                let peer = self.peer(peer);
                let mut buf = Vec::new();
                let tid = self.next_tid();
                MessageBuilder::new(&mut buf, Class::Indication, Method::SEND, &tid)
                    .add_xor_address(stun::XOR_PEER_ADDRESS, peer)
                    .add(stun::DATA, &data);
                self.feed(addr, self.local_for(addr), &buf);
            }
            Op::ChannelData {
                client,
                channel,
                data,
                pad,
            } => {
                let (_, addr) = self.client(client);
                let channel = stun::MIN_CHANNEL + (channel % 8);
                let mut buf = Vec::new();
                ChannelData::encode(channel, &data, pad & 1 == 1, &mut buf);
                buf.extend(std::iter::repeat_n(0, usize::from(pad >> 6)));
                self.feed(addr, self.local_for(addr), &buf);
            }
            Op::Peer {
                relay,
                peer,
                data,
                extra_head,
            } => self.peer_datagram(relay, peer, &data, extra_head),
            Op::Advance {
                secs,
                millis,
                stepwise,
            } => self.advance(secs, millis, stepwise),
            Op::Busy { port } if port & 0x80 != 0 => {
                let on = !self.world.server.is_draining();
                self.world.server.set_draining(on);
            }
            Op::Busy { port } => {
                let port = FIRST_PORT + u16::from(port % 8);
                if !self.world.sockets.busy.remove(&port) {
                    self.world.sockets.busy.insert(port);
                }
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let mut h = Harness::new();
    for op in decode(input).into_iter().take(64) {
        h.run(op);
    }
    h.world.server.shutdown(h.world.now, &mut h.world.sockets);
    h.drain();
    assert_eq!(
        h.world.server.allocation_count(),
        0,
        "allocations left after shutdown"
    );
    assert!(
        h.world.sockets.open.is_empty(),
        "relay sockets left open after shutdown: {:?}",
        h.world.sockets.open
    );
});
