//! One TCP or TLS client connection: its socket, its TLS session, the frames arriving on it
//! and the bytes waiting to leave.
//!
//! Owns: reading until the socket would block (through TLS when there is a session),
//! handing plaintext to the reassembler, and a send queue bounded in bytes: a frame that
//! does not fit is dropped whole (never cut), so a client that stops reading costs at most
//! the bound. Must not: interpret frames or decide when a connection should end (that is
//! the stream module's job, from what these calls report).
//!
//! TLS uses rustls's unbuffered API: records are decrypted where they lie (in the shard's
//! read buffer, or behind the bytes of a record not yet whole kept in `incoming`, bounded
//! to two records and given back when the connection goes quiet), their plaintext goes
//! straight to the reassembler, and records leaving (handshake, application data, alerts,
//! close_notify) are written straight into the send queue. rustls 0.23 still allocates one
//! buffer per record inside (the plaintext of a record it decrypts, the ciphertext of one
//! it encrypts); nothing here does.

use crate::stun::framing::{FramingError, Reassembler};
use crate::turn::{FiveTuple, TlsSession};
use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::io::{self, Read, Write};
use std::time::Instant;

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

/// The most one TLS record takes on the wire: 16 KiB of plaintext, at most 2 KiB of
/// expansion, the 5-byte header (RFC 5246 §6.2.3; rustls's `MAX_WIRE_SIZE`).
const TLS_RECORD_MAX: usize = 16 * 1024 + 2048 + 5;

/// Received TLS bytes not yet processed a connection may hold (a record not yet whole, a
/// handshake message spread over records): two records' worth, more is refused.
const TLS_PENDING_MAX: usize = 2 * TLS_RECORD_MAX;

/// What a record adds to its plaintext, at most, over the cipher suites offered (TLS 1.2
/// AES-GCM: header, explicit nonce, tag; TLS 1.3: header, content type, tag); a guess
/// corrected by rustls's answer when short.
const TLS_RECORD_OVERHEAD: usize = 5 + 8 + 16 + 1;

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

/// What a TLS connection writes.
enum Outgoing<'a> {
    /// Application data: one record per 16 KiB.
    Data(&'a [u8]),
    /// The close_notify alert.
    CloseNotify,
}

/// Writes `what` into `out` as TLS records, with any record rustls has waiting (a
/// KeyUpdate in answer to the client's, a ticket) ahead of it. `Ok(false)` when the session
/// cannot write application data (handshake not finished, connection closed).
fn write_tls(
    tls: &mut UnbufferedServerConnection,
    incoming: &mut BytesMut,
    out: &mut BytesMut,
    what: Outgoing<'_>,
) -> Result<bool, Closed> {
    // Each state but the last gives a record away (or clears a flag): a few turns suffice.
    for _ in 0..8 {
        // `incoming` holds no whole record (reads process all of them), so this only
        // reaches the state in which the session writes.
        let UnbufferedStatus { discard, state } = tls.process_tls_records(&mut incoming[..]);
        let written = match state.map_err(|_| Closed::Tls)? {
            ConnectionState::WriteTraffic(mut traffic) => {
                match what {
                    Outgoing::Data(plain) => {
                        let records = plain.len().div_ceil(16 * 1024).max(1);
                        let guess = plain.len() + records * TLS_RECORD_OVERHEAD;
                        fill(out, guess, |room| traffic.encrypt(plain, room))?;
                    }
                    Outgoing::CloseNotify => {
                        fill(out, TLS_RECORD_OVERHEAD, |room| {
                            traffic.queue_close_notify(room)
                        })?;
                    }
                }
                Some(true)
            }
            ConnectionState::EncodeTlsData(mut record) => {
                fill(out, 0, |room| record.encode(room))?;
                None
            }
            ConnectionState::TransmitTlsData(queued) => {
                // "Transmitted" into `out`, whose bytes go out once, in order.
                queued.done();
                None
            }
            _ => Some(false),
        };
        incoming.advance(discard);
        if let Some(written) = written {
            return Ok(written);
        }
    }
    Ok(false)
}

