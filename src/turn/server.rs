//! The per-shard TURN state machine (RFC 8656 §7–§12).
//!
//! Fast paths return their decision directly ([`ClientAction`], [`PeerAction`]) so the shard
//! can send from the receive buffer without copying; everything else (STUN responses) is
//! queued and taken with [`Server::poll_transmit`], events with [`Server::poll_event`].

use super::allocation::{Allocation, ChannelBinding, TokenBucket};
use super::nonce;
use super::ports::{PortExchange, PortPool};
use super::timers::TimerWheel;
use super::{AllocationInfo, DeleteReason, Event, FiveTuple, Traffic, Transport};
use crate::auth::{AuthDecision, AuthRequest, Observer, Quotas, Ticket};
use crate::stun::{
    self, ChannelData, Class, LongTermKey, Message, MessageBuilder, Method, TransactionId,
};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timer wheel ticks per second: expiry is never early and at most 100 ms late.
const TICKS_PER_SEC: u64 = 10;
const NANOS_PER_TICK: u64 = 1_000_000_000 / TICKS_PER_SEC;

/// Index of an allocation's relay socket within its shard. The shard tags the relay socket
/// with it and hands it back with every datagram received on that socket.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u32);

/// How the core gets relay sockets: the shard binds and closes real sockets, tests a fake.
pub trait RelaySockets {
    /// Bind a UDP socket at `addr` for `id`. An error (port in use) makes the core try
    /// another port.
    fn open(&mut self, id: RelayId, addr: SocketAddr) -> std::io::Result<()>;
    /// Close the socket of `id`. Datagrams still in flight for it must be dropped: the id
    /// may be reused by the next `open`.
    fn close(&mut self, id: RelayId);
}

/// A datagram to send from the listening socket bound at `local` to `remote`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub data: Vec<u8>,
}

/// What to do with a datagram received from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Nothing to forward (a response may have been queued; take it with `poll_transmit`).
    None,
    /// Send `buf[payload]` from relay socket `relay` to `peer` (ChannelData or Send).
    ToPeer {
        relay: RelayId,
        peer: SocketAddr,
        payload: Range<usize>,
    },
}

/// What to do with a datagram received from a peer on a relay socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAction {
    /// No permission, unknown relay, or over a limit: dropped and counted.
    Drop,
    /// Send `buf[range]` from the listening socket bound at `local` to `client`; the core
    /// wrote the ChannelData or Data indication header into the headroom before the payload
    /// (and padding after it, for a Data indication).
    ToClient {
        local: SocketAddr,
        client: SocketAddr,
        range: Range<usize>,
    },
}

/// Headroom the shard must leave before a peer payload: a Data indication's header with an
/// IPv6 XOR-PEER-ADDRESS (20 + 24 + 4).
pub const PEER_HEADROOM: usize = 48;
/// Room the shard must leave after a peer payload: Data indication padding.
pub const PEER_TAILROOM: usize = 3;

/// Configuration of one shard's core.
#[derive(Clone)]
pub struct ServerConfig {
    pub realm: String,
    /// SOFTWARE attribute in responses; empty for none.
    pub software: String,
    /// Relay address IP (IPv4 relay; IPv6 when given as `relay_ip_v6`).
    pub relay_ip: IpAddr,
    pub relay_ip_v6: Option<IpAddr>,
    /// The address put in XOR-RELAYED-ADDRESS instead of `relay_ip` (`--external-ip`).
    pub external_ip: Option<IpAddr>,
    /// This shard's relay ports.
    pub ports: RangeInclusive<u16>,
    /// Shared by the shards of one server: reservation tokens and ports freed away from home.
    pub port_exchange: Arc<PortExchange>,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub nonce_lifetime: Duration,
    /// Secret for stateless nonces; the same on every shard.
    pub nonce_secret: [u8; 32],
    /// Time zero for nonce timestamps; the same on every shard.
    pub epoch: Instant,
    pub policy: super::PeerPolicy,
    pub max_allocations: usize,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    /// Requests parked waiting for an asynchronous authentication answer.
    pub max_pending_auth: usize,
    pub pending_auth_timeout: Duration,
    /// Per-allocation relay bandwidth limit in bytes per second (0: none).
    pub max_bps: u64,
    /// Report traffic when an allocation's packet count reaches a multiple of this (coturn: 4096).
    pub stats_packet_trigger: u64,
    /// And at least this often for allocations with traffic (zero: never by time).
    pub stats_interval: Duration,
    /// First allocation id of this shard; ids go up by `id_stride` (one per shard).
    pub id_base: u64,
    pub id_stride: u64,
    pub transport: Transport,
}

impl ServerConfig {
    /// A configuration with RFC 8656 / coturn defaults (lifetimes 600 / 3600 / 300 / 600 s,
    /// nonces 600 s, 32 permissions and 64 channels per allocation, 1,024 parked
    /// authentications for 10 s, traffic reported every 4,096 packets, no bandwidth limit,
    /// every peer policy default, SOFTWARE `uturn/<version>`), one shard owning `ports`.
    /// `nonce_secret` must be the same on every shard of a server and secret.
    pub fn new(
        realm: &str,
        relay_ip: IpAddr,
        ports: RangeInclusive<u16>,
        nonce_secret: [u8; 32],
        epoch: Instant,
    ) -> Self {
        ServerConfig {
            realm: realm.to_owned(),
            software: format!("uturn/{}", env!("CARGO_PKG_VERSION")),
            relay_ip,
            relay_ip_v6: None,
            external_ip: None,
            max_allocations: usize::from(ports.end() - ports.start()) + 1,
            ports,
            port_exchange: Default::default(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            nonce_secret,
            epoch,
            policy: super::PeerPolicy::default(),
            max_permissions_per_allocation: 32,
            max_channels_per_allocation: 64,
            max_pending_auth: 1024,
            pending_auth_timeout: Duration::from_secs(10),
            max_bps: 0,
            stats_packet_trigger: 4096,
            stats_interval: Duration::ZERO,
            id_base: 0,
            id_stride: 1,
            transport: Transport::Udp,
        }
    }
}

/// Counters of what the core dropped or refused, per shard; read by the shard for logs/tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerCounters {
    pub not_stun: u64,
    pub malformed: u64,
    pub unauthenticated: u64,
    pub stale_nonce: u64,
    pub no_allocation: u64,
    pub no_permission: u64,
    pub no_channel: u64,
    pub peer_refused: u64,
    pub quota_refused: u64,
    pub ports_exhausted: u64,
    pub rate_limited: u64,
    pub pending_auth_dropped: u64,
    /// CreatePermission or ChannelBind refused (508) by the per-allocation permission cap.
    pub permissions_capped: u64,
    /// ChannelBind refused (508) by the per-allocation channel cap.
    pub channels_capped: u64,
    pub relayed_to_peer: u64,
    pub relayed_to_client: u64,
}

