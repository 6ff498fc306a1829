//! End to end through the kernel fast path: three network namespaces the test creates
//! (client, server, peer) joined by veth pairs, the real `uturn` binary in the server
//! namespace, uturn's own TURN client making the allocation, native XDP on both of the
//! server's veths, and the channel's offload entries installed by hand through
//! `uturn::xdp::Maps` (uturn runs without `--xdp`; tests/xdp_offload.rs has the core install
//! them). The channel is 0x7FFF, the top of the range the core accepts.
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

use lab::{addr, Netns, Plan, Topology, V4, V6};
use uturn::client::{Client, ClientError, Incoming};
use uturn::stun;
use uturn::xdp::{ChannelOffload, Mode, Offload, DEFAULT_MAX_ENTRIES};
use uturn_process::Server;

/// The top of the channel range the core accepts (RFC 5766), relayed by the kernel too.
const CHANNEL: u16 = 0x7FFF;

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

/// One datagram at the peer, from the relay address, within 2 s. A receive with a timeout
/// is not restarted after a signal (EINTR, seen under load while children start and stop),
/// so an interrupted wait is resumed until the deadline.
fn peer_recv(peer: &UdpSocket, relayed: SocketAddr) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "peer: no datagram from the relay within 2 s"
        );
        peer.set_read_timeout(Some(left)).unwrap();
        match peer.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, relayed, "the peer sees the relay address");
                return buf[..n].to_vec();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("peer: no datagram from the relay: {e}"),
        }
    }
}

fn client_recv(client: &mut Client) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "client: no ChannelData within 2 s");
        match client.recv(left) {
            Ok(Incoming::ChannelData { channel, data }) => {
                assert_eq!(channel, CHANNEL);
                return data;
            }
            Ok(other) => panic!("client: expected ChannelData, got {other:?}"),
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("client: no ChannelData: {e}"),
        }
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
    exercise(
        &Scene {
            server_ns: &t.server,
            client_ns: &t.client,
            peer_ns: &t.peer,
            args: vec![
                "-L",
                plan.server,
                "-E",
                plan.relay,
                "-p",
                "3478",
                "--allowed-peer-ip",
                plan.peer,
            ],
            devices: &["xc0", "xp0"],
            client_ip: plan.client,
            server: addr(plan.server, 3478),
            peer: addr(plan.peer, 7000),
            relay_ip: plan.relay,
            v6: plan.is_v6(),
        },
        mode,
    );
}

/// Client, uturn and peer on one host, in one namespace: XDP in generic mode on `lo`
/// rewrites and hands each datagram back to the stack for the local socket.
#[test]
fn loopback_generic_kernel_relays_an_offloaded_channel_both_ways() {
    lab::require_root();
    let ns = Netns::new();
    let wait = Instant::now() + Duration::from_secs(10);
    ns.run(|| wait_until(wait, || UdpSocket::bind("127.0.0.1:0").ok()));
    exercise(
        &Scene {
            server_ns: &ns,
            client_ns: &ns,
            peer_ns: &ns,
            args: vec![
                "-L",
                "127.0.0.1",
                "-E",
                "127.0.0.1",
                "-p",
                "3478",
                "--allow-loopback-peers",
            ],
            devices: &["lo"],
            client_ip: "127.0.0.1",
            server: addr("127.0.0.1", 3478),
            peer: addr("127.0.0.1", 7000),
            relay_ip: "127.0.0.1",
            v6: false,
        },
        Mode::Generic,
    );
}

/// Where uturn, its client and the peer run, and how uturn is started.
struct Scene<'a> {
    server_ns: &'a Netns,
    client_ns: &'a Netns,
    peer_ns: &'a Netns,
    args: Vec<&'a str>,
    /// Interfaces of the server namespace the program is attached to.
    devices: &'a [&'a str],
    client_ip: &'a str,
    server: SocketAddr,
    peer: SocketAddr,
    relay_ip: &'a str,
    v6: bool,
}

fn exercise(scene: &Scene, mode: Mode) {
    let mut args = scene.args.clone();
    args.extend(["-u", "alice:secret", "-r", "xdp.test", "--cores", "0"]);
    let server = Server::start(scene.server_ns, &args, false);
    let (server_addr, peer_addr) = (scene.server, scene.peer);

    let peer = scene
        .peer_ns
        .run(|| UdpSocket::bind(peer_addr).expect("peer socket"));
    let socket = scene.client_ns.run(|| {
        UdpSocket::bind(SocketAddr::new(scene.client_ip.parse().unwrap(), 0))
            .expect("client socket")
    });
    let mut client = Client::with_socket(socket, server_addr, "alice", "secret");
    client.set_timeout(Duration::from_millis(300));
    // Without REQUESTED-ADDRESS-FAMILY the relay address is IPv4 (RFC 8656 §7.1).
    let v6 = scene.v6;
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
    assert_eq!(relayed.ip().to_string(), scene.relay_ip);
    client.create_permission(&[peer_addr]).unwrap();
    client.channel_bind(CHANNEL, peer_addr).unwrap();

    // Through user space first (this also resolves both neighbours for the fast path).
    client.send_channel_data(CHANNEL, b"via uturn").unwrap();
    assert_eq!(peer_recv(&peer, relayed), b"via uturn");
    peer.send_to(b"back via uturn", relayed).unwrap();
    assert_eq!(client_recv(&mut client), b"back via uturn");

    let mut offload = scene.server_ns.run(|| {
        let mut o = Offload::load(DEFAULT_MAX_ENTRIES).expect("load the XDP program");
        for dev in scene.devices {
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
