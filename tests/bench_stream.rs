//! The load generator's TCP and TLS clients against the real server, briefly: ChannelData
//! and Send indications relay over both transports on both backends with nothing lost, the
//! server's CPU is read, and a TLS client given a CA refuses a certificate it does not
//! cover. The null stream forwarder (`uturn-bench forward --cert`) relays both transports
//! on one address with nothing lost.

mod common;
mod stream_support;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use stream_support::{free_tcp_port, make_cert};

fn bench(args: &[&str]) -> (Option<i32>, String) {
    run_bounded(
        Command::new(env!("CARGO_BIN_EXE_uturn-bench")).args(args),
        Duration::from_secs(60),
    )
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

/// uturn with a TCP listener on its port and TLS on another; returns it and the TLS port.
fn server(backend: &str, cert: &Path, key: &Path) -> (Uturn, u16) {
    let tls_port = free_tcp_port();
    let args = [
        "--allow-loopback-peers".to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--pkey".into(),
        key.display().to_string(),
        "--tls-listening-port".into(),
        tls_port.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Uturn::start(backend, &args), tls_port)
}

/// A short, gentle stream run; checks that all came back and the CPU was read.
fn relay(transport: &str, port: u16, pid: u32, extra: &[&str]) {
    let (server, pid) = (format!("127.0.0.1:{port}"), pid.to_string());
    let mut args = vec![
        "relay",
        "--transport",
        transport,
        "--server",
        &server,
        "--allocations",
        "8",
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
    let (code, out) = bench(&args);
    assert_eq!(code, Some(0), "uturn-bench {args:?}:\n{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "{out}");
    let r = lines[0];
    assert_eq!(field(r, "allocations"), 8.0, "{r}");
    assert!(field(r, "sent") >= 400.0, "{r}");
    assert_eq!(
        field(r, "received"),
        field(r, "sent"),
        "{transport} {extra:?}: {r}"
    );
    assert_eq!(field(r, "corrupt"), 0.0, "{r}");
    assert!(field(r, "p50_us") > 0.0, "{r}");
    assert!(field(r, "cpu_us_per_packet") >= 0.0, "{r}");
    assert!(!out.contains("closed"), "{out}");
}

fn both_transports(backend: &str) {
    let (cert, key) = make_cert(&format!("bench-{backend}"));
    let (server, tls_port) = server(backend, &cert, &key);
    let result = std::panic::catch_unwind(|| {
        for (transport, port) in [("tcp", server.port), ("tls", tls_port)] {
            relay(transport, port, server.pid(), &[]);
            relay(transport, port, server.pid(), &["--send-indications"]);
        }
    });
    if let Err(panic) = result {
        eprintln!("server log:\n{}", server.log_text());
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn tcp_and_tls_loads_on_io_uring() {
    both_transports("io-uring");
}

#[test]
fn tcp_and_tls_loads_on_portable() {
    both_transports("portable");
}

/// The floor for stream clients: the null forwarder serves TCP and TLS on one address, and
/// the stream load through it loses nothing (`relay` checks every frame came back).
#[test]
fn null_stream_forwarder_relays_tcp_and_tls() {
    let (cert, key) = make_cert("bench-null");
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let mut forwarder = Command::new(env!("CARGO_BIN_EXE_uturn-bench"))
        .args([
            "forward", "--listen", &listen, "--cert", &cert, "--pkey", &key,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    wait_for("the forwarder to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let pid = forwarder.id();
    let result = std::panic::catch_unwind(|| {
        for transport in ["tcp", "tls"] {
            relay(transport, port, pid, &["--null"]);
            // Larger frames, not a multiple of 4: padding on the way in and out.
            relay(transport, port, pid, &["--null", "--size", "1001"]);
        }
    });
    let _ = forwarder.kill();
    let _ = forwarder.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl tool is needed to make test certificates (Debian: openssl)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A CA and a leaf for `localhost` signed by it, in a fresh directory.
fn ca_and_leaf(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("uturn-bench-ca-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=bench test CA"];
    ca.extend(ec);
    let (ca_key, ca_cert) = (p("ca-key.pem"), p("ca.pem"));
    ca.extend(["-keyout", &ca_key, "-out", &ca_cert]);
    openssl(&ca);
    let (key, csr, cert, ext) = (p("key.pem"), p("leaf.csr"), p("cert.pem"), p("ext"));
    std::fs::write(&ext, "subjectAltName=DNS:localhost\n").unwrap();
    let mut req = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key,
        "-out",
        &csr,
    ];
    req.extend(ec);
    openssl(&req);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_cert,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (ca_cert.into(), cert.into(), key.into())
}

/// With --ca the client verifies: the right CA and name relay, another name or another CA
/// is refused during setup (so the default, accepting any certificate, is a choice).
#[test]
fn tls_client_given_a_ca_verifies_the_server() {
    let (ca, cert, key) = ca_and_leaf("server");
    let (other_ca, _, _) = ca_and_leaf("other");
    let (server, tls_port) = server("auto", &cert, &key);
    let ca = ca.display().to_string();
    relay("tls", tls_port, server.pid(), &["--ca", &ca]);
    let addr = format!("127.0.0.1:{tls_port}");
    let base = ["relay", "--transport", "tls", "--server", &addr];
    let tail = [
        "--allocations",
        "1",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--quiet",
    ];
    let other_ca = other_ca.display().to_string();
    for wrong in [
        ["--ca", ca.as_str(), "--tls-name", "other.example"],
        ["--ca", other_ca.as_str(), "--tls-name", "localhost"],
    ] {
        let args: Vec<&str> = base.iter().chain(&wrong).chain(&tail).copied().collect();
        let (code, out) = bench(&args);
        assert_eq!(code, Some(1), "{wrong:?} must fail:\n{out}");
        assert!(out.contains("certificate"), "{wrong:?}:\n{out}");
    }
}
