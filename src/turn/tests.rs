//! The core driven through a fake clock and fake relay sockets: no I/O, so expiry,
//! retransmission and error paths are tested in microseconds.

use super::*;
use crate::auth::{AuthDecision, AuthRequest, Observer, Quotas};
use crate::stun::{self, Class, Message, MessageBuilder, Method};
use crate::testing::{error_code, nonce_of, users, Client, World};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn relay_id(world: &World, relay: SocketAddr) -> RelayId {
    world.relay_id(relay)
}

fn peer_attr(peer: SocketAddr) -> impl FnOnce(&mut MessageBuilder<'_>) {
    move |b| {
        b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
    }
}

const PEER: &str = "198.51.100.7:9000";

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
    assert_eq!(bind(&mut c, &mut w, 0x4000, "198.51.100.8:1"), Some(400));
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
        .map(|i| format!("198.51.100.{i}:1").parse().unwrap())
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
fn stale_nonce_after_lifetime() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    c.allocate(&mut w);
    w.advance(500);
    c.authed(&mut w, Method::REFRESH, |_| {});
    w.advance(101);
    let resp = c.authed(&mut w, Method::REFRESH, |_| {});
    assert_eq!(error_code(&resp), Some(438));
    c.nonce = Some(nonce_of(&resp));
    let resp = c.authed(&mut w, Method::REFRESH, |_| {});
    assert_eq!(error_code(&resp), None);
}

#[test]
fn unauthenticated_requests_create_no_state() {
    let mut w = World::new();
    for i in 0..5000u32 {
        let mut c = Client::new(&format!("203.0.{}.{}:{}", i % 200, i % 250, 1024 + i));
        let req = c.build(Method::ALLOCATE, i % 2 == 0, |b| {
            b.add_requested_transport(stun::TRANSPORT_UDP);
        });
        let resp = w.request(c.addr, &req);
        assert!(matches!(error_code(&resp), Some(401) | Some(438)));
    }
    assert_eq!(w.server.allocation_count(), 0);
    assert_eq!(w.server.pending_auth_count(), 0);
    assert_eq!(w.server.timer_count(), 0);
    assert_eq!(w.server.slot_capacity(), 0);
    assert!(w.sockets.open.is_empty());
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

/// An observer that defers every decision to the test.
struct Deferring {
    tickets: Mutex<Vec<crate::auth::Ticket>>,
}

impl Observer for Deferring {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        match request.defer() {
            Some(t) => {
                self.tickets.lock().unwrap().push(t);
                AuthDecision::Pending
            }
            None => AuthDecision::Pending,
        }
    }
}

#[test]
fn asynchronous_authentication() {
    let observer = Arc::new(Deferring {
        tickets: Mutex::new(Vec::new()),
    });
    let mut w = World::with_observer(|_| {}, observer.clone(), Arc::new(Quotas::new(0, 0)));
    let answers: Arc<Mutex<Vec<(u64, AuthDecision)>>> = Arc::default();
    let sink = answers.clone();
    w.server
        .set_ticket_sink(Arc::new(move |id, d| sink.lock().unwrap().push((id, d))));
    let mut c = Client::new("203.0.113.5:40000");
    let req = c.build(Method::ALLOCATE, false, |_| {});
    c.nonce = Some(nonce_of(&w.request(c.addr, &req)));
    let req = c.build(Method::ALLOCATE, true, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
    });
    let (_, out) = w.client(c.addr, &req);
    assert!(out.is_empty(), "parked, no answer yet");
    assert_eq!(w.server.pending_auth_count(), 1);
    // The observer answers from "another thread".
    let ticket = observer.tickets.lock().unwrap().pop().unwrap();
    ticket.resolve(AuthDecision::Authorized(c.key()));
    let (id, decision) = answers.lock().unwrap().pop().unwrap();
    let now = w.now;
    w.server
        .handle_auth_result(now, id, decision, &mut w.sockets);
    let resp = w.server.poll_transmit().expect("answer after auth");
    assert_eq!(error_code(&resp.data), None);
    assert_eq!(w.server.allocation_count(), 1);
    // Pending requests are bounded: beyond max_pending_auth, 508 at once.
    for i in 0..6 {
        let mut d = Client::new(&format!("203.0.113.5:{}", 10 + i));
        d.nonce = c.nonce.clone();
        let req = d.build(Method::ALLOCATE, true, |b| {
            b.add_requested_transport(stun::TRANSPORT_UDP);
        });
        let (_, out) = w.client(d.addr, &req);
        if i < 4 {
            assert!(out.is_empty());
        } else {
            assert_eq!(error_code(&out[0]), Some(508));
        }
    }
    // Unanswered requests time out and are dropped.
    w.advance(6);
    assert_eq!(w.server.pending_auth_count(), 0);
    assert_eq!(w.server.counters().refused(Refusal::AuthBusy), 2);
    assert_eq!(w.server.counters().dropped(Dropped::PendingAuthExpired), 4);
}

mod prop {
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
}
