//! TLS on a running server, through real loopback connections: the certificate is replaced
//! without a restart (`Running::reload_certificates`, the SIGHUP hook) and every shard's next
//! handshake uses the new one; a reload from broken files keeps the old one; TLS 1.2 and 1.3
//! both carry a TURN Allocate.

use rustls::pki_types::CertificateDer;
use rustls::{ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use uturn::stun::{self, Class, Message, MessageBuilder, Method};
use uturn::testing::tls::{client_config, AnyCertificate};

mod common;
mod stream_support;
use common::*;
use stream_support::{free_tcp_port, make_cert};

/// Connects over TLS `version`, sends an unauthenticated Allocate and reads the 401 back;
/// returns the leaf certificate the server showed.
fn allocate_over_tls(
    server: SocketAddr,
    version: &'static rustls::SupportedProtocolVersion,
) -> CertificateDer<'static> {
    let remember = Arc::new(AnyCertificate::remembering());
    let config = client_config(version, remember.clone());
    let conn = ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(server).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    let tid = [9u8; 12];
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, &tid)
        .add_requested_transport(stun::TRANSPORT_UDP);
    tls.write_all(&out).unwrap();
    let mut header = [0u8; 20];
    tls.read_exact(&mut header).unwrap();
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut answer = header.to_vec();
    answer.resize(20 + len, 0);
    tls.read_exact(&mut answer[20..]).unwrap();
    let msg = Message::parse(&answer).unwrap();
    assert_eq!(msg.class(), Class::Error);
    assert_eq!(msg.error_code().unwrap().unwrap().0, 401);
    assert_eq!(
        tls.conn.protocol_version(),
        Some(version.version),
        "negotiated version"
    );
    remember.leaf().unwrap()
}

fn leaf_of(cert: &std::path::Path) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

#[test]
fn certificates_are_replaced_without_a_restart() {
    let (cert, key) = make_cert("reload");
    let tls_port = free_tcp_port();
    let config = loopback_config(2, |c| {
        c.cert = Some(cert.clone());
        c.pkey = Some(key.clone());
        c.tls_listening_port = tls_port;
    });
    let running = start_in_process(&config, None, None, 200);
    let server = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let first = leaf_of(&cert);
    // Several connections, so both shards' listeners answer.
    for _ in 0..4 {
        assert_eq!(allocate_over_tls(server, &rustls::version::TLS13), first);
        assert_eq!(allocate_over_tls(server, &rustls::version::TLS12), first);
    }
    // Rotation: new files in place, then the reload call.
    let (new_cert, new_key) = make_cert("reload-new");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let second = leaf_of(&cert);
    assert_ne!(first, second);
    assert_eq!(
        allocate_over_tls(server, &rustls::version::TLS13),
        first,
        "nothing changes before the reload"
    );
    running.reload_certificates().unwrap();
    for _ in 0..4 {
        assert_eq!(allocate_over_tls(server, &rustls::version::TLS13), second);
        assert_eq!(allocate_over_tls(server, &rustls::version::TLS12), second);
    }
    // A half-written file during the next rotation: the reload fails, TLS goes on.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    assert!(running.reload_certificates().is_err());
    assert_eq!(allocate_over_tls(server, &rustls::version::TLS13), second);
    running.stop();
}

/// The binary re-reads its certificate files on SIGHUP: a rotated certificate is served
/// to the next TLS client without a restart.
#[test]
fn sighup_reloads_the_certificate() {
    let (cert, key) = make_cert("sighup");
    let tls_port = free_tcp_port();
    let args = [
        "--allow-loopback-peers".to_string(),
        "--cert".to_string(),
        cert.display().to_string(),
        "--pkey".to_string(),
        key.display().to_string(),
        "--tls-listening-port".to_string(),
        tls_port.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Uturn::start("auto", &args);
    let addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let first = leaf_of(&cert);
    assert_eq!(allocate_over_tls(addr, &rustls::version::TLS13), first);
    let (new_cert, new_key) = make_cert("sighup-new");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let second = leaf_of(&cert);
    let reloads = |log: &str| log.matches("reload (SIGHUP) done").count();
    let before = reloads(&server.log_text());
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("the reload's log line", Duration::from_secs(10), || {
        reloads(&server.log_text()) > before
    });
    assert_eq!(allocate_over_tls(addr, &rustls::version::TLS13), second);
    assert_eq!(allocate_over_tls(addr, &rustls::version::TLS12), second);
    assert_eq!(server.stop(), Some(0));
}
