//! Any datagram through `ChannelData::parse` and `is_channel_data`: no panic, and a parsed
//! frame's payload is exactly what its header says, inside the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use uturn::stun::{self, ChannelData};

fuzz_target!(|data: &[u8]| {
    let looks_like = stun::is_channel_data(data);
    assert_eq!(looks_like, data.first().is_some_and(|b| b & 0xC0 == 0x40));
    let Ok(cd) = ChannelData::parse(data) else {
        return;
    };
    // Channel numbers 0x4000..=0x7FFF all start with bits 01.
    assert!(looks_like);
    assert!((stun::MIN_CHANNEL..=stun::MAX_CHANNEL).contains(&cd.number));
    assert_eq!(cd.number, u16::from_be_bytes([data[0], data[1]]));
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    assert_eq!(cd.payload.len(), len);
    let end = stun::CHANNEL_DATA_HEADER_LEN + len;
    assert!(end <= data.len());
    assert_eq!(cd.payload, &data[stun::CHANNEL_DATA_HEADER_LEN..end]);
    // Re-encoding gives back the frame (without whatever trailed it).
    let mut out = Vec::new();
    ChannelData::encode(cd.number, cd.payload, false, &mut out);
    assert_eq!(out, &data[..end]);
});
