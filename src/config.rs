//! Server configuration: the command line and turnserver.conf-style files, with coturn's
//! option names where one exists.
//!
//! Owns: [`Config`], parsing and validation. Must not: start anything.

use crate::turn::IpRange;
use std::net::{IpAddr, Ipv4Addr};
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
    /// `--max-permissions-per-allocation` (32) and `--max-channels-per-allocation` (64)
    /// (uturn; coturn has no such caps): beyond them CreatePermission/ChannelBind get 508.
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
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
    /// `--stats-interval SECONDS` (uturn): also publish traffic of active allocations this
    /// often (0, the default: only coturn's 4096-packet trigger and at deletion).
    pub stats_interval: u64,
    /// `--no-tcp`, `--no-tls`, `--no-dtls`: accepted; uturn is UDP-only for now.
    pub no_tcp: bool,
    pub no_tls: bool,
    pub no_dtls: bool,
    /// `--cores LIST`: one shard per listed core. Empty: one per available core.
    pub cores: Vec<usize>,
    /// `--backend auto|io-uring|portable`.
    pub backend: Backend,
    /// `--batch-wait-us N` (uturn): with io_uring on kernels that have the minimum-wait
    /// timeout (6.12+), a shard that wakes for one completion waits up to N µs for more, so
    /// one wakeup serves a batch (0: wake for every completion).
    pub batch_wait_us: u32,
    /// `--log-level` (tracing filter, default `info`).
    pub log_level: String,
    /// `--software NAME`? uturn sends `uturn/<version>` unless `--no-software-attribute`.
    pub no_software_attribute: bool,
    /// `--redis-userdb` (same string as `--redis-statsdb`): coturn's Redis user database.
    pub redis_userdb: Option<RedisTarget>,
    /// `--prometheus`, `--prometheus-port` (9641), `--prometheus-address` (127.0.0.1).
    pub prometheus: bool,
    pub prometheus_port: u16,
    pub prometheus_address: IpAddr,
    /// `-c FILE` used, if any.
    pub config_file: Option<PathBuf>,
    /// coturn options that were given and are accepted without effect (logged at start).
    pub ignored: Vec<String>,
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
            no_tcp: false,
            no_tls: false,
            no_dtls: false,
            cores: Vec::new(),
            backend: Backend::Auto,
            batch_wait_us: 200,
            log_level: "info".to_owned(),
            no_software_attribute: false,
            redis_userdb: None,
            prometheus: false,
            prometheus_port: 9641,
            prometheus_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
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

#[derive(Copy, Clone, PartialEq, Eq)]
enum Arity {
    Flag,
    Value,
    /// A flag that may carry `=value` (coturn's `--stale-nonce[=N]`).
    OptionalValue,
}

