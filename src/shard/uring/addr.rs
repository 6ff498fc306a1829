//! Socket addresses as the kernel lays them out in a RecvMsg name field.
//!
//! Owns only parsing; must not allocate or touch sockets.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A socket address as the kernel wrote it into a RecvMsg name field.
pub(super) fn sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockAddr;

    #[test]
    fn sockaddr_parses_both_families() {
        let v4: SocketAddr = "192.0.2.7:3478".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        for addr in [v4, v6] {
            let raw = SockAddr::from(addr);
            // SAFETY: `raw` holds `raw.len()` initialised bytes of sockaddr storage.
            let bytes = unsafe {
                std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), raw.len() as usize)
            };
            let mut name = [0u8; 28];
            name[..bytes.len()].copy_from_slice(bytes);
            assert_eq!(sockaddr(&name), Some(addr));
        }
        assert_eq!(sockaddr(&[0u8; 28]), None);
    }
}
