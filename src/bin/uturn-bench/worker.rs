//! One load thread: paced frames of datagrams round-robin over its allocations, replies read
//! in batches, round trips timed.
//!
//! A frame is one or more datagrams to one allocation sent back to back with one system
//! call (`sendmmsg`, or one UDP GSO `sendmsg` with `UDP_SEGMENT`), and every readable socket
//! is drained with `recvmmsg`: the generator's own cost per packet stays well below a
//! server's, so a saturation search measures the server. Frames of 8–16 datagrams are also
//! what a video sender emits per picture (the bursty mode).

use crate::hist::Histogram;
use crate::load::{Alloc, Mode, MEASURED, STAMP};
use crate::pace::{Pacer, PACER};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{
    recvmmsg, sendmmsg, sendmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uturn::stun::Message;

/// Most datagrams in one frame (UDP GSO takes up to 64 segments per send).
pub const MAX_FRAME: usize = 64;
/// Datagrams read per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// Most datagrams sent per loop turn before the replies are read.
const TURN_BUDGET: u64 = 512;

/// How many datagrams go to one allocation back to back, and how.
#[derive(Clone, Copy, Debug)]
pub struct Frames {
    pub min: usize,
    pub max: usize,
    /// One UDP GSO send per frame instead of one `sendmmsg`.
    pub gso: bool,
}

impl Frames {
    pub const SINGLE: Frames = Frames {
        min: 1,
        max: 1,
        gso: false,
    };

    pub fn label(&self) -> String {
        let how = if self.gso { "gso" } else { "mmsg" };
        if self.min == self.max {
            format!("{}x{how}", self.min)
        } else {
            format!("{}-{}x{how}", self.min, self.max)
        }
    }
}

/// Totals the progress line reads while the workers run.
pub struct Shared {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// xorshift64: frame sizes need to vary, not to be unpredictable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Preallocated headers, buffers and addresses for batched sends and receives.
struct Batches {
    send: MultiHeaders<SockaddrStorage>,
    recv: MultiHeaders<SockaddrStorage>,
    no_addrs: Vec<Option<SockaddrStorage>>,
    out: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
}

impl Batches {
    fn new(datagram: usize) -> Batches {
        let recv_len = (datagram + 128).max(2048);
        Batches {
            send: MultiHeaders::preallocate(MAX_FRAME, None),
            recv: MultiHeaders::preallocate(RECV_BATCH, None),
            no_addrs: vec![None; MAX_FRAME],
            out: vec![0u8; datagram * MAX_FRAME],
            bufs: vec![vec![0u8; recv_len]; RECV_BATCH],
            lens: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Sends the `k` datagrams of `len` bytes at the start of `out` on connected `fd`.
    /// What a full socket buffer refuses is loss the server never saw: it counts as sent.
    fn send(&mut self, fd: RawFd, len: usize, k: usize, gso: bool) {
        let bytes = &self.out[..len * k];
        if k == 1 {
            let _ = nix::sys::socket::send(fd, bytes, MsgFlags::MSG_DONTWAIT);
        } else if gso {
            let segment = len as u16;
            let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
            let _ = sendmsg::<SockaddrStorage>(
                fd,
                &[IoSlice::new(bytes)],
                &cmsg,
                MsgFlags::MSG_DONTWAIT,
                None,
            );
        } else {
            let iovs: Vec<[IoSlice<'_>; 1]> =
                bytes.chunks(len).map(|c| [IoSlice::new(c)]).collect();
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            let _ = sendmmsg(
                fd,
                &mut self.send,
                iovs.iter(),
                &self.no_addrs[..k],
                no_cmsgs,
                MsgFlags::MSG_DONTWAIT,
            );
        }
    }

    /// Reads up to a batch from `fd` into `bufs`/`lens`; returns how many.
    fn recv(&mut self, fd: RawFd) -> usize {
        self.lens.clear();
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        if let Ok(got) = recvmmsg(
            fd,
            &mut self.recv,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            self.lens.extend(got.map(|m| m.bytes));
        }
        self.lens.len()
    }
}

/// One worker: paces frames round-robin over its allocations and reads what comes back.
/// Returns (measured sent, measured received, corrupt, latency histogram).
#[allow(clippy::too_many_arguments)]
pub fn worker(
    allocs: Vec<&Alloc>,
    mode: Mode,
    frames: Frames,
    step: u16,
    rate: f64,
    epoch: Instant,
    measure_from: Duration,
    measure_to: Duration,
    drain: Duration,
    shared: &Shared,
) -> (u64, u64, u64, Histogram) {
    let mut hist = Histogram::new();
    let (mut sent_measured, mut received_measured, mut corrupt) = (0u64, 0u64, 0u64);
    if allocs.is_empty() || rate <= 0.0 {
        return (0, 0, 0, hist);
    }
    let mut poll = Poll::new().expect("epoll");
    for (i, a) in allocs.iter().enumerate() {
        poll.registry()
            .register(
                &mut SourceFd(&a.socket.as_raw_fd()),
                Token(i),
                Interest::READABLE,
            )
            .expect("register");
    }
    let datagram = allocs.iter().map(|a| a.template.len()).max().unwrap_or(0);
    // A GSO send is one UDP datagram of at most 64 KiB before segmentation.
    let max_frame = if frames.gso {
        (65_000 / datagram.max(1)).clamp(1, MAX_FRAME)
    } else {
        MAX_FRAME
    };
    let (lo, hi) = (
        frames.min.clamp(1, max_frame),
        frames.max.clamp(1, max_frame),
    );
    let pacer = Pacer::new(poll.registry());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (allocs.len() as u64 + 1));
    let mut io = Batches::new(datagram);
    let mut events = Events::with_capacity(1024);
    let mut sent_total = 0u64;
    let mut next = 0usize;
    let mut pending_sent = 0u64;
    let mut pending_received = 0u64;
    loop {
        let now = epoch.elapsed();
        if now >= measure_to + drain {
            break;
        }
        if now < measure_to {
            let due = (now.as_secs_f64() * rate) as u64;
            let measured = now >= measure_from;
            let flags = if measured { MEASURED } else { 0 };
            let mut budget = TURN_BUDGET;
            while sent_total < due && budget > 0 {
                let a = allocs[next];
                next = (next + 1) % allocs.len();
                let k = (lo + rng.below(hi - lo + 1)).min(budget as usize);
                let len = a.template.len();
                let at = a.stamp_at;
                let ns = epoch.elapsed().as_nanos() as u64;
                for (j, out) in io.out[..len * k].chunks_mut(len).enumerate() {
                    out.copy_from_slice(&a.template);
                    out[at + 4..at + 6].copy_from_slice(&step.to_be_bytes());
                    out[at + 6..at + 8].copy_from_slice(&flags.to_be_bytes());
                    out[at + 8..at + 16].copy_from_slice(&(sent_total + j as u64).to_be_bytes());
                    out[at + 16..at + 24].copy_from_slice(&ns.to_be_bytes());
                }
                io.send(a.socket.as_raw_fd(), len, k, frames.gso && k > 1);
                sent_total += k as u64;
                budget -= k as u64;
                if measured {
                    sent_measured += k as u64;
                }
                pending_sent += k as u64;
            }
        }
        let timeout = if now < measure_to {
            let next_at = Duration::from_secs_f64((sent_total + 1) as f64 / rate);
            pacer.wait(
                next_at.saturating_sub(epoch.elapsed()),
                Duration::from_millis(2),
            )
        } else {
            Duration::from_millis(10)
        };
        let _ = poll.poll(&mut events, Some(timeout));
        for e in events.iter() {
            if e.token() == PACER {
                pacer.woken();
                continue;
            }
            let fd = allocs[e.token().0].socket.as_raw_fd();
            loop {
                let got = io.recv(fd);
                for i in 0..got {
                    let buf = &io.bufs[i][..io.lens[i].min(io.bufs[i].len())];
                    let payload = match mode {
                        Mode::ChannelData | Mode::Null | Mode::Direct => buf.get(4..),
                        Mode::SendIndication => Message::parse(buf)
                            .ok()
                            .and_then(|m| m.data())
                            .map(|d| d.value),
                    };
                    let Some(p) = payload.filter(|p| p.len() >= STAMP) else {
                        corrupt += 1;
                        continue;
                    };
                    let s = u16::from_be_bytes([p[4], p[5]]);
                    let flags = u16::from_be_bytes([p[6], p[7]]);
                    if s != step || flags & MEASURED == 0 {
                        continue;
                    }
                    let ts = u64::from_be_bytes(p[16..24].try_into().expect("8 bytes"));
                    let rtt_ns = (epoch.elapsed().as_nanos() as u64).saturating_sub(ts);
                    hist.record(rtt_ns / 1000);
                    received_measured += 1;
                    pending_received += 1;
                }
                if got < RECV_BATCH {
                    break;
                }
            }
        }
        if pending_sent + pending_received >= 256 {
            shared.sent.fetch_add(pending_sent, Ordering::Relaxed);
            shared
                .received
                .fetch_add(pending_received, Ordering::Relaxed);
            pending_sent = 0;
            pending_received = 0;
        }
    }
    shared.sent.fetch_add(pending_sent, Ordering::Relaxed);
    shared
        .received
        .fetch_add(pending_received, Ordering::Relaxed);
    (sent_measured, received_measured, corrupt, hist)
}
