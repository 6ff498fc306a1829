//! RFC 5769 test vectors, malformed input, and property tests for the codec.

use super::*;
use proptest::prelude::*;
use std::net::SocketAddr;

use super::rfc5769::{
    REQUEST as REQ, REQUEST_LONG_TERM as REQ_LTC, RESPONSE_V4 as RESP_V4, RESPONSE_V6 as RESP_V6,
};

const SHORT_TERM: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
const TID: TransactionId = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

#[test]
fn rfc5769_sample_request() {
    let m = Message::parse(REQ).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Request, Method::BINDING));
    assert_eq!(m.transaction_id(), &TID);
    assert_eq!(m.software().unwrap(), Some("STUN test client"));
    assert_eq!(m.username().unwrap(), Some("evtj:h6vY"));
    assert!(m.has_fingerprint());
    assert!(m.has_integrity());
    assert!(m.verify_integrity(SHORT_TERM));
    assert!(!m.verify_integrity(b"wrong"));
    // PRIORITY (0x0024) is comprehension-required and not a TURN attribute;
    // ICE-CONTROLLED (0x8029) is optional.
    let mut unknown = [0u16; 4];
    assert_eq!(m.unknown_comprehension_required(&mut unknown), 1);
    assert_eq!(unknown[0], 0x0024);
}

#[test]
fn rfc5769_sample_responses() {
    for (bytes, addr) in [
        (RESP_V4, "192.0.2.1:32853"),
        (RESP_V6, "[2001:db8:1234:5678:11:2233:4455:6677]:32853"),
    ] {
        let m = Message::parse(bytes).unwrap();
        assert_eq!((m.class(), m.method()), (Class::Success, Method::BINDING));
        assert_eq!(m.software().unwrap(), Some("test vector"));
        let addr: SocketAddr = addr.parse().unwrap();
        assert_eq!(m.xor_address(XOR_MAPPED_ADDRESS).unwrap(), Some(addr));
        assert!(m.verify_integrity(SHORT_TERM));
        assert!(!m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBT"));
        // Re-encode from the fields. The RFC pads SOFTWARE with a space (0x20) where
        // uturn pads with zero, so the bytes differ exactly there and nowhere else
        // before MESSAGE-INTEGRITY; the integrity and fingerprint must verify.
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, Class::Success, Method::BINDING, &TID);
        b.add_str(SOFTWARE, "test vector");
        b.add_xor_address(XOR_MAPPED_ADDRESS, addr);
        b.add_message_integrity(SHORT_TERM);
        b.add_fingerprint();
        assert_eq!(out.len(), bytes.len());
        let differing: Vec<usize> = (0..out.len()).filter(|&i| out[i] != bytes[i]).collect();
        assert!(differing.contains(&35), "the padding byte of SOFTWARE");
        let before_mi = bytes.len() - 24 - 8;
        assert!(
            differing.iter().all(|&i| i == 35 || i >= before_mi),
            "{differing:?}"
        );
        let re = Message::parse(&out).unwrap();
        assert!(re.verify_integrity(SHORT_TERM));
        assert_eq!(re.xor_address(XOR_MAPPED_ADDRESS).unwrap(), Some(addr));
    }
}

#[test]
fn rfc5769_long_term_request_byte_exact() {
    let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    let m = Message::parse(REQ_LTC).unwrap();
    assert_eq!(m.username().unwrap(), Some(username));
    assert_eq!(m.realm().unwrap(), Some("example.org"));
    assert_eq!(m.nonce().unwrap(), Some("f//499k954d6OL34oL9FSTvy64sA"));
    let key = long_term_key(username, "example.org", "TheMatrIX");
    assert!(m.verify_integrity(&key));
    assert!(!m.verify_integrity(&long_term_key(username, "example.org", "thematrix")));
    // This vector pads with zeros, so the builder reproduces it byte for byte.
    let tid: TransactionId = REQ_LTC[8..20].try_into().unwrap();
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, Class::Request, Method::BINDING, &tid);
    b.add_str(USERNAME, username);
    b.add_str(NONCE, "f//499k954d6OL34oL9FSTvy64sA");
    b.add_str(REALM, "example.org");
    b.add_message_integrity(&key);
    assert_eq!(out, REQ_LTC);
}

