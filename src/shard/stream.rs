//! TURN clients over TCP and TLS (RFC 8656 §3.1, §7.2.2): the shard's SO_REUSEPORT stream
//! listeners and their connections, on an epoll set of their own that either backend polls
//! when its descriptor turns readable.
//!
//! Owns: accepting (up to `max_connections` per shard), TLS handshakes and their deadline,
//! framing, the per-connection send queues, closing idle connections that hold no
//! allocation, and telling the core when a connection with an allocation ends. Relay
//! sockets stay UDP and belong to the backend, reached through [`RelayIo`].
//! Must not: make protocol decisions, or block: every socket is nonblocking and a client
//! that does not read loses frames (counted), never the shard's time.

mod ring;

pub(crate) use ring::{SendTarget, Sent};

use super::stream_conn::{Closed, Connection, Input, Queued};
pub(crate) use super::stream_options::bind_tcp;
pub use super::stream_options::{StreamOptions, DEFAULT_MAX_CONNECTIONS};
use super::tls::Certificates;
use super::{IoCounters, ShardState};
use crate::turn::{ClientAction, Event, FiveTuple, RelayId, RelaySockets, Transmit, Transport};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens below this are listeners, from it on connections by slot.
const CONN_BASE: usize = 1 << 10;
/// Read buffer: a few TLS records or many small frames per read call.
const READ_BUFFER: usize = 64 * 1024;
/// Ring receive generations fit the backend's tag field (28 bits).
const RING_GEN_MASK: u32 = (1 << 28) - 1;
/// How often deadlines are checked; closing is at most this late.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How long a connection its client ended waits for its last ring send.
const SEND_GRACE: Duration = Duration::from_secs(1);

/// Stream-side events and drops of one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    pub accepted: u64,
    /// Closed at accept: the shard was at `max_connections`.
    pub refused: u64,
    pub closed: u64,
    /// Closed for bytes that are not STUN or ChannelData, or a frame over the limit.
    pub framing_errors: u64,
    pub tls_errors: u64,
    pub handshake_timeouts: u64,
    pub idle_closed: u64,
    /// Frames for a client dropped because its send queue was full.
    pub queue_drops: u64,
    /// Frames for a connection that had closed.
    pub no_connection: u64,
    /// Closed because a ring send to the client did not complete within the send timeout.
    pub send_timeouts: u64,
    pub frames: u64,
    /// Connections open, and user-space bytes their buffers hold, at the last sweep.
    pub open: u64,
    pub buffered_bytes: u64,
}

/// The backend's relay sockets as the stream side needs them: for the core, and to send a
/// client's payload to its peer.
pub(crate) trait RelayIo {
    fn sockets(&mut self) -> &mut dyn RelaySockets;
    /// Sends (or queues) `data` from relay socket `relay` to `peer`, counting it in `io`.
    fn send_to_peer(&mut self, io: &mut IoCounters, relay: RelayId, peer: SocketAddr, data: &[u8]);
    /// A connection closed: its socket goes, once nothing the backend queued for it can
    /// reach another socket that gets the same descriptor number.
    fn release_stream(&mut self, socket: TcpStream) {
        drop(socket);
    }
}

struct Listener {
    socket: TcpListener,
    transport: Transport,
}

pub(crate) struct Streams {
    poll: Poll,
    events: Events,
    /// This wakeup's events: (token, readable, the peer closed or failed, writable).
    ready: Vec<(Token, bool, bool, bool)>,
    listeners: Vec<Listener>,
    conns: Vec<Option<Connection>>,
    free: Vec<usize>,
    open: usize,
    /// (client, server) → slot, for routing the core's output to a connection.
    by_tuple: HashMap<(SocketAddr, SocketAddr), usize>,
    options: StreamOptions,
    tls: Option<Arc<rustls::ServerConfig>>,
    buf: Box<[u8]>,
    /// Connections whose client ended its side this turn, closed at its end.
    ending: Vec<usize>,
    /// Connections are read by the backend's ring ([`Streams::ring_received`]).
    ring_reads: bool,
    /// (slot, generation, descriptor) of connections whose ring receive is to be armed.
    to_arm: Vec<(u32, u32, RawFd)>,
    /// Writes to connections go through the backend's ring ([`Streams::take_sends`]).
    ring_sends: bool,
    /// Accepts come from the backend's ring ([`Streams::ring_accepted`]).
    ring_accepts: bool,
    /// Connections with queued bytes for the ring (see `Connection::listed`).
    to_send: Vec<usize>,
    next_gen: u32,
    next_sweep: Instant,
    pub counters: StreamCounters,
}

