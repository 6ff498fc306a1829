//! What the Redis user database remembers between lookups: long-term keys (positive cache),
//! users Redis did not know (negative cache), the realm's REST secrets, and a limiter on
//! lookups of users that are in neither cache.
//!
//! Owns: bounds and expiry of all three. Must not: talk to Redis (the worker does) or
//! block (shards take the lock for a map lookup only).

use crate::stun::LongTermKey;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Tunables of the caches and the lookup limiter.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// A known user's key is used this long before Redis is asked again.
    pub positive_ttl: Duration,
    /// While Redis is unreachable, a known user's key is still used this long after it
    /// was fetched (established users keep allocating through a short Redis outage).
    pub stale_grace: Duration,
    pub positive_capacity: usize,
    /// An unknown user is answered 401 from memory this long.
    pub negative_ttl: Duration,
    pub negative_capacity: usize,
    /// REST secrets are fetched again this often.
    pub secrets_ttl: Duration,
    /// Lookups of users in neither cache, per second, from all clients.
    pub misses_per_second: u32,
    /// … and from one client IP address.
    pub misses_per_second_per_ip: u32,
    /// Client addresses the per-IP limiter tracks within one second; beyond, new
    /// addresses are refused a lookup until the next second.
    pub limiter_addresses: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            positive_ttl: Duration::from_secs(30),
            stale_grace: Duration::from_secs(600),
            positive_capacity: 100_000,
            negative_ttl: Duration::from_secs(10),
            negative_capacity: 10_000,
            secrets_ttl: Duration::from_secs(10),
            misses_per_second: 2_000,
            misses_per_second_per_ip: 50,
            limiter_addresses: 4_096,
        }
    }
}

/// What the cache can say about a user without Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    Key(LongTermKey),
    Unknown,
    /// Not in memory (or too old): Redis must be asked.
    Miss,
}

pub struct Cache {
    options: CacheOptions,
    positive: HashMap<String, (LongTermKey, Instant)>,
    negative: HashMap<String, Instant>,
    /// The realm's REST secrets (sorted) and when they were fetched.
    secrets: Option<(Vec<String>, Instant)>,
    limiter: MissLimiter,
}

impl Cache {
    pub fn new(options: CacheOptions, now: Instant) -> Cache {
        Cache {
            limiter: MissLimiter::new(now),
            options,
            positive: HashMap::new(),
            negative: HashMap::new(),
            secrets: None,
        }
    }

    /// `redis_up`: whether a stale key may be refreshed; if not, it is used up to the
    /// grace period.
    pub fn user(&self, now: Instant, username: &str, redis_up: bool) -> Cached {
        if let Some((key, at)) = self.positive.get(username) {
            let age = now.saturating_duration_since(*at);
            if age < self.options.positive_ttl || (!redis_up && age < self.options.stale_grace) {
                return Cached::Key(*key);
            }
        }
        if let Some(at) = self.negative.get(username) {
            if now.saturating_duration_since(*at) < self.options.negative_ttl {
                return Cached::Unknown;
            }
        }
        Cached::Miss
    }

    /// Whether a lookup of a user in neither cache may go to Redis now.
    pub fn allow_lookup(&mut self, now: Instant, client: IpAddr) -> bool {
        self.limiter.allow(now, client, &self.options)
    }

    pub fn store_user(&mut self, now: Instant, username: &str, key: Option<LongTermKey>) {
        match key {
            Some(key) => {
                self.negative.remove(username);
                if self.positive.len() >= self.options.positive_capacity
                    && !self.positive.contains_key(username)
                {
                    let keep = self.options.stale_grace;
                    self.positive
                        .retain(|_, (_, at)| now.saturating_duration_since(*at) < keep);
                    if self.positive.len() >= self.options.positive_capacity {
                        // Still full of live users: forget one; it is fetched again if used.
                        if let Some(victim) = self.positive.keys().next().cloned() {
                            self.positive.remove(&victim);
                        }
                    }
                }
                self.positive.insert(username.to_owned(), (key, now));
            }
            None => {
                self.positive.remove(username);
                if self.negative.len() >= self.options.negative_capacity
                    && !self.negative.contains_key(username)
                {
                    let ttl = self.options.negative_ttl;
                    self.negative
                        .retain(|_, at| now.saturating_duration_since(*at) < ttl);
                    if self.negative.len() >= self.options.negative_capacity {
                        // A flood of fresh unknown names: dropping them costs at most the
                        // limiter's lookups again, keeping them would cost unbounded memory.
                        self.negative.clear();
                    }
                }
                self.negative.insert(username.to_owned(), now);
            }
        }
    }

