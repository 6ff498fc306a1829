//! The 5-tuple API: UDP and TCP clients with equal addresses, ChannelData padding over
//! streams, connection close; draining and alternate servers.

use super::*;
use crate::testing::peer_buffer;

fn tcp(w: &mut World) {
    w.transport = Transport::Tcp;
}

fn udp(w: &mut World) {
    w.transport = Transport::Udp;
}

#[test]
fn udp_and_tcp_clients_with_equal_addresses_never_mix() {
    let mut w = World::new();
    let peer: SocketAddr = PEER.parse().unwrap();
    let mut c = Client::new("203.0.113.5:40000");
    let udp_relay = c.allocate(&mut w);
    assert_eq!(error_code(&c.bind_channel(&mut w, 0x4000, peer)), None);

    // The same addresses over TCP: no allocation there yet.
    tcp(&mut w);
    let resp = c.authed(&mut w, Method::REFRESH, |_| {});
    assert_eq!(error_code(&resp), Some(437));
    let mut cd = Vec::new();
    stun::ChannelData::encode(0x4000, b"over tcp", true, &mut cd);
    let (action, _) = w.client(c.addr, &cd);
    assert_eq!(
        action,
        ClientAction::None,
        "the UDP channel is not the TCP client's"
    );
    assert_eq!(w.server.counters().no_allocation, 1);

    let tcp_relay = c.allocate(&mut w);
    assert_ne!(tcp_relay, udp_relay);
    assert_eq!(w.server.allocation_count(), 2);
    let (action, _) = w.client(c.addr, &cd);
    assert_eq!(
        action,
        ClientAction::None,
        "channel 0x4000 is bound on UDP only"
    );
    assert_eq!(w.server.counters().no_channel, 1);

    // Peer data on the UDP relay goes to the UDP client, on the TCP relay to the TCP one.
    for (relay, transport) in [(udp_relay, Transport::Udp), (tcp_relay, Transport::Tcp)] {
        if transport == Transport::Tcp {
            assert_eq!(error_code(&c.permit(&mut w, &[peer])), None);
        }
        let id = w.relay_id(relay);
        let (mut buf, range) = peer_buffer(b"hi", 0);
        match w.server.handle_peer(w.now, id, peer, &mut buf, range) {
            PeerAction::ToClient { transport: t, .. } => assert_eq!(t, transport),
            PeerAction::Drop => panic!("dropped on {transport:?}"),
        }
    }
    udp(&mut w);
    let (action, _) = w.client(c.addr, &cd);
    assert!(matches!(action, ClientAction::ToPeer { .. }));
}

#[test]
fn channel_data_to_a_stream_client_is_padded_to_4() {
    let peer: SocketAddr = PEER.parse().unwrap();
    for transport in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        let mut w = World::new();
        w.transport = transport;
        let mut c = Client::new("203.0.113.5:40000");
        let relay = c.allocate(&mut w);
        assert_eq!(error_code(&c.bind_channel(&mut w, 0x4001, peer)), None);
        let id = w.relay_id(relay);
        for len in 0..9usize {
            let payload = vec![0xA5; len];
            let out = w.peer(id, peer, &payload).expect("relayed");
            let padded = if transport.is_stream() {
                len.div_ceil(4) * 4
            } else {
                len
            };
            assert_eq!(out.len(), 4 + padded, "{transport:?} len {len}");
            let cd = stun::ChannelData::parse(&out).unwrap();
            assert_eq!((cd.number, cd.payload), (0x4001, &payload[..]));
            assert!(out[4 + len..].iter().all(|&b| b == 0), "padding is zeroed");
        }
        // A Send indication's response framing is unchanged: Data indications are padded.
        assert!(w.server.counters().relayed_to_client >= 9);
    }
}

#[test]
fn transmits_carry_the_transport_of_the_request() {
    let mut w = World::new();
    tcp(&mut w);
    let c = Client::new("203.0.113.5:40000");
    let mut c = c;
    let req = c.build(Method::BINDING, false, |_| {});
    w.feed(c.addr, w.local, &req);
    let t = w.server.poll_transmit().expect("binding response");
    assert_eq!(t.transport, Transport::Tcp);
}

#[test]
fn connection_closed_deletes_that_tuples_allocation_only() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    let udp_relay = c.allocate(&mut w);
    tcp(&mut w);
    let tcp_relay = c.allocate(&mut w);
    w.events();
    let tcp_id = w.relay_id(tcp_relay);
    let tuple = w.tuple(c.addr, w.local);
    let now = w.now;
    w.server.connection_closed(now, tuple, &mut w.sockets);
    assert_eq!(w.server.allocation_count(), 1);
    assert!(!w.sockets.open.contains(&tcp_id));
    let events = w.events();
    assert!(matches!(
        &events[..],
        [Event::AllocationDeleted { info, reason: DeleteReason::ConnectionClosed, .. }]
            if info.relay == tcp_relay
    ));
    // The UDP allocation with the same addresses lives on.
    udp(&mut w);
    assert!(w.server.allocation_info(w.relay_id(udp_relay)).is_some());
    // Closing again, or a tuple without allocation, changes nothing.
    let udp_tuple = FiveTuple::udp("203.0.113.9:1".parse().unwrap(), w.local);
    w.server.connection_closed(now, tuple, &mut w.sockets);
    w.server.connection_closed(now, udp_tuple, &mut w.sockets);
    assert_eq!(w.server.allocation_count(), 1);
    assert!(w.events().is_empty());
}

