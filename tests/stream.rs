//! TURN over TCP and TLS against the real `uturn` binary on loopback, for both data-path
//! backends: coturn's `turnutils_uclient` over TCP (`-t`) and TLS (`-S`) with a certificate
//! the test makes with the openssl tool, channels and Send indications, 10 clients × 300
//! messages with no loss.
//!
//! Missing tools (coturn's package, openssl) fail the test with a message saying so.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod common;
use common::*;

/// A self-signed certificate and key in a fresh directory, made with the openssl tool.
pub fn make_cert(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("uturn-stream-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl tool is needed to make a test certificate (Debian: openssl)");
    assert!(out.status.success(), "openssl failed: {out:?}");
    (cert, key)
}

/// A loopback TCP port free right now.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tls_args(tag: &str) -> (Vec<String>, u16) {
    let (cert, key) = make_cert(tag);
    let port = free_tcp_port();
    let args = vec![
        "--cert".to_string(),
        cert.display().to_string(),
        "--pkey".to_string(),
        key.display().to_string(),
        "--tls-listening-port".to_string(),
        port.to_string(),
    ];
    (args, port)
}

fn uclient_over_stream(backend: &str, tls: bool, send_indications: bool) {
    let tag = format!("{backend}-{tls}-{send_indications}");
    let (tls_extra, tls_port) = tls_args(&tag);
    let mut extra = vec!["--allow-loopback-peers".to_string()];
    extra.extend(tls_extra);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut server = Uturn::start(backend, &extra);
    let peer = Peer::start();
    let mut args = vec!["-m", "10", "-n", "300", "-l", "170"];
    // -t is TCP; -S with it is TLS (without it, DTLS).
    args.push("-t");
    if tls {
        args.push("-S");
    }
    if send_indications {
        args.push("-s");
    }
    let port = if tls { tls_port } else { server.port };
    let (code, out) = uclient(port, peer.port, &args, Duration::from_secs(90));
    let log = server.log_text();
    assert_eq!(code, Some(0), "uclient failed:\n{out}\nserver log:\n{log}");
    assert_eq!(number_after(&out, "tot_send_msgs="), Some(3000), "{out}");
    assert_eq!(number_after(&out, "tot_recv_msgs="), Some(3000), "{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
    assert!(server.alive());
    assert_eq!(server.stop(), Some(0), "graceful stop exits 0");
}

#[test]
fn uclient_tcp_channels_portable() {
    uclient_over_stream("portable", false, false);
}

#[test]
fn uclient_tcp_send_indications_portable() {
    uclient_over_stream("portable", false, true);
}

#[test]
fn uclient_tls_channels_portable() {
    uclient_over_stream("portable", true, false);
}

#[test]
fn uclient_tls_send_indications_portable() {
    uclient_over_stream("portable", true, true);
}

#[test]
fn uclient_tcp_channels_io_uring() {
    uclient_over_stream("auto", false, false);
}

#[test]
fn uclient_tls_send_indications_io_uring() {
    uclient_over_stream("auto", true, true);
}
