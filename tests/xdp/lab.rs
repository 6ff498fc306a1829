//! Network namespaces the XDP tests create for themselves: one ([`Lab`]) with the routes and
//! neighbours `bpf_fib_lookup` needs, entered by the thread that runs the program
//! (BPF_PROG_TEST_RUN runs in its caller's namespace), and three joined by veth pairs
//! ([`Topology`]: client, server, peer) for the end-to-end tests. Deleted on drop, also when
//! the test fails.
#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use uturn::testing::netns::run;

use super::frames::Mac;

/// Fails the test unless it runs as root: these tests need BPF and network namespaces, and
/// a test that cannot run is reported as failed, never as passed.
pub fn require_root() {
    uturn::testing::netns::require_root("XDP tests: BPF, XDP, network namespaces");
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "uturn-xdp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    pub fn sysctl(&self, setting: &str) {
        self.exec("sysctl", &["-qw", setting]);
    }

    /// Runs `cmd ARGS` inside the namespace and waits for it to succeed.
    pub fn exec(&self, cmd: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", self.name.as_str(), cmd];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs `f` on a thread inside the namespace (sockets it creates stay in it).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Moves the calling thread (only it) into this namespace.
    pub fn enter(&self) {
        let f = File::open(format!("/var/run/netns/{}", self.name)).expect("netns file");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the links in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub const XC0_MAC: Mac = [0x02, 0, 0, 0, 0x0c, 0x00];
pub const XP0_MAC: Mac = [0x02, 0, 0, 0, 0x0a, 0x00];
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x0c, 0x10];
pub const PEER_MAC: Mac = [0x02, 0, 0, 0, 0x0a, 0x20];
pub const NEAR_MAC: Mac = [0x02, 0, 0, 0, 0x0c, 0x30];

fn mac(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The server's view: `xc0` faces clients (192.0.2.0/24, 2001:db8:c::/64; server address
/// .1/::1), `xp0` faces peers (198.51.100.0/24, 2001:db8:a::/64; relay address .1/::1,
/// MTU 1400). Known neighbours: the client (.10), a peer (.20) and a peer on the client
/// side (.30). 198.51.100.99 / 2001:db8:a::99 are on-link with no neighbour entry;
/// 203.0.113.0/24 and 2001:db8:f::/48 have no route. Forwarding is on (bpf_fib_lookup
/// requires it on the ingress interface; loopback has it off).
pub struct Lab {
    pub ns: Netns,
}

impl Lab {
    pub fn new() -> Lab {
        let ns = Netns::new();
        for (a, b, m) in [("xc0", "xc1", XC0_MAC), ("xp0", "xp1", XP0_MAC)] {
            ns.ip(&[
                "link",
                "add",
                a,
                "address",
                &mac(m),
                "type",
                "veth",
                "peer",
                "name",
                b,
            ]);
            ns.ip(&["link", "set", b, "up"]);
        }
        ns.ip(&["link", "set", "xp0", "mtu", "1400"]);
        ns.ip(&["link", "set", "xc0", "up"]);
        ns.ip(&["link", "set", "xp0", "up"]);
        // Per interface, so loopback stays without forwarding (a case the tests use).
        for dev in ["xc0", "xp0"] {
            ns.sysctl(&format!("net.ipv4.conf.{dev}.forwarding=1"));
            ns.sysctl(&format!("net.ipv6.conf.{dev}.forwarding=1"));
        }
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "xc0"]);
        ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "xp0"]);
        ns.ip(&["addr", "add", "2001:db8:c::1/64", "dev", "xc0", "nodad"]);
        ns.ip(&["addr", "add", "2001:db8:a::1/64", "dev", "xp0", "nodad"]);
        for (addr, m, dev) in [
            ("192.0.2.10", CLIENT_MAC, "xc0"),
            ("2001:db8:c::10", CLIENT_MAC, "xc0"),
            ("198.51.100.20", PEER_MAC, "xp0"),
            ("2001:db8:a::20", PEER_MAC, "xp0"),
            ("192.0.2.30", NEAR_MAC, "xc0"),
            ("2001:db8:c::30", NEAR_MAC, "xc0"),
        ] {
            ns.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac(m),
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        Lab { ns }
    }

    /// Runs `f` on a thread inside the lab's namespace; the lab outlives the thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f)
    }
}

