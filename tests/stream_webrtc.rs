//! The webrtc-rs `turn` client (unmodified) over TCP: it speaks to any `webrtc_util::Conn`,
//! so a small adapter carries its messages over one TCP connection (each message it sends
//! is one frame, ChannelData already padded to 4; each frame read back is one message).
//! It allocates, installs a permission on its first send, binds a channel in the
//! background, and relays to a UDP echo peer through uturn on both backends.

mod common;
use common::*;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;
use uturn::stun::framing::Reassembler;
use webrtc_util::Conn;

type Io<'a, T> = Pin<Box<dyn Future<Output = webrtc_util::Result<T>> + Send + 'a>>;

/// One TCP connection as the datagram `Conn` the client expects: every `send_to` is a
/// frame, every `recv_from` one frame from the server.
struct TcpConn {
    read: Mutex<(
        OwnedReadHalf,
        Reassembler,
        std::collections::VecDeque<Vec<u8>>,
    )>,
    write: Mutex<OwnedWriteHalf>,
    local: SocketAddr,
    server: SocketAddr,
}

impl TcpConn {
    async fn connect(server: SocketAddr) -> TcpConn {
        let stream = tokio::net::TcpStream::connect(server).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        let (r, w) = stream.into_split();
        TcpConn {
            read: Mutex::new((r, Reassembler::default(), Default::default())),
            write: Mutex::new(w),
            local,
            server,
        }
    }

    async fn frame(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut read = self.read.lock().await;
        let (stream, frames, pending) = &mut *read;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(f) = pending.pop_front() {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                return Ok((n, self.server));
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            frames
                .push(&chunk[..n], |f| pending.push_back(f.to_vec()))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
    }

    async fn write(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.write.lock().await.write_all(buf).await?;
        Ok(buf.len())
    }
}

impl Conn for TcpConn {
    fn connect<'a, 'b>(&'a self, _: SocketAddr) -> Io<'b, ()>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async { Ok(()) })
    }
    fn recv<'a, 'b, 'c>(&'a self, buf: &'b mut [u8]) -> Io<'c, usize>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move { Ok(self.frame(buf).await?.0) })
    }
    fn recv_from<'a, 'b, 'c>(&'a self, buf: &'b mut [u8]) -> Io<'c, (usize, SocketAddr)>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(self.frame(buf))
    }
    fn send<'a, 'b, 'c>(&'a self, buf: &'b [u8]) -> Io<'c, usize>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(self.write(buf))
    }
    fn send_to<'a, 'b, 'c>(&'a self, buf: &'b [u8], _: SocketAddr) -> Io<'c, usize>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(self.write(buf))
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }
    fn close<'a, 'b>(&'a self) -> Io<'b, ()>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            self.write.lock().await.shutdown().await?;
            Ok(())
        })
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

fn webrtc_client_over_tcp(backend: &str) {
    let server = Uturn::start(backend, &["--allow-loopback-peers"]);
    let server_addr = server.addr();
    block_on(async move {
        let peer_addr = webrtc_echo_peer().await;
        let conn = TcpConn::connect(server_addr).await;
        let client = webrtc_turn_client(server_addr, Arc::new(conn)).await;
        let relay = client.allocate().await.expect("allocate over TCP");
        let relay_addr = relay.local_addr().expect("relay addr");
        assert_eq!(relay_addr.ip().to_string(), "127.0.0.1");
        // Lengths 1 to 4 mod 4: ChannelData padding in both directions.
        webrtc_echo_through(&relay, peer_addr, |i| {
            format!("webrtc-rs over tcp {i}{}", "x".repeat(i as usize % 4))
        })
        .await;
        client.close().await.expect("close");
    });
    let mut server = server;
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn webrtc_rs_turn_client_over_tcp_io_uring() {
    webrtc_client_over_tcp("io-uring");
}

#[test]
fn webrtc_rs_turn_client_over_tcp_portable() {
    webrtc_client_over_tcp("portable");
}
