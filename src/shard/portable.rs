//! The portable backend: epoll through `mio`, one readiness loop per shard, the same TURN core
//! ([`crate::turn::Server`]).
//!
//! Used where io_uring cannot be set up (the `kernel.io_uring_disabled` sysctl, seccomp
//! filters, kernels older than 6.0) or when `--backend portable` asks for it. Sockets are
//! edge-triggered and drained until `WouldBlock`; a datagram is received into one buffer
//! with headroom, so forwarding copies nothing in user space either.

use super::stream::{RelayIo, StreamOptions, Streams};
use super::{bind_udp, IoCounters, ShardState, Wake, MAX_DATAGRAM, RELAY_SOCKET_BUFFER};
use crate::turn::{
    ClientAction, FiveTuple, PeerAction, RelayId, RelaySockets, PEER_HEADROOM, PEER_TAILROOM,
};
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAKER: Token = Token(usize::MAX);
/// The stream side's own epoll set turned readable.
const STREAMS: Token = Token(usize::MAX - 1);
/// Tokens below this are listening sockets; from it on, relay sockets by `RelayId`.
const RELAY_BASE: usize = 1 << 16;
/// The largest datagram both backends take, one byte more to tell a larger one (the kernel
/// truncates it to the buffer), and the room the core needs around a peer payload.
const BUFFER: usize = PEER_HEADROOM + MAX_DATAGRAM + 1 + PEER_TAILROOM;
/// Longest sleep when the core has no timer: a stop request wakes the loop anyway.
const IDLE: Duration = Duration::from_secs(60);

pub(crate) struct Shard {
    poll: Poll,
    waker: Arc<Waker>,
    listeners: Vec<(SocketAddr, UdpSocket)>,
    relays: Relays,
    streams: Option<Streams>,
}

/// The relay sockets of one shard, indexed by `RelayId`.
struct Relays {
    registry: Registry,
    sockets: Vec<Option<UdpSocket>>,
}

impl RelaySockets for Relays {
    fn open(&mut self, id: RelayId, addr: SocketAddr) -> io::Result<()> {
        let index = id.0 as usize;
        let socket = bind_udp(addr, false, RELAY_SOCKET_BUFFER).inspect_err(|e| {
            tracing::debug!(%addr, "relay socket: {e}");
            super::note_relay_open_error(e);
        })?;
        let mut socket = UdpSocket::from_std(socket);
        self.registry
            .register(&mut socket, Token(RELAY_BASE + index), Interest::READABLE)?;
        if self.sockets.len() <= index {
            self.sockets.resize_with(index + 1, || None);
        }
        if let Some(mut old) = self.sockets[index].replace(socket) {
            let _ = self.registry.deregister(&mut old);
        }
        Ok(())
    }

    fn close(&mut self, id: RelayId) {
        if let Some(mut socket) = self.sockets.get_mut(id.0 as usize).and_then(Option::take) {
            let _ = self.registry.deregister(&mut socket);
        }
    }
}

impl RelayIo for Relays {
    fn sockets(&mut self) -> &mut dyn RelaySockets {
        self
    }

    fn send_to_peer(&mut self, io: &mut IoCounters, relay: RelayId, peer: SocketAddr, data: &[u8]) {
        let sent = self
            .sockets
            .get(relay.0 as usize)
            .and_then(Option::as_ref)
            .map(|s| s.send_to(data, peer));
        match sent {
            Some(Ok(_)) => io.sent += 1,
            _ => io.send_errors += 1,
        }
    }
}

