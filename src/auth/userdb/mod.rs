//! coturn's Redis user database (`--redis-userdb`) as an [`Observer`]: long-term keys at
//! `turn/realm/<realm>/user/<user>/key` (32 hex digits, as `turnadmin -a` writes them; a
//! plain `…/password` is accepted too) and, with `--use-auth-secret`, TURN REST secrets in
//! the set `turn/realm/<realm>/secret` (as `turnadmin -s` writes it).
//!
//! Owns: the answer a shard gets for a user — from the cache at once, or `Pending` with
//! the request's ticket handed to the side thread ([`worker`]) that asks Redis.
//! Must not: make a shard wait on Redis, or let unauthenticated traffic create unbounded
//! state or unbounded Redis load: caches are bounded, lookups of unknown names are limited
//! per second (in all and per client address), the job queue is bounded.
//!
//! Redis away: users in the cache keep authenticating (stale keys up to
//! [`CacheOptions::stale_grace`]), others get 401 at once, and a log line says why;
//! established allocations never ask (the core keeps their key).
//!
//! Every REST secret in the set is valid (rotation): the answer is the key the request's
//! MESSAGE-INTEGRITY verifies with.

mod cache;
mod worker;

pub use cache::CacheOptions;
pub use worker::{parse_hex_key, secret_key, user_key};

use crate::auth::{AuthDecision, AuthRequest, Observer, RestApiSecret, Ticket};
use crate::config::RedisTarget;
use crate::stun::long_term_key;
use cache::{Cache, Cached};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const STATE_CONNECTING: u8 = 0;
const STATE_UP: u8 = 1;
const STATE_DOWN: u8 = 2;

/// Jobs waiting for the side thread at most; beyond, requests get 401 at once.
const QUEUE_BOUND: usize = 4_096;

/// What the user database did, readable from any thread (metrics).
#[derive(Debug, Default)]
pub struct UserDbCounters {
    /// 1 while the side thread holds a working connection.
    pub connected: AtomicU64,
    /// Jobs handed to the side thread and not yet taken.
    pub queue_depth: AtomicU64,
    /// Users asked of Redis.
    pub lookups: AtomicU64,
    pub found: AtomicU64,
    pub not_found: AtomicU64,
    /// Answers from the positive / negative cache.
    pub cache_hits: AtomicU64,
    pub negative_hits: AtomicU64,
    /// Refused without asking Redis: the per-second lookup budget was spent.
    pub limited: AtomicU64,
    /// Refused without asking Redis: the job queue (or the shard's parking) was full.
    pub dropped: AtomicU64,
    /// Refused because Redis was unreachable.
    pub redis_down_refusals: AtomicU64,
    /// Redis errors on an established connection.
    pub errors: AtomicU64,
}

/// State shared by the observer (shard threads) and the side thread.
struct Shared {
    cache: Mutex<Cache>,
    state: AtomicU8,
    counters: Arc<UserDbCounters>,
}

/// A lookup for the side thread: a user's key (`username`), or the REST secrets.
struct Job {
    username: Option<String>,
    rest_username: String,
    ticket: Ticket,
}

/// The observer; cheap to share between shards.
pub struct RedisUserDb {
    realm: String,
    use_auth_secret: bool,
    shared: Arc<Shared>,
    jobs: SyncSender<Job>,
}

impl RedisUserDb {
    /// Starts the side thread, which connects in the background and keeps trying.
    /// `use_auth_secret`: usernames are TURN REST ones, checked against the realm's secrets.
    pub fn start(
        target: RedisTarget,
        realm: &str,
        use_auth_secret: bool,
        options: CacheOptions,
    ) -> std::io::Result<RedisUserDb> {
        let (jobs, rx) = mpsc::sync_channel(QUEUE_BOUND);
        let shared = Arc::new(Shared {
            cache: Mutex::new(Cache::new(options, Instant::now())),
            state: AtomicU8::new(STATE_CONNECTING),
            counters: Arc::default(),
        });
        let worker = worker::Worker::new(target, realm.to_owned(), use_auth_secret, shared.clone());
        std::thread::Builder::new()
            .name("uturn-userdb".into())
            .spawn(move || worker.run(rx))?;
        Ok(RedisUserDb {
            realm: realm.to_owned(),
            use_auth_secret,
            shared,
            jobs,
        })
    }

