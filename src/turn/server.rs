//! The per-shard TURN state machine (RFC 8656 §7–§12).
//!
//! Fast paths return their decision directly ([`ClientAction`], [`PeerAction`]) so the shard
//! can send from the receive buffer without copying; everything else (STUN responses) is
//! queued and taken with [`Server::poll_transmit`], events with [`Server::poll_event`].

use super::{AllocationInfo, Event, Transport};
use crate::auth::{AuthDecision, Observer, Quotas};
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub relayed_to_peer: u64,
    pub relayed_to_client: u64,
}

/// The TURN server state machine of one shard.
pub struct Server {
    config: ServerConfig,
    observer: Arc<dyn Observer>,
    quotas: Arc<Quotas>,
}

impl Server {
    pub fn new(config: ServerConfig, observer: Arc<dyn Observer>, quotas: Arc<Quotas>) -> Self {
        Server {
            config,
            observer,
            quotas,
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
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
        let _ = (now, client, local, buf, sockets, &self.observer, &self.quotas);
        todo!()
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
        let _ = (now, relay, peer, buf, payload);
        todo!()
    }

    /// An asynchronous authentication answer (see `auth::Ticket`) for a parked request.
    pub fn handle_auth_result(
        &mut self,
        now: Instant,
        ticket: u64,
        decision: AuthDecision,
        sockets: &mut dyn RelaySockets,
    ) {
        let _ = (now, ticket, decision, sockets);
        todo!()
    }

    /// Expire what is due at `now` and emit periodic traffic reports.
    pub fn handle_timeout(&mut self, now: Instant, sockets: &mut dyn RelaySockets) {
        let _ = (now, sockets);
        todo!()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }

    /// Next queued datagram to send (responses, error responses).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        todo!()
    }

    /// Next event for stats and the observer.
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }

    /// Delete every allocation (server stopping): events and socket closes as for expiry.
    pub fn shutdown(&mut self, now: Instant, sockets: &mut dyn RelaySockets) {
        let _ = (now, sockets);
        todo!()
    }

    pub fn allocation_count(&self) -> usize {
        todo!()
    }

    pub fn counters(&self) -> &ServerCounters {
        todo!()
    }

    /// Info of a live allocation by its relay id (for the shard's logs and tests).
    pub fn allocation_info(&self, relay: RelayId) -> Option<&Arc<AllocationInfo>> {
        let _ = relay;
        todo!()
    }
}
