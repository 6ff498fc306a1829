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
//!    the relay range on it, unless `--allowed-peer-ip` names the address (then it is an
//!    ordinary peer). Two clients of one server reach each other's relay addresses this
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
            return if allowed {
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
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(s: &str) -> IpRange {
        s.parse().unwrap()
    }

    #[test]
    fn default_refusals_including_bypass_forms() {
        let p = PeerPolicy::default();
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
            "239.255.255.255",
            "ff02::1",
            "255.255.255.255",
            "240.0.0.1",
            "169.254.1.1",
            "fe80::1",
            "2001:0::1",
            "2002:c000:0204::1",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
        ] {
            assert!(!p.is_allowed(ip(bad)), "{bad} must be refused");
        }
        for good in [
            "198.51.101.7",
            "8.8.8.8",
            "172.32.0.1",
            "2001:db9::1",
            "2600::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(p.is_allowed(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn loopback_option_and_precedence() {
        let mut p = PeerPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(p.is_allowed(ip("127.0.0.1")));
        assert!(p.is_allowed(ip("::1")));
        assert!(p.is_allowed(ip("::ffff:127.0.0.1")));
        assert!(!p.is_allowed(ip("0.0.0.0")), "unspecified is never allowed");
        p.allowed.push(range("0.0.0.0/8"));
        assert!(
            !p.is_allowed(ip("0.0.0.1")),
            "not even when listed as allowed"
        );
        // Allowed loopback is not granted by --allowed-peer-ip alone.
        let q = PeerPolicy {
            allowed: vec![range("127.0.0.0/8")],
            ..Default::default()
        };
        assert!(!q.is_allowed(ip("127.0.0.1")));
        // allowed beats denied and the private refusal.
        let r = PeerPolicy {
            allowed: vec![range("10.0.0.0-10.0.0.255")],
            denied: vec![range("10.0.0.0/8"), range("198.51.100.0/24")],
            ..Default::default()
        };
        assert!(r.is_allowed(ip("10.0.0.9")));
        assert!(!r.is_allowed(ip("10.0.1.9")));
        assert!(!r.is_allowed(ip("198.51.100.7")));
        assert!(r.is_allowed(ip("198.51.101.7")));
    }

    /// Every address form of CVE-2020-26262 and its neighbours, at the edges of each range,
    /// in plain, IPv4-mapped and IPv4-compatible spellings.
    #[test]
    fn cve_2020_26262_forms_at_range_edges() {
        let p = PeerPolicy::default();
        let v4_refused = [
            "0.0.0.0",
            "0.0.0.1",
            "0.255.255.255",
            "127.0.0.0",
            "127.255.255.255",
            "224.0.0.0",
            "239.255.255.255",
            "255.255.255.255",
            "169.254.0.0",
            "169.254.255.255",
        ];
        for a in v4_refused {
            assert!(!p.is_allowed(ip(a)), "{a} must be refused");
            let mapped = format!("::ffff:{a}");
            assert!(!p.is_allowed(ip(&mapped)), "{mapped} must be refused");
        }
        for a in [
            "::",
            "::1",
            "::0.0.0.0",
            "::0.0.0.1",
            "::127.0.0.1",
            "ff00::",
            "ff02::1",
            "ff0e::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::",
            "fe80::1",
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(!p.is_allowed(ip(a)), "{a} must be refused");
        }
        // Just outside each range.
        for a in [
            "1.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "223.255.255.255",
            "169.253.255.255",
            "169.255.0.0",
            "::ffff:1.0.0.0",
            "fec0::1",
        ] {
            let refused_elsewhere = a == "fec0::1"; // site-local: refused by its own rule
            assert_eq!(p.is_allowed(ip(a)), !refused_elsewhere, "{a}");
        }
        // --allow-loopback-peers opens loopback in every spelling and nothing else.
        let lo = PeerPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
        ] {
            assert!(lo.is_allowed(ip(a)), "{a} with --allow-loopback-peers");
        }
        for a in [
            "0.0.0.0",
            "::",
            "::ffff:0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(
                !lo.is_allowed(ip(a)),
                "{a} even with --allow-loopback-peers"
            );
        }
    }

    /// coturn's precedence: an `--allowed-peer-ip` range wins over a `--denied-peer-ip`
    /// range that contains the same address, whatever the order they were given in; neither
    /// reaches unspecified addresses, and only `--allow-loopback-peers` opens loopback.
    #[test]
    fn allowed_over_denied_in_every_spelling() {
        let p = PeerPolicy {
            allowed: vec![range("198.51.100.10-198.51.100.20"), range("2001:db8::/64")],
            denied: vec![range("198.51.100.0/24"), range("2001:db8::/32")],
            ..Default::default()
        };
        assert!(p.is_allowed(ip("198.51.100.15")));
        assert!(
            p.is_allowed(ip("::ffff:198.51.100.15")),
            "mapped form of an allowed address"
        );
        assert!(!p.is_allowed(ip("198.51.100.21")));
        assert!(
            !p.is_allowed(ip("::ffff:198.51.100.21")),
            "mapped form of a denied address"
        );
        assert!(p.is_allowed(ip("2001:db8::5")));
        assert!(!p.is_allowed(ip("2001:db8:1::5")));
        // Allowed opens built-in refusals other than unspecified and loopback.
        let q = PeerPolicy {
            allowed: vec![
                range("169.254.0.0/16"),
                range("224.0.0.0/4"),
                range("0.0.0.0/0"),
                range("::/0"),
            ],
            ..Default::default()
        };
        assert!(q.is_allowed(ip("169.254.1.1")));
        assert!(q.is_allowed(ip("224.0.0.1")));
        assert!(q.is_allowed(ip("10.1.2.3")));
        assert!(q.is_allowed(ip("fe80::1")));
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::ffff:0.0.0.0",
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                !q.is_allowed(ip(a)),
                "{a} is not opened by --allowed-peer-ip"
            );
        }
        // A denied range covers the mapped spellings of its addresses too.
        let d = PeerPolicy {
            denied: vec![range("203.0.113.0/24")],
            ..Default::default()
        };
        assert!(!d.is_allowed(ip("203.0.113.9")));
        assert!(!d.is_allowed(ip("::ffff:203.0.113.9")));
        assert!(d.is_allowed(ip("203.0.114.9")));
    }

    /// The ranges coturn's documentation recommends refusing, each at its edges, in plain,
    /// mapped and compatible spellings (and NAT64 by what it embeds).
    #[test]
    fn recommended_ranges_at_their_edges() {
        let p = PeerPolicy::default();
        let v4 = [
            // (first, last, just below, just above)
            ("192.0.0.0", "192.0.0.255", "191.255.255.255", "192.0.1.0"),
            ("192.0.2.0", "192.0.2.255", "192.0.1.255", "192.0.3.0"),
            (
                "192.88.99.0",
                "192.88.99.255",
                "192.88.98.255",
                "192.88.100.0",
            ),
            (
                "198.18.0.0",
                "198.19.255.255",
                "198.17.255.255",
                "198.20.0.0",
            ),
            (
                "198.51.100.0",
                "198.51.100.255",
                "198.51.99.255",
                "198.51.101.0",
            ),
            (
                "203.0.113.0",
                "203.0.113.255",
                "203.0.112.255",
                "203.0.114.0",
            ),
        ];
        for (first, last, below, above) in v4 {
            for a in [first, last] {
                for form in [a.to_string(), format!("::ffff:{a}"), format!("::{a}")] {
                    assert!(!p.is_allowed(ip(&form)), "{form} must be refused");
                }
            }
            for a in [below, above] {
                for form in [a.to_string(), format!("::ffff:{a}")] {
                    assert!(p.is_allowed(ip(&form)), "{form} must be allowed");
                }
            }
        }
        let v6 = [
            (
                "100::",
                "100::ffff:ffff:ffff:ffff",
                "ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "100:0:0:1::",
            ),
            (
                "2001::",
                "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
                "2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "2001:200::",
            ),
            (
                "2001:db8::",
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
                "2001:db9::",
            ),
            (
                "64:ff9b::",
                "64:ff9b::ffff:ffff",
                "64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff",
                "64:ff9b::1:0:0",
            ),
            (
                "64:ff9b:1::",
                "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
                "64:ff9b:0:ffff:ffff:ffff:ffff:ffff",
                "64:ff9b:2::",
            ),
        ];
        for (first, last, below, above) in v6 {
            assert!(!p.is_allowed(ip(first)), "{first} must be refused");
            assert!(!p.is_allowed(ip(last)), "{last} must be refused");
            assert!(p.is_allowed(ip(below)), "{below} must be allowed");
            assert!(p.is_allowed(ip(above)), "{above} must be allowed");
        }
    }

    #[test]
    fn nat64_is_judged_by_the_ipv4_it_embeds() {
        let open = PeerPolicy {
            allowed: vec![range("64:ff9b::/96"), range("64:ff9b:1::/48")],
            ..Default::default()
        };
        // Opened, a NAT64 address reaching a public IPv4 address is allowed...
        assert!(open.is_allowed(ip("64:ff9b::8.8.8.8")));
        assert!(open.is_allowed(ip("64:ff9b:1::8.8.8.8")));
        // ...but not one reaching what the IPv4 policy refuses, in any embedding.
        for a in [
            "64:ff9b::127.0.0.1",
            "64:ff9b::0.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::169.254.1.1",
            "64:ff9b::198.51.100.1",
            "64:ff9b:1::10.0.0.1",     // /96 embedding
            "64:ff9b:1:a00:1::",       // /48 embedding of 10.0.0.1
            "64:ff9b:1:a:0:1::",       // /56 embedding of 10.0.0.1
            "64:ff9b:1:0:a:1::",       // /64 embedding of 10.0.0.1
            "64:ff9b:1:7f00:1:ffff::", // /48 embedding of 127.0.0.1
        ] {
            assert!(!open.is_allowed(ip(a)), "{a} must be refused");
        }
        // Opening the IPv4 side alone does not open NAT64.
        let v4_only = PeerPolicy {
            allowed: vec![range("10.0.0.0/8")],
            ..Default::default()
        };
        assert!(!v4_only.is_allowed(ip("64:ff9b::10.0.0.1")));
        // Denying an IPv4 range denies its NAT64 forms, even with NAT64 opened.
        let denied = PeerPolicy {
            allowed: vec![range("64:ff9b::/96")],
            denied: vec![range("8.8.8.0/24")],
            ..Default::default()
        };
        assert!(!denied.is_allowed(ip("64:ff9b::8.8.8.8")));
        assert!(denied.is_allowed(ip("64:ff9b::8.8.4.4")));
    }

    /// The server's own addresses are reachable (as `Own`) whatever the loopback and
    /// private refusals say, in their plain and mapped spellings; not through 6to4, Teredo
    /// or NAT64 spellings (refused as those ranges are), and not when an operator's
    /// `--denied-peer-ip` names them. `--allowed-peer-ip` makes them ordinary peers.
    #[test]
    fn own_addresses_in_every_spelling() {
        let own = [
            ip("10.0.0.5"),
            ip("127.0.0.1"),
            ip("fd00::5"),
            ip("198.51.100.9"),
        ];
        let p = PeerPolicy::default();
        for a in [
            "10.0.0.5",
            "::ffff:10.0.0.5",
            "::10.0.0.5",
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "fd00::5",
            "198.51.100.9",
        ] {
            assert_eq!(p.judge(ip(a), &own), Verdict::Own, "{a}");
        }
        for a in [
            "10.0.0.6",
            "10.0.0.4",
            "127.0.0.2",
            "fd00::6",
            "2002:a00:5::1",     // 6to4 of 10.0.0.5
            "2001:0:a00:5::",    // Teredo with server 10.0.0.5
            "2001::f5ff:fffa",   // Teredo with client 10.0.0.5 (obfuscated)
            "64:ff9b::10.0.0.5", // NAT64, not opened
            "0.0.0.0",
        ] {
            assert_eq!(p.judge(ip(a), &own), Verdict::Refused, "{a}");
        }
        assert_eq!(p.judge(ip("8.8.8.8"), &own), Verdict::Allowed);
        // NAT64 opened: its embedded own address is own.
        let nat = PeerPolicy {
            allowed: vec![range("64:ff9b::/96")],
            ..Default::default()
        };
        assert_eq!(nat.judge(ip("64:ff9b::10.0.0.5"), &own), Verdict::Own);
        // Named by --allowed-peer-ip: an ordinary peer (every port).
        let named = PeerPolicy {
            allowed: vec![range("10.0.0.5")],
            ..Default::default()
        };
        assert_eq!(named.judge(ip("::ffff:10.0.0.5"), &own), Verdict::Allowed);
        // Named by --denied-peer-ip: refused.
        let denied = PeerPolicy {
            denied: vec![range("10.0.0.0/24")],
            ..Default::default()
        };
        assert_eq!(denied.judge(ip("10.0.0.5"), &own), Verdict::Refused);
        assert_eq!(denied.judge(ip("127.0.0.1"), &own), Verdict::Own);
    }

    #[test]
    fn range_syntax() {
        assert_eq!(
            range("1.2.3.4"),
            IpRange {
                start: ip("1.2.3.4"),
                end: ip("1.2.3.4")
            }
        );
        assert_eq!(
            range("10.1.2.3/8"),
            IpRange {
                start: ip("10.0.0.0"),
                end: ip("10.255.255.255")
            }
        );
        assert_eq!(range("0.0.0.0/0").end, ip("255.255.255.255"));
        assert_eq!(range("::/0").start, ip("::"));
        assert_eq!(
            range("::/0").end,
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        assert_eq!(range("2001:db8::1/128").end, ip("2001:db8::1"));
        assert_eq!(range("10.0.0.1/32").start, ip("10.0.0.1"));
        assert_eq!(
            range("2001:db8::/32").end,
            ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        assert!(range("::ffff:10.0.0.1").contains(ip("10.0.0.1")));
        assert!(range("10.0.0.0/8").contains(ip("::ffff:10.9.9.9")));
        assert!(!range("10.0.0.0/8").contains(ip("2001:db8::1")));
        for bad in [
            "",
            "x",
            "1.2.3.4-::1",
            "1.2.3.9-1.2.3.1",
            "1.2.3.4/33",
            "::/129",
            "1.2.3.4/x",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }
}