/// The index of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One address family's addresses in a [`Topology`]: the server's (client side), the
/// client's, the relay's (peer side) and the peer's, on two links of prefix `prefix`.
pub struct Plan {
    pub server: &'static str,
    pub client: &'static str,
    pub relay: &'static str,
    pub peer: &'static str,
    pub prefix: &'static str,
    /// The sysctl family: `ipv4` or `ipv6`.
    pub family: &'static str,
}

pub const V4: Plan = Plan {
    server: "192.0.2.1",
    client: "192.0.2.10",
    relay: "198.51.100.1",
    peer: "198.51.100.20",
    prefix: "24",
    family: "ipv4",
};

pub const V6: Plan = Plan {
    server: "2001:db8:c::1",
    client: "2001:db8:c::10",
    relay: "2001:db8:a::1",
    peer: "2001:db8:a::20",
    prefix: "64",
    family: "ipv6",
};

impl Plan {
    pub fn is_v6(&self) -> bool {
        self.family == "ipv6"
    }
}

/// `ip:port` of one of a plan's addresses.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("IP literal"), port)
}

/// Three namespaces as on real hosts with NICs:
/// client ns `eth0` (client) <-> server ns `xc0` (server);
/// server ns `xp0` (relay) <-> peer ns `eth0` (peer).
/// Forwarding is on for `xc0` and `xp0` (the program's route lookup needs it); each end
/// sends full checksums and takes XDP-redirected frames (GRO on), as from a real NIC.
pub struct Topology {
    pub client: Netns,
    pub server: Netns,
    pub peer: Netns,
}

impl Topology {
    pub fn new(plan: &Plan) -> Topology {
        let t = Topology {
            client: Netns::new(),
            server: Netns::new(),
            peer: Netns::new(),
        };
        let prefix = plan.prefix;
        for (dev, other, ip) in [
            ("xc0", &t.client, plan.server),
            ("xp0", &t.peer, plan.relay),
        ] {
            let link = ["link", "add", dev, "type", "veth", "peer", "name", "eth0"];
            t.server.ip(&[&link[..], &["netns", &other.name]].concat());
            let cidr = format!("{ip}/{prefix}");
            t.server.ip(&["addr", "add", &cidr, "dev", dev, "nodad"]);
            t.server.ip(&["link", "set", dev, "up"]);
            // bpf_fib_lookup answers only for interfaces that forward.
            t.server
                .sysctl(&format!("net.{}.conf.{dev}.forwarding=1", plan.family));
        }
        for (ns, ip) in [(&t.client, plan.client), (&t.peer, plan.peer)] {
            let cidr = format!("{ip}/{prefix}");
            ns.ip(&["addr", "add", &cidr, "dev", "eth0", "nodad"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            // Full checksums on the wire (a veth otherwise leaves them for the receiver to
            // finish, which XDP cannot see); GRO on lets the veth take redirected frames.
            ns.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"]);
        }
        // Usable addresses on both ends of each link (IPv6 ones wait for the carrier).
        let deadline = Instant::now() + Duration::from_secs(10);
        for (ns, ip) in [
            (&t.server, plan.server),
            (&t.server, plan.relay),
            (&t.client, plan.client),
            (&t.peer, plan.peer),
        ] {
            let usable = ns.run(|| until(deadline, || UdpSocket::bind(addr(ip, 0)).is_ok()));
            assert!(usable, "{ip} never became usable");
        }
        t
    }

    /// The server namespace knows the peer's MAC before traffic starts: the first datagram
    /// to an unresolved neighbour is passed up by the program (its route lookup fails),
    /// which a test counting what user space relays must not see.
    pub fn resolve_peer(&self, plan: &Plan) {
        self.server.run(|| {
            let s = UdpSocket::bind(addr(plan.relay, 0)).expect("socket on the relay address");
            let deadline = Instant::now() + Duration::from_secs(10);
            let known = until(deadline, || {
                let _ = s.send_to(b"arp", addr(plan.peer, 9));
                neighbour_known(plan.peer)
            });
            assert!(known, "the server namespace never resolved the peer");
        });
    }
}

/// Whether the calling thread's namespace has a usable neighbour entry for `ip`.
pub fn neighbour_known(ip: &str) -> bool {
    let out = Command::new("ip")
        .args(["neigh", "show", ip])
        .output()
        .expect("ip neigh");
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("lladdr") && !text.contains("FAILED") && !text.contains("INCOMPLETE")
}

/// Polls `f` every 20 ms until it holds (true) or `deadline` passes (false).
fn until(deadline: Instant, mut f: impl FnMut() -> bool) -> bool {
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
