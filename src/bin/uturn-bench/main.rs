//! uturn-bench: a TURN load generator that speaks real TURN to any server (uturn, coturn,
//! …), plus the null forwarder that marks the floor, plus an allocation-rate mode.
//!
//! ```text
//! uturn-bench forward --listen 127.0.0.1:3500 --cores 0
//! uturn-bench relay --server 127.0.0.1:3478 --user alice:secret --allocations 1000 \
//!     --size 170 --rate 20000 --duration 5 --cores 1 [--server-pid PID] [--json]
//! uturn-bench relay ... --find-max          # highest rate with < 0.1% loss
//! uturn-bench relay ... --send-batch 8       # 8 datagrams per allocation per system call
//! uturn-bench relay ... --burst 8-16 [--gso] # video-like frames of 8–16 datagrams
//! uturn-bench relay --direct ...             # the same load straight to the peers
//! uturn-bench relay ... --transport tls --server 127.0.0.1:5349   # one TLS connection each
//! uturn-bench alloc --server 127.0.0.1:3478 --user alice:secret --allocations 10000
//! ```

mod forward;
mod hist;
mod load;
mod peers;
mod procfs;
mod stream;
mod stream_load;
mod worker;

use clap::{Parser, Subcommand};
use load::{Credentials, Mode, Spec, Step};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;
use worker::{Frames, MAX_FRAME};

#[derive(Parser)]
#[command(
    name = "uturn-bench",
    version,
    about = "TURN load generator and null forwarder"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// The TURN server (or null forwarder with --null).
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddr,
    /// Long-term credentials NAME:PASSWORD.
    #[arg(long, default_value = "alice:secret")]
    user: String,
    /// Use TURN REST API credentials made from this shared secret instead of --user.
    #[arg(long)]
    auth_secret: Option<String>,
    /// Number of allocations.
    #[arg(long, default_value_t = 50)]
    allocations: usize,
    /// Local addresses for client sockets, comma-separated (several spread ports).
    #[arg(
        long,
        default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5",
        value_delimiter = ','
    )]
    client_ips: Vec<IpAddr>,
    /// Threads setting allocations up.
    #[arg(long, default_value_t = 8)]
    setup_threads: usize,
    /// Server process id: report its CPU (utime+stime) and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Client transport: one TCP or TLS connection per allocation with tcp and tls.
    #[arg(long, value_enum, default_value = "udp")]
    transport: stream::Transport,
    /// With --transport tls: trust only these PEM CA certificates (default: accept any
    /// certificate, for loopback benches against self-signed ones).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// With --transport tls: the server name to ask for and, with --ca, to verify.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
}

