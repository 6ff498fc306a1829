//! The shard's side of relay to relay between shards (the queues are `handoff`): what it
//! queued is published and its targets woken before each submit; what others queued for
//! it is taken every turn and given to the core as if it had come through the kernel.
//!
//! Must not: decide anything about the protocol (the core does, in `handle_peer`).

use super::buffers::{Buffers, Lent};
use super::datagram::{to_client, UdpSend};
use super::handoff::Handoff;
use super::io::{Io, SendBuf};
use super::op::Op;
use super::{Shard, PAYLOAD_OFFSET};
use crate::shard::{IoCounters, ShardState};
use crate::turn::RelayId;
use ::io_uring::types::Fd;
use ::io_uring::{opcode, squeue};
use std::net::SocketAddr;
use std::time::Instant;

impl Shard {
    /// Before each submit: publishes the datagrams queued for other shards this turn and
    /// wakes them (once per batch).
    pub(super) fn publish_handoffs(&mut self) {
        let Shard { handoff, io, .. } = self;
        if let Some(h) = handoff {
            h.publish(|target, ring| {
                // The sender hears of it only if it fails (then it wakes the target
                // through its eventfd instead).
                let op = Op::HandoffWake {
                    shard: target as u32,
                };
                let sqe = opcode::MsgRingData::new(Fd(ring), 0, op.encode(), None)
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
                    .user_data(op.encode());
                io.push(&sqe);
            });
        }
    }

    /// Takes the datagrams other shards queued for this one's allocations: each as if it
    /// had arrived on the target relay socket from the sender's relay address, into a
    /// spare buffer, and on to the client from there. Stops when no spare buffer is left
    /// (the sends holding them give them back; the rest waits for the next turn).
    pub(super) fn take_handoffs(&mut self, state: &mut ShardState, now: Instant) {
        let Shard {
            handoff,
            buffers,
            io,
            streams,
            pacer,
            ..
        } = self;
        let Some(handoff) = handoff.as_mut() else {
            return;
        };
        let taken = handoff.drain(|from, to, data| {
            let Some(target) = io.relay_at(to) else {
                // Closed since the sender looked (or the port moved on): what the kernel
                // would have done with it too.
                state.io.cross_shard_dropped += 1;
                return true;
            };
            let Some(lent) = buffers.lend_spare() else {
                return false;
            };
            let payload = PAYLOAD_OFFSET..PAYLOAD_OFFSET + data.len();
            let buf = buffers.bytes(&lent);
            buf[payload.clone()].copy_from_slice(data);
            state.io.cross_shard_received += 1;
            let action = state.server.handle_peer(now, target, from, buf, payload);
            let send = to_client(io, streams.as_mut(), action, buf);
            if let Err(back) = send_or_return(io, buffers, lent, send) {
                state.io.send_errors += 1;
                super::give_back(buffers, back);
            }
            true
        });
        if taken > 0 {
            pacer.count(now, taken);
        }
    }

    /// At shutdown, after the allocations are gone: nothing more may be queued for this
    /// shard, and what was is dropped and counted; this shard's own queued datagrams are
    /// published for their targets.
    pub(super) fn close_handoffs(&mut self, state: &mut ShardState) {
        self.publish_handoffs();
        if let Some(h) = &mut self.handoff {
            state.io.cross_shard_dropped += h.close() as u64;
        }
    }
}

/// A datagram from relay `relay` to `peer`: queued for the shard that owns `peer` if it
/// is another shard's relay address. True if queued; a full queue is counted as a
/// fallback (the caller sends it through the kernel).
pub(super) fn hand_over(
    handoff: Option<&mut Handoff>,
    io: &Io,
    counters: &mut IoCounters,
    (relay, peer): (RelayId, SocketAddr),
    data: &[u8],
) -> bool {
    let Some(h) = handoff else {
        return false;
    };
    let (Some(target), Some(from)) = (h.target(peer), io.relay_addr(relay)) else {
        return false;
    };
    if h.push(target, from, peer, data) {
        counters.relayed_cross_shard += 1;
        true
    } else {
        counters.cross_shard_fallbacks += 1;
        false
    }
}

/// Queues the send `to_client` asked for from `lent`, or gives `lent` back if none.
fn send_or_return(
    io: &mut Io,
    buffers: &mut Buffers,
    lent: Lent,
    send: Option<UdpSend>,
) -> Result<(), SendBuf> {
    match send {
        Some((fd, to, offset, len)) => io.send(
            buffers,
            fd,
            to,
            SendBuf::Lent {
                buf: lent,
                offset,
                len,
            },
        ),
        None => {
            buffers.give_back(lent);
            Ok(())
        }
    }
}

impl Shard {
    /// A wake between shards completed on this ring: from another shard (datagrams are
    /// queued: taken this turn anyway), or, with an error, this shard's own message that
    /// did not reach shard `shard`: woken through its eventfd instead, and from now on.
    pub(super) fn handoff_woken(&mut self, shard: u32, result: i32) {
        if result >= 0 {
            return;
        }
        if let Some(h) = &mut self.handoff {
            h.wake_by_eventfd(shard as usize);
            if h.msg_ring {
                h.msg_ring = false;
                tracing::warn!(
                    "waking another shard through its ring failed ({}); using its eventfd",
                    std::io::Error::from_raw_os_error(-result)
                );
            }
        }
    }
}
