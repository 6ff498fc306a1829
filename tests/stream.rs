//! TURN over TCP and TLS against the real `uturn` binary on loopback, for both data-path
//! backends: coturn's `turnutils_uclient` over TCP (`-t`) and TLS (`-S`) with a certificate
//! the test makes with the openssl tool, channels and Send indications, 10 clients × 300
//! messages with no loss.
//!
//! Missing tools (coturn's package, openssl) fail the test with a message saying so.

use std::time::Duration;

mod common;
mod stream_support;
use common::*;
use stream_support::tls_args;

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
