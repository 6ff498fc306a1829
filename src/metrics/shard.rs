//! What one shard publishes for the metrics endpoint: a snapshot of its core's counters,
//! its I/O counters and its allocation count, written at the end of every loop turn with
//! relaxed atomic stores (no lock, no allocation, nothing per packet), read by the HTTP
//! thread.

use crate::shard::stream::StreamCounters;
use crate::shard::{IoCounters, OffloadCounters};
use crate::turn::{Dropped, Refusal, ServerCounters};
use std::sync::atomic::{AtomicU64, Ordering};

/// The TCP/TLS side's counters published per shard: (metric, help), in the order of
/// [`stream_values`]. The first is a gauge, the rest counters.
pub const STREAM_METRICS: [(&str, &str); 9] = [
    (
        "uturn_stream_connections",
        "TCP/TLS client connections open (at the shard's last sweep), by shard.",
    ),
    (
        "uturn_stream_accepted_total",
        "TCP/TLS client connections accepted, by shard.",
    ),
    (
        "uturn_stream_refused_total",
        "TCP/TLS connections closed at accept (--max-connections), by shard.",
    ),
    (
        "uturn_stream_framing_errors_total",
        "TCP/TLS connections closed for bytes that are not STUN or ChannelData, by shard.",
    ),
    (
        "uturn_stream_tls_errors_total",
        "TLS handshakes or records that failed, by shard.",
    ),
    (
        "uturn_stream_handshake_timeouts_total",
        "TLS handshakes that did not finish in time, by shard.",
    ),
    (
        "uturn_stream_idle_closed_total",
        "TCP/TLS connections closed for idleness, by shard.",
    ),
    (
        "uturn_stream_queue_drops_total",
        "Frames for a TCP/TLS client dropped on a full send queue, by shard.",
    ),
    (
        "uturn_stream_send_timeouts_total",
        "TCP/TLS connections closed because a send to the client did not complete within the send timeout, by shard.",
    ),
];

fn stream_values(s: &StreamCounters) -> [u64; 9] {
    [
        s.open,
        s.accepted,
        s.refused,
        s.framing_errors,
        s.tls_errors,
        s.handshake_timeouts,
        s.idle_closed,
        s.queue_drops,
        s.send_timeouts,
    ]
}

/// Relay to relay in process, per shard: (metric, help), in the order of
/// [`handoff_values`]; all counters.
pub const HANDOFF_METRICS: [(&str, &str); 5] = [
    (
        "uturn_relayed_in_process_total",
        "Datagrams from one allocation to another's relay address on the same shard, handed over without the kernel, by shard.",
    ),
    (
        "uturn_relayed_cross_shard_total",
        "Datagrams to another shard's relay address, queued for that shard without the kernel, by sending shard.",
    ),
    (
        "uturn_cross_shard_received_total",
        "Datagrams other shards queued for this one, given to its allocations, by receiving shard.",
    ),
    (
        "uturn_cross_shard_fallbacks_total",
        "Datagrams to another shard's relay address sent through the kernel (queue full, or larger than a slot), by sending shard.",
    ),
    (
        "uturn_cross_shard_dropped_total",
        "Datagrams other shards queued for this one and dropped (relay closed meanwhile, or stopping), by receiving shard.",
    ),
];

fn handoff_values(io: &IoCounters) -> [u64; 5] {
    [
        io.relayed_in_process,
        io.relayed_cross_shard,
        io.cross_shard_received,
        io.cross_shard_fallbacks,
        io.cross_shard_dropped,
    ]
}

/// The XDP offload's counters per shard: (metric, help), in the order of
/// [`ShardMetrics::publish_offload`]. The first is a gauge, the rest counters.
pub const OFFLOAD_METRICS: [(&str, &str); 6] = [
    (
        "uturn_offload_bindings",
        "Channel bindings the XDP fast path relays now, by shard.",
    ),
    (
        "uturn_offload_installs_total",
        "Channel bindings installed in the XDP maps, by shard.",
    ),
    (
        "uturn_offload_removes_total",
        "Channel bindings removed from the XDP maps, by shard.",
    ),
    (
        "uturn_offload_refusals_total",
        "Installs the kernel refused (relayed in user space instead), by shard.",
    ),
    (
        "uturn_offload_errors_total",
        "XDP map reads or removals that failed, by shard.",
    ),
    (
        "uturn_offload_packets_total",
        "Datagrams relayed by the XDP fast path (both directions, read once a second), by shard.",
    ),
];

/// One shard's published values.
#[derive(Debug)]
pub struct ShardMetrics {
    pub index: usize,
    allocations: AtomicU64,
    relayed_to_peer: AtomicU64,
    relayed_to_client: AtomicU64,
    /// By [`Refusal::ALL`] index.
    refused: Box<[AtomicU64]>,
    /// By [`Dropped::ALL`] index.
    dropped: Box<[AtomicU64]>,
    received: AtomicU64,
    sent: AtomicU64,
    send_errors: AtomicU64,
    truncated: AtomicU64,
    no_buffers: AtomicU64,
    cq_overflowed: AtomicU64,
    cq_lost: AtomicU64,
    streams: [AtomicU64; 9],
    offload: [AtomicU64; 6],
    handoff: [AtomicU64; 5],
}

