//! `--xdp IFACE` / `--xdp-mode` on the real binary: the program is attached where it can
//! be (native on veth, generic on loopback), every failure is one log line and nothing
//! else changes (allocations still work), and nothing stays attached once uturn is gone.
//! Runs in network namespaces the tests create. Needs root.

#[path = "xdp/frames.rs"]
mod frames;
#[path = "xdp/lab.rs"]
mod lab;
#[path = "xdp/uturn.rs"]
mod uturn_process;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use lab::Netns;
use uturn::client::Client;
use uturn_process::Server;

/// A namespace with a veth pair, `xc0` (192.0.2.1/24) and `xc1` (192.0.2.2/24).
fn namespace() -> Netns {
    let ns = Netns::new();
    ns.ip(&["link", "add", "xc0", "type", "veth", "peer", "name", "xc1"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "xc0"]);
    ns.ip(&["addr", "add", "192.0.2.2/24", "dev", "xc1"]);
    ns.ip(&["link", "set", "xc0", "up"]);
    ns.ip(&["link", "set", "xc1", "up"]);
    ns
}

/// What `ip link` says about `dev`'s XDP program: "xdp" (native), "xdpgeneric" or none.
fn xdp_attachment(ns: &Netns, dev: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "dev", dev])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .find(|w| w.starts_with("xdp"))
        .map(str::to_string)
}

/// An allocation from a client in `ns` to uturn at 192.0.2.1:3478, once uturn is up.
fn allocates(ns: &Netns) {
    let socket = ns.run(|| UdpSocket::bind("192.0.2.2:0").expect("client socket"));
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let mut client = Client::with_socket(socket, server, "alice", "secret");
    client.set_timeout(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.allocate(None) {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "no allocation: {e}"),
        }
    }
}

const ARGS: [&str; 10] = [
    "-L",
    "192.0.2.1",
    "-p",
    "3478",
    "-u",
    "alice:secret",
    "-r",
    "xdp.test",
    "--cores",
    "0",
];

#[test]
fn xdp_option_attaches_native_and_generic_and_reports_refusals() {
    lab::require_root();
    let ns = namespace();
    let mut args = ARGS.to_vec();
    args.extend(["--xdp", "xc0", "--xdp", "lo", "--xdp", "nosuch0"]);
    let server = Server::start(&ns, &args, false);
    server.wait_for_log(&["uturn ready"]);
    server.wait_for_log(&["XDP offload attached", "interface=\"xc0\"", "Native"]);
    server.wait_for_log(&["no native XDP", "interface=\"lo\""]);
    server.wait_for_log(&["XDP offload attached", "interface=\"lo\"", "Generic"]);
    server.wait_for_log(&["XDP offload not on nosuch0"]);
    assert_eq!(xdp_attachment(&ns, "xc0").as_deref(), Some("xdp"));
    assert_eq!(xdp_attachment(&ns, "lo").as_deref(), Some("xdpgeneric"));
    allocates(&ns);

    // Killed outright, uturn leaves no program behind (links die with their process).
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while xdp_attachment(&ns, "xc0").is_some() || xdp_attachment(&ns, "lo").is_some() {
        assert!(
            Instant::now() < deadline,
            "XDP still attached after uturn exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn xdp_generic_mode_is_generic_even_where_native_works() {
    lab::require_root();
    let ns = namespace();
    let mut args = ARGS.to_vec();
    args.extend(["--xdp", "xc0", "--xdp-mode", "generic"]);
    let server = Server::start(&ns, &args, false);
    server.wait_for_log(&["XDP offload attached", "interface=\"xc0\"", "Generic"]);
    assert_eq!(xdp_attachment(&ns, "xc0").as_deref(), Some("xdpgeneric"));
    allocates(&ns);
}

#[test]
fn without_privileges_xdp_is_off_and_relaying_goes_on() {
    lab::require_root();
    let ns = namespace();
    let mut args = ARGS.to_vec();
    args.extend(["--xdp", "xc0"]);
    let server = Server::start(&ns, &args, true);
    server.wait_for_log(&["XDP offload off, relaying stays in user space"]);
    server.wait_for_log(&["uturn ready"]);
    assert_eq!(xdp_attachment(&ns, "xc0"), None);
    allocates(&ns);
}

#[test]
fn only_refusing_interfaces_turn_the_offload_off() {
    lab::require_root();
    let ns = namespace();
    let mut args = ARGS.to_vec();
    args.extend(["--xdp", "nosuch0"]);
    let server = Server::start(&ns, &args, false);
    server.wait_for_log(&["XDP offload off: no interface accepted the program"]);
    server.wait_for_log(&["uturn ready"]);
    allocates(&ns);
}
