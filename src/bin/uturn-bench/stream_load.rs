//! The relay load over TCP or TLS connections: the UDP load's pacing, stamps and
//! measurement (server CPU over the measured window, round-trip histogram), with frames
//! queued per connection and read back through uturn's stream reassembler.
//!
//! Owns: one step of stream load. Must not: block on a connection (a slow server shows as
//! loss and latency, not as a stalled generator).

use crate::hist::Histogram;
use crate::load::{self, Mode, Spec, Step, STAMP};
use crate::pace::{Pacer, PACER};
use crate::procfs::{machine_cpu, process_cpu, process_rss_kib};
use crate::stream::Conn;
use mio::{Events, Interest, Poll, Token};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uturn::stun::Message;

const MEASURED: u16 = 1;

struct Shared {
    sent: AtomicU64,
    received: AtomicU64,
    closed: AtomicU64,
}

/// What one worker measured.
#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    corrupt: u64,
    hist: Option<Histogram>,
}

/// Runs one step over `conns`: `warmup`, then `duration` measured at `rate` round trips per
/// second in all, then a short drain. Connections the server closed are reported on stderr
/// (their messages count as lost).
pub fn run_step(
    spec: &Spec,
    conns: &mut [Conn],
    step: u16,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Step {
    let threads = spec.threads.clamp(1, conns.len().max(1));
    let total = conns.len();
    let mut groups: Vec<Vec<&mut Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        groups[i % threads].push(c);
    }
    let epoch = Instant::now();
    let shared = Shared {
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        closed: AtomicU64::new(0),
    };
    let window = (warmup, warmup + duration);
    let mut hist = Histogram::new();
    let (mut sent, mut received, mut corrupt) = (0, 0, 0);
    let mut cpu = (None, None);
    let mut machine = (None, None);
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(w, mine)| {
                let core = (!spec.cores.is_empty()).then(|| spec.cores[w % spec.cores.len()]);
                let worker_rate = rate * mine.len() as f64 / total as f64;
                let (shared, mode) = (&shared, spec.mode);
                scope.spawn(move || {
                    load::pin(core);
                    worker(mine, mode, step, worker_rate, epoch, window, shared)
                })
            })
            .collect();
        let sleep_until = |t: Duration| std::thread::sleep(t.saturating_sub(epoch.elapsed()));
        sleep_until(window.0);
        cpu.0 = spec.server_pid.and_then(process_cpu);
        machine.0 = machine_cpu();
        let mut last_print = Instant::now();
        while epoch.elapsed() < window.1 {
            std::thread::sleep(
                Duration::from_millis(50).min(window.1.saturating_sub(epoch.elapsed())),
            );
            if spec.progress && last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                eprint!(
                    "\r  t={:>5.1}s  sent {:>10}  back {:>10}  ({rate:.0} round trips/s offered)   ",
                    epoch.elapsed().as_secs_f64(),
                    shared.sent.load(Ordering::Relaxed),
                    shared.received.load(Ordering::Relaxed),
                );
            }
        }
        cpu.1 = spec.server_pid.and_then(process_cpu);
        machine.1 = machine_cpu();
        for h in handles {
            let t = h.join().expect("stream worker");
            sent += t.sent;
            received += t.received;
            corrupt += t.corrupt;
            if let Some(h) = &t.hist {
                hist.merge(h);
            }
        }
    });
    if spec.progress {
        eprintln!();
    }
    let closed = shared.closed.load(Ordering::Relaxed);
    if closed > 0 {
        eprintln!("uturn-bench: the server closed {closed} of {total} connections");
    }
    Step {
        rate,
        seconds: duration.as_secs_f64(),
        sent,
        received,
        corrupt,
        p50_us: hist.quantile(0.5),
        p99_us: hist.quantile(0.99),
        p999_us: hist.quantile(0.999),
        max_us: hist.quantile(1.0),
        server_cpu_s: match cpu {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        machine_cpu_s: match machine {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        accounted_cpu_s: None,
        server_rss_kib: spec.server_pid.and_then(process_rss_kib),
    }
}

/// The payload of a frame the server sent, if it is what this mode expects.
fn payload(mode: Mode, frame: &[u8]) -> Option<&[u8]> {
    match mode {
        Mode::SendIndication => Message::parse(frame).ok()?.data().map(|d| d.value),
        _ if frame.first()? >> 6 == 1 => {
            let len = usize::from(u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]));
            frame.get(4..4 + len)
        }
        _ => None,
    }
}

