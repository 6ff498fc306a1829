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

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lab::Netns;
use uturn::client::{Client, Incoming};
use uturn::xdp::{ChannelOffload, Mode, Offload, DEFAULT_MAX_ENTRIES};

const SERVER: &str = "192.0.2.1:3478";
const CLIENT_IP: &str = "192.0.2.10";
const RELAY_IP: &str = "198.51.100.1";
const PEER: &str = "198.51.100.20:7000";
const CHANNEL: u16 = 0x4001;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// client ns `eth0` 192.0.2.10/24 <-> server ns `xc0` 192.0.2.1/24;
/// server ns `xp0` 198.51.100.1/24 <-> peer ns `eth0` 198.51.100.20/24.
struct Topology {
    client: Netns,
    server: Netns,
    peer: Netns,
}

impl Topology {
    fn new() -> Topology {
        let t = Topology {
            client: Netns::new(),
            server: Netns::new(),
            peer: Netns::new(),
        };
        for (dev, other, addr) in [
            ("xc0", &t.client, "192.0.2.1/24"),
            ("xp0", &t.peer, "198.51.100.1/24"),
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
            t.server.ip(&["addr", "add", addr, "dev", dev]);
            t.server.ip(&["link", "set", dev, "up"]);
            // bpf_fib_lookup answers only for interfaces that forward.
            t.server
                .sysctl(&format!("net.ipv4.conf.{dev}.forwarding=1"));
        }
        for (ns, addr) in [(&t.client, "192.0.2.10/24"), (&t.peer, "198.51.100.20/24")] {
            ns.ip(&["addr", "add", addr, "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            // Full checksums on the wire, as from a real NIC (a veth otherwise leaves them
            // for the receiver to finish, which XDP cannot see); GRO on lets the veth take
            // frames redirected by XDP.
            ns.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"]);
        }
        t
    }
}

/// The uturn server process; killed (by its pid) on drop.
struct Server(Child);

impl Server {
    fn start(ns: &Netns) -> Server {
        let relay_ports = format!("{}", 50000 + std::process::id() % 1000);
        let max_port = format!("{}", 50010 + std::process::id() % 1000);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_uturn")])
            .args(["-L", "192.0.2.1", "-E", RELAY_IP, "-p", "3478"])
            .args(["--min-port", &relay_ports, "--max-port", &max_port])
            .args(["-u", "alice:secret", "-r", "xdp.test", "--cores", "0"])
            .args(["--allowed-peer-ip", "198.51.100.20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start uturn");
        Server(child)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
fn kernel_relays_an_offloaded_channel_both_ways() {
    lab::require_root();
    let t = Topology::new();
    let server = Server::start(&t.server);

    let peer = t.peer.run(|| UdpSocket::bind(PEER).expect("peer socket"));
    let socket = t
        .client
        .run(|| UdpSocket::bind(format!("{CLIENT_IP}:0")).expect("client socket"));
    let mut client = Client::with_socket(socket, sa(SERVER), "alice", "secret");
    client.set_timeout(Duration::from_millis(300));
    let relayed = wait_until(Instant::now() + Duration::from_secs(15), || {
        client.allocate(None).ok()
    });
    assert_eq!(relayed.ip().to_string(), RELAY_IP);
    client.create_permission(&[sa(PEER)]).unwrap();
    client.channel_bind(CHANNEL, sa(PEER)).unwrap();

    // Through user space first (this also resolves both neighbours for the fast path).
    client.send_channel_data(CHANNEL, b"via uturn").unwrap();
    assert_eq!(peer_recv(&peer, relayed), b"via uturn");
    peer.send_to(b"back via uturn", relayed).unwrap();
    assert_eq!(client_recv(&mut client), b"back via uturn");

    let mut offload = t.server.run(|| {
        let mut o = Offload::load(DEFAULT_MAX_ENTRIES).expect("load the XDP program");
        for dev in ["xc0", "xp0"] {
            assert_eq!(o.attach(dev, Mode::Native).expect("attach"), Mode::Native);
        }
        o
    });
    let binding = ChannelOffload {
        client: client.local_addr().unwrap(),
        server: sa(SERVER),
        channel: CHANNEL,
        relay: relayed,
        peer: sa(PEER),
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
