//! Server configuration: the command line and turnserver.conf-style files, with coturn's
//! option names where one exists.
//!
//! Owns: [`Config`], the option table ([`table`]: every option uturn knows, with its
//! arity, help text, default and effect, including every coturn option uturn ignores or
//! refuses), parsing of argv and of config files through that one table, and validation.
//! `--help` and README.md's option tables are generated from / checked against the table.
//! Must not: start anything, or read the network.

mod coturn;
mod parse;
mod table;
#[cfg(test)]
mod tests;
mod values;

pub use parse::{parse_args, usage};
pub use values::{parse_cores, parse_redis_url, parse_statsdb};

use crate::turn::IpRange;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Which data-path backend the shards run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring when it can be set up, else portable (the log says why).
    #[default]
    Auto,
    IoUring,
    Portable,
}

/// How the XDP program is attached (`--xdp-mode`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// In the driver (fast; needs driver support).
    #[default]
    Native,
    /// In the generic network stack (works everywhere, slower).
    Generic,
}

/// A Redis server: the stats database (`--redis-statsdb`) or the user database
/// (`--redis-userdb`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub password: Option<String>,
    pub connect_timeout_secs: u64,
}

/// Everything the server needs to start, validated. Each field's option, default and
/// meaning are in the option table (`uturn --help`, README.md).
#[derive(Clone, Debug)]
pub struct Config {
    pub listening_ips: Vec<IpAddr>,
    pub listening_port: u16,
    pub relay_ips: Vec<IpAddr>,
    /// (public, optional private) pairs.
    pub external_ips: Vec<(IpAddr, Option<IpAddr>)>,
    pub min_port: u16,
    pub max_port: u16,
    pub realm: String,
    pub lt_cred_mech: bool,
    pub users: Vec<(String, String)>,
    pub use_auth_secret: bool,
    pub static_auth_secrets: Vec<String>,
    pub redis_userdb: Option<RedisTarget>,
    pub user_quota: usize,
    pub total_quota: usize,
    pub max_bps: u64,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    pub allow_loopback_peers: bool,
    pub denied_peer_ips: Vec<IpRange>,
    pub allowed_peer_ips: Vec<IpRange>,
    pub max_allocate_lifetime: u32,
    pub default_allocate_lifetime: u32,
    pub permission_lifetime: u32,
    pub channel_lifetime: u32,
    pub stale_nonce: u32,
    /// The stats database.
    pub redis: Option<RedisTarget>,
    pub stats_interval: u64,
    pub no_udp: bool,
    pub no_tcp: bool,
    pub no_tls: bool,
    pub no_dtls: bool,
    pub tls_listening_port: u16,
    pub cert: Option<PathBuf>,
    pub pkey: Option<PathBuf>,
    /// 0: the default cap.
    pub max_connections: usize,
    pub alternate_servers: Vec<SocketAddr>,
    pub drain_timeout: Duration,
    pub drain_min_allocations: usize,
    pub prometheus: bool,
    pub prometheus_port: u16,
    pub prometheus_address: IpAddr,
    pub xdp_interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Empty: one shard per available core.
    pub cores: Vec<usize>,
    pub backend: Backend,
    pub batch_wait_us: u32,
    /// io_uring: runs of equal-size datagrams to one destination leave as one GSO send.
    pub udp_gso: bool,
    pub log_level: String,
    pub no_software_attribute: bool,
    /// `-c FILE` used, if any.
    pub config_file: Option<PathBuf>,
    /// coturn options that were given and are ignored, each once, with the reason ignoring
    /// it weakens nothing (`uturn` logs them in one warning at start).
    pub ignored: Vec<Ignored>,
}

/// A coturn option that was given and is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    pub option: &'static str,
    pub reason: &'static str,
}

