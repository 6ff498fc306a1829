//! One TCP or TLS client connection: its socket, its TLS session, the frames arriving on it
//! and the bytes waiting to leave.
//!
//! Owns: reading until the socket would block (through TLS when there is a session),
//! handing plaintext to the reassembler, and a send queue bounded in bytes: a frame that
//! does not fit is dropped whole (never cut), so a client that stops reading costs at most
//! the bound. Must not: interpret frames or decide when a connection should end (that is
//! the stream module's job, from what these calls report).
//!
//! TLS uses rustls's unbuffered API (the record layer: `records`): records are decrypted
//! where they lie and written straight into the send queue; the bytes of a record not yet
//! whole wait in `incoming`, given back when the connection goes quiet. rustls 0.23 still
//! allocates one buffer per record inside (the plaintext of a record it decrypts, the
//! ciphertext of one it encrypts); nothing here does.

use crate::stun::framing::{FramingError, Reassembler};
use crate::turn::{FiveTuple, TlsSession};
use bytes::BytesMut;
use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use std::io::{self, Read, Write};
use std::time::Instant;

pub(crate) mod records;
#[cfg(test)]
mod tests;

use records::{read_tls, received_tls, write_tls, Outgoing, Records};

/// Why a connection ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The client closed or reset it.
    Peer,
    /// Bytes that are not STUN or ChannelData, or a frame over the limit.
    Framing(FramingError),
    /// A TLS alert, a bad record, or a failed handshake.
    Tls,
    /// A socket error on read or write.
    Io,
}

/// Whether a frame for the client was accepted.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Written to the socket, or queued behind earlier bytes.
    Yes,
    /// The queue is full: the frame was dropped whole.
    Full,
}

/// Where the bytes of a read come from.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Input<'a> {
    /// The socket, read until it would block (`to_end`: until it reports its end, as the
    /// peer closed it).
    Socket { to_end: bool },
    /// Bytes the backend's ring already took off the socket (TLS records on TLS).
    Received(&'a [u8]),
}

/// A send queue this large is given back once empty, so a client that was slow once does
/// not keep the memory.
const KEEP_QUEUE_CAPACITY: usize = 16 * 1024;

/// A TLS session in rustls's unbuffered form.
pub(crate) type TlsSessionState = Box<UnbufferedServerConnection>;

pub(crate) struct Connection {
    pub socket: TcpStream,
    pub tuple: FiveTuple,
    pub tls: Option<TlsSessionState>,
    /// Received TLS bytes not yet processed: the start of a record (or handshake message)
    /// whose rest has not arrived. Empty (and without capacity once quiet) otherwise.
    incoming: BytesMut,
    /// The session's protocol and cipher, once its handshake has finished.
    session: Option<TlsSession>,
    frames: Reassembler,
    out: BytesMut,
    limit: usize,
    /// Last time a byte arrived, or the allocation went away.
    pub active_at: Instant,
    pub opened_at: Instant,
    /// An allocation lives on this connection's 5-tuple.
    pub allocated: bool,
    /// The core knows this connection's TLS session.
    pub session_told: bool,
    /// The client ended its side: nothing more is read, the connection closes once the
    /// answers to what it sent last have been written.
    pub ended: bool,
    /// The backend's ring receives this connection's bytes (io_uring); the epoll set
    /// watches it for writability only.
    pub ring: bool,
    /// Tags the ring receive's completions, so one for an earlier connection in the same
    /// slot is told apart.
    pub gen: u32,
    /// The backend's ring sends this connection's bytes: nothing here writes to the
    /// socket while the connection is open; queued bytes wait for [`Connection::take_out`].
    pub ring_sends: bool,
    /// Bytes of the ring send in flight (at most one per connection, for ordering);
    /// `None` when none is.
    in_flight: Option<usize>,
    /// Ring sends completed (sent or not), so the sweep sees whether one is stuck.
    pub sends_done: u32,
    /// Since when, at the sweeps, a ring send has been in flight with `sends_done` at
    /// that count.
    pub send_watch: Option<(Instant, u32)>,
    /// An empty queue, its capacity kept, swapped in for `out` when `out` leaves on a ring
    /// send (no allocation per send).
    spare: BytesMut,
    /// On the stream side's list of connections with a send to put on the ring.
    pub listed: bool,
}

