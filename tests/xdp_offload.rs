//! The TURN core driving the kernel fast path, end to end: uturn with `--xdp` in a server
//! namespace the test creates (client, server and peer namespaces joined by veth pairs, and
//! loopback in generic mode), coturn's `turnutils_uclient` and `turnutils_peer` on either
//! side, a `redis-server` of the test's own. Nothing is installed by hand: the core emits the
//! offload commands, the shard applies them and folds the kernel's counters back in.
//!
//! Checked: 0 loss; after the bind user space relays nothing (uturn's own relayed-packet
//! counters stay at 0) while the offload counters carry every datagram; Redis totals equal
//! what was sent; channel expiry stops the kernel path at the core's deadline. Namespaces,
//! links and processes go away on drop, also when a test fails. Needs root.

mod common;
#[path = "xdp/frames.rs"]
mod frames;
#[path = "xdp/lab.rs"]
mod lab;
#[path = "xdp/uturn.rs"]
mod uturn_process;

use common::{number_after, run_bounded, tool, wait_until, within, RedisServer, Subscriber};
use lab::{addr, Netns, Plan, Topology, V4, V6};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uturn::client::Client;
use uturn::stun;
use uturn_process::Server;

const PEER_PORT: u16 = 7000;
const METRICS_PORT: u16 = 9641;

/// `turnutils_peer` echoing in `ns` on `ip:port` (and port+1), killed on drop.
struct Echo(Child);

