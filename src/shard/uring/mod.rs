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
//! TCP and TLS clients are served by the stream module; on this backend their listeners
//! accept through multishot accepts, every connection receives through a multishot receive
//! into the provided buffers, and sends to them go on the ring (`streams`, `stream_send`:
//! a peer datagram for a plain TCP client leaves from the buffer it arrived in, without
//! ever waiting there; the rest from the connection's own queue). Test knobs keep
//! accepts and writes, or everything, on the stream module's epoll set, which the ring
//! polls.
//!
//! Files: `op` (user_data), `buffers` (the buffer ring and lent buffers), `io` (sockets,
//! receives, send slots), `files` (the registered file table), `pacer` (batched wakeups),
//! `addr` (kernel socket addresses), `datagram` (a received datagram to the core and on to
//! its send), `handoff` (the queues between shards for relay to relay) and `crossing` (this
//! shard's side of them), `streams` and `stream_send` (TCP and TLS clients); this file is
//! the loop that turns completions into the core's inputs.

mod addr;
mod buffers;
mod copies;
mod crossing;
mod datagram;
mod drain;
mod files;
mod gso;
mod handoff;
mod io;
mod op;
mod pacer;
mod recover;
mod stream_send;
#[cfg(test)]
mod stream_tests;
mod streams;
#[cfg(test)]
mod tests;

use self::addr::sockaddr;
use self::buffers::{Buffers, Lent, BUF_SIZE};
use self::io::{Io, SendBuf, Via, CONTROL_LEN, NAME_LEN};
use self::op::Op;
use self::pacer::Pacer;
use super::stream::{StreamOptions, Streams};
use super::{bind_listener, pktinfo, ShardState, TestKnobs, Wake};
use crate::turn::{ClientAction, PeerAction, RelayId, PEER_HEADROOM, PEER_TAILROOM};
use ::io_uring::types::{RecvMsgOut, SubmitArgs, Timespec};
use ::io_uring::{cqueue, opcode, IoUring};
pub(crate) use handoff::{Host as HandoffHost, DEFAULT_SLOTS as HANDOFF_SLOTS};
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
/// The largest datagram a provided buffer holds with room for the core around it.
pub(super) const MAX_DATAGRAM: usize = BUF_SIZE - PAYLOAD_OFFSET - PEER_TAILROOM;
/// Sends in flight at once; beyond that a datagram is dropped and counted.
const SEND_SLOTS: usize = 4096;
const SQ_ENTRIES: u32 = 1024;
/// Completion queue bounds; the kernel allows at most 65,536.
const CQ_MIN: u32 = 16384;
const CQ_MAX: u32 = 65536;
/// How long transient wait errors (EAGAIN, ENOMEM, EBUSY) may repeat before the shard
/// counts as unable to go on.
const PERSISTENT: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(60);
/// Most receives a batched wakeup waits for before its minimum wait is over.
const BATCH: usize = 64;
/// Provided buffers kept out of the kernel's ring for datagrams other shards hand over.
const SPARE_BUFFERS: usize = 128;
/// The kernel's limit on a registered file table.
const MAX_FIXED_FILES: u64 = 1 << 20;

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

/// Completion queue entries for a shard with `relay_sockets` relay sockets: every
/// receive may end and be cancelled within one turn (a shutdown cancels them all at once:
/// two completions each), and every send slot may complete.
fn cq_entries(relay_sockets: usize, listeners: usize) -> u32 {
    let need = 2 * (relay_sockets + listeners + 1) + SEND_SLOTS + 64;
    u32::try_from(need.next_power_of_two())
        .unwrap_or(CQ_MAX)
        .clamp(CQ_MIN, CQ_MAX)
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
    /// The kernel's count of completions it had to drop, as last seen.
    cq_dropped: u32,
    /// Completions were dropped: check every receive at the end of the turn.
    recheck_due: bool,
    /// TCP and TLS clients, on an epoll set the ring polls.
    streams: Option<Streams>,
    /// Their sends in flight and accepts to arm again.
    stream_ring: streams::StreamRing,
    /// Datagrams to and from other shards' relays (with more than one shard).
    handoff: Option<handoff::Handoff>,
}

