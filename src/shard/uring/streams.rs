//! The io_uring shard's hook into the stream side (TCP and TLS clients): a multishot
//! accept on every stream listener, a multishot receive into the provided-buffer ring on
//! every TCP and TLS connection, sends to clients on the ring (`stream_send`), the relay
//! side as that module reaches it, and one multishot poll on the stream module's epoll
//! descriptor (which holds nothing unless a test knob keeps accepts or writes there).
//!
//! After dropped completions (`recover`) the receives and accepts of the stream side are
//! checked again like the UDP receives. A dropped send completion leaves its connection
//! unable to send (its frames are dropped, counted) until the stream side's send timeout
//! closes it (`send_timeouts`); the send's entry, and the buffer it holds, stay with the
//! ring's state (one per completion the kernel dropped, which it counts).
//!
//! Owns which accepts wait to be armed again; must not touch raw pointers (every SQE it
//! builds carries a descriptor only; sends are `stream_send`'s).

use super::buffers::BUF_SIZE;
use super::io::{Io, BUF_GROUP};
use super::op::Op;
use super::stream_send::{Finished, Held, StreamSends};
use super::{Buffers, Lent, Shard};
use crate::shard::stream::{RelayIo, Sent, Streams};
use crate::shard::{IoCounters, ShardState};
use crate::turn::{RelayId, RelaySockets};
use ::io_uring::{cqueue, opcode};
use mio::net::TcpStream;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long an accept that failed (out of descriptors or memory) waits to be armed again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The ring's share of the stream side.
#[derive(Default)]
pub(super) struct StreamRing {
    pub sends: StreamSends,
    /// Accepts to arm again, at the instant given.
    rearm_accepts: Vec<(u32, Instant)>,
}