impl Shard {
    /// UDP listeners on `listen` unless `udp` is off; stream listeners as `streams` says.
    pub fn new(listen: &[SocketAddr], udp: bool, streams: &StreamOptions) -> io::Result<Shard> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = Vec::with_capacity(listen.len());
        let udp_listen = if udp { listen } else { &[] };
        for (i, addr) in udp_listen.iter().enumerate() {
            let mut socket = UdpSocket::from_std(super::bind_listener(*addr)?);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            listeners.push((*addr, socket));
        }
        let streams = Streams::new(listen, streams)?;
        if let Some(s) = &streams {
            poll.registry()
                .register(&mut SourceFd(&s.fd()), STREAMS, Interest::READABLE)?;
        }
        let registry = poll.registry().try_clone()?;
        Ok(Shard {
            poll,
            waker,
            listeners,
            relays: Relays {
                registry,
                sockets: Vec::new(),
            },
            streams,
        })
    }

    pub fn waker(&self) -> Wake {
        let waker = self.waker.clone();
        Arc::new(move || {
            let _ = waker.wake();
        })
    }

    /// Runs until stopped (`Ok`) or until epoll fails for good (`Err`); either way every
    /// allocation is deleted through the core first.
    pub fn run(&mut self, state: &mut ShardState) -> io::Result<()> {
        let result = self.serve(state);
        state.shutdown(Instant::now(), &mut self.relays);
        flush_transmits(&self.listeners, self.streams.as_mut(), state);
        dispatch_events(self.streams.as_mut(), state);
        if let Some(s) = self.streams.as_mut() {
            s.shutdown();
            state.streams = s.counters.clone();
        }
        result
    }

    fn serve(&mut self, state: &mut ShardState) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; BUFFER].into_boxed_slice();
        loop {
            let now = Instant::now();
            let mut timeout = state.sleep_for(now, IDLE);
            if let Some(s) = &self.streams {
                timeout = timeout.min(s.next_deadline().saturating_duration_since(now));
            }
            // Sends are synchronous here, so nothing may wake the wait after the datagram
            // that arms an injected fault: it is checked before waiting.
            let polled = state
                .fault
                .wait_result(state.io.received, Ok(()))
                .and_then(|()| self.poll.poll(&mut events, Some(timeout)));
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(io::Error::new(e.kind(), format!("epoll_wait failed: {e}")));
                }
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    STREAMS => {
                        if let Some(s) = self.streams.as_mut() {
                            s.process(now, state, &mut self.relays);
                        }
                    }
                    Token(i) if i < RELAY_BASE => self.drain_listener(i, state, now, &mut buf),
                    Token(t) => {
                        self.drain_relay(RelayId((t - RELAY_BASE) as u32), state, now, &mut buf)
                    }
                }
                flush_transmits(&self.listeners, self.streams.as_mut(), state);
            }
            state.end_turn(now, &mut self.relays);
            if let Some(s) = self.streams.as_mut() {
                s.sweep(now, state, &mut self.relays);
            }
            flush_transmits(&self.listeners, self.streams.as_mut(), state);
            dispatch_events(self.streams.as_mut(), state);
            if state.stopping() {
                return Ok(());
            }
        }
    }

    fn drain_listener(&mut self, i: usize, state: &mut ShardState, now: Instant, buf: &mut [u8]) {
        let Some((local, socket)) = self.listeners.get(i) else {
            return;
        };
        let listener = *local;
        loop {
            let received = if listener.ip().is_unspecified() {
                recv_with_destination(socket, &mut buf[..MAX_DATAGRAM + 1], listener)
            } else {
                socket
                    .recv_from(&mut buf[..MAX_DATAGRAM + 1])
                    .map(|(n, from)| (n, from, listener))
            };
            let (n, client, local) = match received {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors reported on the socket; nothing to do with them.
                Err(_) => continue,
            };
            state.io.received += 1;
            if n > MAX_DATAGRAM {
                state.io.truncated += 1;
                continue;
            }
            let action = state.server.handle_client(
                now,
                FiveTuple::udp(client, local),
                &buf[..n],
                &mut self.relays,
            );
            if let ClientAction::ToPeer {
                relay,
                peer,
                payload,
            } = action
            {
                let sent = self
                    .relays
                    .sockets
                    .get(relay.0 as usize)
                    .and_then(Option::as_ref)
                    .map(|s| s.send_to(&buf[payload], peer));
                count_send(state, sent);
            }
            flush_transmits(&self.listeners, self.streams.as_mut(), state);
        }
    }

    fn drain_relay(
        &mut self,
        relay: RelayId,
        state: &mut ShardState,
        now: Instant,
        buf: &mut [u8],
    ) {
        let room = PEER_HEADROOM..PEER_HEADROOM + MAX_DATAGRAM + 1;
        loop {
            let Some(socket) = self
                .relays
                .sockets
                .get(relay.0 as usize)
                .and_then(Option::as_ref)
            else {
                return;
            };
            let (n, peer) = match socket.recv_from(&mut buf[room.clone()]) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => continue,
            };
            state.io.received += 1;
            if n > MAX_DATAGRAM {
                state.io.truncated += 1;
                continue;
            }
            let action =
                state
                    .server
                    .handle_peer(now, relay, peer, buf, PEER_HEADROOM..PEER_HEADROOM + n);
            if let PeerAction::ToClient {
                local,
                client,
                range,
                transport,
            } = action
            {
                if transport.is_stream() {
                    if let Some(s) = self.streams.as_mut() {
                        s.send_to_client(local, client, &buf[range]);
                    }
                    continue;
                }
                let sent = send_as(&self.listeners, local, &buf[range], client);
                count_send(state, sent);
            }
        }
    }
}

