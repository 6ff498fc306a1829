//! What the stream side of a shard serves (TCP, TLS and their bounds, from the
//! configuration) and its listening sockets.
//!
//! Owns: the stream options, the stream listeners' addresses and their binding.
//! Must not: accept or read connections (that is `stream`).

use super::tls::Certificates;
use crate::stun::framing::MAX_FRAME;
use crate::turn::Transport;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Connections per shard when `--max-connections` is 0.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// What the stream side of a shard serves, and its bounds.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// TCP listeners on the listening addresses.
    pub tcp: bool,
    /// TLS listeners on the listening IPs at `tls_port`, when certificates are loaded.
    pub tls: Option<Arc<Certificates>>,
    pub tls_port: u16,
    /// Connections per shard; beyond it new ones are closed at once (counted).
    pub max_connections: usize,
    /// A connection without an allocation that says nothing this long is closed.
    pub idle_timeout: Duration,
    /// A TLS handshake not finished this long after accept is abandoned.
    pub handshake_timeout: Duration,
    /// Bytes queued for one client before frames to it are dropped.
    pub send_queue: usize,
    /// A ring send to a client that has not completed this long (a client that stopped
    /// reading, or a completion the kernel dropped) closes the connection.
    pub send_timeout: Duration,
    /// Largest frame accepted from a client that holds an allocation on the connection.
    pub max_frame: usize,
    /// Largest frame accepted before that: requests only, so a client that has not
    /// authenticated cannot make the server hold a long partial frame.
    pub max_frame_unallocated: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            tcp: true,
            tls: None,
            tls_port: 5349,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            send_queue: 256 * 1024,
            send_timeout: Duration::from_secs(30),
            max_frame: MAX_FRAME,
            max_frame_unallocated: 4096,
        }
    }
}

impl StreamOptions {
    /// What the stream side serves, from the configuration; loads the TLS certificates.
    pub fn from_config(config: &crate::config::Config) -> io::Result<StreamOptions> {
        let tls = match (&config.cert, &config.pkey, config.no_tls) {
            (Some(cert), Some(key), false) => Some(
                Certificates::load(cert, key)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
            ),
            (Some(_), None, false) | (None, Some(_), false) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS needs both --cert and --pkey",
                ))
            }
            _ => None,
        };
        let options = StreamOptions {
            tcp: !config.no_tcp,
            tls,
            tls_port: config.tls_listening_port,
            max_connections: match config.max_connections {
                0 => DEFAULT_MAX_CONNECTIONS,
                n => n,
            },
            ..StreamOptions::default()
        };
        if config.no_udp && !options.tcp && options.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no client transport left (--no-udp, --no-tcp, and no TLS)",
            ));
        }
        Ok(options)
    }
}

impl StreamOptions {
    /// The stream listeners' addresses for the listening addresses `listen`.
    pub(crate) fn addresses(&self, listen: &[SocketAddr]) -> Vec<(SocketAddr, Transport)> {
        let mut addrs = Vec::new();
        if self.tcp {
            addrs.extend(listen.iter().map(|a| (*a, Transport::Tcp)));
        }
        if self.tls.is_some() {
            addrs.extend(
                listen
                    .iter()
                    .map(|a| (SocketAddr::new(a.ip(), self.tls_port), Transport::Tls)),
            );
        }
        addrs
    }

    /// Refuses ports another process listens on: SO_REUSEPORT would silently split the
    /// clients between it and this server.
    pub(crate) fn check_free(&self, listen: &[SocketAddr]) -> io::Result<()> {
        for (addr, _) in self.addresses(listen) {
            if let Err(e) = bind_tcp(addr, false) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot listen on TCP {addr}: {e} (is another TURN server running?)"),
                ));
            }
        }
        Ok(())
    }
}

/// A nonblocking TCP listener at `addr` with a deep backlog; a SO_REUSEPORT member that
/// `prebind::bind_all` bound for this shard thread is taken first.
pub(crate) fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    if let Some(listener) = reuse_port.then(|| super::prebind::take_tcp(addr)).flatten() {
        return Ok(listener);
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