fn alternate_of(resp: &[u8]) -> Option<SocketAddr> {
    Message::parse(resp)
        .unwrap()
        .address(stun::ALTERNATE_SERVER)
        .unwrap()
}

fn reason_of(resp: &[u8]) -> String {
    let msg = Message::parse(resp).unwrap();
    msg.error_code().unwrap().unwrap().1.to_owned()
}

#[test]
fn draining_refuses_allocate_and_keeps_existing_allocations_working() {
    let mut w = World::new();
    let peer: SocketAddr = PEER.parse().unwrap();
    let mut a = Client::new("203.0.113.5:1");
    a.allocate(&mut w);
    w.server.set_draining(true);
    assert!(w.server.is_draining());
    let mut b = Client::new("203.0.113.5:2");
    let resp = b.try_allocate(&mut w);
    assert_eq!(error_code(&resp), Some(403));
    assert_eq!(reason_of(&resp), "Server is draining");
    assert_eq!(alternate_of(&resp), None);
    assert!(Message::parse(&resp).unwrap().verify_integrity(&b.key()));
    assert_eq!(w.server.counters().refused(Refusal::Draining), 1);
    // The existing allocation still refreshes, permits and binds.
    let resp = a.authed(&mut w, Method::REFRESH, |m| {
        m.add_u32(stun::LIFETIME, 600);
    });
    assert_eq!(error_code(&resp), None);
    assert_eq!(error_code(&a.permit(&mut w, &[peer])), None);
    assert_eq!(error_code(&a.bind_channel(&mut w, 0x4000, peer)), None);
    w.server.set_draining(false);
    b.allocate(&mut w);
    assert_eq!(w.server.allocation_count(), 2);
}

#[test]
fn draining_with_alternates_answers_300_with_one_of_the_clients_family() {
    let v4: SocketAddr = "192.0.2.77:3478".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::77]:3478".parse().unwrap();
    let mut w = World::with(|c| c.alternate_servers = vec![v6, v4]);
    w.server.set_draining(true);
    let mut b = Client::new("203.0.113.5:2");
    let resp = b.try_allocate(&mut w);
    assert_eq!(error_code(&resp), Some(300));
    assert_eq!(reason_of(&resp), "Try Alternate");
    assert_eq!(alternate_of(&resp), Some(v4));
    assert!(Message::parse(&resp).unwrap().verify_integrity(&b.key()));
    w.local = "[2001:db8::10]:3478".parse().unwrap();
    let mut c6 = Client::new("[2001:db8::5]:40000");
    let resp = c6.try_allocate(&mut w);
    assert_eq!(alternate_of(&resp), Some(v6));
    assert_eq!(w.server.counters().refused(Refusal::DrainingRedirected), 2);
    assert_eq!(w.server.allocation_count(), 0);

    // Only IPv6 alternates: an IPv4 client gets 403.
    let mut w = World::with(|c| c.alternate_servers = vec![v6]);
    w.server.set_draining(true);
    let resp = Client::new("203.0.113.5:3").try_allocate(&mut w);
    assert_eq!(error_code(&resp), Some(403));
}

#[test]
fn total_quota_redirects_to_an_alternate_and_user_quota_does_not() {
    let alt: SocketAddr = "192.0.2.77:3478".parse().unwrap();
    let quotas = Arc::new(Quotas::new(1, 2));
    let mut w = World::with_observer(|c| c.alternate_servers = vec![alt], users(), quotas);
    let mut a1 = Client::new("203.0.113.5:1");
    a1.allocate(&mut w);
    // alice has her one allocation: 486 even with an alternate.
    let resp = Client::new("203.0.113.5:2").try_allocate(&mut w);
    assert_eq!(error_code(&resp), Some(486));
    let mut b1 = Client::new("203.0.113.5:3");
    b1.username = "bob".into();
    b1.password = "hunter2".into();
    b1.allocate(&mut w);
    // The server is full: bob's second goes to the alternate.
    let mut b2 = b1.clone();
    b2.addr = "203.0.113.5:4".parse().unwrap();
    b2.nonce = None;
    let resp = b2.try_allocate(&mut w);
    assert_eq!(error_code(&resp), Some(300));
    assert_eq!(alternate_of(&resp), Some(alt));
    let c = w.server.counters();
    assert_eq!((c.quota_refused, c.quota_redirected), (1, 1));

    // Without an alternate the total quota is 486, as before.
    let quotas = Arc::new(Quotas::new(0, 1));
    let mut w = World::with_observer(|_| {}, users(), quotas);
    Client::new("203.0.113.5:1").allocate(&mut w);
    let resp = Client::new("203.0.113.5:2").try_allocate(&mut w);
    assert_eq!(error_code(&resp), Some(486));
}
