//! What one shard publishes for the metrics endpoint: a snapshot of its core's counters,
//! its I/O counters and its allocation count, written at the end of every loop turn with
//! relaxed atomic stores (no lock, no allocation, nothing per packet), read by the HTTP
//! thread.

use crate::shard::IoCounters;
use crate::turn::ServerCounters;
use std::sync::atomic::{AtomicU64, Ordering};

/// Error responses by cause: (label, STUN code). The order is that of [`refusals`].
pub const REFUSALS: [(&str, u16); 9] = [
    ("unauthenticated", 401),
    ("stale_nonce", 438),
    ("malformed", 400),
    ("peer_refused", 403),
    ("quota_reached", 486),
    ("ports_exhausted", 508),
    ("pending_auth_dropped", 508),
    ("permissions_capped", 508),
    ("channels_capped", 508),
];

fn refusals(c: &ServerCounters) -> [u64; 9] {
    [
        c.unauthenticated,
        c.stale_nonce,
        c.malformed,
        c.peer_refused,
        c.quota_refused,
        c.ports_exhausted,
        c.pending_auth_dropped,
        c.permissions_capped,
        c.channels_capped,
    ]
}

/// Datagrams dropped without an answer, by cause. The order is that of [`drops`].
pub const DROPS: [&str; 5] = [
    "not_stun",
    "no_allocation",
    "no_permission",
    "no_channel",
    "rate_limited",
];

fn drops(c: &ServerCounters) -> [u64; 5] {
    [
        c.not_stun,
        c.no_allocation,
        c.no_permission,
        c.no_channel,
        c.rate_limited,
    ]
}

/// One shard's published values.
#[derive(Debug)]
pub struct ShardMetrics {
    pub index: usize,
    allocations: AtomicU64,
    relayed_to_peer: AtomicU64,
    relayed_to_client: AtomicU64,
    refused: [AtomicU64; 9],
    dropped: [AtomicU64; 5],
    received: AtomicU64,
    sent: AtomicU64,
    send_errors: AtomicU64,
    truncated: AtomicU64,
    no_buffers: AtomicU64,
}

/// A plain copy of [`ShardMetrics`] for rendering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub index: usize,
    pub allocations: u64,
    pub relayed_to_peer: u64,
    pub relayed_to_client: u64,
    pub refused: [u64; 9],
    pub dropped: [u64; 5],
    pub received: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub truncated: u64,
    pub no_buffers: u64,
}

impl ShardMetrics {
    pub fn new(index: usize) -> ShardMetrics {
        ShardMetrics {
            index,
            allocations: AtomicU64::new(0),
            relayed_to_peer: AtomicU64::new(0),
            relayed_to_client: AtomicU64::new(0),
            refused: Default::default(),
            dropped: Default::default(),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            no_buffers: AtomicU64::new(0),
        }
    }

    /// Called by the shard once per loop turn.
    pub fn publish(&self, counters: &ServerCounters, io: &IoCounters, allocations: usize) {
        let r = Ordering::Relaxed;
        self.allocations.store(allocations as u64, r);
        self.relayed_to_peer.store(counters.relayed_to_peer, r);
        self.relayed_to_client.store(counters.relayed_to_client, r);
        for (slot, v) in self.refused.iter().zip(refusals(counters)) {
            slot.store(v, r);
        }
        for (slot, v) in self.dropped.iter().zip(drops(counters)) {
            slot.store(v, r);
        }
        self.received.store(io.received, r);
        self.sent.store(io.sent, r);
        self.send_errors.store(io.send_errors, r);
        self.truncated.store(io.truncated, r);
        self.no_buffers.store(io.no_buffers, r);
    }

    pub fn snapshot(&self) -> ShardSnapshot {
        let r = Ordering::Relaxed;
        ShardSnapshot {
            index: self.index,
            allocations: self.allocations.load(r),
            relayed_to_peer: self.relayed_to_peer.load(r),
            relayed_to_client: self.relayed_to_client.load(r),
            refused: std::array::from_fn(|i| self.refused[i].load(r)),
            dropped: std::array::from_fn(|i| self.dropped[i].load(r)),
            received: self.received.load(r),
            sent: self.sent.load(r),
            send_errors: self.send_errors.load(r),
            truncated: self.truncated.load(r),
            no_buffers: self.no_buffers.load(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_snapshot_keeps_every_value_in_its_place() {
        let m = ShardMetrics::new(3);
        let c = ServerCounters {
            unauthenticated: 1,
            stale_nonce: 2,
            malformed: 3,
            peer_refused: 4,
            quota_refused: 5,
            ports_exhausted: 6,
            pending_auth_dropped: 7,
            permissions_capped: 8,
            channels_capped: 9,
            not_stun: 10,
            no_allocation: 11,
            no_permission: 12,
            no_channel: 13,
            rate_limited: 14,
            relayed_to_peer: 15,
            relayed_to_client: 16,
        };
        let io = IoCounters {
            received: 17,
            sent: 18,
            send_errors: 19,
            truncated: 20,
            no_buffers: 21,
        };
        m.publish(&c, &io, 22);
        let s = m.snapshot();
        assert_eq!(s.index, 3);
        assert_eq!(s.refused, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(s.dropped, [10, 11, 12, 13, 14]);
        assert_eq!((s.relayed_to_peer, s.relayed_to_client), (15, 16));
        assert_eq!((s.received, s.sent, s.send_errors), (17, 18, 19));
        assert_eq!((s.truncated, s.no_buffers, s.allocations), (20, 21, 22));
    }
}
