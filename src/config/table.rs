//! The option table: one row per option uturn implements (name, short form, arity, value
//! placeholder, default, help text and the function that applies it). coturn options uturn
//! does not implement are rows too ([`super::coturn`]), classified as ignored or refused.
//! `--help` and README.md's tables are rendered from these rows.

use super::parse::Item;
use super::values::{parse_cores, parse_endpoint, parse_redis_any, parse_redis_url, parse_statsdb};
use super::{Backend, Config, Error, XdpMode};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Arity {
    Flag,
    Value,
    /// A flag that may carry `=value` (coturn's `--stale-nonce[=N]`).
    OptionalValue,
}

/// The default as documented. `Value` defaults are checked against `Config::default()` by
/// a test (applying the value must change nothing).
#[derive(Copy, Clone, Debug)]
pub(crate) enum Initial {
    Value(&'static str),
    Off,
    /// Not a value the option could be given, e.g. "every core".
    Note(&'static str),
}

pub(crate) type Apply = fn(&mut Config, &Item) -> Result<(), Error>;

#[derive(Copy, Clone)]
pub(crate) enum Effect {
    /// Sets something; given again, the last one wins.
    Set(Apply),
    /// Adds to a list; the command line's list replaces the config file's.
    List(Apply),
    /// Handled by the parser itself (`-c`, `--help`, `--version`).
    Meta,
    /// A coturn option uturn does not implement, ignored with a warning; the text says why
    /// ignoring it cannot weaken what the operator asked for.
    Ignored(&'static str),
    /// A coturn option uturn does not implement and cannot ignore safely; the text says why.
    Refused(&'static str),
}

pub(crate) struct Opt {
    /// Long name without dashes; a one-letter name is a short-only option (coturn's `-n`).
    pub name: &'static str,
    pub short: Option<char>,
    pub arity: Arity,
    /// Value placeholder in help, e.g. `IP`.
    pub meta: &'static str,
    pub initial: Initial,
    pub help: &'static str,
    pub effect: Effect,
}

const fn value(
    name: &'static str,
    short: Option<char>,
    meta: &'static str,
    initial: Initial,
    help: &'static str,
    f: Apply,
) -> Opt {
    Opt {
        name,
        short,
        arity: Arity::Value,
        meta,
        initial,
        help,
        effect: Effect::Set(f),
    }
}

const fn list(
    name: &'static str,
    short: Option<char>,
    meta: &'static str,
    initial: Initial,
    help: &'static str,
    f: Apply,
) -> Opt {
    Opt {
        name,
        short,
        arity: Arity::Value,
        meta,
        initial,
        help,
        effect: Effect::List(f),
    }
}

const fn flag(name: &'static str, short: Option<char>, help: &'static str, f: Apply) -> Opt {
    Opt {
        name,
        short,
        arity: Arity::Flag,
        meta: "",
        initial: Initial::Off,
        help,
        effect: Effect::Set(f),
    }
}

const fn meta(name: &'static str, short: Option<char>, arity: Arity, help: &'static str) -> Opt {
    Opt {
        name,
        short,
        arity,
        meta: if matches!(arity, Arity::Value) {
            "FILE"
        } else {
            ""
        },
        initial: Initial::Note("–"),
        help,
        effect: Effect::Meta,
    }
}

use Initial::{Note, Value};

/// Every option uturn implements, in help order.
pub(crate) const UTURN: &[Opt] = &[
    list("listening-ip", Some('L'), "IP", Note("0.0.0.0 and ::"), "listen address (repeatable; default: every IPv4 address, and every IPv6 one where the host has IPv6)", |c, i| {
        c.listening_ips.push(i.ip()?);
        Ok(())
    }),
    value("listening-port", Some('p'), "N", Value("3478"), "UDP and TCP listening port", |c, i| {
        c.listening_port = i.num()?;
        Ok(())
    }),
    flag("no-udp", None, "no UDP client listener", |c, _| {
        c.no_udp = true;
        Ok(())
    }),
    flag("no-tcp", None, "no TCP client listener", |c, _| {
        c.no_tcp = true;
        Ok(())
    }),
    flag("no-tls", None, "no TLS client listener", |c, _| {
        c.no_tls = true;
        Ok(())
    }),
    flag("no-dtls", None, "no DTLS client listener (uturn has none)", |c, _| {
        c.no_dtls = true;
        Ok(())
    }),
    value("tls-listening-port", None, "N", Value("5349"), "TLS listening port (with --cert and --pkey)", |c, i| {
        c.tls_listening_port = i.num()?;
        Ok(())
    }),
    value("cert", None, "FILE", Note("–"), "TLS certificate chain, PEM, leaf first; needs --pkey; reloadable without a restart", |c, i| {
        c.cert = Some(PathBuf::from(i.text()));
        Ok(())
    }),
    value("pkey", None, "FILE", Note("–"), "TLS private key, PEM (PKCS#8, PKCS#1 or SEC1); needs --cert", |c, i| {
        c.pkey = Some(PathBuf::from(i.text()));
        Ok(())
    }),
    value("max-connections", None, "N", Value("0"), "TCP/TLS client connections per shard, 0 = 4096", |c, i| {
        c.max_connections = i.num()?;
        Ok(())
    }),
    list("relay-ip", Some('E'), "IP", Note("listening IP, else the primary address"), "relay socket address (repeatable)", |c, i| {
        c.relay_ips.push(i.ip()?);
        Ok(())
    }),
    list("external-ip", Some('X'), "PUBLIC[/PRIVATE]", Note("–"), "address advertised in XOR-RELAYED-ADDRESS (behind NAT)", |c, i| {
        let v = i.text();
        let (public, private) = match v.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (v.as_str(), None),
        };
        let ip = |s: &str| s.trim().parse().map_err(|_| i.bad(format!("'{s}' is not an IP address")));
        let private = match private {
            Some(p) => Some(ip(p)?),
            None => None,
        };
        c.external_ips.push((ip(public)?, private));
        Ok(())
    }),
    value("min-port", None, "N", Value("49152"), "lowest relay port; each shard owns a disjoint slice", |c, i| {
        c.min_port = i.num()?;
        Ok(())
    }),
    value("max-port", None, "N", Value("65535"), "highest relay port", |c, i| {
        c.max_port = i.num()?;
        Ok(())
    }),
    value("realm", Some('r'), "REALM", Note("– (required)"), "realm of the long-term credentials", |c, i| {
        c.realm = i.text();
        Ok(())
    }),
    flag("lt-cred-mech", Some('a'), "accepted; long-term credentials are always used", |c, _| {
        c.lt_cred_mech = true;
        Ok(())
    }),
    list("user", Some('u'), "NAME:PASS", Note("–"), "static user (repeatable; `NAME:0x<md5 key>` too)", |c, i| {
        let v = i.text();
        let (name, pass) = v.split_once(':').ok_or_else(|| i.bad("expected NAME:PASSWORD"))?;
        if name.is_empty() {
            return Err(i.bad("empty user name"));
        }
        c.users.push((name.to_owned(), pass.to_owned()));
        Ok(())
    }),
    flag("use-auth-secret", None, "TURN REST API credentials (`expiry[:user]`, HMAC-SHA1), with --static-auth-secret", |c, _| {
        c.use_auth_secret = true;
        Ok(())
    }),
    list("static-auth-secret", None, "SECRET", Note("–"), "shared secret for TURN REST API credentials (repeatable)", |c, i| {
        c.static_auth_secrets.push(i.text());
        Ok(())
    }),
    value("redis-userdb", Some('N'), "\"ip=… port=… dbname=… password=… connect_timeout=…\"", Note("–"), "Redis user database in coturn's keys (turnadmin -a / -s), same syntax as --redis-statsdb", |c, i| {
        c.redis_userdb = Some(i.with(parse_redis_any)?);
        Ok(())
    }),
    value("user-quota", Some('q'), "N", Value("0"), "concurrent allocations per user, 0 = unlimited; beyond: 486", |c, i| {
        c.user_quota = i.num()?;
        Ok(())
    }),
    value("total-quota", Some('Q'), "N", Value("0"), "concurrent allocations in all, 0 = unlimited; beyond: 486", |c, i| {
        c.total_quota = i.num()?;
        Ok(())
    }),
    value("max-bps", Some('s'), "N", Value("0"), "per-allocation bandwidth, bytes/s each way, 0 = unlimited; excess dropped and counted", |c, i| {
        c.max_bps = i.num()?;
        Ok(())
    }),
    value("max-permissions-per-allocation", None, "N", Value("32"), "peer IPs one allocation may have permissions for; beyond: 508 (uturn's own)", |c, i| {
        c.max_permissions_per_allocation = i.num()?;
        Ok(())
    }),
    value("max-channels-per-allocation", None, "N", Value("64"), "channels one allocation may bind; beyond: 508 (uturn's own)", |c, i| {
        c.max_channels_per_allocation = i.num()?;
        Ok(())
    }),
    flag("allow-loopback-peers", None, "allow peers on 127.0.0.0/8 and ::1", |c, _| {
        c.allow_loopback_peers = true;
        Ok(())
    }),
    list("denied-peer-ip", None, "RANGE", Note("–"), "refuse peers in `A`, `A-B` or `A/prefix` (repeatable)", |c, i| {
        let r = i.with(|v| v.parse())?;
        c.denied_peer_ips.push(r);
        Ok(())
    }),
    list("allowed-peer-ip", None, "RANGE", Note("–"), "allow peers in `A`, `A-B` or `A/prefix`, over denials (repeatable)", |c, i| {
        let r = i.with(|v| v.parse())?;
        c.allowed_peer_ips.push(r);
        Ok(())
    }),
    value("max-allocate-lifetime", None, "S", Value("3600"), "maximum allocation lifetime, seconds", |c, i| {
        c.max_allocate_lifetime = i.num()?;
        Ok(())
    }),
    value("default-allocate-lifetime", None, "S", Value("600"), "allocation lifetime when the client asks none, seconds", |c, i| {
        c.default_allocate_lifetime = i.num()?;
        Ok(())
    }),
    value("permission-lifetime", None, "S", Value("300"), "permission lifetime, seconds", |c, i| {
        c.permission_lifetime = i.num()?;
        Ok(())
    }),
    value("channel-lifetime", None, "S", Value("600"), "channel binding lifetime, seconds", |c, i| {
        c.channel_lifetime = i.num()?;
        Ok(())
    }),
    Opt {
        name: "stale-nonce",
        short: None,
        arity: Arity::OptionalValue,
        meta: "S",
        initial: Value("600"),
        help: "nonce lifetime, seconds (bare flag: 600)",
        effect: Effect::Set(|c, i| {
            c.stale_nonce = match &i.value {
                Some(_) => i.num()?,
                None => 600,
            };
            Ok(())
        }),
    },
    list("alternate-server", None, "IP[:PORT]", Note("–"), "ALTERNATE-SERVER offered (300) while draining or at the total quota; port 3478 when none (repeatable)", |c, i| {
        let a = i.with(|v| parse_endpoint(v, 3478))?;
        c.alternate_servers.push(a);
        Ok(())
    }),
    value("drain-timeout", None, "S", Value("0"), "SIGTERM drains for up to S seconds before stopping (0: stop at once)", |c, i| {
        c.drain_timeout = Duration::from_secs(i.num()?);
        Ok(())
    }),
    value("drain-min-allocations", None, "N", Value("0"), "a drain (SIGUSR1, SIGTERM) stops the server once at most N allocations remain", |c, i| {
        c.drain_min_allocations = i.num()?;
        Ok(())
    }),
    value("redis-statsdb", Some('O'), "\"ip=… port=… dbname=… password=… connect_timeout=…\"", Note("–"), "publish coturn's statistics to Redis", |c, i| {
        c.redis = Some(i.with(parse_statsdb)?);
        Ok(())
    }),
    value("redis-url", None, "redis://[:PASS@]HOST[:PORT][/DB]", Note("–"), "the same, as a URL", |c, i| {
        c.redis = Some(i.with(parse_redis_url)?);
        Ok(())
    }),
    value("stats-interval", None, "S", Value("0"), "also publish traffic of active allocations every S seconds (0: like coturn, every 4096 packets and at deletion)", |c, i| {
        c.stats_interval = i.num()?;
        Ok(())
    }),
    flag("prometheus", None, "serve Prometheus /metrics and the /healthz, /readyz probes", |c, _| {
        c.prometheus = true;
        Ok(())
    }),
    value("prometheus-port", None, "N", Value("9641"), "Prometheus metrics port", |c, i| {
        c.prometheus_port = i.num()?;
        Ok(())
    }),
    value("prometheus-address", None, "IP", Value("127.0.0.1"), "Prometheus metrics address", |c, i| {
        c.prometheus_address = i.ip()?;
        Ok(())
    }),
    flag("no-software-attribute", None, "no SOFTWARE attribute in responses", |c, _| {
        c.no_software_attribute = true;
        Ok(())
    }),
    flag("prod", None, "coturn's former name of --no-software-attribute", |c, _| {
        c.no_software_attribute = true;
        Ok(())
    }),
    value("cores", None, "LIST", Note("every core"), "one shard pinned per listed core, e.g. `0-3,6`", |c, i| {
        c.cores = i.with(parse_cores)?;
        Ok(())
    }),
    value("backend", None, "auto|io-uring|portable", Value("auto"), "data path: io_uring where it can be set up, else portable (epoll)", |c, i| {
        c.backend = match i.text().as_str() {
            "auto" => Backend::Auto,
            "io-uring" | "io_uring" | "uring" => Backend::IoUring,
            "portable" => Backend::Portable,
            v => return Err(i.bad(format!("'{v}' is not auto, io-uring or portable"))),
        };
        Ok(())
    }),
    value("batch-wait-us", None, "N", Value("0"), "io_uring (kernel 6.12+): a woken shard waits up to N µs for the datagrams the measured receive rate brings in that time, so one wakeup serves a batch; only while a wait gathers at least two (measured every 100 ms); 0 (the default) = wake for whatever completed", |c, i| {
        c.batch_wait_us = i.num()?;
        Ok(())
    }),
    flag("no-udp-gso", None, "io_uring: send every datagram alone instead of runs of equal-size datagrams to one destination as one UDP GSO send (for devices that refuse GSO; uturn also turns it off by itself when the kernel refuses a GSO send)", |c, _| {
        c.udp_gso = false;
        Ok(())
    }),
    list("xdp", None, "IFACE", Note("–"), "attach the XDP fast path to this interface (repeatable; needs root and forwarding on IFACE, see bpf/README.md; bound UDP channels without a bandwidth cap are then relayed by the kernel)", |c, i| {
        let v = i.text();
        if v.is_empty() {
            return Err(i.bad("empty interface name"));
        }
        c.xdp_interfaces.push(v);
        Ok(())
    }),
    value("xdp-mode", None, "native|generic", Value("native"), "how the XDP program is attached; native falls back to generic where the driver has no XDP", |c, i| {
        c.xdp_mode = match i.text().as_str() {
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            v => return Err(i.bad(format!("'{v}' is not native or generic"))),
        };
        Ok(())
    }),
    value("log-level", None, "FILTER", Value("info"), "log filter, e.g. `debug`, `uturn=trace`", |c, i| {
        c.log_level = i.text();
        Ok(())
    }),
    meta("conf", Some('c'), Arity::Value, "read options from a turnserver.conf-style file"),
    meta("help", Some('h'), Arity::Flag, "print this help"),
    meta("version", None, Arity::Flag, "print the version"),
];

/// Every row: uturn's options, then the coturn options it ignores or refuses.
pub(crate) fn all() -> impl Iterator<Item = &'static Opt> {
    UTURN.iter().chain(super::coturn::COTURN.iter())
}

pub(crate) fn by_name(name: &str) -> Option<&'static Opt> {
    all().find(|o| o.name.len() > 1 && o.name == name)
}

pub(crate) fn by_short(c: char) -> Option<&'static Opt> {
    all().find(|o| o.short == Some(c))
}

