//! The XDP program's own cost per packet, from BPF_PROG_TEST_RUN (kernel-measured time, no
//! driver, no transmit), per path. `cargo bench --bench xdp` (root) prints the table
//! recorded in benches/RESULTS.md; without `--bench` (as under `cargo test`) it runs every
//! path a few times and checks the verdicts only.
//!
//! Two methods, because a repeated test run reuses the frame the previous run left:
//! - single: one run per syscall, N syscalls; the kernel's per-run time includes its timer
//!   reads around the program (tens of ns), so these are upper bounds.
//! - repeat: one syscall, R runs, the kernel's mean. Exact for paths that leave the frame as
//!   it was (XDP_PASS). For relaying, a pair of bindings makes a cycle: A's client->peer
//!   output is B's peer datagram and B's peer->client output is A's ChannelData again, so the
//!   mean is one forward plus one reverse rewrite per two runs.

#[path = "../tests/xdp/frames.rs"]
mod frames;
#[path = "../tests/xdp/lab.rs"]
mod lab;

use std::net::SocketAddr;
use std::time::Duration;

use frames::{channel_data, pattern, Udp};
use lab::{ifindex, Lab};
use uturn::xdp::{Action, ChannelOffload, Offload, DEFAULT_MAX_ENTRIES};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Case {
    name: String,
    frame: Vec<u8>,
    ingress: &'static str,
    action: Action,
}

/// Client C, server S, relay R, peer P with every address a neighbour (so B's reverse
/// path can send to S); payload bytes per datagram as in a typical audio/video packet.
fn bindings(v6: bool) -> (ChannelOffload, ChannelOffload, ChannelOffload) {
    let (c, s, r, p, near) = if v6 {
        (
            "[2001:db8:c::10]:40000",
            "[2001:db8:c::30]:3478",
            "[2001:db8:a::1]:50000",
            "[2001:db8:a::20]:7000",
            "[2001:db8:c::30]:7001",
        )
    } else {
        (
            "192.0.2.10:40000",
            "192.0.2.30:3478",
            "198.51.100.1:50000",
            "198.51.100.20:7000",
            "192.0.2.30:7001",
        )
    };
    let a = ChannelOffload {
        client: sa(c),
        server: sa(s),
        channel: 0x4001,
        relay: sa(r),
        peer: sa(p),
        allocation: 1,
    };
    // The mirror of A: its reverse entry turns A's output back into A's input.
    let b = ChannelOffload {
        client: a.server,
        server: a.client,
        channel: a.channel,
        relay: a.peer,
        peer: a.relay,
        allocation: 2,
    };
    let near = ChannelOffload {
        channel: 0x4002,
        peer: sa(near),
        ..a
    };
    (a, b, near)
}

