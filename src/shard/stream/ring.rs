//! The stream side's half of io_uring for TCP and TLS connections: which receives to arm
//! and the bytes they bring (handed to the connection as a read would), which sends to put
//! on the ring and what became of them, and connections the ring accepted.
//!
//! Owns no state of its own (the connection's `ring` flags, generation and send queue live
//! with it). Must not: touch the ring; the backend arms, sends and accepts, and passes the
//! results in.

use super::{Closed, Input, RelayIo, Streams};
use crate::shard::ShardState;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// A ring send to a stream connection: its slot, generation and descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SendTarget {
    pub slot: u32,
    pub gen: u32,
    pub fd: RawFd,
}

/// What became of a connection's ring send.
pub(crate) enum Sent<'a> {
    /// All of it left; an owned queue comes back for reuse.
    All(Option<BytesMut>),
    /// These bytes did not (short send, or the socket was full): they go first next time.
    Rest(&'a [u8]),
    /// The socket failed (reset, broken pipe), or the send was cancelled.
    Failed,
}

impl Streams {
    /// From now on, connections accepted are read by the backend's ring: it
    /// takes their receives from [`Streams::take_ring_arms`] and hands the bytes to
    /// [`Streams::ring_received`].
    pub fn set_ring_reads(&mut self) {
        self.ring_reads = true;
    }

    /// From now on, connections accepted are written by the backend's ring: zero copy
    /// ([`Streams::zero_copy`]) or from their queue ([`Streams::take_sends`]).
    pub fn set_ring_sends(&mut self) {
        self.ring_sends = true;
    }

