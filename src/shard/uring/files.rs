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

    /// Test: a registered file table is in use.
    #[cfg(test)]
    pub fn fixed_files(&self) -> bool {
        self.files.is_some()
    }
}