impl Config {
    /// One log line naming every ignored option and why ignoring it is harmless; `None`
    /// when nothing was ignored.
    pub fn ignored_warning(&self) -> Option<String> {
        if self.ignored.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .ignored
            .iter()
            .map(|i| {
                let dashes = if i.option.len() == 1 { "-" } else { "--" };
                format!("{dashes}{} ({})", i.option, i.reason)
            })
            .collect();
        Some(format!(
            "ignoring coturn options uturn does not implement: {}",
            list.join("; ")
        ))
    }
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
            redis_userdb: None,
            user_quota: 0,
            total_quota: 0,
            max_bps: 0,
            max_permissions_per_allocation: 32,
            max_channels_per_allocation: 64,
            allow_loopback_peers: false,
            denied_peer_ips: Vec::new(),
            allowed_peer_ips: Vec::new(),
            max_allocate_lifetime: 3600,
            default_allocate_lifetime: 600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            stale_nonce: 600,
            redis: None,
            stats_interval: 0,
            no_udp: false,
            no_tcp: false,
            no_tls: false,
            no_dtls: false,
            tls_listening_port: 5349,
            cert: None,
            pkey: None,
            max_connections: 0,
            alternate_servers: Vec::new(),
            drain_timeout: Duration::ZERO,
            drain_min_allocations: 0,
            prometheus: false,
            prometheus_port: 9641,
            prometheus_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            xdp_interfaces: Vec::new(),
            xdp_mode: XdpMode::Native,
            cores: Vec::new(),
            backend: Backend::Auto,
            batch_wait_us: 0,
            udp_gso: true,
            log_level: "info".to_owned(),
            no_software_attribute: false,
            config_file: None,
            ignored: Vec::new(),
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
    /// A coturn option uturn does not implement and cannot ignore safely.
    #[error("option --{option} ({origin}) is not supported by uturn: {reason}")]
    Unsupported {
        option: &'static str,
        origin: String,
        reason: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help(String),
    Version(String),
}

impl Config {
    /// Parses command-line arguments (without the program name), reading `-c FILE` first if
    /// given so that command-line options override the file. `--help`/`--version` are errors
    /// here; use [`parse_args`] to handle them.
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Config, Error> {
        match parse_args(args)? {
            Command::Run(c) => Ok(*c),
            _ => Err(Error::Invalid("--help/--version given".into())),
        }
    }
}

fn validate(c: &Config) -> Result<(), Error> {
    let invalid = |m: &str| Err(Error::Invalid(m.to_owned()));
    if c.min_port == 0 || c.min_port > c.max_port {
        return invalid("--min-port must be at least 1 and not above --max-port");
    }
    if c.listening_port == 0 || c.tls_listening_port == 0 {
        return invalid("--listening-port and --tls-listening-port must not be 0");
    }
    if c.users.is_empty() && !c.use_auth_secret && c.redis_userdb.is_none() {
        return invalid("no credentials: give --user NAME:PASSWORD, --use-auth-secret with --static-auth-secret, or --redis-userdb (every Allocate would fail)");
    }
    if c.realm.is_empty() {
        return invalid("--realm is required with long-term credentials");
    }
    if c.use_auth_secret && c.static_auth_secrets.is_empty() && c.redis_userdb.is_none() {
        return invalid("--use-auth-secret needs --static-auth-secret (or --redis-userdb)");
    }
    if c.max_allocate_lifetime == 0
        || c.default_allocate_lifetime == 0
        || c.permission_lifetime == 0
        || c.channel_lifetime == 0
        || c.stale_nonce == 0
    {
        return invalid("lifetimes must be at least 1 second");
    }
    if c.max_permissions_per_allocation == 0 || c.max_channels_per_allocation == 0 {
        return invalid(
            "--max-permissions-per-allocation and --max-channels-per-allocation must be at least 1",
        );
    }
    // Permissions and channels are searched linearly per relayed packet: a cap in the
    // thousands would let one allocation make every packet slow.
    if c.max_permissions_per_allocation > 4096 || c.max_channels_per_allocation > 4096 {
        return invalid("--max-permissions-per-allocation and --max-channels-per-allocation must not exceed 4096");
    }
    if c.default_allocate_lifetime > c.max_allocate_lifetime {
        return invalid("--default-allocate-lifetime must not exceed --max-allocate-lifetime");
    }
    validate_listeners(c)?;
    if c.prometheus && c.prometheus_port == 0 {
        return invalid("--prometheus-port must not be 0");
    }
    if let Some(ids) = core_affinity::get_core_ids() {
        let have: Vec<usize> = ids.iter().map(|c| c.id).collect();
        if let Some(missing) = c.cores.iter().find(|c| !have.contains(c)) {
            return Err(Error::BadValue {
                option: "--cores".into(),
                message: format!("core {missing} is not available (available: {have:?})"),
            });
        }
    }
    Ok(())
}

fn validate_listeners(c: &Config) -> Result<(), Error> {
    let invalid = |m: &str| Err(Error::Invalid(m.to_owned()));
    match (&c.cert, &c.pkey) {
        (Some(_), None) => return invalid("--cert needs --pkey (the TLS listener needs both)"),
        (None, Some(_)) => return invalid("--pkey needs --cert (the TLS listener needs both)"),
        _ => {}
    }
    let tls = !c.no_tls && c.cert.is_some();
    if c.no_udp && c.no_tcp && !tls {
        return invalid("--no-udp and --no-tcp leave nothing to listen on (TLS needs --cert and --pkey and no --no-tls)");
    }
    if tls && c.tls_listening_port == c.listening_port {
        return invalid("--tls-listening-port must differ from --listening-port");
    }
    Ok(())
}
