//! End to end through the kernel fast path: three network namespaces the test creates
//! (client, server, peer) joined by veth pairs, the real `uturn` binary in the server
//! namespace, uturn's own TURN client making the allocation, native XDP on both of the
//! server's veths, and the channel's offload entries installed by hand through
//! `uturn::xdp::Maps` (the TURN core does not emit offload commands yet).
//!
//! Proof that the kernel relays: uturn is stopped (SIGSTOP) while the traffic flows, so user
//! space relays nothing, and the offload counters account for every datagram. Namespaces,
//! links and the server go away on drop, also when the test fails. Needs root.

#[path = "xdp/frames.rs"]
mod frames;
#[path = "xdp/lab.rs"]
mod lab;
#[path = "xdp/uturn.rs"]
mod uturn_process;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use lab::Netns;
use uturn::client::{Client, Incoming};
use uturn::stun;
use uturn::xdp::{ChannelOffload, Mode, Offload, DEFAULT_MAX_ENTRIES};
use uturn_process::Server;

const CHANNEL: u16 = 0x4001;

/// One address family's plan: (server address, client IP, relay IP, peer address, and the
/// prefixes of the two links).
struct Plan {
    server: &'static str,
    server_ip: &'static str,
    client_ip: &'static str,
    relay_ip: &'static str,
    peer: &'static str,
    peer_ip: &'static str,
    prefix: &'static str,
    family: &'static str,
}

const V4: Plan = Plan {
    server: "192.0.2.1:3478",
    server_ip: "192.0.2.1",
    client_ip: "192.0.2.10",
    relay_ip: "198.51.100.1",
    peer: "198.51.100.20:7000",
    peer_ip: "198.51.100.20",
    prefix: "24",
    family: "ipv4",
};

