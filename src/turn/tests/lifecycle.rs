//! Allocation lifecycle in the simulated world: allocate, relay, expire, refresh, delete,
//! reservations, traffic reports, shutdown.

use super::*;

#[test]
fn full_exchange_allocate_permission_channel_data() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    let relay = c.allocate(&mut w);
    assert_eq!(relay.ip(), "192.0.2.10".parse::<IpAddr>().unwrap());
    assert!((50000..=50009).contains(&relay.port()));
    let id = relay_id(&w, relay);
    assert!(w.sockets.open.contains(&id));
    let peer: SocketAddr = PEER.parse().unwrap();

    // No permission yet: peer data is dropped, Send is dropped.
    assert_eq!(w.peer(id, peer, b"early"), None);

    let resp = c.authed(&mut w, Method::CREATE_PERMISSION, peer_attr(peer));
    assert_eq!(error_code(&resp), None);
    assert!(Message::parse(&resp).unwrap().verify_integrity(&c.key()));

    // Send indication → peer, zero-copy range into the datagram.
    let mut send = Vec::new();
    let tid = c.next_tid();
    let mut b = MessageBuilder::new(&mut send, Class::Indication, Method::SEND, &tid);
    b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
    b.add(stun::DATA, b"hello peer");
    let (action, out) = w.client(c.addr, &send);
    assert!(out.is_empty());
    match action {
        ClientAction::ToPeer {
            relay: r,
            peer: p,
            payload,
        } => {
            assert_eq!((r, p), (id, peer));
            assert_eq!(&send[payload], b"hello peer");
        }
        other => panic!("unexpected {other:?}"),
    }

    // Peer → client without a channel: Data indication.
    let data = w.peer(id, peer, b"hi client").expect("data indication");
    let msg = Message::parse(&data).unwrap();
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Indication, Method::DATA)
    );
    assert_eq!(msg.xor_address(stun::XOR_PEER_ADDRESS).unwrap(), Some(peer));
    assert_eq!(msg.data().unwrap().value, b"hi client");

    // ChannelBind, then ChannelData both ways.
    let resp = c.authed(&mut w, Method::CHANNEL_BIND, |b| {
        b.add_channel_number(0x4001);
        b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
    });
    assert_eq!(error_code(&resp), None);
    let mut cd = Vec::new();
    stun::ChannelData::encode(0x4001, b"via channel", false, &mut cd);
    match w.client(c.addr, &cd).0 {
        ClientAction::ToPeer {
            relay: r,
            peer: p,
            payload,
        } => {
            assert_eq!((r, p), (id, peer));
            assert_eq!(&cd[payload], b"via channel");
        }
        other => panic!("unexpected {other:?}"),
    }
    let back = w.peer(id, peer, b"odd-len").expect("channel data");
    let parsed = stun::ChannelData::parse(&back).unwrap();
    assert_eq!((parsed.number, parsed.payload), (0x4001, &b"odd-len"[..]));
    assert_eq!(back.len(), 4 + 7, "no padding over UDP");

    // Unbound channel and unknown client: dropped and counted.
    let mut cd2 = Vec::new();
    stun::ChannelData::encode(0x4002, b"x", false, &mut cd2);
    assert_eq!(w.client(c.addr, &cd2).0, ClientAction::None);
    assert_eq!(w.server.counters().no_channel, 1);
    assert_eq!(
        w.client("203.0.113.99:1".parse().unwrap(), &cd).0,
        ClientAction::None
    );
    assert_eq!(w.server.counters().no_allocation, 1);
}

#[test]
fn allocation_expires_between_599_and_601_seconds() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    let relay = c.allocate(&mut w);
    let id = relay_id(&w, relay);
    w.events();
    w.advance(599);
    assert_eq!(w.server.allocation_count(), 1);
    assert!(w.events().is_empty());
    w.advance(2);
    assert_eq!(w.server.allocation_count(), 0);
    assert!(!w.sockets.open.contains(&id), "relay socket closed");
    let events = w.events();
    assert!(matches!(
        events.as_slice(),
        [Event::AllocationDeleted {
            reason: DeleteReason::Expired,
            ..
        }]
    ));
    // The port went back to the pool and the 5-tuple may allocate again.
    let relay2 = c.allocate(&mut w);
    assert!((50000..=50009).contains(&relay2.port()));
}

