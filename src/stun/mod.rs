//! STUN codec (RFC 8489) with the TURN attributes (RFC 8656 §18) and ChannelData framing
//! (RFC 8656 §12.4).
//!
//! Owns: parsing a datagram into a borrowed [`Message`] view without allocating, typed
//! decoding of attribute values, encoding messages with [`MessageBuilder`],
//! MESSAGE-INTEGRITY(-SHA256), FINGERPRINT and the long-term credential key.
//! Must not: know about allocations, sockets or time.

mod attributes;
mod channel_data;
pub mod framing;
mod integrity;
mod message;
pub mod rfc5769;

pub use attributes::*;
pub use channel_data::{
    is_channel_data, ChannelData, CHANNEL_DATA_HEADER_LEN, MAX_CHANNEL, MIN_CHANNEL,
};
pub use integrity::{fingerprint, long_term_key, LongTermKey};
pub use message::{data_indication_prefix, AttrIter, Message, MessageBuilder, RawAttribute};

/// The fixed magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header length in bytes.
pub const HEADER_LEN: usize = 20;
/// Transaction id: 96 bits.
pub type TransactionId = [u8; 12];

/// Message class (RFC 8489 §5), encoded in bits C1 C0 of the message type.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Message method (12 bits).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);

    /// The RFC's name for this method, for logs and the observer's request view.
    pub fn name(self) -> &'static str {
        match self {
            Method::BINDING => "Binding",
            Method::ALLOCATE => "Allocate",
            Method::REFRESH => "Refresh",
            Method::SEND => "Send",
            Method::DATA => "Data",
            Method::CREATE_PERMISSION => "CreatePermission",
            Method::CHANNEL_BIND => "ChannelBind",
            _ => "Unknown",
        }
    }
}

/// Codec errors. A datagram that fails to parse as STUN is dropped (and counted by the
/// caller); a message that parses but has a bad attribute value gets a 400 from the core.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    #[error("datagram shorter than a STUN header")]
    TooShort,
    #[error("first two bits are not zero: not a STUN message")]
    NotStun,
    #[error("wrong magic cookie")]
    BadMagicCookie,
    #[error("message length is not a multiple of 4 or does not match the datagram")]
    BadLength,
    #[error("attribute {0:#06x} runs past the end of the message")]
    TruncatedAttribute(u16),
    #[error("attribute {0:#06x} has a malformed value")]
    BadAttribute(u16),
    #[error("attribute after MESSAGE-INTEGRITY or FINGERPRINT")]
    AttributeAfterIntegrity,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
    #[error("not a ChannelData message")]
    NotChannelData,
    #[error("ChannelData length exceeds the datagram")]
    BadChannelDataLength,
    #[error("encoded message would exceed 65535 bytes")]
    TooLong,
}

#[cfg(test)]
mod tests;
