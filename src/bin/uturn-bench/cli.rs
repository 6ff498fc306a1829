//! The command line: subcommands, their options and checks, and the load [`Spec`] built
//! from them. The modes themselves live in `relay`, `alloc` and `forward`.

use crate::load::{self, Credentials, Mode, Spec};
use crate::stream;
use crate::worker::{Frames, MAX_FRAME};
use clap::{Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};

#[derive(Parser)]
#[command(
    name = "uturn-bench",
    version,
    about = "TURN load generator and null forwarder"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Args, Clone)]
pub struct Target {
    /// The TURN server (or null forwarder with --null).
    #[arg(long, default_value = "127.0.0.1:3478")]
    pub server: SocketAddr,
    /// Long-term credentials NAME:PASSWORD.
    #[arg(long, default_value = "alice:secret")]
    pub user: String,
    /// Use TURN REST API credentials made from this shared secret instead of --user.
    #[arg(long)]
    pub auth_secret: Option<String>,
    /// Number of allocations.
    #[arg(long, default_value_t = 50)]
    pub allocations: usize,
    /// Local addresses for client sockets, comma-separated (several spread ports).
    #[arg(
        long,
        default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5",
        value_delimiter = ','
    )]
    pub client_ips: Vec<IpAddr>,
    /// Threads setting allocations up.
    #[arg(long, default_value_t = 8)]
    pub setup_threads: usize,
    /// Server process id: report its CPU (utime+stime) and RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Client transport: one TCP or TLS connection per allocation with tcp and tls.
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: stream::Transport,
    /// With --transport tls: trust only these PEM CA certificates (default: accept any
    /// certificate, for loopback benches against self-signed ones).
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// With --transport tls: the server name to ask for and, with --ca, to verify.
    #[arg(long, default_value = "localhost")]
    pub tls_name: String,
}

impl Target {
    pub fn trust(&self) -> stream::TlsTrust {
        stream::TlsTrust {
            ca: self.ca.clone(),
            name: self.tls_name.clone(),
        }
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Relay load: allocations, permissions/channels, then paced data to echo peers.
    Relay(RelayArgs),
    /// The null forwarder: one receive and one send per packet each way, nothing else (UDP,
    /// and with --tcp or --cert TCP and TLS clients on the same address).
    Forward {
        #[arg(long, default_value = "127.0.0.1:3500")]
        listen: SocketAddr,
        /// One thread per listed core (SO_REUSEPORT).
        #[arg(long, value_parser = parse_cores, default_value = "")]
        cores: CoreList,
        /// Also accept TCP connections on the same address: `HELLO <peer>\n`, then
        /// ChannelData frames padded to 4 bytes (RFC 8656 §12.5).
        #[arg(long)]
        tcp: bool,
        /// PEM certificate chain: TCP connections that open with a TLS handshake speak
        /// TLS (implies --tcp; needs --pkey).
        #[arg(long, requires = "pkey")]
        cert: Option<std::path::PathBuf>,
        /// PEM private key of --cert.
        #[arg(long, requires = "cert")]
        pkey: Option<std::path::PathBuf>,
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

/// `uturn-bench relay`: the load, where its ends are, and what to report.
#[derive(clap::Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub target: Target,
    /// Payload bytes per packet (at least 24).
    #[arg(long, default_value_t = 170)]
    pub size: usize,
    /// Round trips per second, all allocations together.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Round trips per second per allocation instead (overrides --rate).
    #[arg(long)]
    pub rate_per_allocation: Option<f64>,
    /// Measured seconds (at most 240: permissions last 300 s).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Unmeasured seconds before.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Send indications instead of ChannelData.
    #[arg(long)]
    pub send_indications: bool,
    /// Talk to `uturn-bench forward` instead of a TURN server.
    #[arg(long)]
    pub null: bool,
    /// No relay: send the same load straight to the echo peers (the baseline of the
    /// relay-overhead figure; --server is not used).
    #[arg(long, conflicts_with = "null")]
    pub direct: bool,
    /// Datagrams per allocation sent back to back with one system call (1..=64).
    #[arg(long, default_value_t = 1)]
    pub send_batch: usize,
    /// Video-like frames: each allocation sends MIN-MAX datagrams back to back
    /// (e.g. 8-16; overrides --send-batch).
    #[arg(long, value_parser = parse_range)]
    pub burst: Option<(usize, usize)>,
    /// Send each frame as one UDP GSO datagram (UDP_SEGMENT) instead of sendmmsg.
    #[arg(long)]
    pub gso: bool,
    /// Pace with epoll's millisecond timeout, as this tool did before it had a pacing
    /// timer: a loop sends a millisecond's worth of datagrams at once (at 10,000/s, bursts
    /// of about ten), so each waits behind the relaying of those before it. For comparing
    /// with figures taken that way.
    #[arg(long)]
    pub pace_ms: bool,
    /// Echo peer sockets.
    #[arg(long, default_value_t = 4)]
    pub peers: usize,
    /// Address the echo peers bind to.
    #[arg(long, default_value = "127.0.0.1")]
    pub peer_ip: IpAddr,
    /// Open the echo peers in this network namespace (a name under /var/run/netns, as
    /// `ip netns add` makes), not in the clients': the load then crosses a link between
    /// namespaces, as a relayed run does.
    #[arg(long)]
    pub peer_netns: Option<String>,
    /// Load threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Cores to pin load threads to (the echo peers take the last one).
    #[arg(long, value_parser = parse_cores, default_value = "")]
    pub cores: CoreList,
    /// Search the highest rate with < 0.1% loss, starting at --rate.
    #[arg(long)]
    pub find_max: bool,
    /// Longest the whole search may take, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub search_budget: f64,
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// A label for the table and JSON (e.g. the server's name).
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Clone, Debug, Default)]
pub struct CoreList(pub Vec<usize>);

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

/// The load's [`Spec`] from the options every mode shares, checked (bad values are usage
/// errors: the caller exits with 2).
pub fn spec(
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
