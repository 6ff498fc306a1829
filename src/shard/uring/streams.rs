//! The io_uring shard's hook into the stream side (TCP and TLS clients): one multishot
//! poll on the stream module's epoll descriptor, and the relay side as that module reaches
//! it. Stream sockets are read and written with plain calls there, not ring operations.
//!
//! Owns no state of its own; must not touch raw pointers (every SQE it builds carries a
//! descriptor only).

use super::io::{Io, SendBuf};
use super::op::Op;
use super::{Buffers, Shard};
use crate::shard::stream::{RelayIo, Streams};
use crate::shard::{IoCounters, ShardState};
use crate::turn::{RelayId, RelaySockets};
use ::io_uring::opcode;
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
