//! The TLS record layer of a connection, over rustls's unbuffered API: records decrypted
//! where they lie (in the shard's read buffer, or behind the bytes of a record not yet whole
//! kept in the connection's `incoming`, bounded to two records), their plaintext passed
//! straight to the reassembler, and records leaving (handshake, application data, alerts,
//! close_notify) written straight into the send queue.
//!
//! Owns: the order of rustls's states and the bound on unprocessed bytes. Must not: keep
//! bytes rustls has already failed on (a bad record is never processed twice).

use super::Closed;
use crate::stun::framing::Reassembler;
use crate::turn::TlsSession;
use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::io::{self, Read};

/// The most one TLS record takes on the wire: 16 KiB of plaintext, at most 2 KiB of
/// expansion, the 5-byte header (RFC 5246 §6.2.3; rustls's `MAX_WIRE_SIZE`).
pub(crate) const TLS_RECORD_MAX: usize = 16 * 1024 + 2048 + 5;

/// Received TLS bytes not yet processed a connection may hold (a record not yet whole, a
/// handshake message spread over records): two records' worth, more is refused.
pub(crate) const TLS_PENDING_MAX: usize = 2 * TLS_RECORD_MAX;

/// What a record adds to its plaintext, at most, over the cipher suites offered (TLS 1.2
/// AES-GCM: header, explicit nonce, tag; TLS 1.3: header, content type, tag); a guess
/// corrected by rustls's answer when short.
const TLS_RECORD_OVERHEAD: usize = 5 + 8 + 16 + 1;

/// What a TLS connection writes.
pub(super) enum Outgoing<'a> {
    /// Application data: one record per 16 KiB.
    Data(&'a [u8]),
    /// The close_notify alert.
    CloseNotify,
}

/// Writes `what` into `out` as TLS records, with any record rustls has waiting (a
/// KeyUpdate in answer to the client's, a ticket) ahead of it. `Ok(false)` when the session
/// cannot write application data (handshake not finished, connection closed).
pub(super) fn write_tls(
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
pub(crate) struct Records<'a> {
    pub tls: &'a mut UnbufferedServerConnection,
    pub session: &'a mut Option<TlsSession>,
    pub frames: &'a mut Reassembler,
    pub out: &'a mut BytesMut,
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
                *self.session = Some(crate::shard::tls::session(self.tls));
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
pub(super) fn read_tls(
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
pub(crate) fn received_tls(
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
