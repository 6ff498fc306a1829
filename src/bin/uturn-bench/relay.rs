//! `uturn-bench relay`: echo peers up (in the clients' network namespace or another one),
//! allocations set up, then one step at a fixed rate or a search for the highest rate with
//! < 0.1% loss; printed as a table or JSON lines.

use crate::cli::{spec, RelayArgs, Target};
use crate::load::{self, Alloc, Mode, Spec, Step};
use crate::peers::Peers;
use crate::report::{print_table, step_json};
use crate::stream;
use crate::stream_load;
use crate::worker::{Frames, MAX_FRAME};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The loss a search step may have and still count as carried.
const MAX_LOSS_PCT: f64 = 0.1;

pub fn run(args: RelayArgs) -> ExitCode {
    let RelayArgs {
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
        pace_ms,
        peers,
        peer_ip,
        peer_netns,
        threads,
        cores,
        find_max,
        search_budget,
        json,
        quiet,
        label,
    } = args;
    let rate = rate_per_allocation.map_or(rate, |r| r * target.allocations as f64);
    crate::pace::set_millisecond_pacing(pace_ms);
    let mode = match (null || direct, send_indications) {
        (true, _) if direct => Mode::Direct,
        (true, _) => Mode::Null,
        (false, true) => Mode::SendIndication,
        (false, false) => Mode::ChannelData,
    };
    if !(0.1..=240.0).contains(&duration) || !(0.0..=60.0).contains(&warmup) || rate <= 0.0 {
        eprintln!("uturn-bench: --duration must be 0.1..=240 s, --warmup 0..=60 s, --rate > 0");
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
    let peers = match Peers::start(peer_ip, spec.peers, peer_core, peer_netns.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("uturn-bench: echo peers: {e}");
            return ExitCode::FAILURE;
        }
    };
    if target.transport != stream::Transport::Udp {
        if find_max || direct || burst.is_some() || gso || send_batch != 1 {
            eprintln!(
                "uturn-bench: --find-max, --direct, --burst, --gso and --send-batch are for --transport udp"
            );
            return ExitCode::from(2);
        }
        return match stream_relay(&spec, &target, &peers.addrs, rate, warmup, duration) {
            Ok(s) => {
                emit(&label, false, json, &spec, &[s]);
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
    let steps = if find_max {
        let budget = Duration::from_secs_f64(search_budget);
        search(&spec, &allocs, rate, warm, measure, budget)
    } else {
        vec![load::run_step(&spec, &allocs, 1, rate, warm, measure)]
    };
    emit(&label, find_max, json, &spec, &steps);
    drop(allocs);
    drop(peers);
    ExitCode::SUCCESS
}

/// The highest rate with < 0.1% loss: double from `rate` until loss, then bisect, within
/// `budget`. Steps are shorter than a fixed run's (at most 0.5 s warm-up, 3 s measured);
/// the last step returned repeats the best one found.
fn search(
    spec: &Spec,
    allocs: &[Alloc],
    rate: f64,
    warmup: Duration,
    duration: Duration,
    budget: Duration,
) -> Vec<Step> {
    let warmup = warmup.min(Duration::from_millis(500));
    let duration = duration.min(Duration::from_secs(3));
    let per_step = warmup + duration + Duration::from_millis(600);
    let begin = Instant::now();
    let mut steps = Vec::new();
    let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
    let mut r = rate;
    let mut step_id = 0u16;
    while begin.elapsed() + per_step < budget {
        step_id += 1;
        let s = load::run_step(spec, allocs, step_id, r, warmup, duration);
        let ok = s.loss_pct() < MAX_LOSS_PCT;
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
    steps
}

/// Prints the steps: JSON lines (`kind` fixed, step, or best: the search's result) or a
/// table.
fn emit(label: &str, find_max: bool, json: bool, spec: &Spec, steps: &[Step]) {
    if !json {
        return print_table(label, spec, steps);
    }
    for (i, s) in steps.iter().enumerate() {
        let kind = match (find_max, i + 1 == steps.len()) {
            (false, _) => "fixed",
            (true, true) => "best",
            (true, false) => "step",
        };
        println!("{}", step_json(label, kind, spec, s));
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
