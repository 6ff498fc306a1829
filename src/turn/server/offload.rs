//! Offload commands for the kernel fast path (XDP, `crate::xdp`): which channel bindings the
//! kernel may relay, decided here so the core stays the one authority (RFC 8656 §9, §12).
//!
//! Owns: the set of offloaded bindings per allocation, the `Install`/`Remove` commands that
//! change it (drained by the shard with [`Server::poll_offload`]), traffic the kernel relayed
//! coming back into the allocation's counters, and holding an offloaded allocation's final
//! events until the kernel's last counts are in. Must not: touch the maps (the shard does).
//!
//! A channel is offloaded while user space would relay it: a UDP client, no bandwidth limit,
//! the allocation, the channel and the permission of its peer IP all live, and (on the
//! server's own addresses) a relay port. Each change of those is re-evaluated at the tick the
//! core already computes (ChannelBind, CreatePermission, the prune timer, deletion), so the
//! kernel path stops when user space would start dropping.

use super::Server;
use crate::turn::allocation::Allocation;
use crate::turn::{AllocationInfo, DeleteReason, Event, FiveTuple, Traffic, Transport};
use crate::xdp::ChannelOffload;
use std::sync::Arc;
use std::time::Instant;

/// What the shard must do to the kernel's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadCommand {
    /// Relay this binding in the kernel from now on. A refusal (map full) changes nothing:
    /// user space keeps relaying it.
    Install(ChannelOffload),
    /// Stop, and hand the traffic counted since the last read to
    /// [`Server::offload_removed`] (zero when it was never installed).
    Remove(ChannelOffload),
}

/// A deleted allocation whose offloaded bindings are being removed: its final events wait
/// for the kernel's last counts.
#[derive(Debug)]
pub(super) struct Closing {
    info: Arc<AllocationInfo>,
    reason: DeleteReason,
    unreported: Traffic,
    reported: Traffic,
    pending: usize,
}

impl Server {
    /// Next command for the kernel fast path (only with `ServerConfig::offload`).
    pub fn poll_offload(&mut self) -> Option<OffloadCommand> {
        self.offload_commands.pop_front()
    }

    /// Traffic the kernel relayed on `channel` of the allocation of `tuple` since the last
    /// read: added to its unreported and total traffic, reported like relayed traffic (the
    /// packet trigger included). Unknown tuples are ignored.
    pub fn offloaded_traffic(
        &mut self,
        _now: Instant,
        tuple: FiveTuple,
        _channel: u16,
        delta: Traffic,
    ) {
        if let Some(slot) = self.by_tuple.get(&tuple).copied() {
            if let Some(alloc) = self.allocation_mut(slot) {
                alloc.unreported.add(&delta);
            }
            self.maybe_report(slot);
        }
    }

    /// The shard applied `Remove(binding)`; `delta` is the traffic since its last read. For
    /// a deleted allocation the last of these emits its final traffic and `AllocationDeleted`.
    pub fn offload_removed(&mut self, now: Instant, binding: &ChannelOffload, delta: Traffic) {
        let tuple = FiveTuple {
            client: binding.client,
            server: binding.server,
            transport: Transport::Udp,
        };
        let Some(closing) = self.closing.get_mut(&binding.allocation) else {
            return self.offloaded_traffic(now, tuple, binding.channel, delta);
        };
        closing.unreported.add(&delta);
        closing.pending -= 1;
        if closing.pending > 0 {
            return;
        }
        if let Some(mut c) = self.closing.remove(&binding.allocation) {
            c.reported.add(&c.unreported);
            self.events.push_back(Event::AllocationDeleted {
                info: c.info,
                reason: c.reason,
                last: c.unreported,
                totals: c.reported,
            });
        }
    }

    /// Deleted allocations waiting for their offloaded bindings' last counts.
    pub fn closing_count(&self) -> usize {
        self.closing.len()
    }

    /// `delete` of an allocation with offloaded bindings: remove them, hold the events.
    pub(super) fn close_offloaded(&mut self, alloc: Allocation, reason: DeleteReason) {
        let pending = alloc.offloaded.len();
        for b in &alloc.offloaded {
            self.offload_commands.push_back(OffloadCommand::Remove(*b));
        }
        self.closing.insert(
            alloc.info.id,
            Closing {
                info: alloc.info,
                reason,
                unreported: alloc.unreported,
                reported: alloc.reported,
                pending,
            },
        );
    }

    /// Brings the allocation's offloaded bindings in line with what user space would relay
    /// at `now`: removes what it would drop, installs what it would relay.
    pub(super) fn sync_offload(&mut self, slot: u32, now: Instant) {
        if !self.config.offload {
            return;
        }
        let capped = self.config.max_bps != 0;
        let relay_range = self.config.relay_range.clone();
        let Some(alloc) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.allocation.as_mut())
        else {
            return;
        };
        let tuple = alloc.info.five_tuple;
        let eligible = tuple.transport == Transport::Udp
            && !capped
            && alloc.bucket_in.is_none()
            && alloc.expires > now;
        let wanted: Vec<ChannelOffload> = alloc
            .channels
            .iter()
            .filter(|_| eligible)
            .filter(|c| c.expires > now)
            .filter(|c| {
                alloc
                    .permission(c.peer.ip(), now)
                    .is_some_and(|p| !p.own || relay_range.contains(&c.peer.port()))
            })
            .map(|c| ChannelOffload {
                client: tuple.client,
                server: tuple.server,
                channel: c.number,
                relay: alloc.info.relay,
                peer: c.peer,
                allocation: alloc.info.id,
            })
            .filter(|b| b.validate().is_ok())
            .collect();
        let commands = &mut self.offload_commands;
        alloc.offloaded.retain(|b| {
            let keep = wanted.contains(b);
            if !keep {
                commands.push_back(OffloadCommand::Remove(*b));
            }
            keep
        });
        for b in wanted {
            if !alloc.offloaded.contains(&b) {
                commands.push_back(OffloadCommand::Install(b));
                alloc.offloaded.push(b);
            }
        }
    }

    /// A bandwidth cap was set: capped traffic must go through user space's buckets, so
    /// every offloaded binding is removed. (Lifting the cap offloads again at each
    /// allocation's next ChannelBind, CreatePermission or prune.)
    pub(super) fn remove_all_offloads(&mut self) {
        for s in &mut self.slots {
            if let Some(alloc) = s.allocation.as_mut() {
                for b in alloc.offloaded.drain(..) {
                    self.offload_commands.push_back(OffloadCommand::Remove(b));
                }
            }
        }
    }
}
