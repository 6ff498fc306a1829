//! Message header, attribute iteration and encoding (RFC 8489 §5, §14).
//!
//! [`Message::parse`] validates the framing once (header, cookie, length, every attribute's
//! bounds and padding, FINGERPRINT if present) and never allocates; later accessors only
//! re-walk the already validated bytes.

use super::attributes::*;
use super::integrity::{constant_time_eq, fingerprint, hmac_sha1, hmac_sha256};
use super::{Class, Error, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};
use std::net::{IpAddr, SocketAddr};

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
        if buf.len() < HEADER_LEN {
            return Err(Error::TooShort);
        }
        if buf[0] & 0xC0 != 0 {
            return Err(Error::NotStun);
        }
        if buf[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return Err(Error::BadMagicCookie);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(Error::BadLength);
        }
        let mut pos = HEADER_LEN;
        let mut seen_fingerprint = false;
        while pos < buf.len() {
            let Some(&[t0, t1, l0, l1]) = buf.get(pos..pos + 4) else {
                return Err(Error::TruncatedAttribute(0));
            };
            let typ = u16::from_be_bytes([t0, t1]);
            let alen = usize::from(u16::from_be_bytes([l0, l1]));
            let padded = (alen + 3) & !3;
            if pos + 4 + padded > buf.len() {
                return Err(Error::TruncatedAttribute(typ));
            }
            if seen_fingerprint || (typ == FINGERPRINT && pos + 4 + padded != buf.len()) {
                return Err(Error::AttributeAfterIntegrity);
            }
            if typ == FINGERPRINT {
                let value = &buf[pos + 4..pos + 4 + alen];
                let Ok(value) = <[u8; 4]>::try_from(value) else {
                    return Err(Error::BadAttribute(FINGERPRINT));
                };
                // FINGERPRINT is last, so the header's length already counts it.
                if u32::from_be_bytes(value) != fingerprint(&buf[..pos]) {
                    return Err(Error::BadFingerprint);
                }
                seen_fingerprint = true;
            }
            pos += 4 + padded;
        }
        Ok(Message { buf })
    }

    fn message_type(&self) -> u16 {
        u16::from_be_bytes([self.buf[0], self.buf[1]])
    }

    pub fn class(&self) -> Class {
        let t = self.message_type();
        match ((t >> 7) & 0x2) | ((t >> 4) & 0x1) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        }
    }

    pub fn method(&self) -> Method {
        let t = self.message_type();
        Method((t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2))
    }

    pub fn transaction_id(&self) -> &'a TransactionId {
        // parse() checked the length: bytes 8..20 exist.
        self.buf[8..20].try_into().expect("header checked by parse")
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Attributes in order, stopping as described in [`Message::parse`].
    pub fn attributes(&self) -> AttrIter<'a> {
        AttrIter {
            buf: self.buf,
            pos: HEADER_LEN,
            after_integrity: false,
        }
    }

    /// First attribute of this type.
    pub fn get(&self, typ: u16) -> Option<RawAttribute<'a>> {
        self.attributes().find(|a| a.typ == typ)
    }

    /// Comprehension-required attribute types (< 0x8000) that uturn does not know
    /// (see `attributes::is_known`), written to `out`; returns how many were written
    /// (at most `out.len()`).
    pub fn unknown_comprehension_required(&self, out: &mut [u16]) -> usize {
        let mut n = 0;
        for a in self.attributes() {
            if a.typ < 0x8000
                && !super::is_known(a.typ)
                && n < out.len()
                && !out[..n].contains(&a.typ)
            {
                out[n] = a.typ;
                n += 1;
            }
        }
        n
    }

    /// Whether MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is present.
    pub fn has_integrity(&self) -> bool {
        self.attributes()
            .any(|a| a.typ == MESSAGE_INTEGRITY || a.typ == MESSAGE_INTEGRITY_SHA256)
    }

    pub fn has_fingerprint(&self) -> bool {
        self.get(FINGERPRINT).is_some()
    }

    /// The header (with its length set to count everything up to the end of `attr`) and
    /// the attributes before `attr`: what MESSAGE-INTEGRITY(-SHA256) is computed over.
    fn integrity_input(&self, attr: &RawAttribute<'_>) -> ([u8; 2], [u8; 2], &'a [u8]) {
        let len = (attr.offset + 4 + attr.value.len() - HEADER_LEN) as u16;
        (
            [self.buf[0], self.buf[1]],
            len.to_be_bytes(),
            &self.buf[4..attr.offset],
        )
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, with `key`
    /// (long-term: the MD5 key; short-term: the password bytes). False when neither is present
    /// or a value has the wrong length. Constant-time compare.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        if let Some(a) = self.get(MESSAGE_INTEGRITY_SHA256) {
            let n = a.value.len();
            if !(16..=32).contains(&n) || n % 4 != 0 {
                return false;
            }
            let (t, l, rest) = self.integrity_input(&a);
            let mac = hmac_sha256(key, &[&t, &l, rest]);
            return constant_time_eq(&mac[..n], a.value);
        }
        if let Some(a) = self.get(MESSAGE_INTEGRITY) {
            if a.value.len() != 20 {
                return false;
            }
            let (t, l, rest) = self.integrity_input(&a);
            let mac = hmac_sha1(key, &[&t, &l, rest]);
            return constant_time_eq(&mac, a.value);
        }
        false
    }

    fn text(&self, typ: u16, max: usize) -> Result<Option<&'a str>, Error> {
        self.get(typ)
            .map(|a| decode_text(typ, a.value, max))
            .transpose()
    }

    /// USERNAME (UTF-8, < 513 bytes).
    pub fn username(&self) -> Result<Option<&'a str>, Error> {
        self.text(USERNAME, 512)
    }

    /// REALM (UTF-8, < 763 bytes).
    pub fn realm(&self) -> Result<Option<&'a str>, Error> {
        self.text(REALM, 762)
    }

    /// NONCE (UTF-8, < 763 bytes).
    pub fn nonce(&self) -> Result<Option<&'a str>, Error> {
        self.text(NONCE, 762)
    }

    /// SOFTWARE.
    pub fn software(&self) -> Result<Option<&'a str>, Error> {
        self.text(SOFTWARE, 762)
    }

    /// First XOR-encoded address attribute of this type.
    pub fn xor_address(&self, typ: u16) -> Result<Option<SocketAddr>, Error> {
        let tid = self.transaction_id();
        self.get(typ)
            .map(|a| decode_xor_address(typ, a.value, tid))
            .transpose()
    }

    /// First plain address attribute of this type (MAPPED-ADDRESS, ALTERNATE-SERVER).
    pub fn address(&self, typ: u16) -> Result<Option<SocketAddr>, Error> {
        self.get(typ)
            .map(|a| decode_address(typ, a.value))
            .transpose()
    }

    /// Every XOR-PEER-ADDRESS, in order.
    pub fn xor_peer_addresses(&self) -> impl Iterator<Item = Result<SocketAddr, Error>> + 'a {
        let tid = *self.transaction_id();
        self.attributes()
            .filter(|a| a.typ == XOR_PEER_ADDRESS)
            .map(move |a| decode_xor_address(a.typ, a.value, &tid))
    }

    /// LIFETIME seconds.
    pub fn lifetime(&self) -> Result<Option<u32>, Error> {
        self.get(LIFETIME)
            .map(|a| decode_u32(LIFETIME, a.value))
            .transpose()
    }

    pub fn channel_number(&self) -> Result<Option<u16>, Error> {
        self.get(CHANNEL_NUMBER)
            .map(|a| decode_channel_number(a.value))
            .transpose()
    }

    pub fn requested_transport(&self) -> Result<Option<u8>, Error> {
        self.get(REQUESTED_TRANSPORT)
            .map(|a| decode_requested_transport(a.value))
            .transpose()
    }

    pub fn requested_address_family(&self) -> Result<Option<u8>, Error> {
        self.get(REQUESTED_ADDRESS_FAMILY)
            .map(|a| decode_address_family(REQUESTED_ADDRESS_FAMILY, a.value))
            .transpose()
    }

    pub fn additional_address_family(&self) -> Result<Option<u8>, Error> {
        self.get(ADDITIONAL_ADDRESS_FAMILY)
            .map(|a| decode_address_family(ADDITIONAL_ADDRESS_FAMILY, a.value))
            .transpose()
    }

    /// EVEN-PORT's R bit.
    pub fn even_port(&self) -> Result<Option<bool>, Error> {
        self.get(EVEN_PORT)
            .map(|a| decode_even_port(a.value))
            .transpose()
    }

    pub fn reservation_token(&self) -> Result<Option<u64>, Error> {
        self.get(RESERVATION_TOKEN)
            .map(|a| decode_reservation_token(a.value))
            .transpose()
    }

    pub fn dont_fragment(&self) -> bool {
        self.get(DONT_FRAGMENT).is_some()
    }

    pub fn error_code(&self) -> Result<Option<(u16, &'a str)>, Error> {
        self.get(ERROR_CODE)
            .map(|a| decode_error_code(a.value))
            .transpose()
    }

    /// The DATA attribute (its `value_offset` gives the payload position for zero-copy sends).
    pub fn data(&self) -> Option<RawAttribute<'a>> {
        self.get(DATA)
    }
}

