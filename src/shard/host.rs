//! What the host offers a server that was not told: default listening and relay
//! addresses, the server's own addresses, the split of the relay port range over the
//! shards, and the open file limit.
//!
//! Owns only those defaults (found by routing lookups, no packet sent); must not open
//! listening or relay sockets.

use crate::config::Config;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};

/// The address relay sockets bind to and XOR-RELAYED-ADDRESS shows, when `--relay-ip` is
/// not given: the listening IP if it is specific, else the host's primary IPv4 address
/// (found by routing, no packet sent), else loopback.
pub(super) fn default_relay_ip(listen: IpAddr) -> IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    let routed = UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        // connect() on UDP only consults the routing table; nothing is sent.
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    });
    match routed {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => {
            tracing::warn!("no --relay-ip and no routable address found: relaying on 127.0.0.1");
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }
}

/// Where to listen without `--listening-ip`: every IPv4 address and, where the host has
/// IPv6, every IPv6 address (as coturn does).
pub(super) fn default_listen_ips() -> Vec<IpAddr> {
    let mut ips = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
    let has_ipv6 = std::fs::read_to_string("/proc/net/if_inet6")
        .is_ok_and(|s| !s.trim().is_empty())
        && UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).is_ok();
    if has_ipv6 {
        ips.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    ips
}

/// The IPv6 relay address when none is given: a specific IPv6 listening address, else the
/// host's primary global IPv6 address (found by routing, no packet sent), else none (IPv6
/// relays refused with 440).
pub(super) fn default_relay_ip_v6(listen: IpAddr) -> Option<IpAddr> {
    if !listen.is_unspecified() {
        return Some(listen);
    }
    let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).ok()?;
    // connect() on UDP only consults the routing table; nothing is sent.
    s.connect("[2001:db8::1]:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    (!ip.is_unspecified() && !ip.is_loopback() && !link_local).then_some(ip)
}

/// Splits `min..=max` into `n` disjoint contiguous slices.
pub fn port_slices(min: u16, max: u16, n: usize) -> Vec<(u16, u16)> {
    let total = u32::from(max) - u32::from(min) + 1;
    let n = (n as u32).clamp(1, total);
    let per = total / n;
    (0..n)
        .map(|i| {
            let start = u32::from(min) + i * per;
            let end = if i == n - 1 {
                u32::from(max)
            } else {
                start + per - 1
            };
            (start as u16, end as u16)
        })
        .collect()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as servers do: every allocation holds
/// a relay socket, so the usual soft limit of 1024 would cap a server at about a thousand
/// allocations. Logs the resulting limit, and warns when the relay port range is larger.
pub(super) fn raise_file_limit(relay_ports: usize) {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("cannot read RLIMIT_NOFILE: {e}");
            return;
        }
    };
    let limit = if soft < hard {
        match rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, "cannot raise RLIMIT_NOFILE: {e}");
                soft
            }
        }
    } else {
        soft
    };
    // Listening sockets, rings, the log and Redis need a few more descriptors.
    let needed = relay_ports as u64 + 64;
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "open file limit is below the relay port range: allocations will fail with 508 once descriptors run out (raise the hard limit, e.g. LimitNOFILE= in the systemd unit)"
        );
    } else {
        tracing::info!(limit, "open file limit");
    }
}

/// Every IP this server listens or relays on, or advertises (all interface addresses when
/// it listens or relays on a wildcard): the core lets clients reach these only on relay ports.
pub(super) fn own_addresses(
    config: &Config,
    listen: &[IpAddr],
    relays: &[Option<IpAddr>],
) -> Vec<IpAddr> {
    let external = config
        .external_ips
        .iter()
        .flat_map(|(public, private)| [Some(*public), *private]);
    let configured: Vec<IpAddr> = listen
        .iter()
        .copied()
        .map(Some)
        .chain(relays.iter().copied())
        .chain(external)
        .flatten()
        .collect();
    let mut own: Vec<IpAddr> = configured
        .iter()
        .copied()
        .filter(|ip| !ip.is_unspecified())
        .collect();
    if configured.iter().any(IpAddr::is_unspecified) {
        if let Ok(interfaces) = nix::ifaddrs::getifaddrs() {
            own.extend(interfaces.filter_map(|i| {
                let a = i.address?;
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(std::net::SocketAddrV4::from(*s).ip().to_owned()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            }));
        }
    }
    let mut own: Vec<IpAddr> = own.into_iter().map(|ip| ip.to_canonical()).collect();
    own.sort();
    own.dedup();
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_slices_are_disjoint_and_cover_the_range() {
        let s = port_slices(49152, 65535, 3);
        assert_eq!(s.first().unwrap().0, 49152);
        assert_eq!(s.last().unwrap().1, 65535);
        for w in s.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0);
        }
        assert_eq!(port_slices(1000, 1001, 4).len(), 2, "never an empty slice");
        assert_eq!(port_slices(5, 5, 1), vec![(5, 5)]);
    }
}
