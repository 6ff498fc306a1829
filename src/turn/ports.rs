//! Relay port choice within a shard's range (RFC 8656 §7.2: EVEN-PORT and
//! RESERVATION-TOKEN), and the few port facts shards share.
//!
//! Owns: which of the shard's ports are free, reserved or in use. Free ports are handed out
//! first-in first-out, so a released port rests as long as possible before reuse (late
//! datagrams for the old allocation find nobody). Every operation is O(1) amortised except
//! `take_even`, which scans the queue front for an even port (half the ports are).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Mutex;

#[derive(Debug)]
pub struct PortPool {
    /// Candidates in FIFO order; an entry whose `free` bit is clear is stale and skipped.
    queue: VecDeque<u16>,
    free: Vec<bool>,
    free_count: usize,
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
            free: vec![true; ports.len()],
            free_count: ports.len(),
            queue: ports.into(),
            range,
        }
    }

    pub fn range(&self) -> &RangeInclusive<u16> {
        &self.range
    }

    pub fn free_count(&self) -> usize {
        self.free_count
    }

    fn index(&self, port: u16) -> Option<usize> {
        self.range
            .contains(&port)
            .then(|| usize::from(port - self.range.start()))
    }

    pub fn is_free(&self, port: u16) -> bool {
        self.index(port).is_some_and(|i| self.free[i])
    }

    fn mark_taken(&mut self, port: u16) -> bool {
        match self.index(port) {
            Some(i) if self.free[i] => {
                self.free[i] = false;
                self.free_count -= 1;
                true
            }
            _ => false,
        }
    }

    /// Takes the port that has been free longest.
    pub fn take(&mut self) -> Option<u16> {
        while let Some(port) = self.queue.pop_front() {
            if self.mark_taken(port) {
                return Some(port);
            }
        }
        None
    }

    /// Takes an even port; with `reserve_next` also its successor (which must be free).
    pub fn take_even(&mut self, reserve_next: bool) -> Option<u16> {
        let port = self.queue.iter().copied().find(|&p| {
            p % 2 == 0
                && self.is_free(p)
                && (!reserve_next || (p < u16::MAX && self.is_free(p + 1)))
        })?;
        self.mark_taken(port);
        if reserve_next {
            self.mark_taken(port + 1);
        }
        self.compact();
        Some(port)
    }

    /// Takes a specific port out of the pool; false if it was not free.
    pub fn take_specific(&mut self, port: u16) -> bool {
        let taken = self.mark_taken(port);
        self.compact();
        taken
    }

    /// Gives a port back (to the end of the queue). Ports outside the range are ignored.
    pub fn release(&mut self, port: u16) {
        if let Some(i) = self.index(port) {
            if !self.free[i] {
                self.free[i] = true;
                self.free_count += 1;
                self.queue.push_back(port);
            }
        }
    }

    /// Drops stale queue entries once they outnumber the live ones.
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.free_count + 64 {
            let (free, start) = (&self.free, *self.range.start());
            self.queue.retain(|&p| free[usize::from(p - start)]);
        }
    }
}

/// Relay-port facts shared by the shards of one server, touched only when allocations
/// are created or deleted, never per packet:
/// - RESERVATION-TOKENs: the Allocate that redeems one may arrive on another shard than
///   the one that reserved the port (SO_REUSEPORT spreads clients by source port), so the
///   reserved port travels with the token;
/// - ports freed by a shard that does not own them (a redeemed reservation) go back to
///   their owner through `returned`.
#[derive(Debug, Default)]
pub struct PortExchange {
    reservations: Mutex<HashMap<u64, (IpAddr, u16)>>,
    returned: Mutex<Vec<u16>>,
}

impl PortExchange {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn reserve(&self, token: u64, ip: IpAddr, port: u16) {
        if let Ok(mut r) = self.reservations.lock() {
            r.insert(token, (ip, port));
        }
    }

    /// Redeems a token (once).
    pub fn redeem(&self, token: u64) -> Option<(IpAddr, u16)> {
        self.reservations.lock().ok()?.remove(&token)
    }

    /// A port freed by a shard that does not own it.
    pub fn give_back(&self, port: u16) {
        if let Ok(mut r) = self.returned.lock() {
            r.push(port);
        }
    }

    /// Moves the returned ports that belong to `pool` into it.
    pub fn reclaim(&self, pool: &mut PortPool) {
        let Ok(mut returned) = self.returned.lock() else {
            return;
        };
        if returned.is_empty() {
            return;
        }
        returned.retain(|&p| {
            if pool.range().contains(&p) {
                pool.release(p);
                false
            } else {
                true
            }
        });
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
        assert!((50000..=50009)
            .filter(|p| pool.is_free(*p))
            .all(|p| p % 2 == 1));
        assert_eq!(pool.take_even(false), None);
    }

    #[test]
    fn stale_entries_never_hand_out_a_taken_port() {
        let mut pool = PortPool::new(1000..=1099, 7);
        assert!(pool.take_specific(1050));
        pool.release(1050);
        assert!(pool.take_specific(1050));
        let mut got: Vec<u16> = std::iter::from_fn(|| pool.take()).collect();
        got.sort();
        assert_eq!(got.len(), 99);
        assert!(!got.contains(&1050));
        assert_eq!(pool.free_count(), 0);
        pool.release(1050);
        pool.release(1050);
        assert_eq!(pool.take(), Some(1050));
        assert_eq!(
            pool.take(),
            None,
            "a double release gives the port out once"
        );
    }

    #[test]
    fn exchange_moves_reservations_and_ports_between_shards() {
        let x = PortExchange::new();
        let mut a = PortPool::new(1000..=1009, 1);
        let mut b = PortPool::new(1010..=1019, 2);
        let p = a.take_even(true).unwrap();
        x.reserve(9, "192.0.2.1".parse().unwrap(), p + 1);
        assert_eq!(x.redeem(9), Some(("192.0.2.1".parse().unwrap(), p + 1)));
        assert_eq!(x.redeem(9), None, "a token is redeemed once");
        // Shard b used a's port and frees it: it goes back to a, not b.
        x.give_back(p + 1);
        x.reclaim(&mut b);
        assert!(!b.is_free(p + 1));
        x.reclaim(&mut a);
        assert!(a.is_free(p + 1));
    }
}
