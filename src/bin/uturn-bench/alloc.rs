//! `uturn-bench alloc`: how fast a server sets allocations up (each with a ChannelBind), and
//! its memory per held allocation (the server's RSS before and after).

use crate::cli::{spec, Target};
use crate::load::{self, Mode};
use crate::procfs;
use crate::report::opt;
use crate::stream;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

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

pub fn run(target: Target, hold: f64, json: bool) -> ExitCode {
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
        stream::Transport::Udp => load::setup(&spec, &peers).map(|(a, t)| (Held::Udp(a), t)),
        t => stream::setup(&spec, &peers, t, &target.trust()).map(|(a, t)| (Held::Stream(a), t)),
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
