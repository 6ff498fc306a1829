//! Attribute type codes and typed value codecs (RFC 8489 §14, RFC 8656 §18, RFC 6156).
//!
//! Every `decode_*` takes the attribute *value* (without the 4-byte TLV header) and returns
//! `Error::BadAttribute(type)` for a malformed one; none of them may panic on any input.

use super::{Error, TransactionId, MAGIC_COOKIE};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAPPED_ADDRESS: u16 = 0x0001;
pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ERROR_CODE: u16 = 0x0009;
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const CHANNEL_NUMBER: u16 = 0x000C;
pub const LIFETIME: u16 = 0x000D;
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA: u16 = 0x0013;
pub const REALM: u16 = 0x0014;
pub const NONCE: u16 = 0x0015;
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const EVEN_PORT: u16 = 0x0018;
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
pub const DONT_FRAGMENT: u16 = 0x001A;
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const RESERVATION_TOKEN: u16 = 0x0022;
pub const SOFTWARE: u16 = 0x8022;
pub const ALTERNATE_SERVER: u16 = 0x8023;
pub const FINGERPRINT: u16 = 0x8028;
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;

/// REQUESTED-TRANSPORT protocol numbers.
pub const TRANSPORT_UDP: u8 = 17;
pub const TRANSPORT_TCP: u8 = 6;
/// REQUESTED-ADDRESS-FAMILY values.
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;

/// Whether uturn understands this attribute type. Comprehension-required types
/// (< 0x8000) that are not known make the core answer 420 Unknown Attribute.
pub fn is_known(typ: u16) -> bool {
    matches!(
        typ,
        MAPPED_ADDRESS
            | USERNAME
            | MESSAGE_INTEGRITY
            | ERROR_CODE
            | UNKNOWN_ATTRIBUTES
            | CHANNEL_NUMBER
            | LIFETIME
            | XOR_PEER_ADDRESS
            | DATA
            | REALM
            | NONCE
            | XOR_RELAYED_ADDRESS
            | REQUESTED_ADDRESS_FAMILY
            | EVEN_PORT
            | REQUESTED_TRANSPORT
            | DONT_FRAGMENT
            | MESSAGE_INTEGRITY_SHA256
            | XOR_MAPPED_ADDRESS
            | RESERVATION_TOKEN
            | SOFTWARE
            | ALTERNATE_SERVER
            | FINGERPRINT
            | ADDITIONAL_ADDRESS_FAMILY
    )
}

fn xor_address(typ: u16, value: &[u8], tid: Option<&TransactionId>) -> Result<SocketAddr, Error> {
    let bad = Error::BadAttribute(typ);
    if value.len() < 4 {
        return Err(bad);
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([value[2], value[3]]);
    if tid.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match (value[1], value.len()) {
        (0x01, 8) => {
            let mut ip = [value[4], value[5], value[6], value[7]];
            if tid.is_some() {
                for (b, c) in ip.iter_mut().zip(cookie) {
                    *b ^= c;
                }
            }
            Ok(SocketAddr::new(Ipv4Addr::from(ip).into(), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&value[4..20]);
            if let Some(tid) = tid {
                for (i, b) in ip.iter_mut().enumerate() {
                    *b ^= if i < 4 { cookie[i] } else { tid[i - 4] };
                }
            }
            Ok(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        _ => Err(bad),
    }
}

/// MAPPED-ADDRESS / ALTERNATE-SERVER family+port+address value.
pub fn decode_address(typ: u16, value: &[u8]) -> Result<SocketAddr, Error> {
    xor_address(typ, value, None)
}

/// XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS (RFC 8489 §14.2).
pub fn decode_xor_address(
    typ: u16,
    value: &[u8],
    tid: &TransactionId,
) -> Result<SocketAddr, Error> {
    xor_address(typ, value, Some(tid))
}

/// Encodes an address value (family, port, address) into `out`, xored when `tid` is given.
pub fn encode_address(addr: SocketAddr, tid: Option<&TransactionId>, out: &mut Vec<u8>) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = addr.port();
    if tid.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0, 0x01]);
            out.extend_from_slice(&port.to_be_bytes());
            let mut o = ip.octets();
            if tid.is_some() {
                for (b, c) in o.iter_mut().zip(cookie) {
                    *b ^= c;
                }
            }
            out.extend_from_slice(&o);
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0, 0x02]);
            out.extend_from_slice(&port.to_be_bytes());
            let mut o = ip.octets();
            if let Some(tid) = tid {
                for (i, b) in o.iter_mut().enumerate() {
                    *b ^= if i < 4 { cookie[i] } else { tid[i - 4] };
                }
            }
            out.extend_from_slice(&o);
        }
    }
}

