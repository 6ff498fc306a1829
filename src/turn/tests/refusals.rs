//! Error responses and limits: every refusal path, capacity, quotas, bandwidth.

use super::*;

#[test]
fn error_paths() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    // 401 without credentials; the challenge carries REALM and NONCE.
    let req = c.build(Method::ALLOCATE, false, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
    });
    let resp = w.request(c.addr, &req);
    assert_eq!(error_code(&resp), Some(401));
    c.nonce = Some(nonce_of(&resp));
    // 401 wrong password, 401 unknown user.
    c.password = "wrong".into();
    let resp = c.authed(&mut w, Method::ALLOCATE, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
    });
    assert_eq!(error_code(&resp), Some(401));
    c.username = "mallory".into();
    let resp = c.authed(&mut w, Method::ALLOCATE, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
    });
    assert_eq!(error_code(&resp), Some(401));
    c.username = "alice".into();
    c.password = "secret".into();
    // 438 bogus nonce.
    let saved = c.nonce.replace("0123456789abcdef01234567".into());
    let resp = c.authed(&mut w, Method::ALLOCATE, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
    });
    assert_eq!(error_code(&resp), Some(438));
    c.nonce = saved;
    // 400 no REQUESTED-TRANSPORT; 442 TCP.
    let resp = c.authed(&mut w, Method::ALLOCATE, |_| {});
    assert_eq!(error_code(&resp), Some(400));
    let resp = c.authed(&mut w, Method::ALLOCATE, |b| {
        b.add_requested_transport(stun::TRANSPORT_TCP);
    });
    assert_eq!(error_code(&resp), Some(442));
    // 440 IPv6 relay requested, none configured.
    let resp = c.authed(&mut w, Method::ALLOCATE, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
        b.add_address_family(stun::REQUESTED_ADDRESS_FAMILY, stun::FAMILY_IPV6);
    });
    assert_eq!(error_code(&resp), Some(440));
    // 420 unknown comprehension-required attribute, listed back.
    let req = c.build(Method::ALLOCATE, true, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
        b.add(0x0077, b"????");
    });
    let resp = w.request(c.addr, &req);
    assert_eq!(error_code(&resp), Some(420));
    let msg = Message::parse(&resp).unwrap();
    assert_eq!(
        msg.get(stun::UNKNOWN_ATTRIBUTES).unwrap().value,
        &[0x00, 0x77]
    );
    // 437 CreatePermission without allocation.
    let resp = c.authed(
        &mut w,
        Method::CREATE_PERMISSION,
        peer_attr(PEER.parse().unwrap()),
    );
    assert_eq!(error_code(&resp), Some(437));
    assert_eq!(w.server.allocation_count(), 0);

    c.allocate(&mut w);
    // 437 second Allocate with a new transaction id.
    let resp = c.authed(&mut w, Method::ALLOCATE, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
    });
    assert_eq!(error_code(&resp), Some(437));
    // 441 another user on this 5-tuple.
    c.username = "bob".into();
    c.password = "hunter2".into();
    let resp = c.authed(&mut w, Method::REFRESH, |_| {});
    assert_eq!(error_code(&resp), Some(441));
    c.username = "alice".into();
    c.password = "secret".into();
    // 403 refused peers; 443 family mismatch; 400 bad channel numbers and conflicts.
    for bad in [
        "127.0.0.1:5",
        "0.0.0.0:5",
        "10.1.2.3:5",
        "224.0.0.1:5",
        "[::ffff:127.0.0.1]:5",
    ] {
        let peer: SocketAddr = bad.parse().unwrap();
        let resp = c.authed(&mut w, Method::CREATE_PERMISSION, peer_attr(peer));
        let want = if peer.is_ipv4() { 403 } else { 443 };
        assert_eq!(error_code(&resp), Some(want), "{bad}");
    }
    let resp = c.authed(&mut w, Method::CREATE_PERMISSION, |_| {});
    assert_eq!(error_code(&resp), Some(400));
    let peer: SocketAddr = PEER.parse().unwrap();
    for number in [0x3FFF, 0x8000, 0xFFFF] {
        let resp = c.authed(&mut w, Method::CHANNEL_BIND, |b| {
            b.add_channel_number(number);
            b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
        });
        assert_eq!(error_code(&resp), Some(400), "{number:#x}");
    }
    let bind = |c: &mut Client, w: &mut World, number: u16, peer: &str| {
        let peer: SocketAddr = peer.parse().unwrap();
        error_code(&c.authed(w, Method::CHANNEL_BIND, |b| {
            b.add_channel_number(number);
            b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
        }))
    };
    assert_eq!(bind(&mut c, &mut w, 0x4000, PEER), None);
    assert_eq!(
        bind(&mut c, &mut w, 0x4000, PEER),
        None,
        "rebinding the same pair refreshes"
    );
    assert_eq!(bind(&mut c, &mut w, 0x4000, "203.0.114.8:1"), Some(400));
    assert_eq!(bind(&mut c, &mut w, 0x4001, PEER), Some(400));
    // 400 unknown method.
    let req = c.build(Method(0x0055), true, |_| {});
    assert_eq!(error_code(&w.request(c.addr, &req)), Some(400));
}

