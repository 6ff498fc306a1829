//! The server's own addresses as peers: reachable on relay ports (two clients of one
//! server, also on a private relay IP and without options), nothing else on the host.

use super::*;
use crate::testing::peer_buffer;

/// A server relaying on the private 10.0.0.5, listening on 127.0.0.1 too.
fn private_relay(tweak: impl FnOnce(&mut ServerConfig)) -> World {
    World::with(|c| {
        c.relay_ip = "10.0.0.5".parse().unwrap();
        c.own_addresses = vec!["10.0.0.5".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        c.relay_range = 50000..=50009;
        tweak(c);
    })
}

fn send(w: &mut World, c: &mut Client, peer: SocketAddr) -> ClientAction {
    let mut send = Vec::new();
    let tid = c.next_tid();
    MessageBuilder::new(&mut send, Class::Indication, Method::SEND, &tid)
        .add_xor_address(stun::XOR_PEER_ADDRESS, peer)
        .add(stun::DATA, b"x");
    w.client(c.addr, &send).0
}

fn from_peer(w: &mut World, relay: SocketAddr, peer: SocketAddr) -> bool {
    let id = w.relay_id(relay);
    let (mut buf, range) = peer_buffer(b"y", 0);
    matches!(
        w.server.handle_peer(w.now, id, peer, &mut buf, range),
        PeerAction::ToClient { .. }
    )
}

#[test]
fn two_clients_reach_each_others_private_relay_addresses() {
    let mut w = private_relay(|_| {});
    let mut a = Client::new("203.0.113.5:1");
    let mut b = Client::new("203.0.113.5:2");
    let relay_a = a.allocate(&mut w);
    let relay_b = b.allocate(&mut w);
    assert_eq!(relay_a.ip(), "10.0.0.5".parse::<IpAddr>().unwrap());
    // Private, yet allowed: it is this server's relay address.
    assert_eq!(error_code(&a.permit(&mut w, &[relay_b])), None);
    assert_eq!(error_code(&b.bind_channel(&mut w, 0x4000, relay_a)), None);
    assert!(
        matches!(send(&mut w, &mut a, relay_b), ClientAction::ToPeer { peer, .. } if peer == relay_b)
    );
    assert!(from_peer(&mut w, relay_a, relay_b));
    assert!(from_peer(&mut w, relay_b, relay_a));
    // Another private address is still refused.
    let other: SocketAddr = "10.0.0.6:50001".parse().unwrap();
    assert_eq!(error_code(&a.permit(&mut w, &[other])), Some(403));
    assert_eq!(w.server.counters().own_address_port, 0);
}

#[test]
fn own_addresses_are_reachable_on_relay_ports_only() {
    let mut w = private_relay(|_| {});
    let mut a = Client::new("203.0.113.5:1");
    let relay_a = a.allocate(&mut w);
    let own: IpAddr = "10.0.0.5".parse().unwrap();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    // Loopback is refused by default, but 127.0.0.1 is one of ours: allowed, ports limited.
    assert_eq!(
        error_code(&a.permit(&mut w, &[SocketAddr::new(own, 1), SocketAddr::new(lo, 1)])),
        None
    );
    let mut dropped = 0;
    for ip in [own, lo] {
        for (port, passes) in [
            (50000, true),
            (50009, true),
            (49999, false),
            (50010, false),
            (22, false),
            (3478, false),
            (6379, false),
        ] {
            let peer = SocketAddr::new(ip, port);
            let to = matches!(send(&mut w, &mut a, peer), ClientAction::ToPeer { .. });
            let back = from_peer(&mut w, relay_a, peer);
            assert_eq!((to, back), (passes, passes), "{peer}");
            dropped += 2 * u64::from(!passes);
            assert_eq!(w.server.counters().own_address_port, dropped, "{peer}");
        }
    }
    // The same through a channel bound to a port outside the range.
    let ssh = SocketAddr::new(own, 22);
    assert_eq!(error_code(&a.bind_channel(&mut w, 0x4001, ssh)), None);
    let mut cd = Vec::new();
    stun::ChannelData::encode(0x4001, b"x", false, &mut cd);
    assert_eq!(w.client(a.addr, &cd).0, ClientAction::None);
    assert_eq!(w.server.counters().own_address_port, dropped + 1);
}

#[test]
fn allowed_peer_ip_opens_every_port_of_an_own_address() {
    let mut w = private_relay(|c| {
        c.policy.allowed = vec!["10.0.0.5".parse().unwrap()];
    });
    let mut a = Client::new("203.0.113.5:1");
    let relay_a = a.allocate(&mut w);
    let ssh: SocketAddr = "10.0.0.5:22".parse().unwrap();
    assert_eq!(error_code(&a.permit(&mut w, &[ssh])), None);
    assert!(matches!(
        send(&mut w, &mut a, ssh),
        ClientAction::ToPeer { .. }
    ));
    assert!(from_peer(&mut w, relay_a, ssh));
    // Loopback is not named: it keeps the port limit.
    let lo: SocketAddr = "127.0.0.1:22".parse().unwrap();
    assert_eq!(error_code(&a.permit(&mut w, &[lo])), None);
    assert_eq!(send(&mut w, &mut a, lo), ClientAction::None);
    assert_eq!(w.server.counters().own_address_port, 1);
}

#[test]
fn own_addresses_in_other_spellings_on_an_ipv6_relay() {
    let mut w = private_relay(|c| {
        c.relay_ip_v6 = Some("fd00::5".parse().unwrap());
        c.own_addresses.push("fd00::5".parse().unwrap());
    });
    w.local = "[2001:db9::10]:3478".parse().unwrap();
    let mut a = Client::new("[2001:db9::5]:40000");
    let req = a.build(Method::ALLOCATE, false, |_| {});
    a.nonce = Some(nonce_of(&w.request(a.addr, &req)));
    let resp = a.authed(&mut w, Method::ALLOCATE, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
        b.add_address_family(stun::REQUESTED_ADDRESS_FAMILY, stun::FAMILY_IPV6);
    });
    assert_eq!(error_code(&resp), None);
    // The mapped spelling of the IPv4 own address is own (ports limited); 6to4, Teredo and
    // NAT64 spellings of it are refused like their ranges; the IPv6 own address is own.
    for (peer, code) in [
        ("[::ffff:10.0.0.5]:22", None),
        ("[fd00::5]:22", None),
        ("[2002:a00:5::1]:50001", Some(403)),
        ("[2001:0:a00:5::]:50001", Some(403)),
        ("[64:ff9b::a00:5]:50001", Some(403)),
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(error_code(&a.permit(&mut w, &[peer])), code, "{peer}");
    }
    for peer in ["[::ffff:10.0.0.5]:22", "[fd00::5]:22"] {
        assert_eq!(
            send(&mut w, &mut a, peer.parse().unwrap()),
            ClientAction::None,
            "{peer}"
        );
    }
    assert_eq!(w.server.counters().own_address_port, 2);
    let relay_port: SocketAddr = "[fd00::5]:50002".parse().unwrap();
    assert!(matches!(
        send(&mut w, &mut a, relay_port),
        ClientAction::ToPeer { .. }
    ));
}
