//! A STUN request from parse to answer: the request context ([`Request`]), the checks every
//! request passes (unknown attributes, method, authentication), dispatch to the method's
//! handler, and building the response or the error response of a [`Refusal`].
//!
//! Owns: the one place an error response is built, so every refusal is counted once.

use super::{nonce, RelaySockets, Server, Transmit};
use crate::stun::{self, Class, LongTermKey, Message, MessageBuilder, Method, TransactionId};
use crate::turn::observer::AuthDecision;
use crate::turn::{FiveTuple, Refusal};
use std::time::Instant;

/// Most unknown attribute types listed in a 420 response.
const MAX_UNKNOWN_LISTED: usize = 16;

/// Who a request came from, when, and how to answer it.
#[derive(Copy, Clone)]
pub(super) struct Request {
    pub now: Instant,
    /// The client's 5-tuple: answers go back on it.
    pub tuple: FiveTuple,
    pub method: Method,
    pub tid: TransactionId,
    pub fingerprint: bool,
}

/// What authentication established: the key to sign answers with, the user, and the
/// allocation on the request's 5-tuple if there is one.
pub(super) struct Authed {
    pub key: LongTermKey,
    pub username: String,
    pub existing: Option<u32>,
}

impl Server {
    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
        preset: Option<AuthDecision>,
        sockets: &mut dyn RelaySockets,
    ) {
        let req = Request {
            now,
            tuple,
            method: msg.method(),
            tid: *msg.transaction_id(),
            fingerprint: msg.has_fingerprint(),
        };
        let mut unknown = [0u16; MAX_UNKNOWN_LISTED];
        let n = msg.unknown_comprehension_required(&mut unknown);
        if n > 0 {
            return self.refuse_with(&req, Refusal::UnknownAttribute, None, |b| {
                b.add_unknown_attributes(&unknown[..n]);
            });
        }
        match req.method {
            Method::BINDING => {
                return self.respond(&req, Class::Success, None, |b| {
                    b.add_xor_address(stun::XOR_MAPPED_ADDRESS, tuple.client);
                });
            }
            Method::ALLOCATE
            | Method::REFRESH
            | Method::CREATE_PERMISSION
            | Method::CHANNEL_BIND => {}
            _ => return self.refuse(&req, Refusal::UnknownMethod, None),
        }
        let existing = self.by_tuple.get(&tuple).copied();
        let Some(auth) = self.authenticate(&req, msg, existing, preset) else {
            return;
        };
        match req.method {
            Method::ALLOCATE => self.allocate(&req, msg, &auth, sockets),
            Method::REFRESH => self.refresh(&req, msg, &auth, sockets),
            Method::CREATE_PERMISSION => self.create_permission(&req, msg, &auth),
            _ => self.channel_bind(&req, msg, &auth),
        }
    }

    /// Answers with 401/438 carrying REALM and a fresh NONCE (no MESSAGE-INTEGRITY).
    pub(super) fn challenge(&mut self, req: &Request, refusal: Refusal) {
        let nonce = nonce::issue(
            &self.config.nonce_secret,
            self.now_sec(req.now),
            req.tuple.client.ip(),
        );
        let realm = self.config.realm.clone();
        self.refuse_with(req, refusal, None, |b| {
            b.add_str(stun::REALM, &realm);
            b.add_str(stun::NONCE, &nonce);
        });
    }

    /// Sends the error response of `refusal` (signed with `key` when the request was
    /// authenticated) and counts it.
    #[track_caller]
    pub(super) fn refuse(&mut self, req: &Request, refusal: Refusal, key: Option<&LongTermKey>) {
        self.refuse_with(req, refusal, key, |_| {});
    }

    #[track_caller]
    pub(super) fn refuse_with(
        &mut self,
        req: &Request,
        refusal: Refusal,
        key: Option<&LongTermKey>,
        extra: impl FnOnce(&mut MessageBuilder<'_>),
    ) {
        tracing::debug!(client = %req.tuple.client, method = ?req.method, code = refusal.code(), refusal = refusal.name(), at = %std::panic::Location::caller(), "error response");
        self.counters.count_refusal(refusal);
        self.respond(req, Class::Error, key, |b| {
            b.add_error_code(refusal.code(), refusal.reason());
            extra(b);
        });
    }

    pub(super) fn respond(
        &mut self,
        req: &Request,
        class: Class,
        key: Option<&LongTermKey>,
        build: impl FnOnce(&mut MessageBuilder<'_>),
    ) {
        let mut data = Vec::with_capacity(128);
        {
            let mut b = MessageBuilder::new(&mut data, class, req.method, &req.tid);
            build(&mut b);
            if !self.config.software.is_empty() {
                b.add_str(stun::SOFTWARE, &self.config.software);
            }
            if let Some(key) = key {
                b.add_message_integrity(key);
            }
            if req.fingerprint {
                b.add_fingerprint();
            }
        }
        self.transmits.push_back(Transmit {
            local: req.tuple.server,
            remote: req.tuple.client,
            transport: req.tuple.transport,
            data,
        });
    }
}
