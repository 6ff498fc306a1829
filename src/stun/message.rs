//! Message header, attribute iteration and encoding (RFC 8489 §5, §14).
//!
//! [`Message::parse`] validates the framing once (header, cookie, length, every attribute's
//! bounds and padding, FINGERPRINT if present) and never allocates; later accessors only
//! re-walk the already validated bytes.

use super::{Class, Error, Method, TransactionId};
use std::net::SocketAddr;

/// One attribute as found in a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    /// Offset of the attribute's 4-byte TLV header from the start of the message.
    pub offset: usize,
}

impl RawAttribute<'_> {
    /// Offset of the value from the start of the message.
    pub fn value_offset(&self) -> usize {
        self.offset + 4
    }
}

/// A parsed, borrowed STUN message.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    buf: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parses `buf`, which must hold exactly one message (20 + length == buf.len()).
    ///
    /// Validates: first two bits zero, magic cookie, length a multiple of 4 and equal to the
    /// datagram, each attribute inside the message with zero-or-any padding to 4, FINGERPRINT
    /// (if present) is last and correct. Attributes after MESSAGE-INTEGRITY other than
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored (not returned by `attributes`).
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let _ = buf;
        todo!()
    }

    pub fn class(&self) -> Class {
        todo!()
    }

    pub fn method(&self) -> Method {
        todo!()
    }

    pub fn transaction_id(&self) -> &'a TransactionId {
        todo!()
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Attributes in order, stopping as described in [`Message::parse`].
    pub fn attributes(&self) -> AttrIter<'a> {
        todo!()
    }

    /// First attribute of this type.
    pub fn get(&self, typ: u16) -> Option<RawAttribute<'a>> {
        self.attributes().find(|a| a.typ == typ)
    }

    /// Comprehension-required attribute types (< 0x8000) that uturn does not know
    /// (see `attributes::is_known`), written to `out`; returns how many were written
    /// (at most `out.len()`).
    pub fn unknown_comprehension_required(&self, out: &mut [u16]) -> usize {
        let _ = out;
        todo!()
    }

    /// Whether MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is present.
    pub fn has_integrity(&self) -> bool {
        todo!()
    }

    pub fn has_fingerprint(&self) -> bool {
        todo!()
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, with `key`
    /// (long-term: the MD5 key; short-term: the password bytes). False when neither is present
    /// or a value has the wrong length. Constant-time compare.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let _ = key;
        todo!()
    }

    /// USERNAME (UTF-8, < 513 bytes).
    pub fn username(&self) -> Result<Option<&'a str>, Error> {
        todo!()
    }

    /// REALM (UTF-8, < 763 bytes).
    pub fn realm(&self) -> Result<Option<&'a str>, Error> {
        todo!()
    }

    /// NONCE (UTF-8, < 763 bytes).
    pub fn nonce(&self) -> Result<Option<&'a str>, Error> {
        todo!()
    }

    /// SOFTWARE.
    pub fn software(&self) -> Result<Option<&'a str>, Error> {
        todo!()
    }

    /// First XOR-encoded address attribute of this type.
    pub fn xor_address(&self, typ: u16) -> Result<Option<SocketAddr>, Error> {
        let _ = typ;
        todo!()
    }

    /// Every XOR-PEER-ADDRESS, in order.
    pub fn xor_peer_addresses(&self) -> impl Iterator<Item = Result<SocketAddr, Error>> + 'a {
        let tid = *self.transaction_id();
        self.attributes()
            .filter(|a| a.typ == super::XOR_PEER_ADDRESS)
            .map(move |a| super::decode_xor_address(a.typ, a.value, &tid))
    }

    /// LIFETIME seconds.
    pub fn lifetime(&self) -> Result<Option<u32>, Error> {
        todo!()
    }

    pub fn channel_number(&self) -> Result<Option<u16>, Error> {
        todo!()
    }

    pub fn requested_transport(&self) -> Result<Option<u8>, Error> {
        todo!()
    }

    pub fn requested_address_family(&self) -> Result<Option<u8>, Error> {
        todo!()
    }

    pub fn additional_address_family(&self) -> Result<Option<u8>, Error> {
        todo!()
    }

    /// EVEN-PORT's R bit.
    pub fn even_port(&self) -> Result<Option<bool>, Error> {
        todo!()
    }

    pub fn reservation_token(&self) -> Result<Option<u64>, Error> {
        todo!()
    }

    pub fn dont_fragment(&self) -> bool {
        todo!()
    }

    pub fn error_code(&self) -> Result<Option<(u16, &'a str)>, Error> {
        todo!()
    }

    /// The DATA attribute (its `value_offset` gives the payload position for zero-copy sends).
    pub fn data(&self) -> Option<RawAttribute<'a>> {
        self.get(super::DATA)
    }
}

