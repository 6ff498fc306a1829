//! TLS test support, shared by the unit tests of `shard::tls`, the TLS integration tests and
//! uturn-bench's TLS clients: self-signed certificates made with the `openssl` tool, and a
//! rustls certificate verifier that accepts any server certificate (optionally remembering
//! the leaf it was shown).
//!
//! Must not: be used by the server itself (it trusts every certificate).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Writes a self-signed P-256 certificate for `CN=name` to `cert` and its key to `key`
/// with the openssl command-line tool (Debian: openssl); panics if that fails.
pub fn make_cert(cert: &Path, key: &Path, name: &str) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .arg("-subj")
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("the openssl tool is needed to make test certificates (Debian: openssl)");
    assert!(out.status.success(), "openssl failed: {out:?}");
}

/// Accepts any server certificate (test and bench certificates are self-signed, on
/// loopback); handshake signatures are still checked, so the key exchange is real. Made
/// with [`AnyCertificate::remembering`], it keeps the leaf it was last shown.
#[derive(Debug, Default)]
pub struct AnyCertificate {
    leaf: Option<Mutex<Option<CertificateDer<'static>>>>,
}

impl AnyCertificate {
    pub fn new() -> AnyCertificate {
        AnyCertificate::default()
    }

    /// One that remembers the leaf of each handshake.
    pub fn remembering() -> AnyCertificate {
        AnyCertificate {
            leaf: Some(Mutex::new(None)),
        }
    }

    /// The leaf of the last handshake, if there was one and it was asked to remember.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        let leaf = self.leaf.as_ref()?;
        leaf.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(leaf) = &self.leaf {
            *leaf.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.clone().into_owned());
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// A client configuration for TLS `version` that trusts any server through `verifier`.
pub fn client_config(
    version: &'static rustls::SupportedProtocolVersion,
    verifier: Arc<AnyCertificate>,
) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// The receiving half of a server TLS connection's record layer, without a socket: bytes
/// pushed in are processed exactly as a ring receive's are (`stream_conn::records`), with
/// the shard's 64 KiB read buffer. For the `tls_records` fuzz target.
pub struct TlsRecords {
    tls: Box<rustls::server::UnbufferedServerConnection>,
    session: Option<crate::turn::TlsSession>,
    frames: crate::stun::framing::Reassembler,
    out: bytes::BytesMut,
    incoming: bytes::BytesMut,
    buf: Vec<u8>,
    /// Frames handed on so far.
    pub frames_out: usize,
}

/// Received TLS bytes a connection may hold unprocessed; at this many it is closed.
pub const TLS_PENDING_MAX: usize = crate::shard::stream_conn::records::TLS_PENDING_MAX;

impl TlsRecords {
    pub fn new(config: Arc<rustls::ServerConfig>) -> TlsRecords {
        TlsRecords {
            tls: Box::new(
                rustls::server::UnbufferedServerConnection::new(config)
                    .expect("a server connection"),
            ),
            session: None,
            frames: crate::stun::framing::Reassembler::new(65_552),
            out: bytes::BytesMut::new(),
            incoming: bytes::BytesMut::new(),
            buf: vec![0; 64 * 1024],
            frames_out: 0,
        }
    }

    /// Takes `bytes` as a receive; `false` once the connection would be closed.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        let mut records = crate::shard::stream_conn::records::Records {
            tls: &mut self.tls,
            session: &mut self.session,
            frames: &mut self.frames,
            out: &mut self.out,
        };
        let mut count = 0;
        let result = crate::shard::stream_conn::records::received_tls(
            &mut records,
            &mut self.incoming,
            bytes,
            &mut self.buf,
            &mut |_: &[u8], _| count += 1,
        );
        self.frames_out += count;
        result.is_ok()
    }

    /// Received bytes held unprocessed (a record not yet whole).
    pub fn pending(&self) -> usize {
        self.incoming.len()
    }

    /// The handshake finished.
    pub fn established(&self) -> bool {
        !self.tls.is_handshaking()
    }

    /// Bytes the server has written in answer (handshake records, alerts).
    pub fn written(&self) -> usize {
        self.out.len()
    }
}
