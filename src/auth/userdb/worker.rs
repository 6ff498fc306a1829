//! The Redis user database's side thread: owns the connection, answers lookups in
//! pipelined batches (one round trip for every user waiting, plus the REST secrets when
//! due), keeps the secrets fresh, notices Redis going away and coming back.
//!
//! Must not: be reached from a shard except through the bounded job channel.

use super::cache::Cache;
use super::{Job, Shared, STATE_DOWN, STATE_UP};
use crate::auth::AuthDecision;
use crate::config::RedisTarget;
use crate::stun::{long_term_key, LongTermKey};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Jobs answered per round trip at most.
const BATCH: usize = 512;
/// Without lookups, PING this often so an outage is noticed before the next user needs it.
const HEALTH_CHECK: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often refusals while Redis is away are summed up in the log.
const REPORT_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Worker {
    pub target: RedisTarget,
    pub realm: String,
    pub use_auth_secret: bool,
    pub shared: Arc<Shared>,
    pub conn: Option<redis::Connection>,
    pub next_attempt: Instant,
    pub backoff: Duration,
    pub last_io: Instant,
    pub last_report: Instant,
    pub reported_refusals: u64,
}

impl Worker {
    pub fn new(
        target: RedisTarget,
        realm: String,
        use_auth_secret: bool,
        shared: Arc<Shared>,
    ) -> Self {
        let now = Instant::now();
        Worker {
            target,
            realm,
            use_auth_secret,
            shared,
            conn: None,
            next_attempt: now,
            backoff: BACKOFF_MIN,
            last_io: now,
            last_report: now,
            reported_refusals: 0,
        }
    }

    pub fn run(mut self, rx: Receiver<Job>) {
        loop {
            let mut jobs = Vec::new();
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while jobs.len() < BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.shared
                .counters
                .queue_depth
                .fetch_sub(jobs.len() as u64, Ordering::Relaxed);
            self.ensure_connected();
            if self.conn.is_some() {
                self.serve(jobs);
            } else {
                let refused = jobs.len() as u64;
                for job in jobs {
                    job.ticket.resolve(AuthDecision::NotAuthorized);
                }
                self.shared
                    .counters
                    .redis_down_refusals
                    .fetch_add(refused, Ordering::Relaxed);
            }
            self.report();
        }
    }

