//! The ring's submission side: sockets, multishot receives, send slots, and the
//! [`RelaySockets`] the core opens and closes relay sockets through.
//!
//! Owns every pointer an SQE carries (msghdrs, iovecs, addresses) and keeps it alive until
//! the operation's completion; must not look at completions' payloads (that is `mod.rs`).
//!
//! Sockets are named as `files` says ([`Sock`]).

use super::buffers::{Buffers, Lent};
use super::copies::{CopyPool, COPY_BUF_SIZE};
use super::files::FixedFiles;
pub(super) use super::files::{Sock, Via};
use super::gso::{Added, Groups, MAX_SEGMENT};
use super::op::{Op, GEN_MASK};
use crate::shard::pktinfo::{self, SourceControl};
use crate::shard::{bind_udp, RELAY_SOCKET_BUFFER};
use crate::turn::{RelayId, RelaySockets};
use io_uring::types::CancelBuilder;
use io_uring::{opcode, squeue, IoUring};
use socket2::SockAddr;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

pub(super) const BUF_GROUP: u16 = 0;
/// Send slots from here on name GSO groups (`Op::Send { slot: GROUP_BASE + group }`).
const GROUP_BASE: u32 = 1 << 30;
pub(super) const NAME_LEN: u32 = 28;
/// Room for the destination address a wildcard listener's receive reports.
pub(super) const CONTROL_LEN: u32 = pktinfo::CONTROL_LEN as u32;

/// What a send carries.
pub(super) enum SendBuf {
    /// `len` bytes at `offset` of a buffer a receive lent (zero-copy forwarding).
    Lent {
        buf: Lent,
        offset: usize,
        len: usize,
    },
    /// Bytes the core built (a response).
    Owned(Vec<u8>),
    /// A copy in one of the [`CopyPool`]'s buffers, which goes back to the pool when the
    /// send completes.
    Copied(Vec<u8>),
}

/// `release` for a finished send's buffer, except that a copy goes back to `copies`.
fn returning_copies<'a>(
    copies: &'a mut CopyPool,
    mut release: impl FnMut(SendBuf) + 'a,
) -> impl FnMut(SendBuf) + 'a {
    move |buf| match buf {
        SendBuf::Copied(copy) => copies.put(copy),
        buf => release(buf),
    }
}

/// One send in flight: the msghdr, iovec and address the kernel reads, and what keeps the
/// bytes alive until the completion.
struct SendSlot {
    msghdr: libc::msghdr,
    iov: libc::iovec,
    addr: SockAddr,
    /// The source address of a send from a wildcard listener.
    control: SourceControl,
    buf: Option<SendBuf>,
}

/// A relay socket being closed: its descriptor stays open until the cancellation of its
/// receive, and every send queued for it, have reached the kernel (which then holds its
/// own reference to the file), so the number cannot be reused under a queued send.
struct Closing {
    /// Held only so the descriptor stays open until dropped.
    _socket: UdpSocket,
    /// The cancellation, while it could not be queued yet.
    cancel: Option<squeue::Entry>,
    /// The registered file slot, emptied and freed with the socket.
    fixed: Option<u32>,
}

/// A relay socket and the generation that tags its completions.
pub(super) struct RelaySlot {
    pub socket: Option<UdpSocket>,
    /// How entries name `socket`.
    pub sock: Sock,
    pub gen: u32,
    /// The relay address the socket is bound to.
    pub addr: SocketAddr,
}

