//! The ring's registered file table: listening and relay sockets named by slot
//! ([`Sock::Fixed`]), so an operation skips the descriptor table lookup and the file
//! reference count. A slot goes to another socket only after every entry that named the old
//! one has reached the kernel (`io` closes relay sockets that way), so a queued entry never
//! reaches another socket. A socket that found no slot (table full, or none registered) is
//! named by its descriptor ([`Sock::Raw`]).
//!
//! Owns the slots; must not decide when a socket opens or closes.

use super::io::{Io, BUF_GROUP};
use io_uring::types::{Fd, Fixed};
use io_uring::{opcode, squeue};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

/// A socket as the ring's entries name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sock {
    /// A slot of the ring's registered file table.
    Fixed(u32),
    /// A plain descriptor.
    Raw(RawFd),
}

impl Sock {
    pub fn send_msg(self, msghdr: *const libc::msghdr) -> squeue::Entry {
        match self {
            Sock::Fixed(i) => opcode::SendMsg::new(Fixed(i), msghdr).build(),
            Sock::Raw(fd) => opcode::SendMsg::new(Fd(fd), msghdr).build(),
        }
    }

    pub fn recv_msg_multi(self, msghdr: *const libc::msghdr) -> squeue::Entry {
        match self {
            Sock::Fixed(i) => opcode::RecvMsgMulti::new(Fixed(i), msghdr, BUF_GROUP).build(),
            Sock::Raw(fd) => opcode::RecvMsgMulti::new(Fd(fd), msghdr, BUF_GROUP).build(),
        }
    }
}

/// Where a send leaves from: the socket, and the source address to set on a wildcard
/// listener.
pub(super) type Via = (Sock, Option<IpAddr>);

/// The slots of the ring's registered file table not in use.
pub(super) struct FixedFiles {
    free: Vec<u32>,
}

impl Io {
    /// Registers a sparse file table of `size` slots (listeners first, the rest for relay
    /// sockets) and names the listeners through it. On error nothing changes.
    pub fn register_files(&mut self, size: u32) -> io::Result<()> {
        let listeners = self.listeners.len() as u32;
        if size <= listeners {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no room"));
        }
        let submitter = self.ring.submitter();
        submitter.register_files_sparse(size)?;
        let fds: Vec<RawFd> = self.listeners.iter().map(|(_, s)| s.as_raw_fd()).collect();
        if let Err(e) = submitter.register_files_update(0, &fds) {
            let _ = submitter.unregister_files();
            return Err(e);
        }
        for (i, (_, sock)) in self.listener_socks.iter_mut().enumerate() {
            *sock = Sock::Fixed(i as u32);
        }
        self.files = Some(FixedFiles {
            free: (listeners..size).rev().collect(),
        });
        Ok(())
    }

    /// A registered slot for `fd`, if the table has one free and the kernel takes it.
    pub(super) fn fixed_slot(&mut self, fd: RawFd) -> Sock {
        let Some(files) = self.files.as_mut() else {
            return Sock::Raw(fd);
        };
        let Some(slot) = files.free.pop() else {
            return Sock::Raw(fd);
        };
        match self.ring.submitter().register_files_update(slot, &[fd]) {
            Ok(_) => Sock::Fixed(slot),
            Err(e) => {
                tracing::debug!("registered file update: {e}");
                files.free.push(slot);
                Sock::Raw(fd)
            }
        }
    }

    /// Empties registered slot `slot` (operations in flight keep their own reference to
    /// the socket) and frees it.
    pub(super) fn release_slot(&mut self, slot: u32) {
        let Some(files) = self.files.as_mut() else {
            return;
        };
        // An update that fails leaves the socket in the table; the slot is not reused then.
        if self
            .ring
            .submitter()
            .register_files_update(slot, &[-1])
            .is_ok()
        {
            files.free.push(slot);
        }
    }

