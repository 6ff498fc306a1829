//! Every way the core says no: [`Refusal`] (a request answered with a STUN error response)
//! and [`Dropped`] (a datagram dropped without an answer), and the per-shard
//! [`ServerCounters`] that count each of them in a field of its own.
//!
//! Owns: the list of causes, their wire codes, reason phrases and counter labels. One cause,
//! one variant, one counter: several causes may share a wire code (508 has six), never a
//! counter, so metrics and logs can tell them apart. Must not: build messages (the server's
//! `respond` does, from [`Refusal::code`] and [`Refusal::reason`]).

/// Declares the refusal and drop enums and the counter struct from one table, so a cause
/// cannot exist without its counter (or the other way round).
macro_rules! causes {
    (
        refusals { $($(#[$rdoc:meta])* $rvar:ident = $code:literal, $reason:literal, $rfield:ident;)* }
        drops { $($(#[$ddoc:meta])* $dvar:ident => $dfield:ident;)* }
    ) => {
        /// Why a request got an error response; each knows its STUN error code, reason
        /// phrase and counter.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Refusal {
            $($(#[$rdoc])* $rvar,)*
        }

        impl Refusal {
            /// Every refusal, in declaration order.
            pub const ALL: &'static [Refusal] = &[$(Refusal::$rvar,)*];

            /// The STUN error code on the wire (RFC 8489 §14.8, RFC 8656 §19).
            pub fn code(self) -> u16 {
                match self {
                    $(Refusal::$rvar => $code,)*
                }
            }

            /// The reason phrase sent with the code.
            pub fn reason(self) -> &'static str {
                match self {
                    $(Refusal::$rvar => $reason,)*
                }
            }

            /// A snake_case label for metrics and logs; also the name of its counter field.
            pub fn name(self) -> &'static str {
                match self {
                    $(Refusal::$rvar => stringify!($rfield),)*
                }
            }
        }

        /// Why a datagram was dropped without an answer.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Dropped {
            $($(#[$ddoc])* $dvar,)*
        }

        impl Dropped {
            /// Every drop cause, in declaration order.
            pub const ALL: &'static [Dropped] = &[$(Dropped::$dvar,)*];

            /// A snake_case label for metrics and logs; also the name of its counter field.
            pub fn name(self) -> &'static str {
                match self {
                    $(Dropped::$dvar => stringify!($dfield),)*
                }
            }
        }

        /// What one shard's core relayed, refused and dropped; read by the shard for logs,
        /// metrics and tests. One field per [`Refusal`] and per [`Dropped`], named by its
        /// `name()`.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct ServerCounters {
            pub relayed_to_peer: u64,
            pub relayed_to_client: u64,
            $($(#[$ddoc])* pub $dfield: u64,)*
            $($(#[$rdoc])* pub $rfield: u64,)*
        }

        impl ServerCounters {
            /// Error responses sent for `refusal`.
            pub fn refused(&self, refusal: Refusal) -> u64 {
                match refusal {
                    $(Refusal::$rvar => self.$rfield,)*
                }
            }

            /// Datagrams dropped for `cause`.
            pub fn dropped(&self, cause: Dropped) -> u64 {
                match cause {
                    $(Dropped::$dvar => self.$dfield,)*
                }
            }

            pub(crate) fn count_refusal(&mut self, refusal: Refusal) {
                match refusal {
                    $(Refusal::$rvar => self.$rfield += 1,)*
                }
            }

            pub(crate) fn count_drop(&mut self, cause: Dropped) {
                match cause {
                    $(Dropped::$dvar => self.$dfield += 1,)*
                }
            }
        }
    };
}

causes! {
    refusals {
        /// A comprehension-required attribute the server does not know.
        UnknownAttribute = 420, "Unknown Attribute", unknown_attribute;
        /// A request method a TURN server does not serve.
        UnknownMethod = 400, "Bad Request", unknown_method;
        /// No MESSAGE-INTEGRITY: challenged with REALM and NONCE.
        Unauthenticated = 401, "Unauthorized", unauthenticated;
        /// MESSAGE-INTEGRITY without USERNAME, REALM or NONCE.
        IncompleteCredentials = 400, "Bad Request", incomplete_credentials;
        /// The NONCE is not ours, or too old: a fresh one is sent.
        StaleNonce = 438, "Stale Nonce", stale_nonce;
        /// A REALM other than the server's.
        WrongRealm = 401, "Unauthorized", wrong_realm;
        /// A USERNAME other than the one that made the allocation.
        WrongUser = 441, "Wrong Credentials", wrong_user;
        /// MESSAGE-INTEGRITY does not verify with the user's key.
        BadIntegrity = 401, "Unauthorized", bad_integrity;
        /// The observer does not know or refuses the user.
        NotAuthorized = 401, "Unauthorized", not_authorized;
        /// The observer deferred, but no more requests can be parked.
        AuthBusy = 508, "Insufficient Capacity", pending_auth_dropped;
        /// The observer says the user may not allocate more.
        ObserverQuota = 486, "Allocation Quota Reached", observer_quota;
        /// `--user-quota` or `--total-quota` reached (the latter without an alternate server
        /// of the client's family).
        Quota = 486, "Allocation Quota Reached", quota_refused;
        /// `--total-quota` reached: sent to an `--alternate-server` (RFC 8489 §10).
        QuotaRedirected = 300, "Try Alternate", quota_redirected;
        /// Draining, no alternate server of the client's family: new allocations refused.
        Draining = 403, "Server is draining", draining_refused;
        /// Draining: new allocations sent to an `--alternate-server`.
        DrainingRedirected = 300, "Try Alternate", draining_redirected;
        /// An Allocate (not a retransmission) on a 5-tuple that has an allocation.
        AllocationExists = 437, "Allocation Mismatch", allocation_exists;
        /// Refresh, CreatePermission or ChannelBind without an allocation.
        AllocationMissing = 437, "Allocation Mismatch", allocation_missing;
        /// An attribute the method needs is missing or malformed.
        BadRequest = 400, "Bad Request", bad_request;
        /// Allocate without REQUESTED-TRANSPORT.
        MissingTransport = 400, "Bad Request", missing_transport;
        /// REQUESTED-TRANSPORT other than UDP.
        UnsupportedTransport = 442, "Unsupported Transport Protocol", unsupported_transport;
        /// RESERVATION-TOKEN together with EVEN-PORT or REQUESTED-ADDRESS-FAMILY.
        ReservationConflict = 400, "Bad Request", reservation_conflict;
        /// A RESERVATION-TOKEN nobody holds (expired, redeemed, or made up).
        UnknownReservation = 508, "Insufficient Capacity", unknown_reservation;
        /// No relay address of the requested family.
        FamilyUnsupported = 440, "Address Family not Supported", family_unsupported;
        /// The shard holds its maximum number of allocations.
        AllocationLimit = 508, "Insufficient Capacity", allocation_limit;
        /// No relay port free, or none that could be bound.
        PortsExhausted = 508, "Insufficient Capacity", ports_exhausted;
        /// A peer (or REQUESTED-ADDRESS-FAMILY) of another family than the relay address.
        FamilyMismatch = 443, "Peer Address Family Mismatch", family_mismatch;
        /// The peer policy refuses the peer address.
        PeerForbidden = 403, "Forbidden", peer_refused;
        /// More permissions than `--max-permissions-per-allocation`.
        PermissionLimit = 508, "Insufficient Capacity", permissions_capped;
        /// A channel number outside 0x4000..=0x7FFF.
        BadChannelNumber = 400, "Bad Request", bad_channel_number;
        /// The number is bound to another peer, or the peer to another number.
        ChannelConflict = 400, "Bad Request", channel_conflict;
        /// More channels than `--max-channels-per-allocation`.
        ChannelLimit = 508, "Insufficient Capacity", channels_capped;
    }
    drops {
        /// Neither STUN nor ChannelData.
        NotStun => not_stun;
        /// Unparseable STUN or ChannelData, a response or indication a server does not
        /// take, or a peer datagram too large to frame.
        Malformed => malformed;
        /// ChannelData or Send without a live allocation, or a peer datagram on a relay
        /// whose allocation is gone.
        NoAllocation => no_allocation;
        /// No permission for the peer's IP.
        NoPermission => no_permission;
        /// ChannelData on an unbound channel number.
        NoChannel => no_channel;
        /// Over `--max-bps`.
        RateLimited => rate_limited;
        /// A parked request whose asynchronous answer did not come in time.
        PendingAuthExpired => pending_auth_expired;
        /// To or from one of the server's own addresses on a port outside the relay range.
        OwnAddressPort => own_address_port;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_refusal_has_its_own_counter_code_and_reason() {
        let mut names = HashSet::new();
        for &r in Refusal::ALL {
            assert!(names.insert(r.name()), "{} named twice", r.name());
            if r != Refusal::Draining {
                assert_eq!(r.reason(), crate::stun::reason_phrase(r.code()), "{r:?}");
            }
            assert!((300..700).contains(&r.code()), "{r:?}");
            let mut c = ServerCounters::default();
            c.count_refusal(r);
            for &other in Refusal::ALL {
                assert_eq!(
                    c.refused(other),
                    u64::from(other == r),
                    "{r:?} vs {other:?}"
                );
            }
            for &d in Dropped::ALL {
                assert_eq!(c.dropped(d), 0, "{r:?} counted as {d:?}");
            }
            // The counter appears under its label in the shard's log line.
            assert!(format!("{c:?}").contains(&format!(" {}: 1", r.name())));
        }
        for &d in Dropped::ALL {
            assert!(names.insert(d.name()), "{} named twice", d.name());
            let mut c = ServerCounters::default();
            c.count_drop(d);
            for &other in Dropped::ALL {
                assert_eq!(c.dropped(other), u64::from(other == d));
            }
            assert!(Refusal::ALL.iter().all(|&r| c.refused(r) == 0));
        }
        // 508 stands for several causes, each counted apart.
        let capacity = Refusal::ALL.iter().filter(|r| r.code() == 508).count();
        assert!(capacity >= 6);
    }
}
