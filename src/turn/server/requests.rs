//! Requests on an existing allocation: Refresh (RFC 8656 §8), CreatePermission (§10) and
//! ChannelBind (§12), and the peer address checks they share.
//!
//! Owns: changing an allocation's lifetime, permissions and channel bindings.

use super::request::{Authed, Request};
use super::{RelaySockets, Server};
use crate::stun::{self, Class, LongTermKey, Message};
use crate::turn::allocation::{ChannelBinding, Permission};
use crate::turn::policy::Verdict;
use crate::turn::{DeleteReason, Event, Refusal};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

impl Server {
    /// The allocation an authenticated request acts on, and its relay address; or 437.
    fn target(&mut self, req: &Request, auth: &Authed) -> Option<(u32, SocketAddr)> {
        let found = auth
            .existing
            .and_then(|slot| Some((slot, self.allocation(slot)?.info.relay)));
        if found.is_none() {
            self.refuse(req, Refusal::AllocationMissing, Some(&auth.key));
        }
        found
    }

    pub(super) fn refresh(
        &mut self,
        req: &Request,
        msg: &Message<'_>,
        auth: &Authed,
        sockets: &mut dyn RelaySockets,
    ) {
        let key = &auth.key;
        let Some((slot, relay)) = self.target(req, auth) else {
            return;
        };
        let (Ok(requested), Ok(family)) = (msg.lifetime(), msg.requested_address_family()) else {
            return self.refuse(req, Refusal::BadRequest, Some(key));
        };
        let relay_family = if relay.is_ipv4() {
            stun::FAMILY_IPV4
        } else {
            stun::FAMILY_IPV6
        };
        if family.is_some_and(|f| f != relay_family) {
            return self.refuse(req, Refusal::FamilyMismatch, Some(key));
        }
        let Some(info) = self.allocation(slot).map(|a| a.info.clone()) else {
            return;
        };
        if requested == Some(0) {
            self.respond(req, Class::Success, Some(key), |b| {
                b.add_u32(stun::LIFETIME, 0);
            });
            self.events
                .push_back(Event::AllocationRefreshed { info, lifetime: 0 });
            return self.delete(slot, DeleteReason::Deleted, sockets);
        }
        let lifetime = self.lifetime_for(requested);
        let expires = req.now + Duration::from_secs(lifetime.into());
        if let Some(alloc) = self.allocation_mut(slot) {
            alloc.expires = expires;
            alloc.lifetime = lifetime;
        }
        // Shortened: the pending timer entry would fire too late.
        self.schedule_expiry(slot, expires, false);
        self.respond(req, Class::Success, Some(key), |b| {
            b.add_u32(stun::LIFETIME, lifetime);
        });
        self.events
            .push_back(Event::AllocationRefreshed { info, lifetime });
    }

    /// Checks a peer address against the allocation's family and the peer policy, sending
    /// 443/403 when it fails. `Some(own)`: allowed, and whether it is one of the server's
    /// own addresses.
    fn check_peer(
        &mut self,
        req: &Request,
        key: &LongTermKey,
        relay: SocketAddr,
        peer: SocketAddr,
    ) -> Option<bool> {
        let refusal = if peer.is_ipv4() != relay.is_ipv4() {
            Refusal::FamilyMismatch
        } else {
            match self
                .config
                .policy
                .judge(peer.ip(), &self.config.own_addresses)
            {
                Verdict::Allowed => return Some(false),
                Verdict::Own => return Some(true),
                Verdict::Refused => Refusal::PeerForbidden,
            }
        };
        self.refuse(req, refusal, Some(key));
        None
    }

