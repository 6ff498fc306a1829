//! The null forwarder for TCP and TLS clients: the floor any relay serving stream clients
//! can reach on this host. It keeps TURN's shape over a stream (RFC 8656 §12.5): one
//! connection and one UDP relay socket per client, ChannelData frames cut from the stream,
//! each frame's payload sent to the peer with one send, each datagram from the peer written
//! back as one ChannelData frame (header, payload, padding to 4) with one write. Nothing
//! else: no STUN, no authentication, no permissions, one peer per connection.
//!
//! A client sends `HELLO <peer>\n` once and gets `OK <relay address>\n` back; then frames.
//! With a TLS configuration, a connection whose first byte opens a TLS handshake record
//! speaks TLS (the same rustls server configuration and crypto provider uturn uses); other
//! connections on the same listener stay plain TCP.
//!
//! Owns: the connections of one forwarder thread, their relay sockets and their bounded
//! queues. Must not: parse TURN beyond the frame boundaries, grow a queue past
//! [`QUEUE_LIMIT`] (frames beyond are dropped and counted), or hold more than
//! [`MAX_CONNECTIONS`] connections per thread.

use crate::stream::{read_records, write_queue, TlsRead, CHANNEL, QUEUE_LIMIT};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use uturn::stun::framing::Reassembler;

/// Set in every token of this module: connection `i` is `STREAM | i << 1`, its relay socket
/// `STREAM | i << 1 | 1`.
const STREAM: usize = 1 << (usize::BITS - 2);
/// The TCP listener's token.
pub const TCP_LISTEN: Token = Token(usize::MAX - 1);
/// Connections one thread holds at most; further ones are closed at once.
pub const MAX_CONNECTIONS: usize = 100_000;
/// The longest `HELLO` line.
const MAX_HELLO: usize = 256;
/// The first byte of a TLS handshake record (RFC 8446 §5.1, content type 22).
const TLS_HANDSHAKE: u8 = 0x16;

/// Whether `token` is one of this module's.
pub fn owns(token: Token) -> bool {
    token == TCP_LISTEN || (token.0 & STREAM != 0 && token.0 != usize::MAX)
}

enum Phase {
    /// Nothing read yet: plain TCP or TLS is decided by the first byte.
    First,
    /// Reading the `HELLO <peer>` line.
    Hello(Vec<u8>),
    Relaying(Relay),
}

struct Relay {
    socket: UdpSocket,
    peer: SocketAddr,
}

struct Conn {
    tcp: TcpStream,
    tls: Option<Box<ServerConnection>>,
    phase: Phase,
    frames: Reassembler,
    /// Bytes (plaintext with TLS) the socket (or rustls) did not take yet.
    queue: Vec<u8>,
}

/// One thread's stream side: its SO_REUSEPORT listener and connections.
pub struct Streams {
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    relay_ip: IpAddr,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Frames toward clients dropped because a connection's queue was full.
    pub dropped: u64,
    /// Connections closed for bad input (not a HELLO line, not ChannelData framing, TLS).
    pub refused: u64,
    read_buf: Box<[u8]>,
    frame_buf: Box<[u8]>,
}

