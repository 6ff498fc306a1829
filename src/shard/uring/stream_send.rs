//! Sends to TCP and TLS clients on the ring, and the sockets of closed connections.
//!
//! A peer's datagram for a plain TCP client with nothing queued leaves straight from the
//! provided buffer it arrived in (the ChannelData or Data header is in its headroom, the
//! padding zeroed by the core), as a send with `MSG_DONTWAIT`: the kernel takes what fits
//! in the socket's buffer at once and never waits with the buffer, so a client that does
//! not read cannot pin provided buffers. What it does not take is copied to the
//! connection's bounded queue. Everything else (frames behind a send in flight, the rest
//! of a short send, TLS records) is queued by the connection and leaves as one send from
//! that queue, which may wait for the client: it holds the connection's own memory only.
//! One send per connection is in flight at a time, so bytes keep their order.
//!
//! A closed connection's socket is kept until what was queued for its descriptor (its
//! sends, the cancellation of its receive and send) reached the kernel, so the number
//! cannot be reused under a queued operation.
//!
//! Owns the sends in flight (what keeps their bytes alive until the completion); must not
//! decide what to send (that is the stream module).

use super::buffers::{Buffers, Lent};
use super::io::Io;
use super::op::Op;
use crate::shard::stream::SendTarget;
use bytes::BytesMut;
use io_uring::opcode;
use io_uring::types::{CancelBuilder, Fd};
use mio::net::TcpStream;
use std::os::fd::AsRawFd;

/// The bytes a stream send carries.
pub(super) enum Held {
    /// `len` bytes at `offset` of a buffer a relay receive lent (zero copy).
    Lent { buf: Lent, offset: usize },
    /// A connection's queue.
    Owned(BytesMut),
}

struct InFlight {
    target: SendTarget,
    held: Held,
    len: usize,
    /// Bytes of an owned queue already sent by earlier (short) sends.
    done: usize,
}

/// What a completed stream send asks of the shard.
pub(super) enum Finished {
    /// Sent again from where the short send stopped (an owned queue).
    Again,
    /// Done: tell the stream side (a lent buffer goes back to the ring after).
    Done {
        target: SendTarget,
        lent: Option<(Lent, usize, usize)>,
        owned: Option<BytesMut>,
        sent: usize,
        failed: bool,
    },
}

#[derive(Default)]
pub(super) struct StreamSends {
    sends: Vec<Option<InFlight>>,
    free: Vec<u32>,
    in_flight: usize,
    /// Sockets of closed connections, dropped after a submit that left nothing queued.
    closing: Vec<TcpStream>,
}

impl StreamSends {
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues the send of `held` (`len` bytes) to `target`; gives `held` back when the
    /// ring takes no more entries.
    pub fn send(
        &mut self,
        io: &mut Io,
        buffers: &Buffers,
        target: SendTarget,
        held: Held,
        len: usize,
    ) -> Result<(), Held> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.sends.push(None);
                self.sends.len() as u32 - 1
            }
        };
        let entry = InFlight {
            target,
            held,
            len,
            done: 0,
        };
        let entry = self.sends[index as usize].insert(entry);
        if push(io, buffers, index, entry) {
            self.in_flight += 1;
            Ok(())
        } else {
            self.free.push(index);
            let entry = self.sends[index as usize].take().expect("just stored");
            Err(entry.held)
        }
    }

    /// Queues the send of a connection's queue; gives it back when the ring takes no more
    /// entries.
    pub fn send_owned(
        &mut self,
        io: &mut Io,
        buffers: &Buffers,
        target: SendTarget,
        bytes: BytesMut,
    ) -> Result<(), BytesMut> {
        let len = bytes.len();
        match self.send(io, buffers, target, Held::Owned(bytes), len) {
            Ok(()) => Ok(()),
            Err(Held::Owned(bytes)) => Err(bytes),
            // `send` gives back what it was given.
            Err(Held::Lent { .. }) => unreachable!("an owned send came back lent"),
        }
    }

    /// The completion of send `index` with `result`.
    pub fn finish(
        &mut self,
        io: &mut Io,
        buffers: &Buffers,
        index: u32,
        result: i32,
    ) -> Option<Finished> {
        let entry = self.sends.get_mut(index as usize)?.as_mut()?;
        let sent = usize::try_from(result).unwrap_or(0);
        if let Held::Owned(_) = entry.held {
            // A short send (or a spurious EAGAIN) of a queue: the rest goes now, in order.
            let short = result > 0 && entry.done + sent < entry.len;
            if short || result == -libc::EAGAIN {
                entry.done += sent;
                if push(io, buffers, index, entry) {
                    return Some(Finished::Again);
                }
            }
        }
        let entry = self.sends[index as usize].take()?;
        self.free.push(index);
        self.in_flight -= 1;
        let failed = result < 0 && result != -libc::EAGAIN;
        let (lent, owned) = match entry.held {
            Held::Lent { buf, offset } => (Some((buf, offset, entry.len)), None),
            Held::Owned(bytes) => (None, Some(bytes)),
        };
        Some(Finished::Done {
            target: entry.target,
            lent,
            owned,
            sent: entry.done + sent,
            failed,
        })
    }

    /// A connection closed: every operation on its descriptor is cancelled, and the socket
    /// stays open until those queued reached the kernel.
    pub fn release(&mut self, io: &mut Io, socket: TcpStream) {
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(socket.as_raw_fd())).all())
            .build()
            .user_data(Op::Cancel.encode());
        io.push(&cancel);
        self.closing.push(socket);
    }

    /// After a submit that left nothing queued: the sockets of closed connections go.
    pub fn submitted(&mut self, io: &mut Io) {
        if !self.closing.is_empty() && io.ring.submission().is_empty() {
            self.closing.clear();
        }
    }

    /// Keeps what sends in flight point at for the life of the process (shutdown with
    /// the kernel still holding them); their lent buffers are leaked with the ring's.
    pub fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.sends));
        self.free.clear();
        self.in_flight = 0;
    }
}

/// Queues the SQE of send `index` from where `entry` stopped.
fn push(io: &mut Io, buffers: &Buffers, index: u32, entry: &InFlight) -> bool {
    let rest = entry.len - entry.done;
    let (ptr, flags) = match &entry.held {
        // Never waits with a provided buffer.
        Held::Lent { buf, offset } => (
            buffers.send_ptr(buf, offset + entry.done),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        ),
        Held::Owned(bytes) => (bytes[entry.done..].as_ptr(), libc::MSG_NOSIGNAL),
    };
    let sqe = opcode::Send::new(Fd(entry.target.fd), ptr, rest as u32)
        .flags(flags)
        .build()
        .user_data(Op::StreamSend { index }.encode());
    io.push(&sqe)
}
