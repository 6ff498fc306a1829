//! The TURN core (RFC 8656, RFC 5766), sans-IO: one [`Server`] per shard.
//!
//! Owns: allocations, permissions, channel bindings, lifetimes and their expiry, nonces,
//! long-term authentication and the interface observers implement ([`observer`]), the
//! allocation quota ledger ([`quotas`]), peer address policy, relay port choice within the
//! shard's range, and every refusal and drop with its counter ([`refusal`]). Input:
//! datagrams with their addresses and the current time. Output: datagrams to send and
//! [`Event`]s for stats and the observer.
//! Must not: read the clock, touch sockets or spawn threads. Relay sockets are opened and
//! closed through the [`RelaySockets`] trait the caller provides.

pub mod allocation;
pub mod nonce;
pub mod observer;
pub mod policy;
pub mod ports;
pub mod quotas;
pub mod refusal;
pub mod server;
pub mod timers;

pub use observer::{AuthDecision, AuthRequest, Observer, Ticket};
pub use policy::{IpRange, PeerPolicy};
pub use quotas::{QuotaExceeded, Quotas};
pub use refusal::{Dropped, Refusal, ServerCounters};
pub use server::{
    ClientAction, OffloadCommand, PeerAction, RelayId, RelaySockets, Server, ServerConfig,
    TicketSink, Transmit, PEER_HEADROOM, PEER_TAILROOM,
};

use std::net::SocketAddr;
use std::sync::Arc;

/// Transport between client and server.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Dtls,
}

impl Transport {
    /// TCP and TLS carry a byte stream: messages are framed, ChannelData padded to 4.
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// The transport's name (`type=UDP` in Redis status messages and metrics; coturn's
    /// Redis status spells a TLS client `TLS/TCP`, see `stats::status_text`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Dtls => "DTLS",
        }
    }
}

/// The client-side 5-tuple that identifies an allocation (RFC 8656 §2).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

impl FiveTuple {
    /// A UDP client's 5-tuple.
    pub fn udp(client: SocketAddr, server: SocketAddr) -> Self {
        FiveTuple {
            client,
            server,
            transport: Transport::Udp,
        }
    }
}

/// Packet and byte counters in one direction pair, named as in coturn's Redis messages:
/// `rcv*` received by the server, `sent*` sent by the server.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rcvp: u64,
    pub rcvb: u64,
    pub sentp: u64,
    pub sentb: u64,
}

impl Counters {
    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }

    pub fn add(&mut self, other: &Counters) {
        self.rcvp += other.rcvp;
        self.rcvb += other.rcvb;
        self.sentp += other.sentp;
        self.sentb += other.sentb;
    }
}

/// Traffic of one allocation: toward/from the client and toward/from peers.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub client: Counters,
    pub peer: Counters,
}

impl Traffic {
    pub fn is_zero(&self) -> bool {
        self.client.is_zero() && self.peer.is_zero()
    }

    pub fn add(&mut self, other: &Traffic) {
        self.client.add(&other.client);
        self.peer.add(&other.peer);
    }
}

/// The TLS session of a client's connection, named as coturn writes it in Redis
/// (`ssl=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384`: OpenSSL's names).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TlsSession {
    pub protocol: &'static str,
    pub cipher: &'static str,
}

/// What stays the same for an allocation's whole life; shared with stats and the observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationInfo {
    /// Unique per server run; printed `%018u` in Redis keys like coturn.
    pub id: u64,
    pub username: String,
    pub realm: String,
    pub five_tuple: FiveTuple,
    pub relay: SocketAddr,
    /// The client's TLS session, when it came over TLS.
    pub tls: Option<TlsSession>,
}

/// Why an allocation went away.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// Refresh with LIFETIME 0.
    Deleted,
    Expired,
    /// Server shutting down.
    Shutdown,
    /// The client's TCP or TLS connection closed (RFC 8656 §2: the allocation lives and dies
    /// with its 5-tuple).
    ConnectionClosed,
}

/// Events for the stats thread and the observer, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new allocation succeeded, with its granted lifetime in seconds.
    AllocationCreated {
        info: Arc<AllocationInfo>,
        lifetime: u32,
    },
    /// A Refresh succeeded (lifetime 0 is reported too, just before `AllocationDeleted`).
    AllocationRefreshed {
        info: Arc<AllocationInfo>,
        lifetime: u32,
    },
    /// Traffic since the last report for this allocation (never all zero).
    Traffic {
        info: Arc<AllocationInfo>,
        delta: Traffic,
    },
    /// The allocation is gone. `last` is the traffic not yet reported by a `Traffic` event,
    /// `totals` the allocation's whole-life traffic.
    AllocationDeleted {
        info: Arc<AllocationInfo>,
        reason: DeleteReason,
        last: Traffic,
        totals: Traffic,
    },
}

#[cfg(test)]
mod tests;
