//! The bundled load generator against the real server and its own null forwarder, briefly:
//! every mode relays, loses nothing at a gentle rate, and reports what it measured.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn bench(args: &[&str]) -> Vec<String> {
    let (code, out) = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_uturn-bench")).args(args),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "uturn-bench {args:?}:\n{out}");
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_owned)
        .collect()
}

fn field(json: &str, key: &str) -> f64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"))
        + key.len()
        + 3;
    json[at..]
        .split([',', '}'])
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {json}"))
}

fn check(lines: &[String], allocations: f64) {
    assert_eq!(lines.len(), 1, "{lines:?}");
    let r = &lines[0];
    assert_eq!(field(r, "allocations"), allocations);
    assert!(field(r, "sent") >= 400.0, "{r}");
    assert_eq!(field(r, "loss_pct"), 0.0, "{r}");
    assert_eq!(field(r, "received"), field(r, "sent"), "{r}");
    assert!(field(r, "p50_us") > 0.0, "{r}");
    // Read from /proc in 10 ms ticks: present (not null), possibly 0 at this gentle rate.
    assert!(
        field(r, "cpu_us_per_packet") >= 0.0,
        "the server's CPU is read from /proc: {r}"
    );
}

/// A short, gentle `uturn-bench relay` run against `server` (pid `pid`) plus `extra`;
/// checks it and its numbers.
fn relay(server: &str, pid: u32, allocations: u32, extra: &[&str]) {
    let (allocs, pid) = (allocations.to_string(), pid.to_string());
    let mut args = vec![
        "relay",
        "--server",
        server,
        "--allocations",
        &allocs,
        "--rate",
        "500",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--server-pid",
        &pid,
        "--json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    check(&bench(&args), f64::from(allocations));
}

#[test]
fn channel_data_and_send_indications_against_uturn() {
    let server = Uturn::start("io-uring", &["--allow-loopback-peers"]);
    let addr = server.addr().to_string();
    relay(&addr, server.pid(), 10, &["--rate-per-allocation", "50"]);
    relay(&addr, server.pid(), 10, &["--send-indications"]);
}

#[test]
fn batched_and_bursty_sends_against_uturn() {
    let server = Uturn::start("io-uring", &["--allow-loopback-peers"]);
    let addr = server.addr().to_string();
    // Frames of 8–16 datagrams to one allocation, as one sendmmsg and as one GSO send.
    relay(&addr, server.pid(), 10, &["--burst", "8-16"]);
    relay(&addr, server.pid(), 10, &["--burst", "8-16", "--gso"]);
    relay(
        &addr,
        server.pid(),
        10,
        &["--send-batch", "4", "--send-indications"],
    );
}

#[test]
fn direct_mode_reaches_the_peers_without_a_relay() {
    // Nothing listens on --server: every datagram must go straight to the echo peers.
    let nobody = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = nobody.local_addr().unwrap().to_string();
    let lines = bench(&[
        "relay",
        "--direct",
        "--server",
        &server,
        "--allocations",
        "10",
        "--rate",
        "500",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--burst",
        "8-16",
        "--gso",
        "--json",
        "--quiet",
    ]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let r = &lines[0];
    assert!(field(r, "sent") >= 400.0, "{r}");
    assert_eq!(field(r, "received"), field(r, "sent"), "{r}");
    assert!(r.contains("\"mode\":\"Direct\""), "{r}");
    assert!(r.contains("\"frames\":\"8-16xgso\""), "{r}");
    // Machine CPU comes from /proc/stat: present, and no server was asked about.
    assert!(field(r, "machine_us_per_packet") >= 0.0, "{r}");
    assert!(r.contains("\"cpu_us_per_packet\":null"), "{r}");
    let mut buf = [0u8; 64];
    nobody.set_nonblocking(true).unwrap();
    assert!(
        nobody.recv(&mut buf).is_err(),
        "a datagram reached --server"
    );
}

#[test]
fn rest_credentials_against_uturn() {
    let server = Uturn::start(
        "portable",
        &[
            "--allow-loopback-peers",
            "--use-auth-secret",
            "--static-auth-secret",
            "s3",
        ],
    );
    let result = std::panic::catch_unwind(|| {
        relay(
            &server.addr().to_string(),
            server.pid(),
            5,
            &["--auth-secret", "s3"],
        )
    });
    if let Err(panic) = result {
        eprintln!("server log:\n{}", server.log_text());
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn null_forwarder_relays_too() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut forwarder = Command::new(env!("CARGO_BIN_EXE_uturn-bench"))
        .args(["forward", "--listen", &listen])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the forwarder to bind", Duration::from_secs(10), || {
        udp_bound(listen.parse().unwrap())
    });
    let pid = forwarder.id();
    let result = std::panic::catch_unwind(|| {
        relay(&listen, pid, 10, &["--null"]);
        relay(&listen, pid, 10, &["--null", "--send-batch", "8"]);
    });
    let _ = forwarder.kill();
    let _ = forwarder.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Network namespaces of one test, deleted on drop (also when the test fails).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--peer-netns`: the echo peers live in another namespace than the clients, so the direct
/// baseline crosses a veth as relayed traffic does. Needs root (namespaces): without it the
/// test fails saying so, it is never skipped.
#[test]
fn echo_peers_in_another_network_namespace() {
    uturn::testing::netns::require_root("it creates network namespaces");
    let pid = std::process::id();
    let (client, peer) = (format!("uturn-bt-c-{pid}"), format!("uturn-bt-p-{pid}"));
    let _namespaces = Namespaces(vec![client.clone(), peer.clone()]);
    for ns in [&client, &peer] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    // RFC 2544's benchmarking addresses, on a veth pair between the two.
    let veth = [
        "link", "add", "bt0", "type", "veth", "peer", "name", "bt1", "netns",
    ];
    ip(&[&["-n", client.as_str()][..], &veth, &[peer.as_str()]].concat());
    for (ns, dev, addr) in [
        (&client, "bt0", "198.18.0.1/24"),
        (&peer, "bt1", "198.18.0.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    wait_for("the veth's carrier", Duration::from_secs(10), || {
        ip(&["-n", &client, "link", "show", "bt0"]).contains("LOWER_UP")
    });
    let run = |peer_netns: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &client,
            env!("CARGO_BIN_EXE_uturn-bench"),
            "relay",
        ]);
        cmd.args([
            "--direct",
            "--client-ips",
            "198.18.0.1",
            "--peer-ip",
            "198.18.0.2",
        ]);
        cmd.args(["--allocations", "10", "--rate", "500", "--duration", "1"]);
        cmd.args(["--warmup", "0.2", "--json", "--quiet"])
            .args(peer_netns);
        run_bounded(&mut cmd, Duration::from_secs(60))
    };
    let (code, out) = run(&["--peer-netns", &peer]);
    assert_eq!(code, Some(0), "{out}");
    let r = out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    assert!(field(r, "sent") >= 400.0, "{r}");
    assert_eq!(field(r, "received"), field(r, "sent"), "{r}");
    assert!(field(r, "accounted_us_per_packet") >= 0.0, "{r}");
    // The peers' address exists only in the peer namespace: without the option they
    // cannot even bind it.
    let (code, out) = run(&[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("echo peers"), "{out}");
}
