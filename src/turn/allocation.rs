//! One allocation's state (RFC 8656 §2.2, §9, §12): its relay address, permissions, channel
//! bindings, lifetime, traffic counters and bandwidth budget.
//!
//! Owns: the per-allocation tables and their lookups on the forwarding path. Permissions and
//! channels are small vectors scanned linearly: they are capped per allocation, and a scan of
//! a few entries is cheaper than hashing.

use super::{AllocationInfo, Traffic};
use crate::stun::{LongTermKey, TransactionId};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// A permission for one peer IP (RFC 8656 §9).
#[derive(Clone, Debug)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
    /// The IP is one of the server's own: relay only to ports in the relay range.
    pub own: bool,
}

/// A channel bound to a peer transport address (RFC 8656 §12).
#[derive(Clone, Debug)]
pub struct ChannelBinding {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// A token bucket in bytes (`--max-bps`), one per direction.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(now: Instant, rate: u64) -> Self {
        TokenBucket {
            tokens: Self::capacity(rate),
            last: now,
        }
    }

    /// Burst allowance: an eighth of a second at `rate`, but at least two full-size
    /// datagrams of a 1500-byte MTU path so a slow limit still passes real packets.
    fn capacity(rate: u64) -> f64 {
        (rate as f64 / 8.0).max(3000.0)
    }

    /// Takes `bytes` if the budget allows; refills at `rate` bytes/s up to the burst
    /// allowance.
    pub fn take(&mut self, now: Instant, rate: u64, bytes: usize) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f64).min(Self::capacity(rate));
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub struct Allocation {
    pub info: Arc<AllocationInfo>,
    pub key: LongTermKey,
    pub expires: Instant,
    /// Transaction id of the Allocate that made it, to answer its retransmissions.
    pub allocate_tid: TransactionId,
    pub lifetime: u32,
    pub reservation_token: Option<u64>,
    pub permissions: Vec<Permission>,
    pub channels: Vec<ChannelBinding>,
    /// Traffic not yet reported, and whole-life totals (reported + unreported).
    pub unreported: Traffic,
    pub reported: Traffic,
    pub bucket_in: Option<TokenBucket>,
    pub bucket_out: Option<TokenBucket>,
    /// Channels the kernel fast path relays (installed by an `OffloadCommand`), empty
    /// unless `ServerConfig::offload`.
    pub offloaded: Vec<crate::xdp::ChannelOffload>,
}

impl Allocation {
    /// The live permission for `ip`.
    pub fn permission(&self, ip: IpAddr, now: Instant) -> Option<&Permission> {
        self.permissions
            .iter()
            .find(|p| p.ip == ip && p.expires > now)
    }

    pub fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        self.permission(ip, now).is_some()
    }

    /// Installs or refreshes a permission; false when that would exceed `max`.
    pub fn install_permission(&mut self, new: Permission, max: usize, now: Instant) -> bool {
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == new.ip) {
            p.expires = p.expires.max(new.expires);
            p.own = new.own;
            return true;
        }
        self.permissions.retain(|p| p.expires > now);
        if self.permissions.len() >= max {
            return false;
        }
        self.permissions.push(new);
        true
    }

    pub fn can_install_permissions(&self, ips: &[IpAddr], max: usize, now: Instant) -> bool {
        let live = self.permissions.iter().filter(|p| p.expires > now).count();
        let new = ips
            .iter()
            .enumerate()
            .filter(|(i, ip)| {
                !ips[..*i].contains(ip)
                    && !self
                        .permissions
                        .iter()
                        .any(|p| p.ip == **ip && p.expires > now)
            })
            .count();
        live + new <= max
    }

    pub fn channel_by_number(&self, number: u16, now: Instant) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
    }

    pub fn channel_by_peer(&self, peer: SocketAddr, now: Instant) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Drops expired permissions and channels; returns the earliest remaining expiry.
    pub fn prune(&mut self, now: Instant) -> Option<Instant> {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
        self.permissions
            .iter()
            .map(|p| p.expires)
            .chain(self.channels.iter().map(|c| c.expires))
            .min()
    }

    pub fn totals(&self) -> Traffic {
        let mut t = self.reported;
        t.add(&self.unreported);
        t
    }

    /// Takes the unreported traffic, moving it to `reported`.
    pub fn take_unreported(&mut self) -> Traffic {
        let delta = std::mem::take(&mut self.unreported);
        self.reported.add(&delta);
        delta
    }
}
