//! Any datagram through `Message::parse` and, when it parses, every accessor: none may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use uturn::stun::{self, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    let _ = (msg.class(), msg.method(), msg.transaction_id());
    assert_eq!(msg.as_bytes().len(), data.len());
    for a in msg.attributes() {
        // Every attribute lies inside the message, after the header.
        assert!(a.offset >= stun::HEADER_LEN);
        assert!(a.value_offset() + a.value.len() <= data.len());
        assert_eq!(
            &data[a.value_offset()..a.value_offset() + a.value.len()],
            a.value
        );
    }
    let _ = msg.username();
    let _ = msg.realm();
    let _ = msg.nonce();
    let _ = msg.software();
    for typ in [
        stun::XOR_PEER_ADDRESS,
        stun::XOR_MAPPED_ADDRESS,
        stun::XOR_RELAYED_ADDRESS,
    ] {
        let _ = msg.xor_address(typ);
    }
    for typ in [stun::MAPPED_ADDRESS, stun::ALTERNATE_SERVER] {
        let _ = msg.address(typ);
    }
    for a in msg.xor_peer_addresses() {
        let _ = a;
    }
    let _ = msg.lifetime();
    let _ = msg.channel_number();
    let _ = msg.requested_transport();
    let _ = msg.requested_address_family();
    let _ = msg.additional_address_family();
    let _ = msg.even_port();
    let _ = msg.reservation_token();
    let _ = msg.dont_fragment();
    if let Ok(Some((code, _))) = msg.error_code() {
        assert!((300..=699).contains(&code));
    }
    if let Some(d) = msg.data() {
        assert!(d.value_offset() + d.value.len() <= data.len());
    }
    let _ = msg.has_integrity();
    let _ = msg.has_fingerprint();
    let key = stun::long_term_key("alice", "example.org", "secret");
    let _ = msg.verify_integrity(&key);
    let _ = msg.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt");
    let mut unknown = [0u16; 4];
    let n = msg.unknown_comprehension_required(&mut unknown);
    assert!(n <= unknown.len());
    for t in &unknown[..n] {
        assert!(*t < 0x8000 && !stun::is_known(*t));
    }
    let mut none: [u16; 0] = [];
    assert_eq!(msg.unknown_comprehension_required(&mut none), 0);
});
