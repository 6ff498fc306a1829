//! Authentication and allocation lifecycle hooks for embedding applications, after
//! libsourcey's `ServerObserver`, plus the built-in observers and server-wide quotas.
//!
//! Owns: the [`Observer`] trait, [`StaticUsers`], [`RestApiSecret`], [`Chain`], [`Quotas`].
//! Must not: parse STUN or touch sockets. Observers are called on shard threads: they must
//! answer quickly or return [`AuthDecision::Pending`] and answer through a [`Ticket`].

pub mod userdb;

use crate::stun::{long_term_key, LongTermKey, Method};
use crate::turn::{AllocationInfo, Traffic, Transport};
use base64::Engine;
use hmac::{Hmac, Mac};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What the server knows about a request that asks to be authenticated.
pub struct AuthRequest<'a> {
    pub username: &'a str,
    pub realm: &'a str,
    pub method: Method,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
    pub(crate) ticket: Option<Ticket>,
}

impl AuthRequest<'_> {
    /// Takes the ticket through which an observer that returns [`AuthDecision::Pending`]
    /// answers later, from any thread. `None` when the shard cannot park more requests
    /// (then answer synchronously).
    pub fn defer(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }
}

/// An observer's answer to an authentication request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthDecision {
    /// The user exists; check MESSAGE-INTEGRITY with this long-term key.
    Authorized(LongTermKey),
    /// Unknown user or refused: 401.
    NotAuthorized,
    /// The user may not allocate more: 486.
    QuotaReached,
    /// The answer comes later through the ticket taken with [`AuthRequest::defer`].
    Pending,
}

/// Delivers a deferred answer to the shard that parked the request, and wakes it.
pub struct Ticket {
    pub(crate) id: u64,
    pub(crate) deliver: Arc<dyn Fn(u64, AuthDecision) + Send + Sync>,
}

impl Ticket {
    /// Creates a ticket: `deliver(id, decision)` is called once with the answer.
    pub fn new(id: u64, deliver: Arc<dyn Fn(u64, AuthDecision) + Send + Sync>) -> Self {
        Ticket { id, deliver }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Answer the parked request. `Pending` is treated as `NotAuthorized`.
    pub fn resolve(self, decision: AuthDecision) {
        (self.deliver)(self.id, decision)
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("id", &self.id).finish()
    }
}

/// Hooks an embedding application implements. All methods have defaults except
/// `authenticate`.
pub trait Observer: Send + Sync {
    /// Decide whether `request.username` may use the server and give its long-term key.
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision;

    /// After a new allocation succeeded.
    fn on_allocation_created(&self, info: &AllocationInfo) {
        let _ = info;
    }

    /// Just before an allocation is destroyed (expired, deleted, or server stopping).
    fn on_allocation_removed(&self, info: &AllocationInfo, totals: &Traffic) {
        let _ = (info, totals);
    }
}

/// Users with fixed passwords (`--user NAME:PASS`). The password may also be given as
/// the key itself in coturn's `0x<32 hex digits>` form.
#[derive(Clone, Debug, Default)]
pub struct StaticUsers {
    keys: HashMap<String, LongTermKey>,
}

impl StaticUsers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user; `password` is a plain password or `0x` + 32 hex digits (the key).
    pub fn add(&mut self, username: &str, password: &str, realm: &str) {
        let key =
            parse_hex_key(password).unwrap_or_else(|| long_term_key(username, realm, password));
        self.keys.insert(username.to_owned(), key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn parse_hex_key(s: &str) -> Option<LongTermKey> {
    let hex = s.strip_prefix("0x")?;
    if hex.len() != 32 {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

impl Observer for StaticUsers {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        match self.keys.get(request.username) {
            Some(key) => AuthDecision::Authorized(*key),
            None => AuthDecision::NotAuthorized,
        }
    }
}

/// TURN REST API credentials (draft-uberti-behave-turn-rest, coturn `--use-auth-secret`):
/// username `expiry[:user]` (expiry in Unix seconds), password
/// base64(HMAC-SHA1(secret, username)). Expired usernames are refused.
#[derive(Clone)]
pub struct RestApiSecret {
    secrets: Vec<Vec<u8>>,
    realm: String,
    /// Unix time source; the real clock unless a test replaces it.
    clock: fn() -> u64,
}

impl RestApiSecret {
    pub fn new(secret: &str, realm: &str) -> Self {
        RestApiSecret {
            secrets: vec![secret.as_bytes().to_vec()],
            realm: realm.to_owned(),
            clock: unix_now,
        }
    }

    /// Accept another secret too (rotation: coturn keeps several).
    pub fn add_secret(&mut self, secret: &str) {
        self.secrets.push(secret.as_bytes().to_vec());
    }

    /// Replaces the Unix-time source (tests).
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// The password for `username` under the first secret (for clients and tests).
    pub fn password(secret: &str, username: &str) -> String {
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Observer for RestApiSecret {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        let expiry = request.username.split(':').next().unwrap_or("");
        let Ok(expiry) = expiry.parse::<u64>() else {
            return AuthDecision::NotAuthorized;
        };
        if expiry < (self.clock)() {
            return AuthDecision::NotAuthorized;
        }
        // Only the first secret's key can be returned: with several secrets, pick the one
        // whose key verifies is impossible here, so rotation uses the first (newest) secret.
        match self.secrets.first() {
            Some(secret) => {
                let password = String::from_utf8_lossy(secret);
                let password = Self::password(&password, request.username);
                AuthDecision::Authorized(long_term_key(request.username, &self.realm, &password))
            }
            None => AuthDecision::NotAuthorized,
        }
    }
}

/// Asks each observer in turn; the first answer other than `NotAuthorized` wins. Lifecycle
/// hooks go to every observer. Lets an application put its own observer in front of the
/// built-in ones.
#[derive(Default)]
pub struct Chain {
    observers: Vec<Arc<dyn Observer>>,
}

impl Chain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }
}

impl Observer for Chain {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        for observer in &self.observers {
            match observer.authenticate(request) {
                AuthDecision::NotAuthorized => continue,
                other => return other,
            }
        }
        AuthDecision::NotAuthorized
    }

    fn on_allocation_created(&self, info: &AllocationInfo) {
        for observer in &self.observers {
            observer.on_allocation_created(info);
        }
    }

    fn on_allocation_removed(&self, info: &AllocationInfo, totals: &Traffic) {
        for observer in &self.observers {
            observer.on_allocation_removed(info, totals);
        }
    }
}

/// Server-wide allocation counts (`--user-quota`, `--total-quota`), shared by all shards and
/// touched only when an allocation is created or deleted, never per packet.
#[derive(Debug, Default)]
pub struct Quotas {
    user_quota: usize,
    total_quota: usize,
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
            user_quota,
            total_quota,
            counts: Mutex::default(),
        }
    }

    /// Counts one more allocation for `username`, or returns false if a quota is reached.
    pub fn try_acquire(&self, username: &str) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if self.total_quota > 0 && counts.total >= self.total_quota {
            return false;
        }
        let user = counts.per_user.get(username).copied().unwrap_or(0);
        if self.user_quota > 0 && user >= self.user_quota {
            return false;
        }
        counts.total += 1;
        *counts.per_user.entry(username.to_owned()).or_insert(0) += 1;
        true
    }

    /// Gives back what `try_acquire` took.
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
