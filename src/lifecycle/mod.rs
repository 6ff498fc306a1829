//! The server's life after start: signals (SIGINT, SIGTERM, SIGUSR1 drain, SIGHUP reload),
//! the drain's progress, readiness, and the stop.
//!
//! Owns: the main thread's wait loop. Must not: block a shard (it only stores flags and
//! reads the counters shards publish) or stop without going through [`Running::stop`], which
//! deletes every remaining allocation through the core.

pub mod drain;
pub mod reload;

use crate::config::Config;
use crate::metrics::Health;
use crate::shard::Running;
use drain::{Drain, Signal, Step};
use reload::ReloadableObserver;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Installs the handlers (before the shards start, so no signal meets the default
/// action): SIGINT, SIGTERM, SIGHUP, and SIGUSR1 when the shards can drain.
pub fn signals(drains: bool) -> std::io::Result<Signals> {
    let mut wanted = vec![SIGINT, SIGTERM, SIGHUP];
    if drains {
        wanted.push(SIGUSR1);
    }
    Signals::new(wanted)
}

/// How often the loop looks at signals and the drain's progress.
const TICK: Duration = Duration::from_millis(100);

/// Applies a new log filter (`--log-level` syntax).
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String>>;

/// Builds the authentication chain for a configuration.
pub(crate) type BuildObserver<'a> = Box<dyn Fn(&Config) -> Arc<dyn crate::auth::Observer> + 'a>;

/// What the binary gives the running server so a reload can redo what `main` did.
#[derive(Default)]
pub struct Hooks {
    /// The command line (without the program name): a reload parses it again, so the
    /// command line keeps overriding the re-read file.
    pub args: Vec<String>,
    /// Applies a new log filter; `None` when the caller installed no reloadable filter.
    pub set_log_level: Option<SetLogLevel>,
}

/// Why the loop ended.
pub enum Stop {
    /// A signal or a finished drain.
    Asked(&'static str),
    /// A shard could not go on: the process must stop (with an error).
    ShardFailed(crate::shard::ShardFailure),
}

/// Everything the loop changes on the running server.
pub(crate) struct Lifecycle<'a> {
    pub config: Config,
    pub hooks: Hooks,
    pub running: &'a Running,
    pub health: Arc<Health>,
    pub observer: Arc<ReloadableObserver>,
    /// Builds the authentication chain for a configuration (keeping the running user
    /// database, whose connection a reload does not touch).
    pub build_observer: BuildObserver<'a>,
    /// Tells every shard to refuse new allocations (or take them again); `None` while the
    /// shards cannot drain, and then SIGUSR1 is not taken and SIGTERM stops at once.
    pub set_draining: Option<Box<dyn Fn(bool) + 'a>>,
}

impl Lifecycle<'_> {
    /// Waits for a reason to stop and returns it; the caller then stops the shards.
    /// `signals` come from [`signals`], installed before the shards started.
    pub fn run(mut self, mut signals: Signals) -> Stop {
        let mut drain = self.new_drain();
        loop {
            let now = Instant::now();
            for signal in signals.pending() {
                let step = match signal {
                    SIGHUP => {
                        self.reload();
                        drain.set_limits(self.drain_min(), self.drain_timeout());
                        continue;
                    }
                    SIGINT => drain.on_signal(Signal::Int, now),
                    SIGTERM => drain.on_signal(Signal::Term, now),
                    SIGUSR1 => drain.on_signal(Signal::Usr1, now),
                    _ => continue,
                };
                if let Step::Stop(why) = step {
                    return Stop::Asked(why);
                }
                if drain.draining() && !self.health.draining.load(Ordering::Relaxed) {
                    self.start_draining(signal, &drain);
                }
            }
            let allocations = self.allocations();
            if drain.should_log(now) {
                tracing::info!(allocations, "draining: allocations remaining");
            }
            if let Step::Stop(why) = drain.poll(now, allocations) {
                return Stop::Asked(why);
            }
            // Waiting for a shard failure is also the loop's pause.
            if let Some(failure) = self.running.wait_failure(TICK) {
                return Stop::ShardFailed(failure);
            }
        }
    }

    fn new_drain(&self) -> Drain {
        Drain::new(self.drain_min(), self.drain_timeout())
    }

    fn drain_min(&self) -> usize {
        self.config.drain_min_allocations
    }

    fn drain_timeout(&self) -> Duration {
        if self.set_draining.is_some() {
            self.config.drain_timeout
        } else {
            Duration::ZERO
        }
    }

    fn allocations(&self) -> usize {
        self.running
            .metrics()
            .iter()
            .map(|m| m.snapshot().allocations as usize)
            .sum()
    }

    fn start_draining(&self, signal: i32, drain: &Drain) {
        self.health.draining.store(true, Ordering::Relaxed);
        if let Some(set) = &self.set_draining {
            set(true);
        }
        tracing::info!(
            signal = if signal == SIGUSR1 { "SIGUSR1" } else { "SIGTERM" },
            allocations = self.allocations(),
            min_allocations = self.drain_min(),
            timeout = ?drain.deadline().map(|d| d.saturating_duration_since(Instant::now())),
            "draining: new allocations are refused, existing ones keep relaying"
        );
    }

    /// Re-reads the configuration and applies what can change live.
    fn reload(&mut self) {
        let new = match Config::from_args(self.hooks.args.iter().cloned()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload (SIGHUP) refused, the running configuration stays: {e}");
                return;
            }
        };
        let changes = reload::changes(&self.config, &new);
        if !changes.restart.is_empty() {
            tracing::warn!(
                options = ?changes.restart,
                "reload (SIGHUP): these options need a restart; they keep their running values"
            );
        }
        if new.log_level != self.config.log_level {
            if let Some(set) = &self.hooks.set_log_level {
                if let Err(e) = set(&new.log_level) {
                    tracing::error!(
                        "reload (SIGHUP): log level '{}' refused: {e}",
                        new.log_level
                    );
                }
            }
        }
        if self.config.redis_userdb.is_some() && new.use_auth_secret != self.config.use_auth_secret
        {
            tracing::warn!(
                "reload (SIGHUP): the Redis user database keeps its --use-auth-secret mode until a restart"
            );
        }
        // Only what is applied live moves into the running configuration.
        self.config.users = new.users;
        self.config.static_auth_secrets = new.static_auth_secrets;
        self.config.use_auth_secret = new.use_auth_secret;
        self.config.log_level = new.log_level;
        self.config.drain_timeout = new.drain_timeout;
        self.config.drain_min_allocations = new.drain_min_allocations;
        self.observer.replace((self.build_observer)(&self.config));
        tracing::info!(
            applied = ?changes.live,
            users = self.config.users.len(),
            secrets = self.config.static_auth_secrets.len(),
            "reload (SIGHUP) done"
        );
    }
}
