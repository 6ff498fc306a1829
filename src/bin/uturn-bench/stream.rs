//! TURN over TCP and TLS for the load generator: one connection per allocation, set up with
//! blocking requests (long-term authentication, Allocate, ChannelBind or CreatePermission),
//! or with the null forwarder's `HELLO` line, then handed to the stream load
//! (`stream_load`) as a non-blocking connection.
//!
//! Owns: the client side of a stream connection (TLS client configuration, framing of what
//! the server sends, a bounded queue of what could not be written yet). Must not: verify a
//! server's certificate unless given a CA (these are loopback benches against self-signed
//! certificates), or grow a connection's queue without bound.

use crate::load::{set_up_in_parallel, Mode, Spec, STAMP};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uturn::stun::framing::Reassembler;
use uturn::stun::{
    self, long_term_key, ChannelData, Class, LongTermKey, Message, MessageBuilder, Method,
};
use uturn::testing::tls::AnyCertificate;

/// Bytes a connection may hold that the socket did not take yet; a message that does not
/// fit is dropped (and so counted as lost), as a full UDP socket buffer drops a datagram.
pub const QUEUE_LIMIT: usize = 256 * 1024;

/// The client transport of the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// How a TLS client trusts the server.
#[derive(Clone, Debug)]
pub struct TlsTrust {
    /// PEM CA certificates; `None` accepts any certificate (loopback benches only).
    pub ca: Option<PathBuf>,
    /// The name the certificate must carry when a CA is given.
    pub name: String,
}

/// One allocation's connection, non-blocking, after setup.
pub struct Conn {
    pub tcp: mio::net::TcpStream,
    pub tls: Option<ClientConnection>,
    pub frames: Reassembler,
    /// Plaintext not yet taken by the socket (or by rustls).
    pub queue: Vec<u8>,
    /// The frame to send, padded to 4 bytes, with the stamp at `stamp_at`.
    pub template: Vec<u8>,
    pub stamp_at: usize,
}

impl Conn {
    /// Queues one frame unless the queue is full; returns whether it was queued.
    pub fn queue(&mut self, frame: &[u8]) -> bool {
        if self.queue.len() + frame.len() > QUEUE_LIMIT {
            return false;
        }
        self.queue.extend_from_slice(frame);
        true
    }

    /// Writes what the socket takes now. An error other than would-block means the
    /// connection is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        write_queue(&mut self.tcp, self.tls.as_deref_mut(), &mut self.queue)
    }

    /// Reads what is there and calls `frame` for each whole frame; `Ok(false)` at the end
    /// of the stream.
    pub fn read(&mut self, buf: &mut [u8], mut frame: impl FnMut(&[u8])) -> io::Result<bool> {
        let bad = |e: stun::framing::FramingError| io::Error::new(io::ErrorKind::InvalidData, e);
        loop {
            match &mut self.tls {
                None => match self.tcp.read(buf) {
                    Ok(0) => return Ok(false),
                    Ok(n) => self.frames.push(&buf[..n], &mut frame).map_err(bad)?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                },
                Some(tls) => {
                    let mut left = match read_records(tls, &mut self.tcp)? {
                        TlsRead::End => return Ok(false),
                        TlsRead::WouldBlock => return Ok(true),
                        TlsRead::Plain(n) => n,
                    };
                    while left > 0 {
                        let n = tls.reader().read(buf)?;
                        if n == 0 {
                            break;
                        }
                        left = left.saturating_sub(n);
                        self.frames.push(&buf[..n], &mut frame).map_err(bad)?;
                    }
                }
            }
        }
    }
}

/// The TLS client configuration for `trust`.
pub fn tls_config(trust: &TlsTrust) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match &trust.ca {
        None => builder
            .dangerous()
            // The benches run against self-signed certificates on loopback.
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new()))
            .with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in ca_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

