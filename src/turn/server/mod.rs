//! The per-shard TURN state machine (RFC 8656 §7–§12): one [`Server`] per shard.
//!
//! Fast paths return their decision directly ([`ClientAction`], [`PeerAction`]) so the shard
//! can send from the receive buffer without copying; everything else (STUN responses) is
//! queued and taken with [`Server::poll_transmit`], events with [`Server::poll_event`].
//!
//! This file holds the [`Server`] type and its public methods; each job lives in a file of
//! its own: `request` (parse, dispatch, respond), `authenticate` (long-term credentials and
//! parked requests), `allocate` (create and delete allocations, relay ports), `requests`
//! (Refresh, CreatePermission, ChannelBind), `forward` (the one forwarding check),
//! `expiry` (timers), `table` (the allocation table).

mod allocate;
mod authenticate;
mod config;
mod expiry;
mod forward;
mod live;
mod offload;
mod request;
mod requests;
mod table;

pub use config::ServerConfig;
pub use offload::OffloadCommand;

use super::nonce;
use super::observer::{AuthDecision, Observer};
use super::ports::Slice;
use super::quotas::Quotas;
use super::refusal::ServerCounters;
use super::timers::TimerWheel;
use super::{AllocationInfo, Event, FiveTuple, Transport};
use crate::stun::{self, Class, Message, Method};
use expiry::Timer;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;
use table::{Parked, Reservation, Slot, TupleMap};

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

/// A message to send from the listening socket bound at `local` to `remote`, over
/// `transport` (for TCP and TLS: on the connection of that 5-tuple).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub transport: Transport,
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
    /// Send `buf[range]` from the listening socket bound at `local` to `client` over
    /// `transport`; the core wrote the ChannelData or Data indication header into the
    /// headroom before the payload, and zeroed padding after it where the framing needs it
    /// (a Data indication; ChannelData over TCP or TLS).
    ToClient {
        local: SocketAddr,
        client: SocketAddr,
        transport: Transport,
        range: Range<usize>,
    },
}

/// Headroom the shard must leave before a peer payload: a Data indication's header with an
/// IPv6 XOR-PEER-ADDRESS (20 + 24 + 4).
pub const PEER_HEADROOM: usize = 48;
/// Room the shard must leave after a peer payload: padding to 4 (Data indications, and
/// ChannelData over TCP or TLS).
pub const PEER_TAILROOM: usize = 3;

/// Where asynchronous authentication answers go: the shard's channel plus a wakeup.
pub type TicketSink = Arc<dyn Fn(u64, AuthDecision) + Send + Sync>;

/// The TURN server state machine of one shard.
pub struct Server {
    config: ServerConfig,
    observer: Arc<dyn Observer>,
    quotas: Arc<Quotas>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    live: usize,
    by_tuple: TupleMap,
    /// This shard's slice of the relay ports in the shared exchange.
    ports: Slice,
    reservations: HashMap<u64, Reservation>,
    wheel: TimerWheel<Timer>,
    due: Vec<Timer>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: ServerCounters,
    next_seq: u64,
    rng: u64,
    pending: HashMap<u64, Parked>,
    /// TLS sessions of the stream connections that have one, for allocation info.
    tls_sessions: HashMap<FiveTuple, super::TlsSession>,
    next_ticket: u64,
    ticket_sink: Option<TicketSink>,
    /// Refuse new allocations (Refresh, CreatePermission and ChannelBind keep working).
    draining: bool,
    /// Commands for the kernel fast path, and deleted allocations awaiting its last counts.
    offload_commands: VecDeque<OffloadCommand>,
    closing: HashMap<u64, offload::Closing>,
}

impl Server {
    pub fn new(config: ServerConfig, observer: Arc<dyn Observer>, quotas: Arc<Quotas>) -> Self {
        let seed = u64::from_le_bytes(config.nonce_secret[..8].try_into().unwrap_or([1; 8]))
            ^ config.id_base.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ 0x5eed;
        let ports = config.port_exchange.register(config.ports.clone(), seed);
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
            tls_sessions: HashMap::new(),
            next_ticket: 1,
            ticket_sink: None,
            draining: false,
            offload_commands: VecDeque::new(),
            closing: HashMap::new(),
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

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A datagram (or, over TCP/TLS, one framed message) from `tuple.client` received on
    /// the listening socket bound at `tuple.server`. Allocations are keyed by the whole
    /// 5-tuple, so UDP and TCP clients with equal addresses never mix.
    pub fn handle_client(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        buf: &[u8],
        sockets: &mut dyn RelaySockets,
    ) -> ClientAction {
        if stun::is_channel_data(buf) {
            return self.client_channel_data(now, tuple, buf);
        }
        let msg = match Message::parse(buf) {
            Ok(msg) => msg,
            Err(stun::Error::NotStun) => return self.drop_client(super::Dropped::NotStun),
            Err(_) => return self.drop_client(super::Dropped::Malformed),
        };
        match msg.class() {
            Class::Request => {
                self.handle_request(now, tuple, &msg, None, sockets);
                ClientAction::None
            }
            Class::Indication if msg.method() == Method::SEND => {
                self.send_indication(now, tuple, &msg)
            }
            // Responses and other indications are not for a server.
            _ => self.drop_client(super::Dropped::Malformed),
        }
    }

    fn drop_client(&mut self, cause: super::Dropped) -> ClientAction {
        self.counters.count_drop(cause);
        ClientAction::None
    }

    /// An asynchronous authentication answer (see [`crate::auth::Ticket`]) for a parked
    /// request.
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
            self.handle_request(now, parked.tuple, &msg, Some(decision), sockets);
        }
    }

    /// The client's TCP or TLS connection of `tuple` closed: its allocation is deleted
    /// (events and socket close as for any delete) and its parked requests forgotten.
    pub fn connection_closed(
        &mut self,
        _now: Instant,
        tuple: FiveTuple,
        sockets: &mut dyn RelaySockets,
    ) {
        self.pending.retain(|_, parked| parked.tuple != tuple);
        self.tls_sessions.remove(&tuple);
        if let Some(slot) = self.by_tuple.get(&tuple).copied() {
            self.delete(slot, super::DeleteReason::ConnectionClosed, sockets);
        }
    }

    /// The TLS connection of `tuple` finished its handshake: allocations made on it carry
    /// `session` (Redis shows it as coturn does). Forgotten at `connection_closed`.
    pub fn set_tls_session(&mut self, tuple: FiveTuple, session: super::TlsSession) {
        self.tls_sessions.insert(tuple, session);
    }

    /// While on, Allocate is refused: 300 Try Alternate with an ALTERNATE-SERVER of the
    /// client's family when `alternate_servers` has one, else 403. Requests on existing
    /// allocations keep working, so they can end in their own time.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
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
            self.delete(slot, super::DeleteReason::Shutdown, sockets);
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
}
