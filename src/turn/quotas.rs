//! The allocation quota ledger (`--user-quota`, `--total-quota`): how many allocations each
//! user and the whole server hold, shared by every shard of one server.
//!
//! Owns: those counts. Touched only when an allocation is created or deleted, never per
//! packet, so a small lock is fine here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Which quota a new allocation would exceed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum QuotaExceeded {
    User,
    Total,
}

/// Server-wide allocation counts, shared by all shards.
#[derive(Debug, Default)]
pub struct Quotas {
    /// Atomics so a reload (SIGHUP) can change them under running shards.
    user_quota: AtomicUsize,
    total_quota: AtomicUsize,
    counts: Mutex<QuotaCounts>,
}

#[derive(Debug, Default)]
struct QuotaCounts {
    total: usize,
    per_user: HashMap<String, usize>,
}

impl Quotas {
    /// Zero means unlimited.
    pub fn new(user_quota: usize, total_quota: usize) -> Self {
        Quotas {
            user_quota: AtomicUsize::new(user_quota),
            total_quota: AtomicUsize::new(total_quota),
            counts: Mutex::default(),
        }
    }

    /// New limits (zero: unlimited) for allocations made from now on; allocations held
    /// beyond a lowered limit stay until they end.
    pub fn set_limits(&self, user_quota: usize, total_quota: usize) {
        self.user_quota.store(user_quota, Ordering::Relaxed);
        self.total_quota.store(total_quota, Ordering::Relaxed);
    }

    /// (user quota, total quota); zero is unlimited.
    pub fn limits(&self) -> (usize, usize) {
        (
            self.user_quota.load(Ordering::Relaxed),
            self.total_quota.load(Ordering::Relaxed),
        )
    }

    /// Counts one more allocation for `username`, or says which quota is reached.
    pub fn acquire(&self, username: &str) -> Result<(), QuotaExceeded> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (user_quota, total_quota) = self.limits();
        if total_quota > 0 && counts.total >= total_quota {
            return Err(QuotaExceeded::Total);
        }
        let user = counts.per_user.get(username).copied().unwrap_or(0);
        if user_quota > 0 && user >= user_quota {
            return Err(QuotaExceeded::User);
        }
        counts.total += 1;
        *counts.per_user.entry(username.to_owned()).or_insert(0) += 1;
        Ok(())
    }

    /// Counts one more allocation for `username`, or returns false if a quota is reached.
    pub fn try_acquire(&self, username: &str) -> bool {
        self.acquire(username).is_ok()
    }

    /// Gives back what `acquire` took.
    pub fn release(&self, username: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_user.get_mut(username) {
            *n -= 1;
            if *n == 0 {
                counts.per_user.remove(username);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}
