//! Counting what passes without changing it: [`TrafficTap`] sums the traffic in the events
//! on their way to the stats sink, [`CountingObserver`] counts authentication decisions
//! (asynchronous ones when their ticket is answered).
//!
//! Must not: block, or alter an event or a decision.

use crate::auth::{AuthDecision, AuthRequest, Observer, Ticket};
use crate::stats::EventSink;
use crate::turn::{AllocationInfo, Event, Traffic};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Server-wide relayed traffic in coturn's counters (client side and peer side), as the
/// core reports it: every 4096 packets of an allocation, every `--stats-interval`, and
/// at deletion.
#[derive(Debug, Default)]
pub struct TrafficTotals {
    /// rcvp, rcvb, sentp, sentb.
    pub client: [AtomicU64; 4],
    pub peer: [AtomicU64; 4],
}

impl TrafficTotals {
    fn add(&self, t: &Traffic) {
        let r = Ordering::Relaxed;
        for (slot, v) in
            self.client
                .iter()
                .zip([t.client.rcvp, t.client.rcvb, t.client.sentp, t.client.sentb])
        {
            slot.fetch_add(v, r);
        }
        for (slot, v) in
            self.peer
                .iter()
                .zip([t.peer.rcvp, t.peer.rcvb, t.peer.sentp, t.peer.sentb])
        {
            slot.fetch_add(v, r);
        }
    }
}

/// An [`EventSink`] in front of the stats sink (if any) that adds up traffic.
pub struct TrafficTap {
    pub inner: Option<Arc<dyn EventSink>>,
    pub totals: Arc<TrafficTotals>,
}

impl EventSink for TrafficTap {
    fn send(&self, event: Event) {
        match &event {
            Event::Traffic { delta, .. } => self.totals.add(delta),
            Event::AllocationDeleted { last, .. } => self.totals.add(last),
            _ => {}
        }
        if let Some(inner) = &self.inner {
            inner.send(event);
        }
    }
}

/// Authentication decisions: authorized, not_authorized, quota_reached, and the
/// asynchronous ones answered later (counted under their final decision), plus how many
/// were deferred.
#[derive(Debug, Default)]
pub struct AuthCounters {
    pub authorized: AtomicU64,
    pub not_authorized: AtomicU64,
    pub quota_reached: AtomicU64,
    pub deferred: AtomicU64,
}

impl AuthCounters {
    fn count(&self, decision: &AuthDecision) {
        let slot = match decision {
            AuthDecision::Authorized(_) => &self.authorized,
            AuthDecision::NotAuthorized | AuthDecision::Pending => &self.not_authorized,
            AuthDecision::QuotaReached => &self.quota_reached,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wraps the server's observer and counts its decisions.
pub struct CountingObserver {
    pub inner: Arc<dyn Observer>,
    pub counters: Arc<AuthCounters>,
}

impl Observer for CountingObserver {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        // Hand the inner observer a ticket that counts the answer on its way back.
        if let Some(ticket) = request.ticket.take() {
            let counters = self.counters.clone();
            let original = ticket.deliver.clone();
            request.ticket = Some(Ticket::new(
                ticket.id,
                Arc::new(move |id, decision| {
                    counters.count(&decision);
                    original(id, decision)
                }),
            ));
        }
        let decision = self.inner.authenticate(request);
        if decision == AuthDecision::Pending {
            self.counters.deferred.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.count(&decision);
        }
        decision
    }

    fn on_allocation_created(&self, info: &AllocationInfo) {
        self.inner.on_allocation_created(info);
    }

    fn on_allocation_removed(&self, info: &AllocationInfo, totals: &Traffic) {
        self.inner.on_allocation_removed(info, totals);
    }
}
