//! Peer address policy (RFC 8656 §21.3; coturn's `--allow-loopback-peers`,
//! `--denied-peer-ip`, `--allowed-peer-ip`).
//!
//! Owns: deciding whether a peer IP may be relayed to. Must not: know about allocations.
//!
//! Order of the checks, first match wins:
//! 1. IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) IPv6 addresses are
//!    judged as the IPv4 address they carry (the CVE-2020-26262 bypass class).
//! 2. Unspecified (`0.0.0.0/8`, `::`): always refused; nothing overrides it.
//! 3. Loopback (`127.0.0.0/8`, `::1`): refused unless `--allow-loopback-peers` (as in coturn,
//!    `--allowed-peer-ip` does not override this).
//! 4. In an `--allowed-peer-ip` range: allowed (allowed takes precedence over denied).
//! 5. In a `--denied-peer-ip` range: refused.
//! 6. Built-in refusals: multicast, broadcast and reserved `240.0.0.0/4`, link-local, Teredo
//!    `2001::/32`, 6to4 `2002::/16`, private (RFC 1918), shared `100.64.0.0/10`, ULA
//!    `fc00::/7` and site-local `fec0::/10`. Private ranges need `--allowed-peer-ip`.
//! 7. Otherwise allowed.

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
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_multicast()
                || (s[0] & 0xFFC0) == 0xFE80 // link-local
                || (s[0] & 0xFFC0) == 0xFEC0 // site-local
                || (s[0] & 0xFE00) == 0xFC00 // ULA
                || (s[0] == 0x2001 && s[1] == 0) // Teredo
                || s[0] == 0x2002 // 6to4
        }
    }
}

impl PeerPolicy {
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let unspecified = match ip {
            IpAddr::V4(v4) => v4.octets()[0] == 0,
            IpAddr::V6(v6) => v6.is_unspecified(),
        };
        if unspecified {
            return false;
        }
        if ip.is_loopback() {
            return self.allow_loopback;
        }
        if self.allowed.iter().any(|r| r.contains(ip)) {
            return true;
        }
        if self.denied.iter().any(|r| r.contains(ip)) {
            return false;
        }
        !builtin_refused(ip)
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
            "198.51.100.7",
            "8.8.8.8",
            "172.32.0.1",
            "2001:db8::1",
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