/// Every option: long name, short alias, arity, help text.
const OPTIONS: &[(&str, Option<char>, Arity, &str)] = &[
    (
        "listening-ip",
        Some('L'),
        Arity::Value,
        "IP to listen on (repeatable; default 0.0.0.0)",
    ),
    (
        "listening-port",
        Some('p'),
        Arity::Value,
        "UDP port to listen on (default 3478)",
    ),
    (
        "relay-ip",
        Some('E'),
        Arity::Value,
        "IP for relay sockets (repeatable; default: the listening IP)",
    ),
    (
        "external-ip",
        Some('X'),
        Arity::Value,
        "PUBLIC[/PRIVATE]: address advertised in XOR-RELAYED-ADDRESS",
    ),
    (
        "min-port",
        None,
        Arity::Value,
        "lowest relay port (default 49152)",
    ),
    (
        "max-port",
        None,
        Arity::Value,
        "highest relay port (default 65535)",
    ),
    (
        "realm",
        Some('r'),
        Arity::Value,
        "realm for long-term credentials",
    ),
    (
        "lt-cred-mech",
        Some('a'),
        Arity::Flag,
        "long-term credential mechanism (always on; accepted)",
    ),
    (
        "user",
        Some('u'),
        Arity::Value,
        "NAME:PASSWORD, or NAME:0x<md5 key> (repeatable)",
    ),
    (
        "use-auth-secret",
        None,
        Arity::Flag,
        "TURN REST API credentials (with --static-auth-secret)",
    ),
    (
        "static-auth-secret",
        None,
        Arity::Value,
        "shared secret for TURN REST API credentials (repeatable)",
    ),
    (
        "user-quota",
        None,
        Arity::Value,
        "concurrent allocations per username, 0 = unlimited",
    ),
    (
        "total-quota",
        None,
        Arity::Value,
        "concurrent allocations on the server, 0 = unlimited",
    ),
    (
        "max-bps",
        None,
        Arity::Value,
        "per-allocation relay bandwidth in bytes/s each way, 0 = unlimited",
    ),
    (
        "max-permissions-per-allocation",
        None,
        Arity::Value,
        "peer IPs one allocation may have permissions for (default 32; more: 508)",
    ),
    (
        "max-channels-per-allocation",
        None,
        Arity::Value,
        "channels one allocation may bind (default 64; more: 508)",
    ),
    (
        "allow-loopback-peers",
        None,
        Arity::Flag,
        "allow peers on loopback addresses",
    ),
    (
        "denied-peer-ip",
        None,
        Arity::Value,
        "refuse peers in A, A-B or A/prefix (repeatable)",
    ),
    (
        "allowed-peer-ip",
        None,
        Arity::Value,
        "allow peers in A, A-B or A/prefix, over denials (repeatable)",
    ),
    (
        "max-allocate-lifetime",
        None,
        Arity::Value,
        "maximum allocation lifetime in seconds (3600)",
    ),
    (
        "default-allocate-lifetime",
        None,
        Arity::Value,
        "default allocation lifetime in seconds (600)",
    ),
    (
        "permission-lifetime",
        None,
        Arity::Value,
        "permission lifetime in seconds (300)",
    ),
    (
        "channel-lifetime",
        None,
        Arity::Value,
        "channel binding lifetime in seconds (600)",
    ),
    (
        "stale-nonce",
        None,
        Arity::OptionalValue,
        "nonce lifetime in seconds (600)",
    ),
    (
        "redis-statsdb",
        None,
        Arity::Value,
        "\"ip=… port=… dbname=… password=… connect_timeout=…\": publish stats to Redis",
    ),
    (
        "redis-url",
        None,
        Arity::Value,
        "redis://[:password@]host[:port][/db]: alternative to --redis-statsdb",
    ),
    (
        "stats-interval",
        None,
        Arity::Value,
        "also publish traffic of active allocations this often, seconds (0: only every 4096 packets and at deletion, like coturn)",
    ),
    (
        "no-tcp",
        None,
        Arity::Flag,
        "accepted; uturn is UDP-only for now",
    ),
    (
        "no-tls",
        None,
        Arity::Flag,
        "accepted; uturn is UDP-only for now",
    ),
    (
        "no-dtls",
        None,
        Arity::Flag,
        "accepted; uturn is UDP-only for now",
    ),
    (
        "redis-userdb",
        Some('N'),
        Arity::Value,
        "Redis user database (coturn's keys), same syntax as --redis-statsdb",
    ),
    ("prometheus", None, Arity::Flag, "serve /metrics, /healthz, /readyz"),
    ("prometheus-port", None, Arity::Value, "metrics port (default 9641)"),
    ("prometheus-address", None, Arity::Value, "metrics address (default 127.0.0.1)"),
    (
        "no-software-attribute",
        None,
        Arity::Flag,
        "do not send the SOFTWARE attribute",
    ),
    (
        "cores",
        None,
        Arity::Value,
        "cores to run shards on, e.g. 0-3,6 (default: every available core)",
    ),
    (
        "backend",
        None,
        Arity::Value,
        "auto | io-uring | portable (default auto)",
    ),
    (
        "batch-wait-us",
        None,
        Arity::Value,
        "io_uring: under load, a woken shard waits up to this many microseconds for more completions, trading latency for CPU (default 200, 0 = off; kernel 6.12+)",
    ),
    (
        "log-level",
        None,
        Arity::Value,
        "log filter, e.g. info, debug, uturn=trace (default info)",
    ),
    (
        "conf",
        Some('c'),
        Arity::Value,
        "read options from a turnserver.conf-style file",
    ),
    ("help", Some('h'), Arity::Flag, "print this help"),
    ("version", None, Arity::Flag, "print the version"),
    // coturn options accepted so existing configuration files load; they change nothing.
    (
        "fingerprint",
        None,
        Arity::Flag,
        "ignored (FINGERPRINT is always answered in kind)",
    ),
    (
        "no-cli",
        None,
        Arity::Flag,
        "ignored (uturn has no telnet CLI)",
    ),
    (
        "no-multicast-peers",
        None,
        Arity::Flag,
        "ignored (multicast peers are always refused)",
    ),
    (
        "log-file",
        Some('l'),
        Arity::Value,
        "ignored (uturn logs to stdout)",
    ),
    ("simple-log", None, Arity::Flag, "ignored"),
    (
        "verbose",
        Some('v'),
        Arity::Flag,
        "ignored (use --log-level)",
    ),
    ("pidfile", None, Arity::Value, "ignored"),
];

