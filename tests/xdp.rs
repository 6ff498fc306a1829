//! The XDP program alone, deterministic: BPF_PROG_TEST_RUN on crafted frames for every path
//! (IPv4/IPv6, client -> peer and peer -> client, XDP_TX and redirect, every case that must go
//! to the kernel stack unchanged), with entries installed through uturn's own map API and
//! output frames compared byte for byte with frames built by an independent reference
//! (tests/xdp/frames.rs). Runs in a network namespace it creates (tests/xdp/lab.rs).
//!
//! Needs root; without it every test fails saying so (a test not run is not a pass).

mod xdp {
    pub mod frames;
    pub mod lab;
    pub mod program;
}

use std::net::SocketAddr;

use uturn::xdp::{Action, ChannelOffload, Error, Offload, OffloadTraffic};
use xdp::frames::{channel_data, parse, pattern, Udp};
use xdp::lab::{self, ifindex, Lab, CLIENT_MAC, NEAR_MAC, PEER_MAC, XC0_MAC, XP0_MAC};
use xdp::program::{assert_pass, binding, expected, load, run, sa, v4, v6, Family};

fn client_to_peer(f: &Family) {
    let mut o = load();
    let xc0 = ifindex("xc0");
    let b = binding(f, 0x4001, 50000, f.peer);
    o.maps_mut().install(&b).unwrap();
    let mut sent = OffloadTraffic::default();

    // Lengths around the padding cases: even, odd, with and without padding, padding of
    // non-zero bytes (its bytes leave the checksum too).
    for (len, pad) in [
        (100usize, &[][..]),
        (101, &[][..]),
        (101, &[0xaa, 0xbb, 0xcc][..]),
        (102, &[0, 0][..]),
        (103, &[0x5a][..]),
        (1, &[7, 8, 9][..]),
    ] {
        let data = pattern(len, len as u8);
        let rx = Udp::new(f.client, f.server, &channel_data(0x4001, &data, pad));
        let out = o.test_run().unwrap().run(&rx.frame(), xc0, 1).unwrap();
        assert_eq!(out.action, Action::Redirect, "len {len} pad {}", pad.len());
        let want = expected(&rx, b.relay, b.peer, XP0_MAC, PEER_MAC, &data);
        assert_eq!(out.frame, want, "len {len} pad {}", pad.len());
        let p = parse(&out.frame);
        assert_eq!((p.src, p.dst, p.payload), (b.relay, b.peer, data.clone()));
        sent.to_peer.packets += 1;
        sent.to_peer.rx_bytes += (4 + len + pad.len()) as u64;
        sent.to_peer.tx_bytes += len as u64;
    }
    assert_eq!(o.maps().read_counters(&b).unwrap(), sent);

    // The next hop is cached now; the egress MTU (1400) still holds for a bigger datagram.
    let big = Udp::new(
        f.client,
        f.server,
        &channel_data(0x4001, &pattern(1400, 1), &[]),
    );
    assert_pass(
        &o,
        &big.frame(),
        xc0,
        "over the egress MTU, next hop cached",
    );
    assert_eq!(o.maps().read_counters(&b).unwrap(), sent);

    // A peer reached through the interface the datagram came in on: XDP_TX.
    let near = binding(f, 0x4002, 50000, f.near_peer);
    o.maps_mut().install(&near).unwrap();
    let data = pattern(64, 3);
    let rx = Udp::new(f.client, f.server, &channel_data(0x4002, &data, &[]));
    let out = o.test_run().unwrap().run(&rx.frame(), xc0, 1).unwrap();
    assert_eq!(out.action, Action::Tx);
    assert_eq!(
        out.frame,
        expected(&rx, near.relay, near.peer, XC0_MAC, NEAR_MAC, &data)
    );

    // A frame padded to Ethernet's minimum: the trailer goes.
    let data = pattern(2, 9);
    let rx = Udp::new(f.client, f.server, &channel_data(0x4001, &data, &[0, 0]));
    let mut frame = rx.frame();
    frame.resize(frame.len().max(60) + 4, 0xee);
    let out = o.test_run().unwrap().run(&frame, xc0, 1).unwrap();
    assert_eq!(out.action, Action::Redirect);
    assert_eq!(
        out.frame,
        expected(&rx, b.relay, b.peer, XP0_MAC, PEER_MAC, &data)
    );
}