/// Iterator over a validated message's attributes.
#[derive(Clone, Debug)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<RawAttribute<'a>> {
        let _ = (self.buf, self.pos);
        todo!()
    }
}

/// Encodes one message into a `Vec<u8>` (cleared first), keeping the header's length field
/// up to date after every attribute.
pub struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> MessageBuilder<'b> {
    pub fn new(buf: &'b mut Vec<u8>, class: Class, method: Method, tid: &TransactionId) -> Self {
        let _ = (class, method, tid);
        MessageBuilder { buf }
    }

    /// Appends a raw attribute, zero-padded to 4 bytes.
    pub fn add(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        let _ = (typ, value);
        todo!()
    }

    pub fn add_str(&mut self, typ: u16, value: &str) -> &mut Self {
        self.add(typ, value.as_bytes())
    }

    pub fn add_u32(&mut self, typ: u16, value: u32) -> &mut Self {
        self.add(typ, &value.to_be_bytes())
    }

    /// MAPPED-ADDRESS / ALTERNATE-SERVER.
    pub fn add_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let _ = (typ, addr);
        todo!()
    }

    /// XOR-MAPPED-ADDRESS / XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS.
    pub fn add_xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let _ = (typ, addr);
        todo!()
    }

    /// ERROR-CODE with `reason` (use `reason_phrase(code)` for the standard one).
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let _ = (code, reason);
        todo!()
    }

    pub fn add_unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let _ = types;
        todo!()
    }

    pub fn add_channel_number(&mut self, number: u16) -> &mut Self {
        let _ = number;
        todo!()
    }

    pub fn add_requested_transport(&mut self, protocol: u8) -> &mut Self {
        let _ = protocol;
        todo!()
    }

    pub fn add_address_family(&mut self, typ: u16, family: u8) -> &mut Self {
        let _ = (typ, family);
        todo!()
    }

    pub fn add_even_port(&mut self, reserve: bool) -> &mut Self {
        let _ = reserve;
        todo!()
    }

    pub fn add_reservation_token(&mut self, token: u64) -> &mut Self {
        self.add(super::RESERVATION_TOKEN, &token.to_be_bytes())
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1 with `key`) over the message so far, the length field
    /// counting the MESSAGE-INTEGRITY attribute itself.
    pub fn add_message_integrity(&mut self, key: &[u8]) -> &mut Self {
        let _ = key;
        todo!()
    }

    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let _ = key;
        todo!()
    }

    pub fn add_fingerprint(&mut self) -> &mut Self {
        todo!()
    }

    /// Length of the encoded message in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Writes, into `out`, the part of a Data indication (RFC 8656 §11.4) that precedes a
/// payload of `payload_len` bytes: STUN header (length counting the padded DATA attribute),
/// XOR-PEER-ADDRESS(`peer`), DATA attribute header. Returns the number of bytes written
/// (at most 48). The caller puts this right before the payload and appends
/// `(4 - payload_len % 4) % 4` zero bytes of padding after it. `out` must be >= 48 bytes.
pub fn data_indication_prefix(
    out: &mut [u8],
    tid: &TransactionId,
    peer: SocketAddr,
    payload_len: usize,
) -> usize {
    let _ = (out, tid, peer, payload_len);
    todo!()
}
