//! Sub-millisecond pacing for the load loops. epoll's timeout counts whole milliseconds
//! (mio rounds a shorter wait up to 1 ms), so a loop that sleeps in it between sends sends
//! a millisecond's worth of datagrams at once: at 10,000 datagrams/s, bursts of about ten,
//! each queued behind the relaying of the ones before it. A one-shot timerfd in the same
//! poll set wakes the loop when the next datagram is due instead (`--pace-ms` turns it off,
//! for comparing with figures taken without it).

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `--pace-ms`: wait in epoll's timeout, rounded up to a millisecond, not for the timer.
static MILLISECOND_PACING: AtomicBool = AtomicBool::new(false);

pub fn set_millisecond_pacing(on: bool) {
    MILLISECOND_PACING.store(on, Ordering::Relaxed);
}

/// The timer's token in the loop's poll set (the loops number their sockets from 0).
pub const PACER: Token = Token(usize::MAX);

pub struct Pacer {
    timer: TimerFd,
}

impl Pacer {
    pub fn new(registry: &Registry) -> Self {
        let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK)
            .expect("timerfd_create");
        registry
            .register(
                &mut SourceFd(&timer.as_fd().as_raw_fd()),
                PACER,
                Interest::READABLE,
            )
            .expect("register the pacing timer");
        Pacer { timer }
    }

    /// The timeout for the loop's next poll when the next datagram is due in `wait`:
    /// none if it is due now; otherwise the timer is armed for `wait` and the poll's own
    /// timeout (`cap`) only bounds a lost wakeup (with `--pace-ms`: `wait`, at most 1 ms,
    /// which epoll rounds up to 1 ms).
    pub fn wait(&self, wait: Duration, cap: Duration) -> Duration {
        if wait.is_zero() {
            return Duration::ZERO;
        }
        if MILLISECOND_PACING.load(Ordering::Relaxed) {
            return wait.min(Duration::from_millis(1));
        }
        self.timer
            .set(
                Expiration::OneShot(TimeSpec::from_duration(wait)),
                TimerSetTimeFlags::empty(),
            )
            .expect("timerfd_settime");
        cap
    }

    /// Takes the expiry of a wakeup by the timer (so its readiness does not linger).
    pub fn woken(&self) {
        let _ = self.timer.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Instant;

    /// A wait shorter than a millisecond ends by the timer, well before the poll's cap.
    #[test]
    fn a_sub_millisecond_wait_is_woken_by_the_timer() {
        let mut poll = Poll::new().unwrap();
        let pacer = Pacer::new(poll.registry());
        let mut events = Events::with_capacity(8);
        for _ in 0..20 {
            let start = Instant::now();
            let timeout = pacer.wait(Duration::from_micros(200), Duration::from_secs(5));
            assert_eq!(
                timeout,
                Duration::from_secs(5),
                "the cap only bounds a lost wakeup"
            );
            poll.poll(&mut events, Some(timeout)).unwrap();
            assert!(
                events.iter().any(|e| e.token() == PACER),
                "woken by the timer, not the cap"
            );
            assert!(
                start.elapsed() >= Duration::from_micros(200),
                "not before it is due"
            );
            pacer.woken();
        }
        // Nothing due: no wait at all.
        assert_eq!(
            pacer.wait(Duration::ZERO, Duration::from_secs(5)),
            Duration::ZERO
        );
    }
}
