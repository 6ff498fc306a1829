//! The authentication interface the core needs (RFC 8489 §9.2 long-term credentials): what
//! it asks ([`AuthRequest`]), what it is told ([`AuthDecision`]), how a late answer comes
//! back ([`Ticket`]), and the hooks an embedding application implements ([`Observer`]).
//!
//! Owns: these types only. Must not: know any way of finding a user's key; `crate::auth`
//! implements static users and the TURN REST secret on top of this, so the dependency runs
//! one way (auth → turn). Observers are called on shard threads: they must answer quickly or
//! return [`AuthDecision::Pending`] and answer through a [`Ticket`].

use super::{AllocationInfo, Traffic, Transport};
use crate::stun::{LongTermKey, Message, Method};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the server knows about a request that asks to be authenticated.
pub struct AuthRequest<'a> {
    pub username: &'a str,
    pub realm: &'a str,
    pub method: Method,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
    pub(crate) ticket: Option<Ticket>,
    /// The request itself, so an observer with several candidate keys (a secret being
    /// rotated) can tell which one the client used.
    pub(crate) message: Option<&'a Message<'a>>,
}

impl<'a> AuthRequest<'a> {
    /// A request without a ticket (the observer must answer synchronously); for observers
    /// tested or composed outside the core.
    pub fn new(
        username: &'a str,
        realm: &'a str,
        method: Method,
        client: SocketAddr,
        server: SocketAddr,
        transport: Transport,
    ) -> Self {
        AuthRequest {
            username,
            realm,
            method,
            client,
            server,
            transport,
            ticket: None,
            message: None,
        }
    }

    /// Whether the request's MESSAGE-INTEGRITY verifies with `key` (false when the request
    /// is not at hand, as for one built with [`AuthRequest::new`]).
    pub fn verifies(&self, key: &LongTermKey) -> bool {
        self.message.is_some_and(|m| m.verify_integrity(key))
    }

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
