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
//! Files: `op` (user_data), `buffers` (the buffer ring and lent buffers), `io` (sockets,
//! receives, send slots), `pacer` (batched wakeups), `addr` (kernel socket addresses); this
//! file is the loop that turns completions into the core's inputs.

mod addr;
mod buffers;
mod io;
mod op;
mod pacer;

use self::addr::sockaddr;
use self::buffers::{Buffers, Lent, BUF_SIZE};
use self::io::{Io, SendBuf, CONTROL_LEN, NAME_LEN};
use self::op::Op;
use self::pacer::Pacer;
use super::{bind_udp, ShardState, Wake, LISTEN_SOCKET_BUFFER};
use crate::turn::{ClientAction, PeerAction, RelayId, PEER_HEADROOM, PEER_TAILROOM};
use ::io_uring::types::{RecvMsgOut, SubmitArgs, Timespec};
use ::io_uring::{cqueue, opcode, IoUring};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Provided buffers per shard (a power of two).
const BUF_COUNT: u16 = 2048;
const RECVMSG_OUT_LEN: usize = 16;
const PAYLOAD_OFFSET: usize = RECVMSG_OUT_LEN + NAME_LEN as usize + CONTROL_LEN as usize;
const _: () = assert!(PAYLOAD_OFFSET >= PEER_HEADROOM);
/// Sends in flight at once; beyond that a datagram is dropped and counted.
const SEND_SLOTS: usize = 4096;
const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 16384;
const IDLE: Duration = Duration::from_secs(60);
/// Most receives a batched wakeup waits for before its minimum wait is over.
const BATCH: usize = 64;

/// What became of a received datagram.
enum Outcome {
    /// A send carries the buffer; it returns to the ring when the send completes.
    Sending,
    /// The core consumed or dropped it (and counted that), or it was malformed: the
    /// buffer goes back at once.
    Done(Lent),
    /// The core forwarded it but no send could be queued.
    SendDropped(SendBuf),
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

/// Kernel version as (major, minor), from uname.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Refuses hosts where the backend cannot work, with the reason.
fn check_kernel() -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if s.trim() == "2" {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "kernel.io_uring_disabled = 2",
            ));
        }
    }
    match kernel_version() {
        Some((a, b)) if (a, b) < (6, 0) => Err(Error::new(
            ErrorKind::Unsupported,
            format!("kernel {a}.{b} has no multishot RecvMsg (needs 6.0)"),
        )),
        _ => Ok(()),
    }
}