/// Reserved ports (EVEN-PORT with R) are held this long for a RESERVATION-TOKEN (RFC 8656
/// §7.2 suggests about 30 seconds).
const RESERVATION_LIFETIME_SECS: u64 = 30;
/// How many ports to try when binding a relay socket fails (port taken by another process).
const BIND_ATTEMPTS: usize = 8;
/// Most unknown attribute types listed in a 420 response.
const MAX_UNKNOWN_LISTED: usize = 16;

#[derive(Copy, Clone, Debug)]
enum Timer {
    /// Check an allocation's lifetime; `at` is the second it was scheduled for.
    Expiry {
        slot: u32,
        gen: u32,
        at: u64,
    },
    /// Prune expired permissions and channels.
    Prune {
        slot: u32,
        gen: u32,
        at: u64,
    },
    /// Periodic traffic report.
    Stats {
        slot: u32,
        gen: u32,
    },
    Reservation {
        token: u64,
    },
    PendingAuth {
        ticket: u64,
    },
}

#[derive(Debug, Default)]
struct Slot {
    gen: u32,
    allocation: Option<Allocation>,
    /// Seconds (since the epoch) of the live Expiry and Prune timer entries.
    expiry_at: u64,
    prune_at: Option<u64>,
}

#[derive(Debug)]
struct Reservation {
    port: u16,
    ip: IpAddr,
    expires_tick: u64,
}

/// A request waiting for an asynchronous authentication answer.
struct Parked {
    data: Vec<u8>,
    client: SocketAddr,
    local: SocketAddr,
}

/// Who a request came from and how to answer it.
#[derive(Copy, Clone)]
struct Request {
    client: SocketAddr,
    local: SocketAddr,
    method: Method,
    tid: TransactionId,
    fingerprint: bool,
}

/// A cheap hasher for the 5-tuple map: keys are only inserted for authenticated
/// allocations, so there is no hash-flooding exposure worth SipHash's cost per packet.
#[derive(Default, Clone, Copy)]
struct TupleHasher(u64);

impl Hasher for TupleHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64)
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64)
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64)
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64)
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type TupleMap = HashMap<(SocketAddr, SocketAddr), u32, BuildHasherDefault<TupleHasher>>;

/// The TURN server state machine of one shard.
pub struct Server {
    config: ServerConfig,
    observer: Arc<dyn Observer>,
    quotas: Arc<Quotas>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    live: usize,
    by_tuple: TupleMap,
    ports: PortPool,
    reservations: HashMap<u64, Reservation>,
    wheel: TimerWheel<Timer>,
    due: Vec<Timer>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: ServerCounters,
    next_seq: u64,
    rng: u64,
    pending: HashMap<u64, Parked>,
    next_ticket: u64,
    ticket_sink: Option<TicketSink>,
}

/// Where asynchronous authentication answers go: the shard's channel plus a wakeup.
pub type TicketSink = Arc<dyn Fn(u64, AuthDecision) + Send + Sync>;

