//! When a woken shard should wait for a batch of received datagrams (kernel 6.12+ minimum
//! wait), and how many it should wait for.
//!
//! A wait adds latency to every datagram it holds, so it is bounded twice: by `wait_us`
//! (the kernel's minimum wait) and by the number of receives the wait asks for, which is
//! what the measured receive rate brings within `wait_us`. Only receives are counted: the
//! shard's own send completions arrive at once and are not traffic, and counting them made
//! every wait run to its full length. Below two receives per wait, waiting would only add
//! latency and the shard wakes for every completion. The rate is measured over windows of
//! 100 ms. Owns only that measurement; must not touch the ring.

use std::time::{Duration, Instant};

pub(super) struct Pacer {
    /// Minimum-wait timeout in µs (0: the kernel has none, or it is off).
    pub wait_us: u32,
    /// Receives a wait gathers at the measured rate (0 while waiting does not pay).
    per_wait: usize,
    max_batch: usize,
    window_start: Instant,
    window_count: usize,
}

impl Pacer {
    const WINDOW: Duration = Duration::from_millis(100);

    pub fn new(wait_us: u32, max_batch: usize) -> Pacer {
        Pacer {
            wait_us,
            per_wait: 0,
            max_batch: max_batch.max(2),
            window_start: Instant::now(),
            window_count: 0,
        }
    }

    pub fn waiting(&self) -> bool {
        self.per_wait >= 2 && self.wait_us > 0
    }

    /// Receives the next wait should gather before `wait_us` is over (the shard adds the
    /// completions of its own sends in flight, which also land in the queue).
    pub fn receives_wanted(&self) -> usize {
        self.per_wait.clamp(1, self.max_batch)
    }

    /// Counts `receives` completions taken at `now`.
    pub fn count(&mut self, now: Instant, receives: usize) {
        self.window_count += receives;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Self::WINDOW {
            // Receives expected within one wait: rate (per µs) × wait (µs).
            let per_wait =
                self.window_count as f64 * f64::from(self.wait_us) / elapsed.as_micros() as f64;
            self.per_wait = per_wait as usize;
            self.window_start = now;
            self.window_count = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_waits_only_when_it_gathers_a_batch() {
        let mut p = Pacer::new(100, 64);
        let start = p.window_start;
        assert!(!p.waiting(), "off until a rate is measured");
        // 1,000 receives in 100 ms: 1 per 100 µs wait: waiting would only add latency.
        p.count(start + Duration::from_millis(100), 1_000);
        assert!(!p.waiting());
        // 4,000 in 100 ms: 4 per wait, and the wait asks for those 4, not more.
        p.count(start + Duration::from_millis(200), 4_000);
        assert!(p.waiting());
        assert_eq!(p.receives_wanted(), 4);
        // Very heavy traffic: capped at the batch.
        p.count(start + Duration::from_millis(300), 1_000_000);
        assert_eq!(p.receives_wanted(), 64);
        // Traffic drops: waiting stops.
        p.count(start + Duration::from_millis(400), 3);
        assert!(!p.waiting());
        let mut off = Pacer::new(0, 64);
        off.count(off.window_start + Duration::from_millis(100), 1_000_000);
        assert!(!off.waiting(), "0 disables batching");
    }
}