#[test]
fn malformed_messages() {
    assert_eq!(Message::parse(&REQ[..19]).unwrap_err(), Error::TooShort);
    let mut m = REQ.to_vec();
    m[0] = 0x40;
    assert_eq!(Message::parse(&m).unwrap_err(), Error::NotStun);
    let mut m = REQ.to_vec();
    m[4] = 0;
    assert_eq!(Message::parse(&m).unwrap_err(), Error::BadMagicCookie);
    assert_eq!(
        Message::parse(&REQ[..REQ.len() - 4]).unwrap_err(),
        Error::BadLength
    );
    let mut m = REQ.to_vec();
    m[3] = 0x57;
    assert_eq!(Message::parse(&m).unwrap_err(), Error::BadLength);
    // An attribute claiming to run past the end.
    let mut m = REQ.to_vec();
    m[22..24].copy_from_slice(&0x00F0u16.to_be_bytes());
    assert_eq!(
        Message::parse(&m).unwrap_err(),
        Error::TruncatedAttribute(SOFTWARE)
    );
    // A flipped bit anywhere before the fingerprint breaks it.
    let mut m = REQ.to_vec();
    m[30] ^= 1;
    assert_eq!(Message::parse(&m).unwrap_err(), Error::BadFingerprint);
    // Anything after FINGERPRINT.
    let mut m = REQ.to_vec();
    m.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
    let len = (m.len() - HEADER_LEN) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        Message::parse(&m).unwrap_err(),
        Error::AttributeAfterIntegrity
    );
    // A FINGERPRINT of the wrong size.
    let mut m = Vec::new();
    MessageBuilder::new(&mut m, Class::Request, Method::BINDING, &TID).add(FINGERPRINT, &[1, 2]);
    assert_eq!(
        Message::parse(&m).unwrap_err(),
        Error::BadAttribute(FINGERPRINT)
    );
}

#[test]
fn attributes_after_integrity_are_ignored() {
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, &TID);
    b.add_str(USERNAME, "alice");
    b.add_message_integrity(b"k");
    b.add_u32(LIFETIME, 77);
    b.add_fingerprint();
    let m = Message::parse(&out).unwrap();
    assert_eq!(m.lifetime().unwrap(), None);
    assert!(m.has_fingerprint());
    // MESSAGE-INTEGRITY still verifies: the ignored attribute is not covered by it.
    assert!(m.verify_integrity(b"k"));
}

#[test]
fn sha256_integrity_full_and_truncated() {
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(&mut out, Class::Request, Method::REFRESH, &TID);
    b.add_str(USERNAME, "bob");
    b.add_message_integrity_sha256(b"key");
    let m = Message::parse(&out).unwrap();
    assert!(m.verify_integrity(b"key"));
    assert!(!m.verify_integrity(b"key2"));
    // Truncate to 16 bytes: rewrite the attribute length and message length.
    let mut t = out[..out.len() - 16].to_vec();
    let at = t.len() - 20;
    t[at + 2..at + 4].copy_from_slice(&16u16.to_be_bytes());
    let len = (t.len() - HEADER_LEN) as u16;
    t[2..4].copy_from_slice(&len.to_be_bytes());
    // The truncated value must be recomputed over the shorter length.
    let mac = integrity::hmac_sha256(b"key", &[&t[..2], &len.to_be_bytes(), &t[4..at]]);
    t[at + 4..].copy_from_slice(&mac[..16]);
    let m = Message::parse(&t).unwrap();
    assert!(m.verify_integrity(b"key"));
}

#[test]
fn typed_attribute_errors() {
    assert_eq!(
        decode_u32(LIFETIME, &[1, 2, 3]),
        Err(Error::BadAttribute(LIFETIME))
    );
    assert_eq!(
        decode_channel_number(&[0x40, 0]),
        Err(Error::BadAttribute(CHANNEL_NUMBER))
    );
    assert_eq!(
        decode_requested_transport(&[17]),
        Err(Error::BadAttribute(REQUESTED_TRANSPORT))
    );
    assert_eq!(
        decode_xor_address(XOR_PEER_ADDRESS, &[0, 3, 0, 0, 1, 2, 3, 4], &TID),
        Err(Error::BadAttribute(XOR_PEER_ADDRESS))
    );
    assert_eq!(
        decode_xor_address(XOR_PEER_ADDRESS, &[0, 2, 0, 0, 1, 2, 3, 4], &TID),
        Err(Error::BadAttribute(XOR_PEER_ADDRESS))
    );
    assert_eq!(
        decode_error_code(&[0, 0, 7, 0]),
        Err(Error::BadAttribute(ERROR_CODE))
    );
    assert_eq!(decode_error_code(&[0, 0, 4, 1, b'x']), Ok((401, "x")));
    assert_eq!(
        decode_text(USERNAME, &[0xff, 0xfe], 512),
        Err(Error::BadAttribute(USERNAME))
    );
    assert_eq!(
        decode_text(USERNAME, &[b'a'; 513], 512),
        Err(Error::BadAttribute(USERNAME))
    );
    assert_eq!(decode_even_port(&[0x80]), Ok(true));
    assert_eq!(
        decode_reservation_token(&[0; 7]),
        Err(Error::BadAttribute(RESERVATION_TOKEN))
    );
    assert_eq!(reason_phrase(438), "Stale Nonce");
}