const IGNORED: &[&str] = &[
    "fingerprint",
    "no-cli",
    "no-multicast-peers",
    "log-file",
    "simple-log",
    "verbose",
    "pidfile",
];

/// The `--help` text.
pub fn usage() -> String {
    let mut s = String::from("Usage: uturn [OPTIONS]\n\nA TURN relay server (RFC 8656 / RFC 5766). Option names follow coturn's.\n\nOptions:\n");
    for (name, short, arity, help) in OPTIONS {
        let flag = match short {
            Some(c) => format!("-{c}, --{name}"),
            None => format!("    --{name}"),
        };
        let flag = match arity {
            Arity::Value => format!("{flag} <V>"),
            Arity::OptionalValue => format!("{flag}[=<V>]"),
            Arity::Flag => flag,
        };
        s.push_str(&format!("  {flag:<36} {help}\n"));
    }
    s
}

/// One option occurrence, from the command line or a file.
struct Item {
    name: &'static str,
    value: Option<String>,
    /// Where it came from, for error messages.
    origin: String,
}

fn lookup_long(name: &str) -> Option<&'static (&'static str, Option<char>, Arity, &'static str)> {
    OPTIONS.iter().find(|o| o.0 == name)
}

fn tokens_to_items(
    tokens: &[String],
    origin: &dyn Fn(usize) -> String,
) -> Result<Vec<Item>, Error> {
    let mut items = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let tok = &tokens[i];
        let (opt, inline) = if let Some(long) = tok.strip_prefix("--") {
            let (n, v) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            (
                lookup_long(n).ok_or_else(|| Error::UnknownOption(format!("--{n}")))?,
                v,
            )
        } else if let Some(short) = tok.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let c = chars.next().unwrap_or('-');
            let rest: String = chars.collect();
            let opt = OPTIONS
                .iter()
                .find(|o| o.1 == Some(c))
                .ok_or_else(|| Error::UnknownOption(format!("-{c}")))?;
            (opt, (!rest.is_empty()).then_some(rest))
        } else {
            return Err(Error::UnknownOption(tok.clone()));
        };
        let (name, _, arity, _) = *opt;
        let value = match arity {
            Arity::Flag => {
                if inline.is_some() {
                    return Err(Error::BadValue {
                        option: format!("--{name}"),
                        message: "takes no value".into(),
                    });
                }
                None
            }
            Arity::OptionalValue => inline,
            Arity::Value => match inline {
                Some(v) => Some(v),
                None => {
                    i += 1;
                    Some(
                        tokens
                            .get(i)
                            .cloned()
                            .ok_or_else(|| Error::MissingValue(format!("--{name}")))?,
                    )
                }
            },
        };
        items.push(Item {
            name,
            value,
            origin: origin(i),
        });
        i += 1;
    }
    Ok(items)
}