pub(super) struct Io {
    pub ring: IoUring,
    pub recv_msghdr: Box<libc::msghdr>,
    pub relays: Vec<RelaySlot>,
    pub listeners: Vec<(SocketAddr, UdpSocket)>,
    /// How entries name each listener (same order).
    pub(super) listener_socks: Vec<(SocketAddr, Sock)>,
    /// The registered file table, if the ring has one.
    pub(super) files: Option<FixedFiles>,
    slots: Box<[SendSlot]>,
    free_slots: Vec<u32>,
    /// Receives whose multishot ended and that must be armed again (with the generation
    /// they were armed for).
    pub rearm: Vec<Op>,
    /// Receives whose multishot ended for want of buffers: armed again only once enough
    /// buffers are back in the ring, so a receive does not fail again every turn while
    /// sends in flight hold the buffers.
    pub starved: Vec<Op>,
    /// Receives armed and not yet finished (to drain at shutdown).
    pub armed: usize,
    closing: Vec<Closing>,
    /// This shard's open relay sockets by address, so a datagram from one of its
    /// allocations to another can be handed over without the kernel.
    relay_by_addr: HashMap<SocketAddr, u32>,
    /// The host-wide record of which shard owns each relay address (with several shards).
    pub owners: Option<super::handoff::OwnerTable>,
    /// Datagrams gathered into UDP GSO sends.
    groups: Groups,
    /// GSO in use (until the kernel refuses a GSO send).
    pub gso: bool,
    /// Buffers for copied sends ([`Io::send_copy`]).
    pub copies: CopyPool,
    /// Test only: this many next submits fail as if the kernel said EBUSY.
    #[cfg(test)]
    pub fail_submits: u32,
}

