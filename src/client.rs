//! Support code, not part of uturn's API: hidden from the documentation and free to change
//! with any release; it is public only so the integration tests, the examples and the
//! `uturn-bench` load generator (separate crates) can reach it.
//!
//! A small blocking TURN client over one UDP socket: long-term authentication (401/438
//! answered once), Allocate, Refresh, CreatePermission, ChannelBind, Send indications and
//! ChannelData. Used by the integration tests and by `uturn-bench` to set allocations up;
//! the bench then moves data on the same socket itself.
//!
//! Owns: one client's transaction state (realm, nonce, key). Must not: be used on a
//! server's hot path.

use crate::stun::{
    self, long_term_key, ChannelData, Class, LongTermKey, Message, MessageBuilder, Method,
    TransactionId,
};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("error response {code} {reason}")]
    Response { code: u16, reason: String },
    #[error("bad response: {0}")]
    Protocol(&'static str),
}

impl ClientError {
    /// The STUN error code, if the server answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Response { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A datagram the client received outside a transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    ChannelData { channel: u16, data: Vec<u8> },
    Data { peer: SocketAddr, data: Vec<u8> },
    Other(Vec<u8>),
}

pub struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<LongTermKey>,
    tid_seed: u64,
    timeout: Duration,
    buf: Vec<u8>,
    /// The relayed address of the allocation, once allocated.
    pub relayed: Option<SocketAddr>,
    /// The server-reflexive address from the last Allocate.
    pub mapped: Option<SocketAddr>,
    /// Lifetime granted by the last Allocate or Refresh.
    pub lifetime: Option<u32>,
}

/// The parts of a response the caller may want, copied out of the datagram.
#[derive(Debug, Clone)]
pub struct Response {
    pub raw: Vec<u8>,
}

impl Response {
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.raw).expect("parsed when received")
    }
}