#[test]
fn refresh_extends_and_shortens_and_zero_deletes() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    c.allocate(&mut w);
    let resp = c.authed(&mut w, Method::REFRESH, |b| {
        b.add_u32(stun::LIFETIME, 3000);
    });
    let msg = Message::parse(&resp).unwrap();
    assert_eq!(msg.lifetime().unwrap(), Some(3000));
    // Above the maximum: clamped to 3600. Below the default: raised to 600.
    let resp = c.authed(&mut w, Method::REFRESH, |b| {
        b.add_u32(stun::LIFETIME, 99999);
    });
    assert_eq!(
        Message::parse(&resp).unwrap().lifetime().unwrap(),
        Some(3600)
    );
    let resp = c.authed(&mut w, Method::REFRESH, |b| {
        b.add_u32(stun::LIFETIME, 30);
    });
    assert_eq!(
        Message::parse(&resp).unwrap().lifetime().unwrap(),
        Some(600)
    );
    // Shortened from 3600 to 600: must expire at 600 s, not 3600 s.
    w.advance(599);
    assert_eq!(w.server.allocation_count(), 1);
    w.advance(2);
    assert_eq!(w.server.allocation_count(), 0);

    c.allocate(&mut w);
    w.events();
    let resp = c.authed(&mut w, Method::REFRESH, |b| {
        b.add_u32(stun::LIFETIME, 0);
    });
    assert_eq!(Message::parse(&resp).unwrap().lifetime().unwrap(), Some(0));
    assert_eq!(w.server.allocation_count(), 0);
    let events = w.events();
    assert!(matches!(
        events.as_slice(),
        [
            Event::AllocationRefreshed { lifetime: 0, .. },
            Event::AllocationDeleted {
                reason: DeleteReason::Deleted,
                ..
            }
        ]
    ));
    // A retransmitted delete finds nothing: 437.
    let resp = c.authed(&mut w, Method::REFRESH, |b| {
        b.add_u32(stun::LIFETIME, 0);
    });
    assert_eq!(error_code(&resp), Some(437));
}

#[test]
fn permission_expires_at_300_seconds_and_channel_at_600() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    let relay = c.allocate(&mut w);
    let id = relay_id(&w, relay);
    let peer: SocketAddr = PEER.parse().unwrap();
    c.authed(&mut w, Method::CREATE_PERMISSION, peer_attr(peer));
    w.advance(299);
    assert!(w.peer(id, peer, b"a").is_some());
    w.advance(2);
    assert!(w.peer(id, peer, b"a").is_none());
    // Keep the allocation alive; bind a channel (which also installs the permission).
    c.authed(&mut w, Method::REFRESH, |_| {});
    c.authed(&mut w, Method::CHANNEL_BIND, |b| {
        b.add_channel_number(0x4000);
        b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
    });
    let mut cd = Vec::new();
    stun::ChannelData::encode(0x4000, b"x", false, &mut cd);
    assert!(matches!(
        w.client(c.addr, &cd).0,
        ClientAction::ToPeer { .. }
    ));
    w.advance(301);
    // Permission lapsed (not refreshed): the channel cannot carry data any more.
    assert_eq!(w.client(c.addr, &cd).0, ClientAction::None);
    // One peer datagram and one ChannelData refused for want of a permission.
    assert_eq!(w.server.counters().no_permission, 2);
}

#[test]
fn retransmitted_allocate_gets_the_same_answer() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    let req = c.build(Method::ALLOCATE, false, |_| {});
    c.nonce = Some(nonce_of(&w.request(c.addr, &req)));
    let tid = c.next_tid();
    let req = c.build_with_tid(Method::ALLOCATE, tid, true, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
    });
    let first = w.request(c.addr, &req);
    let second = w.request(c.addr, &req);
    assert_eq!(error_code(&second), None);
    let relay = |r: &[u8]| {
        Message::parse(r)
            .unwrap()
            .xor_address(stun::XOR_RELAYED_ADDRESS)
            .unwrap()
    };
    assert_eq!(relay(&first), relay(&second));
    assert_eq!(w.server.allocation_count(), 1);
}

#[test]
fn binding_answers_reflexive_address() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    let req = c.build(Method::BINDING, false, |_| {});
    let resp = w.request(c.addr, &req);
    let msg = Message::parse(&resp).unwrap();
    assert_eq!(msg.class(), Class::Success);
    assert_eq!(
        msg.xor_address(stun::XOR_MAPPED_ADDRESS).unwrap(),
        Some(c.addr)
    );
    assert!(msg.has_fingerprint());
    assert_eq!(msg.software().unwrap(), Some("uturn-test"));
}

