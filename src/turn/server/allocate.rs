//! Allocation lifecycle (RFC 8656 §7): Allocate (relay address family, relay port with
//! EVEN-PORT and RESERVATION-TOKEN, limits and quotas, lifetime) and deletion.
//!
//! Owns: creating and deleting entries of the allocation table and the relay sockets and
//! ports that go with them. Every path that takes a port, a quota or a slot gives it back
//! when a later step fails.

use super::expiry::{Timer, TICKS_PER_SEC};
use super::request::{Authed, Request};
use super::table::{Reservation, Slot};
use super::{RelayId, RelaySockets, Server};
use crate::stun::{self, Class, Message};
use crate::turn::allocation::{Allocation, TokenBucket};
use crate::turn::{AllocationInfo, DeleteReason, Event, QuotaExceeded, Refusal, Traffic};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Reserved ports (EVEN-PORT with R) are held this long for a RESERVATION-TOKEN (RFC 8656
/// §7.2 suggests about 30 seconds).
const RESERVATION_LIFETIME_SECS: u64 = 30;
/// How many ports to try when binding a relay socket fails (port taken by another process).
const BIND_ATTEMPTS: usize = 8;

/// The attributes of an Allocate request, checked.
struct AllocateParams {
    token: Option<u64>,
    even: Option<bool>,
    family: Option<u8>,
    lifetime: Option<u32>,
}

impl Server {
    pub(super) fn allocate(
        &mut self,
        req: &Request,
        msg: &Message<'_>,
        auth: &Authed,
        sockets: &mut dyn RelaySockets,
    ) {
        let key = Some(&auth.key);
        if let Some(slot) = auth.existing {
            if self
                .allocation(slot)
                .is_some_and(|a| a.allocate_tid == req.tid)
            {
                // A retransmission of the Allocate that succeeded: answer it again.
                return self.allocate_success(req, slot);
            }
            return self.refuse(req, Refusal::AllocationExists, key);
        }
        if self.draining {
            return self.redirect(req, auth, Refusal::DrainingRedirected, Refusal::Draining);
        }
        let Some(params) = self.allocate_params(req, msg, auth) else {
            return;
        };
        let relay_ip = self.relay_ip_for(params.family);
        let reservation = match params.token {
            Some(t) => match self.config.port_exchange.redeem(t) {
                Some((ip, port)) => {
                    self.reservations.remove(&t);
                    Some((ip, port))
                }
                None => return self.refuse(req, Refusal::UnknownReservation, key),
            },
            None => None,
        };
        let relay_ip = match (reservation, relay_ip) {
            (Some((ip, _)), _) => ip,
            (None, Some(ip)) => ip,
            (None, None) => return self.refuse(req, Refusal::FamilyUnsupported, key),
        };
        let reserved_port = reservation.map(|(_, port)| port);
        if let Err(refusal) = self.admit_allocation(&auth.username, reserved_port) {
            if let Some(port) = reserved_port {
                self.release_port(port);
            }
            if refusal == Refusal::QuotaRedirected {
                return self.redirect(req, auth, Refusal::QuotaRedirected, Refusal::Quota);
            }
            return self.refuse(req, refusal, key);
        }
        let slot = self.take_slot();
        let bound = self.bind_relay(slot, relay_ip, reserved_port, params.even, sockets);
        let Some(relay) = bound else {
            self.free_slots.push(slot);
            self.quotas.release(&auth.username);
            return self.refuse(req, Refusal::PortsExhausted, key);
        };
        let token = (params.even == Some(true) && reserved_port.is_none())
            .then(|| self.reserve_next(req, relay));
        let lifetime = self.lifetime_for(params.lifetime);
        self.install(req, auth, slot, relay, lifetime, token);
        self.allocate_success(req, slot);
    }

    /// REQUESTED-TRANSPORT, RESERVATION-TOKEN, EVEN-PORT, REQUESTED-ADDRESS-FAMILY and
    /// LIFETIME, or the error response.
    fn allocate_params(
        &mut self,
        req: &Request,
        msg: &Message<'_>,
        auth: &Authed,
    ) -> Option<AllocateParams> {
        let key = Some(&auth.key);
        let refusal = match msg.requested_transport() {
            Ok(Some(stun::TRANSPORT_UDP)) => None,
            Ok(Some(_)) => Some(Refusal::UnsupportedTransport),
            Ok(None) => Some(Refusal::MissingTransport),
            Err(_) => Some(Refusal::BadRequest),
        };
        if let Some(refusal) = refusal {
            self.refuse(req, refusal, key);
            return None;
        }
        let (Ok(token), Ok(even), Ok(family), Ok(lifetime)) = (
            msg.reservation_token(),
            msg.even_port(),
            msg.requested_address_family(),
            msg.lifetime(),
        ) else {
            self.refuse(req, Refusal::BadRequest, key);
            return None;
        };
        if token.is_some() && (even.is_some() || family.is_some()) {
            self.refuse(req, Refusal::ReservationConflict, key);
            return None;
        }
        Some(AllocateParams {
            token,
            even,
            family,
            lifetime,
        })
    }

    /// The relay IP of the requested family (IPv4 when none is asked for).
    fn relay_ip_for(&self, family: Option<u8>) -> Option<IpAddr> {
        match family {
            None | Some(stun::FAMILY_IPV4) => Some(self.config.relay_ip).filter(|ip| ip.is_ipv4()),
            Some(stun::FAMILY_IPV6) => self
                .config
                .relay_ip_v6
                .or(Some(self.config.relay_ip))
                .filter(|ip| ip.is_ipv6()),
            Some(_) => None,
        }
    }

    /// Whether one more allocation fits: a free port, the shard's allocation limit, the
    /// quotas (taken here; released by `delete`).
    fn admit_allocation(&mut self, username: &str, reserved: Option<u16>) -> Result<(), Refusal> {
        if reserved.is_none() && self.config.port_exchange.free_count() == 0 {
            return Err(Refusal::PortsExhausted);
        }
        if self.live >= self.config.max_allocations {
            return Err(Refusal::AllocationLimit);
        }
        match self.quotas.acquire(username) {
            Ok(()) => Ok(()),
            Err(QuotaExceeded::Total) => Err(Refusal::QuotaRedirected),
            Err(QuotaExceeded::User) => Err(Refusal::Quota),
        }
    }

    /// 300 Try Alternate with the first alternate server of the client's family
    /// (authenticated, so a client can trust it), or `otherwise` when there is none.
    fn redirect(&mut self, req: &Request, auth: &Authed, redirect: Refusal, otherwise: Refusal) {
        let family_v4 = req.tuple.client.ip().to_canonical().is_ipv4();
        let alternate = self
            .config
            .alternate_servers
            .iter()
            .copied()
            .find(|a| a.ip().to_canonical().is_ipv4() == family_v4);
        match alternate {
            Some(alternate) => self.refuse_with(req, redirect, Some(&auth.key), |b| {
                b.add_address(stun::ALTERNATE_SERVER, alternate);
            }),
            None => self.refuse(req, otherwise, Some(&auth.key)),
        }
    }

    fn take_slot(&mut self) -> u32 {
        match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Binds the relay socket: the reserved port, or a port from the pool (even with
    /// EVEN-PORT, its successor held with R). A port busy outside uturn is skipped.
    fn bind_relay(
        &mut self,
        slot: u32,
        ip: IpAddr,
        reserved: Option<u16>,
        even: Option<bool>,
        sockets: &mut dyn RelaySockets,
    ) -> Option<SocketAddr> {
        let reserve_next = even == Some(true);
        let mut bound = None;
        // Busy ports go back to the pool only after this loop, so each attempt tries a
        // different one.
        let mut busy = [0u16; BIND_ATTEMPTS];
        let mut n_busy = 0;
        for attempt in 0..BIND_ATTEMPTS {
            let port = match (reserved, even) {
                (Some(port), _) if attempt == 0 => Some(port),
                (Some(_), _) => None,
                (None, even) => self.config.port_exchange.take(self.ports, even),
            };
            let Some(port) = port else { break };
            let addr = SocketAddr::new(ip, port);
            if sockets.open(RelayId(slot), addr).is_ok() {
                bound = Some(addr);
                break;
            }
            busy[n_busy] = port;
            n_busy += 1;
            if reserve_next {
                self.release_port(port + 1);
            }
        }
        for &port in &busy[..n_busy] {
            self.release_port(port);
        }
        bound
    }

    /// Holds the port after `relay` for a RESERVATION-TOKEN (EVEN-PORT with R).
    fn reserve_next(&mut self, req: &Request, relay: SocketAddr) -> u64 {
        let token = self.random();
        let expires_tick = self.now_tick(req.now) + RESERVATION_LIFETIME_SECS * TICKS_PER_SEC;
        let (ip, port) = (relay.ip(), relay.port() + 1);
        self.reservations
            .insert(token, Reservation { expires_tick });
        self.config.port_exchange.reserve(token, ip, port);
        self.wheel
            .schedule(expires_tick, Timer::Reservation { token });
        token
    }

    /// Puts the new allocation in `slot`, schedules its timers and reports it.
    fn install(
        &mut self,
        req: &Request,
        auth: &Authed,
        slot: u32,
        relay: SocketAddr,
        lifetime: u32,
        token: Option<u64>,
    ) {
        let now = req.now;
        let id = self.config.id_base + self.next_seq * self.config.id_stride.max(1);
        self.next_seq += 1;
        let info = Arc::new(AllocationInfo {
            id,
            username: auth.username.clone(),
            realm: self.config.realm.clone(),
            five_tuple: req.tuple,
            relay,
            tls: self.tls_sessions.get(&req.tuple).copied(),
        });
        let expires = now + Duration::from_secs(lifetime.into());
        let max_bps = self.config.max_bps;
        let s = &mut self.slots[slot as usize];
        s.allocation = Some(Allocation {
            info: info.clone(),
            key: auth.key,
            expires,
            allocate_tid: req.tid,
            lifetime,
            reservation_token: token,
            permissions: Vec::new(),
            channels: Vec::new(),
            unreported: Traffic::default(),
            reported: Traffic::default(),
            bucket_in: (max_bps > 0).then(|| TokenBucket::new(now, max_bps)),
            bucket_out: (max_bps > 0).then(|| TokenBucket::new(now, max_bps)),
            offloaded: Vec::new(),
        });
        s.prune_at = None;
        let gen = s.gen;
        self.schedule_expiry(slot, expires, true);
        if !self.config.stats_interval.is_zero() {
            self.schedule_stats(slot, gen, self.now_tick(now));
        }
        self.by_tuple.insert(req.tuple, slot);
        self.live += 1;
        self.events
            .push_back(Event::AllocationCreated { info, lifetime });
    }

    pub(super) fn allocate_success(&mut self, req: &Request, slot: u32) {
        let Some(alloc) = self.allocation(slot) else {
            return;
        };
        let relay = self.config.advertised(alloc.info.relay);
        let remaining = alloc.expires.saturating_duration_since(req.now).as_secs() as u32;
        let token = alloc.reservation_token;
        let key = alloc.key;
        let client = req.tuple.client;
        self.respond(req, Class::Success, Some(&key), |b| {
            b.add_xor_address(stun::XOR_RELAYED_ADDRESS, relay);
            b.add_u32(stun::LIFETIME, remaining);
            if let Some(t) = token {
                b.add_reservation_token(t);
            }
            b.add_xor_address(stun::XOR_MAPPED_ADDRESS, client);
        });
    }

    /// The granted lifetime: the request's, between the default and the maximum.
    pub(super) fn lifetime_for(&self, requested: Option<u32>) -> u32 {
        let default = self.config.default_lifetime.as_secs() as u32;
        let max = self.config.max_lifetime.as_secs() as u32;
        match requested {
            Some(r) => r.min(max).max(default.min(max)),
            None => default.min(max),
        }
    }

    /// Removes the allocation in `slot`: socket, port, quota, table entries; reports it.
    pub(super) fn delete(
        &mut self,
        slot: u32,
        reason: DeleteReason,
        sockets: &mut dyn RelaySockets,
    ) {
        let s = &mut self.slots[slot as usize];
        let Some(mut alloc) = s.allocation.take() else {
            return;
        };
        s.gen = s.gen.wrapping_add(1);
        s.prune_at = None;
        self.free_slots.push(slot);
        self.live -= 1;
        let tuple = alloc.info.five_tuple;
        self.by_tuple.remove(&tuple);
        sockets.close(RelayId(slot));
        self.release_port(alloc.info.relay.port());
        self.quotas.release(&alloc.info.username);
        if !alloc.offloaded.is_empty() {
            // The kernel's last counts must reach the totals first (`offload_removed`).
            return self.close_offloaded(alloc, reason);
        }
        let last = alloc.take_unreported();
        self.events.push_back(Event::AllocationDeleted {
            info: alloc.info,
            reason,
            last,
            totals: alloc.reported,
        });
    }

    /// Returns a relay port to the slice it belongs to (this shard's, or the one it was
    /// borrowed or reserved from).
    pub(super) fn release_port(&mut self, port: u16) {
        self.config.port_exchange.release(port);
    }
}