impl Client {
    /// A client bound to an ephemeral port on the loopback or wildcard address that
    /// reaches `server`.
    pub fn connect(server: SocketAddr, username: &str, password: &str) -> io::Result<Client> {
        let bind: SocketAddr = if server.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else if server.ip().is_loopback() {
            "127.0.0.1:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        Ok(Client::with_socket(
            UdpSocket::bind(bind)?,
            server,
            username,
            password,
        ))
    }

    pub fn with_socket(
        socket: UdpSocket,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Client {
        let tid_seed = rand::random::<u64>() | 1;
        Client {
            socket,
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: None,
            nonce: None,
            key: None,
            tid_seed,
            timeout: Duration::from_secs(2),
            buf: vec![0; 65_536],
            relayed: None,
            mapped: None,
            lifetime: None,
        }
    }

    /// Per-attempt timeout (requests are sent up to three times).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Gives up the client, keeping its socket (and so its allocation's 5-tuple).
    pub fn into_socket(self) -> UdpSocket {
        self.socket
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn next_tid(&mut self) -> TransactionId {
        self.tid_seed ^= self.tid_seed << 13;
        self.tid_seed ^= self.tid_seed >> 7;
        self.tid_seed ^= self.tid_seed << 17;
        let mut tid = [0u8; 12];
        tid[..8].copy_from_slice(&self.tid_seed.to_le_bytes());
        tid[8..].copy_from_slice(&(self.tid_seed >> 32).to_le_bytes()[..4]);
        tid
    }

    /// Sends a request built by `attrs` (credentials and FINGERPRINT are added) and waits
    /// for its answer, answering a 401 or 438 challenge once.
    pub fn request(
        &mut self,
        method: Method,
        attrs: &dyn Fn(&mut MessageBuilder<'_>),
    ) -> Result<Response, ClientError> {
        let mut challenged = false;
        loop {
            let tid = self.next_tid();
            let mut out = Vec::with_capacity(256);
            {
                let mut b = MessageBuilder::new(&mut out, Class::Request, method, &tid);
                attrs(&mut b);
                if let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, &self.key)
                {
                    b.add_str(stun::USERNAME, &self.username);
                    b.add_str(stun::REALM, realm);
                    b.add_str(stun::NONCE, nonce);
                    b.add_message_integrity(key);
                }
                b.add_fingerprint();
            }
            let response = self.transact(&out, &tid)?;
            let msg = response.message();
            match msg.class() {
                Class::Success => return Ok(response),
                Class::Error => {
                    let (code, reason) = msg
                        .error_code()
                        .ok()
                        .flatten()
                        .map(|(c, r)| (c, r.to_owned()))
                        .ok_or(ClientError::Protocol("error response without ERROR-CODE"))?;
                    if (code == 401 || code == 438) && !challenged {
                        challenged = true;
                        let realm = msg.realm().ok().flatten().map(str::to_owned);
                        let nonce = msg.nonce().ok().flatten().map(str::to_owned);
                        if let (Some(realm), Some(nonce)) = (realm, nonce) {
                            self.key = Some(long_term_key(&self.username, &realm, &self.password));
                            self.realm = Some(realm);
                            self.nonce = Some(nonce);
                            continue;
                        }
                    }
                    if code == 438 {
                        if let Some(nonce) = msg.nonce().ok().flatten() {
                            self.nonce = Some(nonce.to_owned());
                        }
                    }
                    return Err(ClientError::Response { code, reason });
                }
                _ => return Err(ClientError::Protocol("unexpected message class")),
            }
        }
    }

    fn transact(&mut self, out: &[u8], tid: &TransactionId) -> Result<Response, ClientError> {
        for _attempt in 0..3 {
            self.socket.send_to(out, self.server)?;
            let deadline = Instant::now() + self.timeout;
            while let Some(n) = self.recv_from_server(deadline)? {
                if let Ok(msg) = Message::parse(&self.buf[..n]) {
                    if msg.transaction_id() == tid {
                        return Ok(Response {
                            raw: self.buf[..n].to_vec(),
                        });
                    }
                }
            }
        }
        Err(ClientError::Timeout(self.timeout * 3))
    }

    /// Allocate a UDP relay; returns the relayed address.
    pub fn allocate(&mut self, lifetime: Option<u32>) -> Result<SocketAddr, ClientError> {
        self.allocate_with(&|b| {
            if let Some(l) = lifetime {
                b.add_u32(stun::LIFETIME, l);
            }
        })
    }

    /// Allocate with extra attributes (EVEN-PORT, RESERVATION-TOKEN, ...).
    pub fn allocate_with(
        &mut self,
        extra: &dyn Fn(&mut MessageBuilder<'_>),
    ) -> Result<SocketAddr, ClientError> {
        let response = self.request(Method::ALLOCATE, &|b| {
            b.add_requested_transport(stun::TRANSPORT_UDP);
            extra(b);
        })?;
        let msg = response.message();
        let relayed = msg
            .xor_address(stun::XOR_RELAYED_ADDRESS)
            .ok()
            .flatten()
            .ok_or(ClientError::Protocol(
                "Allocate success without XOR-RELAYED-ADDRESS",
            ))?;
        self.mapped = msg.xor_address(stun::XOR_MAPPED_ADDRESS).ok().flatten();
        self.lifetime = msg.lifetime().ok().flatten();
        self.relayed = Some(relayed);
        Ok(relayed)
    }

    /// Refresh; returns the granted lifetime (0 deletes the allocation).
    pub fn refresh(&mut self, lifetime: u32) -> Result<u32, ClientError> {
        let response = self.request(Method::REFRESH, &|b| {
            b.add_u32(stun::LIFETIME, lifetime);
        })?;
        let granted = response.message().lifetime().ok().flatten().unwrap_or(0);
        self.lifetime = Some(granted);
        Ok(granted)
    }

    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), ClientError> {
        self.request(Method::CREATE_PERMISSION, &|b| {
            for peer in peers {
                b.add_xor_address(stun::XOR_PEER_ADDRESS, *peer);
            }
        })
        .map(|_| ())
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), ClientError> {
        self.request(Method::CHANNEL_BIND, &|b| {
            b.add_channel_number(channel);
            b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
        })
        .map(|_| ())
    }

    /// A Send indication carrying `data` to `peer`.
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> io::Result<()> {
        let tid = self.next_tid();
        let mut out = Vec::with_capacity(data.len() + 64);
        MessageBuilder::new(&mut out, Class::Indication, Method::SEND, &tid)
            .add_xor_address(stun::XOR_PEER_ADDRESS, peer)
            .add(stun::DATA, data);
        self.socket.send_to(&out, self.server).map(|_| ())
    }

    /// A ChannelData message (UDP: no padding).
    pub fn send_channel_data(&self, channel: u16, data: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(data.len() + 4);
        ChannelData::encode(channel, data, false, &mut out);
        self.socket.send_to(&out, self.server).map(|_| ())
    }

    /// Waits up to `timeout` for a datagram from the server and decodes it.
    pub fn recv(&mut self, timeout: Duration) -> Result<Incoming, ClientError> {
        match self.recv_from_server(Instant::now() + timeout)? {
            Some(n) => Ok(decode_incoming(&self.buf[..n])),
            None => Err(ClientError::Timeout(timeout)),
        }
    }

    /// The next datagram from the server into `self.buf` (its length), or `None` once
    /// `deadline` passes; datagrams from anyone else are skipped.
    fn recv_from_server(&mut self, deadline: Instant) -> Result<Option<usize>, ClientError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, from)) if from == self.server => return Ok(Some(n)),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Decodes a datagram a TURN server sent a client outside a transaction.
pub fn decode_incoming(buf: &[u8]) -> Incoming {
    if let Ok(cd) = ChannelData::parse(buf) {
        return Incoming::ChannelData {
            channel: cd.number,
            data: cd.payload.to_vec(),
        };
    }
    if let Ok(msg) = Message::parse(buf) {
        if msg.class() == Class::Indication && msg.method() == Method::DATA {
            if let (Ok(Some(peer)), Some(data)) =
                (msg.xor_address(stun::XOR_PEER_ADDRESS), msg.data())
            {
                return Incoming::Data {
                    peer,
                    data: data.value.to_vec(),
                };
            }
        }
    }
    Incoming::Other(buf.to_vec())
}