impl Target {
    fn trust(&self) -> stream::TlsTrust {
        stream::TlsTrust {
            ca: self.ca.clone(),
            name: self.tls_name.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Relay load: allocations, permissions/channels, then paced data to echo peers.
    Relay {
        #[command(flatten)]
        target: Target,
        /// Payload bytes per packet (at least 24).
        #[arg(long, default_value_t = 170)]
        size: usize,
        /// Round trips per second, all allocations together.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        /// Round trips per second per allocation instead (overrides --rate).
        #[arg(long)]
        rate_per_allocation: Option<f64>,
        /// Measured seconds (at most 240: permissions last 300 s).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Unmeasured seconds before.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Send indications instead of ChannelData.
        #[arg(long)]
        send_indications: bool,
        /// Talk to `uturn-bench forward` instead of a TURN server.
        #[arg(long)]
        null: bool,
        /// No relay: send the same load straight to the echo peers (the baseline of the
        /// relay-overhead figure; --server is not used).
        #[arg(long, conflicts_with = "null")]
        direct: bool,
        /// Datagrams per allocation sent back to back with one system call (1..=64).
        #[arg(long, default_value_t = 1)]
        send_batch: usize,
        /// Video-like frames: each allocation sends MIN-MAX datagrams back to back
        /// (e.g. 8-16; overrides --send-batch).
        #[arg(long, value_parser = parse_range)]
        burst: Option<(usize, usize)>,
        /// Send each frame as one UDP GSO datagram (UDP_SEGMENT) instead of sendmmsg.
        #[arg(long)]
        gso: bool,
        /// Echo peer sockets.
        #[arg(long, default_value_t = 4)]
        peers: usize,
        #[arg(long, default_value = "127.0.0.1")]
        peer_ip: IpAddr,
        /// Load threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Cores to pin load threads to (the echo peers take the last one).
        #[arg(long, value_parser = parse_cores, default_value = "")]
        cores: CoreList,
        /// Search the highest rate with < 0.1% loss, starting at --rate.
        #[arg(long)]
        find_max: bool,
        /// Longest the whole search may take, seconds.
        #[arg(long, default_value_t = 60.0)]
        search_budget: f64,
        #[arg(long)]
        json: bool,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
        /// A label for the table and JSON (e.g. the server's name).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// The null forwarder: one receive and one send per packet each way, nothing else.
    Forward {
        #[arg(long, default_value = "127.0.0.1:3500")]
        listen: SocketAddr,
        /// One thread per listed core (SO_REUSEPORT).
        #[arg(long, value_parser = parse_cores, default_value = "")]
        cores: CoreList,
    },
    /// Allocation rate, and the server's memory per held allocation.
    Alloc {
        #[command(flatten)]
        target: Target,
        /// Keep the allocations this many seconds after setting them up.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Debug, Default)]
struct CoreList(Vec<usize>);

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| format!("{s}: not MIN-MAX"))?,
        b.trim().parse().map_err(|_| format!("{s}: not MIN-MAX"))?,
    );
    if a == 0 || a > b || b > MAX_FRAME {
        return Err(format!("{s}: need 1 <= MIN <= MAX <= {MAX_FRAME}"));
    }
    Ok((a, b))
}

fn parse_cores(s: &str) -> Result<CoreList, String> {
    if s.is_empty() {
        return Ok(CoreList::default());
    }
    uturn::config::parse_cores(s).map(CoreList)
}

fn spec(
    t: &Target,
    mode: Mode,
    size: usize,
    peers: usize,
    threads: usize,
    cores: Vec<usize>,
    progress: bool,
) -> Result<Spec, String> {
    let credentials = match &t.auth_secret {
        Some(secret) => Credentials::RestSecret(secret.clone()),
        None => {
            let (name, password) = t
                .user
                .split_once(':')
                .ok_or("--user must be NAME:PASSWORD")?;
            Credentials::User {
                name: name.into(),
                password: password.into(),
            }
        }
    };
    if !(load::STAMP..=65_000).contains(&size) {
        return Err(format!("--size must be {}..=65000", load::STAMP));
    }
    if t.allocations == 0 {
        return Err("--allocations must be at least 1".into());
    }
    Ok(Spec {
        server: t.server,
        credentials,
        mode,
        allocations: t.allocations,
        size,
        peers,
        client_ips: t.client_ips.clone(),
        threads,
        cores,
        setup_threads: t.setup_threads,
        server_pid: t.server_pid,
        progress,
        frames: Frames::SINGLE,
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn step_json(label: &str, kind: &str, spec: &Spec, s: &Step) -> String {
    format!(
        "{{\"label\":\"{label}\",\"kind\":\"{kind}\",\"allocations\":{},\"size\":{},\"mode\":\"{:?}\",\"offered_rps\":{:.1},\"round_trips_per_s\":{:.1},\"relayed_pps\":{:.1},\"sent\":{},\"received\":{},\"loss_pct\":{:.4},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"server_cpu_s\":{},\"cpu_us_per_packet\":{},\"machine_cpu_s\":{},\"machine_us_per_packet\":{},\"frames\":\"{}\",\"server_rss_kib\":{},\"corrupt\":{}}}",
        spec.allocations,
        spec.size,
        spec.mode,
        s.rate,
        s.round_trips_per_s(),
        2.0 * s.round_trips_per_s(),
        s.sent,
        s.received,
        s.loss_pct(),
        s.p50_us,
        s.p99_us,
        s.p999_us,
        s.max_us,
        s.server_cpu_s.map_or("null".into(), |v| format!("{v:.3}")),
        s.cpu_us_per_packet().map_or("null".into(), |v| format!("{v:.3}")),
        s.machine_cpu_s.map_or("null".into(), |v| format!("{v:.3}")),
        s.machine_us_per_packet()
            .map_or("null".into(), |v| format!("{v:.3}")),
        spec.frames.label(),
        s.server_rss_kib.map_or("null".into(), |v| v.to_string()),
        s.corrupt
    )
}

fn print_table(label: &str, spec: &Spec, steps: &[Step]) {
    println!(
        "{:<14} {:>6} {:>5} {:>10} {:>10} {:>8} {:>7} {:>7} {:>8} {:>9} {:>10} {:>11}",
        "server",
        "allocs",
        "size",
        "offered/s",
        "back/s",
        "loss%",
        "p50us",
        "p99us",
        "p99.9us",
        "cpu s",
        "cpu us/pkt",
        "machine us"
    );
    for s in steps {
        println!(
            "{:<14} {:>6} {:>5} {:>10.0} {:>10.0} {:>8.3} {:>7} {:>7} {:>8} {:>9} {:>10} {:>11}",
            if label.is_empty() { "-" } else { label },
            spec.allocations,
            spec.size,
            s.rate,
            s.round_trips_per_s(),
            s.loss_pct(),
            s.p50_us,
            s.p99_us,
            s.p999_us,
            opt(s.server_cpu_s, 2),
            opt(s.cpu_us_per_packet(), 3),
            opt(s.machine_us_per_packet(), 3)
        );
    }
}

/// Allocations held by the alloc mode, of either transport.
enum Held {
    Udp(Vec<load::Alloc>),
    Stream(Vec<stream::Conn>),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Udp(a) => a.len(),
            Held::Stream(a) => a.len(),
        }
    }
}

/// One fixed-rate step over TCP or TLS connections.
fn stream_relay(
    spec: &Spec,
    target: &Target,
    peers: &[SocketAddr],
    rate: f64,
    warmup: f64,
    duration: f64,
) -> Result<Step, String> {
    let (mut conns, took) = stream::setup(spec, peers, target.transport, &target.trust())
        .map_err(|e| format!("setup failed: {e}"))?;
    if spec.progress {
        eprintln!(
            "uturn-bench: {} allocations over {:?} set up in {:.2} s",
            conns.len(),
            target.transport,
            took.as_secs_f64()
        );
    }
    Ok(stream_load::run_step(
        spec,
        &mut conns,
        1,
        rate,
        Duration::from_secs_f64(warmup),
        Duration::from_secs_f64(duration),
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Forward { listen, cores } => {
            let cores = if cores.0.is_empty() {
                vec![usize::MAX]
            } else {
                cores.0
            };
            let handles: Vec<_> = cores
                .iter()
                .map(|&core| {
                    std::thread::spawn(move || {
                        load::pin((core != usize::MAX).then_some(core));
                        forward::run(listen)
                    })
                })
                .collect();
            eprintln!(
                "uturn-bench: null forwarder on {listen} ({} threads)",
                handles.len()
            );
            for h in handles {
                if let Ok(Err(e)) = h.join() {
                    eprintln!("uturn-bench: forwarder: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Alloc { target, hold, json } => {
            let spec = match spec(&target, Mode::ChannelData, 170, 1, 1, Vec::new(), false) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("uturn-bench: {e}");
                    return ExitCode::from(2);
                }
            };
            let peers = vec![SocketAddr::from(([127, 0, 0, 1], 9))];
            let rss_before = spec.server_pid.and_then(procfs::process_rss_kib);
            let setup = match target.transport {
                stream::Transport::Udp => {
                    load::setup(&spec, &peers).map(|(a, t)| (Held::Udp(a), t))
                }
                t => stream::setup(&spec, &peers, t, &target.trust())
                    .map(|(a, t)| (Held::Stream(a), t)),
            };
            let (allocs, took) = match setup {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("uturn-bench: setup failed: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let count = allocs.len();
            std::thread::sleep(Duration::from_millis(300));
            let rss_after = spec.server_pid.and_then(procfs::process_rss_kib);
            let per_alloc = match (rss_before, rss_after) {
                (Some(a), Some(b)) => Some((b.saturating_sub(a)) as f64 * 1024.0 / count as f64),
                _ => None,
            };
            let rate = count as f64 / took.as_secs_f64();
            if json {
                println!(
                    "{{\"allocations\":{},\"seconds\":{:.3},\"allocs_per_s\":{:.1},\"rss_before_kib\":{},\"rss_after_kib\":{},\"bytes_per_allocation\":{}}}",
                    count,
                    took.as_secs_f64(),
                    rate,
                    rss_before.map_or("null".into(), |v| v.to_string()),
                    rss_after.map_or("null".into(), |v| v.to_string()),
                    per_alloc.map_or("null".into(), |v| format!("{v:.0}"))
                );
            } else {
                println!(
                    "{} allocations (each with a ChannelBind) in {:.2} s: {:.0} allocations/s; server RSS {} -> {} KiB: {} bytes per allocation",
                    count,
                    took.as_secs_f64(),
                    rate,
                    rss_before.map_or("-".into(), |v| v.to_string()),
                    rss_after.map_or("-".into(), |v| v.to_string()),
                    opt(per_alloc, 0)
                );
            }
            if hold > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(hold));
            }
            drop(allocs);
            ExitCode::SUCCESS
        }
        Cmd::Relay {
            target,
            size,
            rate,
            rate_per_allocation,
            duration,
            warmup,
            send_indications,
            null,
            direct,
            send_batch,
            burst,
            gso,
            peers,
            peer_ip,
            threads,
            cores,
            find_max,
            search_budget,
            json,
            quiet,
            label,
        } => {
            let rate = rate_per_allocation.map_or(rate, |r| r * target.allocations as f64);
            let mode = match (null || direct, send_indications) {
                (true, _) if direct => Mode::Direct,
                (true, _) => Mode::Null,
                (false, true) => Mode::SendIndication,
                (false, false) => Mode::ChannelData,
            };
            if !(0.1..=240.0).contains(&duration) || !(0.0..=60.0).contains(&warmup) || rate <= 0.0
            {
                eprintln!(
                    "uturn-bench: --duration must be 0.1..=240 s, --warmup 0..=60 s, --rate > 0"
                );
                return ExitCode::from(2);
            }
            let mut cores = cores.0;
            let peer_core = if cores.len() > 1 {
                cores.pop()
            } else {
                cores.first().copied()
            };
            if !(1..=MAX_FRAME).contains(&send_batch) {
                eprintln!("uturn-bench: --send-batch must be 1..={MAX_FRAME}");
                return ExitCode::from(2);
            }
            let (min, max) = burst.unwrap_or((send_batch, send_batch));
            let frames = Frames { min, max, gso };
            let spec = match spec(&target, mode, size, peers, threads, cores, !quiet) {
                Ok(s) => Spec { frames, ..s },
                Err(e) => {
                    eprintln!("uturn-bench: {e}");
                    return ExitCode::from(2);
                }
            };
            let peers = match peers::Peers::start(peer_ip, spec.peers, peer_core) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("uturn-bench: echo peers: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if target.transport != stream::Transport::Udp {
                if find_max || null || direct || burst.is_some() || gso || send_batch != 1 {
                    eprintln!(
                        "uturn-bench: --find-max, --null, --direct, --burst, --gso and --send-batch are for --transport udp"
                    );
                    return ExitCode::from(2);
                }
                let step = stream_relay(&spec, &target, &peers.addrs, rate, warmup, duration);
                return match step {
                    Ok(s) if json => {
                        println!("{}", step_json(&label, "fixed", &spec, &s));
                        ExitCode::SUCCESS
                    }
                    Ok(s) => {
                        print_table(&label, &spec, &[s]);
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("uturn-bench: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            let (allocs, took) = match load::setup(&spec, &peers.addrs) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("uturn-bench: setup failed: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if !quiet {
                eprintln!(
                    "uturn-bench: {} allocations set up in {:.2} s ({:.0}/s)",
                    allocs.len(),
                    took.as_secs_f64(),
                    allocs.len() as f64 / took.as_secs_f64()
                );
            }
            let warm = Duration::from_secs_f64(warmup);
            let measure = Duration::from_secs_f64(duration);
            let mut steps = Vec::new();
            if find_max {
                // Double until loss, then bisect, within the time budget.
                let budget = Duration::from_secs_f64(search_budget);
                let begin = std::time::Instant::now();
                let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
                let mut r = rate;
                let per_step = Duration::from_secs_f64((warmup.min(0.5) + duration.min(3.0)) + 0.6);
                let mut step_id = 0u16;
                while begin.elapsed() + per_step < budget {
                    step_id += 1;
                    let s = load::run_step(
                        &spec,
                        &allocs,
                        step_id,
                        r,
                        warm.min(Duration::from_millis(500)),
                        measure.min(Duration::from_secs(3)),
                    );
                    let ok = s.loss_pct() < 0.1;
                    steps.push(s);
                    if ok {
                        good = Some(r);
                    } else {
                        bad = Some(r);
                    }
                    r = match (good, bad) {
                        (Some(g), None) => g * 2.0,
                        (None, Some(b)) => b / 2.0,
                        (Some(g), Some(b)) if b / g > 1.1 => (g + b) / 2.0,
                        _ => break,
                    };
                    if r < 1.0 {
                        break;
                    }
                }
                if let Some(g) = good {
                    if let Some(best) = steps.iter().rev().find(|s| s.rate == g).cloned() {
                        steps.push(best);
                    }
                }
            } else {
                steps.push(load::run_step(&spec, &allocs, 1, rate, warm, measure));
            }
            if json {
                for (i, s) in steps.iter().enumerate() {
                    let kind = match (find_max, i + 1 == steps.len()) {
                        (false, _) => "fixed",
                        (true, true) => "best",
                        (true, false) => "step",
                    };
                    println!("{}", step_json(&label, kind, &spec, s));
                }
            } else {
                print_table(&label, &spec, &steps);
            }
            drop(allocs);
            drop(peers);
            ExitCode::SUCCESS
        }
    }
}
