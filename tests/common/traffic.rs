//! In-process traffic for limit and flood tests: an echo (or counting) UDP peer on
//! loopback, authenticated relaying clients, ChannelData round trips, and raw STUN requests
//! built by hand (for floods and pipelined Allocates the blocking client cannot make).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uturn::client::{Client, Incoming};
use uturn::stun::{self, Class, Message, MessageBuilder, Method};

/// An in-process UDP peer on loopback that echoes (or only counts) what it receives.
pub struct EchoPeer {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoPeer {
    pub fn start(echo: bool) -> EchoPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    r.fetch_add(1, Ordering::Relaxed);
                    if echo {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            }
        });
        EchoPeer {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One ChannelData round trip through an echo peer; true when the same payload came back.
pub fn round_trip(client: &mut Client, channel: u16, seq: u64, timeout: Duration) -> bool {
    let payload = seq.to_be_bytes();
    client.send_channel_data(channel, &payload).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match client.recv(left) {
            Ok(Incoming::ChannelData { channel: c, data }) if c == channel && data == payload => {
                return true
            }
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// An authenticated client with channel 0x4000 bound to `peer`.
pub fn relaying_client(server: SocketAddr, peer: SocketAddr, lifetime: Option<u32>) -> Client {
    let mut c = Client::connect(server, "alice", "secret").unwrap();
    c.allocate(lifetime).unwrap();
    c.channel_bind(0x4000, peer).unwrap();
    c
}

/// Paced ChannelData round trips on another thread until `stop` is set and at least `min`
/// were made; returns (round trips, lost).
pub fn relay_in_background(
    mut client: Client,
    min: u64,
    pace: Duration,
    refresh_every: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut sent, mut lost) = (0u64, 0u64);
        let mut refreshed = Instant::now();
        while !(stop.load(Ordering::Relaxed) && sent >= min) {
            if let Some(every) = refresh_every {
                if refreshed.elapsed() >= every {
                    client
                        .refresh(client.lifetime.unwrap_or(600))
                        .expect("refresh");
                    refreshed = Instant::now();
                }
            }
            if !round_trip(&mut client, 0x4000, sent, Duration::from_secs(2)) {
                lost += 1;
            }
            sent += 1;
            // Pacing of the round trips (a rate, not a wait for an event).
            std::thread::sleep(pace);
        }
        (sent, lost)
    })
}

pub fn tid(n: u64, salt: u32) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&n.to_be_bytes());
    t[8..].copy_from_slice(&salt.to_be_bytes());
    t
}

/// An Allocate request without credentials (answered 401).
pub fn bare_allocate(t: &[u8; 12]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, t)
        .add_requested_transport(stun::TRANSPORT_UDP);
    out
}

/// The realm and nonce a server hands 127.0.0.1 (nonces are bound to the client IP only).
pub fn challenge(server: SocketAddr) -> (String, String) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&bare_allocate(&tid(1, 1)), server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    let m = Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.error_code().unwrap().map(|e| e.0), Some(401));
    (
        m.realm().unwrap().unwrap().to_owned(),
        m.nonce().unwrap().unwrap().to_owned(),
    )
}

/// An authenticated Allocate request.
pub fn authed_allocate(
    t: &[u8; 12],
    user: &str,
    realm: &str,
    nonce: &str,
    key: &[u8],
    lifetime: Option<u32>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let mut b = MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, t);
    b.add_requested_transport(stun::TRANSPORT_UDP);
    if let Some(l) = lifetime {
        b.add_u32(stun::LIFETIME, l);
    }
    b.add_str(stun::USERNAME, user);
    b.add_str(stun::REALM, realm);
    b.add_str(stun::NONCE, nonce);
    b.add_message_integrity(key);
    b.add_fingerprint();
    out
}

pub fn error_code(buf: &[u8]) -> Option<u16> {
    Message::parse(buf).ok()?.error_code().ok()?.map(|e| e.0)
}
