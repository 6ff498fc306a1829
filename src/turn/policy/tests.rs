//! The peer policy at the edges of every range, in every address spelling.

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
    // --allow-loopback-peers opens an own loopback address fully, and nothing else.
    let lo = PeerPolicy {
        allow_loopback: true,
        ..Default::default()
    };
    assert_eq!(lo.judge(ip("::ffff:127.0.0.1"), &own), Verdict::Allowed);
    assert_eq!(lo.judge(ip("10.0.0.5"), &own), Verdict::Own);
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