impl Opt {
    /// `-L, --listening-ip IP` as help and README show it.
    pub fn synopsis(&self) -> String {
        let mut s = match (self.short, self.name.len()) {
            (Some(c), 1) => format!("-{c}"),
            (Some(c), _) => format!("-{c}, --{}", self.name),
            (None, _) => format!("--{}", self.name),
        };
        match self.arity {
            Arity::Flag => {}
            Arity::Value => s = format!("{s} {}", self.meta),
            Arity::OptionalValue => s = format!("{s}[={}]", self.meta),
        }
        s
    }

    pub fn default_text(&self) -> &'static str {
        match self.initial {
            Initial::Value(v) | Initial::Note(v) => v,
            Initial::Off => "off",
        }
    }
}

/// The `--help` text.
pub fn usage() -> String {
    let mut s = String::from("Usage: uturn [OPTIONS]\n\nA TURN relay server (RFC 8656 / RFC 5766). Option names follow coturn's.\n\nOptions:\n");
    for o in UTURN {
        let default = match o.default_text() {
            "off" | "–" => String::new(),
            v => format!(" [default: {v}]"),
        };
        s.push_str(&format!("  {:<36} {}{default}\n", o.synopsis(), o.help));
    }
    for (title, want_ignored) in [
        ("coturn options accepted and ignored (ignoring them weakens nothing; logged at start):", true),
        ("coturn options refused (uturn cannot honour them and ignoring them could weaken what was asked):", false),
    ] {
        s.push_str(&format!("\n{title}\n"));
        for o in super::coturn::COTURN {
            match (o.effect, want_ignored) {
                (Effect::Ignored(why), true) | (Effect::Refused(why), false) => {
                    s.push_str(&format!("  {:<36} {why}\n", o.synopsis()))
                }
                _ => {}
            }
        }
    }
    s
}

#[cfg(test)]
/// README.md's option tables, exactly as the README must contain them (a test compares).
pub(crate) fn readme_tables() -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut s = String::from("| option | default | meaning |\n|---|---|---|\n");
    for o in UTURN.iter().filter(|o| !matches!(o.effect, Effect::Meta)) {
        s.push_str(&format!(
            "| `{}` | {} | {} |\n",
            cell(&o.synopsis()),
            cell(o.default_text()),
            cell(o.help)
        ));
    }
    s.push_str(
        "\ncoturn options uturn does not implement:\n\n| option | uturn | why |\n|---|---|---|\n",
    );
    for o in super::coturn::COTURN {
        let (what, why) = match o.effect {
            Effect::Ignored(why) => ("ignored, with a warning", why),
            Effect::Refused(why) => ("**refused**", why),
            _ => continue,
        };
        s.push_str(&format!(
            "| `{}` | {what} | {} |\n",
            cell(&o.synopsis()),
            cell(why)
        ));
    }
    s
}
