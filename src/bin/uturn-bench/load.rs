//! The relay load: N allocations (real TURN, or the null forwarder's handshake), echo peers,
//! paced sending, round-trip measurement, server CPU from /proc.

use crate::forward;
use crate::hist::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uturn::auth::RestApiSecret;
use uturn::client::Client;
use uturn::stun::{self, Class, Message, MessageBuilder, Method};

/// Bytes of our own header at the start of every payload: allocation index (u32), step
/// (u16), flags (u16), sequence (u64), send time in ns since the run's epoch (u64).
pub const STAMP: usize = 24;
const MEASURED: u16 = 1;
const CHANNEL: u16 = 0x4000;

#[derive(Clone, Debug)]
pub enum Credentials {
    User { name: String, password: String },
    RestSecret(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    ChannelData,
    SendIndication,
    /// The null forwarder (`uturn-bench forward`).
    Null,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub server: SocketAddr,
    pub credentials: Credentials,
    pub mode: Mode,
    pub allocations: usize,
    pub size: usize,
    pub peers: usize,
    pub client_ips: Vec<IpAddr>,
    pub threads: usize,
    pub cores: Vec<usize>,
    pub setup_threads: usize,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

/// One allocation as the load sees it.
pub struct Alloc {
    pub socket: UdpSocket,
    /// The datagram to send, with the stamp at `stamp_at`.
    pub template: Vec<u8>,
    pub stamp_at: usize,
}

/// What one run (one rate step) measured.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub rate: f64,
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub server_cpu_s: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub corrupt: u64,
}

impl Step {
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.sent.saturating_sub(self.received) as f64 * 100.0 / self.sent as f64
    }

    /// Round trips per second that came back.
    pub fn round_trips_per_s(&self) -> f64 {
        self.received as f64 / self.seconds
    }

    /// Server CPU microseconds per relayed packet (each round trip is two relayed packets).
    pub fn cpu_us_per_packet(&self) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (self.received > 0).then(|| cpu * 1e6 / (2.0 * self.received as f64))
    }
}