impl Io {
    pub fn new(ring: IoUring, listeners: Vec<(SocketAddr, UdpSocket)>, send_slots: usize) -> Io {
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut recv_msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msghdr.msg_namelen = NAME_LEN;
        recv_msghdr.msg_controllen = CONTROL_LEN as _;
        let slots = (0..send_slots)
            .map(|_| SendSlot {
                // SAFETY: as above, all-zero is a valid msghdr.
                msghdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                addr: SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                control: SourceControl([0; pktinfo::CONTROL_LEN]),
                buf: None,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let listener_socks = listeners
            .iter()
            .map(|(a, s)| (*a, Sock::Raw(s.as_raw_fd())))
            .collect();
        Io {
            ring,
            recv_msghdr,
            relays: Vec::new(),
            listeners,
            listener_socks,
            files: None,
            slots,
            free_slots: (0..send_slots as u32).rev().collect(),
            rearm: Vec::with_capacity(64),
            starved: Vec::new(),
            armed: 0,
            closing: Vec::new(),
            relay_by_addr: HashMap::new(),
            owners: None,
            groups: Groups::new(),
            gso: true,
            copies: CopyPool::default(),
            #[cfg(test)]
            fail_submits: 0,
        }
    }

    /// Submits what is queued.
    pub fn submit(&mut self) -> io::Result<usize> {
        #[cfg(test)]
        if self.fail_submits > 0 {
            self.fail_submits -= 1;
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.ring.submit()
    }

    /// Everything queued reached the kernel.
    fn submit_all(&mut self) -> bool {
        self.submit().is_ok() && self.ring.submission().is_empty()
    }

    /// Before the loop's submit: queues the cancellations that could not be queued.
    pub fn queue_pending_cancels(&mut self) {
        for i in 0..self.closing.len() {
            if let Some(sqe) = self.closing[i].cancel.clone() {
                if self.push(&sqe) {
                    self.closing[i].cancel = None;
                }
            }
        }
    }

    /// After a submit that left nothing queued: sockets whose cancellation was queued
    /// before it can be closed now.
    pub fn submitted(&mut self) {
        if !self.closing.is_empty() && self.ring.submission().is_empty() {
            let mut i = 0;
            while i < self.closing.len() {
                if self.closing[i].cancel.is_some() {
                    i += 1;
                    continue;
                }
                let closed = self.closing.swap_remove(i);
                if let Some(slot) = closed.fixed {
                    self.release_slot(slot);
                }
            }
        }
    }

    /// Test and diagnostics: relay sockets waiting to be closed.
    #[cfg(test)]
    pub fn closing(&self) -> usize {
        self.closing.len()
    }

    /// Queues an SQE, submitting what is queued first if the submission queue is full.
    /// False if it could not be queued (the kernel refused the submits).
    pub fn push(&mut self, sqe: &squeue::Entry) -> bool {
        for _ in 0..3 {
            // Every pointer an SQE carries (msghdr, iovec, address, buffers, eventfd read
            // target) lives in `Shard`/`Io` heap storage that outlives the operation: send
            // slots are freed only on their completion, the receive msghdr and the buffers
            // live until the ring is dropped after all receives are cancelled.
            // SAFETY: see above; the entry itself is copied into the ring.
            let pushed = unsafe { self.ring.submission().push(sqe) };
            if pushed.is_ok() {
                return true;
            }
            if let Err(e) = self.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!("io_uring submit failed: {e}");
                }
            }
        }
        false
    }

    fn arm_recv(&mut self, sock: Sock, op: Op) {
        let sqe = sock
            .recv_msg_multi(&*self.recv_msghdr)
            .user_data(op.encode());
        if self.push(&sqe) {
            self.armed += 1;
        } else {
            // Tried again next turn.
            self.rearm.push(op);
        }
    }

    /// Arms the receive `op` names if its socket is still the one it names.
    pub fn arm(&mut self, op: Op) {
        let sock = match op {
            Op::ListenRecv { index } => self.listener_socks.get(index as usize).map(|l| l.1),
            Op::RelayRecv { index, gen } => self.live_relay(index, gen),
            _ => None,
        };
        if let Some(sock) = sock {
            self.arm_recv(sock, op);
        }
    }

    /// Relay `index`'s socket if it is open as generation `gen`.
    pub fn live_relay(&self, index: u32, gen: u32) -> Option<Sock> {
        match self.relays.get(index as usize) {
            Some(RelaySlot {
                socket: Some(_),
                sock,
                gen: current,
                ..
            }) if *current == gen => Some(*sock),
            _ => None,
        }
    }

    /// Sends `buf` from `sock` (from address `source`, on a wildcard listener) to `to`.
    /// With every send slot in use, hands `buf` back.
    pub fn send(
        &mut self,
        buffers: &Buffers,
        (fd, source): Via,
        to: SocketAddr,
        buf: SendBuf,
    ) -> Result<(), SendBuf> {
        // A forwarded datagram from a socket bound to its address may join a GSO group.
        let grouped = match (&buf, source) {
            (SendBuf::Lent { buf, offset, len }, None) if self.gso && *len <= MAX_SEGMENT => {
                Some((buffers.send_ptr(buf, *offset), *len))
            }
            (SendBuf::Copied(bytes), None) if self.gso && bytes.len() <= MAX_SEGMENT => {
                Some((bytes.as_ptr(), bytes.len()))
            }
            _ => None,
        };
        let mut buf = buf;
        if let Some((ptr, len)) = grouped {
            loop {
                let spare = self.free_slots.last().copied();
                match self.groups.add(fd, to, (ptr, len), buf, spare) {
                    Added::Joined => return Ok(()),
                    Added::Opened => {
                        self.free_slots.pop();
                        return Ok(());
                    }
                    Added::CloseFirst(group, back) => {
                        self.queue_group(group);
                        buf = back;
                    }
                    Added::Alone(back) => {
                        buf = back;
                        break;
                    }
                }
            }
        }
        // Whatever was gathered leaves first, so datagrams keep their order.
        self.flush_group();
        let Some(index) = self.free_slots.pop() else {
            return Err(buf);
        };
        let slot = &mut self.slots[index as usize];
        slot.addr = SockAddr::from(to);
        let (ptr, len) = match &buf {
            SendBuf::Lent { buf, offset, len } => (buffers.send_ptr(buf, *offset), *len),
            SendBuf::Owned(bytes) | SendBuf::Copied(bytes) => (bytes.as_ptr(), bytes.len()),
        };
        // The bytes of an owned Vec do not move when the Vec itself moves into the slot.
        slot.buf = Some(buf);
        slot.iov = libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        slot.msghdr.msg_name = slot.addr.as_ptr() as *mut libc::c_void;
        slot.msghdr.msg_namelen = slot.addr.len();
        slot.msghdr.msg_iov = &mut slot.iov;
        slot.msghdr.msg_iovlen = 1;
        match source {
            Some(ip) => {
                let (control, len) = pktinfo::source(ip);
                slot.control = control;
                slot.msghdr.msg_control = slot.control.0.as_mut_ptr().cast();
                slot.msghdr.msg_controllen = len as _;
            }
            None => {
                slot.msghdr.msg_control = std::ptr::null_mut();
                slot.msghdr.msg_controllen = 0;
            }
        }
        let sqe = fd
            .send_msg(&slot.msghdr)
            .user_data(Op::Send { slot: index }.encode());
        if self.push(&sqe) {
            Ok(())
        } else {
            self.free_slots.push(index);
            Err(self.slots[index as usize].buf.take().expect("just stored"))
        }
    }

    /// Sends a copy of `data` (a payload whose own buffer cannot travel with the send) in a
    /// buffer of the copy pool. False when it could not be queued: every copy buffer or
    /// send slot in flight, or the ring refused it.
    pub fn send_copy(&mut self, buffers: &Buffers, via: Via, to: SocketAddr, data: &[u8]) -> bool {
        if data.len() > COPY_BUF_SIZE {
            return self
                .send(buffers, via, to, SendBuf::Owned(data.to_vec()))
                .is_ok();
        }
        let Some(mut copy) = self.copies.take() else {
            return false;
        };
        copy.extend_from_slice(data);
        match self.send(buffers, via, to, SendBuf::Copied(copy)) {
            Ok(()) => true,
            Err(SendBuf::Copied(copy)) => {
                self.copies.put(copy);
                false
            }
            Err(_) => false,
        }
    }

    /// Queues the send of GSO group `group`; a group the ring refuses is failed.
    fn queue_group(&mut self, group: u32) {
        let (sock, msghdr) = self.groups.prepare(group);
        let sqe = sock.send_msg(msghdr).user_data(
            Op::Send {
                slot: GROUP_BASE + group,
            }
            .encode(),
        );
        if !self.push(&sqe) {
            self.groups.failed.push(group);
        }
    }

    /// Queues the GSO group still gathering, if any (before every submit).
    pub fn flush_group(&mut self) {
        if let Some(group) = self.groups.take_open() {
            self.queue_group(group);
        }
    }

    /// Groups the ring refused: hands their buffers to `release`; returns the datagrams.
    pub fn reap_failed_groups(&mut self, release: impl FnMut(SendBuf)) -> usize {
        let mut lost = 0;
        let mut release = returning_copies(&mut self.copies, release);
        while let Some(group) = self.groups.failed.pop() {
            if let Some((n, slot)) = self.groups.finish(group, &mut release) {
                self.free_slots.push(slot);
                lost += n;
            }
        }
        lost
    }

    /// The completion of send slot `index` arrived: the slot is free again, and what it
    /// carried goes to `release` (a lent buffer goes back to the ring). Returns how many
    /// datagrams the send carried (a GSO group several).
    pub fn finish_send(&mut self, index: u32, release: impl FnMut(SendBuf)) -> usize {
        let mut release = returning_copies(&mut self.copies, release);
        if index >= GROUP_BASE {
            let Some((n, slot)) = self.groups.finish(index - GROUP_BASE, &mut release) else {
                return 0;
            };
            self.free_slots.push(slot);
            return n;
        }
        let Some(buf) = self
            .slots
            .get_mut(index as usize)
            .and_then(|s| s.buf.take())
        else {
            return 0;
        };
        self.free_slots.push(index);
        release(buf);
        1
    }

    /// Keeps the send slots (the msghdrs, iovecs, addresses and bytes the kernel may still
    /// read) and the receive msghdr for the life of the process.
    pub fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.slots));
        self.groups.leak();
        self.free_slots.clear();
        std::mem::forget(std::mem::replace(
            &mut self.recv_msghdr,
            // SAFETY: msghdr is plain old data; all-zero is a valid value.
            Box::new(unsafe { std::mem::zeroed() }),
        ));
    }

    /// Sends whose completion has not arrived.
    pub fn sends_in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// The listener that sends as `local`: one bound there, or a wildcard listener of its
    /// port and family, which then needs `local`'s address as the source.
    pub fn listener_for(&self, local: SocketAddr) -> Option<Via> {
        crate::shard::listener_for(&self.listener_socks, local).map(|(s, src)| (*s, src))
    }

    /// The relay of this shard bound at `addr`, with the address of `from` (the relay a
    /// datagram to `addr` would leave from), if both are open.
    pub fn relay_to_relay(&self, from: RelayId, addr: SocketAddr) -> Option<(RelayId, SocketAddr)> {
        if self.relay_by_addr.is_empty() {
            return None;
        }
        let target = *self.relay_by_addr.get(&addr)?;
        let from = self.relays.get(from.0 as usize)?;
        from.socket.as_ref()?;
        Some((RelayId(target), from.addr))
    }

    /// The open relay of this shard bound at `addr`.
    pub fn relay_at(&self, addr: SocketAddr) -> Option<RelayId> {
        self.relay_by_addr.get(&addr).map(|&i| RelayId(i))
    }

    /// The address relay `relay` is bound to, if it is open.
    pub fn relay_addr(&self, relay: RelayId) -> Option<SocketAddr> {
        let r = self.relays.get(relay.0 as usize)?;
        r.socket.as_ref().map(|_| r.addr)
    }

    pub fn relay_fd(&self, relay: RelayId) -> Option<Via> {
        self.relays
            .get(relay.0 as usize)
            .filter(|r| r.socket.is_some())
            .map(|r| (r.sock, None))
    }
}

