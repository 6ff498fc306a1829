//! TLS test support, shared by the unit tests of `shard::tls` and the TLS integration
//! tests: self-signed certificates made with the `openssl` tool, and a rustls client that
//! accepts any server certificate and remembers the leaf it was shown.
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

/// Accepts any server certificate (test certificates are self-signed) and remembers the
/// leaf it was shown; signatures are still checked.
#[derive(Debug, Default)]
pub struct Remember(Mutex<Option<CertificateDer<'static>>>);

impl Remember {
    /// The leaf of the last handshake, if there was one.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

impl ServerCertVerifier for Remember {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.clone().into_owned());
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

/// A client configuration for TLS `version` that trusts any server through `remember`.
pub fn client_config(
    version: &'static rustls::SupportedProtocolVersion,
    remember: Arc<Remember>,
) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(remember)
        .with_no_client_auth()
}
