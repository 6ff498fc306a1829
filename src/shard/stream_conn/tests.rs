use super::records::TLS_RECORD_MAX;
use super::*;
use crate::shard::tls::Certificates;
use crate::stun::{Class, MessageBuilder, Method};
use crate::testing::tls::{client_config, AnyCertificate};
use crate::turn::Transport;
use rustls::ClientConnection;
use std::sync::Arc;

/// A server connection (its sends left queued, as on the ring) on a real loopback
/// socket, and a rustls client talking to it in memory through `Input::Received`.
struct Pair {
    conn: Connection,
    client: ClientConnection,
    /// The socket's other end: what `close` writes arrives here.
    peer: std::net::TcpStream,
    buf: Vec<u8>,
}

fn pair(tag: &str, version: &'static rustls::SupportedProtocolVersion) -> Pair {
    let dir = std::env::temp_dir().join(format!("uturn-conn-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    crate::testing::tls::make_cert(&cert, &key, "localhost");
    let config = Certificates::load(&cert, &key).unwrap().server_config();
    let _ = std::fs::remove_dir_all(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (socket, client_addr) = listener.accept().unwrap();
    socket.set_nonblocking(true).unwrap();
    let tuple = FiveTuple {
        client: client_addr,
        server: socket.local_addr().unwrap(),
        transport: Transport::Tls,
    };
    let tls = Box::new(UnbufferedServerConnection::new(config).unwrap());
    let mut conn = Connection::new(
        TcpStream::from_std(socket),
        tuple,
        Some(tls),
        4096,
        64 * 1024,
        Instant::now(),
    );
    conn.ring_sends = true;
    let client_config = client_config(version, Arc::new(AnyCertificate::new()));
    let client =
        ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap()).unwrap();
    Pair {
        conn,
        client,
        peer,
        buf: vec![0; 64 * 1024],
    }
}

type Frames = Vec<(Vec<u8>, Option<TlsSession>)>;

impl Pair {
    /// The records the client has ready.
    fn client_records(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// Hands `wire` to the server in pieces of `piece` bytes; the frames it delivers.
    fn server_reads(&mut self, wire: &[u8], piece: usize) -> Result<Frames, Closed> {
        let mut frames = Vec::new();
        for bytes in wire.chunks(piece.max(1)) {
            let input = Input::Received(bytes);
            self.conn
                .read(&mut self.buf, input, Instant::now(), |f, s| {
                    frames.push((f.to_vec(), s))
                })?;
        }
        Ok(frames)
    }

    /// What the server queued, handed to the client; the plaintext it reads.
    fn client_reads(&mut self) -> Result<Vec<u8>, rustls::Error> {
        let out = self.conn.out.split();
        let mut wire = &out[..];
        while !wire.is_empty() {
            self.client.read_tls(&mut wire).unwrap();
            self.client.process_new_packets()?;
        }
        let mut plain = Vec::new();
        let _ = self.client.reader().read_to_end(&mut plain);
        Ok(plain)
    }

    fn handshake(&mut self) {
        for _ in 0..10 {
            let wire = self.client_records();
            assert_eq!(self.server_reads(&wire, usize::MAX).unwrap(), vec![]);
            self.client_reads().unwrap();
            if !self.client.is_handshaking() && !self.conn.handshaking() {
                return;
            }
        }
        panic!("the handshake did not finish");
    }
}

fn binding_request(tid: u8) -> Vec<u8> {
    let mut out = Vec::new();
    MessageBuilder::new(&mut out, Class::Request, Method::BINDING, &[tid; 12]).add_fingerprint();
    out
}

/// Record lengths in `wire` (whole records only).
fn records(wire: &[u8]) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut rest = wire;
    while rest.len() >= 5 {
        let len = 5 + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        lens.push(len);
        rest = &rest[len.min(rest.len())..];
    }
    lens
}

#[test]
fn frames_cross_tls_both_ways_whatever_the_cuts() {
    for (version, name) in [
        (&rustls::version::TLS13, "TLSv1.3"),
        (&rustls::version::TLS12, "TLSv1.2"),
    ] {
        let mut p = pair("frames", version);
        p.handshake();
        // Two frames, the first cut across two records, the wire cut every 7 bytes.
        let (a, b) = (binding_request(1), binding_request(2));
        p.client.writer().write_all(&a[..10]).unwrap();
        p.client.writer().write_all(&a[10..]).unwrap();
        p.client.writer().write_all(&b).unwrap();
        let wire = p.client_records();
        let frames = p.server_reads(&wire, 7).unwrap();
        let got: Vec<_> = frames.iter().map(|(f, _)| f.clone()).collect();
        assert_eq!(got, vec![a.clone(), b.clone()], "{name}");
        let session = frames[0].1.expect("the session comes with the frames");
        assert_eq!(session.protocol, name);
        assert!(p.conn.incoming.is_empty());
        // A record not yet whole stays, through the quiet sweep too; once whole, the
        // buffer goes at the next one.
        p.client.writer().write_all(&a).unwrap();
        let wire = p.client_records();
        assert_eq!(
            p.server_reads(&wire[..wire.len() - 3], 1024).unwrap(),
            vec![]
        );
        p.conn.shrink();
        assert_eq!(p.conn.incoming.len(), wire.len() - 3);
        let frames = p.server_reads(&wire[wire.len() - 3..], 1024).unwrap();
        assert_eq!(frames.len(), 1);
        p.conn.shrink();
        assert_eq!(
            p.conn.incoming.capacity(),
            0,
            "an idle connection holds no record"
        );
        // Server to client: one record per frame, straight into the send queue.
        assert_eq!(p.conn.send(&a), Ok(Queued::Yes));
        assert_eq!(p.conn.send(&b), Ok(Queued::Yes));
        assert_eq!(records(&p.conn.out).len(), 2);
        assert_eq!(p.client_reads().unwrap(), [a, b].concat(), "{name}");
    }
}

#[test]
fn a_key_update_from_the_client_is_answered_and_both_ways_go_on() {
    let mut p = pair("keyupdate", &rustls::version::TLS13);
    p.handshake();
    // The client's KeyUpdate asks the server to update its keys too.
    p.client.refresh_traffic_keys().unwrap();
    let a = binding_request(3);
    p.client.writer().write_all(&a).unwrap();
    let wire = p.client_records();
    let frames = p.server_reads(&wire, usize::MAX).unwrap();
    assert_eq!(frames.len(), 1, "read with the client's new keys");
    assert_eq!(frames[0].0, a);
    // The server's KeyUpdate goes ahead of its next record, which uses the new keys:
    // the client, having switched on the KeyUpdate, can read it.
    assert_eq!(p.conn.send(&a), Ok(Queued::Yes));
    assert_eq!(records(&p.conn.out).len(), 2, "KeyUpdate, then the frame");
    assert_eq!(p.client_reads().unwrap(), a);
    assert_eq!(p.conn.send(&a), Ok(Queued::Yes));
    assert_eq!(records(&p.conn.out).len(), 1);
    assert_eq!(p.client_reads().unwrap(), a);
}

#[test]
fn close_notify_ends_the_connection_both_ways() {
    let mut p = pair("close", &rustls::version::TLS13);
    p.handshake();
    let a = binding_request(4);
    p.client.writer().write_all(&a).unwrap();
    p.client.send_close_notify();
    let wire = p.client_records();
    let mut frames = Vec::new();
    let result = p.conn.read(
        &mut p.buf,
        Input::Received(&wire),
        Instant::now(),
        |f, _| frames.push(f.to_vec()),
    );
    assert_eq!(result, Err(Closed::Peer));
    assert_eq!(frames, vec![a.clone()], "what came before the end is read");
    // An answer may still leave, then the server's close_notify.
    assert_eq!(p.conn.send(&a), Ok(Queued::Yes));
    assert_eq!(p.client_reads().unwrap(), a);
    p.conn.close();
    let mut wire = Vec::new();
    p.peer
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    p.peer.read_to_end(&mut wire).unwrap();
    p.client.read_tls(&mut &wire[..]).unwrap();
    let state = p.client.process_new_packets().unwrap();
    assert!(state.peer_has_closed(), "the server's close_notify arrived");
}

#[test]
fn bad_records_end_the_connection_with_an_alert() {
    // Not TLS at all.
    let mut p = pair("garbage", &rustls::version::TLS13);
    assert_eq!(
        p.server_reads(b"GET / HTTP/1.1\r\n\r\n", usize::MAX),
        Err(Closed::Tls)
    );
    // A record that does not decrypt, after the handshake.
    let mut p = pair("badrecord", &rustls::version::TLS13);
    p.handshake();
    let mut wire = vec![23, 3, 3, 0, 40];
    wire.extend_from_slice(&[0x42; 40]);
    assert_eq!(p.server_reads(&wire, usize::MAX), Err(Closed::Tls));
    let alert = p.conn.out.split();
    assert!(!alert.is_empty(), "an alert for the client");
    p.client.read_tls(&mut &alert[..]).unwrap();
    assert!(
        p.client.process_new_packets().is_err(),
        "the client sees it"
    );
}

#[test]
fn unprocessed_bytes_are_bounded_to_two_records() {
    // A ClientHello announced at 60,000 bytes, sent in full records: rustls would
    // gather up to 64 KiB of it; the connection refuses past two records' worth.
    let mut p = pair("bound", &rustls::version::TLS13);
    let mut wire = Vec::new();
    let mut body = vec![0u8; 60_000 + 4];
    body[..4].copy_from_slice(&[1, 0x00, 0xea, 0x60]);
    for chunk in body.chunks(16 * 1024) {
        wire.extend_from_slice(&[22, 3, 1]);
        wire.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        wire.extend_from_slice(chunk);
    }
    let mut fed = 0;
    for piece in wire.chunks(4096) {
        fed += piece.len();
        let input = Input::Received(piece);
        let result = p.conn.read(&mut p.buf, input, Instant::now(), |_, _| {});
        assert!(p.conn.incoming.len() <= 2 * TLS_RECORD_MAX);
        if result.is_err() {
            assert_eq!(result, Err(Closed::Tls));
            break;
        }
    }
    // Refused on the bound, not on the message once whole.
    assert!(
        fed <= 2 * TLS_RECORD_MAX + 4096,
        "refused after {fed} bytes"
    );
}