/// A plain copy of [`ShardMetrics`] for rendering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub index: usize,
    pub allocations: u64,
    pub relayed_to_peer: u64,
    pub relayed_to_client: u64,
    /// By [`Refusal::ALL`] index.
    pub refused: Vec<u64>,
    /// By [`Dropped::ALL`] index.
    pub dropped: Vec<u64>,
    pub received: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub truncated: u64,
    pub no_buffers: u64,
    pub cq_overflowed: u64,
    pub cq_lost: u64,
    /// In the order of [`STREAM_METRICS`].
    pub streams: [u64; 9],
    /// In the order of [`OFFLOAD_METRICS`].
    pub offload: [u64; 6],
    /// In the order of [`HANDOFF_METRICS`].
    pub handoff: [u64; 5],
}

impl ShardMetrics {
    pub fn new(index: usize) -> ShardMetrics {
        ShardMetrics {
            index,
            allocations: AtomicU64::new(0),
            relayed_to_peer: AtomicU64::new(0),
            relayed_to_client: AtomicU64::new(0),
            refused: Refusal::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            dropped: Dropped::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            no_buffers: AtomicU64::new(0),
            cq_overflowed: AtomicU64::new(0),
            cq_lost: AtomicU64::new(0),
            streams: Default::default(),
            offload: Default::default(),
            handoff: Default::default(),
        }
    }

    /// Called by the shard once per loop turn.
    pub fn publish(
        &self,
        counters: &ServerCounters,
        io: &IoCounters,
        streams: &StreamCounters,
        allocations: usize,
    ) {
        let r = Ordering::Relaxed;
        self.allocations.store(allocations as u64, r);
        self.relayed_to_peer.store(counters.relayed_to_peer, r);
        self.relayed_to_client.store(counters.relayed_to_client, r);
        for (slot, &cause) in self.refused.iter().zip(Refusal::ALL) {
            slot.store(counters.refused(cause), r);
        }
        for (slot, &cause) in self.dropped.iter().zip(Dropped::ALL) {
            slot.store(counters.dropped(cause), r);
        }
        self.received.store(io.received, r);
        self.sent.store(io.sent, r);
        self.send_errors.store(io.send_errors, r);
        self.truncated.store(io.truncated, r);
        self.no_buffers.store(io.no_buffers, r);
        self.cq_overflowed.store(io.cq_overflowed, r);
        self.cq_lost.store(io.cq_lost, r);
        for (slot, v) in self.streams.iter().zip(stream_values(streams)) {
            slot.store(v, r);
        }
        for (slot, v) in self.handoff.iter().zip(handoff_values(io)) {
            slot.store(v, r);
        }
    }

    /// Called by a shard with the XDP offload at the end of each loop turn.
    pub fn publish_offload(&self, c: &OffloadCounters) {
        let values = [
            c.installed,
            c.installs,
            c.removes,
            c.refusals,
            c.errors,
            c.packets,
        ];
        for (slot, v) in self.offload.iter().zip(values) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> ShardSnapshot {
        let r = Ordering::Relaxed;
        ShardSnapshot {
            index: self.index,
            allocations: self.allocations.load(r),
            relayed_to_peer: self.relayed_to_peer.load(r),
            relayed_to_client: self.relayed_to_client.load(r),
            refused: self.refused.iter().map(|a| a.load(r)).collect(),
            dropped: self.dropped.iter().map(|a| a.load(r)).collect(),
            received: self.received.load(r),
            sent: self.sent.load(r),
            send_errors: self.send_errors.load(r),
            truncated: self.truncated.load(r),
            no_buffers: self.no_buffers.load(r),
            cq_overflowed: self.cq_overflowed.load(r),
            cq_lost: self.cq_lost.load(r),
            streams: std::array::from_fn(|i| self.streams[i].load(r)),
            offload: std::array::from_fn(|i| self.offload[i].load(r)),
            handoff: std::array::from_fn(|i| self.handoff[i].load(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_snapshot_keeps_every_value_in_its_place() {
        let m = ShardMetrics::new(3);
        let mut c = ServerCounters::default();
        for (i, &cause) in Refusal::ALL.iter().enumerate() {
            for _ in 0..=i {
                c.count_refusal(cause);
            }
        }
        for (i, &cause) in Dropped::ALL.iter().enumerate() {
            for _ in 0..=(100 + i) {
                c.count_drop(cause);
            }
        }
        c.relayed_to_peer = 15;
        c.relayed_to_client = 16;
        let io = IoCounters {
            received: 17,
            sent: 18,
            send_errors: 19,
            truncated: 20,
            no_buffers: 21,
            cq_overflowed: 23,
            cq_lost: 24,
            relayed_in_process: 25,
            relayed_cross_shard: 26,
            cross_shard_received: 27,
            cross_shard_fallbacks: 28,
            cross_shard_dropped: 29,
        };
        let streams = StreamCounters {
            open: 30,
            accepted: 31,
            queue_drops: 37,
            send_timeouts: 38,
            ..StreamCounters::default()
        };
        m.publish(&c, &io, &streams, 22);
        let s = m.snapshot();
        assert_eq!(s.index, 3);
        for (i, &cause) in Refusal::ALL.iter().enumerate() {
            assert_eq!(s.refused[i], i as u64 + 1, "{cause:?}");
        }
        for (i, &cause) in Dropped::ALL.iter().enumerate() {
            assert_eq!(s.dropped[i], 101 + i as u64, "{cause:?}");
        }
        assert_eq!((s.relayed_to_peer, s.relayed_to_client), (15, 16));
        assert_eq!((s.received, s.sent, s.send_errors), (17, 18, 19));
        assert_eq!((s.truncated, s.no_buffers, s.allocations), (20, 21, 22));
        assert_eq!((s.cq_overflowed, s.cq_lost), (23, 24));
        assert_eq!(s.streams, [30, 31, 0, 0, 0, 0, 0, 37, 38]);
        assert_eq!(s.handoff, [25, 26, 27, 28, 29]);
    }
}