fn peer_to_client(f: &Family) {
    let mut o = load();
    let xp0 = ifindex("xp0");
    let b = binding(f, 0x4abc, 50000, f.peer);
    o.maps_mut().install(&b).unwrap();
    let mut sent = OffloadTraffic::default();
    // Peer data may look like anything, ChannelData and STUN included.
    let look_alike = channel_data(0x4001, &[1, 2, 3, 4], &[]);
    let stun_like = [0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    for data in [
        pattern(100, 1),
        pattern(1, 2),
        pattern(333, 3),
        look_alike,
        stun_like.to_vec(),
    ] {
        let rx = Udp::new(f.peer, b.relay, &data);
        let out = o.test_run().unwrap().run(&rx.frame(), xp0, 1).unwrap();
        assert_eq!(out.action, Action::Redirect, "len {}", data.len());
        let chd = channel_data(0x4abc, &data, &[]);
        assert_eq!(
            out.frame,
            expected(&rx, f.server, f.client, XC0_MAC, CLIENT_MAC, &chd)
        );
        let p = parse(&out.frame);
        assert_eq!((p.src, p.dst, p.payload), (f.server, f.client, chd));
        sent.to_client.packets += 1;
        sent.to_client.rx_bytes += data.len() as u64;
        sent.to_client.tx_bytes += 4 + data.len() as u64;
    }
    assert_eq!(o.maps().read_counters(&b).unwrap(), sent);
}

#[test]
fn ipv4_client_to_peer() {
    let lab = Lab::new();
    lab.run(|| client_to_peer(&v4()));
}

#[test]
fn ipv6_client_to_peer() {
    let lab = Lab::new();
    lab.run(|| client_to_peer(&v6()));
}

#[test]
fn ipv4_peer_to_client() {
    let lab = Lab::new();
    lab.run(|| peer_to_client(&v4()));
}

#[test]
fn ipv6_peer_to_client() {
    let lab = Lab::new();
    lab.run(|| peer_to_client(&v6()));
}

/// The channel numbers the core accepts, at the edges of RFC 8656's 0x4000–0x4FFF and RFC
/// 5766's 0x5000–0x7FFF, are relayed both ways; the numbers just outside are not ChannelData:
/// the map API refuses them and such datagrams go to the stack.
fn channel_range_edges(f: &Family) {
    let mut o = load();
    let (xc0, xp0) = (ifindex("xc0"), ifindex("xp0"));
    for (i, channel) in [0x4000u16, 0x4fff, 0x5000, 0x7fff].into_iter().enumerate() {
        let b = binding(f, channel, 50000 + i as u16, f.peer);
        o.maps_mut().install(&b).unwrap();
        let data = pattern(60 + i, i as u8);
        let rx = Udp::new(f.client, f.server, &channel_data(channel, &data, &[]));
        let out = o.test_run().unwrap().run(&rx.frame(), xc0, 1).unwrap();
        assert_eq!(out.action, Action::Redirect, "{channel:#x} to the peer");
        let want = expected(&rx, b.relay, b.peer, XP0_MAC, PEER_MAC, &data);
        assert_eq!(out.frame, want, "{channel:#x} to the peer");
        let rx = Udp::new(f.peer, b.relay, &data);
        let out = o.test_run().unwrap().run(&rx.frame(), xp0, 1).unwrap();
        assert_eq!(out.action, Action::Redirect, "{channel:#x} to the client");
        let chd = channel_data(channel, &data, &[]);
        let want = expected(&rx, f.server, f.client, XC0_MAC, CLIENT_MAC, &chd);
        assert_eq!(out.frame, want, "{channel:#x} to the client");
        let t = o.maps().read_counters(&b).unwrap();
        assert_eq!((t.to_peer.packets, t.to_client.packets), (1, 1));
    }
    for channel in [0x3fffu16, 0x8000] {
        let refused = o.maps_mut().install(&binding(f, channel, 50010, f.peer));
        assert!(matches!(refused.unwrap_err(), Error::Unsupported(_)));
        let frame = Udp::new(f.client, f.server, &channel_data(channel, &[1; 40], &[])).frame();
        assert_pass(&o, &frame, xc0, "channel number out of range");
    }
}

#[test]
fn channel_range_edges_ipv4_and_ipv6() {
    let lab = Lab::new();
    lab.run(|| [v4(), v6()].iter().for_each(channel_range_edges));
}

/// IPv4 may carry no UDP checksum; the relayed datagram then carries none either.
#[test]
fn ipv4_without_udp_checksum_stays_without() {
    let lab = Lab::new();
    lab.run(|| {
        let f = v4();
        let mut o = load();
        let b = binding(&f, 0x4001, 50000, f.peer);
        o.maps_mut().install(&b).unwrap();
        let data = pattern(50, 5);
        let mut rx = Udp::new(f.client, f.server, &channel_data(0x4001, &data, &[0, 0]));
        rx.no_checksum = true;
        let out = run(&o, &rx.frame(), ifindex("xc0"));
        assert_eq!(out.action, Action::Redirect);
        assert_eq!(
            out.frame,
            expected(&rx, b.relay, b.peer, XP0_MAC, PEER_MAC, &data)
        );
        assert_eq!(parse(&out.frame).udp_checksum, 0);

        let mut rx = Udp::new(f.peer, b.relay, &data);
        rx.no_checksum = true;
        let out = run(&o, &rx.frame(), ifindex("xp0"));
        assert_eq!(out.action, Action::Redirect);
        let chd = channel_data(0x4001, &data, &[]);
        assert_eq!(
            out.frame,
            expected(&rx, f.server, f.client, XC0_MAC, CLIENT_MAC, &chd)
        );
    });
}

/// Everything the program must leave to the kernel stack, unchanged, in both families.
fn passes(f: &Family) {
    let mut o = load();
    let xc0 = ifindex("xc0");
    let xp0 = ifindex("xp0");
    let b = binding(f, 0x4001, 50000, f.peer);
    o.maps_mut().install(&b).unwrap();
    for (peer, port) in [(f.unresolved_peer, 50001), (f.unroutable_peer, 50002)] {
        o.maps_mut()
            .install(&binding(f, 0x4010 + (port - 50000), port, peer))
            .unwrap();
    }
    let data = pattern(40, 1);
    let cd = |ch: u16| channel_data(ch, &data, &[]);
    let from_client = |payload: &[u8]| Udp::new(f.client, f.server, payload).frame();

    // STUN (a Binding request header).
    let mut stun = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    assert_pass(&o, &from_client(&stun), xc0, "STUN");
    assert_pass(&o, &from_client(&cd(0x4002)), xc0, "unbound channel");
    assert_pass(
        &o,
        &from_client(&cd(0x5001)),
        xc0,
        "unbound RFC 5766 channel",
    );
    assert_pass(&o, &from_client(&cd(0x8001)), xc0, "channel above 0x7FFF");
    assert_pass(&o, &from_client(&cd(0x3001)), xc0, "channel below 0x4000");
    let mut short = cd(0x4001);
    short.truncate(30);
    assert_pass(&o, &from_client(&short), xc0, "length beyond the datagram");
    assert_pass(
        &o,
        &from_client(&channel_data(0x4001, &data, &[0, 0, 0, 0])),
        xc0,
        "4 bytes of padding",
    );
    assert_pass(
        &o,
        &from_client(&channel_data(0x4001, &pattern(41, 1), &[0, 0])),
        xc0,
        "padding not to a multiple of 4",
    );
    assert_pass(
        &o,
        &from_client(&channel_data(0x4001, &[], &[])),
        xc0,
        "empty ChannelData",
    );
    assert_pass(&o, &from_client(&[0x40, 0x01, 0]), xc0, "3 bytes");

    // Another 5-tuple than the bound client's, same channel.
    for (src, dst) in [
        (SocketAddr::new(f.client.ip(), 40001), f.server),
        (f.near_peer, f.server),
        (f.client, SocketAddr::new(f.server.ip(), 3479)),
    ] {
        assert_pass(
            &o,
            &Udp::new(src, dst, &cd(0x4001)).frame(),
            xc0,
            "other 5-tuple",
        );
    }
    // A peer without an entry, or sending to another relay port.
    assert_pass(
        &o,
        &Udp::new(SocketAddr::new(f.peer.ip(), 7777), b.relay, &data).frame(),
        xp0,
        "unbound peer port",
    );
    assert_pass(
        &o,
        &Udp::new(f.peer, SocketAddr::new(b.relay.ip(), 50009), &data).frame(),
        xp0,
        "other relay port",
    );

    // No neighbour yet (the stack resolves it), no route.
    assert_pass(&o, &from_client(&cd(0x4011)), xc0, "no neighbour");
    assert_pass(&o, &from_client(&cd(0x4012)), xc0, "no route");
    // Too big for the peers' interface (MTU 1400) once relayed.
    let big = pattern(1400, 2);
    assert_pass(
        &o,
        &from_client(&channel_data(0x4001, &big, &[])),
        xc0,
        "over the egress MTU",
    );
    assert_pass(
        &o,
        &Udp::new(f.peer, b.relay, &pattern(1480, 3)).frame(),
        xp0,
        "over the egress MTU (reverse)",
    );
    // Ingress on an interface without forwarding: loopback, where forwarding is off.
    assert_pass(
        &o,
        &from_client(&cd(0x4001)),
        1,
        "forwarding off on ingress",
    );

    // The frame does not hold the whole datagram.
    let mut cut = from_client(&cd(0x4001));
    cut.truncate(cut.len() - 1);
    assert_pass(&o, &cut, xc0, "truncated frame");
    // VLAN-tagged.
    let mut tagged = from_client(&cd(0x4001));
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    assert_pass(&o, &tagged, xc0, "VLAN tag");
    // Not IP.
    let mut arp = from_client(&cd(0x4001));
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_pass(&o, &arp, xc0, "not IP");

    if f.client.is_ipv4() {
        let base = from_client(&cd(0x4001));
        let mut mf = base.clone();
        mf[20] |= 0x20; // more fragments
        assert_pass(&o, &mf, xc0, "first fragment");
        let mut off = base.clone();
        off[21] = 0x10; // fragment offset
        assert_pass(&o, &off, xc0, "later fragment");
        let mut opts = base.clone();
        opts.splice(34..34, [1, 1, 1, 0]); // NOP NOP NOP EOL
        opts[14] = 0x46;
        let tot = u16::from_be_bytes([opts[16], opts[17]]) + 4;
        opts[16..18].copy_from_slice(&tot.to_be_bytes());
        assert_pass(&o, &opts, xc0, "IPv4 options");
        let mut tcp = base.clone();
        tcp[23] = 6;
        assert_pass(&o, &tcp, xc0, "TCP");
        let mut damaged = base;
        damaged[22] ^= 0x01; // TTL changed, header checksum left as it was
        assert_pass(&o, &damaged, xc0, "IPv4 header checksum wrong");
    } else {
        let base = from_client(&cd(0x4001));
        let mut frag = base.clone();
        frag.splice(54..54, [17, 0, 0, 1, 0, 0, 0, 1]); // fragment header, M=1
        frag[20] = 44;
        let plen = u16::from_be_bytes([frag[18], frag[19]]) + 8;
        frag[18..20].copy_from_slice(&plen.to_be_bytes());
        assert_pass(&o, &frag, xc0, "IPv6 fragment header");
        let mut zero = base;
        zero[60..62].copy_from_slice(&[0, 0]);
        assert_pass(&o, &zero, xc0, "IPv6 UDP without checksum");
    }

    // Nothing above was counted.
    assert_eq!(
        o.maps().read_counters(&b).unwrap(),
        OffloadTraffic::default()
    );
}

#[test]
fn ipv4_passes_to_the_stack() {
    let lab = Lab::new();
    lab.run(|| passes(&v4()));
}

#[test]
fn ipv6_passes_to_the_stack() {
    let lab = Lab::new();
    lab.run(|| passes(&v6()));
}

/// A namespace with no routes at all: the fib lookup fails and the datagram passes.
#[test]
fn fib_lookup_failure_passes() {
    let ns = lab::Netns::new();
    let lab = Lab { ns };
    lab.run(|| {
        for f in [v4(), v6()] {
            let mut o = load();
            let b = binding(&f, 0x4001, 50000, f.peer);
            o.maps_mut().install(&b).unwrap();
            let frame =
                Udp::new(f.client, f.server, &channel_data(0x4001, &[1, 2, 3], &[0])).frame();
            assert_pass(&o, &frame, ifindex("lo"), "no route in the namespace");
            assert_pass(&o, &frame, 0, "no ingress interface given");
            let frame = Udp::new(f.peer, b.relay, &[1, 2, 3]).frame();
            assert_pass(
                &o,
                &frame,
                ifindex("lo"),
                "no route in the namespace (reverse)",
            );
            assert_eq!(
                o.maps().read_counters(&b).unwrap(),
                OffloadTraffic::default()
            );
        }
    });
}

/// The map API: idempotent install keeps counters, conflicts refused, remove returns the
/// traffic and stops the fast path, bad bindings refused before reaching the kernel.
#[test]
fn map_api_install_remove_counters() {
    let lab = Lab::new();
    lab.run(|| {
        let f = v4();
        let mut o = load();
        let xc0 = ifindex("xc0");
        let b = binding(&f, 0x4001, 50000, f.peer);
        o.maps_mut().install(&b).unwrap();
        let frame = Udp::new(f.client, f.server, &channel_data(0x4001, &[9; 10], &[0, 0])).frame();
        // One run per call: repeated runs in one call see the frame the previous run left.
        for _ in 0..5 {
            let out = o.test_run().unwrap().run(&frame, xc0, 1).unwrap();
            assert_eq!(out.action, Action::Redirect);
        }
        let after5 = o.maps().read_counters(&b).unwrap();
        assert_eq!(
            (
                after5.to_peer.packets,
                after5.to_peer.rx_bytes,
                after5.to_peer.tx_bytes
            ),
            (5, 80, 50)
        );

        // Same binding again: a no-op, counters kept.
        o.maps_mut().install(&b).unwrap();
        assert_eq!(o.maps().read_counters(&b).unwrap(), after5);
        assert_eq!(o.maps().len(), (1, 1));
        // Same client channel to another peer, or same peer on the relay for another channel.
        let other_peer = ChannelOffload {
            peer: f.near_peer,
            ..b
        };
        assert!(matches!(
            o.maps_mut().install(&other_peer),
            Err(Error::Conflict)
        ));
        let other_channel = ChannelOffload {
            channel: 0x4002,
            ..b
        };
        assert!(matches!(
            o.maps_mut().install(&other_channel),
            Err(Error::Conflict)
        ));
        assert_eq!(o.maps().len(), (1, 1));
        // Not offloadable.
        let high = ChannelOffload {
            channel: 0x8000,
            ..b
        };
        assert!(matches!(
            o.maps_mut().install(&high),
            Err(Error::Unsupported(_))
        ));
        let mixed = ChannelOffload {
            peer: sa("[2001:db8:a::20]:7000"),
            ..b
        };
        assert!(matches!(
            o.maps_mut().install(&mixed),
            Err(Error::Unsupported(_))
        ));

        // A second handle (as a shard would hold) sees and changes the same maps.
        let mut other = o.maps().try_clone().unwrap();
        assert_eq!(other.read_counters(&b).unwrap(), after5);
        let near = ChannelOffload {
            channel: 0x4005,
            peer: f.near_peer,
            ..b
        };
        other.install(&near).unwrap();
        assert_eq!(o.maps().len(), (2, 2));
        other.remove(&near).unwrap();

        let last = o.maps_mut().remove(&b).unwrap();
        assert_eq!(last, after5);
        assert_eq!(o.maps().len(), (0, 0));
        assert_pass(&o, &frame, xc0, "after remove");
        assert_eq!(o.maps_mut().remove(&b).unwrap(), OffloadTraffic::default());
    });
}

/// IPv4 for loopback addresses received on loopback: rewritten and passed up for local
/// delivery, MACs kept, no UDP checksum; anywhere else, and over IPv6, left untouched.
#[test]
fn loopback_is_delivered_locally_over_ipv4_only() {
    let lab = Lab::new();
    lab.run(|| {
        let mut o = load();
        let lo = ifindex("lo");
        let b = ChannelOffload {
            client: sa("127.0.0.1:40000"),
            server: sa("127.0.0.1:3478"),
            channel: 0x4001,
            relay: sa("127.0.0.1:50000"),
            peer: sa("127.0.0.2:7000"),
            allocation: 1,
        };
        o.maps_mut().install(&b).unwrap();
        let local = |u: &mut Udp| {
            u.src_mac = [0; 6];
            u.dst_mac = [0; 6];
        };

        let data = pattern(33, 4);
        let mut rx = Udp::new(b.client, b.server, &channel_data(0x4001, &data, &[1, 2, 3]));
        local(&mut rx);
        let out = o.test_run().unwrap().run(&rx.frame(), lo, 1).unwrap();
        assert_eq!(out.action, Action::Pass);
        let mut want = rx.clone();
        (want.src, want.dst, want.payload) = (b.relay, b.peer, data.clone());
        (want.ttl, want.no_checksum) = (64, true);
        assert_eq!(out.frame, want.frame());

        let mut rx = Udp::new(b.peer, b.relay, &data);
        local(&mut rx);
        let out = o.test_run().unwrap().run(&rx.frame(), lo, 1).unwrap();
        assert_eq!(out.action, Action::Pass);
        let mut want = rx.clone();
        (want.src, want.dst) = (b.server, b.client);
        want.payload = channel_data(0x4001, &data, &[]);
        (want.ttl, want.no_checksum) = (64, true);
        assert_eq!(out.frame, want.frame());
        let t = o.maps().read_counters(&b).unwrap();
        assert_eq!((t.to_peer.packets, t.to_client.packets), (1, 1));

        // Loopback destinations arriving elsewhere are the stack's business (martians).
        let rx = Udp::new(b.client, b.server, &channel_data(0x4001, &data, &[]));
        assert_pass(
            &o,
            &rx.frame(),
            ifindex("xc0"),
            "loopback peer, not received on lo",
        );

        let b6 = ChannelOffload {
            client: sa("[::1]:40000"),
            server: sa("[::1]:3478"),
            channel: 0x4002,
            relay: sa("[::1]:50000"),
            peer: sa("[::1]:7000"),
            allocation: 2,
        };
        o.maps_mut().install(&b6).unwrap();
        let mut rx = Udp::new(b6.client, b6.server, &channel_data(0x4002, &data, &[]));
        local(&mut rx);
        assert_pass(&o, &rx.frame(), lo, "IPv6 loopback");
        assert_eq!(o.maps().read_counters(&b).unwrap(), t);
    });
}

/// A full map refuses the install; nothing of the refused binding stays, the installed one
/// keeps working.
#[test]
fn full_maps_refuse_installs_whole() {
    let lab = Lab::new();
    lab.run(|| {
        lab::require_root();
        let mut o = Offload::load(1).expect("load the XDP program");
        let f = v4();
        let b = binding(&f, 0x4001, 50000, f.peer);
        o.maps_mut().install(&b).unwrap();
        let other = binding(&f, 0x4002, 50001, f.near_peer);
        assert!(matches!(o.maps_mut().install(&other), Err(Error::Map(_))));
        assert_eq!(o.maps().len(), (1, 1));
        let frame = Udp::new(f.client, f.server, &channel_data(0x4001, &[5; 8], &[])).frame();
        let out = run(&o, &frame, ifindex("xc0"));
        assert_eq!(out.action, Action::Redirect);
    });
}