    /// From now on, the backend's ring accepts ([`Streams::ring_accepted`]): the listeners
    /// leave the epoll set. Returns (listener index, descriptor) of each, to arm.
    pub fn set_ring_accepts(&mut self) -> Vec<(u32, RawFd)> {
        self.ring_accepts = true;
        let mut fds = Vec::with_capacity(self.listeners.len());
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let _ = self.poll.registry().deregister(&mut l.socket);
            fds.push((i as u32, l.socket.as_raw_fd()));
        }
        fds
    }

    /// The backend's ring accepts.
    pub fn ring_accepts(&self) -> bool {
        self.ring_accepts
    }

    /// The descriptor of listener `index` (to arm its accept again).
    pub fn listener_fd(&self, index: u32) -> Option<RawFd> {
        self.listeners
            .get(index as usize)
            .map(|l| l.socket.as_raw_fd())
    }

    /// The address listener `index` is bound to.
    #[cfg(test)]
    pub fn listener_addr(&self, index: u32) -> Option<SocketAddr> {
        self.listeners.get(index as usize)?.socket.local_addr().ok()
    }

    /// A connection the ring accepted on listener `index`.
    pub fn ring_accepted(&mut self, index: u32, fd: OwnedFd, now: Instant) {
        let socket = mio::net::TcpStream::from_std(std::net::TcpStream::from(fd));
        let Ok(client) = socket.peer_addr() else {
            // Reset before it was seen.
            return;
        };
        self.admit(index as usize, socket, client, now);
    }

    /// The ring receives armed now (for a recheck after dropped completions).
    pub fn ring_receives(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i as u32, c)))
            .filter(|(_, c)| c.ring && !c.ended)
            .map(|(i, c)| (i, c.gen))
    }

    /// A frame of `len` bytes for (`client`, `local`) can go on the ring straight from the
    /// caller's buffer: the connection counts it in flight. `None`: send it with
    /// [`Streams::send_to_client`] (queued, or dropped and counted).
    pub fn zero_copy(
        &mut self,
        local: SocketAddr,
        client: SocketAddr,
        len: usize,
    ) -> Option<SendTarget> {
        let &slot = self.by_tuple.get(&(client, local))?;
        let conn = self.conns.get_mut(slot).and_then(Option::as_mut)?;
        if !conn.zero_copy_ready() {
            return None;
        }
        conn.claim(len);
        Some(SendTarget {
            slot: slot as u32,
            gen: conn.gen,
            fd: conn.socket.as_raw_fd(),
        })
    }

    /// Lists connection `slot` for [`Streams::take_sends`] if it has bytes for the ring.
    pub(super) fn list_send(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) {
            if conn.wants_send() && !conn.listed {
                conn.listed = true;
                self.to_send.push(slot);
            }
        }
    }

    /// Hands each listed connection's queue to `send`, which puts it on the ring or gives
    /// it back (the ring is full; tried again next time).
    pub fn take_sends(
        &mut self,
        mut send: impl FnMut(SendTarget, BytesMut) -> Result<(), BytesMut>,
    ) {
        // Taken and put back, so the list keeps its capacity (no allocation per turn); a
        // send the ring refused lands in the fresh list, for the next time.
        let mut listed = std::mem::take(&mut self.to_send);
        for slot in listed.drain(..) {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            conn.listed = false;
            let Some(bytes) = conn.take_out() else {
                continue;
            };
            let target = SendTarget {
                slot: slot as u32,
                gen: conn.gen,
                fd: conn.socket.as_raw_fd(),
            };
            if let Err(back) = send(target, bytes) {
                conn.unsent(&back);
                conn.listed = true;
                self.to_send.push(slot);
            }
        }
        let retry = std::mem::replace(&mut self.to_send, listed);
        self.to_send.extend(retry);
    }

    /// A send [`Streams::zero_copy`] allowed could not go on the ring: its bytes are
    /// queued (copied) instead.
    pub fn requeue(&mut self, target: SendTarget, bytes: &[u8]) {
        let slot = target.slot as usize;
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.gen == target.gen && conn.sending() {
            conn.unsent(bytes);
            self.list_send(slot);
        }
    }

    /// A ring send to (`slot`, `gen`) completed; a failed one closes the connection. A
    /// completion for a connection that has gone is ignored.
    pub fn ring_sent(
        &mut self,
        (slot, gen): (u32, u32),
        sent: Sent<'_>,
        now: Instant,
        state: &mut ShardState,
        relays: &mut dyn RelayIo,
    ) {
        let slot = slot as usize;
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if !conn.ring_sends || conn.gen != gen || !conn.sending() {
            return;
        }
        match sent {
            Sent::All(back) => conn.sent(back),
            Sent::Rest(rest) => conn.unsent(rest),
            Sent::Failed => {
                conn.sent(None);
                self.close(slot, Closed::Io, now, state, relays);
                return;
            }
        }
        self.list_send(slot);
    }

    /// The ring receives to arm: (slot, generation, descriptor).
    pub fn take_ring_arms(&mut self) -> std::vec::Drain<'_, (u32, u32, RawFd)> {
        self.to_arm.drain(..)
    }

    /// Asks for the ring receive of (`slot`, `gen`) again, if that connection is still
    /// open and reading; returns whether it was queued.
    pub fn rearm_ring(&mut self, slot: u32, gen: u32) -> bool {
        let Some(conn) = self.conns.get(slot as usize).and_then(Option::as_ref) else {
            return false;
        };
        if !conn.ring || conn.gen != gen || conn.ended || self.to_arm.iter().any(|a| a.0 == slot) {
            return false;
        }
        self.to_arm.push((slot, gen, conn.socket.as_raw_fd()));
        true
    }

    /// A ring receive of (`slot`, `gen`) completed: `Ok` bytes (empty at the client's end of
    /// the stream), or `Err` for a socket error. A completion for a connection that has
    /// gone is ignored.
    pub fn ring_received(
        &mut self,
        slot: u32,
        gen: u32,
        data: Result<&[u8], ()>,
        now: Instant,
        state: &mut ShardState,
        relays: &mut dyn RelayIo,
    ) {
        let slot = slot as usize;
        let live = self
            .conns
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.ring && c.gen == gen && !c.ended);
        if !live {
            return;
        }
        match data {
            Ok([]) => {
                if let Some(conn) = self.conns[slot].as_mut() {
                    conn.ended = true;
                }
                self.ending.push(slot);
            }
            Ok(bytes) => self.read(slot, Input::Received(bytes), now, state, relays),
            Err(()) => self.close(slot, Closed::Io, now, state, relays),
        }
    }
}