    pub(super) fn create_permission(&mut self, req: &Request, msg: &Message<'_>, auth: &Authed) {
        let key = &auth.key;
        let Some((slot, relay)) = self.target(req, auth) else {
            return;
        };
        let max = self.config.max_permissions_per_allocation;
        let mut ips: Vec<IpAddr> = Vec::new();
        let mut owns: Vec<bool> = Vec::new();
        for peer in msg.xor_peer_addresses() {
            let Ok(peer) = peer else {
                return self.refuse(req, Refusal::BadRequest, Some(key));
            };
            let Some(own) = self.check_peer(req, key, relay, peer) else {
                return;
            };
            if !ips.contains(&peer.ip()) {
                if ips.len() >= max {
                    return self.refuse(req, Refusal::PermissionLimit, Some(key));
                }
                ips.push(peer.ip());
                owns.push(own);
            }
        }
        if ips.is_empty() {
            return self.refuse(req, Refusal::BadRequest, Some(key));
        }
        let (now, expires) = (req.now, req.now + self.config.permission_lifetime);
        let Some(alloc) = self.allocation_mut(slot) else {
            return;
        };
        if !alloc.can_install_permissions(&ips, max, now) {
            return self.refuse(req, Refusal::PermissionLimit, Some(key));
        }
        for (&ip, &own) in ips.iter().zip(&owns) {
            alloc.install_permission(Permission { ip, expires, own }, max, now);
        }
        self.schedule_prune(slot, expires);
        // A refreshed or new permission may make a bound channel relayable again.
        self.sync_offload(slot, now);
        self.respond(req, Class::Success, Some(key), |_| {});
    }

    pub(super) fn channel_bind(&mut self, req: &Request, msg: &Message<'_>, auth: &Authed) {
        let key = &auth.key;
        let Some((slot, relay)) = self.target(req, auth) else {
            return;
        };
        let (Ok(Some(number)), Ok(Some(peer))) = (
            msg.channel_number(),
            msg.xor_address(stun::XOR_PEER_ADDRESS),
        ) else {
            return self.refuse(req, Refusal::BadRequest, Some(key));
        };
        if !(stun::MIN_CHANNEL..=stun::MAX_CHANNEL).contains(&number) {
            return self.refuse(req, Refusal::BadChannelNumber, Some(key));
        }
        let Some(own) = self.check_peer(req, key, relay, peer) else {
            return;
        };
        match self.bind(req, slot, number, peer, own) {
            Ok(()) => {
                self.sync_offload(slot, req.now);
                self.respond(req, Class::Success, Some(key), |_| {})
            }
            Err(refusal) => self.refuse(req, refusal, Some(key)),
        }
    }

    /// Binds (or refreshes) `number` to `peer` and installs the peer's permission.
    fn bind(
        &mut self,
        req: &Request,
        slot: u32,
        number: u16,
        peer: SocketAddr,
        own: bool,
    ) -> Result<(), Refusal> {
        let now = req.now;
        let max_channels = self.config.max_channels_per_allocation;
        let max_perms = self.config.max_permissions_per_allocation;
        let channel_expires = now + self.config.channel_lifetime;
        let perm_expires = now + self.config.permission_lifetime;
        let alloc = self
            .allocation_mut(slot)
            .ok_or(Refusal::AllocationMissing)?;
        // RFC 8656 §12.2: a number bound to another peer, or a peer bound to another
        // number, is a 400.
        let conflict = alloc
            .channels
            .iter()
            .any(|c| (c.number == number) != (c.peer == peer));
        if conflict {
            return Err(Refusal::ChannelConflict);
        }
        let exists = alloc.channels.iter().any(|c| c.number == number);
        if !exists && alloc.channels.len() >= max_channels {
            return Err(Refusal::ChannelLimit);
        }
        if !alloc.can_install_permissions(&[peer.ip()], max_perms, now) {
            return Err(Refusal::PermissionLimit);
        }
        let permission = Permission {
            ip: peer.ip(),
            expires: perm_expires,
            own,
        };
        alloc.install_permission(permission, max_perms, now);
        match alloc.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = channel_expires,
            None => alloc.channels.push(ChannelBinding {
                number,
                peer,
                expires: channel_expires,
            }),
        }
        self.schedule_prune(slot, perm_expires.min(channel_expires));
        Ok(())
    }
}