impl Server {
    pub fn new(config: ServerConfig, observer: Arc<dyn Observer>, quotas: Arc<Quotas>) -> Self {
        let seed = u64::from_le_bytes(config.nonce_secret[..8].try_into().unwrap_or([1; 8]))
            ^ config.id_base.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ 0x5eed;
        let ports = PortPool::new(config.ports.clone(), seed);
        Server {
            wheel: TimerWheel::new(0),
            config,
            observer,
            quotas,
            slots: Vec::new(),
            free_slots: Vec::new(),
            live: 0,
            by_tuple: TupleMap::default(),
            ports,
            reservations: HashMap::new(),
            due: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: ServerCounters::default(),
            next_seq: 1,
            rng: seed | 1,
            pending: HashMap::new(),
            next_ticket: 1,
            ticket_sink: None,
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Lets observers answer later: parked requests get tickets that deliver through `sink`.
    /// Without a sink, observers cannot defer (their `defer()` returns `None`).
    pub fn set_ticket_sink(&mut self, sink: TicketSink) {
        self.ticket_sink = Some(sink);
    }

    fn now_sec(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.config.epoch).as_secs()
    }

    /// The timer wheel's tick (since the epoch) `now` falls in.
    fn now_tick(&self, now: Instant) -> u64 {
        let d = now.saturating_duration_since(self.config.epoch);
        d.as_secs() * TICKS_PER_SEC + u64::from(d.subsec_nanos()) / NANOS_PER_TICK
    }

    /// The first tick (since the epoch) at or after `t`: expiry is never early and at most
    /// one tick (100 ms) late.
    fn tick_ceil(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.config.epoch);
        let nanos = u64::from(d.subsec_nanos());
        d.as_secs() * TICKS_PER_SEC + nanos.div_ceil(NANOS_PER_TICK)
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A datagram from `client` received on the listening socket bound at `local`.
    pub fn handle_client(
        &mut self,
        now: Instant,
        client: SocketAddr,
        local: SocketAddr,
        buf: &[u8],
        sockets: &mut dyn RelaySockets,
    ) -> ClientAction {
        if stun::is_channel_data(buf) {
            return self.client_channel_data(now, client, local, buf);
        }
        let msg = match Message::parse(buf) {
            Ok(msg) => msg,
            Err(stun::Error::NotStun) => {
                self.counters.not_stun += 1;
                return ClientAction::None;
            }
            Err(_) => {
                self.counters.malformed += 1;
                return ClientAction::None;
            }
        };
        match msg.class() {
            Class::Request => {
                self.handle_request(now, client, local, &msg, None, sockets);
                ClientAction::None
            }
            Class::Indication if msg.method() == Method::SEND => {
                self.send_indication(now, client, local, &msg)
            }
            _ => {
                // Responses and other indications are not for a server.
                self.counters.malformed += 1;
                ClientAction::None
            }
        }
    }

    fn client_channel_data(
        &mut self,
        now: Instant,
        client: SocketAddr,
        local: SocketAddr,
        buf: &[u8],
    ) -> ClientAction {
        let Ok(cd) = ChannelData::parse(buf) else {
            self.counters.malformed += 1;
            return ClientAction::None;
        };
        let Some(&slot) = self.by_tuple.get(&(client, local)) else {
            self.counters.no_allocation += 1;
            return ClientAction::None;
        };
        let max_bps = self.config.max_bps;
        let Some(alloc) = self.slots[slot as usize].allocation.as_mut() else {
            self.counters.no_allocation += 1;
            return ClientAction::None;
        };
        if alloc.expires <= now {
            self.counters.no_allocation += 1;
            return ClientAction::None;
        }
        let Some(peer) = alloc.channel_by_number(cd.number, now).map(|c| c.peer) else {
            self.counters.no_channel += 1;
            return ClientAction::None;
        };
        if !alloc.has_permission(peer.ip(), now) {
            self.counters.no_permission += 1;
            return ClientAction::None;
        }
        if let Some(bucket) = alloc.bucket_in.as_mut() {
            if !bucket.take(now, max_bps, buf.len()) {
                self.counters.rate_limited += 1;
                return ClientAction::None;
            }
        }
        let len = cd.payload.len();
        alloc.unreported.client.rcvp += 1;
        alloc.unreported.client.rcvb += buf.len() as u64;
        alloc.unreported.peer.sentp += 1;
        alloc.unreported.peer.sentb += len as u64;
        self.counters.relayed_to_peer += 1;
        self.maybe_report(slot);
        ClientAction::ToPeer {
            relay: RelayId(slot),
            peer,
            payload: stun::CHANNEL_DATA_HEADER_LEN..stun::CHANNEL_DATA_HEADER_LEN + len,
        }
    }

    fn send_indication(
        &mut self,
        now: Instant,
        client: SocketAddr,
        local: SocketAddr,
        msg: &Message<'_>,
    ) -> ClientAction {
        let Some(&slot) = self.by_tuple.get(&(client, local)) else {
            self.counters.no_allocation += 1;
            return ClientAction::None;
        };
        let (Ok(Some(peer)), Some(data)) = (msg.xor_address(stun::XOR_PEER_ADDRESS), msg.data())
        else {
            self.counters.malformed += 1;
            return ClientAction::None;
        };
        let max_bps = self.config.max_bps;
        let Some(alloc) = self.slots[slot as usize].allocation.as_mut() else {
            self.counters.no_allocation += 1;
            return ClientAction::None;
        };
        if alloc.expires <= now {
            self.counters.no_allocation += 1;
            return ClientAction::None;
        }
        if !alloc.has_permission(peer.ip(), now) {
            self.counters.no_permission += 1;
            return ClientAction::None;
        }
        let total = msg.as_bytes().len();
        if let Some(bucket) = alloc.bucket_in.as_mut() {
            if !bucket.take(now, max_bps, total) {
                self.counters.rate_limited += 1;
                return ClientAction::None;
            }
        }
        alloc.unreported.client.rcvp += 1;
        alloc.unreported.client.rcvb += total as u64;
        alloc.unreported.peer.sentp += 1;
        alloc.unreported.peer.sentb += data.value.len() as u64;
        self.counters.relayed_to_peer += 1;
        self.maybe_report(slot);
        let start = data.value_offset();
        ClientAction::ToPeer {
            relay: RelayId(slot),
            peer,
            payload: start..start + data.value.len(),
        }
    }

    /// A datagram from `peer` received on relay socket `relay`. The payload is
    /// `buf[payload]`; `payload.start >= PEER_HEADROOM` and
    /// `buf.len() >= payload.end + PEER_TAILROOM` must hold, else the datagram is dropped.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> PeerAction {
        if payload.start < PEER_HEADROOM
            || payload.start > payload.end
            || payload.end.saturating_add(PEER_TAILROOM) > buf.len()
        {
            self.counters.malformed += 1;
            return PeerAction::Drop;
        }
        let max_bps = self.config.max_bps;
        let tid_seed = self.random();
        let Some(alloc) = self
            .slots
            .get_mut(relay.0 as usize)
            .and_then(|s| s.allocation.as_mut())
        else {
            self.counters.no_allocation += 1;
            return PeerAction::Drop;
        };
        if alloc.expires <= now {
            self.counters.no_allocation += 1;
            return PeerAction::Drop;
        }
        if !alloc.has_permission(peer.ip(), now) {
            self.counters.no_permission += 1;
            return PeerAction::Drop;
        }
        let len = payload.len();
        let range = if let Some(channel) = alloc.channel_by_peer(peer, now) {
            let Ok(len16) = u16::try_from(len) else {
                self.counters.malformed += 1;
                return PeerAction::Drop;
            };
            let start = payload.start - stun::CHANNEL_DATA_HEADER_LEN;
            buf[start..payload.start].copy_from_slice(&ChannelData::header(channel.number, len16));
            start..payload.end
        } else {
            // A Data indication's length field counts the padded DATA attribute.
            if len > usize::from(u16::MAX) - PEER_HEADROOM {
                self.counters.malformed += 1;
                return PeerAction::Drop;
            }
            let mut tid = [0u8; 12];
            tid[..8].copy_from_slice(&tid_seed.to_le_bytes());
            tid[8..].copy_from_slice(&(tid_seed >> 17).to_le_bytes()[..4]);
            let mut prefix = [0u8; PEER_HEADROOM];
            let n = stun::data_indication_prefix(&mut prefix, &tid, peer, len);
            let start = payload.start - n;
            buf[start..payload.start].copy_from_slice(&prefix[..n]);
            let pad = (4 - len % 4) % 4;
            buf[payload.end..payload.end + pad].fill(0);
            start..payload.end + pad
        };
        if let Some(bucket) = alloc.bucket_out.as_mut() {
            if !bucket.take(now, max_bps, range.len()) {
                self.counters.rate_limited += 1;
                return PeerAction::Drop;
            }
        }
        alloc.unreported.peer.rcvp += 1;
        alloc.unreported.peer.rcvb += len as u64;
        alloc.unreported.client.sentp += 1;
        alloc.unreported.client.sentb += range.len() as u64;
        let tuple = alloc.info.five_tuple;
        self.counters.relayed_to_client += 1;
        self.maybe_report(relay.0);
        PeerAction::ToClient {
            local: tuple.server,
            client: tuple.client,
            range,
        }
    }

