//! uturn: a TURN relay server (RFC 8656, RFC 5766).
//!
//! The protocol core ([`stun`], [`turn`]) is sans-IO; [`shard`] runs it on pinned
//! threads over io_uring (or a portable backend); [`stats`] publishes to Redis in coturn's
//! schema; [`auth`] is the embedding API.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod auth;
// Test and load-generator support: public for the tests and uturn-bench, not API.
#[doc(hidden)]
pub mod client;
pub mod config;
pub mod shard;
pub mod stats;
pub mod stun;
/// Test, fuzz and bench support (a simulated world for the core); not API.
#[doc(hidden)]
pub mod testing;
pub mod turn;

pub use auth::{AuthDecision, AuthRequest, Observer, Ticket};
pub use config::Config;

use std::process::ExitCode;
use std::sync::Arc;

/// The observer the command line asks for: static users (`--user`), the TURN REST API
/// secret (`--use-auth-secret --static-auth-secret`), or both (static users first).
pub fn observer_from_config(config: &Config) -> Arc<dyn Observer> {
    let mut chain: Vec<Arc<dyn Observer>> = Vec::new();
    if !config.users.is_empty() {
        let mut users = auth::StaticUsers::new();
        for (name, password) in &config.users {
            users.add(name, password, &config.realm);
        }
        chain.push(Arc::new(users));
    }
    if config.use_auth_secret && !config.static_auth_secrets.is_empty() {
        let mut rest = auth::RestApiSecret::new(&config.static_auth_secrets[0], &config.realm);
        for secret in &config.static_auth_secrets[1..] {
            rest.add_secret(secret);
        }
        chain.push(Arc::new(rest));
    }
    if chain.len() == 1 {
        return chain.pop().expect("one observer");
    }
    Arc::new(
        chain
            .into_iter()
            .fold(auth::Chain::new(), auth::Chain::push),
    )
}

/// Runs the server until SIGINT or SIGTERM (exit 0) or until a shard fails (exit 1, after
/// every other shard stopped cleanly): shards, the stats thread when Redis is configured,
/// then a stop that deletes every allocation through the core.
pub fn run(config: Config) -> ExitCode {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let observer = observer_from_config(&config);
    let stats = match &config.redis {
        Some(target) => Some(stats::Publisher::start(
            target.clone(),
            stats::Options::default(),
        )),
        None => {
            tracing::info!("no --redis-statsdb or --redis-url: statistics are not published");
            None
        }
    };
    let sink = stats.as_ref().map(|p| p.sink());
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match shard::start(&config, observer, sink) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("uturn: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        listen = ?running.local_addrs(),
        shards = running.shard_count(),
        backend = running.backends().first().copied().unwrap_or("none"),
        "uturn ready"
    );
    // A shard that cannot go on stops the whole process, so a supervisor restarts it:
    // without that shard's SO_REUSEPORT member the kernel would hash its clients to shards
    // that do not hold their allocations.
    let failure = loop {
        if let Some(signal) = signals.pending().next() {
            tracing::info!(signal, "stopping");
            break None;
        }
        if let Some(failure) = running.wait_failure(std::time::Duration::from_millis(50)) {
            tracing::error!("{failure}: stopping every shard and exiting with an error");
            break Some(failure);
        }
    };
    let reports = running.stop();
    for r in &reports {
        tracing::info!(shard = r.index, backend = r.backend, counters = ?r.counters, io = ?r.io, "shard stopped");
    }
    if let Some(stats) = stats {
        stats.stop(std::time::Duration::from_secs(3));
    }
    match failure {
        Some(failure) => {
            eprintln!("uturn: {failure}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}
