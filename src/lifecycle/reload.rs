//! SIGHUP: what a re-read `-c` file may change on a running server, and what it may not.
//!
//! Applied live: static users (`--user`), TURN REST secrets (`--static-auth-secret`,
//! `--use-auth-secret`) — through [`ReloadableObserver`], which the shards consult for new
//! allocations only — the log level, and the drain limits. A user removed by a reload can no
//! longer allocate; allocations it already has keep their key and run until they expire or
//! are deleted (the core never asks the observer again for them).
//! Everything else is reported as needing a restart and left as it runs; a file that does
//! not parse leaves the running configuration entirely.

use crate::auth::{AuthDecision, AuthRequest, Observer};
use crate::config::Config;
use crate::turn::{AllocationInfo, Traffic};
use std::sync::{Arc, RwLock};

/// An observer that can be replaced while shards use it.
pub struct ReloadableObserver {
    current: RwLock<Arc<dyn Observer>>,
}

impl ReloadableObserver {
    pub fn new(observer: Arc<dyn Observer>) -> ReloadableObserver {
        ReloadableObserver {
            current: RwLock::new(observer),
        }
    }

    pub fn replace(&self, observer: Arc<dyn Observer>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = observer;
    }

    fn get(&self) -> Arc<dyn Observer> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Observer for ReloadableObserver {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        self.get().authenticate(request)
    }

    fn on_allocation_created(&self, info: &AllocationInfo) {
        self.get().on_allocation_created(info);
    }

    fn on_allocation_removed(&self, info: &AllocationInfo, totals: &Traffic) {
        self.get().on_allocation_removed(info, totals);
    }
}

/// What a reload changes, by option name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Applied to the running server.
    pub live: Vec<&'static str>,
    /// Different in the file, but only a restart applies them.
    pub restart: Vec<&'static str>,
}

macro_rules! compare {
    ($old:ident, $new:ident, $out:expr, $($name:literal => $field:ident),* $(,)?) => {
        $(if format!("{:?}", $old.$field) != format!("{:?}", $new.$field) {
            $out.push($name);
        })*
    };
}

/// Compares the running configuration with a re-read one.
pub fn changes(old: &Config, new: &Config) -> Changes {
    let mut c = Changes::default();
    compare!(old, new, c.live,
        "user" => users,
        "static-auth-secret" => static_auth_secrets,
        "use-auth-secret" => use_auth_secret,
        "log-level" => log_level,
        "drain-timeout" => drain_timeout,
        "drain-min-allocations" => drain_min_allocations,
    );
    compare!(old, new, c.restart,
        "listening-ip" => listening_ips,
        "listening-port" => listening_port,
        "relay-ip" => relay_ips,
        "external-ip" => external_ips,
        "min-port" => min_port,
        "max-port" => max_port,
        "realm" => realm,
        "redis-userdb" => redis_userdb,
        "user-quota" => user_quota,
        "total-quota" => total_quota,
        "max-bps" => max_bps,
        "max-permissions-per-allocation" => max_permissions_per_allocation,
        "max-channels-per-allocation" => max_channels_per_allocation,
        "allow-loopback-peers" => allow_loopback_peers,
        "denied-peer-ip" => denied_peer_ips,
        "allowed-peer-ip" => allowed_peer_ips,
        "max-allocate-lifetime" => max_allocate_lifetime,
        "default-allocate-lifetime" => default_allocate_lifetime,
        "permission-lifetime" => permission_lifetime,
        "channel-lifetime" => channel_lifetime,
        "stale-nonce" => stale_nonce,
        "redis-statsdb" => redis,
        "stats-interval" => stats_interval,
        "no-udp" => no_udp,
        "no-tcp" => no_tcp,
        "no-tls" => no_tls,
        "no-dtls" => no_dtls,
        "tls-listening-port" => tls_listening_port,
        "cert" => cert,
        "pkey" => pkey,
        "max-connections" => max_connections,
        "alternate-server" => alternate_servers,
        "prometheus" => prometheus,
        "prometheus-port" => prometheus_port,
        "prometheus-address" => prometheus_address,
        "xdp" => xdp_interfaces,
        "xdp-mode" => xdp_mode,
        "cores" => cores,
        "backend" => backend,
        "batch-wait-us" => batch_wait_us,
        "no-software-attribute" => no_software_attribute,
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::from_args(args.iter().map(|s| s.to_string())).unwrap()
    }

    #[test]
    fn users_secrets_and_log_level_are_live_ports_and_peers_need_a_restart() {
        let old = parse(&["--realm", "r", "--user", "a:1", "--max-bps", "10"]);
        let new = parse(&[
            "--realm",
            "r",
            "--user",
            "b:2",
            "--log-level",
            "debug",
            "--max-bps",
            "20",
            "--listening-port",
            "3479",
            "--denied-peer-ip",
            "10.0.0.0/8",
        ]);
        let c = changes(&old, &new);
        assert_eq!(c.live, ["user", "log-level"]);
        assert_eq!(c.restart, ["listening-port", "max-bps", "denied-peer-ip"]);
        assert_eq!(changes(&old, &old), Changes::default());
    }

    #[test]
    fn a_replaced_observer_answers_the_next_request() {
        use crate::auth::StaticUsers;
        let mut a = StaticUsers::new();
        a.add("alice", "pw", "r");
        let observer = ReloadableObserver::new(Arc::new(a));
        let ask = |o: &ReloadableObserver, user: &str| {
            let mut req = AuthRequest::new(
                user,
                "r",
                crate::stun::Method::ALLOCATE,
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                crate::turn::Transport::Udp,
            );
            o.authenticate(&mut req)
        };
        assert!(matches!(
            ask(&observer, "alice"),
            AuthDecision::Authorized(_)
        ));
        let mut b = StaticUsers::new();
        b.add("bob", "pw", "r");
        observer.replace(Arc::new(b));
        assert_eq!(ask(&observer, "alice"), AuthDecision::NotAuthorized);
        assert!(matches!(ask(&observer, "bob"), AuthDecision::Authorized(_)));
    }
}
