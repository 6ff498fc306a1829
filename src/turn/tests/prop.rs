//! Property test: arbitrary input never panics and leaves no state behind.

use super::*;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary datagrams and time steps, mixed with valid traffic, never panic and
    /// never leave state behind for unauthenticated input.
    #[test]
    fn arbitrary_input_never_panics(
        inputs in proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..120), 0u64..700),
            1..40,
        )
    ) {
        let mut w = World::new();
        let mut c = Client::new("203.0.113.5:40000");
        let relay = c.allocate(&mut w);
        let id = relay_id(&w, relay);
        for (kind, mut bytes, step) in inputs {
            w.now += Duration::from_millis(step * 10);
            match kind % 4 {
                0 => { w.client(c.addr, &bytes); }
                1 => {
                    // Make it look like STUN or ChannelData more often.
                    if bytes.len() >= 20 {
                        bytes[0] &= 0x7F;
                        bytes[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
                        let len = (bytes.len() - 20) as u16;
                        bytes[2..4].copy_from_slice(&len.to_be_bytes());
                    }
                    w.client("198.51.100.1:5".parse().unwrap(), &bytes);
                }
                2 => { w.peer(id, PEER.parse().unwrap(), &bytes); }
                _ => {
                    let now = w.now;
                    w.server.handle_timeout(now, &mut w.sockets);
                }
            }
        }
        prop_assert!(w.server.allocation_count() <= 1);
        prop_assert_eq!(w.server.pending_auth_count(), 0);
    }
}