/// Iterator over a validated message's attributes.
#[derive(Clone, Debug)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    pos: usize,
    after_integrity: bool,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<RawAttribute<'a>> {
        loop {
            let &[t0, t1, l0, l1] = self.buf.get(self.pos..self.pos + 4)? else {
                return None;
            };
            let typ = u16::from_be_bytes([t0, t1]);
            let alen = usize::from(u16::from_be_bytes([l0, l1]));
            let offset = self.pos;
            let value = self.buf.get(offset + 4..offset + 4 + alen)?;
            self.pos = offset + 4 + ((alen + 3) & !3);
            // RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY other than
            // MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored.
            if self.after_integrity && typ != MESSAGE_INTEGRITY_SHA256 && typ != FINGERPRINT {
                continue;
            }
            if typ == MESSAGE_INTEGRITY || typ == MESSAGE_INTEGRITY_SHA256 {
                self.after_integrity = true;
            }
            return Some(RawAttribute { typ, value, offset });
        }
    }
}

/// Encodes one message into a `Vec<u8>` (cleared first), keeping the header's length field
/// up to date after every attribute.
pub struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> MessageBuilder<'b> {
    pub fn new(buf: &'b mut Vec<u8>, class: Class, method: Method, tid: &TransactionId) -> Self {
        buf.clear();
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(tid);
        MessageBuilder { buf }
    }

    fn set_length(&mut self, len: usize) {
        let len = (len.min(usize::from(u16::MAX)) as u16).to_be_bytes();
        self.buf[2..4].copy_from_slice(&len);
    }

    /// Appends a raw attribute, zero-padded to 4 bytes. Values longer than 65535 bytes are
    /// cut to that length (the field cannot say more).
    pub fn add(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        let value = &value[..value.len().min(usize::from(u16::MAX))];
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf
            .resize(self.buf.len() + (4 - value.len() % 4) % 4, 0);
        let len = self.buf.len() - HEADER_LEN;
        self.set_length(len);
        self
    }

    pub fn add_str(&mut self, typ: u16, value: &str) -> &mut Self {
        self.add(typ, value.as_bytes())
    }

    pub fn add_u32(&mut self, typ: u16, value: u32) -> &mut Self {
        self.add(typ, &value.to_be_bytes())
    }

    /// MAPPED-ADDRESS / ALTERNATE-SERVER.
    pub fn add_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let mut v = Vec::with_capacity(20);
        encode_address(addr, None, &mut v);
        self.add(typ, &v)
    }

    /// XOR-MAPPED-ADDRESS / XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS.
    pub fn add_xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&self.buf[8..20]);
        let mut v = Vec::with_capacity(20);
        encode_address(addr, Some(&tid), &mut v);
        self.add(typ, &v)
    }

    /// ERROR-CODE with `reason` (use `reason_phrase(code)` for the standard one).
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = Vec::with_capacity(4 + reason.len());
        v.extend_from_slice(&[0, 0, (code / 100) as u8 & 0x07, (code % 100) as u8]);
        v.extend_from_slice(reason.as_bytes());
        self.add(ERROR_CODE, &v)
    }

    pub fn add_unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let v: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
        self.add(UNKNOWN_ATTRIBUTES, &v)
    }

    pub fn add_channel_number(&mut self, number: u16) -> &mut Self {
        let [a, b] = number.to_be_bytes();
        self.add(CHANNEL_NUMBER, &[a, b, 0, 0])
    }

    pub fn add_requested_transport(&mut self, protocol: u8) -> &mut Self {
        self.add(REQUESTED_TRANSPORT, &[protocol, 0, 0, 0])
    }

    pub fn add_address_family(&mut self, typ: u16, family: u8) -> &mut Self {
        self.add(typ, &[family, 0, 0, 0])
    }

    pub fn add_even_port(&mut self, reserve: bool) -> &mut Self {
        self.add(EVEN_PORT, &[if reserve { 0x80 } else { 0 }])
    }

    pub fn add_reservation_token(&mut self, token: u64) -> &mut Self {
        self.add(RESERVATION_TOKEN, &token.to_be_bytes())
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1 with `key`) over the message so far, the length field
    /// counting the MESSAGE-INTEGRITY attribute itself.
    pub fn add_message_integrity(&mut self, key: &[u8]) -> &mut Self {
        let len = self.buf.len() - HEADER_LEN + 24;
        self.set_length(len);
        let mac = hmac_sha1(key, &[self.buf.as_slice()]);
        self.add(MESSAGE_INTEGRITY, &mac)
    }

    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let len = self.buf.len() - HEADER_LEN + 36;
        self.set_length(len);
        let mac = hmac_sha256(key, &[self.buf.as_slice()]);
        self.add(MESSAGE_INTEGRITY_SHA256, &mac)
    }

    pub fn add_fingerprint(&mut self) -> &mut Self {
        let len = self.buf.len() - HEADER_LEN + 8;
        self.set_length(len);
        let crc = fingerprint(self.buf);
        self.add(FINGERPRINT, &crc.to_be_bytes())
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
    let addr_len = if peer.is_ipv4() { 8 } else { 20 };
    let n = HEADER_LEN + 4 + addr_len + 4;
    let body = 4 + addr_len + 4 + ((payload_len + 3) & !3);
    let out = &mut out[..n];
    out[0..2].copy_from_slice(&message_type(Class::Indication, Method::DATA).to_be_bytes());
    out[2..4].copy_from_slice(&(body.min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(tid);
    out[20..22].copy_from_slice(&XOR_PEER_ADDRESS.to_be_bytes());
    out[22..24].copy_from_slice(&(addr_len as u16).to_be_bytes());
    let cookie = MAGIC_COOKIE.to_be_bytes();
    out[24] = 0;
    out[26..28].copy_from_slice(&(peer.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    match peer.ip() {
        IpAddr::V4(ip) => {
            out[25] = 0x01;
            for (i, b) in ip.octets().iter().enumerate() {
                out[28 + i] = b ^ cookie[i];
            }
        }
        IpAddr::V6(ip) => {
            out[25] = 0x02;
            for (i, b) in ip.octets().iter().enumerate() {
                out[28 + i] = b ^ if i < 4 { cookie[i] } else { tid[i - 4] };
            }
        }
    }
    let d = 24 + addr_len;
    out[d..d + 2].copy_from_slice(&DATA.to_be_bytes());
    out[d + 2..d + 4]
        .copy_from_slice(&(payload_len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
    n
}

/// The 16-bit message type for a class and method (RFC 8489 §5).
fn message_type(class: Class, method: Method) -> u16 {
    let m = method.0;
    let c = match class {
        Class::Request => 0x0000,
        Class::Indication => 0x0010,
        Class::Success => 0x0100,
        Class::Error => 0x0110,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | c
}
