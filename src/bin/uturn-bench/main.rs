//! uturn-bench: a TURN load generator that speaks real TURN to any server (uturn, coturn,
//! …), plus the null forwarder that marks the floor, plus an allocation-rate mode.
//!
//! ```text
//! uturn-bench forward --listen 127.0.0.1:3500 --cores 0
//! uturn-bench forward --listen 127.0.0.1:3500 --cert cert.pem --pkey key.pem  # + TCP, TLS
//! uturn-bench relay --server 127.0.0.1:3478 --user alice:secret --allocations 1000 \
//!     --size 170 --rate 20000 --duration 5 --cores 1 [--server-pid PID] [--json]
//! uturn-bench relay ... --find-max          # highest rate with < 0.1% loss
//! uturn-bench relay ... --send-batch 8       # 8 datagrams per allocation per system call
//! uturn-bench relay ... --burst 8-16 [--gso] # video-like frames of 8–16 datagrams
//! uturn-bench relay --direct ...             # the same load straight to the peers
//! uturn-bench relay ... --peer-netns NS      # echo peers in network namespace NS
//! uturn-bench relay ... --transport tls --server 127.0.0.1:5349   # one TLS connection each
//! uturn-bench relay --transport tcp --null --server 127.0.0.1:3500 ...  # the stream floor
//! uturn-bench alloc --server 127.0.0.1:3478 --user alice:secret --allocations 10000
//! ```

mod alloc;
mod cli;
mod forward;
mod forward_stream;
mod hist;
mod load;
mod pace;
mod peers;
mod procfs;
mod relay;
mod report;
mod stream;
mod stream_load;
mod worker;

use clap::Parser;
use cli::{Cli, Cmd};
use std::process::ExitCode;
use uturn::shard::tls::Certificates;

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Forward {
            listen,
            cores,
            tcp,
            cert,
            pkey,
        } => {
            let streaming = match (cert, pkey) {
                (Some(cert), Some(key)) => match Certificates::load(&cert, &key) {
                    Ok(c) => forward::Streaming::On(Some(c.server_config())),
                    Err(e) => {
                        eprintln!("uturn-bench: {e}");
                        return ExitCode::from(2);
                    }
                },
                _ if tcp => forward::Streaming::On(None),
                _ => forward::Streaming::Off,
            };
            let what = match &streaming {
                forward::Streaming::Off => "UDP",
                forward::Streaming::On(None) => "UDP and TCP",
                forward::Streaming::On(Some(_)) => "UDP, TCP and TLS",
            };
            let cores = if cores.0.is_empty() {
                vec![usize::MAX]
            } else {
                cores.0
            };
            let handles: Vec<_> = cores
                .iter()
                .map(|&core| {
                    let streaming = streaming.clone();
                    std::thread::spawn(move || {
                        load::pin((core != usize::MAX).then_some(core));
                        forward::run(listen, streaming)
                    })
                })
                .collect();
            eprintln!(
                "uturn-bench: null forwarder on {listen}, {what} ({} threads)",
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
        Cmd::Alloc { target, hold, json } => alloc::run(target, hold, json),
        Cmd::Relay(args) => relay::run(args),
    }
}
