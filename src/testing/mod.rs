//! Test, fuzz and bench support — not API: a simulated world for the TURN core, after
//! quinn-proto's `src/tests/util.rs`. One [`Server`], a fake clock, [`FakeSockets`] in place
//! of relay sockets, [`Client`]s that speak long-term-authenticated TURN, and peers that are
//! just addresses: no sockets and no threads, so expiry, retransmission and odd
//! interleavings run in microseconds and deterministically.
//!
//! Used by the core's unit tests (`src/turn/tests*`), `fuzz/fuzz_targets/core_datagrams.rs`
//! and `benches/core.rs`. Must not: be used by the server itself; it may panic on anything
//! a test should notice (a socket opened twice, a response to the wrong client).

use crate::auth::StaticUsers;
use crate::stun::{self, Class, Message, MessageBuilder, Method};
use crate::turn::{
    ClientAction, Event, FiveTuple, Observer, PeerAction, Quotas, RelayId, RelaySockets, Server,
    ServerConfig, Transmit, Transport, PEER_HEADROOM, PEER_TAILROOM,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod netns;
pub mod tls;

/// The realm of every simulated server.
pub const REALM: &str = "example.org";

/// Relay sockets that only remember which ids are open; checks open/close pairing.
#[derive(Debug, Default)]
pub struct FakeSockets {
    pub open: HashSet<RelayId>,
    /// Ports that fail to bind, as if another process held them.
    pub busy: HashSet<u16>,
    /// When set, opening a port outside it is a bug in the core.
    pub range: Option<RangeInclusive<u16>>,
    /// Every `open` that succeeded, in order.
    pub opened: Vec<(RelayId, SocketAddr)>,
}

impl RelaySockets for FakeSockets {
    fn open(&mut self, id: RelayId, addr: SocketAddr) -> std::io::Result<()> {
        if let Some(range) = &self.range {
            assert!(
                range.contains(&addr.port()),
                "relay port {} outside {range:?}",
                addr.port()
            );
        }
        if self.busy.contains(&addr.port()) {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        assert!(self.open.insert(id), "relay id {id:?} opened twice");
        self.opened.push((id, addr));
        Ok(())
    }

    fn close(&mut self, id: RelayId) {
        assert!(self.open.remove(&id), "relay id {id:?} closed but not open");
    }
}

/// Static users `alice:secret` and `bob:hunter2` in [`REALM`].
pub fn users() -> Arc<StaticUsers> {
    let mut u = StaticUsers::new();
    u.add("alice", "secret", REALM);
    u.add("bob", "hunter2", REALM);
    Arc::new(u)
}

/// A small test configuration: relay 192.0.2.10, ports 50000..=50009, caps of 8.
pub fn config(epoch: Instant) -> ServerConfig {
    ServerConfig {
        software: "uturn-test".into(),
        max_allocations: 1000,
        max_permissions_per_allocation: 8,
        max_channels_per_allocation: 8,
        max_pending_auth: 4,
        pending_auth_timeout: Duration::from_secs(5),
        ..ServerConfig::new(
            REALM,
            "192.0.2.10".parse().expect("literal address"),
            50000..=50009,
            [3; 32],
            epoch,
        )
    }
}

/// The in-memory world: one server, a fake clock, fake sockets.
pub struct World {
    pub server: Server,
    pub sockets: FakeSockets,
    pub now: Instant,
    /// The listening address clients send to by default.
    pub local: SocketAddr,
    /// The transport clients use (UDP unless a test changes it).
    pub transport: Transport,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::with_observer(tweak, users(), Arc::new(Quotas::new(0, 0)))
    }

    pub fn with_observer(
        tweak: impl FnOnce(&mut ServerConfig),
        observer: Arc<dyn Observer>,
        quotas: Arc<Quotas>,
    ) -> Self {
        let now = Instant::now();
        let mut cfg = config(now);
        tweak(&mut cfg);
        Self::from_server(Server::new(cfg, observer, quotas), now)
    }

    /// A world around an existing server whose epoch is `now`.
    pub fn from_server(server: Server, now: Instant) -> Self {
        World {
            server,
            sockets: FakeSockets::default(),
            now,
            local: "192.0.2.10:3478".parse().expect("literal address"),
            transport: Transport::Udp,
        }
    }

    /// Moves the clock `secs` seconds, a second at a time as a shard following
    /// `poll_timeout` would.
    pub fn advance(&mut self, secs: u64) {
        for _ in 0..secs {
            self.now += Duration::from_secs(1);
            self.server.handle_timeout(self.now, &mut self.sockets);
        }
    }

    /// Moves the clock to `target`, waking at every `poll_timeout` on the way (`stepwise`)
    /// or jumping there at once.
    pub fn advance_to(&mut self, target: Instant, stepwise: bool) {
        if stepwise {
            while let Some(at) = self.server.poll_timeout() {
                if at > target {
                    break;
                }
                self.now = self.now.max(at);
                self.server.handle_timeout(self.now, &mut self.sockets);
            }
        }
        self.now = self.now.max(target);
        self.server.handle_timeout(self.now, &mut self.sockets);
    }

    /// The 5-tuple of a client at `from` talking to `local` over [`World::transport`].
    pub fn tuple(&self, from: SocketAddr, local: SocketAddr) -> FiveTuple {
        FiveTuple {
            client: from,
            server: local,
            transport: self.transport,
        }
    }

    /// Feeds a datagram from `from` on the listening socket `local`; returns the action.
    pub fn feed(&mut self, from: SocketAddr, local: SocketAddr, data: &[u8]) -> ClientAction {
        self.server
            .handle_client(self.now, self.tuple(from, local), data, &mut self.sockets)
    }

    /// Every queued transmit.
    pub fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.server.poll_transmit()).collect()
    }

    /// Sends a datagram from a client to [`World::local`]; returns the action and every
    /// queued response (which must all go back to that client).
    pub fn client(&mut self, from: SocketAddr, data: &[u8]) -> (ClientAction, Vec<Vec<u8>>) {
        let action = self.feed(from, self.local, data);
        let mut out = Vec::new();
        for t in self.transmits() {
            assert_eq!(t.local, self.local);
            assert_eq!(t.remote, from);
            out.push(t.data);
        }
        (action, out)
    }

    /// A request that must be answered with exactly one response and forward nothing.
    pub fn request(&mut self, from: SocketAddr, data: &[u8]) -> Vec<u8> {
        let (action, mut out) = self.client(from, data);
        assert_eq!(action, ClientAction::None);
        assert_eq!(out.len(), 1, "expected exactly one response");
        out.pop().expect("one response")
    }

    /// A datagram from a peer on `relay`: the bytes sent to the client, or `None` if dropped.
    pub fn peer(&mut self, relay: RelayId, from: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
        let (mut buf, range) = peer_buffer(payload, 0);
        match self
            .server
            .handle_peer(self.now, relay, from, &mut buf, range)
        {
            PeerAction::Drop => None,
            PeerAction::ToClient { local, range, .. } => {
                assert_eq!(local, self.local);
                Some(buf[range].to_vec())
            }
        }
    }

    pub fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    /// The relay id of the live allocation whose relay address is `relay`.
    pub fn relay_id(&self, relay: SocketAddr) -> RelayId {
        (0..self.server.slot_capacity() as u32)
            .map(RelayId)
            .find(|id| {
                self.server
                    .allocation_info(*id)
                    .is_some_and(|i| i.relay == relay)
            })
            .expect("allocation for relay")
    }
}