impl Streams {
    /// Listens on TCP `listen` (SO_REUSEPORT, so every forwarder thread has a listener on
    /// the same address); relay sockets bind to `listen`'s address.
    pub fn new(
        listen: SocketAddr,
        tls: Option<Arc<ServerConfig>>,
        registry: &Registry,
    ) -> io::Result<Streams> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(
            Domain::for_address(listen),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&listen.into())?;
        socket.listen(1024)?;
        let mut listener = TcpListener::from_std(socket.into());
        registry.register(&mut listener, TCP_LISTEN, Interest::READABLE)?;
        Ok(Streams {
            listener,
            tls,
            relay_ip: listen.ip(),
            conns: Vec::new(),
            free: Vec::new(),
            dropped: 0,
            refused: 0,
            read_buf: vec![0u8; 65_536].into_boxed_slice(),
            // Header, the largest datagram, padding.
            frame_buf: vec![0u8; 4 + 65_536 + 4].into_boxed_slice(),
        })
    }

    /// Handles one readiness event for a token of this module.
    pub fn event(&mut self, registry: &Registry, event: &mio::event::Event) {
        let token = event.token();
        if token == TCP_LISTEN {
            return self.accept(registry);
        }
        let i = (token.0 & !STREAM) >> 1;
        let alive = if token.0 & 1 == 1 {
            self.peer_ready(i)
        } else {
            // After the peer's FIN or an error, read until the end: no further edge comes.
            let closing = event.is_read_closed() || event.is_error();
            self.client_ready(registry, i, event.is_writable(), closing)
        };
        if alive.is_err() {
            self.close(registry, i);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let mut tcp = match self.listener.accept() {
                Ok((tcp, _)) => tcp,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors and the like: the backlog waits for the next event.
                Err(_) => return,
            };
            let open = self.conns.len() - self.free.len();
            if open >= MAX_CONNECTIONS {
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let i = self.free.pop().unwrap_or(self.conns.len());
            // Writable too: edge-triggered, so it only reports a socket that filled up and
            // has room again.
            let interest = Interest::READABLE | Interest::WRITABLE;
            if registry
                .register(&mut tcp, Token(STREAM | (i << 1)), interest)
                .is_err()
            {
                self.free.push(i);
                continue;
            }
            let conn = Conn {
                tcp,
                tls: None,
                phase: Phase::First,
                frames: Reassembler::default(),
                queue: Vec::new(),
            };
            if i == self.conns.len() {
                self.conns.push(Some(conn));
            } else {
                self.conns[i] = Some(conn);
            }
        }
    }

    fn close(&mut self, registry: &Registry, i: usize) {
        let Some(mut conn) = self.conns.get_mut(i).and_then(Option::take) else {
            return;
        };
        let _ = registry.deregister(&mut conn.tcp);
        if let Phase::Relaying(mut r) = conn.phase {
            let _ = registry.deregister(&mut r.socket);
        }
        self.free.push(i);
    }

    /// The connection is readable or writable: read what is there, cut frames, send their
    /// payloads to the peer; write what waits. `Err` closes the connection.
    fn client_ready(
        &mut self,
        registry: &Registry,
        i: usize,
        writable: bool,
        closing: bool,
    ) -> io::Result<()> {
        let relay_ip = self.relay_ip;
        let Some(conn) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return Ok(());
        };
        if matches!(conn.phase, Phase::First) {
            let mut first = [0u8; 1];
            match conn.tcp.peek(&mut first) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
            if first[0] == TLS_HANDSHAKE {
                let config = self.tls.clone().ok_or_else(|| {
                    self.refused += 1;
                    io::Error::from(io::ErrorKind::InvalidData)
                })?;
                let tls = ServerConnection::new(config).map_err(io::Error::other)?;
                conn.tls = Some(Box::new(tls));
            }
            conn.phase = Phase::Hello(Vec::new());
        }
        let buf = &mut self.read_buf;
        let mut refused = false;
        let result = conn.read(buf, closing, |conn, data| {
            let r = conn.take(registry, relay_ip, i, data);
            refused |= r.is_err();
            r
        });
        if refused {
            self.refused += 1;
        }
        let more = result?;
        if writable || conn.tls.is_some() || !conn.queue.is_empty() {
            conn.flush()?;
        }
        if more {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    /// The relay socket is readable: each datagram goes back as one ChannelData frame.
    fn peer_ready(&mut self, i: usize) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return Ok(());
        };
        let buf = &mut self.frame_buf;
        loop {
            let Phase::Relaying(relay) = &conn.phase else {
                return Ok(());
            };
            let n = match relay.socket.recv_from(&mut buf[4..4 + 65_536]) {
                Ok((n, _)) => n.min(usize::from(u16::MAX)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors and the like on the relay socket: the connection goes on.
                Err(_) => continue,
            };
            buf[..2].copy_from_slice(&CHANNEL.to_be_bytes());
            buf[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            let end = 4 + n.next_multiple_of(4);
            buf[4 + n..end].fill(0);
            if !conn.send(&buf[..end])? {
                self.dropped += 1;
            }
        }
    }
}

impl Conn {
    /// Reads what the socket has, through TLS when the connection speaks it, and hands the
    /// plaintext to `take`; `Ok(false)` at the end of the stream. A plain read shorter than
    /// `buf` has emptied the socket (epoll(7)), so no read is spent on learning it would
    /// block, unless `to_end`.
    fn read(
        &mut self,
        buf: &mut [u8],
        to_end: bool,
        mut take: impl FnMut(&mut Conn, &[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        loop {
            let Some(tls) = &mut self.tls else {
                match self.tcp.read(buf) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        take(self, &buf[..n])?;
                        if n < buf.len() && !to_end {
                            return Ok(true);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                continue;
            };
            let mut left = match read_records(tls, &mut self.tcp)? {
                TlsRead::End => return Ok(false),
                TlsRead::WouldBlock => return Ok(true),
                TlsRead::Plain(n) => n,
            };
            while left > 0 {
                let n = self.tls.as_mut().map_or(Ok(0), |t| t.reader().read(buf))?;
                if n == 0 {
                    break;
                }
                left = left.saturating_sub(n);
                take(self, &buf[..n])?;
            }
        }
    }

    /// Takes plaintext from the client: the `HELLO` line, then ChannelData frames whose
    /// payloads go to the peer (anything else framed as TURN is ignored).
    fn take(
        &mut self,
        registry: &Registry,
        relay_ip: IpAddr,
        i: usize,
        mut data: &[u8],
    ) -> io::Result<()> {
        let bad = || io::Error::from(io::ErrorKind::InvalidData);
        if let Phase::Hello(line) = &mut self.phase {
            let Some(end) = data.iter().position(|&b| b == b'\n') else {
                if line.len() + data.len() > MAX_HELLO {
                    return Err(bad());
                }
                line.extend_from_slice(data);
                return Ok(());
            };
            if line.len() + end > MAX_HELLO {
                return Err(bad());
            }
            line.extend_from_slice(&data[..end]);
            data = &data[end + 1..];
            let peer = std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.strip_prefix("HELLO "))
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
                .ok_or_else(bad)?;
            let std_socket = crate::forward::bind(SocketAddr::new(relay_ip, 0), false)?;
            let mut socket = UdpSocket::from_std(std_socket);
            registry.register(
                &mut socket,
                Token(STREAM | (i << 1) | 1),
                Interest::READABLE,
            )?;
            let reply = format!("OK {}\n", socket.local_addr()?);
            self.phase = Phase::Relaying(Relay { socket, peer });
            self.send(reply.as_bytes())?;
        }
        let Phase::Relaying(relay) = &self.phase else {
            return Ok(());
        };
        self.frames
            .push(data, |frame| {
                // ChannelData (first two bits 01); its length field says where the padding
                // starts. One send per frame; a refused send is loss, as a full UDP
                // socket buffer makes it.
                if frame[0] >> 6 == 1 {
                    let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
                    let _ = relay.socket.send_to(&frame[4..4 + len], relay.peer);
                }
            })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes `frame` now if nothing waits before it, else queues it; `Ok(false)` if it was
    /// dropped for a full queue.
    fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        if !self.queue.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write()) {
            if self.queue.len() + frame.len() > QUEUE_LIMIT {
                return Ok(false);
            }
            self.queue.extend_from_slice(frame);
            return Ok(true);
        }
        match &mut self.tls {
            None => {
                let mut done = 0;
                while done < frame.len() {
                    match self.tcp.write(&frame[done..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                // A frame is at most 65,540 bytes, well within the queue's limit.
                self.queue.extend_from_slice(&frame[done..]);
            }
            Some(tls) => {
                // rustls takes plaintext up to its buffer limit; the rest waits here.
                let n = tls.writer().write(frame)?;
                self.queue.extend_from_slice(&frame[n..]);
            }
        }
        if self.tls.is_some() {
            self.flush()?;
        }
        Ok(true)
    }

    /// Writes what waits, as far as the socket takes it.
    fn flush(&mut self) -> io::Result<()> {
        write_queue(
            &mut self.tcp,
            self.tls.as_deref_mut().map(|t| &mut **t),
            &mut self.queue,
        )
    }
}