#[test]
fn even_port_and_reservation_token() {
    let mut w = World::new();
    let mut a = Client::new("203.0.113.5:1");
    let req = a.build(Method::ALLOCATE, false, |_| {});
    a.nonce = Some(nonce_of(&w.request(a.addr, &req)));
    let resp = a.authed(&mut w, Method::ALLOCATE, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
        b.add_even_port(true);
    });
    let msg = Message::parse(&resp).unwrap();
    let relay = msg.xor_address(stun::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert_eq!(relay.port() % 2, 0);
    let token = msg.reservation_token().unwrap().expect("token");
    let mut b = Client::new("203.0.113.5:2");
    let req = b.build(Method::ALLOCATE, false, |_| {});
    b.nonce = Some(nonce_of(&w.request(b.addr, &req)));
    let resp = b.authed(&mut w, Method::ALLOCATE, |m| {
        m.add_requested_transport(stun::TRANSPORT_UDP);
        m.add_reservation_token(token);
    });
    let relay_b = Message::parse(&resp)
        .unwrap()
        .xor_address(stun::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(relay_b.port(), relay.port() + 1);
    // A used (or unknown) token: 508.
    let mut c = Client::new("203.0.113.5:3");
    let req = c.build(Method::ALLOCATE, false, |_| {});
    c.nonce = Some(nonce_of(&w.request(c.addr, &req)));
    let resp = c.authed(&mut w, Method::ALLOCATE, |m| {
        m.add_requested_transport(stun::TRANSPORT_UDP);
        m.add_reservation_token(token);
    });
    assert_eq!(error_code(&resp), Some(508));
}

#[test]
fn traffic_reports_and_exact_totals() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    let relay = c.allocate(&mut w);
    let id = relay_id(&w, relay);
    let peer: SocketAddr = PEER.parse().unwrap();
    c.authed(&mut w, Method::CHANNEL_BIND, |b| {
        b.add_channel_number(0x4000);
        b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
    });
    w.events();
    let mut cd = Vec::new();
    stun::ChannelData::encode(0x4000, &[7u8; 100], false, &mut cd);
    for _ in 0..5000 {
        assert!(matches!(
            w.client(c.addr, &cd).0,
            ClientAction::ToPeer { .. }
        ));
    }
    for _ in 0..300 {
        assert!(w.peer(id, peer, &[1u8; 50]).is_some());
    }
    let events = w.events();
    assert_eq!(events.len(), 1, "one report at 4096 client-side packets");
    let Event::Traffic { delta, .. } = &events[0] else {
        panic!()
    };
    assert_eq!(delta.client.rcvp, 4096);
    assert_eq!(delta.client.rcvb, 4096 * 104);
    c.authed(&mut w, Method::REFRESH, |b| {
        b.add_u32(stun::LIFETIME, 0);
    });
    let events = w.events();
    let Some(Event::AllocationDeleted { last, totals, .. }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(last.client.rcvp, 5000 - 4096);
    assert_eq!(totals.client.rcvp, 5000);
    assert_eq!(totals.client.rcvb, 5000 * 104);
    assert_eq!(totals.peer.sentp, 5000);
    assert_eq!(totals.peer.sentb, 5000 * 100);
    assert_eq!(totals.peer.rcvp, 300);
    assert_eq!(totals.peer.rcvb, 300 * 50);
    assert_eq!(totals.client.sentp, 300);
    assert_eq!(totals.client.sentb, 300 * 54);
}

#[test]
fn shutdown_deletes_everything() {
    let mut w = World::new();
    for i in 0..5 {
        Client::new(&format!("203.0.113.5:{}", 100 + i)).allocate(&mut w);
    }
    w.events();
    let now = w.now;
    w.server.shutdown(now, &mut w.sockets);
    assert_eq!(w.server.allocation_count(), 0);
    assert!(w.sockets.open.is_empty());
    let deleted = w
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::AllocationDeleted {
                    reason: DeleteReason::Shutdown,
                    ..
                }
            )
        })
        .count();
    assert_eq!(deleted, 5);
}

/// `-X` once per family: XOR-RELAYED-ADDRESS advertises the public address of the relay's
/// family, whatever order they were given in; `-X PUBLIC/PRIVATE` maps only PRIVATE.
#[test]
fn external_ip_is_advertised_per_family() {
    let v4_public: IpAddr = "203.0.114.1".parse().unwrap();
    let v6_public: IpAddr = "2001:db9::1".parse().unwrap();
    let relayed = |external: Vec<(IpAddr, Option<IpAddr>)>| {
        let mut w = World::with(move |c| {
            c.relay_ip_v6 = Some("fd00::10".parse().unwrap());
            c.external_ips = external;
        });
        let v4 = Client::new("203.0.113.5:1").allocate(&mut w);
        w.local = "[2001:db9::10]:3478".parse().unwrap();
        let mut c6 = Client::new("[2001:db9::5]:1");
        c6.learn_nonce(&mut w);
        let resp = c6.authed(&mut w, Method::ALLOCATE, |b| {
            b.add_requested_transport(stun::TRANSPORT_UDP);
            b.add_address_family(stun::REQUESTED_ADDRESS_FAMILY, stun::FAMILY_IPV6);
        });
        let msg = Message::parse(&resp).unwrap();
        let v6 = msg.xor_address(stun::XOR_RELAYED_ADDRESS).unwrap().unwrap();
        assert!((50000..=50009).contains(&v4.port()) && (50000..=50009).contains(&v6.port()));
        (v4.ip(), v6.ip())
    };
    let relay4: IpAddr = "192.0.2.10".parse().unwrap();
    let relay6: IpAddr = "fd00::10".parse().unwrap();
    assert_eq!(relayed(vec![]), (relay4, relay6));
    assert_eq!(
        relayed(vec![(v6_public, None), (v4_public, None)]),
        (v4_public, v6_public)
    );
    assert_eq!(
        relayed(vec![(v4_public, Some(relay4)), (v6_public, Some(relay6))]),
        (v4_public, v6_public)
    );
    // A private part that is not the relay address maps nothing.
    let other: IpAddr = "192.0.2.99".parse().unwrap();
    assert_eq!(relayed(vec![(v4_public, Some(other))]), (relay4, relay6));
}
