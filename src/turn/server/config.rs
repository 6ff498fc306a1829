//! [`ServerConfig`]: what one shard's core is told at start, with RFC 8656 / coturn
//! defaults. Must not: parse options (that is `crate::config`).

use crate::turn::ports::PortExchange;
use crate::turn::PeerPolicy;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Configuration of one shard's core.
#[derive(Clone)]
pub struct ServerConfig {
    pub realm: String,
    /// SOFTWARE attribute in responses; empty for none.
    pub software: String,
    /// Relay address IP (IPv4 relay; IPv6 when given as `relay_ip_v6`).
    pub relay_ip: IpAddr,
    pub relay_ip_v6: Option<IpAddr>,
    /// `--external-ip PUBLIC[/PRIVATE]`, once per family: XOR-RELAYED-ADDRESS advertises
    /// PUBLIC for a relay address on PRIVATE (or, without PRIVATE, of PUBLIC's family).
    pub external_ips: Vec<(IpAddr, Option<IpAddr>)>,
    /// This shard's relay ports.
    pub ports: RangeInclusive<u16>,
    /// The whole relay port range of the server (every shard's): the only ports relayed to
    /// on the server's own addresses.
    pub relay_range: RangeInclusive<u16>,
    /// Every listening, relay and external IP of the server (the shard fills it): peers a
    /// client may reach only on relay ports, so a relay cannot reach services on its own
    /// host, while two clients still reach each other's relay addresses.
    pub own_addresses: Vec<IpAddr>,
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
    pub policy: PeerPolicy,
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
    /// Other servers to send clients to (ALTERNATE-SERVER with 300 Try Alternate) while
    /// draining or when the total quota is reached (`--alternate-server`).
    pub alternate_servers: Vec<SocketAddr>,
    /// The shard has the XDP fast path (`--xdp` attached): emit `OffloadCommand`s.
    pub offload: bool,
}

impl ServerConfig {
    /// The address XOR-RELAYED-ADDRESS advertises for a relay socket bound at `relay`: the
    /// public address mapped to its IP (`-X PUBLIC/PRIVATE`), else the first public address
    /// of its family given without a private part, else the relay address itself.
    pub fn advertised(&self, relay: SocketAddr) -> SocketAddr {
        let ip = relay.ip();
        let mapped = self
            .external_ips
            .iter()
            .find(|(_, private)| *private == Some(ip))
            .or_else(|| {
                self.external_ips
                    .iter()
                    .find(|(public, private)| private.is_none() && public.is_ipv4() == ip.is_ipv4())
            });
        match mapped {
            Some((public, _)) => SocketAddr::new(*public, relay.port()),
            None => relay,
        }
    }

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
            external_ips: Vec::new(),
            max_allocations: usize::from(ports.end() - ports.start()) + 1,
            relay_range: ports.clone(),
            own_addresses: vec![relay_ip],
            ports,
            port_exchange: Default::default(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            nonce_secret,
            epoch,
            policy: PeerPolicy::default(),
            max_permissions_per_allocation: 32,
            max_channels_per_allocation: 64,
            max_pending_auth: 1024,
            pending_auth_timeout: Duration::from_secs(10),
            max_bps: 0,
            stats_packet_trigger: 4096,
            stats_interval: Duration::ZERO,
            id_base: 0,
            id_stride: 1,
            alternate_servers: Vec::new(),
            offload: false,
        }
    }
}
