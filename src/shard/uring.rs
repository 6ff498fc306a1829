//! The io_uring backend: the only place in uturn with `unsafe`.
//!
//! Per shard: one ring (SINGLE_ISSUER + DEFER_TASKRUN where the kernel has them), one
//! provided-buffer ring, a multishot RecvMsg on every socket (listening and relay), sends
//! submitted in one batch per loop turn.
//!
//! Buffers: each provided buffer is [`BUF_SIZE`] bytes. A multishot RecvMsg lays out
//! `io_uring_recvmsg_out` (16 bytes), the source address (28 bytes reserved) and control
//! data (20 bytes reserved, none asked for), then the payload at offset [`PAYLOAD_OFFSET`]
//! = 64. Those 64 bytes are the headroom the core writes a ChannelData or Data indication
//! header into, so a peer datagram goes to the client from the very buffer it arrived in,
//! and a client's ChannelData payload goes to the peer from its receive buffer. A buffer
//! that carries a send returns to the ring when the send completes; any other at once.
//!
//! user_data: bits 62–63 the kind, 32–61 a generation (relay sockets), 0–31 an index.

use super::{bind_udp, Core, Wake, LISTEN_SOCKET_BUFFER, RELAY_SOCKET_BUFFER};
use crate::turn::{
    ClientAction, FiveTuple, PeerAction, RelayId, RelaySockets, PEER_HEADROOM, PEER_TAILROOM,
};
use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use socket2::SockAddr;
use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of one provided buffer (payload up to `BUF_SIZE - PAYLOAD_OFFSET - PEER_TAILROOM`).
const BUF_SIZE: usize = 4096;
/// Provided buffers per shard (a power of two).
const BUF_COUNT: u16 = 2048;
const BUF_GROUP: u16 = 0;
const NAME_LEN: u32 = 28;
const CONTROL_LEN: u32 = 20;
const RECVMSG_OUT_LEN: usize = 16;
const PAYLOAD_OFFSET: usize = RECVMSG_OUT_LEN + NAME_LEN as usize + CONTROL_LEN as usize;
const _: () = assert!(PAYLOAD_OFFSET >= PEER_HEADROOM);
/// Sends in flight at once; beyond that a datagram is dropped and counted.
const SEND_SLOTS: usize = 4096;
const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 16384;
const IDLE: Duration = Duration::from_secs(60);
/// Completions a batched wakeup waits for before its minimum wait is over.
const BATCH: usize = 64;

const KIND_SHIFT: u32 = 62;
const KIND_LISTEN: u64 = 0;
const KIND_RELAY: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_OTHER: u64 = 3;
/// user_data of the eventfd read that wakes the shard.
const WAKE_READ: u64 = (KIND_OTHER << KIND_SHIFT) | 1;
/// user_data of cancellations (their completions need no handling).
const CANCEL: u64 = (KIND_OTHER << KIND_SHIFT) | 2;
const GEN_MASK: u64 = (1 << 30) - 1;

fn user_data(kind: u64, gen: u32, index: u32) -> u64 {
    (kind << KIND_SHIFT) | ((u64::from(gen) & GEN_MASK) << 32) | u64::from(index)
}

fn split(data: u64) -> (u64, u32, u32) {
    (
        data >> KIND_SHIFT,
        ((data >> 32) & GEN_MASK) as u32,
        data as u32,
    )
}

/// Anonymous, page-aligned memory shared with the kernel; unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing uses them after this
        // (the ring that knew them is gone or has had every receive cancelled).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The provided-buffer ring and the buffers it hands out.
struct Buffers {
    ring: Mapping,
    data: Mapping,
    /// Our copy of the ring tail; published to the kernel by [`Buffers::publish`].
    tail: u16,
    published: u16,
}

