//! Which local address a datagram on a wildcard listener (0.0.0.0, ::) was sent to, and
//! how to answer from that same address (IP_PKTINFO / IPV6_RECVPKTINFO).
//!
//! On a host with several addresses a client talks to one of them; a reply from whatever
//! address routing picks would not reach a client whose NAT or socket expects the address
//! it used. Owns the socket option and the control-message bytes (parsed and built here
//! without `unsafe`); must not decide anything about the datagram itself.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

const ALIGN: usize = std::mem::size_of::<usize>();
const HEADER: usize = align(std::mem::size_of::<libc::cmsghdr>());
const IN_PKTINFO: usize = std::mem::size_of::<libc::in_pktinfo>();
const IN6_PKTINFO: usize = std::mem::size_of::<libc::in6_pktinfo>();

const fn align(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// Control bytes a receive needs room for: one packet-info message of either family.
pub(crate) const CONTROL_LEN: usize = HEADER + align(IN6_PKTINFO);

/// Control bytes of the source message a send on a wildcard listener carries, aligned for
/// a `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct SourceControl(pub [u8; CONTROL_LEN]);

/// Asks the kernel to report each datagram's destination address on `socket`, bound at
/// the wildcard address `addr`.
pub(crate) fn enable(socket: &UdpSocket, addr: SocketAddr) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    match addr {
        SocketAddr::V4(_) => setsockopt(socket, sockopt::Ipv4PacketInfo, &true),
        SocketAddr::V6(_) => setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true),
    }
    .map_err(io::Error::from)
}

/// The destination address in the control bytes of a received datagram.
pub(crate) fn destination(control: &[u8]) -> Option<IpAddr> {
    let mut rest = control;
    while rest.len() >= HEADER {
        let len = usize::from_ne_bytes(rest[..ALIGN].try_into().ok()?);
        let level = i32::from_ne_bytes(rest[ALIGN..ALIGN + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(rest[ALIGN + 4..ALIGN + 8].try_into().ok()?);
        if len < HEADER || len > rest.len() {
            return None;
        }
        let data = &rest[HEADER..len];
        match (level, kind) {
            // in_pktinfo: ifindex (4), spec_dst (4), addr (4): the header's destination.
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data.len() >= IN_PKTINFO => {
                let ip: [u8; 4] = data[8..12].try_into().ok()?;
                return Some(IpAddr::V4(Ipv4Addr::from(ip)));
            }
            // in6_pktinfo: addr (16), ifindex (4).
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if data.len() >= IN6_PKTINFO => {
                let ip: [u8; 16] = data[..16].try_into().ok()?;
                return Some(IpAddr::V6(Ipv6Addr::from(ip)));
            }
            _ => {}
        }
        rest = rest.get(align(len)..)?;
    }
    None
}

/// The control message that makes a send leave from `source`; returns it and its length.
pub(crate) fn source(source: IpAddr) -> (SourceControl, usize) {
    let mut out = SourceControl([0; CONTROL_LEN]);
    let (level, kind, len) = match source {
        IpAddr::V4(ip) => {
            // in_pktinfo.ipi_spec_dst is the source address of the reply.
            out.0[HEADER + 4..HEADER + 8].copy_from_slice(&ip.octets());
            (libc::IPPROTO_IP, libc::IP_PKTINFO, HEADER + IN_PKTINFO)
        }
        IpAddr::V6(ip) => {
            out.0[HEADER..HEADER + 16].copy_from_slice(&ip.octets());
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, HEADER + IN6_PKTINFO)
        }
    };
    out.0[..ALIGN].copy_from_slice(&len.to_ne_bytes());
    out.0[ALIGN..ALIGN + 4].copy_from_slice(&level.to_ne_bytes());
    out.0[ALIGN + 4..ALIGN + 8].copy_from_slice(&kind.to_ne_bytes());
    (out, align(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn sizes_match_the_kernel_macros() {
        // CMSG_SPACE(sizeof(struct in6_pktinfo)) and CMSG_LEN(sizeof(struct in_pktinfo)).
        assert_eq!(CONTROL_LEN, 40);
        assert_eq!(HEADER + IN_PKTINFO, 28);
    }

    #[test]
    fn a_source_message_reads_back_as_the_destination_family() {
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let (control, len) = source(v6);
        assert_eq!(destination(&control.0[..len]), Some(v6));
        // For IPv4 the source goes in spec_dst, the destination is read from addr.
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let (mut control, len) = source(v4);
        control.0[HEADER + 8..HEADER + 12].copy_from_slice(&[192, 0, 2, 10]);
        assert_eq!(
            destination(&control.0[..len]),
            Some("192.0.2.10".parse().unwrap())
        );
    }

    #[test]
    fn malformed_control_bytes_give_nothing() {
        assert_eq!(destination(&[]), None);
        assert_eq!(destination(&[0xff; CONTROL_LEN]), None);
        let (mut control, len) = source("192.0.2.9".parse().unwrap());
        control.0[..ALIGN].copy_from_slice(&(CONTROL_LEN * 2).to_ne_bytes());
        assert_eq!(destination(&control.0[..len]), None);
    }

    #[test]
    fn the_kernel_reports_the_destination_on_a_wildcard_socket() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
        use std::os::fd::AsRawFd;
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        enable(&socket, socket.local_addr().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"x", ("127.0.0.2", port)).unwrap();
        let mut buf = [0u8; 8];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
        let msg = recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let seen = msg.cmsgs().unwrap().find_map(|c| match c {
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))
            }
            _ => None,
        });
        assert_eq!(seen, Some(Ipv4Addr::new(127, 0, 0, 2)));
    }
}
