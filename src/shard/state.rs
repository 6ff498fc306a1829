//! The part of a shard every backend shares, and its per-shard I/O counters.
//!
//! Owns the TURN core of one shard and the hand-off of its events; must not do I/O.

use super::knobs::Trigger;
use crate::auth::{AuthDecision, Observer};
use crate::stats::EventSink;
use crate::turn::{Event, Server};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The part of a shard every backend shares: the TURN core ([`Server`]), the observer,
/// the stats sink, the answers of asynchronous authentication and the stop flag.
pub(crate) struct ShardState {
    pub server: Server,
    pub observer: Arc<dyn Observer>,
    pub sink: Option<Arc<dyn EventSink>>,
    pub auth_rx: mpsc::Receiver<(u64, AuthDecision)>,
    pub stop: Arc<AtomicBool>,
    pub io: IoCounters,
    /// For the periodic summary line: shard index, when it was last written and the
    /// datagrams received by then.
    pub index: usize,
    pub summary_at: Instant,
    pub summary_received: u64,
    /// An injected test fault (inert unless a test set one).
    pub fault: Trigger,
    /// Published once per turn for the metrics endpoint (relaxed atomic stores).
    pub metrics: Arc<crate::metrics::ShardMetrics>,
    /// Set by `Running::set_draining`; applied to the core at the end of a turn.
    pub draining: Arc<AtomicBool>,
    /// Peer policy and `--max-bps` as reloaded, and the generation this shard applied.
    pub live: Arc<super::live::LiveSettings>,
    pub live_seen: u64,
    /// The stream side's counters, as of its last sweep and when the shard stops.
    pub streams: super::stream::StreamCounters,
    /// The kernel fast path's maps when `--xdp` attached (the core then emits commands).
    pub offload: Option<super::offload::ShardOffload>,
}

/// How often a busy shard logs a summary line (an idle one stays quiet).
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Drops and faults below the core, per shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub received: u64,
    pub sent: u64,
    pub send_errors: u64,
    /// Datagrams over [`super::MAX_DATAGRAM`] bytes, dropped.
    pub truncated: u64,
    pub no_buffers: u64,
    /// Loop turns that found the completion queue overflowed into the kernel's own list
    /// (nothing lost; read on the next turn).
    pub cq_overflowed: u64,
    /// Completions the kernel dropped (completion queue overflow it could not buffer).
    pub cq_lost: u64,
    /// Datagrams from one of the shard's allocations to another's relay address, handed
    /// over in process instead of through the kernel (not in `sent` or `received`).
    pub relayed_in_process: u64,
    /// Datagrams from one of the shard's allocations to another shard's relay address,
    /// queued for that shard instead of sent through the kernel (not in `sent`).
    pub relayed_cross_shard: u64,
    /// Datagrams other shards queued for this one, given to its allocations (not in
    /// `received`).
    pub cross_shard_received: u64,
    /// Datagrams to another shard's relay address sent through the kernel after all: its
    /// queue was full or closed, or the datagram larger than a slot.
    pub cross_shard_fallbacks: u64,
    /// Datagrams other shards queued for this one and dropped: the target relay had closed
    /// meanwhile, or this shard was stopping.
    pub cross_shard_dropped: u64,
}

impl ShardState {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Delivers events to the observer and the stats sink.
    pub fn dispatch_events(&mut self) {
        self.dispatch_events_with(|_| {});
    }

    /// The same, showing each event to `also` first (the stream side tracks allocations).
    pub fn dispatch_events_with(&mut self, mut also: impl FnMut(&Event)) {
        while let Some(event) = self.server.poll_event() {
            also(&event);
            match &event {
                Event::AllocationCreated { info, .. } => self.observer.on_allocation_created(info),
                Event::AllocationDeleted { info, totals, .. } => {
                    self.observer.on_allocation_removed(info, totals)
                }
                _ => {}
            }
            if let Some(sink) = &self.sink {
                sink.send(event);
            }
        }
    }

    /// How long the shard may sleep: until the core's next timer, at most `idle`.
    pub fn sleep_for(&self, now: Instant, idle: Duration) -> Duration {
        self.server
            .poll_timeout()
            .map_or(idle, |t| t.saturating_duration_since(now).min(idle))
    }

    /// End of a loop turn: answers of asynchronous authentication, due timers, and now and
    /// then a summary line in the log.
    pub fn end_turn(&mut self, now: Instant, sockets: &mut dyn crate::turn::RelaySockets) {
        self.take_auth_results(now, sockets);
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now, sockets);
        }
        let draining = self.draining.load(Ordering::Relaxed);
        if draining != self.server.is_draining() {
            self.server.set_draining(draining);
        }
        self.live.apply(&mut self.live_seen, &mut self.server);
        self.apply_offload(now);
        self.metrics.publish(
            self.server.counters(),
            &self.io,
            &self.streams,
            self.server.allocation_count(),
        );
        if now.saturating_duration_since(self.summary_at) >= SUMMARY_EVERY {
            if self.io.received != self.summary_received {
                let c = self.server.counters();
                tracing::info!(
                    shard = self.index,
                    allocations = self.server.allocation_count(),
                    received = self.io.received,
                    relayed_to_peer = c.relayed_to_peer,
                    relayed_to_client = c.relayed_to_client,
                    unauthenticated = c.unauthenticated,
                    dropped = c.no_allocation
                        + c.no_permission
                        + c.no_channel
                        + c.rate_limited
                        + c.malformed
                        + c.not_stun,
                    refused = c.peer_refused + c.quota_refused + c.ports_exhausted,
                    send_errors = self.io.send_errors,
                    oversize = self.io.truncated,
                    no_buffers = self.io.no_buffers,
                    cq_lost = self.io.cq_lost,
                    "shard summary"
                );
            }
            self.summary_at = now;
            self.summary_received = self.io.received;
        }
    }

    /// Applies the core's offload commands and hands the kernel's counts back to it.
    pub fn apply_offload(&mut self, now: Instant) {
        if let Some(offload) = &mut self.offload {
            offload.apply(now, &mut self.server);
            self.metrics.publish_offload(&offload.counters);
        }
    }

    /// Deletes every allocation through the core (server stopping), offloaded bindings
    /// included, so their last counts reach the final events.
    pub fn shutdown(&mut self, now: Instant, sockets: &mut dyn crate::turn::RelaySockets) {
        self.server.shutdown(now, sockets);
        self.apply_offload(now);
    }

    pub fn take_auth_results(&mut self, now: Instant, sockets: &mut dyn crate::turn::RelaySockets) {
        while let Ok((ticket, decision)) = self.auth_rx.try_recv() {
            self.server
                .handle_auth_result(now, ticket, decision, sockets);
        }
    }
}
