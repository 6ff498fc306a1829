//! Peer address policy (RFC 8656 §21.3; coturn's `--allow-loopback-peers`,
//! `--denied-peer-ip`, `--allowed-peer-ip`).
//!
//! Owns: deciding whether a peer IP may be relayed to, and whether it is one of the
//! server's own addresses. Must not: know about allocations.
//!
//! Order of the checks, first match wins:
//! 1. IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) IPv6 addresses are
//!    judged as the IPv4 address they carry (the CVE-2020-26262 bypass class).
//! 2. Unspecified (`0.0.0.0/8`, `::`): always refused; nothing overrides it.
//! 3. One of the server's own addresses (listening, relay, external; [`PeerPolicy::judge`]
//!    with the list): allowed as [`Verdict::Own`], unless a `--denied-peer-ip` range that no
//!    `--allowed-peer-ip` range opens names it. The core then relays only to ports inside
//!    the relay range on it, unless `--allowed-peer-ip` names the address, or it is loopback
//!    and `--allow-loopback-peers` is on (then it is an ordinary peer). Two clients of one server reach each other's relay addresses this
//!    way, also on private relay IPs, and nothing else on the relay host.
//! 4. Loopback (`127.0.0.0/8`, `::1`): refused unless `--allow-loopback-peers` (as in coturn,
//!    `--allowed-peer-ip` does not override this).
//! 5. In an `--allowed-peer-ip` range: allowed (allowed takes precedence over denied).
//! 6. In a `--denied-peer-ip` range: refused.
//! 7. Built-in refusals: multicast, broadcast and reserved `240.0.0.0/4`, link-local, Teredo
//!    `2001::/32` and the rest of `2001::/23`, `2001:db8::/32`, 6to4 `2002::/16`, NAT64
//!    `64:ff9b::/96` and `64:ff9b:1::/48`, `100::/64`, private (RFC 1918), shared
//!    `100.64.0.0/10`, `192.0.0.0/24`, the documentation ranges `192.0.2.0/24`,
//!    `198.51.100.0/24`, `203.0.113.0/24`, 6to4 relay anycast `192.88.99.0/24`, benchmarking
//!    `198.18.0.0/15`, ULA `fc00::/7` and site-local `fec0::/10`. They need
//!    `--allowed-peer-ip`.
//! 8. Otherwise allowed.
//!
//! A NAT64 address reaches the IPv4 address it embeds (RFC 6052), so it is allowed only when
//! both it and every IPv4 address it may embed are: opening `64:ff9b::/96` does not open
//! `64:ff9b::10.0.0.1` unless `10.0.0.1` is open too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An inclusive IP range, parsed from `A`, `A-B` or `A/prefix` (coturn's syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

fn to_u128(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (true, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (false, u128::from(v6)),
    }
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let (v4, n) = to_u128(ip);
        let (s4, s) = to_u128(self.start);
        let (_, e) = to_u128(self.end);
        v4 == s4 && s <= n && n <= e
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let parse = |a: &str| -> Result<IpAddr, String> {
            a.trim()
                .parse::<IpAddr>()
                .map(canonical)
                .map_err(|_| format!("'{a}' is not an IP address"))
        };
        if let Some((a, b)) = s.split_once('-') {
            let (start, end) = (parse(a)?, parse(b)?);
            if start.is_ipv4() != end.is_ipv4() {
                return Err(format!("'{s}': both ends must be of one family"));
            }
            if to_u128(start).1 > to_u128(end).1 {
                return Err(format!("'{s}': start is after end"));
            }
            return Ok(IpRange { start, end });
        }
        if let Some((a, p)) = s.split_once('/') {
            let ip = parse(a)?;
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            let prefix: u32 = p
                .parse()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("'{s}': prefix must be 0..={bits}"))?;
            let (_, n) = to_u128(ip);
            // `::/0` has 128 host bits: `1 << 128` would overflow.
            let mask: u128 = u128::MAX.checked_shr(prefix + (128 - bits)).unwrap_or(0);
            let (lo, hi) = (n & !mask, n | mask);
            let back = |v: u128| -> IpAddr {
                if ip.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::from(v as u32))
                } else {
                    IpAddr::V6(Ipv6Addr::from(v))
                }
            };
            return Ok(IpRange {
                start: back(lo),
                end: back(hi),
            });
        }
        let ip = parse(s)?;
        Ok(IpRange { start: ip, end: ip })
    }
}

/// An IPv6 address that carries an IPv4 address (mapped or compatible) as that IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mapped = o[..10] == [0; 10] && o[10] == 0xFF && o[11] == 0xFF;
            let compatible =
                o[..12] == [0; 12] && u32::from_be_bytes([o[12], o[13], o[14], o[15]]) > 1;
            if mapped || compatible {
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                ip
            }
        }
        v4 => v4,
    }
}

/// Which peers an allocation may talk to.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// `--allow-loopback-peers`.
    pub allow_loopback: bool,
    /// `--allowed-peer-ip`: overrides the built-in refusals of private ranges and
    /// `--denied-peer-ip` (coturn: allowed takes precedence over denied).
    pub allowed: Vec<IpRange>,
    /// `--denied-peer-ip`.
    pub denied: Vec<IpRange>,
}

