//! Attribute type codes and typed value codecs (RFC 8489 §14, RFC 8656 §18, RFC 6156).
//!
//! Every `decode_*` takes the attribute *value* (without the 4-byte TLV header) and returns
//! `Error::BadAttribute(type)` for a malformed one; none of them may panic on any input.

use super::{Error, TransactionId};
use std::net::SocketAddr;

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
    let _ = typ;
    todo!()
}

/// MAPPED-ADDRESS / ALTERNATE-SERVER family+port+address value.
pub fn decode_address(typ: u16, value: &[u8]) -> Result<SocketAddr, Error> {
    let _ = (typ, value);
    todo!()
}

/// XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS (RFC 8489 §14.2).
pub fn decode_xor_address(
    typ: u16,
    value: &[u8],
    tid: &TransactionId,
) -> Result<SocketAddr, Error> {
    let _ = (typ, value, tid);
    todo!()
}

/// Encodes an address value (family, port, address) into `out`, xored when `tid` is given.
pub fn encode_address(addr: SocketAddr, tid: Option<&TransactionId>, out: &mut Vec<u8>) {
    let _ = (addr, tid, out);
    todo!()
}

/// A 4-byte big-endian value (LIFETIME).
pub fn decode_u32(typ: u16, value: &[u8]) -> Result<u32, Error> {
    let _ = (typ, value);
    todo!()
}

/// CHANNEL-NUMBER: 16-bit number followed by 16 RFFU bits.
pub fn decode_channel_number(value: &[u8]) -> Result<u16, Error> {
    let _ = value;
    todo!()
}

/// REQUESTED-TRANSPORT: protocol byte followed by 3 RFFU bytes.
pub fn decode_requested_transport(value: &[u8]) -> Result<u8, Error> {
    let _ = value;
    todo!()
}

/// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY: family byte + 3 RFFU bytes.
/// Returns the raw family byte; the core decides whether it supports it (440).
pub fn decode_address_family(typ: u16, value: &[u8]) -> Result<u8, Error> {
    let _ = (typ, value);
    todo!()
}

/// EVEN-PORT: one byte whose top bit is R (reserve the next port too).
pub fn decode_even_port(value: &[u8]) -> Result<bool, Error> {
    let _ = value;
    todo!()
}

/// RESERVATION-TOKEN: 8 bytes.
pub fn decode_reservation_token(value: &[u8]) -> Result<u64, Error> {
    let _ = value;
    todo!()
}

/// ERROR-CODE: (code, reason phrase). Code is class*100+number, 300..=699.
pub fn decode_error_code(value: &[u8]) -> Result<(u16, &str), Error> {
    let _ = value;
    todo!()
}

/// USERNAME / REALM / NONCE / SOFTWARE: UTF-8 text of at most `max` bytes
/// (RFC 8489: USERNAME < 513, REALM and NONCE < 763, SOFTWARE < 763).
pub fn decode_text(typ: u16, value: &[u8], max: usize) -> Result<&str, Error> {
    let _ = (typ, value, max);
    todo!()
}

/// The reason phrase RFC 8489 / RFC 8656 give for an error code ("Bad Request", …).
pub fn reason_phrase(code: u16) -> &'static str {
    let _ = code;
    todo!()
}