/// Reads a turnserver.conf-style file: `name=value`, `name value` or `name` per line.
fn file_items(path: &std::path::Path) -> Result<Vec<Item>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = match line.find(|c: char| c == '=' || c.is_whitespace()) {
            Some(at) => {
                let value = line[at..].trim_start_matches(|c: char| c == '=' || c.is_whitespace());
                (&line[..at], Some(value.trim().trim_matches('"').to_owned()))
            }
            None => (line, None),
        };
        let name = name.trim_start_matches('-');
        let file_err = |message: String| Error::File {
            path: path.to_owned(),
            message: format!("line {}: {message}", n + 1),
        };
        let (opt, _, arity, _) =
            *lookup_long(name).ok_or_else(|| file_err(format!("unknown option {name}")))?;
        let value = match (arity, value) {
            (Arity::Flag, Some(v)) if !v.is_empty() => {
                return Err(file_err(format!("{name} takes no value")))
            }
            (Arity::Flag, _) => None,
            (Arity::Value, None) => return Err(file_err(format!("{name} needs a value"))),
            (_, v) => v,
        };
        if opt == "conf" {
            return Err(file_err("a config file cannot include another".into()));
        }
        items.push(Item {
            name: opt,
            value,
            origin: format!("{} line {}", path.display(), n + 1),
        });
    }
    Ok(items)
}

fn bad(item: &Item, message: impl Into<String>) -> Error {
    Error::BadValue {
        option: format!("--{} ({})", item.name, item.origin),
        message: message.into(),
    }
}

fn parse_num<T: std::str::FromStr>(item: &Item) -> Result<T, Error> {
    let v = item.value.as_deref().unwrap_or("");
    v.trim()
        .parse()
        .map_err(|_| bad(item, format!("'{v}' is not a valid number")))
}

fn parse_ip(item: &Item) -> Result<IpAddr, Error> {
    let v = item.value.as_deref().unwrap_or("");
    v.trim()
        .parse()
        .map_err(|_| bad(item, format!("'{v}' is not an IP address")))
}

/// `0-3,6` → [0, 1, 2, 3, 6].
pub fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a
            .trim()
            .parse()
            .map_err(|_| format!("'{part}' is not a core or range"))?;
        let b: usize = b
            .trim()
            .parse()
            .map_err(|_| format!("'{part}' is not a core or range"))?;
        if a > b {
            return Err(format!("'{part}': start after end"));
        }
        for c in a..=b {
            if out.contains(&c) {
                return Err(format!("core {c} listed twice"));
            }
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err("no cores listed".into());
    }
    Ok(out)
}

/// coturn's `--redis-statsdb` connection string: space-separated `key=value`.
pub fn parse_statsdb(s: &str) -> Result<RedisTarget, String> {
    let mut t = RedisTarget {
        host: "127.0.0.1".into(),
        port: 6379,
        db: 0,
        password: None,
        connect_timeout_secs: 2,
    };
    for kv in s.split_whitespace() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("'{kv}' is not key=value"))?;
        match k {
            "ip" | "host" => t.host = v.to_owned(),
            "port" => t.port = v.parse().map_err(|_| format!("bad port '{v}'"))?,
            "dbname" | "database" | "db" => {
                t.db = v.parse().map_err(|_| format!("bad dbname '{v}'"))?
            }
            "password" => t.password = Some(v.to_owned()),
            "connect_timeout" => {
                t.connect_timeout_secs = v
                    .parse()
                    .map_err(|_| format!("bad connect_timeout '{v}'"))?
            }
            other => return Err(format!("unknown key '{other}'")),
        }
    }
    Ok(t)
}

