//! The null forwarder: the floor any UDP relay can reach on this host. It keeps TURN's
//! socket shape — one listening socket, one relay socket per client, one receive and one
//! send per packet in each direction — and does nothing else: no parsing, no headers, no
//! permissions. A client says `HELLO <peer>` once and gets `OK <relay address>` back.
//! With `--tcp` (or a TLS certificate) the same thread also serves stream clients on the
//! same address (`forward_stream`).

use crate::forward_stream::{self, Streams};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const LISTEN: Token = Token(usize::MAX);

struct Relay {
    socket: UdpSocket,
    client: SocketAddr,
    peer: SocketAddr,
}

/// What a forwarder thread serves besides UDP.
#[derive(Clone)]
pub enum Streaming {
    /// UDP only.
    Off,
    /// TCP on the same address; TLS too for connections that open with a handshake, when
    /// a server configuration is given.
    On(Option<Arc<ServerConfig>>),
}

/// Runs one forwarder thread on `listen` (SO_REUSEPORT, so several threads can share it)
/// until the process ends.
pub fn run(listen: SocketAddr, streaming: Streaming) -> io::Result<()> {
    let std_socket = bind(listen, true)?;
    let mut listener = UdpSocket::from_std(std_socket);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTEN, Interest::READABLE)?;
    let mut streams = match streaming {
        Streaming::Off => None,
        Streaming::On(tls) => Some(Streams::new(listen, tls, poll.registry())?),
    };
    let mut reported = (0, 0);
    let mut relays: Vec<Relay> = Vec::new();
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 65_536];
    loop {
        match poll.poll(&mut events, Some(Duration::from_secs(1))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let quiet = events.is_empty();
        if let Some(s) = streams
            .as_ref()
            .filter(|s| quiet && (s.dropped, s.refused) != reported)
        {
            // Counted per frame, reported after a quiet second (nothing per packet).
            reported = (s.dropped, s.refused);
            eprintln!(
                "uturn-bench: forwarder: {} frames dropped (a connection's queue was full), {} connections refused (bad input)",
                s.dropped, s.refused
            );
        }
        for event in events.iter() {
            if let Some(s) = streams
                .as_mut()
                .filter(|_| event.token() != LISTEN && forward_stream::owns(event.token()))
            {
                s.event(poll.registry(), event);
            } else if event.token() == LISTEN {
                loop {
                    let (n, from) = match listener.recv_from(&mut buf) {
                        Ok(r) => r,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => continue,
                    };
                    if let Some(&i) = by_client.get(&from) {
                        let r = &relays[i];
                        let _ = r.socket.send_to(&buf[..n], r.peer);
                        continue;
                    }
                    // HELLO <peer>: make a relay socket for this client.
                    let Some(peer) = std::str::from_utf8(&buf[..n])
                        .ok()
                        .and_then(|s| s.strip_prefix("HELLO "))
                        .and_then(|s| s.trim().parse::<SocketAddr>().ok())
                    else {
                        continue;
                    };
                    let mut socket =
                        UdpSocket::from_std(bind(SocketAddr::new(listen.ip(), 0), false)?);
                    let index = relays.len();
                    poll.registry()
                        .register(&mut socket, Token(index), Interest::READABLE)?;
                    let reply = format!("OK {}", socket.local_addr()?);
                    relays.push(Relay {
                        socket,
                        client: from,
                        peer,
                    });
                    by_client.insert(from, index);
                    let _ = listener.send_to(reply.as_bytes(), from);
                }
            } else if let Some(r) = relays.get(event.token().0) {
                loop {
                    let n = match r.socket.recv_from(&mut buf) {
                        Ok((n, _)) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => continue,
                    };
                    let _ = listener.send_to(&buf[..n], r.client);
                }
            }
        }
    }
}

pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Asks a forwarder for a relay toward `peer`; returns the relay address.
pub fn hello(
    socket: &std::net::UdpSocket,
    server: SocketAddr,
    peer: SocketAddr,
) -> io::Result<SocketAddr> {
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 128];
    for _ in 0..5 {
        socket.send_to(format!("HELLO {peer}").as_bytes(), server)?;
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if let Some(addr) = std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|s| s.strip_prefix("OK "))
                .and_then(|s| s.parse().ok())
            {
                return Ok(addr);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no answer from the forwarder",
    ))
}