impl Buffers {
    fn new() -> io::Result<Buffers> {
        let ring = Mapping::new(usize::from(BUF_COUNT) * std::mem::size_of::<BufRingEntry>())?;
        let data = Mapping::new(usize::from(BUF_COUNT) * BUF_SIZE)?;
        let mut buffers = Buffers {
            ring,
            data,
            tail: 0,
            published: 0,
        };
        for bid in 0..BUF_COUNT {
            buffers.give_back(bid);
        }
        Ok(buffers)
    }

    fn entries(&self) -> *mut BufRingEntry {
        self.ring.ptr.cast()
    }

    /// Puts buffer `bid` back at the tail (visible to the kernel after `publish`).
    fn give_back(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (BUF_COUNT - 1));
        // SAFETY: `slot < BUF_COUNT`, inside the ring mapping; the kernel reads entries only
        // between its head and the published tail, and this one is beyond the published tail.
        let entry = unsafe { &mut *self.entries().add(slot) };
        // SAFETY: `bid < BUF_COUNT`, so the address is inside the data mapping.
        entry.set_addr(unsafe { self.data.ptr.add(usize::from(bid) * BUF_SIZE) } as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes buffers given back since the last call visible to the kernel.
    fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: the tail field lives in the first entry of the ring mapping, which is
        // page aligned and initialised; the kernel reads it concurrently, so it is accessed
        // as an atomic, with release ordering so the entries written before are visible.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }

    /// The bytes of buffer `bid`.
    ///
    /// Only for a `bid` the kernel handed over in a completion and that has not been given
    /// back yet: the kernel does not touch it meanwhile.
    fn get(&mut self, bid: u16) -> &mut [u8] {
        assert!(bid < BUF_COUNT);
        // SAFETY: in bounds (asserted); the kernel owns only buffers that are in the ring,
        // and the caller holds `bid` from a completion, so nobody else writes it; the
        // `&mut self` borrow keeps two such slices from coexisting.
        unsafe {
            std::slice::from_raw_parts_mut(self.data.ptr.add(usize::from(bid) * BUF_SIZE), BUF_SIZE)
        }
    }
}

/// One send in flight: the msghdr, iovec and address the kernel reads, and what keeps the
/// bytes alive (a provided buffer or an owned response).
struct SendSlot {
    msghdr: libc::msghdr,
    iov: libc::iovec,
    addr: SockAddr,
    bid: Option<u16>,
    owned: Vec<u8>,
}

/// A relay socket and the generation that tags its completions.
struct RelaySlot {
    socket: Option<UdpSocket>,
    gen: u32,
}

/// The part of a shard the core reaches through [`RelaySockets`] and that sends use.
struct Io {
    ring: IoUring,
    recv_msghdr: Box<libc::msghdr>,
    relays: Vec<RelaySlot>,
    listeners: Vec<(SocketAddr, UdpSocket)>,
    slots: Box<[SendSlot]>,
    free_slots: Vec<u32>,
    /// Sockets whose multishot receive ended and must be armed again: (kind, index).
    rearm: Vec<(u64, u32)>,
    /// Receives armed and not yet finished (to drain at shutdown).
    armed: usize,
    dropped_sends: u64,
}

impl Io {
    /// Queues an SQE, submitting what is queued first if the submission queue is full.
    fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // Every pointer an SQE carries (msghdr, iovec, address, buffers, eventfd read
            // target) lives in `Shard`/`Io` heap storage that outlives the operation: send
            // slots are freed only on their completion, the receive msghdr and the buffers
            // live until the ring is dropped after all receives are cancelled.
            // SAFETY: see above; the entry itself is copied into the ring.
            let pushed = unsafe { self.ring.submission().push(sqe) };
            if pushed.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!("io_uring submit failed: {e}");
                }
            }
        }
    }

    fn arm_recv(&mut self, fd: RawFd, data: u64) {
        let sqe = opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_msghdr, BUF_GROUP)
            .build()
            .user_data(data);
        self.push(&sqe);
        self.armed += 1;
    }

    fn arm_listener(&mut self, index: u32) {
        if let Some((_, socket)) = self.listeners.get(index as usize) {
            let fd = socket.as_raw_fd();
            self.arm_recv(fd, user_data(KIND_LISTEN, 0, index));
        }
    }

    fn arm_relay(&mut self, index: u32) {
        if let Some(RelaySlot {
            socket: Some(socket),
            gen,
        }) = self.relays.get(index as usize)
        {
            let (fd, gen) = (socket.as_raw_fd(), *gen);
            self.arm_recv(fd, user_data(KIND_RELAY, gen, index));
        }
    }

    /// Sends from `fd` to `to` either `len` bytes at `ptr` inside provided buffer `bid`
    /// (which stays out of the ring until the send completes) or, with no `bid`, `owned`.
    fn send(
        &mut self,
        fd: RawFd,
        to: SocketAddr,
        bid: Option<u16>,
        owned: Vec<u8>,
        (ptr, len): (*const u8, usize),
    ) -> bool {
        let Some(index) = self.free_slots.pop() else {
            self.dropped_sends += 1;
            return false;
        };
        let slot = &mut self.slots[index as usize];
        slot.addr = SockAddr::from(to);
        slot.bid = bid;
        slot.owned = owned;
        slot.iov = libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        if bid.is_none() {
            slot.iov.iov_base = slot.owned.as_mut_ptr().cast();
            slot.iov.iov_len = slot.owned.len();
        }
        slot.msghdr.msg_name = slot.addr.as_ptr() as *mut libc::c_void;
        slot.msghdr.msg_namelen = slot.addr.len();
        slot.msghdr.msg_iov = &mut slot.iov;
        slot.msghdr.msg_iovlen = 1;
        let sqe = opcode::SendMsg::new(Fd(fd), &slot.msghdr)
            .build()
            .user_data(user_data(KIND_SEND, 0, index));
        self.push(&sqe);
        true
    }

    fn listener_fd(&self, local: SocketAddr) -> Option<RawFd> {
        self.listeners
            .iter()
            .find(|(addr, _)| *addr == local)
            .map(|(_, s)| s.as_raw_fd())
    }

    fn relay_fd(&self, relay: RelayId) -> Option<RawFd> {
        self.relays
            .get(relay.0 as usize)
            .and_then(|r| r.socket.as_ref())
            .map(AsRawFd::as_raw_fd)
    }
}

