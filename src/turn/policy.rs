//! Peer address policy (RFC 8656 §21.3 and coturn's `--denied-peer-ip`/`--allowed-peer-ip`).
//!
//! Owns: deciding whether a peer IP may be relayed to. Must not: know about allocations.

use std::net::IpAddr;
use std::str::FromStr;

/// An inclusive IP range, parsed from `A`, `A-B` or `A/prefix` (coturn's syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let _ = ip;
        todo!()
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let _ = s;
        todo!()
    }
}

/// Which peers an allocation may talk to.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// `--allow-loopback-peers`.
    pub allow_loopback: bool,
    /// `--allowed-peer-ip`: overrides the built-in refusals of private ranges and
    /// `--denied-peer-ip` (coturn: allowed takes precedence over denied).
    pub allowed: Vec<IpRange>,
    /// `--denied-peer-ip`.
    pub denied: Vec<IpRange>,
}

impl PeerPolicy {
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let _ = ip;
        todo!()
    }
}
