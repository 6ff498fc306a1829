//! What one UDP send costs on loopback through io_uring, as the shard sends (batches of
//! `SendMsg` entries, one `io_uring_enter` per batch), in the variants worth weighing:
//! - `unconnected`: a relay socket's send, destination address in the msghdr (route and
//!   socket lookups per send);
//! - `connected`: the same socket type connected to the destination, no address (the
//!   kernel keeps the route);
//! - `fixed`: unconnected, the socket named through a registered file table;
//! - `send`: `IORING_OP_SEND` with the destination address in the entry (no msghdr for the
//!   kernel to copy in);
//! - `zerocopy`: `SendMsgZc` of the same bytes (a second completion per send tells when
//!   the kernel let go of them);
//! - `zc send` and `zc send+fixed buffer`: `IORING_OP_SEND_ZC` with the address in the
//!   entry, from plain memory and from a registered buffer (`IORING_RECVSEND_FIXED_BUF`;
//!   only the zero-copy sends take registered buffers, a plain send copies the bytes in
//!   either way);
//! - `gso`: one `UDP_SEGMENT` send of `--segments` datagrams, per datagram.
//!
//! And, for UDP GRO: what a receive of GSO bursts costs per datagram with `UDP_GRO` on
//! the receiving socket (one read per burst) against without (one read per datagram), and
//! whether loopback gives a socket a NAPI id (what io_uring's NAPI busy polling needs).
//!
//! Run: `cargo run --release --example send_cost -- [--sends N] [--size BYTES]
//! [--big BYTES] [--rounds R] [--segments S]`. Figures are the thread's own CPU clock per
//! send or datagram (less sensitive to other processes than wall time): R rounds of N
//! sends per variant, interleaved, then the median, least and most per variant. A thread
//! on another socket drains what is sent, so no send meets a full queue.

use io_uring::types::{Fd, Fixed};
use io_uring::{cqueue, opcode, IoUring};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BATCH: usize = 32;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn set_int(socket: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: a valid int option for a valid descriptor.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            4,
        )
    };
    assert_eq!(r, 0, "setsockopt {level}/{name}");
}

/// A socket drained by a thread of its own until `stop`.
fn drained(stop: &Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(8 << 20);
    sink.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = sink.local_addr().unwrap();
    let stop = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let _ = sink.recv(&mut buf);
        }
    });
    (addr, handle)
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Unconnected,
    Connected,
    Fixed,
    SendTo,
    ZeroCopy,
    ZeroCopySend,
    ZeroCopyFixed,
    Gso,
}

#[repr(C)]
struct SegmentControl {
    header: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

/// CPU ns per datagram of `sends` datagrams of `size` bytes sent as `variant`.
fn sends(variant: Variant, to: SocketAddr, sends: usize, size: usize, segments: usize) -> f64 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&socket).set_send_buffer_size(4 << 20);
    if variant == Variant::Connected {
        socket.connect(to).unwrap();
    }
    let per_send = if variant == Variant::Gso { segments } else { 1 };
    let payload = vec![7u8; size * per_send];
    let mut ring = IoUring::new(256).unwrap();
    if variant == Variant::Fixed {
        ring.submitter()
            .register_files(&[socket.as_raw_fd()])
            .unwrap();
    }
    let addr = socket2::SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut control = SegmentControl {
        // SAFETY: cmsghdr is plain old data.
        header: unsafe { std::mem::zeroed() },
        size: size as u16,
        _pad: [0; 6],
    };
    control.header.cmsg_len = (std::mem::size_of::<libc::cmsghdr>() + 2) as _;
    control.header.cmsg_level = libc::SOL_UDP;
    control.header.cmsg_type = libc::UDP_SEGMENT;
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if variant != Variant::Connected {
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len();
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if variant == Variant::Gso {
        msg.msg_control = (&mut control as *mut SegmentControl).cast();
        msg.msg_controllen = std::mem::size_of::<SegmentControl>() as _;
    }
    if variant == Variant::ZeroCopyFixed {
        // SAFETY: `payload` is declared before the ring, so it outlives it (locals drop in
        // reverse order), and it is neither moved nor resized while registered.
        unsafe {
            ring.submitter()
                .register_buffers(&[libc::iovec {
                    iov_base: payload.as_ptr() as *mut libc::c_void,
                    iov_len: payload.len(),
                }])
                .unwrap()
        };
    }
    let fd = socket.as_raw_fd();
    let calls = sends / per_send;
    let start = thread_cpu_ns();
    let mut done = 0;
    while done < calls {
        let n = BATCH.min(calls - done);
        let mut expect = n;
        for _ in 0..n {
            let sqe = match variant {
                Variant::Fixed => opcode::SendMsg::new(Fixed(0), &msg).build(),
                Variant::SendTo => {
                    opcode::Send::new(Fd(fd), payload.as_ptr(), payload.len() as u32)
                        .dest_addr(addr.as_ptr().cast())
                        .dest_addr_len(addr.len())
                        .build()
                }
                Variant::ZeroCopy => {
                    expect += 1;
                    opcode::SendMsgZc::new(Fd(fd), &msg).build()
                }
                Variant::ZeroCopySend | Variant::ZeroCopyFixed => {
                    expect += 1;
                    let fixed = (variant == Variant::ZeroCopyFixed).then_some(0);
                    opcode::SendZc::new(Fd(fd), payload.as_ptr(), payload.len() as u32)
                        .buf_index(fixed)
                        .dest_addr(addr.as_ptr().cast())
                        .dest_addr_len(addr.len())
                        .build()
                }
                _ => opcode::SendMsg::new(Fd(fd), &msg).build(),
            };
            // SAFETY: `msg` and what it points to live until the completions are reaped
            // below, before the next batch.
            unsafe { ring.submission().push(&sqe).unwrap() };
        }
        let mut seen = 0;
        while seen < expect {
            ring.submit_and_wait(1).unwrap();
            for e in ring.completion() {
                seen += 1;
                // A zero-copy send posts its notification only if the result said more.
                if matches!(
                    variant,
                    Variant::ZeroCopy | Variant::ZeroCopySend | Variant::ZeroCopyFixed
                ) && !cqueue::notif(e.flags())
                    && !cqueue::more(e.flags())
                {
                    seen += 1;
                }
            }
        }
        done += n;
        // Let the drain thread keep up (it runs on the other core).
        std::thread::yield_now();
    }
    (thread_cpu_ns() - start) as f64 / (calls * per_send) as f64
}