fn builtin_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_multicast()
                || o[0] >= 240 // reserved 240/4 and broadcast
                || v4.is_link_local()
                || v4.is_private()
                || (o[0] == 100 && (o[1] & 0xC0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2)) // 192.0.0/24, 192.0.2/24
                || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast
                || (o[0] == 198 && (o[1] & 0xFE) == 18) // 198.18.0.0/15
                || (o[0] == 198 && o[1] == 51 && o[2] == 100) // TEST-NET-2
                || (o[0] == 203 && o[1] == 0 && o[2] == 113) // TEST-NET-3
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_multicast()
                || (s[0] & 0xFFC0) == 0xFE80 // link-local
                || (s[0] & 0xFFC0) == 0xFEC0 // site-local
                || (s[0] & 0xFE00) == 0xFC00 // ULA
                || (s[0] == 0x2001 && s[1] < 0x200) // 2001::/23, Teredo 2001::/32 among them
                || (s[0] == 0x2001 && s[1] == 0xDB8) // documentation
                || s[0] == 0x2002 // 6to4
                || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
                || nat64(v6).is_some()
        }
    }
}

/// The IPv4 addresses a NAT64 address may embed (RFC 6052 §2.2), or `None` when it is not
/// in `64:ff9b::/96` or `64:ff9b:1::/48`. The well-known prefix is a /96; a local-use
/// prefix inside `64:ff9b:1::/48` may be /48, /56, /64 or /96, so all four are returned.
fn nat64(v6: Ipv6Addr) -> Option<Vec<Ipv4Addr>> {
    let o = v6.octets();
    let v4 = |a: usize, b: usize, c: usize, d: usize| Ipv4Addr::new(o[a], o[b], o[c], o[d]);
    if o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] {
        return Some(vec![v4(12, 13, 14, 15)]);
    }
    if o[..6] == [0, 0x64, 0xff, 0x9b, 0, 1] {
        return Some(vec![
            v4(6, 7, 9, 10),
            v4(7, 9, 10, 11),
            v4(9, 10, 11, 12),
            v4(12, 13, 14, 15),
        ]);
    }
    None
}

/// What the policy says about a peer address, least to most permissive except that `Own`
/// limits the ports.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Refused,
    Allowed,
    /// One of the server's own addresses: relay only to ports in the relay range.
    Own,
}

impl PeerPolicy {
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        self.judge(ip, &[]) != Verdict::Refused
    }

    /// The verdict on `ip` for a server whose own addresses are `own` (canonical forms).
    pub fn judge(&self, ip: IpAddr, own: &[IpAddr]) -> Verdict {
        if let IpAddr::V6(v6) = ip {
            if let Some(embedded) = nat64(v6) {
                return self.judge_nat64(ip, &embedded, own);
            }
        }
        self.judge_one(canonical(ip), own)
    }

    fn judge_nat64(&self, ip: IpAddr, embedded: &[Ipv4Addr], own: &[IpAddr]) -> Verdict {
        // The NAT64 address itself is refused unless opened; then what it reaches decides.
        if !self.allowed.iter().any(|r| r.contains(ip)) {
            return Verdict::Refused;
        }
        // An embedding that lands in 0.0.0.0/8 is not the one in use (nothing is reached
        // there); every other one must pass, and at least one must exist.
        let mut verdict = Verdict::Refused;
        for v4 in embedded.iter().filter(|v4| v4.octets()[0] != 0) {
            match self.judge_one(IpAddr::V4(*v4), own) {
                Verdict::Refused => return Verdict::Refused,
                // Own outranks Allowed: the port limit applies if any embedding is ours.
                other => verdict = verdict.max(other),
            }
        }
        verdict
    }

    /// `ip` is canonical (no mapped or compatible IPv6 forms).
    fn judge_one(&self, ip: IpAddr, own: &[IpAddr]) -> Verdict {
        let unspecified = match ip {
            IpAddr::V4(v4) => v4.octets()[0] == 0,
            IpAddr::V6(v6) => v6.is_unspecified(),
        };
        if unspecified {
            return Verdict::Refused;
        }
        let allowed = self.allowed.iter().any(|r| r.contains(ip));
        let denied = !allowed && self.denied.iter().any(|r| r.contains(ip));
        if own.contains(&ip) && !denied {
            // Named by --allowed-peer-ip, or loopback under --allow-loopback-peers: the
            // operator opened it fully.
            let opened = allowed || (ip.is_loopback() && self.allow_loopback);
            return if opened {
                Verdict::Allowed
            } else {
                Verdict::Own
            };
        }
        let ok = if ip.is_loopback() {
            self.allow_loopback
        } else {
            allowed || (!denied && !builtin_refused(ip))
        };
        if ok {
            Verdict::Allowed
        } else {
            Verdict::Refused
        }
    }
}

#[cfg(test)]
mod tests;
