//! A received datagram's way through the shard: from a completion to the core's decision,
//! and on to the send that forwards it from the very buffer it arrived in.
//!
//! Must not: make protocol decisions (the core does) or free a buffer the kernel may hold.

use super::crossing::hand_over;
use super::*;

impl Shard {
    pub(super) fn received(
        &mut self,
        state: &mut ShardState,
        now: Instant,
        op: Op,
        entry: &cqueue::Entry,
    ) {
        let live = match op {
            Op::ListenRecv { .. } => true,
            Op::RelayRecv { index, gen } => self.io.live_relay(index, gen).is_some(),
            _ => false,
        };
        let result = entry.result();
        if !cqueue::more(entry.flags()) {
            self.io.armed = self.io.armed.saturating_sub(1);
            if live && !state.stopping() {
                if result == -libc::ENOBUFS {
                    self.io.starved.push(op);
                } else {
                    self.io.rearm.push(op);
                }
            }
        }
        if result == -libc::ENOBUFS {
            state.io.no_buffers += 1;
        }
        let Some(lent) = self.buffers.take(entry) else {
            return;
        };
        if result < 0 || !live {
            self.buffers.give_back(lent);
            return;
        }
        state.io.received += 1;
        match self.forward(state, now, op, lent, result as usize) {
            Outcome::Sending => {}
            Outcome::Done(lent) => self.buffers.give_back(lent),
            Outcome::SendDropped(buf) => {
                state.io.send_errors += 1;
                self.release(buf);
            }
        }
    }

    /// Hands a received datagram to the core and queues the send it asks for, from the
    /// very buffer it arrived in.
    fn forward(
        &mut self,
        state: &mut ShardState,
        now: Instant,
        op: Op,
        lent: Lent,
        len: usize,
    ) -> Outcome {
        let buf = self.buffers.bytes(&lent);
        let len = len.min(BUF_SIZE);
        let parsed = RecvMsgOut::parse(&buf[..len], &self.io.recv_msghdr)
            .ok()
            .and_then(|out| {
                let truncated = out.is_payload_truncated() || out.is_name_data_truncated();
                Some((
                    sockaddr(out.name_data())?,
                    pktinfo::destination(out.control_data()),
                    out.payload_data().len(),
                    truncated,
                ))
            });
        let (from, to, n) = match parsed {
            Some((from, to, n, false)) if n <= MAX_DATAGRAM => (from, to, n),
            Some(_) => {
                state.io.truncated += 1;
                return Outcome::Done(lent);
            }
            None => return Outcome::Done(lent),
        };
        let payload = PAYLOAD_OFFSET..PAYLOAD_OFFSET + n;
        // (descriptor, destination, offset in the buffer, length) of the send, if any.
        let send = match op {
            Op::ListenRecv { index } => {
                // On a wildcard listener, the address the client sent to.
                let listener = self.io.listeners[index as usize].0;
                let local = SocketAddr::new(to.unwrap_or(listener.ip()), listener.port());
                match state.server.handle_client(
                    now,
                    crate::turn::FiveTuple::udp(from, local),
                    &buf[payload],
                    &mut self.io,
                ) {
                    ClientAction::ToPeer {
                        relay,
                        peer,
                        payload,
                    } => {
                        let payload = PAYLOAD_OFFSET + payload.start..PAYLOAD_OFFSET + payload.end;
                        match self.io.relay_to_relay(relay, peer) {
                            // To another allocation of this shard: handed over as if it
                            // had come through the kernel from the sender's relay address.
                            Some((target, relay_addr)) => {
                                state.io.relayed_in_process += 1;
                                let action = state
                                    .server
                                    .handle_peer(now, target, relay_addr, buf, payload);
                                destination(&self.io, action)
                            }
                            // To another shard's allocation: through its queue (the
                            // kernel when the queue is full).
                            None if hand_over(
                                self.handoff.as_mut(),
                                &self.io,
                                &mut state.io,
                                (relay, peer),
                                &buf[payload.clone()],
                            ) =>
                            {
                                None
                            }
                            None => self
                                .io
                                .relay_fd(relay)
                                .map(|fd| (Dest::Udp(fd, peer), payload.start, payload.len())),
                        }
                    }
                    ClientAction::None => None,
                }
            }
            Op::RelayRecv { index, .. } => {
                let action = state
                    .server
                    .handle_peer(now, RelayId(index), from, buf, payload);
                destination(&self.io, action)
            }
            _ => None,
        };
        let (fd, to, offset, len) = match send {
            Some((Dest::Udp(fd, to), offset, len)) => (fd, to, offset, len),
            Some((Dest::Stream(tuple), offset, len)) => {
                return match self.send_to_stream(tuple, lent, offset, len) {
                    None => Outcome::Sending,
                    Some(lent) => Outcome::Done(lent),
                };
            }
            None => return Outcome::Done(lent),
        };
        let buf = SendBuf::Lent {
            buf: lent,
            offset,
            len,
        };
        match self.io.send(&self.buffers, fd, to, buf) {
            Ok(()) => Outcome::Sending,
            Err(buf) => Outcome::SendDropped(buf),
        }
    }
}

/// Where a datagram for a client goes.
enum Dest {
    /// A UDP send from this descriptor (and source address) to this client.
    Udp(Via, SocketAddr),
    /// The stream connection of (local, client).
    Stream((SocketAddr, SocketAddr)),
}

/// The send a peer datagram turns into, if any: where to, and the offset and length of
/// the frame in the buffer.
fn destination(io: &Io, action: PeerAction) -> Option<(Dest, usize, usize)> {
    match action {
        PeerAction::ToClient {
            local,
            client,
            range,
            transport,
        } if transport.is_stream() => {
            Some((Dest::Stream((local, client)), range.start, range.len()))
        }
        PeerAction::ToClient {
            local,
            client,
            range,
            ..
        } => io
            .listener_for(local)
            .map(|fd| (Dest::Udp(fd, client), range.start, range.len())),
        PeerAction::Drop => None,
    }
}

/// A UDP send from a lent buffer: (socket and source, destination, offset in the
/// buffer, length).
pub(super) type UdpSend = (Via, SocketAddr, usize, usize);

/// The UDP send a peer datagram turns into, if any. To a stream client it is written or
/// queued by the connection at once, and the buffer can go back.
pub(super) fn to_client(
    io: &Io,
    streams: Option<&mut Streams>,
    action: PeerAction,
    buf: &[u8],
) -> Option<UdpSend> {
    match destination(io, action)? {
        (Dest::Stream((local, client)), offset, len) => {
            if let Some(s) = streams {
                s.send_to_client(local, client, &buf[offset..offset + len]);
            }
            None
        }
        (Dest::Udp(via, client), offset, len) => Some((via, client, offset, len)),
    }
}
