//! Listening sockets bound for every shard before any shard receives.
//!
//! The kernel picks a SO_REUSEPORT member by hashing the client's address over the members
//! present *now*. Were each shard to bind its own members as it starts, the first shard
//! would answer clients (and create their allocations) while the group is incomplete, and
//! every later member would re-hash some of those clients to a shard that does not hold
//! their allocation (437 / `no_allocation`). So [`bind_all`] binds every shard's UDP, TCP
//! and TLS members in one go on the starting thread, then drops the datagrams that reached
//! a member while the group was still growing (the client retransmits, and is then hashed
//! over the complete group). Each shard thread [`install`]s its share before building its
//! backend; the backends' `bind_listener`/`bind_tcp` calls take the installed sockets, so
//! the backends do not change.
//!
//! Owns: the hand-over of bound listening sockets to shard threads. Must not: receive for a
//! shard (the drain only discards what arrived before the group was complete).

use super::stream::StreamOptions;
use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

/// One shard's bound listening sockets.
#[derive(Default)]
pub(crate) struct Listeners {
    udp: Vec<(SocketAddr, UdpSocket)>,
    tcp: Vec<(SocketAddr, TcpListener)>,
}

thread_local! {
    static INSTALLED: RefCell<Listeners> = RefCell::new(Listeners::default());
}

/// Binds `shards` SO_REUSEPORT members of every listening address (UDP unless `udp` is off,
/// TCP/TLS as `streams` says), then discards what was queued while the group grew.
pub(crate) fn bind_all(
    shards: usize,
    listen: &[SocketAddr],
    udp: bool,
    streams: &StreamOptions,
) -> io::Result<Vec<Listeners>> {
    let udp_listen = if udp { listen } else { &[] };
    let tcp_listen = streams.addresses(listen);
    let mut all = Vec::with_capacity(shards);
    for _ in 0..shards {
        let mut l = Listeners::default();
        for addr in udp_listen {
            l.udp.push((*addr, super::bind_listener(*addr)?));
        }
        for (addr, _) in &tcp_listen {
            l.tcp.push((*addr, super::stream::bind_tcp(*addr, true)?));
        }
        all.push(l);
    }
    let mut dropped = 0u64;
    let mut buf = [0u8; 64];
    for (_, socket) in all.iter().flat_map(|l| &l.udp) {
        // Nonblocking: ends at the first WouldBlock (or any error).
        while socket.recv_from(&mut buf).is_ok() {
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::debug!(
            dropped,
            "datagrams that arrived while the listening group was incomplete"
        );
    }
    Ok(all)
}

/// Makes `listeners` the sockets this thread's next `take_*` calls return.
pub(crate) fn install(listeners: Listeners) {
    INSTALLED.with(|i| *i.borrow_mut() = listeners);
}

/// The installed UDP listener at `addr`, if this thread has one.
pub(crate) fn take_udp(addr: SocketAddr) -> Option<UdpSocket> {
    INSTALLED.with(|i| {
        let mut i = i.borrow_mut();
        let at = i.udp.iter().position(|(a, _)| *a == addr)?;
        Some(i.udp.swap_remove(at).1)
    })
}

/// The installed TCP listener at `addr`, if this thread has one.
pub(crate) fn take_tcp(addr: SocketAddr) -> Option<TcpListener> {
    INSTALLED.with(|i| {
        let mut i = i.borrow_mut();
        let at = i.tcp.iter().position(|(a, _)| *a == addr)?;
        Some(i.tcp.swap_remove(at).1)
    })
}