fn cases(v6: bool, payload: usize) -> Vec<Case> {
    let (a, _, _) = bindings(v6);
    let data = pattern(payload, 1);
    let family = if v6 { "v6" } else { "v4" };
    let name = |s: &str| format!("{family} {s}");
    let mut stun = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    vec![
        Case {
            name: name("client->peer, redirect"),
            frame: Udp::new(a.client, a.server, &channel_data(0x4001, &data, &[])).frame(),
            ingress: "xc0",
            action: Action::Redirect,
        },
        Case {
            name: name("client->peer, XDP_TX"),
            frame: Udp::new(a.client, a.server, &channel_data(0x4002, &data, &[])).frame(),
            ingress: "xc0",
            // The near peer is reached through the ingress interface.
            action: Action::Tx,
        },
        Case {
            name: name("peer->client, redirect"),
            frame: Udp::new(a.peer, a.relay, &data).frame(),
            ingress: "xp0",
            action: Action::Redirect,
        },
        Case {
            name: name("pass: STUN"),
            frame: Udp::new(a.client, a.server, &stun).frame(),
            ingress: "xc0",
            action: Action::Pass,
        },
        Case {
            name: name("pass: unbound channel"),
            frame: Udp::new(a.client, a.server, &channel_data(0x4003, &data, &[])).frame(),
            ingress: "xc0",
            action: Action::Pass,
        },
    ]
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (singles, repeat) = if full {
        (20_000, 2_000_000)
    } else {
        (20, 1000)
    };
    lab::require_root();
    let lab = Lab::new();
    lab.run(|| {
        let mut o = Offload::load(DEFAULT_MAX_ENTRIES).expect("load the XDP program");
        println!("XDP program cost per packet (BPF_PROG_TEST_RUN, 160-byte payloads)");
        println!("{:<32} {:>9} {:>12} {:>12} {:>12}", "path", "verdict", "single mean", "single p50", "repeat mean");
        for v6 in [false, true] {
            let (a, b, near) = bindings(v6);
            for binding in [&a, &b, &near] {
                o.maps_mut().install(binding).expect("install");
            }
            for case in cases(v6, 160) {
                let ingress = ifindex(case.ingress);
                let run = o.test_run().unwrap();
                let mut times = Vec::with_capacity(singles);
                for _ in 0..singles {
                    let out = run.run(&case.frame, ingress, 1).unwrap();
                    assert_eq!(out.action, case.action, "{}", case.name);
                    times.push(out.per_run);
                }
                times.sort();
                let mean = times.iter().map(|d| ns(*d)).sum::<f64>() / times.len() as f64;
                let p50 = ns(times[times.len() / 2]);
                // Repeated runs measure only paths that leave the frame as it was.
                let repeated = if case.action == Action::Pass {
                    let out = run.run(&case.frame, ingress, repeat).unwrap();
                    assert_eq!(out.action, Action::Pass);
                    format!("{:.0} ns", ns(out.per_run))
                } else {
                    "-".to_string()
                };
                println!("{:<32} {:>9} {:>9.0} ns {:>9.0} ns {:>12}", case.name, format!("{:?}", case.action), mean, p50, repeated);
            }
            // The first datagram of an entry (per CPU, per second) also pays for the route
            // lookup: re-installing empties the entry's next-hop cache before each run.
            for (name, frame, ingress) in [
                ("client->peer, uncached hop", Udp::new(a.client, a.server, &channel_data(0x4001, &pattern(160, 1), &[])).frame(), "xc0"),
                ("peer->client, uncached hop", Udp::new(a.peer, a.relay, &pattern(160, 1)).frame(), "xp0"),
            ] {
                let ingress = ifindex(ingress);
                let mut times = Vec::with_capacity(singles);
                for _ in 0..singles {
                    o.maps_mut().remove(&a).expect("remove");
                    o.maps_mut().install(&a).expect("install");
                    let out = o.test_run().unwrap().run(&frame, ingress, 1).unwrap();
                    assert_eq!(out.action, Action::Redirect, "{name}");
                    times.push(out.per_run);
                }
                times.sort();
                let mean = times.iter().map(|d| ns(*d)).sum::<f64>() / times.len() as f64;
                let p50 = ns(times[times.len() / 2]);
                let family = if v6 { "v6" } else { "v4" };
                println!("{:<32} {:>9} {:>9.0} ns {:>9.0} ns {:>12}", format!("{family} {name}"), "Redirect", mean, p50, "-");
            }
            // The A/B cycle: forward and reverse rewrites alternate on one frame.
            let frame = Udp::new(a.client, a.server, &channel_data(0x4001, &pattern(160, 1), &[])).frame();
            let before = o.maps().read_counters(&a).unwrap().to_peer.packets;
            let out = o.test_run().unwrap().run(&frame, ifindex("xc0"), repeat).unwrap();
            let after = o.maps().read_counters(&a).unwrap().to_peer.packets;
            let reversed = o.maps().read_counters(&b).unwrap().to_client.packets;
            // Every other run is a forward rewrite of A (the cycle held for the whole run).
            assert_eq!(after - before, u64::from(repeat).div_ceil(2), "cycle broken");
            assert!(reversed >= u64::from(repeat) / 2);
            println!(
                "{:<32} {:>9} {:>12} {:>12} {:>9.0} ns",
                format!("{} client->peer + peer->client", if v6 { "v6" } else { "v4" }),
                "alt.",
                "-",
                "-",
                ns(out.per_run)
            );
            for binding in [&a, &b, &near] {
                o.maps_mut().remove(binding).expect("remove");
            }
        }
        println!("(single: {singles} syscalls of one run, upper bound incl. the kernel's timer reads; repeat: {repeat} runs in one syscall)");
    });
}