/// One worker: paces frames round-robin over its connections and reads what comes back.
fn worker(
    mut conns: Vec<&mut Conn>,
    mode: Mode,
    step: u16,
    rate: f64,
    epoch: Instant,
    (measure_from, measure_to): (Duration, Duration),
    shared: &Shared,
) -> Tally {
    let mut t = Tally::default();
    if conns.is_empty() || rate <= 0.0 {
        return t;
    }
    let mut hist = Histogram::new();
    let mut poll = Poll::new().expect("epoll");
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry()
            .register(&mut c.tcp, Token(i), Interest::READABLE)
            .expect("register");
    }
    let pacer = Pacer::new(poll.registry());
    let mut dead = vec![false; conns.len()];
    let mut backlog: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut out = vec![0u8; 65_536];
    let mut buf = vec![0u8; 65_536];
    let drain_to = measure_to + Duration::from_millis(500);
    let (mut sent_total, mut next) = (0u64, 0usize);
    let (mut pending_sent, mut pending_received) = (0u64, 0u64);
    loop {
        let now = epoch.elapsed();
        if now >= drain_to {
            break;
        }
        if now < measure_to {
            let due = (now.as_secs_f64() * rate) as u64;
            let burst = due.saturating_sub(sent_total).min(512);
            let measured = now >= measure_from;
            for _ in 0..burst {
                let i = next;
                next = (next + 1) % conns.len();
                let c = &mut *conns[i];
                let (len, at) = (c.template.len(), c.stamp_at);
                out[..len].copy_from_slice(&c.template);
                out[at + 4..at + 6].copy_from_slice(&step.to_be_bytes());
                out[at + 6..at + 8]
                    .copy_from_slice(&(if measured { MEASURED } else { 0 }).to_be_bytes());
                out[at + 8..at + 16].copy_from_slice(&sent_total.to_be_bytes());
                out[at + 16..at + 24]
                    .copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                sent_total += 1;
                if measured {
                    t.sent += 1;
                }
                pending_sent += 1;
                // A full queue or a closed connection is loss the server never saw.
                if dead[i] || !c.queue(&out[..len]) {
                    continue;
                }
                if c.flush().is_err() {
                    dead[i] = true;
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                } else if !c.queue.is_empty() || c.tls.as_ref().is_some_and(|s| s.wants_write()) {
                    backlog.push(i);
                }
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
            let i = e.token().0;
            if dead[i] {
                continue;
            }
            let (received, corrupt, hist) = (&mut t.received, &mut t.corrupt, &mut hist);
            let alive = conns[i].read(&mut buf, |frame| {
                let Some(p) = payload(mode, frame).filter(|p| p.len() >= STAMP) else {
                    *corrupt += 1;
                    return;
                };
                let s = u16::from_be_bytes([p[4], p[5]]);
                let flags = u16::from_be_bytes([p[6], p[7]]);
                if s != step || flags & MEASURED == 0 {
                    return;
                }
                let ts = u64::from_be_bytes(p[16..24].try_into().expect("8 bytes"));
                let rtt_ns = (epoch.elapsed().as_nanos() as u64).saturating_sub(ts);
                hist.record(rtt_ns / 1000);
                *received += 1;
                pending_received += 1;
            });
            if !matches!(alive, Ok(true)) {
                dead[i] = true;
                shared.closed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // What the sockets did not take at once: retried every turn until written.
        backlog.sort_unstable();
        backlog.dedup();
        backlog.retain(|&i| {
            let c = &mut *conns[i];
            if dead[i] {
                return false;
            }
            if c.flush().is_err() {
                dead[i] = true;
                shared.closed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            !c.queue.is_empty() || c.tls.as_ref().is_some_and(|s| s.wants_write())
        });
        if pending_sent + pending_received >= 256 {
            shared.sent.fetch_add(pending_sent, Ordering::Relaxed);
            shared
                .received
                .fetch_add(pending_received, Ordering::Relaxed);
            (pending_sent, pending_received) = (0, 0);
        }
    }
    shared.sent.fetch_add(pending_sent, Ordering::Relaxed);
    shared
        .received
        .fetch_add(pending_received, Ordering::Relaxed);
    for c in conns.iter_mut() {
        let _ = poll.registry().deregister(&mut c.tcp);
    }
    t.hist = Some(hist);
    t
}