/// `redis://[:password@]host[:port][/db]`.
pub fn parse_redis_url(s: &str) -> Result<RedisTarget, String> {
    let rest = s
        .strip_prefix("redis://")
        .ok_or("must start with redis://")?;
    let (auth, hostpart) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (hostport, db) = match hostpart.split_once('/') {
        Some((h, d)) if !d.is_empty() => (h, d.parse().map_err(|_| format!("bad database '{d}'"))?),
        Some((h, _)) => (h, 0),
        None => (hostpart, 0),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            (h, p.parse().map_err(|_| format!("bad port '{p}'"))?)
        }
        _ => (hostport, 6379),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let password = auth.map(|a| a.split_once(':').map_or(a, |(_, p)| p).to_owned());
    Ok(RedisTarget {
        host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
        port,
        db,
        password: password.filter(|p| !p.is_empty()),
        connect_timeout_secs: 2,
    })
}

/// Parses the command line (without the program name).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, Error> {
    let tokens: Vec<String> = args.into_iter().collect();
    let cli = tokens_to_items(&tokens, &|i| format!("argument {}", i + 1))?;
    if cli.iter().any(|i| i.name == "help") {
        return Ok(Command::Help(usage()));
    }
    if cli.iter().any(|i| i.name == "version") {
        return Ok(Command::Version(format!(
            "uturn {}",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let mut config = Config::default();
    let mut items = Vec::new();
    if let Some(conf) = cli.iter().rev().find(|i| i.name == "conf") {
        let path = PathBuf::from(conf.value.clone().unwrap_or_default());
        items.extend(file_items(&path)?);
        config.config_file = Some(path);
    }
    // Lists given on the command line replace the file's.
    let cli_lists: Vec<&str> = cli.iter().map(|i| i.name).collect();
    items.retain(|i| !(is_list(i.name) && cli_lists.contains(&i.name)));
    items.extend(cli);
    for item in &items {
        apply(&mut config, item)?;
    }
    validate(&config)?;
    Ok(Command::Run(Box::new(config)))
}

fn is_list(name: &str) -> bool {
    matches!(
        name,
        "listening-ip"
            | "relay-ip"
            | "external-ip"
            | "user"
            | "static-auth-secret"
            | "denied-peer-ip"
            | "allowed-peer-ip"
    )
}

fn apply(c: &mut Config, item: &Item) -> Result<(), Error> {
    let v = item.value.clone().unwrap_or_default();
    match item.name {
        "listening-ip" => c.listening_ips.push(parse_ip(item)?),
        "listening-port" => c.listening_port = parse_num(item)?,
        "relay-ip" => c.relay_ips.push(parse_ip(item)?),
        "external-ip" => {
            let (public, private) = match v.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (v.as_str(), None),
            };
            let public = public
                .trim()
                .parse()
                .map_err(|_| bad(item, format!("'{public}' is not an IP address")))?;
            let private = match private {
                Some(p) => Some(
                    p.trim()
                        .parse()
                        .map_err(|_| bad(item, format!("'{p}' is not an IP address")))?,
                ),
                None => None,
            };
            c.external_ips.push((public, private));
        }
        "min-port" => c.min_port = parse_num(item)?,
        "max-port" => c.max_port = parse_num(item)?,
        "realm" => c.realm = v,
        "lt-cred-mech" => c.lt_cred_mech = true,
        "user" => {
            let (name, pass) = v
                .split_once(':')
                .ok_or_else(|| bad(item, "expected NAME:PASSWORD"))?;
            if name.is_empty() {
                return Err(bad(item, "empty user name"));
            }
            c.users.push((name.to_owned(), pass.to_owned()));
        }
        "use-auth-secret" => c.use_auth_secret = true,
        "static-auth-secret" => c.static_auth_secrets.push(v),
        "user-quota" => c.user_quota = parse_num(item)?,
        "total-quota" => c.total_quota = parse_num(item)?,
        "max-bps" => c.max_bps = parse_num(item)?,
        "max-permissions-per-allocation" => c.max_permissions_per_allocation = parse_num(item)?,
        "max-channels-per-allocation" => c.max_channels_per_allocation = parse_num(item)?,
        "allow-loopback-peers" => c.allow_loopback_peers = true,
        "denied-peer-ip" => c
            .denied_peer_ips
            .push(v.parse().map_err(|e: String| bad(item, e))?),
        "allowed-peer-ip" => c
            .allowed_peer_ips
            .push(v.parse().map_err(|e: String| bad(item, e))?),
        "max-allocate-lifetime" => c.max_allocate_lifetime = parse_num(item)?,
        "default-allocate-lifetime" => c.default_allocate_lifetime = parse_num(item)?,
        "permission-lifetime" => c.permission_lifetime = parse_num(item)?,
        "channel-lifetime" => c.channel_lifetime = parse_num(item)?,
        "stale-nonce" => {
            c.stale_nonce = match &item.value {
                Some(_) => parse_num(item)?,
                None => 600,
            }
        }
        "redis-statsdb" => c.redis = Some(parse_statsdb(&v).map_err(|e| bad(item, e))?),
        "redis-url" => c.redis = Some(parse_redis_url(&v).map_err(|e| bad(item, e))?),
        "stats-interval" => c.stats_interval = parse_num(item)?,
        "no-tcp" => c.no_tcp = true,
        "no-tls" => c.no_tls = true,
        "no-dtls" => c.no_dtls = true,
        "no-software-attribute" => c.no_software_attribute = true,
        "redis-userdb" => c.redis_userdb = Some(parse_statsdb(&v).map_err(|e| bad(item, e))?),
        "prometheus" => c.prometheus = true,
        "prometheus-port" => c.prometheus_port = parse_num(item)?,
        "prometheus-address" => c.prometheus_address = parse_ip(item)?,
        "cores" => c.cores = parse_cores(&v).map_err(|e| bad(item, e))?,
        "batch-wait-us" => c.batch_wait_us = parse_num(item)?,
        "backend" => {
            c.backend = match v.as_str() {
                "auto" => Backend::Auto,
                "io-uring" | "io_uring" | "uring" => Backend::IoUring,
                "portable" => Backend::Portable,
                _ => {
                    return Err(bad(
                        item,
                        format!("'{v}' is not auto, io-uring or portable"),
                    ))
                }
            }
        }
        "log-level" => c.log_level = v,
        "conf" | "help" | "version" => {}
        name if IGNORED.contains(&name) => c.ignored.push(name.to_owned()),
        _ => {}
    }
    Ok(())
}

fn validate(c: &Config) -> Result<(), Error> {
    let invalid = |m: &str| Err(Error::Invalid(m.to_owned()));
    if c.min_port == 0 || c.min_port > c.max_port {
        return invalid("--min-port must be at least 1 and not above --max-port");
    }
    if c.listening_port == 0 {
        return invalid("--listening-port must not be 0");
    }
    if c.users.is_empty() && !c.use_auth_secret && c.redis_userdb.is_none() {
        return invalid("no credentials: give --user NAME:PASSWORD or --use-auth-secret with --static-auth-secret (every Allocate would fail)");
    }
    if c.realm.is_empty() {
        return invalid("--realm is required with long-term credentials");
    }
    if c.use_auth_secret && c.static_auth_secrets.is_empty() && c.redis_userdb.is_none() {
        return invalid("--use-auth-secret needs --static-auth-secret");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, Error> {
        Config::from_args(args.iter().map(|s| s.to_string()))
    }

    const BASE: &[&str] = &["--realm", "example.org", "--user", "alice:secret"];

    fn with(extra: &[&str]) -> Result<Config, Error> {
        let mut v: Vec<&str> = BASE.to_vec();
        v.extend_from_slice(extra);
        parse(&v)
    }

    #[test]
    fn every_option_parses() {
        let c = with(&[
            "-L",
            "127.0.0.1",
            "--listening-ip=::1",
            "-p",
            "3479",
            "--relay-ip",
            "127.0.0.2",
            "-X",
            "203.0.113.1/10.0.0.1",
            "--min-port",
            "40000",
            "--max-port=40100",
            "-a",
            "-u",
            "bob:pa:ss",
            "--use-auth-secret",
            "--static-auth-secret",
            "s3",
            "--user-quota",
            "2",
            "--total-quota",
            "100",
            "--max-bps",
            "64000",
            "--allow-loopback-peers",
            "--denied-peer-ip",
            "10.0.0.0/8",
            "--allowed-peer-ip",
            "10.1.0.0-10.1.255.255",
            "--max-allocate-lifetime",
            "1800",
            "--default-allocate-lifetime",
            "300",
            "--permission-lifetime",
            "200",
            "--channel-lifetime",
            "500",
            "--stale-nonce=120",
            "--redis-statsdb",
            "ip=127.0.0.1 port=6380 dbname=2 password=pw connect_timeout=5",
            "--stats-interval",
            "30",
            "--no-tcp",
            "--no-tls",
            "--no-dtls",
            "--no-software-attribute",
            "--cores",
            "0",
            "--backend",
            "portable",
            "--log-level",
            "debug",
            "--fingerprint",
            "--no-cli",
        ])
        .unwrap();
        assert_eq!(
            c.listening_ips,
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(c.listening_port, 3479);
        assert_eq!(c.relay_ips, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            c.external_ips,
            vec![(
                "203.0.113.1".parse().unwrap(),
                Some("10.0.0.1".parse().unwrap())
            )]
        );
        assert_eq!((c.min_port, c.max_port), (40000, 40100));
        assert!(c.lt_cred_mech && c.use_auth_secret && c.allow_loopback_peers);
        assert_eq!(c.users[1], ("bob".to_owned(), "pa:ss".to_owned()));
        assert_eq!(c.static_auth_secrets, vec!["s3"]);
        assert_eq!((c.user_quota, c.total_quota, c.max_bps), (2, 100, 64000));
        assert_eq!(c.denied_peer_ips.len(), 1);
        assert_eq!(c.allowed_peer_ips.len(), 1);
        assert_eq!(
            (c.max_allocate_lifetime, c.default_allocate_lifetime),
            (1800, 300)
        );
        assert_eq!(
            (c.permission_lifetime, c.channel_lifetime, c.stale_nonce),
            (200, 500, 120)
        );
        let r = c.redis.unwrap();
        assert_eq!(
            (
                r.host.as_str(),
                r.port,
                r.db,
                r.password.as_deref(),
                r.connect_timeout_secs
            ),
            ("127.0.0.1", 6380, 2, Some("pw"), 5)
        );
        assert_eq!(c.stats_interval, 30);
        assert!(c.no_tcp && c.no_tls && c.no_dtls && c.no_software_attribute);
        assert_eq!(c.cores, vec![0]);
        assert_eq!(c.backend, Backend::Portable);
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.ignored, vec!["fingerprint", "no-cli"]);
        assert_eq!(with(&["--stale-nonce"]).unwrap().stale_nonce, 600);
    }

    #[test]
    fn errors_name_the_option() {
        let e = with(&["--bogus"]).unwrap_err().to_string();
        assert!(e.contains("--bogus"), "{e}");
        let e = with(&["--min-port", "x"]).unwrap_err().to_string();
        assert!(e.contains("--min-port") && e.contains("'x'"), "{e}");
        let e = with(&["--listening-port"]).unwrap_err().to_string();
        assert!(
            e.contains("--listening-port") && e.contains("needs a value"),
            "{e}"
        );
        let e = with(&["--backend", "epoll"]).unwrap_err().to_string();
        assert!(e.contains("--backend"), "{e}");
        let e = with(&["--allow-loopback-peers=yes"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes no value"), "{e}");
        for bad in [
            &["--min-port", "5000", "--max-port", "4000"][..],
            &["--use-auth-secret"],
            &["--default-allocate-lifetime", "5000"],
            &["--cores", "0-1,1"],
            &["--cores", "9999"],
            &["--redis-statsdb", "ip=1.2.3.4 colour=blue"],
            &["--denied-peer-ip", "10.0.0.1/40"],
            &["--user", "nopassword"],
        ] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--user", "a:b"]).is_err(), "a realm is required");
        assert!(
            parse(&["--realm", "r"]).is_err(),
            "credentials are required"
        );
    }

    #[test]
    fn help_and_version() {
        let Command::Help(h) = parse_args(["--help".to_string()]).unwrap() else {
            panic!()
        };
        for (name, ..) in OPTIONS {
            assert!(h.contains(&format!("--{name}")), "{name} missing from help");
        }
        assert!(
            matches!(parse_args(["--version".to_string()]).unwrap(), Command::Version(v) if v.starts_with("uturn "))
        );
    }

    #[test]
    fn config_file_and_cli_override() {
        let dir = std::env::temp_dir().join(format!("uturn-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("turnserver.conf");
        std::fs::write(
            &path,
            "# a comment\n\nlistening-port=3480\nrealm example.org\nuser=alice:secret\nuser=bob:pw\nlt-cred-mech\n--allow-loopback-peers\nmin-port = 41000\nno-cli\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["-c", p]).unwrap();
        assert_eq!(c.listening_port, 3480);
        assert_eq!(c.realm, "example.org");
        assert_eq!(c.users.len(), 2);
        assert!(c.lt_cred_mech && c.allow_loopback_peers);
        assert_eq!(c.min_port, 41000);
        assert_eq!(c.config_file.as_deref(), Some(path.as_path()));
        // Command line wins; a list on the command line replaces the file's list.
        let c = parse(&["-c", p, "--listening-port", "4000", "--user", "carol:x"]).unwrap();
        assert_eq!(c.listening_port, 4000);
        assert_eq!(c.users, vec![("carol".to_owned(), "x".to_owned())]);
        std::fs::write(&path, "realm=r\nuser=a:b\nbogus-option=1\n").unwrap();
        let e = parse(&["-c", p]).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("bogus-option"), "{e}");
        assert!(parse(&["-c", "/nonexistent/turnserver.conf"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redis_strings() {
        let t = parse_redis_url("redis://:pw@10.0.0.5:6390/3").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.db, t.password.as_deref()),
            ("10.0.0.5", 6390, 3, Some("pw"))
        );
        let t = parse_redis_url("redis://localhost").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.db, t.password),
            ("localhost", 6379, 0, None)
        );
        assert!(parse_redis_url("http://x").is_err());
        assert!(parse_redis_url("redis://h:notaport").is_err());
        let t = parse_statsdb("host=r.example port=7000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("r.example", 7000));
        assert!(parse_statsdb("port").is_err());
    }

    #[test]
    fn per_allocation_caps() {
        let c = with(&[]).unwrap();
        assert_eq!(
            (
                c.max_permissions_per_allocation,
                c.max_channels_per_allocation
            ),
            (32, 64)
        );
        let c = with(&[
            "--max-permissions-per-allocation",
            "5",
            "--max-channels-per-allocation=7",
        ])
        .unwrap();
        assert_eq!(
            (
                c.max_permissions_per_allocation,
                c.max_channels_per_allocation
            ),
            (5, 7)
        );
        for bad in [
            ["--max-permissions-per-allocation", "0"],
            ["--max-channels-per-allocation", "0"],
            ["--max-channels-per-allocation", "4097"],
            ["--max-permissions-per-allocation", "x"],
        ] {
            assert!(with(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cores_syntax() {
        assert_eq!(parse_cores("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores("a").is_err());
        assert!(parse_cores("").is_err());
    }
}
