//! The stream side's half of io_uring receives for TCP and TLS connections: which receives to
//! arm, and the bytes they bring, handed to the connection as a read would.
//!
//! Owns no state of its own (the connection's `ring` flag and generation live with it).
//! Must not: touch the ring; the backend arms the receives and passes their bytes in.

use super::{Closed, Input, RelayIo, Streams};
use crate::shard::ShardState;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

impl Streams {
    /// From now on, connections accepted are read by the backend's ring: it
    /// takes their receives from [`Streams::take_ring_arms`] and hands the bytes to
    /// [`Streams::ring_received`].
    pub fn set_ring_reads(&mut self) {
        self.ring_reads = true;
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
        if !conn.ring || conn.gen != gen || conn.ended {
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
