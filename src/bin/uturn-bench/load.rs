//! The relay load: N allocations (real TURN, the null forwarder's handshake, or straight to
//! the peers), round-trip measurement, server, machine and accounted CPU from /proc. The paced
//! sending itself is `worker`, the echo peers `peers`.

use crate::forward;
use crate::hist::Histogram;
use crate::peers::bind;
use crate::procfs::{machine_cpu, process_cpu, process_rss_kib, processes_cpu, softirq_threads};
use crate::worker::{worker, Frames, Shared};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uturn::auth::RestApiSecret;
use uturn::client::Client;
use uturn::stun::{self, Class, Message, MessageBuilder, Method};

/// Bytes of our own header at the start of every payload: allocation index (u32), step
/// (u16), flags (u16), sequence (u64), send time in ns since the run's epoch (u64).
pub const STAMP: usize = 24;
pub const MEASURED: u16 = 1;
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
    /// No relay at all: clients send straight to the echo peers (the baseline that the
    /// relay overhead is measured against).
    Direct,
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
    /// Datagrams sent back to back per allocation, and how.
    pub frames: Frames,
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
    /// Busy time of all cores together over the measured window.
    pub machine_cpu_s: Option<f64>,
    /// CPU over the measured window of this process (load and echo peers), the server
    /// process and the kernel's softirq threads: the run's own share of `machine_cpu_s`
    /// (see `procfs::processes_cpu`), which other processes on the machine do not change.
    pub accounted_cpu_s: Option<f64>,
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

    /// Machine CPU (all cores: server, load, peers and the kernel's delivery work)
    /// microseconds per relayed packet.
    pub fn machine_us_per_packet(&self) -> Option<f64> {
        let cpu = self.machine_cpu_s?;
        (self.received > 0).then(|| cpu * 1e6 / (2.0 * self.received as f64))
    }

    /// Accounted CPU (load, peers, server, softirq threads) microseconds per relayed packet.
    pub fn accounted_us_per_packet(&self) -> Option<f64> {
        let cpu = self.accounted_cpu_s?;
        (self.received > 0).then(|| cpu * 1e6 / (2.0 * self.received as f64))
    }
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
    let mut target = spec.server;
    let socket = match spec.mode {
        Mode::Direct => {
            target = peer;
            template.extend_from_slice(&CHANNEL.to_be_bytes());
            template.extend_from_slice(&(spec.size as u16).to_be_bytes());
            stamp_at = 4;
            template.resize(4 + spec.size, 0x5a);
            socket
        }
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
    socket.connect(target).map_err(|e| e.to_string())?;
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
    set_up_in_parallel(spec, |i| setup_one(spec, i, peers[i % peers.len()]))
}

/// Runs `one(i)` for every allocation `i` on `setup_threads` threads, stopping at the first
/// failure; returns the results in allocation order and the time taken.
pub fn set_up_in_parallel<T: Send>(
    spec: &Spec,
    one: impl Fn(usize) -> Result<T, String> + Sync,
) -> Result<(Vec<T>, Duration), String> {
    let begin = Instant::now();
    let next = AtomicU64::new(0);
    let done: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(spec.allocations));
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..spec.setup_threads.clamp(1, 64) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= spec.allocations || failure.lock().unwrap().is_some() {
                    return;
                }
                match one(i) {
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
    let mut machine = None;
    let mut accounted = None;
    let mut own: Vec<u32> = vec![std::process::id()];
    own.extend(spec.server_pid);
    own.extend(softirq_threads());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let mine: Vec<&Alloc> = allocs.iter().skip(w).step_by(threads).collect();
                let core = (!spec.cores.is_empty()).then(|| spec.cores[w % spec.cores.len()]);
                let worker_rate = rate * mine.len() as f64 / allocs.len() as f64;
                let shared = &shared;
                let mode = spec.mode;
                let frames = spec.frames;
                scope.spawn(move || {
                    pin(core);
                    worker(
                        mine,
                        mode,
                        frames,
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
        let machine_from = machine_cpu();
        let accounted_from = processes_cpu(&own);
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
        machine = match (machine_from, machine_cpu()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        accounted = match (accounted_from, processes_cpu(&own)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
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
        machine_cpu_s: machine,
        accounted_cpu_s: accounted,
        server_rss_kib: spec.server_pid.and_then(process_rss_kib),
    }
}
