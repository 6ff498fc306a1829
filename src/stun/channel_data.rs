//! ChannelData framing (RFC 8656 §12.4): 2-byte channel number, 2-byte length, payload.
//! Over UDP the payload is not padded; over TCP it is padded to 4 bytes.
//!
//! Channel numbers: RFC 8656 allows 0x4000–0x4FFF; coturn and RFC 5766 clients use up to
//! 0x7FFF, and uturn accepts that whole range for compatibility.

use super::Error;

pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Lowest and highest channel numbers accepted.
pub const MIN_CHANNEL: u16 = 0x4000;
pub const MAX_CHANNEL: u16 = 0x7FFF;

/// True when the datagram starts like ChannelData (first two bits 01), i.e. it is not STUN.
pub fn is_channel_data(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| b & 0xC0 == 0x40)
}

/// A borrowed ChannelData message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub number: u16,
    pub payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData datagram. The length field may be shorter than the datagram
    /// (padding, or a TCP frame); never longer. Channel numbers outside
    /// `MIN_CHANNEL..=MAX_CHANNEL` are `Error::NotChannelData`.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let [a, b, c, d, rest @ ..] = buf else {
            return Err(Error::NotChannelData);
        };
        let number = u16::from_be_bytes([*a, *b]);
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&number) {
            return Err(Error::NotChannelData);
        }
        let len = usize::from(u16::from_be_bytes([*c, *d]));
        let payload = rest.get(..len).ok_or(Error::BadChannelDataLength)?;
        Ok(ChannelData { number, payload })
    }

    /// The 4-byte header for a payload of `len` bytes on channel `number`.
    pub fn header(number: u16, len: u16) -> [u8; 4] {
        let [a, b] = number.to_be_bytes();
        let [c, d] = len.to_be_bytes();
        [a, b, c, d]
    }

    /// Appends header + payload (+ zero padding to 4 when `pad`) to `out`.
    /// Payloads longer than 65535 bytes are truncated to that length's field.
    pub fn encode(number: u16, payload: &[u8], pad: bool, out: &mut Vec<u8>) {
        let len = payload.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&Self::header(number, len as u16));
        out.extend_from_slice(&payload[..len]);
        if pad {
            out.resize(out.len() + (4 - len % 4) % 4, 0);
        }
    }
}
