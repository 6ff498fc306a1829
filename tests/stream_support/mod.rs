//! A small blocking TURN client over one TCP connection for the stream tests: long-term
//! authentication, Allocate, CreatePermission, ChannelBind, ChannelData padded to 4 bytes
//! (RFC 8656 §12.5), frames read back through uturn's own stream reassembler.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use uturn::stun::framing::Reassembler;
use uturn::stun::{
    self, long_term_key, ChannelData, Class, LongTermKey, Message, MessageBuilder, Method,
};

pub struct TcpTurn {
    pub stream: TcpStream,
    frames: Reassembler,
    pending: std::collections::VecDeque<Vec<u8>>,
    username: String,
    password: String,
    auth: Option<(String, String, LongTermKey)>,
    tid: u64,
}

impl TcpTurn {
    pub fn connect(server: SocketAddr, username: &str, password: &str) -> TcpTurn {
        let stream = TcpStream::connect(server)
            .unwrap_or_else(|e| panic!("connect to uturn over TCP at {server}: {e}"));
        TcpTurn::over(stream, username, password)
    }

    /// The same with a receive buffer of about `bytes` (set before connecting, so the
    /// window the server sees stays that small).
    pub fn connect_small(
        server: SocketAddr,
        username: &str,
        password: &str,
        bytes: usize,
    ) -> TcpTurn {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        socket
            .connect(&server.into())
            .unwrap_or_else(|e| panic!("connect to {server}: {e}"));
        TcpTurn::over(socket.into(), username, password)
    }

    fn over(stream: TcpStream, username: &str, password: &str) -> TcpTurn {
        stream.set_nodelay(true).unwrap();
        TcpTurn {
            stream,
            frames: Reassembler::default(),
            pending: Default::default(),
            username: username.into(),
            password: password.into(),
            auth: None,
            tid: u64::from(std::process::id()) << 20,
        }
    }

    /// The next frame from the server, or `None` after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        while self.pending.is_empty() {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    let pending = &mut self.pending;
                    self.frames
                        .push(&buf[..n], |f| pending.push_back(f.to_vec()))
                        .expect("server sent a bad frame");
                }
                Err(_) => return None,
            }
        }
        self.pending.pop_front()
    }

    /// A request with credentials once challenged; returns the success response's bytes or
    /// the error code.
    pub fn request(
        &mut self,
        method: Method,
        attrs: &dyn Fn(&mut MessageBuilder<'_>),
    ) -> Result<Vec<u8>, u16> {
        for _ in 0..2 {
            self.tid += 1;
            let mut tid = [0u8; 12];
            tid[..8].copy_from_slice(&self.tid.to_le_bytes());
            let mut out = Vec::new();
            {
                let mut b = MessageBuilder::new(&mut out, Class::Request, method, &tid);
                attrs(&mut b);
                if let Some((realm, nonce, key)) = &self.auth {
                    b.add_str(stun::USERNAME, &self.username);
                    b.add_str(stun::REALM, realm);
                    b.add_str(stun::NONCE, nonce);
                    b.add_message_integrity(key);
                }
                b.add_fingerprint();
            }
            self.stream.write_all(&out).unwrap();
            let answer = loop {
                let frame = self.recv(Duration::from_secs(5)).ok_or(0u16)?;
                if Message::parse(&frame).is_ok_and(|m| *m.transaction_id() == tid) {
                    break frame;
                }
            };
            let msg = Message::parse(&answer).unwrap();
            if msg.class() == Class::Success {
                return Ok(answer);
            }
            let code = msg.error_code().ok().flatten().map_or(0, |(c, _)| c);
            if code == 401 || code == 438 {
                let realm = msg.realm().ok().flatten().unwrap_or_default().to_owned();
                let nonce = msg.nonce().ok().flatten().unwrap_or_default().to_owned();
                let key = long_term_key(&self.username, &realm, &self.password);
                self.auth = Some((realm, nonce, key));
                continue;
            }
            return Err(code);
        }
        Err(401)
    }

    pub fn allocate(&mut self) -> SocketAddr {
        let answer = self
            .request(Method::ALLOCATE, &|b| {
                b.add_requested_transport(stun::TRANSPORT_UDP);
            })
            .expect("Allocate over TCP");
        Message::parse(&answer)
            .unwrap()
            .xor_address(stun::XOR_RELAYED_ADDRESS)
            .unwrap()
            .unwrap()
    }

    pub fn bind(&mut self, channel: u16, peer: SocketAddr) {
        self.request(Method::CHANNEL_BIND, &|b| {
            b.add_channel_number(channel);
            b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
        })
        .expect("ChannelBind over TCP");
    }

    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) {
        let mut out = Vec::new();
        ChannelData::encode(channel, data, true, &mut out);
        self.stream.write_all(&out).unwrap();
    }
}

/// Resident memory of process `pid` in bytes (VmRSS).
pub fn rss(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:") * 1024
}

/// Resident anonymous memory of process `pid` in bytes (RssAnon: heap and mappings, not
/// the pages of the binary).
pub fn rss_anon(pid: u32) -> u64 {
    status_kb(pid, "RssAnon:") * 1024
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A self-signed certificate and key in a fresh directory, made with the openssl tool.
pub fn make_cert(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("uturn-stream-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    uturn::testing::tls::make_cert(&cert, &key, "localhost");
    (cert, key)
}

pub use crate::common::free_tcp_port;

/// Arguments that turn TLS on with a fresh certificate; returns them and the TLS port.
pub fn tls_args(tag: &str) -> (Vec<String>, u16) {
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