impl Echo {
    fn start(ns: &Netns, ip: &str, port: u16) -> Echo {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(tool("turnutils_peer"))
            .args(["-L", ip, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer");
        let echo = Echo(child);
        let addr: SocketAddr = (ip.parse::<std::net::IpAddr>().unwrap(), port).into();
        ns.run(|| {
            let s = UdpSocket::bind((ip, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            assert!(
                wait_until(within(Duration::from_secs(10)), || {
                    let _ = s.send_to(b"ping", addr);
                    let mut b = [0u8; 16];
                    s.recv_from(&mut b).is_ok()
                }),
                "turnutils_peer does not echo"
            );
        });
        echo
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One scrape of uturn's metrics from the server namespace: the sum of every sample of
/// `name` whose labels contain `label` ("" for all).
fn metric(ns: &Netns, ip: &str, name: &str, label: &str) -> u64 {
    let body = ns.run(|| {
        let addr: SocketAddr = (ip.parse::<std::net::IpAddr>().unwrap(), METRICS_PORT).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    });
    let body = body.unwrap_or_else(|| panic!("cannot scrape uturn's metrics"));
    let mut found = false;
    let mut total = 0u64;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric_name = key.split('{').next().unwrap_or("");
        if metric_name == name && key.contains(label) {
            found = true;
            total += value.parse::<f64>().unwrap_or(0.0) as u64;
        }
    }
    assert!(found, "no metric {name}{{{label}}} in:\n{body}");
    total
}

/// `rcvp=…, rcvb=…, sentp=…, sentb=…` as numbers.
fn counts(payload: &str) -> [u64; 4] {
    ["rcvp=", "rcvb=", "sentp=", "sentb="]
        .map(|k| number_after(payload, k).unwrap_or_else(|| panic!("{k} in {payload}")))
}

/// uturn's arguments for a run in the server namespace.
fn uturn_args<'a>(listen: &'a str, relay: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-L",
        listen,
        "-E",
        relay,
        "-p",
        "3478",
        "-u",
        "alice:secret",
        "-r",
        "xdp.test",
        "--cores",
        "0",
        "--prometheus",
        "--prometheus-address",
        listen,
    ];
    args.extend_from_slice(extra);
    args
}

/// Where each party runs and what uturn attaches to.
struct Scene<'a> {
    server_ns: &'a Netns,
    client_ns: &'a Netns,
    peer_ns: &'a Netns,
    listen: &'a str,
    relay: &'a str,
    peer_ip: &'a str,
    extra: Vec<&'a str>,
}

/// uclient → uturn (offloading) → turnutils_peer and back; checks loss, who relayed what,
/// and the Redis totals of every allocation.
///
/// uclient picks each allocation's channel number at random in 0x4000–0x7FFF (RFC 5766), the
/// whole range the core accepts and the program relays: every allocation of every run must
/// be relayed by the kernel alone (were RFC 5766's numbers left to user space, 3 in 4
/// allocations would be, and all `RUNS` x `CLIENTS` offloaded by chance about once in 65,000).
/// (uclient also binds a channel to the peer's port + 1 that carries nothing, so the
/// installs counted may exceed the allocations.)
fn uclient_through_offload(scene: &Scene) {
    const N: u64 = 300;
    const LEN: u64 = 170;
    const CLIENTS: u64 = 4;
    const RUNS: u64 = 2;
    // In the server namespace: uturn reaches it on that namespace's loopback.
    let redis = scene.server_ns.run(RedisServer::start);
    let sub = scene
        .server_ns
        .run(|| Subscriber::start(redis.url(), "turn/*"));
    let statsdb = format!("ip=127.0.0.1 port={} dbname=0", redis.port);
    let mut extra = scene.extra.clone();
    extra.extend(["--redis-statsdb", &statsdb]);
    let server = Server::start(
        scene.server_ns,
        &uturn_args(scene.listen, scene.relay, &extra),
        false,
    );
    server.wait_for_log(&["XDP offload attached"]);
    server.wait_for_log(&["uturn ready"]);
    let _echo = Echo::start(scene.peer_ns, scene.peer_ip, PEER_PORT);
    let (ns, ip) = (scene.server_ns, scene.listen);
    let m = |name: &str| metric(ns, ip, name, "");

    let (mut installs, mut kernel) = (0, 0u64);
    for run in 1..=RUNS {
        let mut uclient = Command::new("ip");
        uclient
            .args(["netns", "exec", &scene.client_ns.name])
            .arg(tool("turnutils_uclient"))
            .args(["-c", "-m", &CLIENTS.to_string(), "-z", "5"])
            .args(["-n", &N.to_string(), "-l", &LEN.to_string()])
            .args(["-e", scene.peer_ip, "-r", &PEER_PORT.to_string()])
            .args(["-u", "alice", "-w", "secret", "-p", "3478", scene.listen]);
        let (code, out) = run_bounded(&mut uclient, Duration::from_secs(60));
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(
            number_after(&out, "tot_send_msgs="),
            Some(N * CLIENTS),
            "{out}"
        );
        assert_eq!(
            number_after(&out, "tot_recv_msgs="),
            Some(N * CLIENTS),
            "{out}"
        );
        assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
        // uclient deletes its allocations when done, so the kernel's last counts are in
        // (or, at the latest, within the once-a-second read).
        let relayed = 2 * N * CLIENTS;
        let total = || m("uturn_offload_packets_total") + m("uturn_relayed_packets_total");
        assert!(
            wait_until(within(Duration::from_secs(5)), || total()
                == kernel + relayed),
            "relayed {} of {relayed} more; log:\n{}",
            total() - kernel,
            server.log_text()
        );
        let offloaded = m("uturn_offload_installs_total") - installs;
        let k = m("uturn_offload_packets_total") - kernel;
        let u = m("uturn_relayed_packets_total");
        eprintln!("run {run}: {offloaded} bindings offloaded, kernel {k}, user space {u}");
        assert_eq!(
            (k, u),
            (relayed, 0),
            "run {run}: the kernel relays every allocation's traffic, user space none"
        );
        assert!(offloaded >= CLIENTS, "run {run}: {offloaded} installs");
        installs += offloaded;
        kernel += k;
    }
    assert_eq!(m("uturn_offload_refusals_total"), 0);
    assert_eq!(m("uturn_offload_removes_total"), installs);
    assert_eq!(m("uturn_offload_bindings"), 0);

    // Every allocation's totals equal what was sent.
    let allocations = (RUNS * CLIENTS) as usize;
    server.signal("-TERM");
    let messages = sub.wait_for("total_traffic", Duration::from_secs(15), |msgs| {
        msgs.iter()
            .filter(|(c, _)| c.ends_with("/total_traffic/peer"))
            .count()
            == allocations
    });
    // ChannelData over UDP: 4 header bytes on the client side, none on the peer side.
    for (suffix, want) in [
        ("/total_traffic", [N, N * (LEN + 4), N, N * (LEN + 4)]),
        ("/total_traffic/peer", [N, N * LEN, N, N * LEN]),
    ] {
        let totals: Vec<[u64; 4]> = messages
            .iter()
            .filter(|(c, _)| c.ends_with(suffix))
            .map(|(_, p)| counts(p))
            .collect();
        assert_eq!(totals, vec![want; allocations], "{suffix}: {messages:?}");
    }
    drop(server);
}

#[test]
fn uclient_through_native_xdp_offload_zero_loss_and_exact_redis_totals() {
    lab::require_root();
    let t = Topology::new(&V4);
    t.resolve_peer(&V4);
    uclient_through_offload(&Scene {
        server_ns: &t.server,
        client_ns: &t.client,
        peer_ns: &t.peer,
        listen: V4.server,
        relay: V4.relay,
        peer_ip: V4.peer,
        extra: vec![
            "--allowed-peer-ip",
            V4.peer,
            "--xdp",
            "xc0",
            "--xdp",
            "xp0",
            "--xdp-mode",
            "native",
        ],
    });
}

/// Client, uturn and peer in one namespace on `lo`: the program in generic mode rewrites
/// and hands each datagram back to the stack for the local socket.
#[test]
fn uclient_through_loopback_generic_offload() {
    lab::require_root();
    let ns = Netns::new();
    uclient_through_offload(&Scene {
        server_ns: &ns,
        client_ns: &ns,
        peer_ns: &ns,
        listen: "127.0.0.1",
        relay: "127.0.0.1",
        peer_ip: "127.0.0.1",
        extra: vec![
            "--allow-loopback-peers",
            "--xdp",
            "lo",
            "--xdp-mode",
            "generic",
        ],
    });
}

/// The core removes the binding when the channel and its permission expire: datagrams the
/// client sends all along reach the peer until the deadline the core computed and never
/// after it, and user space relayed none of them.
#[test]
fn channel_expiry_stops_the_kernel_path_at_the_deadline() {
    channel_expiry(&V4);
}

#[test]
fn ipv6_channel_expiry_stops_the_kernel_path_at_the_deadline() {
    channel_expiry(&V6);
}

fn channel_expiry(plan: &Plan) {
    const LIFETIME: Duration = Duration::from_secs(4);
    lab::require_root();
    let t = Topology::new(plan);
    t.resolve_peer(plan);
    let server = Server::start(
        &t.server,
        &uturn_args(
            plan.server,
            plan.relay,
            &[
                "--allowed-peer-ip",
                plan.peer,
                "--xdp",
                "xc0",
                "--xdp",
                "xp0",
                "--channel-lifetime",
                "4",
                "--permission-lifetime",
                "4",
            ],
        ),
        false,
    );
    server.wait_for_log(&["XDP offload attached"]);
    server.wait_for_log(&["uturn ready"]);
    let peer_addr = addr(plan.peer, PEER_PORT);
    let peer = t
        .peer
        .run(|| UdpSocket::bind(peer_addr).expect("peer socket"));
    let socket = t
        .client
        .run(|| UdpSocket::bind(addr(plan.client, 0)).expect("client socket"));
    let mut client = Client::with_socket(socket, addr(plan.server, 3478), "alice", "secret");
    client.set_timeout(Duration::from_millis(300));
    // Without REQUESTED-ADDRESS-FAMILY the relay address is IPv4 (RFC 8656 §7.1).
    let v6 = plan.is_v6();
    let relayed = client
        .allocate_with(&|b| {
            if v6 {
                b.add_address_family(stun::REQUESTED_ADDRESS_FAMILY, stun::FAMILY_IPV6);
            }
        })
        .expect("allocate");
    assert_eq!(
        relayed.ip(),
        plan.relay.parse::<std::net::IpAddr>().unwrap()
    );

    let sent_bind = Instant::now();
    client
        .channel_bind(0x4001, peer_addr)
        .expect("channel bind");
    let bound = Instant::now();
    // The core's deadline lies in [sent_bind, bound] + LIFETIME; its timer ticks are 100 ms.
    let (earliest, latest) = (sent_bind + LIFETIME, bound + LIFETIME);

    // The client sends every 20 ms for LIFETIME + 2 s; the peer notes each arrival.
    let stop_at = bound + LIFETIME + Duration::from_secs(2);
    let arrivals = std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 256];
            peer.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            while Instant::now() < stop_at + Duration::from_millis(500) {
                if let Ok((_, from)) = peer.recv_from(&mut buf) {
                    assert_eq!(from, relayed);
                    arrivals.push(Instant::now());
                }
            }
            arrivals
        });
        let mut seq = 0u32;
        while Instant::now() < stop_at {
            client
                .send_channel_data(0x4001, &seq.to_be_bytes())
                .expect("send");
            seq += 1;
            // Pacing of the load, not a wait for an event.
            std::thread::sleep(Duration::from_millis(20));
        }
        receiver.join().expect("receiver")
    });
    let last = *arrivals.last().expect("nothing reached the peer");
    assert!(
        arrivals.len() > 100,
        "only {} datagrams relayed before expiry",
        arrivals.len()
    );
    assert!(
        last >= earliest - Duration::from_millis(300),
        "the kernel path stopped early: {:?} before the deadline",
        earliest - last
    );
    assert!(
        last <= latest + Duration::from_millis(400),
        "relayed {:?} after the deadline",
        last - latest
    );
    let (ns, ip) = (&t.server, plan.server);
    assert_eq!(metric(ns, ip, "uturn_offload_removes_total", ""), 1);
    assert_eq!(metric(ns, ip, "uturn_offload_bindings", ""), 0);
    assert_eq!(
        metric(ns, ip, "uturn_relayed_packets_total", ""),
        0,
        "user space relayed ChannelData"
    );
    assert_eq!(
        metric(ns, ip, "uturn_offload_packets_total", ""),
        arrivals.len() as u64
    );
    drop(server);
}