impl Streams {
    /// Binds this shard's stream listeners (SO_REUSEPORT members) for the UDP listening
    /// addresses `listen`; `None` when neither TCP nor TLS is on.
    pub fn new(listen: &[SocketAddr], options: &StreamOptions) -> io::Result<Option<Streams>> {
        let addrs = options.addresses(listen);
        if addrs.is_empty() {
            return Ok(None);
        }
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        for (i, (addr, transport)) in addrs.into_iter().enumerate() {
            let mut socket = TcpListener::from_std(bind_tcp(addr, true)?);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            listeners.push(Listener { socket, transport });
        }
        Ok(Some(Streams {
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            listeners,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            by_tuple: HashMap::new(),
            tls: options.tls.as_ref().map(Certificates::server_config),
            options: options.clone(),
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            ending: Vec::new(),
            ring_reads: false,
            to_arm: Vec::new(),
            ring_sends: false,
            ring_accepts: false,
            to_send: Vec::new(),
            next_gen: 0,
            next_sweep: Instant::now() + SWEEP_EVERY,
            counters: StreamCounters::default(),
        }))
    }

    /// The epoll descriptor the backend watches for readability.
    pub fn fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// When `sweep` next has work.
    pub fn next_deadline(&self) -> Instant {
        self.next_sweep
    }