    fn ensure_connected(&mut self) {
        if self.conn.is_some() || Instant::now() < self.next_attempt {
            return;
        }
        match crate::stats::connect(&self.target) {
            Ok(conn) => {
                tracing::info!(host = %self.target.host, port = self.target.port, "Redis user database connected");
                self.conn = Some(conn);
                self.backoff = BACKOFF_MIN;
                self.last_io = Instant::now();
                self.shared.state.store(STATE_UP, Ordering::Relaxed);
                self.shared.counters.connected.store(1, Ordering::Relaxed);
            }
            Err(e) => {
                if self.shared.state.swap(STATE_DOWN, Ordering::Relaxed) != STATE_DOWN {
                    tracing::warn!(
                        host = %self.target.host,
                        port = self.target.port,
                        "Redis user database unavailable ({e}): new authentications of users not in the cache are refused until it returns"
                    );
                }
                self.shared.counters.connected.store(0, Ordering::Relaxed);
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn lost(&mut self, e: redis::RedisError) {
        tracing::warn!("Redis user database connection lost: {e}");
        self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
        self.conn = None;
        self.next_attempt = Instant::now();
        // The next attempt decides whether new authentications are refused.
        self.ensure_connected();
    }

    /// One pipelined round trip: MGET of every waiting user's `key` and `password`, and
    /// SMEMBERS of the realm's secrets when due (or a PING when idle too long).
    fn serve(&mut self, jobs: Vec<Job>) {
        let now = Instant::now();
        let mut users: Vec<String> = jobs
            .iter()
            .filter_map(|j| j.username.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let secrets_due = self.use_auth_secret && self.cache().secrets_due(now);
        if users.is_empty() && !secrets_due && now.duration_since(self.last_io) < HEALTH_CHECK {
            for job in jobs {
                // Only secret jobs can get here, and the secrets are fresh.
                let decision =
                    super::rest_decision(&self.shared, &job.rest_username, &self.realm, None);
                job.ticket.resolve(decision);
            }
            return;
        }
        let mut pipe = redis::pipe();
        if !users.is_empty() {
            let mut mget = redis::cmd("MGET");
            for user in &users {
                mget.arg(user_key(&self.realm, user, "key"));
                mget.arg(user_key(&self.realm, user, "password"));
            }
            pipe.add_command(mget);
        }
        if secrets_due {
            pipe.cmd("SMEMBERS").arg(secret_key(&self.realm));
        }
        if users.is_empty() && !secrets_due {
            pipe.cmd("PING").ignore();
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let result: redis::RedisResult<Vec<redis::Value>> = pipe.query(conn);
        self.last_io = Instant::now();
        let values = match result {
            Ok(v) => v,
            Err(e) => {
                let refused = jobs.len() as u64;
                for job in jobs {
                    job.ticket.resolve(AuthDecision::NotAuthorized);
                }
                self.shared
                    .counters
                    .redis_down_refusals
                    .fetch_add(refused, Ordering::Relaxed);
                self.lost(e);
                return;
            }
        };
        let mut values = values.into_iter();
        let mut found: std::collections::HashMap<String, Option<LongTermKey>> =
            std::collections::HashMap::new();
        if !users.is_empty() {
            let pairs: Vec<Option<String>> = values
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let counters = &self.shared.counters;
            counters
                .lookups
                .fetch_add(users.len() as u64, Ordering::Relaxed);
            for (i, user) in users.drain(..).enumerate() {
                let key = pairs.get(2 * i).cloned().flatten();
                let password = pairs.get(2 * i + 1).cloned().flatten();
                let key = match (key, password) {
                    (Some(hex), _) => parse_hex_key(&hex).or_else(|| {
                        tracing::warn!(user = %user, "Redis user database: key is not 32 hex digits; user refused");
                        None
                    }),
                    (None, Some(password)) => Some(long_term_key(&user, &self.realm, &password)),
                    (None, None) => None,
                };
                tracing::debug!(user = %user, found = key.is_some(), "Redis user database lookup");
                if key.is_some() {
                    counters.found.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.not_found.fetch_add(1, Ordering::Relaxed);
                }
                found.insert(user, key);
            }
        }
        if secrets_due {
            let secrets: Vec<String> = values
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            self.cache().store_secrets(now, secrets);
        }
        {
            let mut cache = self.cache();
            for (user, key) in &found {
                cache.store_user(now, user, *key);
            }
        }
        for job in jobs {
            let decision = match &job.username {
                Some(user) => match found.get(user).copied().flatten() {
                    Some(key) => AuthDecision::Authorized(key),
                    None => AuthDecision::NotAuthorized,
                },
                None => super::rest_decision(&self.shared, &job.rest_username, &self.realm, None),
            };
            job.ticket.resolve(decision);
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.shared.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sums up, every few seconds, what was refused because Redis was away.
    fn report(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_report) < REPORT_EVERY {
            return;
        }
        self.last_report = now;
        let refused = self
            .shared
            .counters
            .redis_down_refusals
            .load(Ordering::Relaxed);
        if refused > self.reported_refusals {
            tracing::warn!(
                refused = refused - self.reported_refusals,
                "Redis user database unavailable: authentications of users not in the cache refused"
            );
            self.reported_refusals = refused;
        }
    }
}

/// coturn's `turn/realm/<realm>/user/<user>/<field>`.
pub fn user_key(realm: &str, user: &str, field: &str) -> String {
    format!("turn/realm/{realm}/user/{user}/{field}")
}

/// coturn's set of REST secrets, `turn/realm/<realm>/secret`.
pub fn secret_key(realm: &str) -> String {
    format!("turn/realm/{realm}/secret")
}

/// coturn stores the key as 32 hex digits (what `turnadmin -a` writes).
pub fn parse_hex_key(s: &str) -> Option<LongTermKey> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}
