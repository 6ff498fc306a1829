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
pub mod lifecycle;
pub mod metrics;
pub mod shard;
pub mod stats;
pub mod stun;
/// Test, fuzz and bench support (a simulated world for the core); not API.
#[doc(hidden)]
pub mod testing;
pub mod turn;
pub mod xdp;

pub use auth::{AuthDecision, AuthRequest, Observer, Ticket};
pub use config::Config;

use std::process::ExitCode;
use std::sync::Arc;

/// The observer the command line asks for: static users (`--user`), the TURN REST API
/// secret (`--use-auth-secret --static-auth-secret`), the Redis user database
/// (`--redis-userdb`, its side thread started here), in that order.
pub fn observer_from_config(config: &Config) -> Arc<dyn Observer> {
    let userdb = start_userdb(config);
    auth_chain(config, userdb.as_ref())
}

/// Starts the Redis user database's side thread when `--redis-userdb` is given.
fn start_userdb(config: &Config) -> Option<Arc<auth::userdb::RedisUserDb>> {
    let target = config.redis_userdb.as_ref()?;
    let options = auth::userdb::CacheOptions::default();
    match auth::userdb::RedisUserDb::start(
        target.clone(),
        &config.realm,
        config.use_auth_secret,
        options,
    ) {
        Ok(db) => Some(Arc::new(db)),
        Err(e) => {
            tracing::error!("cannot start the Redis user database thread: {e}");
            None
        }
    }
}

/// Static users, then REST secrets, then the user database, as the configuration says.
fn auth_chain(
    config: &Config,
    userdb: Option<&Arc<auth::userdb::RedisUserDb>>,
) -> Arc<dyn Observer> {
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
    if let Some(db) = userdb {
        chain.push(db.clone());
    }
    match chain.len() {
        // No credentials left after a reload: every new allocation is refused.
        0 => Arc::new(auth::StaticUsers::new()),
        1 => chain.pop().expect("one observer"),
        _ => Arc::new(
            chain
                .into_iter()
                .fold(auth::Chain::new(), auth::Chain::push),
        ),
    }
}

/// Runs the server until SIGINT or SIGTERM (exit 0) or until a shard fails (exit 1, after
/// every other shard stopped cleanly): shards, the stats thread when Redis is configured,
/// the metrics endpoint when asked for, then a stop that deletes every allocation through
/// the core.
pub fn run(config: Config) -> ExitCode {
    run_with(config, lifecycle::Hooks::default())
}

/// [`run`], with what the binary gives for reloads (SIGHUP): its command line and a way
/// to change the log filter.
pub fn run_with(config: Config, hooks: lifecycle::Hooks) -> ExitCode {
    let userdb = start_userdb(&config);
    let reloadable = Arc::new(lifecycle::reload::ReloadableObserver::new(auth_chain(
        &config,
        userdb.as_ref(),
    )));
    let mut observer: Arc<dyn Observer> = reloadable.clone();
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
    let mut sink = stats.as_ref().map(|p| p.sink());
    let sources = metrics::Sources {
        stats: stats.as_ref().map(|p| p.shared_counters()),
        userdb: userdb.as_ref().map(|db| db.counters()),
        ..Default::default()
    };
    if config.prometheus {
        observer = Arc::new(metrics::CountingObserver {
            inner: observer,
            counters: sources.auth.clone(),
        });
        sink = Some(Arc::new(metrics::TrafficTap {
            inner: sink,
            totals: sources.traffic.clone(),
            allocations: sources.allocations.clone(),
        }));
    }
    let signals = match lifecycle::signals(true) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sources = Arc::new(sources);
    let endpoint = if config.prometheus {
        let addr = std::net::SocketAddr::new(config.prometheus_address, config.prometheus_port);
        match metrics::Endpoint::start(addr, sources.clone()) {
            Ok(e) => {
                tracing::info!(address = %e.local_addr(), "metrics on /metrics, probes on /healthz and /readyz");
                Some(e)
            }
            Err(e) => {
                tracing::error!(%addr, "cannot serve metrics: {e}");
                eprintln!("uturn: cannot serve metrics on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    // The kernel fast path (`--xdp`): any failure is one log line and changes nothing else.
    // Held until exit: dropping it detaches the program.
    let offload = xdp::Offload::from_config(&config);
    let running = match shard::start_offloaded(&config, observer, sink, offload.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("uturn: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = sources.shards.set(running.metrics().to_vec());
    let health = sources.health.clone();
    health
        .listening
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        listen = ?running.local_addrs(),
        shards = running.shard_count(),
        backend = running.backends().first().copied().unwrap_or("none"),
        "uturn ready"
    );
    let life = lifecycle::Lifecycle {
        config,
        hooks,
        running: &running,
        health,
        observer: reloadable,
        build_observer: Box::new(|c: &Config| auth_chain(c, userdb.as_ref())),
        set_draining: Some(Box::new(|on| running.set_draining(on))),
    };
    let failure = match life.run(signals) {
        lifecycle::Stop::Asked(why) => {
            tracing::info!(why, "stopping");
            None
        }
        // A shard that cannot go on stops the whole process, so a supervisor restarts it:
        // without that shard's SO_REUSEPORT member the kernel would hash its clients to
        // shards that do not hold their allocations.
        lifecycle::Stop::ShardFailed(failure) => {
            tracing::error!("{failure}: stopping every shard and exiting with an error");
            Some(failure)
        }
    };
    let reports = running.stop();
    for r in &reports {
        tracing::info!(shard = r.index, backend = r.backend, counters = ?r.counters, io = ?r.io, streams = ?r.streams, "shard stopped");
    }
    if let Some(stats) = stats {
        stats.stop(std::time::Duration::from_secs(3));
    }
    drop(endpoint);
    match failure {
        Some(failure) => {
            eprintln!("uturn: {failure}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}
