//! Value syntaxes shared by several options: core lists, Redis connection strings,
//! `IP[:PORT]` endpoints. Pure functions returning a message for the caller to wrap.

use super::RedisTarget;
use std::net::{IpAddr, SocketAddr};

/// `IP[:PORT]`, `[IPv6]:PORT` or a bare IPv6 address; `default_port` when none is given.
pub fn parse_endpoint(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, default_port)),
        Err(_) => Err(format!("'{s}' is not IP[:PORT]")),
    }
}

/// A Redis target in either accepted spelling: `redis://…` or coturn's key=value string.
pub fn parse_redis_any(s: &str) -> Result<RedisTarget, String> {
    if s.starts_with("redis://") {
        parse_redis_url(s)
    } else {
        parse_statsdb(s)
    }
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
