//! The webrtc-rs `turn` client against uturn, over whatever `Conn` carries it (a UDP socket,
//! or a framing TCP adapter): an echo peer, the client, and an exchange through its relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use webrtc_util::Conn;

/// Runs `test` to its end on a current-thread tokio runtime of its own.
pub fn block_on<F: std::future::Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test)
}

/// An echo peer on 127.0.0.1 (a task on the current runtime); returns its address.
pub async fn webrtc_echo_peer() -> SocketAddr {
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = peer.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = peer.recv_from(&mut buf).await {
            let _ = peer.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A webrtc-rs TURN client of `server` as alice/secret over `conn`, listening.
pub async fn webrtc_turn_client(
    server: SocketAddr,
    conn: Arc<dyn Conn + Send + Sync>,
) -> turn::client::Client {
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: "alice".into(),
        password: "secret".into(),
        realm: "example.org".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    client
}

/// Sends `message(i)` for i in 0..30 through `relay` to the echo `peer` and checks each
/// echo. The first send installs a permission; the client binds a channel in the
/// background, so later packets take the ChannelData path.
pub async fn webrtc_echo_through(
    relay: &dyn Conn,
    peer: SocketAddr,
    message: impl Fn(u32) -> String,
) {
    let mut buf = vec![0u8; 1500];
    for i in 0..30u32 {
        let msg = message(i);
        relay.send_to(msg.as_bytes(), peer).await.expect("send");
        match tokio::time::timeout(Duration::from_secs(2), relay.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                assert_eq!(from, peer);
                assert_eq!(&buf[..n], msg.as_bytes(), "packet {i}");
            }
            other => panic!("no echo for packet {i}: {other:?}"),
        }
        // Pacing like a media stream (not a wait for an event), so that the channel the
        // client binds in the background carries the later packets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
