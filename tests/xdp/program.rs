//! What every test of the program alone (tests/xdp.rs) uses: the lab's addresses per family
//! (tests/xdp/lab.rs), bindings between them, loading the program, and the verdict and frame
//! a relayed or passed datagram must produce (built by tests/xdp/frames.rs, the reference).
#![allow(dead_code)]

use std::net::SocketAddr;

use uturn::xdp::{Action, ChannelOffload, Offload, Outcome, DEFAULT_MAX_ENTRIES};

use super::frames::Udp;
use super::lab;

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One family's addresses in the lab.
pub struct Family {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    /// A peer reached through the clients' interface (XDP_TX).
    pub near_peer: SocketAddr,
    pub unresolved_peer: SocketAddr,
    pub unroutable_peer: SocketAddr,
}

pub fn v4() -> Family {
    Family {
        client: sa("192.0.2.10:40000"),
        server: sa("192.0.2.1:3478"),
        relay: sa("198.51.100.1:50000"),
        peer: sa("198.51.100.20:7000"),
        near_peer: sa("192.0.2.30:7001"),
        unresolved_peer: sa("198.51.100.99:7002"),
        unroutable_peer: sa("203.0.113.5:7003"),
    }
}

pub fn v6() -> Family {
    Family {
        client: sa("[2001:db8:c::10]:40000"),
        server: sa("[2001:db8:c::1]:3478"),
        relay: sa("[2001:db8:a::1]:50000"),
        peer: sa("[2001:db8:a::20]:7000"),
        near_peer: sa("[2001:db8:c::30]:7001"),
        unresolved_peer: sa("[2001:db8:a::99]:7002"),
        unroutable_peer: sa("[2001:db8:f::5]:7003"),
    }
}

pub fn binding(f: &Family, channel: u16, relay_port: u16, peer: SocketAddr) -> ChannelOffload {
    let mut relay = f.relay;
    relay.set_port(relay_port);
    ChannelOffload {
        client: f.client,
        server: f.server,
        channel,
        relay,
        peer,
        allocation: 1,
    }
}

pub fn load() -> Offload {
    lab::require_root();
    Offload::load(DEFAULT_MAX_ENTRIES).expect("load the XDP program (root, kernel with BPF)")
}

/// One run of the program on `frame` received on `ingress`.
pub fn run(o: &Offload, frame: &[u8], ingress: u32) -> Outcome {
    o.test_run().unwrap().run(frame, ingress, 1).unwrap()
}

/// Runs `frame` received on `ingress` and checks the program passed it on untouched.
pub fn assert_pass(o: &Offload, frame: &[u8], ingress: u32, what: &str) {
    let out = o.test_run().unwrap().run(frame, ingress, 1).unwrap();
    assert_eq!(out.action, Action::Pass, "{what}: verdict");
    assert_eq!(out.frame, frame, "{what}: a passed frame is unchanged");
}

/// The frame the program must produce for `payload` sent from `src` to `dst` out of an
/// interface with MAC `smac` to next hop `dmac`, given the received datagram `rx`.
pub fn expected(
    rx: &Udp,
    src: SocketAddr,
    dst: SocketAddr,
    smac: [u8; 6],
    dmac: [u8; 6],
    payload: &[u8],
) -> Vec<u8> {
    let mut u = rx.clone();
    u.src = src;
    u.dst = dst;
    u.src_mac = smac;
    u.dst_mac = dmac;
    u.payload = payload.to_vec();
    u.ttl = 64;
    u.flow = 0;
    u.frame()
}
