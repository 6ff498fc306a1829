//! Interop with clients uturn did not write: coturn's `turnutils_stunclient`,
//! `turnutils_uclient` + `turnutils_peer`, and the webrtc-rs `turn` crate, against the real
//! `uturn` binary on loopback, for both data-path backends. Plus a hostile-datagram barrage.
//!
//! The coturn tools come from Debian's `coturn` package (scripts/test.sh installs it); a
//! missing tool fails the test with a message saying so, it is never skipped silently.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;
use uturn::stun;

mod common;
use common::*;

fn stunclient(backend: &str) {
    let server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let (code, out) = run_bounded(
        Command::new(tool("turnutils_stunclient")).args([
            "-p",
            &server.port.to_string(),
            "127.0.0.1",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
}

fn uclient_relays(backend: &str, send_indications: bool) {
    let mut server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let peer = Peer::start();
    let mut args = vec!["-m", "10", "-n", "300", "-l", "170"];
    if send_indications {
        args.push("-s");
    }
    let (code, out) = uclient(server.port, peer.port, &args, Duration::from_secs(60));
    let log = server.log_text();
    assert_eq!(code, Some(0), "uclient failed:\n{out}\nserver log:\n{log}");
    assert_eq!(number_after(&out, "tot_send_msgs="), Some(3000), "{out}");
    assert_eq!(number_after(&out, "tot_recv_msgs="), Some(3000), "{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
    assert!(server.alive());
    assert_eq!(server.stop(), Some(0), "graceful stop exits 0");
}

/// Without `--allow-loopback-peers` a loopback peer is unreachable: here 127.0.0.1 is the
/// server's own address, so the permission is granted (clients of one server must reach
/// each other's relay addresses) but nothing goes to a port outside the relay range (the
/// peer's port is ephemeral, the test relay ranges lie below the ephemeral range), and
/// each datagram is counted.
fn loopback_peer_refused(backend: &str) {
    let mut server = Uturn::start(backend, &[]);
    let peer = Peer::start();
    let (_, out) = uclient(
        server.port,
        peer.port,
        &["-m", "1", "-n", "5", "-l", "100"],
        Duration::from_secs(30),
    );
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    assert!(log_counter(&log, "own_address_port") >= 5, "{out}\n{log}");
    assert_eq!(log_counter(&log, "relayed_to_peer"), 0, "{log}");
    assert_eq!(log_counter(&log, "relayed_to_client"), 0, "{log}");
}

fn webrtc_client(backend: &str) {
    let server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let server_addr = server.addr();
    block_on(async move {
        use webrtc_util::Conn;
        let peer_addr = webrtc_echo_peer().await;
        let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = webrtc_turn_client(server_addr, std::sync::Arc::new(conn)).await;
        let mapped = client.send_binding_request().await.expect("binding");
        assert_eq!(mapped.ip().to_string(), "127.0.0.1");
        let relay = client.allocate().await.expect("allocate");
        let relay_addr = relay.local_addr().expect("relay addr");
        assert_eq!(relay_addr.ip().to_string(), "127.0.0.1");
        webrtc_echo_through(&relay, peer_addr, |i| format!("webrtc-rs packet {i}")).await;
        relay.close().await.expect("close relay");
        client.close().await.expect("close client");
    });
    drop(server);
}

fn hostile_datagrams(backend: &str) {
    let mut server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let target = server.addr();
    let socks: Vec<UdpSocket> = (0..16)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut buf = [0u8; 600];
    for i in 0..30_000usize {
        let len = (rand() % 600) as usize;
        for b in buf[..len].iter_mut() {
            *b = rand() as u8;
        }
        match i % 5 {
            // STUN header with a lying length and the right cookie.
            0 if len >= 20 => {
                buf[0] = 0x00;
                buf[1] = 0x03;
                buf[2..4].copy_from_slice(&(rand() as u16).to_be_bytes());
                buf[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
            }
            // ChannelData with a lying length.
            1 if len >= 4 => {
                buf[0] = 0x40 | (rand() as u8 & 0x3F);
            }
            // A valid-looking STUN header, truncated attributes.
            2 if len >= 24 => {
                buf[0] = 0x00;
                buf[1] = 0x01;
                buf[2..4].copy_from_slice(&((len - 20) as u16 & !3).to_be_bytes());
                buf[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
                buf[20..22].copy_from_slice(&0x0006u16.to_be_bytes());
                buf[22..24].copy_from_slice(&0xFFFFu16.to_be_bytes());
            }
            _ => {}
        }
        let _ = socks[i % socks.len()].send_to(&buf[..len], target);
        if i % 2000 == 0 {
            // Let the server breathe so the kernel queue is not what drops everything.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(server.alive(), "server died:\n{}", server.log_text());
    let mut answered = false;
    for _ in 0..20 {
        if binding(target, Duration::from_millis(500)).is_some() {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "no Binding answer after the barrage:\n{}",
        server.log_text()
    );
    assert_eq!(server.stop(), Some(0));
}

macro_rules! both_backends {
    ($($name:ident => $body:expr;)*) => {
        mod io_uring {
            use super::*;
            $(#[test] fn $name() { let f: fn(&str) = $body; f("io-uring"); })*
        }
        mod portable {
            use super::*;
            $(#[test] fn $name() { let f: fn(&str) = $body; f("portable"); })*
        }
    };
}

both_backends! {
    stunclient_gets_reflexive_address => stunclient;
    uclient_channel_data_zero_loss => |b| uclient_relays(b, false);
    uclient_send_indications_zero_loss => |b| uclient_relays(b, true);
    uclient_loopback_peer_refused_without_option => loopback_peer_refused;
    webrtc_rs_client_allocates_and_relays => webrtc_client;
    hostile_datagrams_leave_server_answering => hostile_datagrams;
}