    /// Reports traffic when the client-side packet count reaches the trigger (coturn: 4096).
    fn maybe_report(&mut self, slot: u32) {
        let trigger = self.config.stats_packet_trigger;
        if trigger == 0 {
            return;
        }
        if let Some(alloc) = self.slots[slot as usize].allocation.as_mut() {
            let c = &alloc.unreported.client;
            if c.rcvp + c.sentp >= trigger {
                let delta = alloc.take_unreported();
                self.events.push_back(Event::Traffic {
                    info: alloc.info.clone(),
                    delta,
                });
            }
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        client: SocketAddr,
        local: SocketAddr,
        msg: &Message<'_>,
        preset: Option<AuthDecision>,
        sockets: &mut dyn RelaySockets,
    ) {
        let req = Request {
            client,
            local,
            method: msg.method(),
            tid: *msg.transaction_id(),
            fingerprint: msg.has_fingerprint(),
        };
        let mut unknown = [0u16; MAX_UNKNOWN_LISTED];
        let n = msg.unknown_comprehension_required(&mut unknown);
        if n > 0 {
            self.counters.malformed += 1;
            self.error(&req, 420, None, |b| {
                b.add_unknown_attributes(&unknown[..n]);
            });
            return;
        }
        match req.method {
            Method::BINDING => {
                self.respond(&req, Class::Success, None, |b| {
                    b.add_xor_address(stun::XOR_MAPPED_ADDRESS, client);
                });
                return;
            }
            Method::ALLOCATE
            | Method::REFRESH
            | Method::CREATE_PERMISSION
            | Method::CHANNEL_BIND => {}
            _ => {
                self.counters.malformed += 1;
                self.error(&req, 400, None, |_| {});
                return;
            }
        }
        let existing = self.by_tuple.get(&(client, local)).copied();
        let Some((key, username)) = self.authenticate(now, &req, msg, existing, preset) else {
            return;
        };
        match req.method {
            Method::ALLOCATE => self.allocate(now, &req, msg, existing, key, &username, sockets),
            Method::REFRESH => self.refresh(now, &req, msg, existing, key, sockets),
            Method::CREATE_PERMISSION => self.create_permission(now, &req, msg, existing, key),
            _ => self.channel_bind(now, &req, msg, existing, key),
        }
    }

    /// Long-term credential check (RFC 8489 §9.2.4). Returns the key and username, or sends
    /// the error response and returns `None`. Creates no state unless an observer defers.
    fn authenticate(
        &mut self,
        now: Instant,
        req: &Request,
        msg: &Message<'_>,
        existing: Option<u32>,
        preset: Option<AuthDecision>,
    ) -> Option<(LongTermKey, String)> {
        if !msg.has_integrity() {
            self.counters.unauthenticated += 1;
            self.challenge(now, req, 401);
            return None;
        }
        let (Ok(Some(username)), Ok(Some(realm)), Ok(Some(nonce))) =
            (msg.username(), msg.realm(), msg.nonce())
        else {
            self.counters.malformed += 1;
            self.error(req, 400, None, |_| {});
            return None;
        };
        let now_sec = self.now_sec(now);
        let lifetime = self.config.nonce_lifetime.as_secs();
        if nonce::check(
            &self.config.nonce_secret,
            nonce,
            now_sec,
            lifetime,
            req.client.ip(),
        )
        .is_err()
        {
            self.counters.stale_nonce += 1;
            self.challenge(now, req, 438);
            return None;
        }
        if realm != self.config.realm {
            self.counters.unauthenticated += 1;
            self.challenge(now, req, 401);
            return None;
        }
        if let Some(slot) = existing {
            if let Some(alloc) = self.slots[slot as usize].allocation.as_ref() {
                if alloc.info.username != username {
                    self.counters.unauthenticated += 1;
                    self.error(req, 441, None, |_| {});
                    return None;
                }
                if !msg.verify_integrity(&alloc.key) {
                    self.counters.unauthenticated += 1;
                    self.challenge(now, req, 401);
                    return None;
                }
                return Some((alloc.key, username.to_owned()));
            }
        }
        let decision = match preset {
            Some(decision) => decision,
            None => {
                let ticket = match &self.ticket_sink {
                    Some(sink) if self.pending.len() < self.config.max_pending_auth => {
                        Some(Ticket::new(self.next_ticket, sink.clone()))
                    }
                    _ => None,
                };
                let offered = ticket.is_some();
                let mut request = AuthRequest {
                    username,
                    realm,
                    method: req.method,
                    client: req.client,
                    server: req.local,
                    transport: self.config.transport,
                    ticket,
                };
                let decision = self.observer.authenticate(&mut request);
                if decision == AuthDecision::Pending {
                    if offered && request.ticket.is_none() {
                        // The observer holds the ticket: park until it answers.
                        let ticket = self.next_ticket;
                        self.next_ticket += 1;
                        self.pending.insert(
                            ticket,
                            Parked {
                                data: msg.as_bytes().to_vec(),
                                client: req.client,
                                local: req.local,
                            },
                        );
                        let deadline = self.tick_ceil(now + self.config.pending_auth_timeout);
                        self.wheel.schedule(deadline, Timer::PendingAuth { ticket });
                    } else {
                        // Deferred without a ticket (full, or no async support): cannot wait.
                        self.counters.pending_auth_dropped += 1;
                        self.error(req, 508, None, |_| {});
                    }
                    return None;
                }
                decision
            }
        };
        match decision {
            AuthDecision::Authorized(key) if msg.verify_integrity(&key) => {
                Some((key, username.to_owned()))
            }
            AuthDecision::QuotaReached => {
                self.counters.quota_refused += 1;
                self.error(req, 486, None, |_| {});
                None
            }
            _ => {
                self.counters.unauthenticated += 1;
                self.challenge(now, req, 401);
                None
            }
        }
    }

    /// An asynchronous authentication answer (see `auth::Ticket`) for a parked request.
    pub fn handle_auth_result(
        &mut self,
        now: Instant,
        ticket: u64,
        decision: AuthDecision,
        sockets: &mut dyn RelaySockets,
    ) {
        let Some(parked) = self.pending.remove(&ticket) else {
            return; // timed out meanwhile
        };
        let decision = match decision {
            AuthDecision::Pending => AuthDecision::NotAuthorized,
            other => other,
        };
        if let Ok(msg) = Message::parse(&parked.data) {
            self.handle_request(
                now,
                parked.client,
                parked.local,
                &msg,
                Some(decision),
                sockets,
            );
        }
    }

    fn lifetime_for(&self, requested: Option<u32>) -> u32 {
        let default = self.config.default_lifetime.as_secs() as u32;
        let max = self.config.max_lifetime.as_secs() as u32;
        match requested {
            Some(r) => r.min(max).max(default.min(max)),
            None => default.min(max),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        now: Instant,
        req: &Request,
        msg: &Message<'_>,
        existing: Option<u32>,
        key: LongTermKey,
        username: &str,
        sockets: &mut dyn RelaySockets,
    ) {
        if let Some(slot) = existing {
            let same = self.slots[slot as usize]
                .allocation
                .as_ref()
                .is_some_and(|a| a.allocate_tid == req.tid);
            if same {
                // A retransmission of the Allocate that succeeded: answer it again.
                self.allocate_success(req, slot, now);
            } else {
                self.error(req, 437, Some(&key), |_| {});
            }
            return;
        }
        match msg.requested_transport() {
            Ok(Some(stun::TRANSPORT_UDP)) => {}
            Ok(Some(_)) => return self.error(req, 442, Some(&key), |_| {}),
            _ => return self.error(req, 400, Some(&key), |_| {}),
        }
        let (Ok(token), Ok(even), Ok(family), Ok(requested)) = (
            msg.reservation_token(),
            msg.even_port(),
            msg.requested_address_family(),
            msg.lifetime(),
        ) else {
            return self.error(req, 400, Some(&key), |_| {});
        };
        if token.is_some() && (even.is_some() || family.is_some()) {
            return self.error(req, 400, Some(&key), |_| {});
        }
        let relay_ip = match family {
            None | Some(stun::FAMILY_IPV4) => Some(self.config.relay_ip).filter(|ip| ip.is_ipv4()),
            Some(stun::FAMILY_IPV6) => self
                .config
                .relay_ip_v6
                .or(Some(self.config.relay_ip))
                .filter(|ip| ip.is_ipv6()),
            Some(_) => None,
        };
        let reservation = match token {
            Some(t) => match self.config.port_exchange.redeem(t) {
                Some((ip, port)) => {
                    self.reservations.remove(&t);
                    Some(Reservation {
                        port,
                        ip,
                        expires_tick: 0,
                    })
                }
                None => return self.error(req, 508, Some(&key), |_| {}),
            },
            None => None,
        };
        let relay_ip = match (&reservation, relay_ip) {
            (Some(r), _) => r.ip,
            (None, Some(ip)) => ip,
            (None, None) => return self.error(req, 440, Some(&key), |_| {}),
        };
        if self.live >= self.config.max_allocations {
            self.counters.ports_exhausted += 1;
            if let Some(r) = reservation {
                self.release_port(r.port);
            }
            return self.error(req, 508, Some(&key), |_| {});
        }
        if !self.quotas.try_acquire(username) {
            self.counters.quota_refused += 1;
            if let Some(r) = reservation {
                self.release_port(r.port);
            }
            return self.error(req, 486, Some(&key), |_| {});
        }
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let reserve_next = even == Some(true);
        self.config.port_exchange.reclaim(&mut self.ports);
        let mut bound = None;
        // Ports busy outside uturn go back to the pool only after this loop, so each
        // attempt tries a different one.
        let mut busy = [0u16; BIND_ATTEMPTS];
        let mut n_busy = 0;
        for attempt in 0..BIND_ATTEMPTS {
            let port = match (&reservation, even) {
                (Some(r), _) if attempt == 0 => Some(r.port),
                (Some(_), _) => None,
                (None, Some(r)) => self.ports.take_even(r),
                (None, None) => self.ports.take(),
            };
            let Some(port) = port else { break };
            let addr = SocketAddr::new(relay_ip, port);
            match sockets.open(RelayId(slot), addr) {
                Ok(()) => {
                    bound = Some(addr);
                    break;
                }
                Err(_) => {
                    // Busy outside uturn: back of the queue afterwards, try another.
                    busy[n_busy] = port;
                    n_busy += 1;
                    if reserve_next {
                        self.release_port(port + 1);
                    }
                }
            }
        }
        for &port in &busy[..n_busy] {
            self.release_port(port);
        }
        let Some(relay) = bound else {
            self.counters.ports_exhausted += 1;
            self.free_slots.push(slot);
            self.quotas.release(username);
            return self.error(req, 508, Some(&key), |_| {});
        };
        let mut new_token = None;
        if reserve_next && reservation.is_none() {
            let t = self.random();
            let expires_tick = self.now_tick(now) + RESERVATION_LIFETIME_SECS * TICKS_PER_SEC;
            self.reservations.insert(
                t,
                Reservation {
                    port: relay.port() + 1,
                    ip: relay_ip,
                    expires_tick,
                },
            );
            self.config
                .port_exchange
                .reserve(t, relay_ip, relay.port() + 1);
            self.wheel
                .schedule(expires_tick, Timer::Reservation { token: t });
            new_token = Some(t);
        }
        let lifetime = self.lifetime_for(requested);
        let id = self.config.id_base + self.next_seq * self.config.id_stride.max(1);
        self.next_seq += 1;
        let info = Arc::new(AllocationInfo {
            id,
            username: username.to_owned(),
            realm: self.config.realm.clone(),
            five_tuple: FiveTuple {
                client: req.client,
                server: req.local,
                transport: self.config.transport,
            },
            relay,
        });
        let expires = now + Duration::from_secs(lifetime.into());
        let max_bps = self.config.max_bps;
        let s = &mut self.slots[slot as usize];
        s.allocation = Some(Allocation {
            info: info.clone(),
            key,
            expires,
            allocate_tid: req.tid,
            lifetime,
            reservation_token: new_token,
            permissions: Vec::new(),
            channels: Vec::new(),
            unreported: Traffic::default(),
            reported: Traffic::default(),
            bucket_in: (max_bps > 0).then(|| TokenBucket::new(now, max_bps)),
            bucket_out: (max_bps > 0).then(|| TokenBucket::new(now, max_bps)),
        });
        s.prune_at = None;
        let gen = s.gen;
        let at = self.tick_ceil(expires);
        self.slots[slot as usize].expiry_at = at;
        self.wheel.schedule(at, Timer::Expiry { slot, gen, at });
        if !self.config.stats_interval.is_zero() {
            let next =
                self.now_tick(now) + self.config.stats_interval.as_secs().max(1) * TICKS_PER_SEC;
            self.wheel.schedule(next, Timer::Stats { slot, gen });
        }
        self.by_tuple.insert((req.client, req.local), slot);
        self.live += 1;
        self.events
            .push_back(Event::AllocationCreated { info, lifetime });
        self.allocate_success(req, slot, now);
    }

    fn allocate_success(&mut self, req: &Request, slot: u32, now: Instant) {
        let Some(alloc) = self.slots[slot as usize].allocation.as_ref() else {
            return;
        };
        let relay = match self.config.external_ip {
            Some(ip) if ip.is_ipv4() == alloc.info.relay.is_ipv4() => {
                SocketAddr::new(ip, alloc.info.relay.port())
            }
            _ => alloc.info.relay,
        };
        let remaining = alloc.expires.saturating_duration_since(now).as_secs() as u32;
        let token = alloc.reservation_token;
        let key = alloc.key;
        let client = req.client;
        self.respond(req, Class::Success, Some(&key), |b| {
            b.add_xor_address(stun::XOR_RELAYED_ADDRESS, relay);
            b.add_u32(stun::LIFETIME, remaining);
            if let Some(t) = token {
                b.add_reservation_token(t);
            }
            b.add_xor_address(stun::XOR_MAPPED_ADDRESS, client);
        });
    }

    fn refresh(
        &mut self,
        now: Instant,
        req: &Request,
        msg: &Message<'_>,
        existing: Option<u32>,
        key: LongTermKey,
        sockets: &mut dyn RelaySockets,
    ) {
        let Some(slot) = existing else {
            return self.error(req, 437, Some(&key), |_| {});
        };
        let (Ok(requested), Ok(family)) = (msg.lifetime(), msg.requested_address_family()) else {
            return self.error(req, 400, Some(&key), |_| {});
        };
        let Some(alloc) = self.slots[slot as usize].allocation.as_mut() else {
            return self.error(req, 437, Some(&key), |_| {});
        };
        let relay_family = if alloc.info.relay.is_ipv4() {
            stun::FAMILY_IPV4
        } else {
            stun::FAMILY_IPV6
        };
        if family.is_some_and(|f| f != relay_family) {
            return self.error(req, 443, Some(&key), |_| {});
        }
        let info = alloc.info.clone();
        if requested == Some(0) {
            self.respond(req, Class::Success, Some(&key), |b| {
                b.add_u32(stun::LIFETIME, 0);
            });
            self.events
                .push_back(Event::AllocationRefreshed { info, lifetime: 0 });
            self.delete(slot, DeleteReason::Deleted, sockets);
            return;
        }
        let lifetime = self.lifetime_for(requested);
        let expires = now + Duration::from_secs(lifetime.into());
        let at = self.tick_ceil(expires);
        if let Some(alloc) = self.slots[slot as usize].allocation.as_mut() {
            alloc.expires = expires;
            alloc.lifetime = lifetime;
        }
        let s = &mut self.slots[slot as usize];
        if at < s.expiry_at {
            // Shortened: the pending timer entry would fire too late.
            s.expiry_at = at;
            let gen = s.gen;
            self.wheel.schedule(at, Timer::Expiry { slot, gen, at });
        }
        self.respond(req, Class::Success, Some(&key), |b| {
            b.add_u32(stun::LIFETIME, lifetime);
        });
        self.events
            .push_back(Event::AllocationRefreshed { info, lifetime });
    }

    /// Checks a peer address against the allocation's family and the peer policy, sending
    /// 443/403 when it fails.
    fn check_peer(
        &mut self,
        req: &Request,
        key: &LongTermKey,
        relay: SocketAddr,
        peer: SocketAddr,
    ) -> bool {
        if peer.is_ipv4() != relay.is_ipv4() {
            self.error(req, 443, Some(key), |_| {});
            return false;
        }
        if !self.config.policy.is_allowed(peer.ip()) {
            self.counters.peer_refused += 1;
            self.error(req, 403, Some(key), |_| {});
            return false;
        }
        true
    }

    fn schedule_prune(&mut self, slot: u32, expires: Instant) {
        let at = self.tick_ceil(expires);
        let s = &mut self.slots[slot as usize];
        if s.prune_at.is_none_or(|p| at < p) {
            s.prune_at = Some(at);
            let gen = s.gen;
            self.wheel.schedule(at, Timer::Prune { slot, gen, at });
        }
    }

    fn create_permission(
        &mut self,
        now: Instant,
        req: &Request,
        msg: &Message<'_>,
        existing: Option<u32>,
        key: LongTermKey,
    ) {
        let Some(slot) = existing else {
            return self.error(req, 437, Some(&key), |_| {});
        };
        let Some(relay) = self.slots[slot as usize]
            .allocation
            .as_ref()
            .map(|a| a.info.relay)
        else {
            return self.error(req, 437, Some(&key), |_| {});
        };
        let max = self.config.max_permissions_per_allocation;
        let mut ips = Vec::new();
        for peer in msg.xor_peer_addresses() {
            let Ok(peer) = peer else {
                return self.error(req, 400, Some(&key), |_| {});
            };
            if !self.check_peer(req, &key, relay, peer) {
                return;
            }
            if !ips.contains(&peer.ip()) {
                if ips.len() >= max {
                    self.counters.permissions_capped += 1;
                    return self.error(req, 508, Some(&key), |_| {});
                }
                ips.push(peer.ip());
            }
        }
        if ips.is_empty() {
            return self.error(req, 400, Some(&key), |_| {});
        }
        let expires = now + self.config.permission_lifetime;
        let Some(alloc) = self.slots[slot as usize].allocation.as_mut() else {
            return;
        };
        if !alloc.can_install_permissions(&ips, max, now) {
            self.counters.permissions_capped += 1;
            return self.error(req, 508, Some(&key), |_| {});
        }
        for ip in &ips {
            alloc.install_permission(*ip, expires, max, now);
        }
        self.schedule_prune(slot, expires);
        self.respond(req, Class::Success, Some(&key), |_| {});
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        req: &Request,
        msg: &Message<'_>,
        existing: Option<u32>,
        key: LongTermKey,
    ) {
        let Some(slot) = existing else {
            return self.error(req, 437, Some(&key), |_| {});
        };
        let (Ok(Some(number)), Ok(Some(peer))) = (
            msg.channel_number(),
            msg.xor_address(stun::XOR_PEER_ADDRESS),
        ) else {
            return self.error(req, 400, Some(&key), |_| {});
        };
        if !(stun::MIN_CHANNEL..=stun::MAX_CHANNEL).contains(&number) {
            return self.error(req, 400, Some(&key), |_| {});
        }
        let Some(relay) = self.slots[slot as usize]
            .allocation
            .as_ref()
            .map(|a| a.info.relay)
        else {
            return self.error(req, 437, Some(&key), |_| {});
        };
        if !self.check_peer(req, &key, relay, peer) {
            return;
        }
        let max_channels = self.config.max_channels_per_allocation;
        let max_perms = self.config.max_permissions_per_allocation;
        let channel_expires = now + self.config.channel_lifetime;
        let perm_expires = now + self.config.permission_lifetime;
        let Some(alloc) = self.slots[slot as usize].allocation.as_mut() else {
            return;
        };
        // RFC 8656 §12.2: a number bound to another peer, or a peer bound to another
        // number, is a 400.
        let conflict = alloc
            .channels
            .iter()
            .any(|c| (c.number == number) != (c.peer == peer));
        if conflict {
            return self.error(req, 400, Some(&key), |_| {});
        }
        let exists = alloc.channels.iter().any(|c| c.number == number);
        if !exists && alloc.channels.len() >= max_channels {
            self.counters.channels_capped += 1;
            return self.error(req, 508, Some(&key), |_| {});
        }
        if !alloc.can_install_permissions(&[peer.ip()], max_perms, now) {
            self.counters.permissions_capped += 1;
            return self.error(req, 508, Some(&key), |_| {});
        }
        alloc.install_permission(peer.ip(), perm_expires, max_perms, now);
        match alloc.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = channel_expires,
            None => alloc.channels.push(ChannelBinding {
                number,
                peer,
                expires: channel_expires,
            }),
        }
        self.schedule_prune(slot, perm_expires.min(channel_expires));
        self.respond(req, Class::Success, Some(&key), |_| {});
    }

    fn delete(&mut self, slot: u32, reason: DeleteReason, sockets: &mut dyn RelaySockets) {
        let s = &mut self.slots[slot as usize];
        let Some(mut alloc) = s.allocation.take() else {
            return;
        };
        s.gen = s.gen.wrapping_add(1);
        s.prune_at = None;
        self.free_slots.push(slot);
        self.live -= 1;
        let tuple = alloc.info.five_tuple;
        self.by_tuple.remove(&(tuple.client, tuple.server));
        sockets.close(RelayId(slot));
        self.release_port(alloc.info.relay.port());
        self.quotas.release(&alloc.info.username);
        let last = alloc.take_unreported();
        self.events.push_back(Event::AllocationDeleted {
            info: alloc.info,
            reason,
            last,
            totals: alloc.reported,
        });
    }

    /// Expire what is due at `now` and emit periodic traffic reports.
    pub fn handle_timeout(&mut self, now: Instant, sockets: &mut dyn RelaySockets) {
        let now_tick = self.now_tick(now);
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now_tick, &mut due);
        for timer in due.drain(..) {
            self.fire(timer, now, now_tick, sockets);
        }
        self.due = due;
    }

