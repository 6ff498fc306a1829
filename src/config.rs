//! Server configuration: the command line and turnserver.conf-style files, with coturn's
//! option names where one exists.
//!
//! Owns: [`Config`], parsing and validation. Must not: start anything.

use crate::turn::IpRange;
use std::net::IpAddr;
use std::path::PathBuf;

/// Which data-path backend the shards run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring when it can be set up, else portable (the log says why).
    #[default]
    Auto,
    IoUring,
    Portable,
}

/// Where the stats thread publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub password: Option<String>,
    pub connect_timeout_secs: u64,
}

/// Everything the server needs to start, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// `--listening-ip` (repeatable; default 0.0.0.0).
    pub listening_ips: Vec<IpAddr>,
    /// `--listening-port` (3478).
    pub listening_port: u16,
    /// `--relay-ip` (default: the first listening IP, or 0.0.0.0 → the server picks
    /// the listening IP when that is unspecified).
    pub relay_ips: Vec<IpAddr>,
    /// `--external-ip PUBLIC[/PRIVATE]`: (public, optional private) pairs.
    pub external_ips: Vec<(IpAddr, Option<IpAddr>)>,
    /// `--min-port` / `--max-port` (49152–65535).
    pub min_port: u16,
    pub max_port: u16,
    /// `--realm`.
    pub realm: String,
    /// `--lt-cred-mech` (accepted; long-term credentials are always used).
    pub lt_cred_mech: bool,
    /// `--user NAME:PASS` (repeatable).
    pub users: Vec<(String, String)>,
    /// `--use-auth-secret` with `--static-auth-secret S` (repeatable).
    pub use_auth_secret: bool,
    pub static_auth_secrets: Vec<String>,
    /// `--user-quota`, `--total-quota` (0: unlimited).
    pub user_quota: usize,
    pub total_quota: usize,
    /// `--max-bps` per allocation (0: unlimited).
    pub max_bps: u64,
    /// `--allow-loopback-peers`, `--denied-peer-ip`, `--allowed-peer-ip`.
    pub allow_loopback_peers: bool,
    pub denied_peer_ips: Vec<IpRange>,
    pub allowed_peer_ips: Vec<IpRange>,
    /// `--max-allocate-lifetime` (3600), `--default-allocate-lifetime` (600),
    /// `--permission-lifetime` (300), `--channel-lifetime` (600), `--stale-nonce` (600).
    pub max_allocate_lifetime: u32,
    pub default_allocate_lifetime: u32,
    pub permission_lifetime: u32,
    pub channel_lifetime: u32,
    pub stale_nonce: u32,
    /// `--redis-statsdb "ip=… port=… dbname=… password=… connect_timeout=…"` or
    /// `--redis-url redis://…`.
    pub redis: Option<RedisTarget>,
    /// `--stats-interval SECONDS` (uturn): publish traffic of quiet allocations this often.
    pub stats_interval: u64,
    /// `--no-tcp`, `--no-tls`, `--no-dtls`: accepted; uturn is UDP-only for now.
    pub no_tcp: bool,
    pub no_tls: bool,
    pub no_dtls: bool,
    /// `--cores LIST`: one shard per listed core. Empty: one per available core.
    pub cores: Vec<usize>,
    /// `--backend auto|io-uring|portable`.
    pub backend: Backend,
    /// `--log-level` (tracing filter, default `info`).
    pub log_level: String,
    /// `--software NAME`? uturn sends `uturn/<version>` unless `--no-software-attribute`.
    pub no_software_attribute: bool,
    /// `-c FILE` used, if any.
    pub config_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listening_ips: Vec::new(),
            listening_port: 3478,
            relay_ips: Vec::new(),
            external_ips: Vec::new(),
            min_port: 49152,
            max_port: 65535,
            realm: String::new(),
            lt_cred_mech: false,
            users: Vec::new(),
            use_auth_secret: false,
            static_auth_secrets: Vec::new(),
            user_quota: 0,
            total_quota: 0,
            max_bps: 0,
            allow_loopback_peers: false,
            denied_peer_ips: Vec::new(),
            allowed_peer_ips: Vec::new(),
            max_allocate_lifetime: 3600,
            default_allocate_lifetime: 600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            stale_nonce: 600,
            redis: None,
            stats_interval: 60,
            no_tcp: false,
            no_tls: false,
            no_dtls: false,
            cores: Vec::new(),
            backend: Backend::Auto,
            log_level: "info".to_owned(),
            no_software_attribute: false,
            config_file: None,
        }
    }
}

/// Configuration errors; the binary prints them and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown option {0}")]
    UnknownOption(String),
    #[error("option {option}: {message}")]
    BadValue { option: String, message: String },
    #[error("option {0} needs a value")]
    MissingValue(String),
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses command-line arguments (without the program name), reading `-c FILE` first if
    /// given so that command-line options override the file.
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Config, Error> {
        let _ = args;
        todo!()
    }
}