/// A 4-byte big-endian value (LIFETIME).
pub fn decode_u32(typ: u16, value: &[u8]) -> Result<u32, Error> {
    let v: [u8; 4] = value.try_into().map_err(|_| Error::BadAttribute(typ))?;
    Ok(u32::from_be_bytes(v))
}

/// CHANNEL-NUMBER: 16-bit number followed by 16 RFFU bits.
pub fn decode_channel_number(value: &[u8]) -> Result<u16, Error> {
    match value {
        [a, b, _, _] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(Error::BadAttribute(CHANNEL_NUMBER)),
    }
}

/// REQUESTED-TRANSPORT: protocol byte followed by 3 RFFU bytes.
pub fn decode_requested_transport(value: &[u8]) -> Result<u8, Error> {
    match value {
        [p, _, _, _] => Ok(*p),
        _ => Err(Error::BadAttribute(REQUESTED_TRANSPORT)),
    }
}

/// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY: family byte + 3 RFFU bytes.
/// Returns the raw family byte; the core decides whether it supports it (440).
pub fn decode_address_family(typ: u16, value: &[u8]) -> Result<u8, Error> {
    match value {
        [f, _, _, _] => Ok(*f),
        _ => Err(Error::BadAttribute(typ)),
    }
}

/// EVEN-PORT: one byte whose top bit is R (reserve the next port too).
pub fn decode_even_port(value: &[u8]) -> Result<bool, Error> {
    // One byte on the wire; some clients send the padded 4 bytes as the value.
    match value {
        [b] | [b, _, _, _] => Ok(b & 0x80 != 0),
        _ => Err(Error::BadAttribute(EVEN_PORT)),
    }
}

/// RESERVATION-TOKEN: 8 bytes.
pub fn decode_reservation_token(value: &[u8]) -> Result<u64, Error> {
    let v: [u8; 8] = value
        .try_into()
        .map_err(|_| Error::BadAttribute(RESERVATION_TOKEN))?;
    Ok(u64::from_be_bytes(v))
}

/// ERROR-CODE: (code, reason phrase). Code is class*100+number, 300..=699.
pub fn decode_error_code(value: &[u8]) -> Result<(u16, &str), Error> {
    let bad = Error::BadAttribute(ERROR_CODE);
    if value.len() < 4 {
        return Err(bad);
    }
    let class = u16::from(value[2] & 0x07);
    let number = u16::from(value[3]);
    if !(3..=6).contains(&class) || number > 99 {
        return Err(bad);
    }
    let reason = std::str::from_utf8(&value[4..]).map_err(|_| bad)?;
    Ok((class * 100 + number, reason))
}

/// USERNAME / REALM / NONCE / SOFTWARE: UTF-8 text of at most `max` bytes
/// (RFC 8489: USERNAME < 513, REALM and NONCE < 763, SOFTWARE < 763).
pub fn decode_text(typ: u16, value: &[u8], max: usize) -> Result<&str, Error> {
    if value.len() > max {
        return Err(Error::BadAttribute(typ));
    }
    std::str::from_utf8(value).map_err(|_| Error::BadAttribute(typ))
}

/// The reason phrase RFC 8489 / RFC 8656 give for an error code ("Bad Request", …).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}
