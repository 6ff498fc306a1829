//! Relay port choice within a shard's range (RFC 8656 §7.2: EVEN-PORT and
//! RESERVATION-TOKEN).
//!
//! Owns: which of the shard's ports are free, reserved or in use. Free ports are handed out
//! first-in first-out, so a released port rests as long as possible before reuse (late
//! datagrams for the old allocation find nobody).

use std::collections::VecDeque;
use std::ops::RangeInclusive;

#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    range: RangeInclusive<u16>,
}

impl PortPool {
    /// A pool of every port in `range`, in an order shuffled by `seed` so relay ports are
    /// not predictable.
    pub fn new(range: RangeInclusive<u16>, seed: u64) -> Self {
        let mut ports: Vec<u16> = range.clone().collect();
        let mut state = seed | 1;
        for i in (1..ports.len()).rev() {
            // xorshift64*: good enough to spread ports, not a secret.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ports.swap(i, (r % (i as u64 + 1)) as usize);
        }
        PortPool {
            free: ports.into(),
            range,
        }
    }

    pub fn range(&self) -> &RangeInclusive<u16> {
        &self.range
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes the port that has been free longest.
    pub fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    /// Takes an even port; with `reserve_next` also its successor (which must be free).
    /// Returns the even port. O(free ports): EVEN-PORT is rare.
    pub fn take_even(&mut self, reserve_next: bool) -> Option<u16> {
        let pos = self.free.iter().position(|&p| {
            p % 2 == 0 && (!reserve_next || (p < u16::MAX && self.free.contains(&(p + 1))))
        })?;
        let port = self.free.remove(pos)?;
        if reserve_next {
            self.take_specific(port + 1);
        }
        Some(port)
    }

    /// Removes a specific port from the free list; false if it was not free.
    pub fn take_specific(&mut self, port: u16) -> bool {
        match self.free.iter().position(|&p| p == port) {
            Some(pos) => {
                self.free.remove(pos);
                true
            }
            None => false,
        }
    }

    /// Gives a port back (to the end of the queue).
    pub fn release(&mut self, port: u16) {
        if self.range.contains(&port) {
            self.free.push_back(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_exhaustion() {
        let mut pool = PortPool::new(50000..=50003, 42);
        let mut got: Vec<u16> = std::iter::from_fn(|| pool.take()).collect();
        got.sort();
        assert_eq!(got, vec![50000, 50001, 50002, 50003]);
        assert_eq!(pool.take(), None);
        pool.release(50002);
        pool.release(50000);
        pool.release(40000); // not ours: ignored
        assert_eq!(pool.take(), Some(50002));
        assert_eq!(pool.take(), Some(50000));
        assert_eq!(pool.take(), None);
    }

    #[test]
    fn even_port_with_reservation() {
        let mut pool = PortPool::new(50000..=50009, 1);
        let p = pool.take_even(true).unwrap();
        assert_eq!(p % 2, 0);
        assert!(!pool.take_specific(p + 1), "successor must be reserved");
        assert_eq!(pool.free_count(), 8);
        // Only odd ports left after taking all even ones with reservation.
        while pool.take_even(true).is_some() {}
        assert!(pool.free.iter().all(|p| p % 2 == 1) || pool.free.is_empty());
    }
}