/// Receives of GSO bursts of `segments` datagrams: with UDP_GRO one read per burst,
/// without it one per datagram. Returns the receiving thread's CPU per datagram and the
/// socket's NAPI id after the first datagram.
fn gro_receive(datagrams: usize, size: usize, segments: usize, gro: bool) -> (f64, u32) {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    if gro {
        set_int(&sink, libc::SOL_UDP, libc::UDP_GRO, 1);
    }
    let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(8 << 20);
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to = sink.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(to).unwrap();
            let payload = vec![9u8; size * segments];
            let mut iov = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
            let mut c = SegmentControl {
                // SAFETY: cmsghdr is plain old data.
                header: unsafe { std::mem::zeroed() },
                size: size as u16,
                _pad: [0; 6],
            };
            c.header.cmsg_len = (std::mem::size_of::<libc::cmsghdr>() + 2) as _;
            c.header.cmsg_level = libc::SOL_UDP;
            c.header.cmsg_type = libc::UDP_SEGMENT;
            // SAFETY: msghdr is plain old data.
            let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
            m.msg_iov = &mut iov;
            m.msg_iovlen = 1;
            m.msg_control = (&mut c as *mut SegmentControl).cast();
            m.msg_controllen = std::mem::size_of::<SegmentControl>() as _;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: every pointer in `m` lives across the call.
                unsafe { libc::sendmsg(s.as_raw_fd(), &m, 0) };
                i += 1;
                if i % 4 == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        })
    };
    let mut buf = vec![0u8; 65536];
    let mut got = 0usize;
    let mut napi_id = None;
    let start = thread_cpu_ns();
    while got < datagrams {
        match sink.recv(&mut buf) {
            Ok(n) => got += n.div_ceil(size),
            Err(_) => break,
        }
        if napi_id.is_none() && got > 0 {
            let mut id: u32 = 0;
            let mut len = 4 as libc::socklen_t;
            // SAFETY: `id` and `len` are valid for the call.
            unsafe {
                libc::getsockopt(
                    sink.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_INCOMING_NAPI_ID,
                    (&mut id as *mut u32).cast(),
                    &mut len,
                )
            };
            napi_id = Some(id);
        }
    }
    let spent = thread_cpu_ns() - start;
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    (spent as f64 / got.max(1) as f64, napi_id.unwrap_or(0))
}

fn main() {
    let count = arg("--sends", 20_000);
    let size = arg("--size", 170);
    let rounds = arg("--rounds", 25);
    let segments = arg("--segments", 12);
    let big = arg("--big", 1200);
    let stop = Arc::new(AtomicBool::new(false));
    let (to, drain) = drained(&stop);
    println!(
        "io_uring SendMsg on loopback, batches of {BATCH}, ns of the sending thread's CPU per datagram, {rounds} interleaved rounds of {count}"
    );
    let variants = [
        (format!("{size} B unconnected"), Variant::Unconnected, size),
        (format!("{size} B connected"), Variant::Connected, size),
        (format!("{size} B fixed file"), Variant::Fixed, size),
        (format!("{size} B send+address"), Variant::SendTo, size),
        (format!("{big} B unconnected"), Variant::Unconnected, big),
        (format!("{big} B zero-copy"), Variant::ZeroCopy, big),
        (format!("{big} B zc send"), Variant::ZeroCopySend, big),
        (
            format!("{big} B zc send+fixed"),
            Variant::ZeroCopyFixed,
            big,
        ),
        (format!("{big} B GSO x{segments}"), Variant::Gso, big),
    ];
    let mut samples = vec![Vec::new(); variants.len()];
    for r in 0..rounds {
        // A different variant first each round, so none always follows the same one.
        for k in 0..variants.len() {
            let i = (k + r) % variants.len();
            let (_, variant, bytes) = &variants[i];
            samples[i].push(sends(*variant, to, count, *bytes, segments));
        }
    }
    println!("variant               median     min     max");
    for ((name, _, _), s) in variants.iter().zip(samples.iter_mut()) {
        s.sort_by(f64::total_cmp);
        println!(
            "{name:<20} {:>7.0} {:>7.0} {:>7.0}",
            s[s.len() / 2],
            s[0],
            s[s.len() - 1]
        );
    }
    stop.store(true, Ordering::Relaxed);
    drain.join().unwrap();
    println!("receive of GSO bursts of {segments} x {big} B, ns of the receiving thread's CPU per datagram");
    println!("round  one read per datagram  UDP_GRO (one read per burst)  NAPI id");
    for r in 0..rounds.min(5) {
        let (a, id) = gro_receive(count * 5, big, segments, false);
        let (b, _) = gro_receive(count * 5, big, segments, true);
        println!("{r:>5}  {a:>21.0}  {b:>28.0}  {id:>7}");
    }
}