impl Shard {
    /// Sets up the ring, the buffer ring and the listening sockets. Must run on the shard's
    /// own thread (the ring is single-issuer).
    pub fn new(listen: &[SocketAddr], batch_wait_us: u32) -> std::io::Result<Shard> {
        check_kernel()?;
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
        let buffers = Buffers::new(BUF_COUNT)?;
        // SAFETY: the ring mapping is page aligned, `count` entries long, and stays mapped
        // until after the ring is dropped (field order in `Shard`: `io` drops first).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.ring_addr(),
                buffers.count(),
                io::BUF_GROUP,
                0,
            )?;
        }
        features.push_str(&format!(
            ", {} provided buffers of {BUF_SIZE} bytes",
            buffers.count()
        ));
        let mut listeners = Vec::with_capacity(listen.len());
        for addr in listen {
            listeners.push((*addr, bind_udp(*addr, true, LISTEN_SOCKET_BUFFER)?));
        }
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor owned by nothing else.
        let wake_fd = Arc::new(unsafe { File::from_raw_fd(efd) });
        let mut shard = Shard {
            io: Io::new(ring, listeners, SEND_SLOTS),
            buffers,
            wake_fd,
            wake_buf: Box::new(0),
            wake_armed: false,
            features,
            pacer: Pacer::new(batch_wait_us, BATCH),
        };
        for index in 0..shard.io.listeners.len() as u32 {
            shard.io.arm(Op::ListenRecv { index });
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
        let sqe = opcode::Read::new(
            ::io_uring::types::Fd(self.wake_fd.as_raw_fd()),
            ptr.cast(),
            8,
        )
        .build()
        .user_data(Op::WakeRead.encode());
        self.io.push(&sqe);
        self.wake_armed = true;
    }

    pub fn run(mut self, state: &mut ShardState) {
        let mut completions: Vec<cqueue::Entry> = Vec::with_capacity(CQ_ENTRIES as usize);
        loop {
            let now = Instant::now();
            let timeout = state.sleep_for(now, IDLE);
            self.buffers.publish();
            let ts = Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos());
            // With a minimum wait, one wakeup gathers the receives the measured rate brings
            // within batch_wait_us (at most BATCH), or whatever arrived by then; the
            // completions of the sends in flight land in the same queue, so they are added
            // to the count rather than ending the wait early or counting as traffic. An
            // idle shard still sleeps until its timer.
            let (want, args) = if self.pacer.waiting() {
                (
                    self.io.sends_in_flight() + self.pacer.receives_wanted(),
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
            completions.extend(self.io.ring.completion());
            let now = Instant::now();
            let receives = completions
                .iter()
                .filter(|e| {
                    matches!(
                        Op::decode(e.user_data()),
                        Some(Op::ListenRecv { .. } | Op::RelayRecv { .. })
                    )
                })
                .count();
            self.pacer.count(now, receives);
            for entry in &completions {
                self.complete(state, now, entry);
            }
            state.end_turn(now, &mut self.io);
            self.flush_transmits(state);
            // Taken and put back, so the list keeps its capacity (no allocation per turn).
            let mut rearm = std::mem::take(&mut self.io.rearm);
            for &op in &rearm {
                self.io.arm(op);
            }
            rearm.clear();
            self.io.rearm = rearm;
            state.dispatch_events();
            if state.stopping() {
                state.server.shutdown(Instant::now(), &mut self.io);
                self.flush_transmits(state);
                state.dispatch_events();
                break;
            }
        }
        self.drain();
    }

    fn complete(&mut self, state: &mut ShardState, now: Instant, entry: &cqueue::Entry) {
        match Op::decode(entry.user_data()) {
            Some(op @ (Op::ListenRecv { .. } | Op::RelayRecv { .. })) => {
                self.received(state, now, op, entry)
            }
            Some(Op::Send { slot }) => {
                if let Some(buf) = self.io.finish_send(slot) {
                    self.release(buf);
                }
                if entry.result() < 0 {
                    state.io.send_errors += 1;
                } else {
                    state.io.sent += 1;
                }
            }
            Some(Op::WakeRead) => {
                self.wake_armed = false;
                if !state.stopping() {
                    self.arm_wake();
                }
            }
            Some(Op::Cancel) | None => {}
        }
    }

    /// Returns what a send carried: a lent buffer goes back to the ring.
    fn release(&mut self, buf: SendBuf) {
        if let SendBuf::Lent { buf, .. } = buf {
            self.buffers.give_back(buf);
        }
    }

    fn received(&mut self, state: &mut ShardState, now: Instant, op: Op, entry: &cqueue::Entry) {
        let live = match op {
            Op::ListenRecv { .. } => true,
            Op::RelayRecv { index, gen } => self.io.live_relay_fd(index, gen).is_some(),
            _ => false,
        };
        if !cqueue::more(entry.flags()) {
            self.io.armed = self.io.armed.saturating_sub(1);
            if live && !state.stopping() {
                self.io.rearm.push(op);
            }
        }
        let result = entry.result();
        if result == -libc::ENOBUFS {
            state.io.no_buffers += 1;
        }
        let Some(lent) = self.buffers.take(entry) else {
            return;
        };
        if result < 0 || !live {
            self.buffers.give_back(lent);
            return;
        }
        state.io.received += 1;
        match self.forward(state, now, op, lent, result as usize) {
            Outcome::Sending => {}
            Outcome::Done(lent) => self.buffers.give_back(lent),
            Outcome::SendDropped(buf) => {
                state.io.send_errors += 1;
                self.release(buf);
            }
        }
    }

    /// Hands a received datagram to the core and queues the send it asks for, from the
    /// very buffer it arrived in.
    fn forward(
        &mut self,
        state: &mut ShardState,
        now: Instant,
        op: Op,
        lent: Lent,
        len: usize,
    ) -> Outcome {
        let buf = self.buffers.bytes(&lent);
        let len = len.min(BUF_SIZE);
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
        let (from, n) = match parsed {
            Some((from, n, false)) if PAYLOAD_OFFSET + n + PEER_TAILROOM <= BUF_SIZE => (from, n),
            Some(_) => {
                state.io.truncated += 1;
                return Outcome::Done(lent);
            }
            None => return Outcome::Done(lent),
        };
        let payload = PAYLOAD_OFFSET..PAYLOAD_OFFSET + n;
        // (descriptor, destination, offset in the buffer, length) of the send, if any.
        let send = match op {
            Op::ListenRecv { index } => {
                let local = self.io.listeners[index as usize].0;
                match state
                    .server
                    .handle_client(now, from, local, &buf[payload], &mut self.io)
                {
                    ClientAction::ToPeer {
                        relay,
                        peer,
                        payload,
                    } => self
                        .io
                        .relay_fd(relay)
                        .map(|fd| (fd, peer, PAYLOAD_OFFSET + payload.start, payload.len())),
                    ClientAction::None => None,
                }
            }
            Op::RelayRecv { index, .. } => {
                match state
                    .server
                    .handle_peer(now, RelayId(index), from, buf, payload)
                {
                    PeerAction::ToClient {
                        local,
                        client,
                        range,
                    } => self
                        .io
                        .listener_fd(local)
                        .map(|fd| (fd, client, range.start, range.len())),
                    PeerAction::Drop => None,
                }
            }
            _ => None,
        };
        let Some((fd, to, offset, len)) = send else {
            return Outcome::Done(lent);
        };
        let buf = SendBuf::Lent {
            buf: lent,
            offset,
            len,
        };
        match self.io.send(&self.buffers, fd, to, buf) {
            Ok(()) => Outcome::Sending,
            Err(buf) => Outcome::SendDropped(buf),
        }
    }

    fn flush_transmits(&mut self, state: &mut ShardState) {
        while let Some(t) = state.server.poll_transmit() {
            let Some(fd) = self.io.listener_fd(t.local) else {
                state.io.send_errors += 1;
                continue;
            };
            if self
                .io
                .send(&self.buffers, fd, t.remote, SendBuf::Owned(t.data))
                .is_err()
            {
                state.io.send_errors += 1;
            }
        }
    }

    /// Cancels every receive and waits (bounded) until the kernel has let go of the
    /// buffers, so the mappings can be freed.
    fn drain(&mut self) {
        for index in 0..self.io.listeners.len() as u32 {
            let sqe = opcode::AsyncCancel::new(Op::ListenRecv { index }.encode())
                .build()
                .user_data(Op::Cancel.encode());
            self.io.push(&sqe);
        }
        let wake = opcode::AsyncCancel::new(Op::WakeRead.encode())
            .build()
            .user_data(Op::Cancel.encode());
        self.io.push(&wake);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut wake_done = !self.wake_armed;
        while (self.io.armed > 0 || self.io.sends_in_flight() > 0 || !wake_done)
            && Instant::now() < deadline
        {
            self.buffers.publish();
            let ts = Timespec::new().nsec(50_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.io.ring.submitter().submit_with_args(1, &args);
            let done: Vec<cqueue::Entry> = self.io.ring.completion().collect();
            for entry in done {
                if let Some(lent) = self.buffers.take(&entry) {
                    self.buffers.give_back(lent);
                }
                match Op::decode(entry.user_data()) {
                    Some(Op::ListenRecv { .. } | Op::RelayRecv { .. })
                        if !cqueue::more(entry.flags()) =>
                    {
                        self.io.armed = self.io.armed.saturating_sub(1)
                    }
                    Some(Op::Send { slot }) => {
                        if let Some(buf) = self.io.finish_send(slot) {
                            self.release(buf);
                        }
                    }
                    Some(Op::WakeRead) => wake_done = true,
                    _ => {}
                }
            }
        }
        if self.io.armed > 0 || self.io.sends_in_flight() > 0 || !wake_done {
            // The kernel may still write into the buffers: keep them mapped for the life of
            // the process rather than risk it writing into freed memory.
            tracing::warn!(
                "io_uring operations still in flight at shutdown; leaking the buffer memory"
            );
            self.buffers.leak();
            std::mem::forget(std::mem::take(&mut self.wake_buf));
        }
    }
}