    /// The REST secrets, if ever fetched (stale ones included: the worker keeps them fresh).
    pub fn secrets(&self) -> Option<&[String]> {
        self.secrets.as_ref().map(|(s, _)| s.as_slice())
    }

    pub fn secrets_due(&self, now: Instant) -> bool {
        match &self.secrets {
            None => true,
            Some((_, at)) => now.saturating_duration_since(*at) >= self.options.secrets_ttl,
        }
    }

    pub fn store_secrets(&mut self, now: Instant, mut secrets: Vec<String>) {
        secrets.sort();
        self.secrets = Some((secrets, now));
    }

    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize) {
        (self.positive.len(), self.negative.len())
    }
}

/// Fixed one-second windows: a global budget and a per-address budget of lookups.
struct MissLimiter {
    window: Instant,
    global: u32,
    per_ip: HashMap<IpAddr, u32>,
}

impl MissLimiter {
    fn new(now: Instant) -> MissLimiter {
        MissLimiter {
            window: now,
            global: 0,
            per_ip: HashMap::new(),
        }
    }

    fn allow(&mut self, now: Instant, client: IpAddr, o: &CacheOptions) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.global = 0;
            self.per_ip.clear();
        }
        if self.global >= o.misses_per_second {
            return false;
        }
        let tracked = self.per_ip.len();
        let count = match self.per_ip.get_mut(&client) {
            Some(c) => c,
            None if tracked >= o.limiter_addresses => return false,
            None => self.per_ip.entry(client).or_insert(0),
        };
        if *count >= o.misses_per_second_per_ip {
            return false;
        }
        *count += 1;
        self.global += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> CacheOptions {
        CacheOptions {
            positive_capacity: 3,
            negative_capacity: 3,
            misses_per_second: 5,
            misses_per_second_per_ip: 2,
            limiter_addresses: 2,
            ..CacheOptions::default()
        }
    }

    #[test]
    fn positive_entries_expire_but_serve_stale_while_redis_is_down() {
        let t0 = Instant::now();
        let mut c = Cache::new(opts(), t0);
        c.store_user(t0, "alice", Some([1; 16]));
        assert_eq!(c.user(t0, "alice", true), Cached::Key([1; 16]));
        let later = t0 + Duration::from_secs(31);
        assert_eq!(c.user(later, "alice", true), Cached::Miss);
        assert_eq!(c.user(later, "alice", false), Cached::Key([1; 16]));
        let much_later = t0 + Duration::from_secs(601);
        assert_eq!(c.user(much_later, "alice", false), Cached::Miss);
    }

    #[test]
    fn negative_entries_expire_and_stay_bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(opts(), t0);
        for i in 0..100 {
            c.store_user(t0, &format!("u{i}"), None);
            assert!(c.sizes().1 <= 3);
        }
        assert_eq!(c.user(t0, "u99", true), Cached::Unknown);
        assert_eq!(
            c.user(t0 + Duration::from_secs(11), "u99", true),
            Cached::Miss
        );
    }

    #[test]
    fn a_user_found_again_leaves_the_negative_cache() {
        let t0 = Instant::now();
        let mut c = Cache::new(opts(), t0);
        c.store_user(t0, "bob", None);
        c.store_user(t0, "bob", Some([2; 16]));
        assert_eq!(c.user(t0, "bob", true), Cached::Key([2; 16]));
        c.store_user(t0, "bob", None);
        assert_eq!(c.user(t0, "bob", true), Cached::Unknown);
    }

    #[test]
    fn positive_cache_stays_bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(opts(), t0);
        for i in 0..50 {
            c.store_user(t0, &format!("u{i}"), Some([i; 16]));
            assert!(c.sizes().0 <= 3);
        }
        assert_eq!(c.user(t0, "u49", true), Cached::Key([49; 16]));
    }

    #[test]
    fn limiter_bounds_lookups_per_address_and_in_all_per_second() {
        let t0 = Instant::now();
        let mut c = Cache::new(opts(), t0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let d: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(c.allow_lookup(t0, a));
        assert!(c.allow_lookup(t0, a));
        assert!(!c.allow_lookup(t0, a), "per-address budget is 2");
        assert!(c.allow_lookup(t0, b));
        assert!(
            !c.allow_lookup(t0, d),
            "only 2 addresses tracked per second"
        );
        let next = t0 + Duration::from_secs(1);
        assert!(c.allow_lookup(next, a), "a new second, a new budget");
        assert!(c.allow_lookup(next, d));
    }
}