impl RelaySockets for Io {
    fn open(&mut self, id: RelayId, addr: SocketAddr) -> io::Result<()> {
        let socket = bind_udp(addr, false, RELAY_SOCKET_BUFFER).inspect_err(|e| {
            tracing::debug!(%addr, "relay socket: {e}");
            crate::shard::note_relay_open_error(e);
        })?;
        let index = id.0 as usize;
        if self.relays.len() <= index {
            self.relays.resize_with(index + 1, || RelaySlot {
                socket: None,
                sock: Sock::Raw(-1),
                gen: 0,
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            });
        }
        let sock = self.fixed_slot(socket.as_raw_fd());
        let slot = &mut self.relays[index];
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
        slot.socket = Some(socket);
        slot.sock = sock;
        slot.addr = addr;
        self.relay_by_addr.insert(addr, id.0);
        if let Some(owners) = &self.owners {
            owners.claim(addr);
        }
        let gen = slot.gen;
        self.arm(Op::RelayRecv { index: id.0, gen });
        Ok(())
    }

    fn close(&mut self, id: RelayId) {
        let Some(slot) = self.relays.get_mut(id.0 as usize) else {
            return;
        };
        let Some(socket) = slot.socket.take() else {
            return;
        };
        let slot_addr = slot.addr;
        let fixed = match slot.sock {
            Sock::Fixed(i) => Some(i),
            Sock::Raw(_) => None,
        };
        // Datagrams gathered for this socket reach the kernel before it can close.
        self.flush_group();
        self.relay_by_addr.remove(&slot_addr);
        if let Some(owners) = &self.owners {
            owners.release(slot_addr);
        }
        let Some(slot) = self.relays.get_mut(id.0 as usize) else {
            return;
        };
        let op = Op::RelayRecv {
            index: id.0,
            gen: slot.gen,
        };
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
        // Every receive armed for this generation (`all`: a stray second one too).
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::user_data(op.encode()).all())
            .build()
            .user_data(Op::Cancel.encode());
        // Once every entry naming the socket (this cancellation, queued sends) has
        // reached the kernel, which holds its own reference from then on: the registered
        // slot is emptied and the descriptor closed. Before, neither the slot nor the
        // descriptor number can be reused under an entry still queued.
        let queued = self.push(&cancel);
        if queued && self.submit_all() {
            if let Some(slot) = fixed {
                self.release_slot(slot);
            }
            drop(socket);
        } else {
            self.closing.push(Closing {
                _socket: socket,
                cancel: (!queued).then_some(cancel),
                fixed,
            });
        }
    }
}
