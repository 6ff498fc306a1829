//! The Prometheus endpoint (`--prometheus`): `/metrics` in the text exposition format,
//! `/healthz` (the process serves) and `/readyz` (listening and not draining), on
//! `--prometheus-address:--prometheus-port` (127.0.0.1:9641), from one side thread.
//!
//! Owns: the published values ([`ShardMetrics`], [`TrafficTotals`], [`AuthCounters`]),
//! their names and the HTTP responder. Must not: take a lock or allocate on a shard's
//! hot path — shards store a snapshot with relaxed atomics once per loop turn, and
//! everything else is counted where it already happens off the hot path.

mod http;
mod render;
mod shard;
mod taps;

pub use http::Endpoint;
pub use render::render;
pub use shard::{ShardMetrics, ShardSnapshot, HANDOFF_METRICS, OFFLOAD_METRICS, STREAM_METRICS};
pub use taps::{AllocationsByTransport, AuthCounters, CountingObserver, TrafficTap, TrafficTotals};

use crate::auth::userdb::UserDbCounters;
use crate::stats::StatsCounters;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Readiness as orchestrators see it.
#[derive(Debug, Default)]
pub struct Health {
    /// Every shard is up and listening.
    pub listening: AtomicBool,
    /// A drain is under way: no new allocations are taken.
    pub draining: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.listening.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }
}

/// Everything `/metrics` reads.
#[derive(Default)]
pub struct Sources {
    pub health: Arc<Health>,
    /// Set once the shards run (the endpoint starts before them, so a taken port stops
    /// the start before any client is served, and probes answer from the first moment).
    pub shards: std::sync::OnceLock<Vec<Arc<ShardMetrics>>>,
    pub traffic: Arc<TrafficTotals>,
    pub allocations: Arc<AllocationsByTransport>,
    pub auth: Arc<AuthCounters>,
    pub stats: Option<Arc<StatsCounters>>,
    pub userdb: Option<Arc<UserDbCounters>>,
}