/// Echo peers: sockets that send every datagram back where it came from.
pub struct Peers {
    pub addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peers {
    pub fn start(ip: IpAddr, count: usize, core: Option<usize>) -> io::Result<Peers> {
        let sockets: Vec<UdpSocket> = (0..count.max(1))
            .map(|_| {
                let s = bind(SocketAddr::new(ip, 0))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<io::Result<_>>()?;
        let addrs = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<io::Result<_>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-peers".into())
            .spawn(move || {
                pin(core);
                let mut poll = Poll::new().expect("epoll");
                for (i, s) in sockets.iter().enumerate() {
                    poll.registry()
                        .register(&mut SourceFd(&s.as_raw_fd()), Token(i), Interest::READABLE)
                        .expect("register");
                }
                let mut events = Events::with_capacity(256);
                let mut echo = Echo::new();
                while !flag.load(Ordering::Relaxed) {
                    let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
                    for e in events.iter() {
                        let fd = sockets[e.token().0].as_raw_fd();
                        while echo.batch(fd) > 0 {}
                    }
                }
            })?;
        Ok(Peers {
            addrs,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echoes datagrams in batches: one `recvmmsg` and one `sendmmsg` for up to `ECHO_BATCH`.
const ECHO_BATCH: usize = 64;
const ECHO_BUF: usize = 2048;

struct Echo {
    recv: MultiHeaders<SockaddrStorage>,
    send: MultiHeaders<SockaddrStorage>,
    bufs: Vec<[u8; ECHO_BUF]>,
    lens: Vec<usize>,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl Echo {
    fn new() -> Echo {
        Echo {
            recv: MultiHeaders::preallocate(ECHO_BATCH, None),
            send: MultiHeaders::preallocate(ECHO_BATCH, None),
            bufs: vec![[0u8; ECHO_BUF]; ECHO_BATCH],
            lens: Vec::with_capacity(ECHO_BATCH),
            addrs: Vec::with_capacity(ECHO_BATCH),
        }
    }

    /// Receives what is queued on `fd` (up to a batch) and sends each datagram back to
    /// its source; returns how many it received.
    fn batch(&mut self, fd: std::os::fd::RawFd) -> usize {
        self.lens.clear();
        self.addrs.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
                .bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            let Ok(got) = recvmmsg(
                fd,
                &mut self.recv,
                iovs.iter_mut().map(|v| &*v),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) else {
                return 0;
            };
            for m in got {
                self.lens.push(m.bytes.min(ECHO_BUF));
                self.addrs.push(m.address);
            }
        }
        let n = self.lens.len();
        if n > 0 {
            let iovs: Vec<[IoSlice<'_>; 1]> = self
                .bufs
                .iter()
                .zip(&self.lens)
                .map(|(b, &len)| [IoSlice::new(&b[..len])])
                .collect();
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            let _ = sendmmsg(
                fd,
                &mut self.send,
                iovs.iter(),
                &self.addrs,
                no_cmsgs,
                MsgFlags::MSG_DONTWAIT,
            );
        }
        n
    }
}

fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(1 << 20);
    let _ = s.set_send_buffer_size(1 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

pub fn pin(core: Option<usize>) {
    if let Some(id) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            eprintln!("uturn-bench: could not pin a thread to core {id}");
        }
    }
}

pub fn credentials(c: &Credentials, i: usize) -> (String, String) {
    match c {
        Credentials::User { name, password } => (name.clone(), password.clone()),
        Credentials::RestSecret(secret) => {
            let expiry = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                + 86_400;
            let user = format!("{expiry}:bench{i}");
            let password = RestApiSecret::password(secret, &user);
            (user, password)
        }
    }
}

/// Sets up one allocation (or forwarder relay) toward `peer`, on a fresh socket again if
/// the server still holds an allocation for the first one's 5-tuple (437: a port reused
/// from an earlier run).
fn setup_one(spec: &Spec, i: usize, peer: SocketAddr) -> Result<Alloc, String> {
    let mut last = String::new();
    for _ in 0..4 {
        match try_setup_one(spec, i, peer) {
            Ok(a) => return Ok(a),
            Err(e) if e.contains("437") => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn try_setup_one(spec: &Spec, i: usize, peer: SocketAddr) -> Result<Alloc, String> {
    let ip = spec.client_ips[i % spec.client_ips.len()];
    let socket = bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
    let mut template = Vec::with_capacity(spec.size + 64);
    let stamp_at;
    let socket = match spec.mode {
        Mode::Null => {
            forward::hello(&socket, spec.server, peer).map_err(|e| e.to_string())?;
            template.extend_from_slice(&CHANNEL.to_be_bytes());
            template.extend_from_slice(&(spec.size as u16).to_be_bytes());
            stamp_at = 4;
            template.resize(4 + spec.size, 0x5a);
            socket
        }
        Mode::ChannelData | Mode::SendIndication => {
            let (user, password) = credentials(&spec.credentials, i);
            let mut client = Client::with_socket(socket, spec.server, &user, &password);
            client
                .allocate(None)
                .map_err(|e| format!("allocate: {e}"))?;
            if spec.mode == Mode::ChannelData {
                client
                    .channel_bind(CHANNEL, peer)
                    .map_err(|e| format!("channel bind: {e}"))?;
                template.extend_from_slice(&CHANNEL.to_be_bytes());
                template.extend_from_slice(&(spec.size as u16).to_be_bytes());
                stamp_at = 4;
                template.resize(4 + spec.size, 0x5a);
            } else {
                client
                    .create_permission(&[peer])
                    .map_err(|e| format!("permission: {e}"))?;
                let payload = vec![0x5au8; spec.size];
                MessageBuilder::new(&mut template, Class::Indication, Method::SEND, &[9; 12])
                    .add_xor_address(stun::XOR_PEER_ADDRESS, peer)
                    .add(stun::DATA, &payload);
                let msg = Message::parse(&template).map_err(|e| format!("{e:?}"))?;
                stamp_at = msg.data().ok_or("no DATA")?.value_offset();
            }
            client.into_socket()
        }
    };
    socket.connect(spec.server).map_err(|e| e.to_string())?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    template[stamp_at..stamp_at + 4].copy_from_slice(&(i as u32).to_be_bytes());
    Ok(Alloc {
        socket,
        template,
        stamp_at,
    })
}

/// Sets up every allocation with `setup_threads` threads; returns them and the time taken.
pub fn setup(spec: &Spec, peers: &[SocketAddr]) -> Result<(Vec<Alloc>, Duration), String> {
    let begin = Instant::now();
    let next = AtomicU64::new(0);
    let done: Mutex<Vec<(usize, Alloc)>> = Mutex::new(Vec::with_capacity(spec.allocations));
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..spec.setup_threads.clamp(1, 64) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= spec.allocations || failure.lock().unwrap().is_some() {
                    return;
                }
                match setup_one(spec, i, peers[i % peers.len()]) {
                    Ok(a) => done.lock().unwrap().push((i, a)),
                    Err(e) => {
                        *failure.lock().unwrap() = Some(format!("allocation {i}: {e}"));
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    let mut all = done.into_inner().unwrap();
    all.sort_by_key(|(i, _)| *i);
    Ok((all.into_iter().map(|(_, a)| a).collect(), begin.elapsed()))
}

/// utime + stime of a process, in seconds (USER_HZ is 100 on Linux).
pub fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Shared {
    sent: AtomicU64,
    received: AtomicU64,
}

/// Runs one step: `warmup`, then `duration` measured at `rate` round trips per second in
/// all, then a short drain.
pub fn run_step(
    spec: &Spec,
    allocs: &[Alloc],
    step: u16,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Step {
    let threads = spec.threads.clamp(1, allocs.len().max(1));
    let epoch = Instant::now();
    let shared = Shared {
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    };
    let measure_from = warmup;
    let measure_to = warmup + duration;
    let drain = Duration::from_millis(500);
    let mut hist = Histogram::new();
    let mut totals = (0u64, 0u64, 0u64);
    let mut cpu = (None, None);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let mine: Vec<&Alloc> = allocs.iter().skip(w).step_by(threads).collect();
                let core = (!spec.cores.is_empty()).then(|| spec.cores[w % spec.cores.len()]);
                let worker_rate = rate * mine.len() as f64 / allocs.len() as f64;
                let shared = &shared;
                let mode = spec.mode;
                scope.spawn(move || {
                    pin(core);
                    worker(
                        mine,
                        mode,
                        step,
                        worker_rate,
                        epoch,
                        measure_from,
                        measure_to,
                        drain,
                        shared,
                    )
                })
            })
            .collect();
        // Server CPU over exactly the measured window.
        let wait_until = |t: Duration| {
            let left = t.saturating_sub(epoch.elapsed());
            std::thread::sleep(left);
        };
        wait_until(measure_from);
        cpu.0 = spec.server_pid.and_then(process_cpu);
        let mut last_print = Instant::now();
        while epoch.elapsed() < measure_to {
            std::thread::sleep(
                Duration::from_millis(50).min(measure_to.saturating_sub(epoch.elapsed())),
            );
            if spec.progress && last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                let s = shared.sent.load(Ordering::Relaxed);
                let r = shared.received.load(Ordering::Relaxed);
                eprint!(
                    "\r  t={:>5.1}s  sent {:>10}  back {:>10}  ({:.0} round trips/s offered)   ",
                    epoch.elapsed().as_secs_f64(),
                    s,
                    r,
                    rate
                );
            }
        }
        cpu.1 = spec.server_pid.and_then(process_cpu);
        for h in handles {
            let (s, r, c, h) = h.join().expect("worker");
            totals.0 += s;
            totals.1 += r;
            totals.2 += c;
            hist.merge(&h);
        }
    });
    if spec.progress {
        eprintln!();
    }
    Step {
        rate,
        seconds: duration.as_secs_f64(),
        sent: totals.0,
        received: totals.1,
        corrupt: totals.2,
        p50_us: hist.quantile(0.5),
        p99_us: hist.quantile(0.99),
        p999_us: hist.quantile(0.999),
        max_us: hist.quantile(1.0),
        server_cpu_s: match cpu {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        server_rss_kib: spec.server_pid.and_then(process_rss_kib),
    }
}

/// One worker: paces sends round-robin over its allocations and reads what comes back.
/// Returns (measured sent, measured received, corrupt, latency histogram).
#[allow(clippy::too_many_arguments)]
fn worker(
    allocs: Vec<&Alloc>,
    mode: Mode,
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
    let mut events = Events::with_capacity(1024);
    let mut out = vec![0u8; 65_536];
    let mut buf = vec![0u8; 65_536];
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
            let burst = due.saturating_sub(sent_total).min(512);
            let measured = now >= measure_from;
            for _ in 0..burst {
                let a = allocs[next];
                next = (next + 1) % allocs.len();
                let len = a.template.len();
                out[..len].copy_from_slice(&a.template);
                let at = a.stamp_at;
                out[at + 4..at + 6].copy_from_slice(&step.to_be_bytes());
                out[at + 6..at + 8]
                    .copy_from_slice(&(if measured { MEASURED } else { 0 }).to_be_bytes());
                out[at + 8..at + 16].copy_from_slice(&sent_total.to_be_bytes());
                out[at + 16..at + 24]
                    .copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                // A full socket buffer is loss the server never saw: count it as sent.
                let _ = a.socket.send(&out[..len]);
                sent_total += 1;
                if measured {
                    sent_measured += 1;
                }
                pending_sent += 1;
            }
        }
        let timeout = if now < measure_to {
            let next_at = Duration::from_secs_f64((sent_total + 1) as f64 / rate);
            next_at
                .saturating_sub(epoch.elapsed())
                .min(Duration::from_millis(1))
        } else {
            Duration::from_millis(10)
        };
        let _ = poll.poll(&mut events, Some(timeout));
        for e in events.iter() {
            let a = allocs[e.token().0];
            while let Ok(n) = a.socket.recv(&mut buf) {
                let payload = match mode {
                    Mode::ChannelData | Mode::Null => buf.get(4..n),
                    Mode::SendIndication => Message::parse(&buf[..n])
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