/// Appends to `out` what `write` puts into a slice of room: `guess` bytes of room first,
/// then as much as rustls says it needs. A record is only ever written whole. Handshake
/// records are asked with no room at all, so the queue grows by their exact size.
fn fill<E: Short>(
    out: &mut BytesMut,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), Closed> {
    let start = out.len();
    let mut room = guess;
    // The second try has the room rustls asked for; a third would be a rustls bug.
    for _ in 0..2 {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => {
                out.truncate(start);
                room = e.needs().ok_or(Closed::Tls)?;
            }
        }
    }
    Err(Closed::Tls)
}

/// The room a write into too small a slice asked for; `None` for other errors.
trait Short {
    fn needs(&self) -> Option<usize>;
}

impl Short for EncryptError {
    fn needs(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(e) => Some(e.required_size),
            _ => None,
        }
    }
}

impl Short for EncodeError {
    fn needs(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(e) => Some(e.required_size),
            _ => None,
        }
    }
}

/// One TLS connection's parts a read goes through.
struct Records<'a> {
    tls: &'a mut UnbufferedServerConnection,
    session: &'a mut Option<TlsSession>,
    frames: &'a mut Reassembler,
    out: &'a mut BytesMut,
}

impl Records<'_> {
    /// Processes the records in `wire` (decrypting them in place), passing the plaintext's
    /// frames on and writing handshake records and alerts into `out`. Returns how many
    /// bytes of `wire` are done with (the rest: a record not yet whole) and how it ended;
    /// the client's close_notify ends the connection.
    fn process(
        &mut self,
        wire: &mut [u8],
        frame: &mut impl FnMut(&[u8], Option<TlsSession>),
    ) -> (usize, Result<(), Closed>) {
        let mut done = 0;
        loop {
            if self.session.is_none() && !self.tls.is_handshaking() {
                *self.session = Some(super::tls::session(self.tls));
            }
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut wire[done..]);
            let step = match state {
                Err(_) => Err(Closed::Tls),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => match *self.session {
                    Some(session) => {
                        let mut step = Ok(true);
                        while let Some(record) = traffic.next_record() {
                            let Ok(record) = record else {
                                step = Err(Closed::Tls);
                                break;
                            };
                            discard += record.discard;
                            let deliver = |f: &[u8]| frame(f, Some(session));
                            if let Err(e) = self.frames.push(record.payload, deliver) {
                                step = Err(Closed::Framing(e));
                                break;
                            }
                        }
                        step
                    }
                    // The handshake ended in this very call: its session is learnt at the
                    // top of the loop, then the records are read.
                    None => Ok(true),
                },
                Ok(ConnectionState::EncodeTlsData(mut record)) => {
                    fill(self.out, 0, |room| record.encode(room)).map(|()| true)
                }
                Ok(ConnectionState::TransmitTlsData(queued)) => {
                    queued.done();
                    Ok(true)
                }
                // Every whole record is processed; the rest waits for more bytes.
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                    Ok(false)
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Err(Closed::Peer),
                // Early data is not enabled; nothing else is known.
                Ok(_) => Err(Closed::Tls),
            };
            done += discard;
            match step {
                Ok(true) => {}
                Ok(false) => return (done, Ok(())),
                Err(Closed::Tls) => {
                    self.alerts(&mut wire[done..]);
                    return (done, Err(Closed::Tls));
                }
                Err(why) => return (done, Err(why)),
            }
        }
    }

    /// After an error: writes the alert rustls queued for it, if any. Only while one is
    /// queued: rustls hands those out before looking at `wire` again (whose bad record
    /// would fail a second time).
    fn alerts(&mut self, wire: &mut [u8]) {
        while self.tls.wants_write() {
            let UnbufferedStatus { state, .. } = self.tls.process_tls_records(wire);
            let Ok(ConnectionState::EncodeTlsData(mut record)) = state else {
                return;
            };
            if fill(self.out, 0, |room| record.encode(room)).is_err() {
                return;
            }
        }
    }

    /// Processes `wire`, the received bytes, in place (nothing was pending); keeps what
    /// is left of a record not yet whole in `incoming` (nothing after an error).
    fn in_place(
        &mut self,
        incoming: &mut BytesMut,
        wire: &mut [u8],
        frame: &mut impl FnMut(&[u8], Option<TlsSession>),
    ) -> Result<(), Closed> {
        debug_assert!(incoming.is_empty());
        let (done, result) = self.process(wire, frame);
        result?;
        let rest = &wire[done..];
        if rest.len() >= TLS_PENDING_MAX {
            return Err(Closed::Tls);
        }
        incoming.extend_from_slice(rest);
        Ok(())
    }

    /// Adds `more` behind the pending bytes and processes them; more than
    /// [`TLS_PENDING_MAX`] pending is refused. After an error nothing is kept.
    fn behind(
        &mut self,
        incoming: &mut BytesMut,
        more: &[u8],
        frame: &mut impl FnMut(&[u8], Option<TlsSession>),
    ) -> Result<(), Closed> {
        incoming.extend_from_slice(more);
        let (done, result) = self.process(&mut incoming[..], frame);
        incoming.advance(done);
        let result = result.and_then(|()| match incoming.len() < TLS_PENDING_MAX {
            true => Ok(()),
            false => Err(Closed::Tls),
        });
        if result.is_err() {
            // The connection ends: nothing may process these bytes again.
            incoming.clear();
        }
        result
    }
}