    /// Handles everything ready on the stream sockets. The core's responses stay queued in
    /// the core: the backend routes them with [`Streams::route`].
    pub fn process(&mut self, now: Instant, state: &mut ShardState, relays: &mut dyn RelayIo) {
        loop {
            if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!("stream epoll failed: {e}");
                }
                return;
            }
            // Taken and put back, so it keeps its capacity (no allocation per wakeup).
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(self.events.iter().map(|e| {
                let ended = e.is_read_closed() || e.is_error();
                (e.token(), e.is_readable() || ended, ended, e.is_writable())
            }));
            for &(Token(t), readable, ended, writable) in &ready {
                if t < CONN_BASE {
                    self.accept(t, now);
                    continue;
                }
                let slot = t - CONN_BASE;
                // A ring-read connection's bytes, end and errors come through the ring.
                let ring = self
                    .conns
                    .get(slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|c| c.ring);
                if readable && !ring {
                    self.read(slot, Input::Socket { to_end: ended }, now, state, relays);
                }
                if writable {
                    self.flush(slot, now, state, relays);
                }
            }
            // The outer poller is edge-triggered on this set: stop only once it is drained.
            let drained = ready.len() < self.events.capacity();
            self.ready = ready;
            if drained {
                return;
            }
        }
    }

    fn accept(&mut self, index: usize, now: Instant) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let (socket, client) = match listener.socket.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: the rest wait in the backlog.
                    tracing::debug!("accept: {e}");
                    return;
                }
            };
            self.admit(index, socket, client, now);
        }
    }

    /// Takes a connection listener `index` accepted, or closes it at once (counted) when
    /// the shard is at `max_connections`.
    fn admit(&mut self, index: usize, socket: TcpStream, client: SocketAddr, now: Instant) {
        let Some(transport) = self.listeners.get(index).map(|l| l.transport) else {
            return;
        };
        if self.open >= self.options.max_connections {
            self.counters.refused += 1;
            return;
        }
        let Ok(server) = socket.local_addr() else {
            return;
        };
        let _ = socket.set_nodelay(true);
        let tls = match (transport, &self.tls) {
            (Transport::Tls, Some(config)) => {
                match rustls::server::UnbufferedServerConnection::new(config.clone()) {
                    Ok(c) => Some(Box::new(c)),
                    Err(_) => return,
                }
            }
            _ => None,
        };
        let tuple = FiveTuple {
            client,
            server,
            transport,
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let ring = self.ring_reads;
        let mut conn = Connection::new(
            socket,
            tuple,
            tls,
            self.options.max_frame_unallocated,
            self.options.send_queue,
            now,
        );
        conn.ring_sends = self.ring_sends;
        // The epoll set sees what the ring does not: reads, and writability for `write`.
        let interest = match (ring, self.ring_sends) {
            (true, true) => None,
            (true, false) => Some(Interest::WRITABLE),
            (false, _) => Some(Interest::READABLE | Interest::WRITABLE),
        };
        if let Some(interest) = interest {
            if self
                .poll
                .registry()
                .register(&mut conn.socket, Token(CONN_BASE + slot), interest)
                .is_err()
            {
                self.free.push(slot);
                return;
            }
        }
        if ring {
            // Never 0, so a generation of 0 names no connection.
            self.next_gen = (self.next_gen.wrapping_add(1) & RING_GEN_MASK).max(1);
            conn.ring = true;
            conn.gen = self.next_gen;
            self.to_arm
                .push((slot as u32, conn.gen, conn.socket.as_raw_fd()));
        }
        self.by_tuple.insert((client, server), slot);
        self.conns[slot] = Some(conn);
        self.open += 1;
        self.counters.accepted += 1;
    }

    fn read(
        &mut self,
        slot: usize,
        input: Input<'_>,
        now: Instant,
        state: &mut ShardState,
        relays: &mut dyn RelayIo,
    ) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.ended {
            return;
        }
        let tuple = conn.tuple;
        let frames = &mut self.counters.frames;
        let mut tell = !conn.session_told;
        let result = conn.read(&mut self.buf, input, now, |frame, session| {
            // Before the first request: the allocation it may make carries the session.
            if let (true, Some(session)) = (tell, session) {
                state.server.set_tls_session(tuple, session);
                tell = false;
            }
            *frames += 1;
            state.io.received += 1;
            let action = state
                .server
                .handle_client(now, tuple, frame, relays.sockets());
            if let ClientAction::ToPeer {
                relay,
                peer,
                payload,
            } = action
            {
                relays.send_to_peer(&mut state.io, relay, peer, &frame[payload]);
            }
        });
        if !tell {
            conn.session_told = true;
        }
        match result {
            Ok(()) => {}
            // The client's end may come with its last requests: their answers are still
            // in the core's queue, so the close waits for the end of this turn.
            Err(Closed::Peer) => {
                conn.ended = true;
                self.ending.push(slot);
            }
            Err(why) => self.close(slot, why, now, state, relays),
        }
        // Answers, handshake records and alerts leave on the ring.
        self.list_send(slot);
    }

    fn flush(
        &mut self,
        slot: usize,
        now: Instant,
        state: &mut ShardState,
        relays: &mut dyn RelayIo,
    ) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Err(why) = conn.flush() {
            self.close(slot, why, now, state, relays);
        }
    }

    fn close(
        &mut self,
        slot: usize,
        why: Closed,
        now: Instant,
        state: &mut ShardState,
        relays: &mut dyn RelayIo,
    ) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        match why {
            Closed::Framing(_) => self.counters.framing_errors += 1,
            Closed::Tls => self.counters.tls_errors += 1,
            Closed::Peer | Closed::Io => {}
        }
        conn.close();
        if !(conn.ring && conn.ring_sends) {
            let _ = self.poll.registry().deregister(&mut conn.socket);
        }
        self.by_tuple
            .remove(&(conn.tuple.client, conn.tuple.server));
        self.free.push(slot);
        self.open -= 1;
        self.counters.closed += 1;
        // The allocation goes with its connection (RFC 8656 §3.1); a no-op without one.
        state
            .server
            .connection_closed(now, conn.tuple, relays.sockets());
        relays.release_stream(conn.socket);
    }

    /// End of a loop turn: closes the connections their clients ended (their answers are
    /// written by now), and those past a deadline: TLS handshakes too slow, connections
    /// holding no allocation quiet for the idle timeout.
    pub fn sweep(&mut self, now: Instant, state: &mut ShardState, relays: &mut dyn RelayIo) {
        // A connection whose answers are still on the ring closes once they are out, or
        // after SEND_GRACE if its client does not take them.
        for slot in std::mem::take(&mut self.ending) {
            let wait = self
                .conns
                .get(slot)
                .and_then(Option::as_ref)
                .is_some_and(|c| {
                    c.sending() && now.saturating_duration_since(c.active_at) < SEND_GRACE
                });
            if wait {
                self.ending.push(slot);
            } else {
                self.close(slot, Closed::Peer, now, state, relays);
            }
        }
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        self.publish(state);
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            if now.saturating_duration_since(conn.active_at) >= SWEEP_EVERY {
                conn.shrink();
            }
            if stuck_send(conn, now, self.options.send_timeout) {
                self.counters.send_timeouts += 1;
                self.close(slot, Closed::Io, now, state, relays);
            } else if conn.handshaking()
                && now.saturating_duration_since(conn.opened_at) >= self.options.handshake_timeout
            {
                self.counters.handshake_timeouts += 1;
                self.close(slot, Closed::Peer, now, state, relays);
            } else if !conn.allocated
                && now.saturating_duration_since(conn.active_at) >= self.options.idle_timeout
            {
                self.counters.idle_closed += 1;
                self.close(slot, Closed::Peer, now, state, relays);
            }
        }
    }

    /// Counts what is open now into the counters, which go to the shard's state (its
    /// report, and the metrics it publishes every turn).
    fn publish(&mut self, state: &mut ShardState) {
        self.counters.open = self.open as u64;
        self.counters.buffered_bytes = self.buffered_bytes() as u64;
        state.streams = self.counters.clone();
    }

    /// Sends a core transmit meant for a stream client; gives it back when it is for UDP.
    pub fn route(&mut self, t: Transmit) -> Option<Transmit> {
        if !t.transport.is_stream() {
            return Some(t);
        }
        self.send_to_client(t.local, t.remote, &t.data);
        None
    }

    /// Sends a frame the core built (ChannelData already padded to 4, RFC 8656 §12.5) on
    /// the connection of (`client`, `local`); one that closed meanwhile is dropped, counted.
    pub fn send_to_client(&mut self, local: SocketAddr, client: SocketAddr, frame: &[u8]) {
        match self.by_tuple.get(&(client, local)) {
            Some(&slot) => self.send(slot, frame),
            None => self.counters.no_connection += 1,
        }
    }

    fn send(&mut self, slot: usize, frame: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        match conn.send(frame) {
            Ok(Queued::Yes) => self.list_send(slot),
            Ok(Queued::Full) => self.counters.queue_drops += 1,
            // Closed on the next read or writable event, where the core can be told.
            Err(_) => {}
        }
    }

    /// Keeps each connection's `allocated` flag in step with the core's events.
    pub fn on_event(&mut self, event: &Event) {
        let (info, allocated) = match event {
            Event::AllocationCreated { info, .. } => (info, true),
            Event::AllocationDeleted { info, .. } => (info, false),
            _ => return,
        };
        let key = (info.five_tuple.client, info.five_tuple.server);
        if let Some(conn) = self
            .by_tuple
            .get(&key)
            .and_then(|&slot| self.conns[slot].as_mut())
        {
            conn.allocated = allocated;
            conn.set_max_frame(if allocated {
                self.options.max_frame
            } else {
                self.options.max_frame_unallocated
            });
            // The idle clock starts again when the allocation goes.
            conn.active_at = Instant::now();
        }
    }

    /// Closes every connection (server stopping); the core deletes allocations itself.
    pub fn shutdown(&mut self) {
        for conn in self.conns.iter_mut().filter_map(Option::take) {
            let mut conn = conn;
            conn.close();
        }
        self.by_tuple.clear();
        self.open = 0;
    }

    /// User-space bytes held by connection buffers (send queues and partial frames).
    pub fn buffered_bytes(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .map(Connection::buffered_capacity)
            .sum()
    }
}

/// Whether `conn` has had a ring send in flight, with no other completing, for `timeout`
/// (watched from sweep to sweep).
fn stuck_send(conn: &mut Connection, now: Instant, timeout: Duration) -> bool {
    if !conn.sending() {
        conn.send_watch = None;
        return false;
    }
    match conn.send_watch {
        Some((since, done)) if done == conn.sends_done => {
            now.saturating_duration_since(since) >= timeout
        }
        _ => {
            conn.send_watch = Some((now, conn.sends_done));
            false
        }
    }
}
