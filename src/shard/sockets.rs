//! The shards' UDP sockets: listening members (with the destination address reported on
//! a wildcard address), relay sockets, and which listener sends as a given local address.
//!
//! Owns: socket options and binding. Must not: receive or send (the backends do).

use super::{pktinfo, prebind};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;

/// Receive/send buffer asked for on listening sockets; the kernel caps it at
/// `net.core.rmem_max`/`wmem_max` (see tuning/).
const LISTEN_SOCKET_BUFFER: usize = 4 << 20;
pub(crate) const RELAY_SOCKET_BUFFER: usize = 1 << 20;

/// A listening socket (an SO_REUSEPORT member) at `addr`; on a wildcard address it
/// reports each datagram's destination, so replies leave from the address the client used.
/// A member [`prebind::bind_all`] bound for this shard thread is taken first.
pub(crate) fn bind_listener(addr: SocketAddr) -> io::Result<UdpSocket> {
    if let Some(socket) = prebind::take_udp(addr) {
        return Ok(socket);
    }
    let socket = bind_udp(addr, true, LISTEN_SOCKET_BUFFER)?;
    if addr.ip().is_unspecified() {
        pktinfo::enable(&socket, addr)?;
    }
    Ok(socket)
}

/// The listener that sends as `local`: the one bound there, or the wildcard listener of
/// its port and family, with `local`'s address as the source to set.
pub(crate) fn listener_for<S>(
    listeners: &[(SocketAddr, S)],
    local: SocketAddr,
) -> Option<(&S, Option<IpAddr>)> {
    if let Some((_, s)) = listeners.iter().find(|(addr, _)| *addr == local) {
        return Some((s, None));
    }
    listeners
        .iter()
        .find(|(addr, _)| {
            addr.ip().is_unspecified()
                && addr.port() == local.port()
                && addr.is_ipv4() == local.is_ipv4()
        })
        .map(|(_, s)| (s, Some(local.ip())))
}

/// Creates a nonblocking UDP socket bound at `addr`.
pub(crate) fn bind_udp(addr: SocketAddr, reuse_port: bool, buffer: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    // Best effort: the kernel caps these, and a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Logs a relay socket that could not be opened when the cause is the process's or the
/// system's descriptor limit (every allocation holds one socket): the core answers 508,
/// and the operator needs to know why. Logged at 1, 2, 4, 8, … occurrences, not per request.
pub(crate) fn note_relay_open_error(e: &io::Error) {
    use std::sync::atomic::AtomicU64;
    static FD_LIMIT_HITS: AtomicU64 = AtomicU64::new(0);
    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
        let n = FD_LIMIT_HITS.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                times = n,
                "cannot open relay sockets: {e}; raise the file descriptor limit (LimitNOFILE, ulimit -n; see tuning/)"
            );
        }
    }
}