#[test]
fn capacity_limits_give_508() {
    let mut w = World::with(|cfg| cfg.ports = 50000..=50001);
    let mut a = Client::new("203.0.113.5:1");
    let mut b = Client::new("203.0.113.5:2");
    let mut c = Client::new("203.0.113.5:3");
    a.allocate(&mut w);
    b.allocate(&mut w);
    let req = c.build(Method::ALLOCATE, false, |_| {});
    c.nonce = Some(nonce_of(&w.request(c.addr, &req)));
    let resp = c.authed(&mut w, Method::ALLOCATE, |m| {
        m.add_requested_transport(stun::TRANSPORT_UDP);
    });
    assert_eq!(error_code(&resp), Some(508));
    assert_eq!(w.server.counters().ports_exhausted, 1);
    // Permissions beyond the cap: 508.
    let many: Vec<SocketAddr> = (1..=9)
        .map(|i| format!("203.0.114.{i}:1").parse().unwrap())
        .collect();
    let resp = a.authed(&mut w, Method::CREATE_PERMISSION, |m| {
        for p in &many {
            m.add_xor_address(stun::XOR_PEER_ADDRESS, *p);
        }
    });
    assert_eq!(error_code(&resp), Some(508));
    assert_eq!(w.server.counters().permissions_capped, 1);
}

#[test]
fn busy_port_is_skipped() {
    let mut w = World::with(|cfg| cfg.ports = 50000..=50002);
    w.sockets.busy.extend([50000, 50001]);
    let mut c = Client::new("203.0.113.5:1");
    assert_eq!(c.allocate(&mut w).port(), 50002);
}

#[test]
fn quotas_give_486() {
    let quotas = Arc::new(Quotas::new(1, 0));
    let mut w = World::with_observer(|_| {}, users(), quotas.clone());
    let mut a = Client::new("203.0.113.5:1");
    a.allocate(&mut w);
    let mut a2 = Client::new("203.0.113.5:2");
    let req = a2.build(Method::ALLOCATE, false, |_| {});
    a2.nonce = Some(nonce_of(&w.request(a2.addr, &req)));
    let resp = a2.authed(&mut w, Method::ALLOCATE, |m| {
        m.add_requested_transport(stun::TRANSPORT_UDP);
    });
    assert_eq!(error_code(&resp), Some(486));
    // Another user is fine; deleting frees the quota.
    let mut b = Client::new("203.0.113.5:3");
    b.username = "bob".into();
    b.password = "hunter2".into();
    b.allocate(&mut w);
    a.authed(&mut w, Method::REFRESH, |m| {
        m.add_u32(stun::LIFETIME, 0);
    });
    assert_eq!(quotas.total(), 1);
    a2.allocate(&mut w);
}

#[test]
fn max_bps_limits_relayed_bytes() {
    let mut w = World::with(|cfg| cfg.max_bps = 10_000);
    let mut c = Client::new("203.0.113.5:40000");
    c.allocate(&mut w);
    let peer: SocketAddr = PEER.parse().unwrap();
    c.authed(&mut w, Method::CHANNEL_BIND, |b| {
        b.add_channel_number(0x4000);
        b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
    });
    let mut cd = Vec::new();
    stun::ChannelData::encode(0x4000, &[0u8; 96], false, &mut cd);
    let mut passed = 0;
    // 5 simulated seconds at 10 packets/ms offered: about 10,000 B/s may pass.
    for _ in 0..5000 {
        w.now += Duration::from_millis(1);
        if matches!(w.client(c.addr, &cd).0, ClientAction::ToPeer { .. }) {
            passed += 1;
        }
    }
    let bytes = passed * 100;
    assert!((50_000..=60_000).contains(&bytes), "{bytes} bytes passed");
    assert!(w.server.counters().rate_limited > 0);
}

#[test]
fn a_shard_with_an_empty_slice_borrows_ports_from_the_others() {
    let exchange = Arc::new(crate::turn::ports::PortExchange::new());
    let shard = |ports: std::ops::RangeInclusive<u16>, base: u64| {
        let x = exchange.clone();
        World::with(move |c| {
            c.ports = ports;
            c.port_exchange = x;
            c.id_base = base;
            c.id_stride = 2;
        })
    };
    let mut a = shard(50000..=50001, 0);
    let mut b = shard(50002..=50003, 1);
    let mut clients: Vec<Client> = (1..=4)
        .map(|i| Client::new(&format!("203.0.113.5:{i}")))
        .collect();
    let mut relays = Vec::new();
    for c in &mut clients[..3] {
        relays.push(c.allocate(&mut a));
    }
    // A's own slice first, then one of B's ports.
    assert!(relays[..2]
        .iter()
        .all(|r| (50000..=50001).contains(&r.port())));
    assert!((50002..=50003).contains(&relays[2].port()));
    assert_eq!(a.server.counters().ports_exhausted, 0);
    relays.push(clients[3].allocate(&mut b));
    // Now every port of the whole range is in use: 508 on either shard.
    let mut late = Client::new("203.0.113.5:9");
    assert_eq!(error_code(&late.try_allocate(&mut b)), Some(508));
    assert_eq!(error_code(&late.try_allocate(&mut a)), Some(508));
    assert_eq!(b.server.counters().ports_exhausted, 1);
    // The borrowed port goes back to B's slice when A's allocation ends.
    let resp = clients[2].authed(&mut a, Method::REFRESH, |m| {
        m.add_u32(stun::LIFETIME, 0);
    });
    assert_eq!(error_code(&resp), None);
    assert_eq!(late.allocate(&mut b), relays[2]);
}