    fn live_slot(&self, slot: u32, gen: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|s| s.gen == gen && s.allocation.is_some())
    }

    fn fire(&mut self, timer: Timer, now: Instant, now_tick: u64, sockets: &mut dyn RelaySockets) {
        match timer {
            Timer::Expiry { slot, gen, at } => {
                if !self.live_slot(slot, gen) || self.slots[slot as usize].expiry_at != at {
                    return;
                }
                let expires = self.slots[slot as usize]
                    .allocation
                    .as_ref()
                    .map(|a| a.expires);
                match expires {
                    Some(e) if e <= now => self.delete(slot, DeleteReason::Expired, sockets),
                    Some(e) => {
                        let at = self.tick_ceil(e).max(now_tick + 1);
                        self.slots[slot as usize].expiry_at = at;
                        self.wheel.schedule(at, Timer::Expiry { slot, gen, at });
                    }
                    None => {}
                }
            }
            Timer::Prune { slot, gen, at } => {
                if !self.live_slot(slot, gen) || self.slots[slot as usize].prune_at != Some(at) {
                    return;
                }
                self.slots[slot as usize].prune_at = None;
                let next = self.slots[slot as usize]
                    .allocation
                    .as_mut()
                    .and_then(|a| a.prune(now));
                if let Some(next) = next {
                    self.schedule_prune(slot, next);
                }
            }
            Timer::Stats { slot, gen } => {
                if !self.live_slot(slot, gen) {
                    return;
                }
                if let Some(alloc) = self.slots[slot as usize].allocation.as_mut() {
                    if !alloc.unreported.is_zero() {
                        let delta = alloc.take_unreported();
                        self.events.push_back(Event::Traffic {
                            info: alloc.info.clone(),
                            delta,
                        });
                    }
                }
                let next = now_tick + self.config.stats_interval.as_secs().max(1) * TICKS_PER_SEC;
                self.wheel.schedule(next, Timer::Stats { slot, gen });
            }
            Timer::Reservation { token } => {
                if let Some(r) = self.reservations.get(&token) {
                    if r.expires_tick <= now_tick {
                        self.reservations.remove(&token);
                        // Unless another shard redeemed it meanwhile.
                        if let Some((_, port)) = self.config.port_exchange.redeem(token) {
                            self.release_port(port);
                        }
                    }
                }
            }
            Timer::PendingAuth { ticket } => {
                if self.pending.remove(&ticket).is_some() {
                    self.counters.pending_auth_dropped += 1;
                }
            }
        }
    }

    /// Returns a relay port to this shard's pool, or to its owner shard through the
    /// exchange (a port from a reservation redeemed here).
    fn release_port(&mut self, port: u16) {
        if self.ports.range().contains(&port) {
            self.ports.release(port);
        } else {
            self.config.port_exchange.give_back(port);
        }
    }

    /// When `handle_timeout` should next be called: the next whole second while anything is
    /// scheduled (expiry is exact to the second), `None` when idle.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.wheel.is_empty() {
            None
        } else {
            Some(
                self.config.epoch
                    + Duration::from_nanos((self.wheel.current() + 1) * NANOS_PER_TICK),
            )
        }
    }

    /// Next queued datagram to send (responses, error responses).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for stats and the observer.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Delete every allocation (server stopping): events and socket closes as for expiry.
    pub fn shutdown(&mut self, _now: Instant, sockets: &mut dyn RelaySockets) {
        for slot in 0..self.slots.len() as u32 {
            self.delete(slot, DeleteReason::Shutdown, sockets);
        }
        for (token, _) in std::mem::take(&mut self.reservations) {
            if let Some((_, port)) = self.config.port_exchange.redeem(token) {
                self.release_port(port);
            }
        }
        self.pending.clear();
    }

    pub fn allocation_count(&self) -> usize {
        self.live
    }

    pub fn pending_auth_count(&self) -> usize {
        self.pending.len()
    }

    /// Timer entries held (allocations, prunes, stats, reservations, pending answers).
    pub fn timer_count(&self) -> usize {
        self.wheel.len()
    }

    /// Allocation slots ever created (live or free for reuse): the table's high-water mark.
    pub fn slot_capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }

    /// Info of a live allocation by its relay id (for the shard's logs and tests).
    pub fn allocation_info(&self, relay: RelayId) -> Option<&Arc<AllocationInfo>> {
        self.slots
            .get(relay.0 as usize)
            .and_then(|s| s.allocation.as_ref())
            .map(|a| &a.info)
    }

    /// Answers with 401/438 carrying REALM and a fresh NONCE (no MESSAGE-INTEGRITY).
    fn challenge(&mut self, now: Instant, req: &Request, code: u16) {
        let nonce = nonce::issue(
            &self.config.nonce_secret,
            self.now_sec(now),
            req.client.ip(),
        );
        let realm = self.config.realm.clone();
        self.error(req, code, None, |b| {
            b.add_str(stun::REALM, &realm);
            b.add_str(stun::NONCE, &nonce);
        });
    }

    #[track_caller]
    fn error(
        &mut self,
        req: &Request,
        code: u16,
        key: Option<&LongTermKey>,
        extra: impl FnOnce(&mut MessageBuilder<'_>),
    ) {
        tracing::debug!(client = %req.client, method = ?req.method, code, at = %std::panic::Location::caller(), "error response");
        self.respond(req, Class::Error, key, |b| {
            b.add_error_code(code, stun::reason_phrase(code));
            extra(b);
        });
    }

    fn respond(
        &mut self,
        req: &Request,
        class: Class,
        key: Option<&LongTermKey>,
        build: impl FnOnce(&mut MessageBuilder<'_>),
    ) {
        let mut data = Vec::with_capacity(128);
        {
            let mut b = MessageBuilder::new(&mut data, class, req.method, &req.tid);
            build(&mut b);
            if !self.config.software.is_empty() {
                b.add_str(stun::SOFTWARE, &self.config.software);
            }
            if let Some(key) = key {
                b.add_message_integrity(key);
            }
            if req.fingerprint {
                b.add_fingerprint();
            }
        }
        self.transmits.push_back(Transmit {
            local: req.local,
            remote: req.client,
            data,
        });
    }
}
