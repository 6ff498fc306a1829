//! Ethernet/IPv4/IPv6/UDP frames built and checked from scratch: the reference the XDP
//! program's output is compared with. Checksums here are computed over whole headers and
//! payloads (RFC 768, RFC 791, RFC 8200 §8.1), never incrementally, so they are independent
//! of the program's arithmetic.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

pub type Mac = [u8; 6];

/// Fields of a UDP datagram in a frame that the program keeps, moves or rewrites.
#[derive(Clone, Debug)]
pub struct Udp {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 TOS or IPv6 traffic class.
    pub tos: u8,
    /// IPv4 identification.
    pub id: u16,
    /// IPv4 don't-fragment bit.
    pub df: bool,
    /// IPv6 flow label.
    pub flow: u32,
    /// Send a zero UDP checksum ("none", IPv4 only).
    pub no_checksum: bool,
}

impl Udp {
    pub fn new(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Udp {
        Udp {
            src_mac: [0x02, 0, 0, 0, 0xee, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0xee, 0x02],
            src,
            dst,
            payload: payload.to_vec(),
            ttl: 61,
            tos: 0,
            id: 0x1234,
            df: true,
            flow: 0x12345,
            no_checksum: false,
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        let udp_len = 8 + self.payload.len();
        let mut udp = Vec::with_capacity(udp_len);
        udp.extend_from_slice(&self.src.port().to_be_bytes());
        udp.extend_from_slice(&self.dst.port().to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&self.payload);
        if !self.no_checksum {
            let c = udp_checksum(self.src.ip(), self.dst.ip(), &udp);
            udp[6..8].copy_from_slice(&c.to_be_bytes());
        }
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[1] = self.tos;
                ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&self.id.to_be_bytes());
                ip[6] = if self.df { 0x40 } else { 0 };
                ip[8] = self.ttl;
                ip[9] = 17;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = checksum(&[&ip]);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let vtf = (6u32 << 28) | (u32::from(self.tos) << 20) | (self.flow & 0xfffff);
                f.extend_from_slice(&vtf.to_be_bytes());
                f.extend_from_slice(&(udp_len as u16).to_be_bytes());
                f.push(17);
                f.push(self.ttl);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&udp);
        f
    }
}

/// One's complement sum of the concatenation of `parts`, complemented (RFC 1071).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut sum: u64 = 0;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u64::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: IpAddr, dst: IpAddr, udp_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, 17]);
            p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(udp_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => panic!("mixed families"),
    }
    p
}

/// The UDP checksum of `udp` (header with a zero checksum field, then payload).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let c = checksum(&[&pseudo_header(src, dst, udp.len()), udp]);
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// A frame taken apart, with every length and checksum verified on the way.
#[derive(Debug)]
pub struct Parsed {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ttl: u8,
    pub udp_checksum: u16,
    pub payload: Vec<u8>,
}

/// Parses an Ethernet frame holding one IPv4 or IPv6 UDP datagram and nothing after it;
/// panics (failing the test) on any wrong length or checksum.
pub fn parse(f: &[u8]) -> Parsed {
    let dst_mac: Mac = f[0..6].try_into().unwrap();
    let src_mac: Mac = f[6..12].try_into().unwrap();
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let (src, dst, ttl, udp) = match ethertype {
        0x0800 => {
            let ip = &f[14..34];
            assert_eq!(ip[0], 0x45, "IPv4 without options");
            assert_eq!(checksum(&[ip]), 0, "IPv4 header checksum");
            let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            assert_eq!(14 + tot, f.len(), "IPv4 total length = frame");
            assert_eq!(ip[9], 17);
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), ip[8], &f[34..])
        }
        0x86dd => {
            let ip = &f[14..54];
            assert_eq!(ip[0] >> 4, 6);
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            assert_eq!(54 + plen, f.len(), "IPv6 payload length = frame");
            assert_eq!(ip[6], 17);
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), ip[7], &f[54..])
        }
        other => panic!("ethertype {other:#x}"),
    };
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        udp.len(),
        "UDP length"
    );
    let csum = u16::from_be_bytes([udp[6], udp[7]]);
    if csum != 0 || src.is_ipv6() {
        let mut zeroed = udp.to_vec();
        zeroed[6] = 0;
        zeroed[7] = 0;
        assert_eq!(csum, udp_checksum(src, dst, &zeroed), "UDP checksum");
    }
    Parsed {
        dst_mac,
        src_mac,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        ttl,
        udp_checksum: csum,
        payload: udp[8..].to_vec(),
    }
}

/// ChannelData: header, payload, then `pad` (the padding bytes, any values).
pub fn channel_data(channel: u16, payload: &[u8], pad: &[u8]) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v.extend_from_slice(pad);
    v
}

/// `len` bytes of a pattern that differs from byte to byte.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