/// A receive buffer as a shard lays it out: `PEER_HEADROOM + extra_head` bytes of
/// headroom, the payload, `PEER_TAILROOM`. Returns the buffer and the payload's range.
pub fn peer_buffer(payload: &[u8], extra_head: usize) -> (Vec<u8>, std::ops::Range<usize>) {
    let start = PEER_HEADROOM + extra_head;
    let end = start + payload.len();
    let mut buf = vec![0xEE; end + PEER_TAILROOM];
    buf[start..end].copy_from_slice(payload);
    (buf, start..end)
}

/// A simulated client with long-term credentials.
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
    pub nonce: Option<String>,
    pub tid: u64,
}

impl Client {
    /// `alice:secret` at `addr`.
    pub fn new(addr: &str) -> Self {
        Client {
            addr: addr.parse().expect("client address"),
            username: "alice".into(),
            password: "secret".into(),
            nonce: None,
            tid: 1,
        }
    }

    pub fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.tid.to_be_bytes());
        t[8..].copy_from_slice(&self.addr.port().to_be_bytes().repeat(2));
        t
    }

    pub fn key(&self) -> [u8; 16] {
        stun::long_term_key(&self.username, REALM, &self.password)
    }

    /// Builds a request; with `auth` it carries USERNAME/REALM/NONCE/MESSAGE-INTEGRITY.
    pub fn build(
        &mut self,
        method: Method,
        auth: bool,
        attrs: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        let tid = self.next_tid();
        self.build_with_tid(method, tid, auth, attrs)
    }

    pub fn build_with_tid(
        &mut self,
        method: Method,
        tid: [u8; 12],
        auth: bool,
        attrs: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        let key = self.key();
        let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &tid);
        attrs(&mut b);
        if auth {
            b.add_str(stun::USERNAME, &self.username);
            b.add_str(stun::REALM, REALM);
            b.add_str(stun::NONCE, self.nonce.as_deref().unwrap_or("none"));
            b.add_message_integrity(&key);
        }
        b.add_fingerprint();
        buf
    }

    /// Sends an unauthenticated request to learn the nonce from the 401.
    pub fn learn_nonce(&mut self, world: &mut World) {
        let req = self.build(Method::ALLOCATE, false, |b| {
            b.add_requested_transport(stun::TRANSPORT_UDP);
        });
        let resp = world.request(self.addr, &req);
        assert_eq!(error_code(&resp), Some(401));
        self.nonce = Some(nonce_of(&resp));
    }

    /// Gets a nonce (401), then allocates; returns the Allocate response.
    pub fn try_allocate(&mut self, world: &mut World) -> Vec<u8> {
        if self.nonce.is_none() {
            self.learn_nonce(world);
        }
        self.authed(world, Method::ALLOCATE, |b| {
            b.add_requested_transport(stun::TRANSPORT_UDP);
        })
    }

    /// Gets a fresh nonce (401), allocates and checks the success response; returns the
    /// relay address.
    pub fn allocate(&mut self, world: &mut World) -> SocketAddr {
        self.learn_nonce(world);
        let resp = self.try_allocate(world);
        let msg = Message::parse(&resp).expect("allocate response parses");
        assert_eq!(
            msg.class(),
            Class::Success,
            "allocate failed: {:?}",
            error_code(&resp)
        );
        assert!(msg.verify_integrity(&self.key()));
        assert_eq!(
            msg.xor_address(stun::XOR_MAPPED_ADDRESS).ok().flatten(),
            Some(self.addr)
        );
        msg.xor_address(stun::XOR_RELAYED_ADDRESS)
            .ok()
            .flatten()
            .expect("XOR-RELAYED-ADDRESS")
    }

    /// An authenticated request; returns its one response.
    pub fn authed(
        &mut self,
        world: &mut World,
        method: Method,
        attrs: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        let req = self.build(method, true, attrs);
        world.request(self.addr, &req)
    }

    /// ChannelBind `number` to `peer`; returns the response.
    pub fn bind_channel(&mut self, world: &mut World, number: u16, peer: SocketAddr) -> Vec<u8> {
        self.authed(world, Method::CHANNEL_BIND, |b| {
            b.add_channel_number(number);
            b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
        })
    }

    /// CreatePermission for `peers`; returns the response.
    pub fn permit(&mut self, world: &mut World, peers: &[SocketAddr]) -> Vec<u8> {
        self.authed(world, Method::CREATE_PERMISSION, |b| {
            for p in peers {
                b.add_xor_address(stun::XOR_PEER_ADDRESS, *p);
            }
        })
    }
}

/// The error code of a response, `None` for a success.
pub fn error_code(resp: &[u8]) -> Option<u16> {
    let msg = Message::parse(resp).expect("response parses");
    if msg.class() == Class::Success {
        return None;
    }
    assert_eq!(msg.class(), Class::Error);
    msg.error_code().ok().flatten().map(|(c, _)| c)
}

/// The NONCE of a challenge (which must carry our REALM).
pub fn nonce_of(resp: &[u8]) -> String {
    let msg = Message::parse(resp).expect("response parses");
    assert_eq!(msg.realm().ok().flatten(), Some(REALM));
    msg.nonce().ok().flatten().expect("NONCE").to_owned()
}