/// A stream client's payload sits in the connection's reassembly buffer or TLS plaintext,
/// or shares a provided buffer with other frames, so its send to the peer carries a copy,
/// in a buffer of the copy pool (`Io::send_copy`: no allocation per packet).
struct StreamRelays<'a> {
    io: &'a mut Io,
    buffers: &'a Buffers,
    sends: &'a mut StreamSends,
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
        let queued = self
            .io
            .relay_fd(relay)
            .is_some_and(|fd| self.io.send_copy(self.buffers, fd, peer, data));
        // A queued send is counted when it completes.
        if !queued {
            counters.send_errors += 1;
        }
    }

    fn release_stream(&mut self, socket: TcpStream) {
        self.sends.release(self.io, socket);
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

    /// Arms the multishot receives of the stream connections the stream side asks for
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

    /// A stream connection's receive completed: its bytes go to the stream side from
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
                // Out of buffers: armed again once some are back. Cancelled: by a recheck
                // (armed again), or the connection closed.
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
                    sends: &mut self.stream_ring.sends,
                };
                streams.ring_received(slot, gen, data, now, state, &mut relays);
                handled = true;
            }
            // Cancelled: by a recheck (armed again), or the connection closed (it is gone).
            let rearm = result > 0 || result == -libc::ENOBUFS || result == -libc::ECANCELED;
            if !cqueue::more(entry.flags()) && rearm {
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
            sends: &mut self.stream_ring.sends,
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
    /// stream side's final counters; cancels the poll and the accepts.
    pub(super) fn stop_streams(&mut self, state: &mut ShardState) {
        if let Some(s) = self.streams.as_mut() {
            s.shutdown();
            state.streams = s.counters.clone();
            let sqe = opcode::AsyncCancel::new(Op::StreamsPoll.encode())
                .build()
                .user_data(Op::Cancel.encode());
            self.io.push(&sqe);
            let mut index = 0;
            while s.listener_fd(index).is_some() {
                let sqe = opcode::AsyncCancel::new(Op::StreamAccept { index }.encode())
                    .build()
                    .user_data(Op::Cancel.encode());
                self.io.push(&sqe);
                index += 1;
            }
        }
    }

    /// Arms the multishot accept of stream listener `index` (tried again later if the ring
    /// takes no more entries).
    pub(super) fn arm_accept(&mut self, index: u32) {
        let Some(fd) = self.streams.as_ref().and_then(|s| s.listener_fd(index)) else {
            return;
        };
        let sqe = opcode::AcceptMulti::new(::io_uring::types::Fd(fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(Op::StreamAccept { index }.encode());
        if !self.io.push(&sqe) {
            self.stream_ring.rearm_accepts.push((index, Instant::now()));
        }
    }

    /// Arms the accepts whose retry time has come.
    pub(super) fn rearm_accepts(&mut self, now: Instant) {
        if self.stream_ring.rearm_accepts.is_empty() {
            return;
        }
        let due: Vec<u32> = self
            .stream_ring
            .rearm_accepts
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(i, _)| *i)
            .collect();
        self.stream_ring.rearm_accepts.retain(|(_, at)| *at > now);
        for index in due {
            self.arm_accept(index);
        }
    }

    /// Accept `index` waits to be armed again.
    pub(super) fn accept_waiting(&self, index: u32) -> bool {
        self.stream_ring
            .rearm_accepts
            .iter()
            .any(|(i, _)| *i == index)
    }

    /// When an accept waits to be armed again, if one does.
    pub(super) fn accept_deadline(&self) -> Option<Instant> {
        self.stream_ring
            .rearm_accepts
            .iter()
            .map(|(_, at)| *at)
            .min()
    }

    /// A multishot accept completed: a new connection for the stream side; an accept that
    /// ended is armed again (after a pause if it failed: out of descriptors, say).
    pub(super) fn stream_accepted(
        &mut self,
        stopping: bool,
        now: Instant,
        index: u32,
        entry: &cqueue::Entry,
    ) {
        let result = entry.result();
        if result >= 0 {
            // SAFETY: the kernel just created this descriptor for this completion; nothing
            // else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(result) };
            match self.streams.as_mut() {
                Some(s) => s.ring_accepted(index, fd, now),
                None => drop(fd),
            }
        }
        if !cqueue::more(entry.flags()) && !stopping {
            let at = if result >= 0 || result == -libc::ECANCELED {
                now
            } else {
                tracing::debug!("accept: {}", std::io::Error::from_raw_os_error(-result));
                now + ACCEPT_RETRY
            };
            self.stream_ring.rearm_accepts.push((index, at));
        }
    }

    /// A frame for a stream client, in the provided buffer `lent` at `offset`: sent from
    /// there on the ring if its connection has nothing queued or in flight, else queued
    /// (copied) or dropped by the connection. The buffer comes back when it is done with.
    pub(super) fn send_to_stream(
        &mut self,
        (local, client): (SocketAddr, SocketAddr),
        lent: Lent,
        offset: usize,
        len: usize,
    ) -> Option<Lent> {
        let streams = self.streams.as_mut()?;
        let Some(target) = streams.zero_copy(local, client, len) else {
            streams.send_to_client(
                local,
                client,
                &self.buffers.data(&lent)[offset..offset + len],
            );
            return Some(lent);
        };
        let held = Held::Lent { buf: lent, offset };
        match self
            .stream_ring
            .sends
            .send(&mut self.io, &self.buffers, target, held, len)
        {
            Ok(()) => None,
            Err(Held::Lent { buf, .. }) => {
                // The ring is full: the connection queues a copy instead.
                let bytes = &self.buffers.data(&buf)[offset..offset + len];
                streams.requeue(target, bytes);
                Some(buf)
            }
            Err(Held::Owned(_)) => None,
        }
    }

    /// Puts the queues of the stream connections that have bytes waiting on the ring, one
    /// send each.
    pub(super) fn send_stream_queues(&mut self) {
        let Some(streams) = self.streams.as_mut() else {
            return;
        };
        let (io, buffers, sends) = (&mut self.io, &self.buffers, &mut self.stream_ring.sends);
        streams.take_sends(|target, bytes| sends.send_owned(io, buffers, target, bytes));
    }

    /// A send to a stream client completed: sent again from where a short one stopped, or
    /// its outcome goes to the stream side and a lent buffer back to the ring.
    pub(super) fn stream_sent(
        &mut self,
        state: &mut ShardState,
        now: Instant,
        index: u32,
        entry: &cqueue::Entry,
    ) {
        let finished =
            self.stream_ring
                .sends
                .finish(&mut self.io, &self.buffers, index, entry.result());
        let Some(Finished::Done {
            target,
            lent,
            owned,
            sent,
            failed,
        }) = finished
        else {
            return;
        };
        if let Some(streams) = self.streams.as_mut() {
            let key = (target.slot, target.gen);
            let mut relays = StreamRelays {
                io: &mut self.io,
                buffers: &self.buffers,
                sends: &mut self.stream_ring.sends,
            };
            let rest_lent = lent.as_ref().filter(|(_, _, len)| sent < *len);
            if failed {
                streams.ring_sent(key, Sent::Failed, now, state, &mut relays);
            } else if let Some((buf, offset, len)) = rest_lent {
                let rest = &self.buffers.data(buf)[offset + sent..offset + len];
                streams.ring_sent(key, Sent::Rest(rest), now, state, &mut relays);
            } else if let Some(bytes) = owned.as_ref().filter(|b| sent < b.len()) {
                // An owned queue whose rest the ring did not take.
                streams.ring_sent(key, Sent::Rest(&bytes[sent..]), now, state, &mut relays);
            } else {
                streams.ring_sent(key, Sent::All(owned), now, state, &mut relays);
            }
        }
        if let Some((buf, _, _)) = lent {
            self.buffers.give_back(buf);
        }
    }
}