impl RelaySockets for Io {
    fn open(&mut self, id: RelayId, addr: SocketAddr) -> io::Result<()> {
        let socket = bind_udp(addr, false, RELAY_SOCKET_BUFFER).inspect_err(|e| {
            tracing::debug!(%addr, "relay socket: {e}");
            super::note_relay_open_error(e);
        })?;
        let index = id.0 as usize;
        if self.relays.len() <= index {
            self.relays.resize_with(index + 1, || RelaySlot {
                socket: None,
                gen: 0,
            });
        }
        let slot = &mut self.relays[index];
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK as u32;
        slot.socket = Some(socket);
        self.arm_relay(id.0);
        Ok(())
    }

    fn close(&mut self, id: RelayId) {
        let Some(slot) = self.relays.get_mut(id.0 as usize) else {
            return;
        };
        let Some(socket) = slot.socket.take() else {
            return;
        };
        let data = user_data(KIND_RELAY, slot.gen, id.0);
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK as u32;
        self.push(&opcode::AsyncCancel::new(data).build().user_data(CANCEL));
        // The receive must reach the kernel (which then holds its own reference to the
        // socket) before the descriptor is closed and its number possibly reused.
        if let Err(e) = self.ring.submit() {
            tracing::warn!("io_uring submit failed while closing a relay socket: {e}");
        }
        drop(socket);
    }
}

pub(crate) struct Shard {
    io: Io,
    buffers: Buffers,
    wake_fd: Arc<File>,
    wake_buf: Box<u64>,
    wake_armed: bool,
    features: String,
    /// When to wait for a batch of completions.
    pacer: Pacer,
}

