//! The peer policy on the wire with default options: the real binary refuses every
//! CVE-2020-26262 address form with 403, on IPv4 and IPv6 relays, and counts each; its own
//! addresses (here loopback) are reachable on relay ports only.

mod common;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use uturn::client::Client;
use uturn::stun;

#[test]
fn every_cve_2020_26262_form_gets_403_with_default_options() {
    let mut server = Uturn::start("auto", &["--relay-ip", "::1"]);
    let v4 = [
        "0.0.0.0",
        "0.1.2.3",
        "127.1.2.3",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "169.254.169.254",
    ];
    let v6 = [
        "::",
        "::ffff:0.0.0.0",
        "::ffff:169.254.169.254",
        "ff02::1",
        "ff0e::1",
        "fe80::1",
    ];
    let mut c4 = Client::connect(server.addr(), "alice", "secret").unwrap();
    assert!(c4.allocate(None).unwrap().is_ipv4());
    let mut c6 = Client::connect(server.addr(), "alice", "secret").unwrap();
    let relay6 = c6
        .allocate_with(&|b| {
            b.add_address_family(stun::REQUESTED_ADDRESS_FAMILY, stun::FAMILY_IPV6);
        })
        .unwrap();
    assert!(relay6.is_ipv6());
    let mut refused = 0;
    for (client, list) in [(&mut c4, &v4[..]), (&mut c6, &v6[..])] {
        for ip in list {
            let peer = SocketAddr::new(ip.parse().unwrap(), 3478);
            let r = client.create_permission(&[peer]);
            assert_eq!(
                r.as_ref().err().and_then(|e| e.code()),
                Some(403),
                "CreatePermission {peer}: {r:?}"
            );
            let r = client.channel_bind(0x4000, peer);
            assert_eq!(
                r.as_ref().err().and_then(|e| e.code()),
                Some(403),
                "ChannelBind {peer}: {r:?}"
            );
            refused += 2;
        }
    }
    // A Send indication to a refused peer is dropped, not relayed: once the Refresh sent
    // after it (same client, handled in order) is answered, nothing may be queued at the
    // sink; the counters at stop say it was dropped.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    c4.send_indication(sink.local_addr().unwrap(), b"x")
        .unwrap();
    c4.refresh(600).unwrap();
    sink.set_nonblocking(true).unwrap();
    assert!(matches!(
        sink.recv(&mut [0u8; 16]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    ));
    // The server's own addresses (it listens and relays on loopback), in every spelling:
    // permitted, but nothing is relayed to a port outside the relay range (here the TURN
    // port itself), and each attempt is counted.
    let mut own_sent = 0;
    for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "::127.0.0.1"] {
        let peer = SocketAddr::new(ip.parse().unwrap(), server.port);
        let client = if peer.is_ipv4() { &mut c4 } else { &mut c6 };
        client
            .create_permission(&[peer])
            .unwrap_or_else(|e| panic!("CreatePermission {peer}: {e:?}"));
        client.send_indication(peer, b"x").unwrap();
        client.refresh(600).unwrap();
        own_sent += 1;
    }
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    assert_eq!(log_counter(&log, "peer_refused"), refused, "{log}");
    assert_eq!(log_counter(&log, "no_permission"), 1);
    assert_eq!(log_counter(&log, "relayed_to_peer"), 0);
    assert_eq!(log_counter(&log, "own_address_port"), own_sent, "{log}");
    figure(
        "peer policy (binary, default options)",
        "CVE-2020-26262 forms refused with 403",
        format!(
            "{} addresses, CreatePermission and ChannelBind",
            v4.len() + v6.len()
        ),
    );
}
