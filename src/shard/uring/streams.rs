//! The io_uring shard's hook into the stream side (TCP and TLS clients): one multishot
//! poll on the stream module's epoll descriptor (accepts, writability, TLS connections),
//! a multishot receive into the provided-buffer ring on every plain TCP connection, and
//! the relay side as that module reaches it. Writes to stream sockets are plain calls.
//!
//! Owns no state of its own; must not touch raw pointers (every SQE it builds carries a
//! descriptor only).

use super::buffers::BUF_SIZE;
use super::io::{Io, SendBuf, BUF_GROUP};
use super::op::Op;
use super::{Buffers, Shard};
use crate::shard::stream::{RelayIo, Streams};
use crate::shard::{IoCounters, ShardState};
use crate::turn::{RelayId, RelaySockets};
use ::io_uring::{cqueue, opcode};
use std::net::SocketAddr;
use std::time::Instant;

/// A stream client's payload sits in the connection's read buffer, not a provided buffer,
/// so its send to the peer carries a copy.
struct StreamRelays<'a> {
    io: &'a mut Io,
    buffers: &'a Buffers,
}

impl RelayIo for StreamRelays<'_> {
    fn sockets(&mut self) -> &mut dyn RelaySockets {
        self.io
    }

    fn send_to_peer(
        &mut self,
        counters: &mut IoCounters,
        relay: RelayId,
        peer: SocketAddr,
        data: &[u8],
    ) {
        let queued = self.io.relay_fd(relay).is_some_and(|fd| {
            self.io
                .send(self.buffers, fd, peer, SendBuf::Owned(data.to_vec()))
                .is_ok()
        });
        // A queued send is counted when it completes.
        if !queued {
            counters.send_errors += 1;
        }
    }
}

impl Shard {
    /// Arms the multishot poll on the stream side's epoll set, if there is one.
    pub(super) fn arm_streams(&mut self) {
        if let Some(fd) = self.streams.as_ref().map(Streams::fd) {
            let sqe = opcode::PollAdd::new(::io_uring::types::Fd(fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(Op::StreamsPoll.encode());
            self.io.push(&sqe);
        }
    }

    /// Arms the multishot receives of the plain TCP connections the stream side asks for
    /// (new ones, and those whose receive ended); while buffers are short, waits until an
    /// eighth of them is back, as the UDP receives do.
    pub(super) fn arm_stream_recvs(&mut self) {
        let Some(streams) = self.streams.as_mut() else {
            return;
        };
        let count = usize::from(self.buffers.count());
        if self.buffers.lent() > count - count / 8 {
            return;
        }
        let mut retry = Vec::new();
        for (slot, gen, fd) in streams.take_ring_arms() {
            let op = Op::StreamRecv { index: slot, gen };
            let sqe = opcode::RecvMulti::new(::io_uring::types::Fd(fd), BUF_GROUP)
                .build()
                .user_data(op.encode());
            if self.io.push(&sqe) {
                self.io.armed += 1;
            } else {
                retry.push((slot, gen));
            }
        }
        for (slot, gen) in retry {
            streams.rearm_ring(slot, gen);
        }
    }

    /// A plain TCP connection's receive completed: its bytes go to the stream side from
    /// the provided buffer (given back at once: a client's payload is copied into its send
    /// to the peer), an end or error closes the connection, a receive that ended is armed
    /// again.
    pub(super) fn stream_received(
        &mut self,
        state: &mut ShardState,
        now: Instant,
        (slot, gen): (u32, u32),
        entry: &cqueue::Entry,
    ) {
        let result = entry.result();
        let lent = self.buffers.take(entry);
        if !cqueue::more(entry.flags()) {
            self.io.armed = self.io.armed.saturating_sub(1);
        }
        let mut handled = false;
        if let Some(streams) = self.streams.as_mut() {
            let data: Option<Result<&[u8], ()>> = match (&lent, result) {
                (Some(l), n) if n > 0 => {
                    Some(Ok(&self.buffers.data(l)[..(n as usize).min(BUF_SIZE)]))
                }
                (_, 0) => Some(Ok(&[])),
                // Out of buffers: armed again once some are back. Cancelled: the
                // connection is closing.
                (_, e) if e == -libc::ENOBUFS || e == -libc::ECANCELED => None,
                _ => Some(Err(())),
            };
            if result == -libc::ENOBUFS {
                state.io.no_buffers += 1;
            }
            if let Some(data) = data {
                let mut relays = StreamRelays {
                    io: &mut self.io,
                    buffers: &self.buffers,
                };
                streams.ring_received(slot, gen, data, now, state, &mut relays);
                handled = true;
            }
            if !cqueue::more(entry.flags()) && (result > 0 || result == -libc::ENOBUFS) {
                streams.rearm_ring(slot, gen);
            }
        }
        if let Some(lent) = lent {
            self.buffers.give_back(lent);
        }
        if handled {
            // Answers go out now: a client's end arriving in the same turn closes the
            // connection at the turn's end, and they must be written before that.
            self.flush_transmits(state);
        }
    }

    /// The poll fired: serves what is ready on the stream sockets; re-arms a poll that
    /// ended.
    pub(super) fn streams_ready(&mut self, state: &mut ShardState, now: Instant, more: bool) {
        self.run_streams(state, now, false);
        self.flush_transmits(state);
        if !more && !state.stopping() {
            self.arm_streams();
        }
    }

    /// Runs the stream side: what is ready on its sockets, or (`sweep`) its deadlines.
    pub(super) fn run_streams(&mut self, state: &mut ShardState, now: Instant, sweep: bool) {
        let Some(streams) = self.streams.as_mut() else {
            return;
        };
        let mut relays = StreamRelays {
            io: &mut self.io,
            buffers: &self.buffers,
        };
        if sweep {
            streams.sweep(now, state, &mut relays);
        } else {
            streams.process(now, state, &mut relays);
        }
    }

    /// Delivers the core's events, letting the stream side see them first.
    pub(super) fn dispatch_events(&mut self, state: &mut ShardState) {
        match self.streams.as_mut() {
            Some(s) => state.dispatch_events_with(|e| s.on_event(e)),
            None => state.dispatch_events(),
        }
    }

    /// Closes every stream connection (the core has deleted the allocations) and keeps the
    /// stream side's final counters; cancels the poll.
    pub(super) fn stop_streams(&mut self, state: &mut ShardState) {
        if let Some(s) = self.streams.as_mut() {
            s.shutdown();
            state.streams = s.counters.clone();
            let sqe = opcode::AsyncCancel::new(Op::StreamsPoll.encode())
                .build()
                .user_data(Op::Cancel.encode());
            self.io.push(&sqe);
        }
    }
}
