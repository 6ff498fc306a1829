//! The load generator's TCP and TLS clients against the real server, briefly: ChannelData
//! and Send indications relay over both transports on both backends with nothing lost, the
//! server's CPU is read, and a TLS client given a CA refuses a certificate it does not
//! cover. The null stream forwarder (`uturn-bench forward --cert`) relays both transports
//! on one address with nothing lost.

mod common;
mod stream_support;
use common::*;
use std::io::{Read, Write};
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

/// `uturn-bench forward` on a free port with `args`, its stderr in a file; killed on drop.
struct Forwarder {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Forwarder {
    fn start(tag: &str, args: &[&str]) -> Forwarder {
        let port = free_tcp_port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!(
            "uturn-bench-forward-{}-{tag}.log",
            std::process::id()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_uturn-bench"))
            .args(["forward", "--listen", &listen])
            .args(args)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr: std::net::SocketAddr = listen.parse().unwrap();
        wait_for("the forwarder to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        Forwarder { child, port, log }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The floor for stream clients: the null forwarder serves TCP and TLS on one address, and
/// the stream load through it loses nothing (`relay` checks every frame came back).
#[test]
fn null_stream_forwarder_relays_tcp_and_tls() {
    let (cert, key) = make_cert("bench-null");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let forwarder = Forwarder::start("relays", &["--cert", &cert, "--pkey", &key]);
    let pid = forwarder.child.id();
    for transport in ["tcp", "tls"] {
        relay(transport, forwarder.port, pid, &["--null"]);
        // Larger frames, not a multiple of 4: padding on the way in and out.
        relay(
            transport,
            forwarder.port,
            pid,
            &["--null", "--size", "1001"],
        );
    }
}

/// A plain connection to the forwarder that has said `HELLO <peer>`; returns it and the
/// relay address from the `OK` line.
fn hello(
    forwarder: &Forwarder,
    peer: std::net::SocketAddr,
    recv_buffer: Option<usize>,
) -> (std::net::TcpStream, std::net::SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(bytes) = recv_buffer {
        // Before connecting, so the window the forwarder sees stays this small.
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    socket.connect(&forwarder.addr().into()).unwrap();
    let mut tcp: std::net::TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(format!("HELLO {peer}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while tcp.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let relay = line
        .strip_prefix("OK ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an OK line: {line:?}"));
    (tcp, relay)
}

/// The last `N frames dropped, M connections refused` the forwarder reported.
fn drops_and_refusals(log: &str) -> (u64, u64) {
    let number = |line: &str, what: &str| -> Option<u64> {
        let before = &line[..line.find(what)?];
        before
            .rsplit([' ', ','])
            .find(|w| !w.is_empty())?
            .parse()
            .ok()
    };
    log.lines()
        .rev()
        .find_map(|l| {
            Some((
                number(l, " frames dropped")?,
                number(l, " connections refused")?,
            ))
        })
        .unwrap_or((0, 0))
}

/// Bad input closes that connection and nothing else: a line that is not HELLO, a line
/// that never ends, a TLS handshake without a certificate, a frame that is not TURN. A
/// client that stops reading has its frames dropped whole beyond the queue's bound (and
/// counted), and what it reads later is still framed; the forwarder goes on serving.
#[test]
fn null_stream_forwarder_refuses_bad_input_and_bounds_a_stalled_client() {
    let forwarder = Forwarder::start("bounds", &["--tcp"]);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let connect = || std::net::TcpStream::connect(forwarder.addr()).unwrap();
    let mut not_turn = format!("HELLO {peer_addr}\n").into_bytes();
    not_turn.extend_from_slice(&[0x80, 0, 0, 4, 1, 2, 3, 4]);
    for (what, bytes) in [
        ("not HELLO", b"GOODBYE 127.0.0.1:9\n".to_vec()),
        ("an endless line", vec![b'H'; 1000]),
        (
            "TLS without a certificate",
            vec![0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0],
        ),
        ("not TURN framing", not_turn),
    ] {
        let mut tcp = connect();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = tcp.write_all(&bytes);
        let mut buf = [0u8; 256];
        // The OK line may come first; then the end of the stream.
        let mut got = Vec::new();
        let end = loop {
            match tcp.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(end, "{what}: still open (got {got:?})");
    }

    // A client that reads nothing, with a small window, while its peer sends 20 MB.
    let (mut stalled, relay) = hello(&forwarder, peer_addr, Some(4096));
    let payload_len = 1001;
    let count = 20_000u32;
    let mut datagram = vec![0x5au8; payload_len];
    for seq in 0..count {
        datagram[..4].copy_from_slice(&seq.to_be_bytes());
        let _ = peer.send_to(&datagram, relay);
    }
    wait_for(
        "the forwarder to count dropped frames",
        Duration::from_secs(20),
        || drops_and_refusals(&forwarder.log_text()).0 > 0,
    );
    let (dropped, refused) = drops_and_refusals(&forwarder.log_text());
    assert_eq!(refused, 4, "{}", forwarder.log_text());
    // What the client reads now is whole frames, in order, then nothing.
    let mut frames = uturn::stun::framing::Reassembler::default();
    let (mut received, mut last) = (0u32, None::<u32>);
    let mut buf = vec![0u8; 65_536];
    stalled
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = stalled.read(&mut buf) {
        if n == 0 {
            break;
        }
        frames
            .push(&buf[..n], |f| {
                assert_eq!(f[0] >> 6, 1, "ChannelData");
                assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), payload_len);
                assert_eq!(f.len(), 4 + payload_len.next_multiple_of(4));
                let seq = u32::from_be_bytes(f[4..8].try_into().unwrap());
                assert!(last.is_none_or(|l| seq > l), "{seq} after {last:?}");
                last = Some(seq);
                received += 1;
            })
            .expect("whole frames");
    }
    assert_eq!(frames.pending(), 0, "a frame cut short");
    assert!(received > 0 && received < count, "{received} of {count}");
    assert!(
        u64::from(received) + dropped <= u64::from(count),
        "{received} + {dropped}"
    );

    // The forwarder still serves: a new client's frame reaches the peer.
    let (mut fresh, relay) = hello(&forwarder, peer_addr, None);
    fresh
        .write_all(&[0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0])
        .unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 64];
    let (n, from) = peer.recv_from(&mut got).unwrap();
    assert_eq!((&got[..n], from), (&[1u8, 2, 3, 4, 5][..], relay));
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