    /// Drops the registered file table at shutdown. The kernel tears a ring down in a
    /// worker after the process has exited, and the table's references would keep every
    /// listening and relay socket bound until then: a restarted server would find its
    /// port in use. Without the table the sockets close with their descriptors.
    pub fn unregister_files(&mut self) {
        if self.files.take().is_some() {
            if let Err(e) = self.ring.submitter().unregister_files() {
                tracing::warn!("unregistering the file table at shutdown: {e}");
            }
        }
    }

    /// Test: a registered file table is in use.
    #[cfg(test)]
    pub fn fixed_files(&self) -> bool {
        self.files.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{reap, test_shard};
    use super::super::{Op, SendBuf, Shard, TestKnobs};
    use super::Sock;
    use crate::turn::{RelayId, RelaySockets};
    use std::net::{SocketAddr, UdpSocket};
    use std::time::{Duration, Instant};

    /// A relay socket's datagram arrives through the ring, and one it sends leaves from its
    /// address; returns how the ring names the socket.
    fn relay_round_trip(shard: &mut Shard, id: u32, addr: SocketAddr) -> Sock {
        let (sock, _) = shard.io.relay_fd(RelayId(id)).expect("open");
        let gen = shard.io.relays[id as usize].gen;
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        other.send_to(b"in", addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = false;
        while !got && Instant::now() < deadline {
            got = reap(shard, Duration::from_millis(10)).iter().any(|e| {
                Op::decode(e.user_data()) == Some(Op::RelayRecv { index: id, gen })
                    && e.result() > 0
            });
        }
        assert!(got, "relay {id} ({sock:?}) receives");
        let sent = shard.io.send(
            &shard.buffers,
            (sock, None),
            other.local_addr().unwrap(),
            SendBuf::Owned(b"out".to_vec()),
        );
        assert!(sent.is_ok());
        shard.io.flush_group();
        reap(shard, Duration::from_millis(10));
        let mut buf = [0u8; 16];
        let (n, from) = other.recv_from(&mut buf).expect("the send arrives");
        assert_eq!((&buf[..n], from), (&b"out"[..], addr));
        sock
    }

    /// A registered file table smaller than the relay sockets: the listener and the first
    /// relays take its slots, the next one is named by descriptor, and a closed relay's slot
    /// goes to the next relay opened; every one of them receives and sends.
    #[test]
    fn relays_beyond_the_file_table_use_descriptors_and_closed_slots_are_reused() {
        let mut shard = test_shard(
            16,
            &TestKnobs {
                fixed_files: Some(3),
                ..TestKnobs::default()
            },
        );
        assert!(shard.describe().contains("3 registered files"));
        let mut addrs = Vec::new();
        for i in 0..3u32 {
            let addr = UdpSocket::bind(format!("127.77.5.{}:0", i + 1))
                .unwrap()
                .local_addr()
                .unwrap();
            shard.io.open(RelayId(i), addr).unwrap();
            addrs.push(addr);
        }
        shard.io.submit().unwrap();
        let socks: Vec<Sock> = (0..3)
            .map(|i| relay_round_trip(&mut shard, i, addrs[i as usize]))
            .collect();
        assert!(matches!(socks[0], Sock::Fixed(_)), "{socks:?}");
        assert!(matches!(socks[1], Sock::Fixed(_)), "{socks:?}");
        assert!(matches!(socks[2], Sock::Raw(_)), "{socks:?}");
        shard.io.close(RelayId(0));
        assert_eq!(shard.io.closing(), 0);
        let addr = UdpSocket::bind("127.77.5.9:0")
            .unwrap()
            .local_addr()
            .unwrap();
        shard.io.open(RelayId(3), addr).unwrap();
        shard.io.submit().unwrap();
        let reused = relay_round_trip(&mut shard, 3, addr);
        assert_eq!(reused, socks[0], "the closed relay's slot is reused");
        // The closed relay's port is free again: nothing holds its socket.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            reap(&mut shard, Duration::from_millis(10));
            match UdpSocket::bind(addrs[0]) {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "port still held: {e}"),
            }
        }
    }
}
