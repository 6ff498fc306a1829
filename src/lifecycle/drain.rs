//! When to stop: the drain state machine behind SIGUSR1, SIGTERM and SIGINT, sans-IO (the
//! caller gives the time and the allocation count), so every path is a unit test.
//!
//! - SIGUSR1 (coturn's drain signal): drain until at most `--drain-min-allocations` remain.
//! - SIGTERM: the same, bounded by `--drain-timeout`; 0 stops at once (as before drains
//!   existed). A second SIGTERM stops at once.
//! - SIGINT: stops at once.
//!
//! Must not: touch shards or sockets; the caller applies [`Drain::draining`].

use std::time::{Duration, Instant};

/// How often a drain logs the allocations left.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Usr1,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Stop now: every remaining allocation is deleted through the core.
    Stop(&'static str),
}

#[derive(Debug)]
pub struct Drain {
    min_allocations: usize,
    timeout: Duration,
    started: Option<Instant>,
    deadline: Option<Instant>,
    terms: u32,
    last_log: Option<Instant>,
}

impl Drain {
    pub fn new(min_allocations: usize, timeout: Duration) -> Drain {
        Drain {
            min_allocations,
            timeout,
            started: None,
            deadline: None,
            terms: 0,
            last_log: None,
        }
    }

    /// New limits from a reloaded configuration; a drain under way keeps its deadline.
    pub fn set_limits(&mut self, min_allocations: usize, timeout: Duration) {
        self.min_allocations = min_allocations;
        self.timeout = timeout;
    }

    pub fn draining(&self) -> bool {
        self.started.is_some()
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn on_signal(&mut self, signal: Signal, now: Instant) -> Step {
        match signal {
            Signal::Int => Step::Stop("SIGINT"),
            Signal::Term => {
                self.terms += 1;
                if self.terms > 1 {
                    return Step::Stop("second SIGTERM");
                }
                if self.timeout.is_zero() {
                    return Step::Stop("SIGTERM (--drain-timeout 0)");
                }
                self.started.get_or_insert(now);
                self.deadline = Some(now + self.timeout);
                Step::Continue
            }
            Signal::Usr1 => {
                self.started.get_or_insert(now);
                Step::Continue
            }
        }
    }

    /// Called every few hundred milliseconds with the allocations alive now.
    pub fn poll(&mut self, now: Instant, allocations: usize) -> Step {
        if self.started.is_none() {
            return Step::Continue;
        }
        if allocations <= self.min_allocations {
            return Step::Stop("drained");
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Step::Stop("--drain-timeout reached");
        }
        Step::Continue
    }

    /// Whether to log the remaining allocations now (every [`LOG_EVERY`] while draining).
    pub fn should_log(&mut self, now: Instant) -> bool {
        if self.started.is_none() {
            return false;
        }
        match self.last_log {
            Some(at) if now.duration_since(at) < LOG_EVERY => false,
            _ => {
                self.last_log = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn sigterm_without_a_timeout_stops_at_once() {
        let t = Instant::now();
        let mut d = Drain::new(0, Duration::ZERO);
        assert!(matches!(d.on_signal(Signal::Term, t), Step::Stop(_)));
    }

    #[test]
    fn sigint_always_stops_at_once() {
        let t = Instant::now();
        let mut d = Drain::new(0, 60 * S);
        assert_eq!(d.on_signal(Signal::Usr1, t), Step::Continue);
        assert!(matches!(d.on_signal(Signal::Int, t), Step::Stop(_)));
    }

    #[test]
    fn sigusr1_drains_until_the_minimum_then_stops() {
        let t = Instant::now();
        let mut d = Drain::new(2, Duration::ZERO);
        assert_eq!(d.poll(t, 0), Step::Continue, "not draining yet");
        assert_eq!(d.on_signal(Signal::Usr1, t), Step::Continue);
        assert!(d.draining());
        assert_eq!(d.poll(t + 3600 * S, 3), Step::Continue, "no deadline");
        assert_eq!(d.poll(t + 3600 * S, 2), Step::Stop("drained"));
    }

    #[test]
    fn sigterm_drains_up_to_the_timeout_and_a_second_one_stops() {
        let t = Instant::now();
        let mut d = Drain::new(0, 30 * S);
        assert_eq!(d.on_signal(Signal::Term, t), Step::Continue);
        assert_eq!(d.poll(t + 29 * S, 5), Step::Continue);
        assert_eq!(d.poll(t + 30 * S, 5), Step::Stop("--drain-timeout reached"));
        let mut d = Drain::new(0, 30 * S);
        d.on_signal(Signal::Term, t);
        assert_eq!(d.poll(t + S, 0), Step::Stop("drained"));
        let mut d = Drain::new(0, 30 * S);
        d.on_signal(Signal::Term, t);
        assert_eq!(
            d.on_signal(Signal::Term, t + S),
            Step::Stop("second SIGTERM")
        );
    }

    #[test]
    fn sigterm_during_a_sigusr1_drain_bounds_it() {
        let t = Instant::now();
        let mut d = Drain::new(0, 10 * S);
        d.on_signal(Signal::Usr1, t);
        assert_eq!(d.deadline(), None);
        d.on_signal(Signal::Term, t + 100 * S);
        assert_eq!(d.deadline(), Some(t + 110 * S));
        assert_eq!(
            d.poll(t + 110 * S, 9),
            Step::Stop("--drain-timeout reached")
        );
    }

    #[test]
    fn remaining_allocations_are_logged_every_few_seconds() {
        let t = Instant::now();
        let mut d = Drain::new(0, Duration::ZERO);
        assert!(!d.should_log(t));
        d.on_signal(Signal::Usr1, t);
        assert!(d.should_log(t));
        assert!(!d.should_log(t + S));
        assert!(d.should_log(t + LOG_EVERY));
    }
}
