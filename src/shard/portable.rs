//! The portable backend: epoll through `mio`, one readiness loop per shard, the same TURN core
//! ([`crate::turn::Server`]).
//!
//! Used where io_uring cannot be set up (the `kernel.io_uring_disabled` sysctl, seccomp
//! filters, kernels older than 6.0) or when `--backend portable` asks for it. Sockets are
//! edge-triggered and drained until `WouldBlock`; a datagram is received into one buffer
//! with headroom, so forwarding copies nothing in user space either.

use super::{bind_udp, ShardState, Wake, RELAY_SOCKET_BUFFER};
use crate::turn::{
    ClientAction, FiveTuple, PeerAction, RelayId, RelaySockets, PEER_HEADROOM, PEER_TAILROOM,
};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAKER: Token = Token(usize::MAX);
/// Tokens below this are listening sockets; from it on, relay sockets by `RelayId`.
const RELAY_BASE: usize = 1 << 16;
/// Largest UDP payload plus the room the core needs around a peer payload.
const BUFFER: usize = PEER_HEADROOM + 65_536 + PEER_TAILROOM;
/// Longest sleep when the core has no timer: a stop request wakes the loop anyway.
const IDLE: Duration = Duration::from_secs(60);

pub(crate) struct Shard {
    poll: Poll,
    waker: Arc<Waker>,
    listeners: Vec<(SocketAddr, UdpSocket)>,
    relays: Relays,
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

impl Shard {
    pub fn new(listen: &[SocketAddr]) -> io::Result<Shard> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = Vec::with_capacity(listen.len());
        for (i, addr) in listen.iter().enumerate() {
            let mut socket =
                UdpSocket::from_std(bind_udp(*addr, true, super::LISTEN_SOCKET_BUFFER)?);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            listeners.push((*addr, socket));
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
        })
    }

    pub fn waker(&self) -> Wake {
        let waker = self.waker.clone();
        Arc::new(move || {
            let _ = waker.wake();
        })
    }

    pub fn run(mut self, state: &mut ShardState) {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; BUFFER].into_boxed_slice();
        loop {
            let now = Instant::now();
            let timeout = state.sleep_for(now, IDLE);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("epoll failed: {e}");
                    break;
                }
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(i) if i < RELAY_BASE => self.drain_listener(i, state, now, &mut buf),
                    Token(t) => {
                        self.drain_relay(RelayId((t - RELAY_BASE) as u32), state, now, &mut buf)
                    }
                }
                flush_transmits(&self.listeners, state);
            }
            state.end_turn(now, &mut self.relays);
            flush_transmits(&self.listeners, state);
            state.dispatch_events();
            if state.stopping() {
                state.server.shutdown(Instant::now(), &mut self.relays);
                flush_transmits(&self.listeners, state);
                state.dispatch_events();
                return;
            }
        }
    }

    fn drain_listener(&mut self, i: usize, state: &mut ShardState, now: Instant, buf: &mut [u8]) {
        let Some((local, socket)) = self.listeners.get(i) else {
            return;
        };
        let local = *local;
        loop {
            let (n, client) = match socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors reported on the socket; nothing to do with them.
                Err(_) => continue,
            };
            state.io.received += 1;
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
            flush_transmits(&self.listeners, state);
        }
    }

    fn drain_relay(
        &mut self,
        relay: RelayId,
        state: &mut ShardState,
        now: Instant,
        buf: &mut [u8],
    ) {
        let payload_room = buf.len() - PEER_TAILROOM;
        loop {
            let Some(socket) = self
                .relays
                .sockets
                .get(relay.0 as usize)
                .and_then(Option::as_ref)
            else {
                return;
            };
            let (n, peer) = match socket.recv_from(&mut buf[PEER_HEADROOM..payload_room]) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => continue,
            };
            state.io.received += 1;
            let action =
                state
                    .server
                    .handle_peer(now, relay, peer, buf, PEER_HEADROOM..PEER_HEADROOM + n);
            if let PeerAction::ToClient {
                local,
                client,
                range,
                ..
            } = action
            {
                let sent = self
                    .listeners
                    .iter()
                    .find(|(addr, _)| *addr == local)
                    .map(|(_, s)| s.send_to(&buf[range], client));
                count_send(state, sent);
            }
        }
    }
}

/// Sends the core's responses from the listening socket each names.
fn flush_transmits(listeners: &[(SocketAddr, UdpSocket)], state: &mut ShardState) {
    while let Some(t) = state.server.poll_transmit() {
        let sent = listeners
            .iter()
            .find(|(addr, _)| *addr == t.local)
            .map(|(_, s)| s.send_to(&t.data, t.remote));
        count_send(state, sent);
    }
}

fn count_send(state: &mut ShardState, sent: Option<io::Result<usize>>) {
    match sent {
        Some(Ok(_)) => state.io.sent += 1,
        _ => state.io.send_errors += 1,
    }
}