/// Batched wakeups only pay while completions come often enough that a wait of `wait_us`
/// gathers more than one; below that rate waiting would only add latency. The rate is
/// measured over windows of 100 ms.
struct Pacer {
    /// Minimum-wait timeout in µs (0: the kernel has none, or it is off).
    wait_us: u32,
    window_start: Instant,
    window_count: usize,
    on: bool,
}

impl Pacer {
    const WINDOW: Duration = Duration::from_millis(100);

    fn new(wait_us: u32) -> Pacer {
        Pacer {
            wait_us,
            window_start: Instant::now(),
            window_count: 0,
            on: false,
        }
    }

    fn waiting(&self) -> bool {
        self.on && self.wait_us > 0
    }

    fn count(&mut self, now: Instant, completions: usize) {
        self.window_count += completions;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Self::WINDOW {
            // Completions expected within one wait: rate (per µs) × wait (µs).
            let per_wait =
                self.window_count as f64 * f64::from(self.wait_us) / elapsed.as_micros() as f64;
            self.on = per_wait >= 1.0;
            self.window_start = now;
            self.window_count = 0;
        }
    }
}

/// Kernel version as (major, minor), from uname.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Shard {
    /// Sets up the ring, the buffer ring and the listening sockets. Must run on the shard's
    /// own thread (the ring is single-issuer).
    pub fn new(listen: &[SocketAddr], batch_wait_us: u32) -> io::Result<Shard> {
        if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
            if s.trim() == "2" {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "kernel.io_uring_disabled = 2",
                ));
            }
        }
        match kernel_version() {
            Some(v) if v >= (6, 0) => {}
            Some((a, b)) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("kernel {a}.{b} has no multishot RecvMsg (needs 6.0)"),
                ))
            }
            None => {}
        }
        let (ring, mut features) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
        {
            Ok(ring) => (ring, "single issuer, deferred task run".to_owned()),
            Err(_) => (
                IoUring::builder()
                    .setup_cqsize(CQ_ENTRIES)
                    .build(SQ_ENTRIES)?,
                "plain setup".to_owned(),
            ),
        };
        let batch_wait_us = if ring.params().is_feature_min_timeout() {
            batch_wait_us
        } else {
            0
        };
        if batch_wait_us > 0 {
            features.push_str(&format!(", batched wakeups (up to {batch_wait_us} µs)"));
        }
        let buffers = Buffers::new()?;
        // SAFETY: the ring mapping is page aligned, BUF_COUNT entries long, and stays mapped
        // until after the ring is dropped (field order in `Shard`: `io` drops first).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.ring.ptr as u64,
                BUF_COUNT,
                BUF_GROUP,
                0,
            )?;
        }
        features.push_str(&format!(
            ", {BUF_COUNT} provided buffers of {BUF_SIZE} bytes"
        ));
        let mut listeners = Vec::with_capacity(listen.len());
        for addr in listen {
            listeners.push((*addr, bind_udp(*addr, true, LISTEN_SOCKET_BUFFER)?));
        }
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor owned by nothing else.
        let wake_fd = Arc::new(unsafe { File::from_raw_fd(efd) });
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut recv_msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msghdr.msg_namelen = NAME_LEN;
        recv_msghdr.msg_controllen = CONTROL_LEN as _;
        let slots = (0..SEND_SLOTS)
            .map(|_| SendSlot {
                // SAFETY: as above, all-zero is a valid msghdr/iovec.
                msghdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                addr: SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                bid: None,
                owned: Vec::new(),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let mut shard = Shard {
            io: Io {
                ring,
                recv_msghdr,
                relays: Vec::new(),
                listeners,
                slots,
                free_slots: (0..SEND_SLOTS as u32).rev().collect(),
                rearm: Vec::with_capacity(64),
                armed: 0,
                dropped_sends: 0,
            },
            buffers,
            wake_fd,
            wake_buf: Box::new(0),
            wake_armed: false,
            features,
            pacer: Pacer::new(batch_wait_us),
        };
        for i in 0..shard.io.listeners.len() {
            shard.io.arm_listener(i as u32);
        }
        shard.arm_wake();
        shard.io.ring.submit()?;
        Ok(shard)
    }

    pub fn describe(&self) -> &str {
        &self.features
    }

    pub fn waker(&self) -> Wake {
        let fd = self.wake_fd.clone();
        Arc::new(move || {
            let _ = (&*fd).write(&1u64.to_ne_bytes());
        })
    }

    fn arm_wake(&mut self) {
        let ptr: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(Fd(self.wake_fd.as_raw_fd()), ptr.cast(), 8)
            .build()
            .user_data(WAKE_READ);
        self.io.push(&sqe);
        self.wake_armed = true;
    }

    pub fn run(mut self, core: &mut Core) {
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(CQ_ENTRIES as usize);
        loop {
            let now = Instant::now();
            let timeout = core.sleep_for(now, IDLE);
            self.buffers.publish();
            let ts = Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos());
            // With a minimum wait, one wakeup gathers up to BATCH completions or whatever
            // arrived within batch_wait_us; an idle shard still sleeps until its timer.
            let (want, args) = if self.pacer.waiting() {
                (
                    BATCH,
                    SubmitArgs::new()
                        .timespec(&ts)
                        .min_wait_usec(self.pacer.wait_us),
                )
            } else {
                (1, SubmitArgs::new().timespec(&ts))
            };
            if let Err(e) = self.io.ring.submitter().submit_with_args(want, &args) {
                match e.raw_os_error() {
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                    _ => {
                        tracing::error!("io_uring wait failed: {e}");
                        break;
                    }
                }
            }
            completions.clear();
            completions.extend(
                self.io
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let now = Instant::now();
            self.pacer.count(now, completions.len());
            for &(data, result, flags) in &completions {
                self.complete(core, now, data, result, flags);
            }
            core.end_turn(now, &mut self.io);
            self.flush_transmits(core);
            // Taken and put back, so the list keeps its capacity (no allocation per turn).
            let mut rearm = std::mem::take(&mut self.io.rearm);
            for &(kind, index) in &rearm {
                if kind == KIND_LISTEN {
                    self.io.arm_listener(index);
                } else {
                    self.io.arm_relay(index);
                }
            }
            rearm.clear();
            self.io.rearm = rearm;
            core.io.send_errors += std::mem::take(&mut self.io.dropped_sends);
            core.dispatch_events();
            if core.stopping() {
                core.server.shutdown(Instant::now(), &mut self.io);
                self.flush_transmits(core);
                core.dispatch_events();
                break;
            }
        }
        self.drain();
    }

    fn complete(&mut self, core: &mut Core, now: Instant, data: u64, result: i32, flags: u32) {
        let (kind, gen, index) = split(data);
        match kind {
            KIND_LISTEN | KIND_RELAY => self.received(core, now, kind, gen, index, result, flags),
            KIND_SEND => {
                let slot = &mut self.io.slots[index as usize];
                if let Some(bid) = slot.bid.take() {
                    self.buffers.give_back(bid);
                }
                slot.owned = Vec::new();
                self.io.free_slots.push(index);
                if result < 0 {
                    core.io.send_errors += 1;
                } else {
                    core.io.sent += 1;
                }
            }
            _ if data == WAKE_READ => {
                self.wake_armed = false;
                if !core.stopping() {
                    self.arm_wake();
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn received(
        &mut self,
        core: &mut Core,
        now: Instant,
        kind: u64,
        gen: u32,
        index: u32,
        result: i32,
        flags: u32,
    ) {
        let live = kind == KIND_LISTEN
            || self
                .io
                .relays
                .get(index as usize)
                .is_some_and(|r| r.socket.is_some() && r.gen == gen);
        if !cqueue::more(flags) {
            self.io.armed = self.io.armed.saturating_sub(1);
            if live && !core.stopping() {
                self.io.rearm.push((kind, index));
            }
        }
        let bid = cqueue::buffer_select(flags);
        if result < 0 {
            if result == -libc::ENOBUFS {
                core.io.no_buffers += 1;
            }
            if let Some(bid) = bid {
                self.buffers.give_back(bid);
            }
            return;
        }
        let Some(bid) = bid else {
            return;
        };
        if !live {
            self.buffers.give_back(bid);
            return;
        }
        core.io.received += 1;
        let len = (result as usize).min(BUF_SIZE);
        let forwarded = {
            let buf = self.buffers.get(bid);
            let parsed = RecvMsgOut::parse(&buf[..len], &self.io.recv_msghdr)
                .ok()
                .and_then(|out| {
                    let truncated = out.is_payload_truncated() || out.is_name_data_truncated();
                    Some((
                        sockaddr(out.name_data())?,
                        out.payload_data().len(),
                        truncated,
                    ))
                });
            match parsed {
                Some((from, n, false)) if PAYLOAD_OFFSET + n + PEER_TAILROOM <= BUF_SIZE => {
                    if kind == KIND_LISTEN {
                        let local = self.io.listeners[index as usize].0;
                        let payload = &buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + n];
                        match core.server.handle_client(
                            now,
                            FiveTuple::udp(from, local),
                            payload,
                            &mut self.io,
                        ) {
                            ClientAction::ToPeer {
                                relay,
                                peer,
                                payload,
                            } => {
                                let start = buf[PAYLOAD_OFFSET + payload.start..].as_ptr();
                                self.io.relay_fd(relay).map(|fd| {
                                    self.io.send(
                                        fd,
                                        peer,
                                        Some(bid),
                                        Vec::new(),
                                        (start, payload.len()),
                                    )
                                })
                            }
                            ClientAction::None => None,
                        }
                    } else {
                        let payload = PAYLOAD_OFFSET..PAYLOAD_OFFSET + n;
                        match core
                            .server
                            .handle_peer(now, RelayId(index), from, buf, payload)
                        {
                            PeerAction::ToClient {
                                local,
                                client,
                                range,
                                ..
                            } => {
                                let start = buf[range.start..].as_ptr();
                                self.io.listener_fd(local).map(|fd| {
                                    self.io.send(
                                        fd,
                                        client,
                                        Some(bid),
                                        Vec::new(),
                                        (start, range.len()),
                                    )
                                })
                            }
                            PeerAction::Drop => None,
                        }
                    }
                }
                Some(_) => {
                    core.io.truncated += 1;
                    None
                }
                None => None,
            }
        };
        if forwarded != Some(true) {
            if forwarded == Some(false) {
                core.io.send_errors += 1;
            }
            self.buffers.give_back(bid);
        }
    }

    fn flush_transmits(&mut self, core: &mut Core) {
        while let Some(t) = core.server.poll_transmit() {
            let Some(fd) = self.io.listener_fd(t.local) else {
                core.io.send_errors += 1;
                continue;
            };
            if !self
                .io
                .send(fd, t.remote, None, t.data, (std::ptr::null(), 0))
            {
                core.io.send_errors += 1;
            }
        }
    }

    /// Cancels every receive and waits (bounded) until the kernel has let go of the
    /// buffers, so the mappings can be freed.
    fn drain(&mut self) {
        let listeners: Vec<u32> = (0..self.io.listeners.len() as u32).collect();
        for i in listeners {
            let sqe = opcode::AsyncCancel::new(user_data(KIND_LISTEN, 0, i))
                .build()
                .user_data(CANCEL);
            self.io.push(&sqe);
        }
        let wake = opcode::AsyncCancel::new(WAKE_READ)
            .build()
            .user_data(CANCEL);
        self.io.push(&wake);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut sends_in_flight = SEND_SLOTS - self.io.free_slots.len();
        let mut wake_done = !self.wake_armed;
        while (self.io.armed > 0 || sends_in_flight > 0 || !wake_done) && Instant::now() < deadline
        {
            self.buffers.publish();
            let ts = Timespec::new().nsec(50_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.io.ring.submitter().submit_with_args(1, &args);
            let done: Vec<(u64, u32)> = self
                .io
                .ring
                .completion()
                .map(|c| (c.user_data(), c.flags()))
                .collect();
            for (data, flags) in done {
                let (kind, _, index) = split(data);
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.buffers.give_back(bid);
                }
                match kind {
                    KIND_LISTEN | KIND_RELAY if !cqueue::more(flags) => {
                        self.io.armed = self.io.armed.saturating_sub(1)
                    }
                    KIND_SEND => {
                        if let Some(bid) = self.io.slots[index as usize].bid.take() {
                            self.buffers.give_back(bid);
                        }
                        sends_in_flight = sends_in_flight.saturating_sub(1);
                    }
                    _ if data == WAKE_READ => wake_done = true,
                    _ => {}
                }
            }
        }
        if self.io.armed > 0 || sends_in_flight > 0 || !wake_done {
            // The kernel may still write into the buffers: keep them mapped for the life of
            // the process rather than risk it writing into freed memory.
            tracing::warn!(
                "io_uring operations still in flight at shutdown; leaking the buffer memory"
            );
            std::mem::forget(std::mem::replace(
                &mut self.buffers.data,
                Mapping {
                    ptr: std::ptr::null_mut(),
                    len: 0,
                },
            ));
            std::mem::forget(std::mem::replace(
                &mut self.buffers.ring,
                Mapping {
                    ptr: std::ptr::null_mut(),
                    len: 0,
                },
            ));
            std::mem::forget(std::mem::take(&mut self.wake_buf));
        }
    }
}

/// A socket address as the kernel wrote it into a RecvMsg name field.
fn sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_waits_only_when_it_gathers_a_batch() {
        let start = Instant::now();
        let mut p = Pacer::new(200);
        assert!(!p.waiting(), "off until a rate is measured");
        // 100 completions in 100 ms: 0.2 per 200 µs wait: not worth waiting.
        p.count(start + Duration::from_millis(100), 100);
        assert!(!p.waiting());
        // 10,000 in 100 ms: 20 per wait.
        p.count(start + Duration::from_millis(200), 10_000);
        assert!(p.waiting());
        // Traffic drops: waiting stops.
        p.count(start + Duration::from_millis(300), 3);
        assert!(!p.waiting());
        let mut off = Pacer::new(0);
        off.count(start + Duration::from_millis(100), 1_000_000);
        assert!(!off.waiting(), "0 disables batching");
    }

    #[test]
    fn user_data_round_trips() {
        for (kind, gen, index) in [
            (KIND_RELAY, 5, 7),
            (KIND_SEND, 0, u32::MAX),
            (KIND_LISTEN, GEN_MASK as u32, 0),
        ] {
            assert_eq!(split(user_data(kind, gen, index)), (kind, gen, index));
        }
    }

    #[test]
    fn sockaddr_parses_both_families() {
        let v4: SocketAddr = "192.0.2.7:3478".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        for addr in [v4, v6] {
            let raw = SockAddr::from(addr);
            // SAFETY: `raw` holds `raw.len()` initialised bytes of sockaddr storage.
            let bytes = unsafe {
                std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), raw.len() as usize)
            };
            let mut name = [0u8; 28];
            name[..bytes.len()].copy_from_slice(bytes);
            assert_eq!(sockaddr(&name), Some(addr));
        }
        assert_eq!(sockaddr(&[0u8; 28]), None);
    }
}