impl Connection {
    pub fn new(
        socket: TcpStream,
        tuple: FiveTuple,
        tls: Option<TlsSessionState>,
        max_frame: usize,
        limit: usize,
        now: Instant,
    ) -> Connection {
        Connection {
            socket,
            tuple,
            tls,
            incoming: BytesMut::new(),
            session: None,
            frames: Reassembler::new(max_frame),
            out: BytesMut::new(),
            limit,
            active_at: now,
            opened_at: now,
            allocated: false,
            session_told: false,
            ended: false,
            ring: false,
            gen: 0,
            ring_sends: false,
            in_flight: None,
            sends_done: 0,
            send_watch: None,
            spare: BytesMut::new(),
            listed: false,
        }
    }

    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.frames.set_max_frame(max_frame);
    }

    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Memory held for this connection's buffers (not counting TLS state).
    pub fn buffered_capacity(&self) -> usize {
        self.out.capacity()
            + self.spare.capacity()
            + self.frames.capacity()
            + self.incoming.capacity()
    }

    /// Gives back the reassembly buffer and the TLS record buffer if they hold nothing
    /// pending: for a connection gone quiet (a busy one keeps them, so frames and records
    /// split across reads cost no allocation).
    pub fn shrink(&mut self) {
        self.frames.shrink();
        if self.incoming.is_empty() {
            self.incoming = BytesMut::new();
        }
    }

    /// A ring send is in flight.
    pub fn sending(&self) -> bool {
        self.in_flight.is_some()
    }

    /// A frame for the client could go on the ring straight from the caller's buffer: a
    /// plain TCP connection with nothing queued or in flight.
    pub fn zero_copy_ready(&self) -> bool {
        self.ring_sends && self.tls.is_none() && self.in_flight.is_none() && self.out.is_empty()
    }

    /// Marks a send of `len` bytes the caller put on the ring itself (zero copy).
    pub fn claim(&mut self, len: usize) {
        self.in_flight = Some(len);
    }

    /// Queued bytes wait and no send is in flight: [`Connection::take_out`] has work.
    pub fn wants_send(&self) -> bool {
        self.ring_sends && self.in_flight.is_none() && !self.out.is_empty()
    }

    /// The queued bytes, to go on the ring as one send; the connection counts them as in
    /// flight until [`Connection::sent`] or [`Connection::unsent`].
    pub fn take_out(&mut self) -> Option<BytesMut> {
        if !self.wants_send() {
            return None;
        }
        let bytes = std::mem::replace(&mut self.out, std::mem::take(&mut self.spare));
        self.in_flight = Some(bytes.len());
        Some(bytes)
    }

    /// The ring send in flight completed; `back` is the queue it carried, kept for reuse.
    pub fn sent(&mut self, back: Option<BytesMut>) {
        self.in_flight = None;
        self.sends_done = self.sends_done.wrapping_add(1);
        if let Some(mut b) = back {
            b.clear();
            if b.capacity() <= KEEP_QUEUE_CAPACITY && b.capacity() > self.spare.capacity() {
                self.spare = b;
            }
        }
    }

    /// The ring send in flight left `rest` unsent (a short send, or the socket was full):
    /// it goes first in the queue, before what was queued meanwhile.
    pub fn unsent(&mut self, rest: &[u8]) {
        self.in_flight = None;
        self.sends_done = self.sends_done.wrapping_add(1);
        let old = self.out.len();
        self.out.resize(old + rest.len(), 0);
        self.out.copy_within(0..old, rest.len());
        self.out[..rest.len()].copy_from_slice(rest);
    }

    /// Takes `input` (reading the socket until it would block, or bytes a ring receive
    /// took), passing every whole frame to `frame` with the TLS session it came over (none
    /// on TCP), and writes what TLS has to say in return (handshake, alerts).
    pub fn read(
        &mut self,
        buf: &mut [u8],
        input: Input<'_>,
        now: Instant,
        mut frame: impl FnMut(&[u8], Option<TlsSession>),
    ) -> Result<(), Closed> {
        let result = match (self.tls.as_mut(), input) {
            (None, Input::Socket { to_end }) => {
                let mut plain = |f: &[u8]| frame(f, None);
                read_plain(&mut self.socket, &mut self.frames, buf, to_end, &mut plain)
            }
            (None, Input::Received(bytes)) => self
                .frames
                .push(bytes, |f| frame(f, None))
                .map_err(Closed::Framing),
            (Some(tls), input) => {
                let mut records = Records {
                    tls,
                    session: &mut self.session,
                    frames: &mut self.frames,
                    out: &mut self.out,
                };
                match input {
                    Input::Socket { .. } => read_tls(
                        &mut records,
                        &mut self.socket,
                        &mut self.incoming,
                        buf,
                        &mut frame,
                    ),
                    Input::Received(bytes) => {
                        received_tls(&mut records, &mut self.incoming, bytes, buf, &mut frame)
                    }
                }
            }
        };
        self.active_at = now;
        let flushed = self.flush();
        result.and(flushed)
    }

    /// Queues `frame` for the client (encrypting it on TLS) and writes what the socket
    /// takes now.
    pub fn send(&mut self, frame: &[u8]) -> Result<Queued, Closed> {
        if self.handshaking() {
            // Nothing can be sent before the handshake ends; the core cannot have an
            // allocation on a connection that has not spoken yet.
            return Ok(Queued::Full);
        }
        let waiting = self.out.len() + self.in_flight.unwrap_or(0);
        if waiting > 0 && waiting + frame.len() > self.limit {
            return Ok(Queued::Full);
        }
        match self.tls.as_mut() {
            None if self.ring_sends => self.out.extend_from_slice(frame),
            None if self.out.is_empty() => {
                // The common case: straight from the caller's buffer to the socket.
                let n = match self.socket.write(frame) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                    Err(_) => return Err(Closed::Io),
                };
                // A partly written frame must be finished, so its rest is queued even
                // past the limit (at most one frame).
                self.out.extend_from_slice(&frame[n..]);
                return Ok(Queued::Yes);
            }
            None => self.out.extend_from_slice(frame),
            Some(tls) => {
                if !write_tls(
                    tls,
                    &mut self.incoming,
                    &mut self.out,
                    Outgoing::Data(frame),
                )? {
                    return Ok(Queued::Full);
                }
            }
        }
        self.flush()?;
        Ok(Queued::Yes)
    }

    /// Writes queued bytes until the socket would block (on ring sends, the backend's
    /// ring does).
    pub fn flush(&mut self) -> Result<(), Closed> {
        if self.ring_sends {
            return Ok(());
        }
        self.write_out()
    }

    fn write_out(&mut self) -> Result<(), Closed> {
        while !self.out.is_empty() {
            match self.socket.write(&self.out) {
                Ok(0) => return Err(Closed::Io),
                Ok(n) => {
                    let _ = self.out.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Closed::Io),
            }
        }
        if self.out.capacity() > KEEP_QUEUE_CAPACITY {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// A polite end: TLS close_notify if there is a session, then the socket is shut.
    pub fn close(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            let _ = write_tls(
                tls,
                &mut self.incoming,
                &mut self.out,
                Outgoing::CloseNotify,
            );
        }
        // Best effort: what the socket does not take now is lost with the connection. Behind
        // a ring send in flight nothing may be written (order); it is lost too.
        if self.in_flight.is_none() {
            let _ = self.write_out();
        }
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

fn read_plain(
    socket: &mut TcpStream,
    frames: &mut Reassembler,
    buf: &mut [u8],
    to_end: bool,
    frame: &mut impl FnMut(&[u8]),
) -> Result<(), Closed> {
    loop {
        match socket.read(buf) {
            Ok(0) => return Err(Closed::Peer),
            Ok(n) => {
                frames
                    .push(&buf[..n], &mut *frame)
                    .map_err(Closed::Framing)?;
                // A short read emptied the socket's buffer; later bytes raise a new edge
                // (epoll(7)), so the read that would only say "would block" is saved,
                // unless the peer's end came with this edge and must still be read.
                if n < buf.len() && !to_end {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Closed::Peer),
        }
    }
}