/// Reads TLS records from the socket until it would block.
fn read_tls(
    records: &mut Records<'_>,
    socket: &mut TcpStream,
    incoming: &mut BytesMut,
    buf: &mut [u8],
    frame: &mut impl FnMut(&[u8], Option<TlsSession>),
) -> Result<(), Closed> {
    loop {
        let room = TLS_PENDING_MAX
            .saturating_sub(incoming.len())
            .min(buf.len());
        let n = match socket.read(&mut buf[..room]) {
            Ok(0) => return Err(Closed::Peer),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Closed::Peer),
        };
        if incoming.is_empty() {
            records.in_place(incoming, &mut buf[..n], frame)?;
        } else {
            records.behind(incoming, &buf[..n], frame)?;
        }
    }
}

/// TLS records a ring receive already took off the socket: copied into `buf` to be
/// decrypted there (or behind the pending bytes), in pieces that keep within the bound.
fn received_tls(
    records: &mut Records<'_>,
    incoming: &mut BytesMut,
    mut bytes: &[u8],
    buf: &mut [u8],
    frame: &mut impl FnMut(&[u8], Option<TlsSession>),
) -> Result<(), Closed> {
    while !bytes.is_empty() {
        let room = TLS_PENDING_MAX
            .saturating_sub(incoming.len())
            .min(buf.len());
        let (now, later) = bytes.split_at(bytes.len().min(room));
        bytes = later;
        if incoming.is_empty() {
            let wire = &mut buf[..now.len()];
            wire.copy_from_slice(now);
            records.in_place(incoming, wire, frame)?;
        } else {
            records.behind(incoming, now, frame)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::tls::Certificates;
    use crate::stun::{Class, MessageBuilder, Method};
    use crate::testing::tls::{client_config, AnyCertificate};
    use crate::turn::Transport;
    use rustls::ClientConnection;
    use std::sync::Arc;

    /// A server connection (its sends left queued, as on the ring) on a real loopback
    /// socket, and a rustls client talking to it in memory through `Input::Received`.
    struct Pair {
        conn: Connection,
        client: ClientConnection,
        /// The socket's other end: what `close` writes arrives here.
        peer: std::net::TcpStream,
        buf: Vec<u8>,
    }

    fn pair(tag: &str, version: &'static rustls::SupportedProtocolVersion) -> Pair {
        let dir = std::env::temp_dir().join(format!("uturn-conn-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        crate::testing::tls::make_cert(&cert, &key, "localhost");
        let config = Certificates::load(&cert, &key).unwrap().server_config();
        let _ = std::fs::remove_dir_all(&dir);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, client_addr) = listener.accept().unwrap();
        socket.set_nonblocking(true).unwrap();
        let tuple = FiveTuple {
            client: client_addr,
            server: socket.local_addr().unwrap(),
            transport: Transport::Tls,
        };
        let tls = Box::new(UnbufferedServerConnection::new(config).unwrap());
        let mut conn = Connection::new(
            TcpStream::from_std(socket),
            tuple,
            Some(tls),
            4096,
            64 * 1024,
            Instant::now(),
        );
        conn.ring_sends = true;
        let client_config = client_config(version, Arc::new(AnyCertificate::new()));
        let client =
            ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
                .unwrap();
        Pair {
            conn,
            client,
            peer,
            buf: vec![0; 64 * 1024],
        }
    }

    type Frames = Vec<(Vec<u8>, Option<TlsSession>)>;

    impl Pair {
        /// The records the client has ready.
        fn client_records(&mut self) -> Vec<u8> {
            let mut wire = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut wire).unwrap();
            }
            wire
        }

        /// Hands `wire` to the server in pieces of `piece` bytes; the frames it delivers.
        fn server_reads(&mut self, wire: &[u8], piece: usize) -> Result<Frames, Closed> {
            let mut frames = Vec::new();
            for bytes in wire.chunks(piece.max(1)) {
                let input = Input::Received(bytes);
                self.conn
                    .read(&mut self.buf, input, Instant::now(), |f, s| {
                        frames.push((f.to_vec(), s))
                    })?;
            }
            Ok(frames)
        }

        /// What the server queued, handed to the client; the plaintext it reads.
        fn client_reads(&mut self) -> Result<Vec<u8>, rustls::Error> {
            let out = self.conn.out.split();
            let mut wire = &out[..];
            while !wire.is_empty() {
                self.client.read_tls(&mut wire).unwrap();
                self.client.process_new_packets()?;
            }
            let mut plain = Vec::new();
            let _ = self.client.reader().read_to_end(&mut plain);
            Ok(plain)
        }

        fn handshake(&mut self) {
            for _ in 0..10 {
                let wire = self.client_records();
                assert_eq!(self.server_reads(&wire, usize::MAX).unwrap(), vec![]);
                self.client_reads().unwrap();
                if !self.client.is_handshaking() && !self.conn.handshaking() {
                    return;
                }
            }
            panic!("the handshake did not finish");
        }
    }

    fn binding_request(tid: u8) -> Vec<u8> {
        let mut out = Vec::new();
        MessageBuilder::new(&mut out, Class::Request, Method::BINDING, &[tid; 12])
            .add_fingerprint();
        out
    }

    /// Record lengths in `wire` (whole records only).
    fn records(wire: &[u8]) -> Vec<usize> {
        let mut lens = Vec::new();
        let mut rest = wire;
        while rest.len() >= 5 {
            let len = 5 + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            lens.push(len);
            rest = &rest[len.min(rest.len())..];
        }
        lens
    }

    #[test]
    fn frames_cross_tls_both_ways_whatever_the_cuts() {
        for (version, name) in [
            (&rustls::version::TLS13, "TLSv1.3"),
            (&rustls::version::TLS12, "TLSv1.2"),
        ] {
            let mut p = pair("frames", version);
            p.handshake();
            // Two frames, the first cut across two records, the wire cut every 7 bytes.
            let (a, b) = (binding_request(1), binding_request(2));
            p.client.writer().write_all(&a[..10]).unwrap();
            p.client.writer().write_all(&a[10..]).unwrap();
            p.client.writer().write_all(&b).unwrap();
            let wire = p.client_records();
            let frames = p.server_reads(&wire, 7).unwrap();
            let got: Vec<_> = frames.iter().map(|(f, _)| f.clone()).collect();
            assert_eq!(got, vec![a.clone(), b.clone()], "{name}");
            let session = frames[0].1.expect("the session comes with the frames");
            assert_eq!(session.protocol, name);
            assert!(p.conn.incoming.is_empty());
            // A record not yet whole stays, through the quiet sweep too; once whole, the
            // buffer goes at the next one.
            p.client.writer().write_all(&a).unwrap();
            let wire = p.client_records();
            assert_eq!(
                p.server_reads(&wire[..wire.len() - 3], 1024).unwrap(),
                vec![]
            );
            p.conn.shrink();
            assert_eq!(p.conn.incoming.len(), wire.len() - 3);
            let frames = p.server_reads(&wire[wire.len() - 3..], 1024).unwrap();
            assert_eq!(frames.len(), 1);
            p.conn.shrink();
            assert_eq!(
                p.conn.incoming.capacity(),
                0,
                "an idle connection holds no record"
            );
            // Server to client: one record per frame, straight into the send queue.
            assert_eq!(p.conn.send(&a), Ok(Queued::Yes));
            assert_eq!(p.conn.send(&b), Ok(Queued::Yes));
            assert_eq!(records(&p.conn.out).len(), 2);
            assert_eq!(p.client_reads().unwrap(), [a, b].concat(), "{name}");
        }
    }

    #[test]
    fn a_key_update_from_the_client_is_answered_and_both_ways_go_on() {
        let mut p = pair("keyupdate", &rustls::version::TLS13);
        p.handshake();
        // The client's KeyUpdate asks the server to update its keys too.
        p.client.refresh_traffic_keys().unwrap();
        let a = binding_request(3);
        p.client.writer().write_all(&a).unwrap();
        let wire = p.client_records();
        let frames = p.server_reads(&wire, usize::MAX).unwrap();
        assert_eq!(frames.len(), 1, "read with the client's new keys");
        assert_eq!(frames[0].0, a);
        // The server's KeyUpdate goes ahead of its next record, which uses the new keys:
        // the client, having switched on the KeyUpdate, can read it.
        assert_eq!(p.conn.send(&a), Ok(Queued::Yes));
        assert_eq!(records(&p.conn.out).len(), 2, "KeyUpdate, then the frame");
        assert_eq!(p.client_reads().unwrap(), a);
        assert_eq!(p.conn.send(&a), Ok(Queued::Yes));
        assert_eq!(records(&p.conn.out).len(), 1);
        assert_eq!(p.client_reads().unwrap(), a);
    }

    #[test]
    fn close_notify_ends_the_connection_both_ways() {
        let mut p = pair("close", &rustls::version::TLS13);
        p.handshake();
        let a = binding_request(4);
        p.client.writer().write_all(&a).unwrap();
        p.client.send_close_notify();
        let wire = p.client_records();
        let mut frames = Vec::new();
        let result = p.conn.read(
            &mut p.buf,
            Input::Received(&wire),
            Instant::now(),
            |f, _| frames.push(f.to_vec()),
        );
        assert_eq!(result, Err(Closed::Peer));
        assert_eq!(frames, vec![a.clone()], "what came before the end is read");
        // An answer may still leave, then the server's close_notify.
        assert_eq!(p.conn.send(&a), Ok(Queued::Yes));
        assert_eq!(p.client_reads().unwrap(), a);
        p.conn.close();
        let mut wire = Vec::new();
        p.peer
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        p.peer.read_to_end(&mut wire).unwrap();
        p.client.read_tls(&mut &wire[..]).unwrap();
        let state = p.client.process_new_packets().unwrap();
        assert!(state.peer_has_closed(), "the server's close_notify arrived");
    }

    #[test]
    fn bad_records_end_the_connection_with_an_alert() {
        // Not TLS at all.
        let mut p = pair("garbage", &rustls::version::TLS13);
        assert_eq!(
            p.server_reads(b"GET / HTTP/1.1\r\n\r\n", usize::MAX),
            Err(Closed::Tls)
        );
        // A record that does not decrypt, after the handshake.
        let mut p = pair("badrecord", &rustls::version::TLS13);
        p.handshake();
        let mut wire = vec![23, 3, 3, 0, 40];
        wire.extend_from_slice(&[0x42; 40]);
        assert_eq!(p.server_reads(&wire, usize::MAX), Err(Closed::Tls));
        let alert = p.conn.out.split();
        assert!(!alert.is_empty(), "an alert for the client");
        p.client.read_tls(&mut &alert[..]).unwrap();
        assert!(
            p.client.process_new_packets().is_err(),
            "the client sees it"
        );
    }

    #[test]
    fn unprocessed_bytes_are_bounded_to_two_records() {
        // A ClientHello announced at 60,000 bytes, sent in full records: rustls would
        // gather up to 64 KiB of it; the connection refuses past two records' worth.
        let mut p = pair("bound", &rustls::version::TLS13);
        let mut wire = Vec::new();
        let mut body = vec![0u8; 60_000 + 4];
        body[..4].copy_from_slice(&[1, 0x00, 0xea, 0x60]);
        for chunk in body.chunks(16 * 1024) {
            wire.extend_from_slice(&[22, 3, 1]);
            wire.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            wire.extend_from_slice(chunk);
        }
        let mut fed = 0;
        for piece in wire.chunks(4096) {
            fed += piece.len();
            let input = Input::Received(piece);
            let result = p.conn.read(&mut p.buf, input, Instant::now(), |_, _| {});
            assert!(p.conn.incoming.len() <= 2 * TLS_RECORD_MAX);
            if result.is_err() {
                assert_eq!(result, Err(Closed::Tls));
                break;
            }
        }
        // Refused on the bound, not on the message once whole.
        assert!(
            fed <= 2 * TLS_RECORD_MAX + 4096,
            "refused after {fed} bytes"
        );
    }
}