#[test]
fn channel_data_framing() {
    let mut out = Vec::new();
    ChannelData::encode(0x4001, b"abcde", false, &mut out);
    assert_eq!(out, [0x40, 0x01, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e']);
    assert!(is_channel_data(&out));
    let cd = ChannelData::parse(&out).unwrap();
    assert_eq!((cd.number, cd.payload), (0x4001, &b"abcde"[..]));
    out.clear();
    ChannelData::encode(0x7FFF, b"abcde", true, &mut out);
    assert_eq!(out.len(), 12, "TCP framing pads to 4");
    assert_eq!(ChannelData::parse(&out).unwrap().payload, b"abcde");
    assert_eq!(
        ChannelData::parse(&[0x40, 0, 0, 9, 1]).unwrap_err(),
        Error::BadChannelDataLength
    );
    assert_eq!(
        ChannelData::parse(&[0x80, 0, 0, 0]).unwrap_err(),
        Error::NotChannelData
    );
    assert_eq!(
        ChannelData::parse(&[0x40, 0, 0]).unwrap_err(),
        Error::NotChannelData
    );
    assert!(!is_channel_data(REQ));
    assert!(!is_channel_data(&[]));
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(m) = Message::parse(&bytes) {
            let _ = (m.class(), m.method(), m.username(), m.realm(), m.nonce(), m.lifetime());
            let _ = (m.channel_number(), m.requested_transport(), m.even_port(), m.error_code());
            let _ = (m.reservation_token(), m.xor_address(XOR_PEER_ADDRESS), m.verify_integrity(b"k"));
            let _ = m.xor_peer_addresses().count();
            let mut u = [0u16; 4];
            m.unknown_comprehension_required(&mut u);
        }
        let _ = ChannelData::parse(&bytes);
    }

    #[test]
    fn stun_shaped_input_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 20..200)) {
        bytes[0] &= 0x3F;
        bytes[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        let len = ((bytes.len() - 20) & !3) as u16;
        bytes.truncate(20 + len as usize);
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        if let Ok(m) = Message::parse(&bytes) {
            let _ = m.attributes().count();
            let _ = m.verify_integrity(b"key");
        }
    }

    #[test]
    fn round_trip(
        tid in any::<[u8; 12]>(),
        method in 0u16..0x1000,
        class in 0u8..4,
        user in "[a-z0-9:]{0,40}",
        lifetime in any::<u32>(),
        peer in arb_addr(),
        data in proptest::collection::vec(any::<u8>(), 0..100),
        key in proptest::collection::vec(any::<u8>(), 1..40),
        flip in any::<usize>(),
    ) {
        let class = [Class::Request, Class::Indication, Class::Success, Class::Error][class as usize];
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(&mut out, class, Method(method), &tid);
        b.add_str(USERNAME, &user);
        b.add_u32(LIFETIME, lifetime);
        b.add_xor_address(XOR_PEER_ADDRESS, peer);
        b.add_address(ALTERNATE_SERVER, peer);
        b.add(DATA, &data);
        b.add_message_integrity(&key);
        b.add_fingerprint();
        let m = Message::parse(&out).unwrap();
        prop_assert_eq!(m.class(), class);
        prop_assert_eq!(m.method(), Method(method));
        prop_assert_eq!(m.transaction_id(), &tid);
        prop_assert_eq!(m.username().unwrap(), Some(user.as_str()));
        prop_assert_eq!(m.lifetime().unwrap(), Some(lifetime));
        prop_assert_eq!(m.xor_address(XOR_PEER_ADDRESS).unwrap(), Some(peer));
        prop_assert_eq!(m.address(ALTERNATE_SERVER).unwrap(), Some(peer));
        prop_assert_eq!(m.data().unwrap().value, &data[..]);
        prop_assert!(m.verify_integrity(&key));
        // Any flipped bit up to the end of MESSAGE-INTEGRITY is caught by FINGERPRINT or
        // MESSAGE-INTEGRITY (or breaks framing). A flip in FINGERPRINT's own type makes it an
        // unknown optional attribute after MESSAGE-INTEGRITY: ignored, rightly.
        let mut bad = out.clone();
        let i = flip % (bad.len() - 8);
        bad[i] ^= 0x01;
        if let Ok(m) = Message::parse(&bad) {
            prop_assert!(!m.verify_integrity(&key), "flip at {} of {}", i, bad.len());
        }
    }

    #[test]
    fn data_indication_prefix_parses(peer in arb_addr(), payload in proptest::collection::vec(any::<u8>(), 0..200), tid in any::<[u8; 12]>()) {
        let mut prefix = [0u8; 48];
        let n = data_indication_prefix(&mut prefix, &tid, peer, payload.len());
        let mut msg = prefix[..n].to_vec();
        msg.extend_from_slice(&payload);
        msg.resize(msg.len() + (4 - payload.len() % 4) % 4, 0);
        let m = Message::parse(&msg).unwrap();
        prop_assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
        prop_assert_eq!(m.xor_address(XOR_PEER_ADDRESS).unwrap(), Some(peer));
        prop_assert_eq!(m.data().unwrap().value, &payload[..]);
    }
}