    pub fn counters(&self) -> Arc<UserDbCounters> {
        self.shared.counters.clone()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.shared.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a job to the side thread; the request waits (`Pending`) or is refused.
    fn ask(&self, request: &mut AuthRequest<'_>, username: Option<String>) -> AuthDecision {
        let counters = &self.shared.counters;
        let Some(ticket) = request.defer() else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return AuthDecision::NotAuthorized;
        };
        let job = Job {
            username,
            rest_username: request.username.to_owned(),
            ticket,
        };
        counters.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => AuthDecision::Pending,
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                counters.queue_depth.fetch_sub(1, Ordering::Relaxed);
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                // The ticket was taken: answer through it (the core parked the request).
                job.ticket.resolve(AuthDecision::NotAuthorized);
                AuthDecision::Pending
            }
        }
    }
}

impl Observer for RedisUserDb {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        if request.realm != self.realm {
            return AuthDecision::NotAuthorized;
        }
        let now = Instant::now();
        let state = self.shared.state.load(Ordering::Relaxed);
        let counters = &self.shared.counters;
        if self.use_auth_secret {
            if self.cache().secrets().is_some() {
                return rest_decision(&self.shared, request.username, &self.realm, Some(request));
            }
            if state == STATE_DOWN {
                counters.redis_down_refusals.fetch_add(1, Ordering::Relaxed);
                return AuthDecision::NotAuthorized;
            }
            return self.ask(request, None);
        }
        let mut cache = self.cache();
        match cache.user(now, request.username, state == STATE_UP) {
            Cached::Key(key) => {
                counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return AuthDecision::Authorized(key);
            }
            Cached::Unknown => {
                counters.negative_hits.fetch_add(1, Ordering::Relaxed);
                return AuthDecision::NotAuthorized;
            }
            Cached::Miss => {}
        }
        if state == STATE_DOWN {
            counters.redis_down_refusals.fetch_add(1, Ordering::Relaxed);
            return AuthDecision::NotAuthorized;
        }
        if !cache.allow_lookup(now, request.client.ip()) {
            counters.limited.fetch_add(1, Ordering::Relaxed);
            return AuthDecision::NotAuthorized;
        }
        drop(cache);
        self.ask(request, Some(request.username.to_owned()))
    }
}

/// A TURN REST username (`expiry[:user]`) against the cached secrets: the key of the
/// secret the request's MESSAGE-INTEGRITY verifies with (every secret in the set is
/// valid: rotation), else of the first. `request` is `None` on the side thread, which
/// answers a ticket without the message: then the first secret's key.
fn rest_decision(
    shared: &Shared,
    username: &str,
    realm: &str,
    request: Option<&AuthRequest<'_>>,
) -> AuthDecision {
    let expiry = username.split(':').next().unwrap_or("");
    let Ok(expiry) = expiry.parse::<u64>() else {
        return AuthDecision::NotAuthorized;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if expiry < now {
        return AuthDecision::NotAuthorized;
    }
    let cache = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
    let mut keys = cache.secrets().unwrap_or_default().iter().map(|secret| {
        let password = RestApiSecret::password(secret, username);
        long_term_key(username, realm, &password)
    });
    let Some(first) = keys.next() else {
        return AuthDecision::NotAuthorized;
    };
    let key = match request {
        Some(r) if !r.verifies(&first) => keys.find(|k| r.verifies(k)).unwrap_or(first),
        _ => first,
    };
    AuthDecision::Authorized(key)
}
