//! Long-term credential checks (RFC 8489 §9.2.4) and requests parked while an observer
//! answers asynchronously.
//!
//! Owns: USERNAME/REALM/NONCE checks, asking the observer, parking and its bound.
//! Must not: create state for a request that is not authenticated, except a parked request
//! (bounded by `max_pending_auth`, dropped after `pending_auth_timeout`).

use super::expiry::Timer;
use super::request::{Authed, Request};
use super::table::Parked;
use super::{nonce, Server};
use crate::stun::Message;
use crate::turn::observer::{AuthDecision, AuthRequest, Ticket};
use crate::turn::Refusal;

impl Server {
    /// Returns what authentication established, or sends the error response and returns
    /// `None`. `preset` is an observer's late answer for a parked request.
    pub(super) fn authenticate(
        &mut self,
        req: &Request,
        msg: &Message<'_>,
        existing: Option<u32>,
        preset: Option<AuthDecision>,
    ) -> Option<Authed> {
        if !msg.has_integrity() {
            self.challenge(req, Refusal::Unauthenticated);
            return None;
        }
        let (Ok(Some(username)), Ok(Some(realm)), Ok(Some(nonce))) =
            (msg.username(), msg.realm(), msg.nonce())
        else {
            self.refuse(req, Refusal::IncompleteCredentials, None);
            return None;
        };
        let now_sec = self.now_sec(req.now);
        let lifetime = self.config.nonce_lifetime.as_secs();
        let secret = &self.config.nonce_secret;
        if nonce::check(secret, nonce, now_sec, lifetime, req.tuple.client.ip()).is_err() {
            self.challenge(req, Refusal::StaleNonce);
            return None;
        }
        if realm != self.config.realm {
            self.challenge(req, Refusal::WrongRealm);
            return None;
        }
        if let Some(slot) = existing {
            return self.authenticate_existing(req, msg, slot, username);
        }
        let decision = match preset {
            Some(decision) => decision,
            None => self.ask_observer(req, msg, username, realm)?,
        };
        match decision {
            AuthDecision::Authorized(key) if msg.verify_integrity(&key) => Some(Authed {
                key,
                username: username.to_owned(),
                existing: None,
            }),
            AuthDecision::Authorized(_) => {
                self.challenge(req, Refusal::BadIntegrity);
                None
            }
            AuthDecision::QuotaReached => {
                self.refuse(req, Refusal::ObserverQuota, None);
                None
            }
            AuthDecision::NotAuthorized | AuthDecision::Pending => {
                self.challenge(req, Refusal::NotAuthorized);
                None
            }
        }
    }

    /// A request on a 5-tuple that has an allocation: the allocation's user and key decide,
    /// without asking the observer again.
    fn authenticate_existing(
        &mut self,
        req: &Request,
        msg: &Message<'_>,
        slot: u32,
        username: &str,
    ) -> Option<Authed> {
        let alloc = self.allocation(slot)?;
        if alloc.info.username != username {
            self.refuse(req, Refusal::WrongUser, None);
            return None;
        }
        let key = alloc.key;
        if !msg.verify_integrity(&key) {
            self.challenge(req, Refusal::BadIntegrity);
            return None;
        }
        Some(Authed {
            key,
            username: username.to_owned(),
            existing: Some(slot),
        })
    }

    /// Asks the observer. `None` when the request was parked (the answer comes through
    /// `handle_auth_result`) or refused because it cannot be parked.
    fn ask_observer(
        &mut self,
        req: &Request,
        msg: &Message<'_>,
        username: &str,
        realm: &str,
    ) -> Option<AuthDecision> {
        let ticket = match &self.ticket_sink {
            Some(sink) if self.pending.len() < self.config.max_pending_auth => {
                Some(Ticket::new(self.next_ticket, sink.clone()))
            }
            _ => None,
        };
        let offered = ticket.is_some();
        let mut request = AuthRequest {
            username,
            realm,
            method: req.method,
            client: req.tuple.client,
            server: req.tuple.server,
            transport: req.tuple.transport,
            ticket,
            message: Some(msg),
        };
        let decision = self.observer.authenticate(&mut request);
        if decision != AuthDecision::Pending {
            return Some(decision);
        }
        if offered && request.ticket.is_none() {
            // The observer holds the ticket: park until it answers.
            self.park(req, msg);
        } else {
            // Deferred without a ticket (full, or no async support): cannot wait.
            self.refuse(req, Refusal::AuthBusy, None);
        }
        None
    }

    fn park(&mut self, req: &Request, msg: &Message<'_>) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.insert(
            ticket,
            Parked {
                data: msg.as_bytes().to_vec(),
                tuple: req.tuple,
            },
        );
        let deadline = self.tick_ceil(req.now + self.config.pending_auth_timeout);
        self.wheel.schedule(deadline, Timer::PendingAuth { ticket });
    }
}
