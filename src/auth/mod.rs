//! The built-in ways of finding a user's long-term key, implemented on the core's
//! authentication interface ([`crate::turn::observer`], after libsourcey's
//! `ServerObserver`): static users, the TURN REST API secret, and a chain of observers.
//!
//! Owns: [`StaticUsers`], [`RestApiSecret`], [`Chain`]. The interface types are re-exported
//! here so `uturn::auth::{Observer, AuthRequest, AuthDecision, Ticket, Quotas}` keep working;
//! the core owns them (and the quota ledger). Must not: parse STUN beyond key derivation, or
//! touch sockets. The dependency runs one way: auth → turn.

pub mod userdb;

pub use crate::turn::observer::{AuthDecision, AuthRequest, Observer, Ticket};
pub use crate::turn::quotas::{QuotaExceeded, Quotas};

use crate::stun::{long_term_key, LongTermKey};
use crate::turn::{AllocationInfo, Traffic};
use base64::Engine;
use hmac::{Hmac, Mac};
use std::collections::HashMap;
use std::sync::Arc;

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

    /// The password for `username` under `secret` (for clients and tests).
    pub fn password(secret: &str, username: &str) -> String {
        Self::password_bytes(secret.as_bytes(), username)
    }

    fn password_bytes(secret: &[u8], username: &str) -> String {
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret)
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
        // Rotation: every secret is valid; answer with the key the client's
        // MESSAGE-INTEGRITY verifies with, else the first (the core then refuses it).
        let mut keys = self.secrets.iter().map(|secret| {
            let password = Self::password_bytes(secret, request.username);
            long_term_key(request.username, &self.realm, &password)
        });
        let Some(first) = keys.next() else {
            return AuthDecision::NotAuthorized;
        };
        if request.verifies(&first) {
            return AuthDecision::Authorized(first);
        }
        let key = keys.find(|k| request.verifies(k)).unwrap_or(first);
        AuthDecision::Authorized(key)
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