/// A blocking connection during setup.
enum Setup {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Setup {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Setup::Tcp(s) => s,
            Setup::Tls(s) => s.as_mut(),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The setup side of one connection: requests with long-term credentials.
struct Client {
    io: Setup,
    frames: Reassembler,
    pending: std::collections::VecDeque<Vec<u8>>,
    user: String,
    password: String,
    auth: Option<(String, String, LongTermKey)>,
    tid: u64,
}

impl Client {
    /// The null forwarder's set-up (`forward_stream`): `HELLO <peer>` and its `OK <relay>`
    /// line, read a byte at a time so nothing after the line is taken from the frames.
    fn hello(&mut self, peer: SocketAddr) -> Result<SocketAddr, String> {
        let io = self.io.io();
        io.write_all(format!("HELLO {peer}\n").as_bytes())
            .and_then(|()| io.flush())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 256 {
            match io.read(&mut byte) {
                Ok(0) => return Err("the forwarder closed the connection".into()),
                Ok(_) if byte[0] == b'\n' => {
                    return std::str::from_utf8(&line)
                        .ok()
                        .and_then(|s| s.strip_prefix("OK "))
                        .and_then(|s| s.trim().parse().ok())
                        .ok_or_else(|| {
                            format!("not OK <address>: {:?}", String::from_utf8_lossy(&line))
                        });
                }
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Err("no line from the forwarder".into())
    }

    fn frame(&mut self) -> Result<Vec<u8>, String> {
        let mut buf = [0u8; 4096];
        while self.pending.is_empty() {
            let n = self
                .io
                .io()
                .read(&mut buf)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            let pending = &mut self.pending;
            self.frames
                .push(&buf[..n], |f| pending.push_back(f.to_vec()))
                .map_err(|e| format!("framing: {e}"))?;
        }
        Ok(self.pending.pop_front().expect("not empty"))
    }

    fn request(
        &mut self,
        method: Method,
        attrs: &dyn Fn(&mut MessageBuilder<'_>),
    ) -> Result<Vec<u8>, String> {
        for _ in 0..3 {
            self.tid = self.tid.wrapping_add(1);
            let mut tid = [0u8; 12];
            tid[..8].copy_from_slice(&self.tid.to_le_bytes());
            let mut out = Vec::with_capacity(256);
            {
                let mut b = MessageBuilder::new(&mut out, Class::Request, method, &tid);
                attrs(&mut b);
                if let Some((realm, nonce, key)) = &self.auth {
                    b.add_str(stun::USERNAME, &self.user);
                    b.add_str(stun::REALM, realm);
                    b.add_str(stun::NONCE, nonce);
                    b.add_message_integrity(key);
                }
                b.add_fingerprint();
            }
            let io = self.io.io();
            io.write_all(&out)
                .and_then(|()| io.flush())
                .map_err(|e| format!("write: {e}"))?;
            let answer = loop {
                let frame = self.frame()?;
                if Message::parse(&frame).is_ok_and(|m| *m.transaction_id() == tid) {
                    break frame;
                }
            };
            let msg = Message::parse(&answer).map_err(|e| format!("{e:?}"))?;
            if msg.class() == Class::Success {
                return Ok(answer);
            }
            let (code, reason) = msg
                .error_code()
                .ok()
                .flatten()
                .map_or((0, String::new()), |(c, r)| (c, r.to_owned()));
            if code == 401 || code == 438 {
                if let (Some(realm), Some(nonce)) = (
                    msg.realm().ok().flatten().map(str::to_owned),
                    msg.nonce().ok().flatten().map(str::to_owned),
                ) {
                    let key = long_term_key(&self.user, &realm, &self.password);
                    self.auth = Some((realm, nonce, key));
                    continue;
                }
            }
            return Err(format!("error response {code} {reason}"));
        }
        Err("still challenged after answering".into())
    }
}

/// Connects from `local` (port 0) to the server, over TLS when `tls` is given.
fn connect(
    local: SocketAddr,
    server: SocketAddr,
    tls: Option<(&Arc<ClientConfig>, &str)>,
) -> Result<Setup, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(|e| e.to_string())?;
    s.bind(&local.into())
        .map_err(|e| format!("bind {local}: {e}"))?;
    s.connect_timeout(&server.into(), Duration::from_secs(5))
        .map_err(|e| format!("connect {server}: {e}"))?;
    let tcp: TcpStream = s.into();
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    Ok(match tls {
        None => Setup::Tcp(tcp),
        Some((config, name)) => {
            let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
            let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
            Setup::Tls(Box::new(StreamOwned::new(conn, tcp)))
        }
    })
}

/// Sets allocation `i` up over a new connection toward `peer`.
pub fn setup_one(
    spec: &Spec,
    i: usize,
    peer: SocketAddr,
    tls: Option<(&Arc<ClientConfig>, &str)>,
) -> Result<Conn, String> {
    let (user, password) = crate::load::credentials(&spec.credentials, i);
    let ip = spec.client_ips[i % spec.client_ips.len()];
    let mut client = Client {
        io: connect(SocketAddr::new(ip, 0), spec.server, tls)?,
        frames: Reassembler::default(),
        pending: Default::default(),
        user,
        password,
        auth: None,
        tid: (u64::from(std::process::id()) << 32) | ((i as u64) << 8),
    };
    if spec.mode == Mode::Null {
        client.hello(peer).map_err(|e| format!("hello: {e}"))?;
    } else {
        client
            .request(Method::ALLOCATE, &|b| {
                b.add_requested_transport(stun::TRANSPORT_UDP);
            })
            .map_err(|e| format!("allocate: {e}"))?;
    }
    let mut template = Vec::with_capacity(spec.size + 64);
    let payload = vec![0x5au8; spec.size];
    let stamp_at = match spec.mode {
        Mode::Null => {
            ChannelData::encode(CHANNEL, &payload, true, &mut template);
            4
        }
        Mode::SendIndication => {
            client
                .request(Method::CREATE_PERMISSION, &|b| {
                    b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
                })
                .map_err(|e| format!("permission: {e}"))?;
            MessageBuilder::new(&mut template, Class::Indication, Method::SEND, &[9; 12])
                .add_xor_address(stun::XOR_PEER_ADDRESS, peer)
                .add(stun::DATA, &payload);
            let msg = Message::parse(&template).map_err(|e| format!("{e:?}"))?;
            msg.data().ok_or("no DATA")?.value_offset()
        }
        _ => {
            client
                .request(Method::CHANNEL_BIND, &|b| {
                    b.add_channel_number(CHANNEL);
                    b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
                })
                .map_err(|e| format!("channel bind: {e}"))?;
            ChannelData::encode(CHANNEL, &payload, true, &mut template);
            4
        }
    };
    template[stamp_at..stamp_at + 4].copy_from_slice(&(i as u32).to_be_bytes());
    debug_assert!(template.len() >= stamp_at + STAMP);
    let (tcp, tls) = match client.io {
        Setup::Tcp(s) => (s, None),
        Setup::Tls(s) => {
            let StreamOwned { conn, sock } = *s;
            (sock, Some(conn))
        }
    };
    tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(Conn {
        tcp: mio::net::TcpStream::from_std(tcp),
        tls,
        frames: client.frames,
        queue: Vec::new(),
        template,
        stamp_at,
    })
}

/// The channel every allocation binds (the UDP load's too).
pub const CHANNEL: u16 = 0x4000;

/// Sets every allocation up over its own connection, `setup_threads` at a time; returns
/// them in allocation order and the time taken.
pub fn setup(
    spec: &Spec,
    peers: &[SocketAddr],
    transport: Transport,
    trust: &TlsTrust,
) -> Result<(Vec<Conn>, Duration), String> {
    let config = match transport {
        Transport::Tls => Some(tls_config(trust)?),
        _ => None,
    };
    let tls = config.as_ref().map(|c| (c, trust.name.as_str()));
    set_up_in_parallel(spec, |i| setup_one(spec, i, peers[i % peers.len()], tls))
}

/// What one read of TLS records from a socket gave.
pub enum TlsRead {
    /// The records were processed: this many plaintext bytes wait in the session.
    Plain(usize),
    /// The peer closed the connection.
    End,
    /// Nothing to read now.
    WouldBlock,
}

/// Reads TLS records from `tcp` once and processes them; the plaintext waits in `tls`
/// (`reader()`). Serves both ends: the load's clients and the null stream forwarder.
pub fn read_records<D>(
    tls: &mut rustls::ConnectionCommon<D>,
    tcp: &mut mio::net::TcpStream,
) -> io::Result<TlsRead> {
    loop {
        match tls.read_tls(tcp) {
            Ok(0) => return Ok(TlsRead::End),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(TlsRead::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let state = tls
        .process_new_packets()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(TlsRead::Plain(state.plaintext_bytes_to_read()))
}

/// Writes `queue` to `tcp` (through `tls` when there is a session) as far as the socket
/// takes it; what it does not take stays queued. An error other than would-block means the
/// connection is gone. Serves both ends: the load's clients and the null stream forwarder.
pub fn write_queue<D>(
    tcp: &mut mio::net::TcpStream,
    tls: Option<&mut rustls::ConnectionCommon<D>>,
    queue: &mut Vec<u8>,
) -> io::Result<()> {
    match tls {
        None => {
            let mut done = 0;
            while done < queue.len() {
                match tcp.write(&queue[done..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            queue.drain(..done);
        }
        Some(tls) => loop {
            // rustls takes plaintext up to its own buffer limit; the rest stays queued.
            if !queue.is_empty() {
                let n = tls.writer().write(queue)?;
                queue.drain(..n);
            }
            if !tls.wants_write() {
                break;
            }
            match tls.write_tls(tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        },
    }
    Ok(())
}