/// Delivers the core's events, letting the stream side see them first.
fn dispatch_events(streams: Option<&mut Streams>, state: &mut ShardState) {
    match streams {
        Some(s) => state.dispatch_events_with(|e| s.on_event(e)),
        None => state.dispatch_events(),
    }
}

/// Sends the core's responses: on a stream client's connection, or from the listening
/// socket each names.
fn flush_transmits(
    listeners: &[(SocketAddr, UdpSocket)],
    mut streams: Option<&mut Streams>,
    state: &mut ShardState,
) {
    while let Some(t) = state.server.poll_transmit() {
        let t = match streams.as_deref_mut() {
            Some(s) => match s.route(t) {
                Some(t) => t,
                None => continue,
            },
            None => t,
        };
        let sent = send_as(listeners, t.local, &t.data, t.remote);
        count_send(state, sent);
    }
}

/// Sends `data` to `to` from the listener that answers as `local` (a wildcard listener
/// with `local`'s address as the source). `None` without such a listener.
fn send_as(
    listeners: &[(SocketAddr, UdpSocket)],
    local: SocketAddr,
    data: &[u8],
    to: SocketAddr,
) -> Option<io::Result<usize>> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    let (socket, source) = super::listener_for(listeners, local)?;
    let Some(source) = source else {
        return Some(socket.send_to(data, to));
    };
    let iov = [io::IoSlice::new(data)];
    let to = SockaddrStorage::from(to);
    let fd = socket.as_raw_fd();
    let sent = match source {
        IpAddr::V4(ip) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
            sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&to))
        }
        IpAddr::V6(ip) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            let cmsg = [ControlMessage::Ipv6PacketInfo(&info)];
            sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&to))
        }
    };
    Some(sent.map_err(io::Error::from))
}

/// Receives on a wildcard listener: the length, the source, and the local address the
/// datagram was sent to (the listener's, should the kernel not say).
fn recv_with_destination(
    socket: &UdpSocket,
    buf: &mut [u8],
    listener: SocketAddr,
) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|a| SocketAddr::V4((*a).into()))
                .or_else(|| a.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into())))
        })
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let to = msg.cmsgs().map_err(io::Error::from)?.find_map(|c| match c {
        ControlMessageOwned::Ipv4PacketInfo(info) => Some(IpAddr::V4(Ipv4Addr::from(
            info.ipi_addr.s_addr.to_ne_bytes(),
        ))),
        ControlMessageOwned::Ipv6PacketInfo(info) => {
            Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)))
        }
        _ => None,
    });
    let local = SocketAddr::new(to.unwrap_or(listener.ip()), listener.port());
    Ok((msg.bytes, from, local))
}

fn count_send(state: &mut ShardState, sent: Option<io::Result<usize>>) {
    match sent {
        Some(Ok(_)) => state.io.sent += 1,
        _ => state.io.send_errors += 1,
    }
}
