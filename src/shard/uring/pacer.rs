//! When a woken shard should wait for a batch of completions (kernel 6.12+ minimum wait).
//!
//! Batched wakeups only pay while completions come often enough that a wait of `wait_us`
//! gathers more than one; below that rate waiting would only add latency. The rate is
//! measured over windows of 100 ms. Owns only that measurement; must not touch the ring.

use std::time::{Duration, Instant};

pub(super) struct Pacer {
    /// Minimum-wait timeout in µs (0: the kernel has none, or it is off).
    pub wait_us: u32,
    window_start: Instant,
    window_count: usize,
    on: bool,
}

impl Pacer {
    const WINDOW: Duration = Duration::from_millis(100);

    pub fn new(wait_us: u32) -> Pacer {
        Pacer {
            wait_us,
            window_start: Instant::now(),
            window_count: 0,
            on: false,
        }
    }

    pub fn waiting(&self) -> bool {
        self.on && self.wait_us > 0
    }

    pub fn count(&mut self, now: Instant, completions: usize) {
        self.window_count += completions;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Self::WINDOW {
            // Completions expected within one wait: rate (per µs) × wait (µs).
            let per_wait =
                self.window_count as f64 * f64::from(self.wait_us) / elapsed.as_micros() as f64;
            self.on = per_wait >= 1.0;
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
        let start = Instant::now();
        let mut p = Pacer::new(200);
        assert!(!p.waiting(), "off until a rate is measured");
        // 100 completions in 100 ms: 0.2 per 200 µs wait: not worth waiting.
        p.count(start + Duration::from_millis(100), 100);
        assert!(!p.waiting());
        // 10,000 in 100 ms: 20 per wait.
        p.count(start + Duration::from_millis(200), 10_000);
        assert!(p.waiting());
        // Traffic drops: waiting stops.
        p.count(start + Duration::from_millis(300), 3);
        assert!(!p.waiting());
        let mut off = Pacer::new(0);
        off.count(start + Duration::from_millis(100), 1_000_000);
        assert!(!off.waiting(), "0 disables batching");
    }
}
