//! Relay port choice (RFC 8656 §7.2: EVEN-PORT and RESERVATION-TOKEN): each shard's slice
//! of the range, and the exchange through which shards share slices and reservations.
//!
//! Owns: which of the shard's ports are free, reserved or in use. Free ports are handed out
//! first-in first-out, so a released port rests as long as possible before reuse (late
//! datagrams for the old allocation find nobody). Every operation is O(1) amortised except
//! `take_even`, which scans the queue front for an even port (half the ports are).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, RwLock};

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

/// Relay ports shared by the shards of one server, touched only when allocations are
/// created or deleted, never per packet:
/// - every shard's [`PortPool`] (its slice of the range), each behind its own lock: a shard
///   takes from its own slice first and borrows from the others' only when its slice is
///   empty, so 508 means the whole range is in use, not just one shard's share; a port goes
///   back to the slice it belongs to, whoever frees it;
/// - RESERVATION-TOKENs: the Allocate that redeems one may arrive on another shard than
///   the one that reserved the port (SO_REUSEPORT spreads clients by source port), so the
///   reserved port travels with the token.
///
/// Locks are never held two at a time, so shards cannot deadlock on them.
#[derive(Debug, Default)]
pub struct PortExchange {
    pools: RwLock<Vec<Arc<Mutex<PortPool>>>>,
    reservations: Mutex<HashMap<u64, (IpAddr, u16)>>,
}

/// A shard's place in a [`PortExchange`], from [`PortExchange::register`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Slice(usize);

fn lock(pool: &Mutex<PortPool>) -> std::sync::MutexGuard<'_, PortPool> {
    // A poisoned pool is still consistent: every operation leaves it valid before it can
    // panic (none does).
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

impl PortExchange {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a shard's slice of ports (shuffled by `seed`); returns its place.
    pub fn register(&self, range: RangeInclusive<u16>, seed: u64) -> Slice {
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        pools.push(Arc::new(Mutex::new(PortPool::new(range, seed))));
        Slice(pools.len() - 1)
    }

    fn pools(&self) -> Vec<Arc<Mutex<PortPool>>> {
        self.pools.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes a port: from `home` first, then from the other slices in turn. `even`:
    /// EVEN-PORT, with `Some(true)` also holding the successor (RFC 8656 §7.2).
    pub fn take(&self, home: Slice, even: Option<bool>) -> Option<u16> {
        let pools = self.pools();
        let n = pools.len();
        (0..n).find_map(|i| {
            let mut pool = lock(&pools[(home.0 + i) % n]);
            match even {
                Some(reserve_next) => pool.take_even(reserve_next),
                None => pool.take(),
            }
        })
    }

    /// Free ports in every slice.
    pub fn free_count(&self) -> usize {
        self.pools().iter().map(|p| lock(p).free_count()).sum()
    }

    /// Gives a port back to the slice it belongs to.
    pub fn release(&self, port: u16) {
        for pool in self.pools() {
            let mut pool = lock(&pool);
            if pool.range().contains(&port) {
                pool.release(port);
                return;
            }
        }
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
    fn reservations_travel_and_ports_go_home() {
        let x = PortExchange::new();
        let a = x.register(1000..=1009, 1);
        let b = x.register(1010..=1019, 2);
        let p = x.take(a, Some(true)).unwrap();
        assert!((1000..=1009).contains(&p) && p.is_multiple_of(2));
        x.reserve(9, "192.0.2.1".parse().unwrap(), p + 1);
        assert_eq!(x.redeem(9), Some(("192.0.2.1".parse().unwrap(), p + 1)));
        assert_eq!(x.redeem(9), None, "a token is redeemed once");
        assert_eq!(x.free_count(), 18);
        // Shard b used a's port and frees it: it goes back to a's slice.
        x.release(p + 1);
        x.release(p);
        assert_eq!(x.free_count(), 20);
        let mut from_b: Vec<u16> = std::iter::from_fn(|| x.take(b, None)).collect();
        assert_eq!(
            from_b.len(),
            20,
            "b borrows a's whole slice once its own is empty"
        );
        assert!(
            from_b[..10].iter().all(|p| (1010..=1019).contains(p)),
            "home first"
        );
        from_b.sort();
        assert_eq!(from_b, (1000..=1019).collect::<Vec<u16>>());
        assert_eq!(x.take(a, None), None);
        assert_eq!(x.free_count(), 0);
    }
}
