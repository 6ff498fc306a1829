//! Time in the core: ticks since the epoch, the timer entries the server schedules
//! (allocation expiry, permission/channel pruning, periodic traffic reports, reservation
//! and parked-request deadlines) and what happens when each fires.
//!
//! Owns: turning `now` into ticks and firing due entries. Entries are cancelled lazily: a
//! fired entry whose slot generation or scheduled tick no longer matches is ignored.

use super::{RelaySockets, Server};
use crate::turn::{DeleteReason, Event};
use std::time::{Duration, Instant};

/// Timer wheel ticks per second: expiry is never early and at most 100 ms late.
pub(super) const TICKS_PER_SEC: u64 = 10;
const NANOS_PER_TICK: u64 = 1_000_000_000 / TICKS_PER_SEC;

#[derive(Copy, Clone, Debug)]
pub(super) enum Timer {
    /// Check an allocation's lifetime; `at` is the tick it was scheduled for.
    Expiry {
        slot: u32,
        gen: u32,
        at: u64,
    },
    /// Prune expired permissions and channels.
    Prune {
        slot: u32,
        gen: u32,
        at: u64,
    },
    /// Periodic traffic report.
    Stats {
        slot: u32,
        gen: u32,
    },
    Reservation {
        token: u64,
    },
    PendingAuth {
        ticket: u64,
    },
}

impl Server {
    pub(super) fn now_sec(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.config.epoch).as_secs()
    }

    /// The timer wheel's tick (since the epoch) `now` falls in.
    pub(super) fn now_tick(&self, now: Instant) -> u64 {
        let d = now.saturating_duration_since(self.config.epoch);
        d.as_secs() * TICKS_PER_SEC + u64::from(d.subsec_nanos()) / NANOS_PER_TICK
    }

    /// The first tick (since the epoch) at or after `t`: expiry is never early and at most
    /// one tick (100 ms) late.
    pub(super) fn tick_ceil(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.config.epoch);
        let nanos = u64::from(d.subsec_nanos());
        d.as_secs() * TICKS_PER_SEC + nanos.div_ceil(NANOS_PER_TICK)
    }

    /// Expire what is due at `now` and emit periodic traffic reports.
    pub fn handle_timeout(&mut self, now: Instant, sockets: &mut dyn RelaySockets) {
        let now_tick = self.now_tick(now);
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now_tick, &mut due);
        for timer in due.drain(..) {
            self.fire(timer, now, now_tick, sockets);
        }
        self.due = due;
    }

    /// When `handle_timeout` should next be called: the next tick while anything is
    /// scheduled (expiry is exact to the tick), `None` when idle.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.wheel.is_empty() {
            None
        } else {
            Some(
                self.config.epoch
                    + Duration::from_nanos((self.wheel.current() + 1) * NANOS_PER_TICK),
            )
        }
    }

    /// Schedules the allocation's expiry check at the tick `expires` falls in, when that
    /// is earlier than the entry already scheduled (a later one re-arms itself on firing).
    pub(super) fn schedule_expiry(&mut self, slot: u32, expires: Instant, force: bool) {
        let at = self.tick_ceil(expires);
        let s = &mut self.slots[slot as usize];
        if force || at < s.expiry_at {
            s.expiry_at = at;
            let gen = s.gen;
            self.wheel.schedule(at, Timer::Expiry { slot, gen, at });
        }
    }

    pub(super) fn schedule_prune(&mut self, slot: u32, expires: Instant) {
        let at = self.tick_ceil(expires);
        let s = &mut self.slots[slot as usize];
        if s.prune_at.is_none_or(|p| at < p) {
            s.prune_at = Some(at);
            let gen = s.gen;
            self.wheel.schedule(at, Timer::Prune { slot, gen, at });
        }
    }

    pub(super) fn schedule_stats(&mut self, slot: u32, gen: u32, now_tick: u64) {
        let next = now_tick + self.config.stats_interval.as_secs().max(1) * TICKS_PER_SEC;
        self.wheel.schedule(next, Timer::Stats { slot, gen });
    }

    fn fire(&mut self, timer: Timer, now: Instant, now_tick: u64, sockets: &mut dyn RelaySockets) {
        match timer {
            Timer::Expiry { slot, gen, at } => self.fire_expiry(slot, gen, at, now, sockets),
            Timer::Prune { slot, gen, at } => self.fire_prune(slot, gen, at, now),
            Timer::Stats { slot, gen } => self.fire_stats(slot, gen, now_tick),
            Timer::Reservation { token } => self.fire_reservation(token, now_tick),
            Timer::PendingAuth { ticket } => {
                if self.pending.remove(&ticket).is_some() {
                    self.counters
                        .count_drop(crate::turn::Dropped::PendingAuthExpired);
                }
            }
        }
    }

    fn fire_expiry(
        &mut self,
        slot: u32,
        gen: u32,
        at: u64,
        now: Instant,
        sockets: &mut dyn RelaySockets,
    ) {
        if !self.live_slot(slot, gen) || self.slots[slot as usize].expiry_at != at {
            return;
        }
        match self.allocation(slot).map(|a| a.expires) {
            Some(e) if e <= now => self.delete(slot, DeleteReason::Expired, sockets),
            Some(e) => {
                // Refreshed since: check again when the new lifetime ends.
                let at = self.tick_ceil(e).max(self.now_tick(now) + 1);
                self.slots[slot as usize].expiry_at = at;
                self.wheel.schedule(at, Timer::Expiry { slot, gen, at });
            }
            None => {}
        }
    }

    fn fire_prune(&mut self, slot: u32, gen: u32, at: u64, now: Instant) {
        if !self.live_slot(slot, gen) || self.slots[slot as usize].prune_at != Some(at) {
            return;
        }
        self.slots[slot as usize].prune_at = None;
        if let Some(next) = self.allocation_mut(slot).and_then(|a| a.prune(now)) {
            self.schedule_prune(slot, next);
        }
        // The channel or its permission ended at this tick: so does the kernel path.
        self.sync_offload(slot, now);
    }

    fn fire_stats(&mut self, slot: u32, gen: u32, now_tick: u64) {
        if !self.live_slot(slot, gen) {
            return;
        }
        if let Some(alloc) = self.allocation_mut(slot) {
            if !alloc.unreported.is_zero() {
                let delta = alloc.take_unreported();
                let info = alloc.info.clone();
                self.events.push_back(Event::Traffic { info, delta });
            }
        }
        self.schedule_stats(slot, gen, now_tick);
    }

    fn fire_reservation(&mut self, token: u64, now_tick: u64) {
        if let Some(r) = self.reservations.get(&token) {
            if r.expires_tick <= now_tick {
                self.reservations.remove(&token);
                // Unless another shard redeemed it meanwhile.
                if let Some((_, port)) = self.config.port_exchange.redeem(token) {
                    self.release_port(port);
                }
            }
        }
    }
}