/// Registers a file table for the listeners and up to `relay_sockets` relay sockets (as
/// many as the descriptor limit allows, or `size` slots); relay sockets beyond it, or
/// every socket if the kernel refuses, are named by descriptor.
fn register_files(io: &mut Io, relay_sockets: usize, size: Option<u32>, features: &mut String) {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let want = (io.listeners.len() + relay_sockets) as u64;
    let size = size.map_or(want.min(limit).min(MAX_FIXED_FILES), u64::from) as u32;
    if size == 0 {
        features.push_str(", plain descriptors");
        return;
    }
    match io.register_files(size) {
        Ok(()) => features.push_str(&format!(", {size} registered files")),
        Err(e) => {
            tracing::debug!(size, "registered files: {e}");
            features.push_str(", plain descriptors");
        }
    }
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
    pub fn new(
        listen: &[SocketAddr],
        udp: bool,
        stream_options: &StreamOptions,
        relay_sockets: usize,
        (batch_wait_us, udp_gso): (u32, bool),
        knobs: &TestKnobs,
        handoff: Option<(&Arc<HandoffHost>, usize)>,
    ) -> std::io::Result<Shard> {
        check_kernel()?;
        let cq = knobs
            .cq_entries
            .unwrap_or_else(|| cq_entries(relay_sockets, listen.len()));
        // The kernel wants at least as many completion entries as submission entries.
        let sq = SQ_ENTRIES.min(cq);
        let built = match knobs.sqpoll {
            Some(idle) => IoUring::builder()
                .setup_sqpoll(idle)
                .setup_single_issuer()
                .setup_cqsize(cq)
                .build(sq)
                .map(|r| (r, format!("submission queue polling (idle {idle} ms)"))),
            None => IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_cqsize(cq)
                .build(sq)
                .map(|r| (r, "single issuer, deferred task run".to_owned())),
        };
        let (ring, mut features) = match built {
            Ok(built) => built,
            Err(_) => (
                IoUring::builder().setup_cqsize(cq).build(sq)?,
                "plain setup".to_owned(),
            ),
        };
        features.push_str(&format!(", {cq} completion entries"));
        let batch_wait_us = if ring.params().is_feature_min_timeout() {
            batch_wait_us
        } else {
            0
        };
        if batch_wait_us > 0 {
            features.push_str(&format!(", batched wakeups (up to {batch_wait_us} µs)"));
        }
        let spare = if handoff.is_some() { SPARE_BUFFERS } else { 0 };
        let mut buffers = Buffers::with_spare(knobs.buffers.unwrap_or(BUF_COUNT), spare)?;
        buffers.publish();
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
        if udp_gso {
            features.push_str(&format!(
                ", UDP GSO for runs of up to {} datagrams",
                gso::MAX_SEGMENTS
            ));
        }
        let mut listeners = Vec::with_capacity(listen.len());
        for addr in listen.iter().filter(|_| udp) {
            listeners.push((*addr, bind_listener(*addr)?));
        }
        let mut streams = Streams::new(listen, stream_options)?;
        let mut accepts = Vec::new();
        if let Some(s) = streams.as_mut() {
            if knobs.stream_epoll == Some(true) {
                features.push_str(", TCP/TLS clients through epoll");
            } else if knobs.stream_ring_sends == Some(false) {
                s.set_ring_reads();
                features.push_str(
                    ", TCP and TLS receives on the ring, accepts and writes through epoll",
                );
            } else {
                s.set_ring_reads();
                s.set_ring_sends();
                accepts = s.set_ring_accepts();
                features.push_str(", TCP and TLS accepts, receives and sends on the ring");
            }
        }
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor owned by nothing else.
        let wake_fd = Arc::new(unsafe { File::from_raw_fd(efd) });
        let mut io = Io::new(ring, listeners, knobs.send_slots.unwrap_or(SEND_SLOTS));
        register_files(&mut io, relay_sockets, knobs.fixed_files, &mut features);
        let mut shard = Shard {
            io,
            buffers,
            wake_fd,
            wake_buf: Box::new(0),
            wake_armed: false,
            features,
            pacer: Pacer::new(batch_wait_us, BATCH),
            cq_dropped: 0,
            recheck_due: false,
            streams,
            stream_ring: Default::default(),
            handoff: None,
        };
        if let Some((host, index)) = handoff {
            let mut h = host.join(index, shard.waker(), shard.io.ring.as_raw_fd());
            h.msg_ring = knobs.handoff_eventfd != Some(true);
            shard.io.owners = Some(h.owner_table());
            shard.features.push_str(if h.msg_ring {
                ", relay to relay between shards in process (ring message wakes)"
            } else {
                ", relay to relay between shards in process (eventfd wakes)"
            });
            shard.handoff = Some(h);
        }
        shard.io.gso = udp_gso;
        for (index, _) in accepts {
            shard.arm_accept(index);
        }
        for index in 0..shard.io.listeners.len() as u32 {
            shard.io.arm(Op::ListenRecv { index });
        }
        shard.arm_wake();
        shard.arm_streams();
        shard.io.submit()?;
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

    /// Runs until stopped (`Ok`, after every allocation was deleted through the core and
    /// the kernel let go of every buffer) or until the ring fails for good (`Err`, after
    /// the allocations were deleted; the caller leaks the shard).
    pub fn run(&mut self, state: &mut ShardState) -> std::io::Result<()> {
        let result = self.serve(state);
        state.shutdown(Instant::now(), &mut self.io);
        self.close_handoffs(state);
        self.flush_transmits(state);
        self.dispatch_events(state);
        self.stop_streams(state);
        if result.is_ok() {
            self.drain();
        } else {
            let _ = self.io.submit();
        }
        self.io.unregister_files();
        result
    }

    fn serve(&mut self, state: &mut ShardState) -> std::io::Result<()> {
        // As large as the queue, so it never grows while the shard runs.
        let cq = self.io.ring.params().cq_entries() as usize;
        let mut completions: Vec<cqueue::Entry> = Vec::with_capacity(cq);
        let mut failing_since = None;
        loop {
            let now = Instant::now();
            let mut timeout = state.sleep_for(now, IDLE);
            if let Some(s) = &self.streams {
                timeout = timeout.min(s.next_deadline().saturating_duration_since(now));
            }
            if let Some(at) = self.accept_deadline() {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            self.buffers.publish();
            self.io.flush_group();
            self.io.queue_pending_cancels();
            self.publish_handoffs();
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
            let waited = self.io.ring.submitter().submit_with_args(want, &args);
            match state.fault.wait_result(state.io.received, waited.map(drop)) {
                Ok(()) => {
                    failing_since = None;
                    self.io.submitted();
                    self.stream_ring.sends.submitted(&mut self.io);
                }
                Err(e) => self.wait_failed(state, e, &mut failing_since)?,
            }
            if self.io.ring.submission().cq_overflow() {
                state.io.cq_overflowed += 1;
            }
            self.count_dropped(state, false);
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
            self.take_handoffs(state, now);
            let buffers = &mut self.buffers;
            state.io.send_errors +=
                self.io.reap_failed_groups(|buf| give_back(buffers, buf)) as u64;
            state.end_turn(now, &mut self.io);
            // Answers to stream requests are already routed (`stream_received`,
            // `streams_ready`): on ring sends they go on the ring now, before the sweep
            // closes the connections their clients ended (which waits for those sends).
            self.send_stream_queues();
            self.run_streams(state, now, true);
            self.flush_transmits(state);
            self.send_stream_queues();
            self.rearm();
            self.arm_stream_recvs();
            self.rearm_accepts(now);
            if std::mem::take(&mut self.recheck_due) && !state.stopping() {
                self.recheck_receives();
            }
            self.dispatch_events(state);
            if state.stopping() {
                return Ok(());
            }
        }
    }

    /// Arms again the receives that ended this turn, and the starved ones once at least an
    /// eighth of the buffers is back in the ring.
    fn rearm(&mut self) {
        let count = usize::from(self.buffers.count());
        if !self.io.starved.is_empty() && self.buffers.lent() <= count - count / 8 {
            // The first to starve is most likely the socket a flood keeps full, which takes
            // every buffer as soon as it is armed: armed last, so the others get theirs.
            let starved = std::mem::take(&mut self.io.starved);
            self.io.rearm.extend(starved.into_iter().rev());
        }
        // Taken and put back, so the list keeps its capacity (no allocation per turn);
        // an arm that cannot be queued lands in the fresh list, for the next turn.
        let mut rearm = std::mem::take(&mut self.io.rearm);
        for op in rearm.drain(..) {
            self.io.arm(op);
        }
        let retry = std::mem::replace(&mut self.io.rearm, rearm);
        self.io.rearm.extend(retry);
    }

    fn complete(&mut self, state: &mut ShardState, now: Instant, entry: &cqueue::Entry) {
        match Op::decode(entry.user_data()) {
            Some(op @ (Op::ListenRecv { .. } | Op::RelayRecv { .. })) => {
                self.received(state, now, op, entry)
            }
            Some(Op::Send { slot }) => {
                let buffers = &mut self.buffers;
                let datagrams = self.io.finish_send(slot, |buf| give_back(buffers, buf)) as u64;
                let result = entry.result();
                if result < 0 {
                    state.io.send_errors += datagrams;
                    // A kernel or device that refuses UDP_SEGMENT: send one by one from now.
                    if datagrams > 1
                        && self.io.gso
                        && [libc::EINVAL, libc::EIO, libc::EOPNOTSUPP].contains(&-result)
                    {
                        self.io.gso = false;
                        tracing::warn!(
                            "UDP GSO send refused ({}); sending datagrams one by one",
                            std::io::Error::from_raw_os_error(-result)
                        );
                    }
                } else {
                    state.io.sent += datagrams;
                }
            }
            Some(Op::WakeRead) => {
                self.wake_armed = false;
                if !state.stopping() {
                    self.arm_wake();
                }
            }
            Some(
                op @ (Op::RecheckListen { .. }
                | Op::RecheckRelay { .. }
                | Op::RecheckStream { .. }
                | Op::RecheckAccept { .. }),
            ) => self.rechecked(state.stopping(), op, entry.result()),
            Some(Op::StreamSend { index }) => self.stream_sent(state, now, index, entry),
            Some(Op::StreamAccept { index }) => {
                self.stream_accepted(state.stopping(), now, index, entry)
            }
            Some(Op::StreamsPoll) => self.streams_ready(state, now, cqueue::more(entry.flags())),
            Some(Op::HandoffWake { shard }) => self.handoff_woken(shard, entry.result()),
            Some(Op::StreamRecv { index, gen }) => {
                self.stream_received(state, now, (index, gen), entry)
            }
            Some(Op::Cancel) | None => {}
        }
    }

    /// Returns what a send carried: a lent buffer goes back to the ring.
    fn release(&mut self, buf: SendBuf) {
        give_back(&mut self.buffers, buf);
    }

    fn flush_transmits(&mut self, state: &mut ShardState) {
        while let Some(t) = state.server.poll_transmit() {
            let t = match self.streams.as_mut() {
                Some(s) => match s.route(t) {
                    Some(t) => t,
                    None => continue,
                },
                None => t,
            };
            let Some(fd) = self.io.listener_for(t.local) else {
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
}

/// A lent buffer a send carried goes back to the ring.
fn give_back(buffers: &mut Buffers, buf: SendBuf) {
    if let SendBuf::Lent { buf, .. } = buf {
        buffers.give_back(buf);
    }
}