const V6: Plan = Plan {
    server: "[2001:db8:c::1]:3478",
    server_ip: "2001:db8:c::1",
    client_ip: "2001:db8:c::10",
    relay_ip: "2001:db8:a::1",
    peer: "[2001:db8:a::20]:7000",
    peer_ip: "2001:db8:a::20",
    prefix: "64",
    family: "ipv6",
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// client ns `eth0` (client IP) <-> server ns `xc0` (server IP);
/// server ns `xp0` (relay IP) <-> peer ns `eth0` (peer IP).
struct Topology {
    client: Netns,
    server: Netns,
    peer: Netns,
}

impl Topology {
    fn new(plan: &Plan) -> Topology {
        let t = Topology {
            client: Netns::new(),
            server: Netns::new(),
            peer: Netns::new(),
        };
        for (dev, other, ip) in [
            ("xc0", &t.client, plan.server_ip),
            ("xp0", &t.peer, plan.relay_ip),
        ] {
            t.server.ip(&[
                "link",
                "add",
                dev,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &other.name,
            ]);
            let addr = format!("{ip}/{}", plan.prefix);
            t.server.ip(&["addr", "add", &addr, "dev", dev, "nodad"]);
            t.server.ip(&["link", "set", dev, "up"]);
            // bpf_fib_lookup answers only for interfaces that forward.
            t.server
                .sysctl(&format!("net.{}.conf.{dev}.forwarding=1", plan.family));
        }
        for (ns, ip) in [(&t.client, plan.client_ip), (&t.peer, plan.peer_ip)] {
            let addr = format!("{ip}/{}", plan.prefix);
            ns.ip(&["addr", "add", &addr, "dev", "eth0", "nodad"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            // Full checksums on the wire, as from a real NIC (a veth otherwise leaves them
            // for the receiver to finish, which XDP cannot see); GRO on lets the veth take
            // frames redirected by XDP.
            ns.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"]);
        }
        // Usable addresses on both ends of each link (IPv6 ones wait for the carrier).
        let deadline = Instant::now() + Duration::from_secs(10);
        for (ns, ip) in [
            (&t.server, plan.server_ip),
            (&t.server, plan.relay_ip),
            (&t.client, plan.client_ip),
            (&t.peer, plan.peer_ip),
        ] {
            let addr = SocketAddr::new(ip.parse().unwrap(), 0);
            ns.run(|| wait_until(deadline, || UdpSocket::bind(addr).ok()));
        }
        t
    }
}

fn start_server(ns: &Netns, plan: &Plan) -> Server {
    Server::start(
        ns,
        &[
            "-L",
            plan.server_ip,
            "-E",
            plan.relay_ip,
            "-p",
            "3478",
            "-u",
            "alice:secret",
            "-r",
            "xdp.test",
            "--cores",
            "0",
            "--allowed-peer-ip",
            plan.peer_ip,
        ],
        false,
    )
}

fn wait_until<T>(deadline: Instant, mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met by the deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One datagram at the peer, from the relay address, within 2 s.
fn peer_recv(peer: &UdpSocket, relayed: SocketAddr) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (n, from) = peer
        .recv_from(&mut buf)
        .expect("peer: datagram from the relay");
    assert_eq!(from, relayed, "the peer sees the relay address");
    buf[..n].to_vec()
}

fn client_recv(client: &mut Client) -> Vec<u8> {
    match client
        .recv(Duration::from_secs(2))
        .expect("client: ChannelData")
    {
        Incoming::ChannelData { channel, data } => {
            assert_eq!(channel, CHANNEL);
            data
        }
        other => panic!("client: expected ChannelData, got {other:?}"),
    }
}

#[test]
fn ipv4_native_kernel_relays_an_offloaded_channel_both_ways() {
    relay(&V4, Mode::Native);
}

#[test]
fn ipv6_native_kernel_relays_an_offloaded_channel_both_ways() {
    relay(&V6, Mode::Native);
}

#[test]
fn ipv4_generic_kernel_relays_an_offloaded_channel_both_ways() {
    relay(&V4, Mode::Generic);
}

fn relay(plan: &Plan, mode: Mode) {
    lab::require_root();
    let t = Topology::new(plan);
    let server = start_server(&t.server, plan);
    let (server_addr, peer_addr) = (sa(plan.server), sa(plan.peer));

    let peer = t
        .peer
        .run(|| UdpSocket::bind(peer_addr).expect("peer socket"));
    let socket = t.client.run(|| {
        UdpSocket::bind(SocketAddr::new(plan.client_ip.parse().unwrap(), 0)).expect("client socket")
    });
    let mut client = Client::with_socket(socket, server_addr, "alice", "secret");
    client.set_timeout(Duration::from_millis(300));
    // Without REQUESTED-ADDRESS-FAMILY the relay address is IPv4 (RFC 8656 §7.1).
    let v6 = plan.family == "ipv6";
    let relayed = wait_until(Instant::now() + Duration::from_secs(15), || {
        client
            .allocate_with(&|b| {
                if v6 {
                    b.add_address_family(stun::REQUESTED_ADDRESS_FAMILY, stun::FAMILY_IPV6);
                }
            })
            .map_err(|e| eprintln!("allocate (retried until uturn is up): {e}"))
            .ok()
    });
    assert_eq!(relayed.ip().to_string(), plan.relay_ip);
    client.create_permission(&[peer_addr]).unwrap();
    client.channel_bind(CHANNEL, peer_addr).unwrap();

    // Through user space first (this also resolves both neighbours for the fast path).
    client.send_channel_data(CHANNEL, b"via uturn").unwrap();
    assert_eq!(peer_recv(&peer, relayed), b"via uturn");
    peer.send_to(b"back via uturn", relayed).unwrap();
    assert_eq!(client_recv(&mut client), b"back via uturn");

    let mut offload = t.server.run(|| {
        let mut o = Offload::load(DEFAULT_MAX_ENTRIES).expect("load the XDP program");
        for dev in ["xc0", "xp0"] {
            assert_eq!(o.attach(dev, mode).expect("attach"), mode);
        }
        o
    });
    let binding = ChannelOffload {
        client: client.local_addr().unwrap(),
        server: server_addr,
        channel: CHANNEL,
        relay: relayed,
        peer: peer_addr,
        allocation: 0,
    };
    offload.maps_mut().install(&binding).unwrap();

    // uturn can relay nothing now: whatever arrives, the kernel relayed.
    server.signal("-STOP");
    let (mut up, mut down) = (0u64, 0u64);
    const ROUNDS: usize = 300;
    for i in 0..ROUNDS {
        let data = frames::pattern(1 + (i * 7) % 1200, i as u8);
        client.send_channel_data(CHANNEL, &data).unwrap();
        assert_eq!(peer_recv(&peer, relayed), data, "round {i} to the peer");
        let answer = frames::pattern(1 + (i * 13) % 1200, !(i as u8));
        peer.send_to(&answer, relayed).unwrap();
        assert_eq!(client_recv(&mut client), answer, "round {i} to the client");
        up += data.len() as u64;
        down += answer.len() as u64;
    }
    server.signal("-CONT");

    let n = ROUNDS as u64;
    let traffic = offload.maps().read_counters(&binding).unwrap();
    assert_eq!(
        (
            traffic.to_peer.packets,
            traffic.to_peer.rx_bytes,
            traffic.to_peer.tx_bytes
        ),
        (n, up + 4 * n, up),
        "client -> peer counters"
    );
    assert_eq!(
        (
            traffic.to_client.packets,
            traffic.to_client.rx_bytes,
            traffic.to_client.tx_bytes
        ),
        (n, down, down + 4 * n),
        "peer -> client counters"
    );
    assert_eq!(offload.maps_mut().remove(&binding).unwrap(), traffic);

    // Removed: user space relays again.
    client
        .send_channel_data(CHANNEL, b"via uturn again")
        .unwrap();
    assert_eq!(peer_recv(&peer, relayed), b"via uturn again");
    peer.send_to(b"back again", relayed).unwrap();
    assert_eq!(client_recv(&mut client), b"back again");
    drop(offload);
    drop(server);
}
