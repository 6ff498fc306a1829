//! A network namespace the XDP tests create for themselves, with the routes and neighbours
//! `bpf_fib_lookup` needs, entered by the thread that runs the program (BPF_PROG_TEST_RUN
//! runs in its caller's namespace). Deleted on drop, also when the test fails.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::frames::Mac;

/// Fails the test unless it runs as root: these tests need BPF and network namespaces, and
/// a test that cannot run is reported as failed, never as passed.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("Uid line");
    assert_eq!(
        euid, "0",
        "XDP tests NOT RUN: they need root (BPF, XDP, network namespaces). Run as root."
    );
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (install iproute2)"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
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
        nix::sched::setns(f.as_raw_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
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
