//! A hashed timer wheel over ticks since an epoch (the core uses 100 ms ticks: lifetimes
//! expire never early and at most a tick late).
//!
//! Owns: when things fall due. Must not: know what the entries mean. Cost per tick is the
//! number of entries in the slots that tick passes, not the number of entries held, so a
//! shard with 50,000 allocations pays nothing for the ones not due. Entries are not removed
//! when their subject is refreshed or deleted: the owner checks an entry when it fires and
//! either acts, reschedules it, or drops it (lazy cancellation).

/// Number of slots; at 100 ms ticks the wheel turns in 27 minutes, longer than default
/// lifetimes, so most entries fire on their first visit (entries further out, like
/// hour-long allocations, are simply kept for another turn).
const SLOTS: usize = 16384;

/// Timer wheel over ticks since an epoch.
#[derive(Debug)]
pub struct TimerWheel<T> {
    slots: Vec<Vec<(u64, T)>>,
    /// Every slot up to and including this tick has been processed.
    current: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    pub fn new(now_tick: u64) -> Self {
        let mut slots = Vec::with_capacity(SLOTS);
        slots.resize_with(SLOTS, Vec::new);
        TimerWheel {
            slots,
            current: now_tick,
            len: 0,
        }
    }

    /// Schedules `item` to fire once `now_tick >= deadline_tick`. A deadline in the past fires
    /// at the next tick.
    pub fn schedule(&mut self, deadline_tick: u64, item: T) {
        let deadline = deadline_tick.max(self.current + 1);
        self.slots[(deadline % SLOTS as u64) as usize].push((deadline, item));
        self.len += 1;
    }

    /// Moves every entry due at `now_tick` into `due`.
    pub fn advance(&mut self, now_tick: u64, due: &mut Vec<T>) {
        if now_tick <= self.current {
            return;
        }
        // After a jump longer than the wheel, one pass over every slot sees everything.
        let steps = (now_tick - self.current).min(SLOTS as u64);
        for step in 1..=steps {
            let tick = self.current + step;
            let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= now_tick {
                    let (_, item) = slot.swap_remove(i);
                    due.push(item);
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
        }
        self.current = now_tick;
    }

    /// The tick the wheel has been advanced to.
    pub fn current(&self) -> u64 {
        self.current
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_exactly_at_deadline() {
        let mut w = TimerWheel::new(0);
        w.schedule(600, "a");
        let far = SLOTS as u64 + 904;
        w.schedule(far, "far");
        let mut due = Vec::new();
        w.advance(599, &mut due);
        assert!(due.is_empty());
        w.advance(600, &mut due);
        assert_eq!(due, vec!["a"]);
        due.clear();
        // The far entry shares a slot with tick 904 and must survive it.
        w.advance(far - 1, &mut due);
        assert!(due.is_empty());
        assert_eq!(w.len(), 1);
        w.advance(far, &mut due);
        assert_eq!(due, vec!["far"]);
        assert!(w.is_empty());
    }

    #[test]
    fn long_jump_sees_everything() {
        let mut w = TimerWheel::new(10);
        for d in [11u64, 100, 4000, 9000, 40_000] {
            w.schedule(d, d);
        }
        let mut due = Vec::new();
        w.advance(50_000, &mut due);
        due.sort();
        assert_eq!(due, vec![11, 100, 4000, 9000, 40_000]);
    }

    #[test]
    fn past_deadline_fires_next_tick() {
        let mut w = TimerWheel::new(50);
        w.schedule(3, ());
        let mut due = Vec::new();
        w.advance(51, &mut due);
        assert_eq!(due.len(), 1);
    }
}
