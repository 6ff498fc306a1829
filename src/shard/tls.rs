//! TLS for stream clients (`turns:`, RFC 8656 §3.1), with rustls and its `ring` provider.
//!
//! Owns: the certificate chain and key from `--cert`/`--pkey` (PEM), their reload without a
//! restart, the rustls server configuration every shard shares (TLS 1.2 and 1.3), and the
//! names coturn writes for a session's protocol and cipher in Redis.
//! Must not: touch sockets or buffers; connections are driven by the stream module.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ProtocolVersion, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why certificates could not be loaded; on a reload the previous ones stay in use.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    #[error("{path}: the key does not fit the certificate or is not supported: {source}")]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// The server's certificate chain and key, shared by every shard; `reload` swaps them for
/// the files' current contents, and handshakes that start afterwards use the new ones.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads the PEM chain (leaf first) and private key (PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificates>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = RwLock::new(Arc::new(read(&provider, cert, key)?));
        Ok(Arc::new(Certificates {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current,
        }))
    }

    /// Reads the files again. On an error the certificate in use stays, so a half-written
    /// file during rotation cannot take TLS down.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(read(&self.provider, &self.cert, &self.key)?);
        // A poisoned lock only means a reader panicked; the value is still whole.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The certificate chain handed out now (leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().cert.clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A server configuration for TLS 1.2 and 1.3 without client authentication, whose
    /// certificate is whatever `self` holds at each handshake.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            // The ring provider supports both versions; failure would be a build mistake.
            .expect("ring provides TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Arc::new(config)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        path: key.to_owned(),
        source,
    })?;
    let key_error = |source| TlsError::Key {
        path: key.to_owned(),
        source,
    };
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(key_error)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(key_error)?;
    Ok(certified)
}

/// A finished session's protocol and cipher suite, named as coturn names them (from the
/// state every rustls connection shares, buffered or not).
pub fn session(conn: &rustls::CommonState) -> crate::turn::TlsSession {
    crate::turn::TlsSession {
        protocol: protocol_name(conn.protocol_version()),
        cipher: cipher_name(conn.negotiated_cipher_suite().map(|s| s.suite())),
    }
}

/// The protocol as coturn writes it after `ssl=` (OpenSSL's `SSL_get_version`).
pub fn protocol_name(version: Option<ProtocolVersion>) -> &'static str {
    match version {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "NONE",
    }
}

/// The cipher suite as coturn writes it after `cipher=` (OpenSSL's names).
pub fn cipher_name(suite: Option<CipherSuite>) -> &'static str {
    use CipherSuite::*;
    match suite {
        Some(TLS13_AES_128_GCM_SHA256) => "TLS_AES_128_GCM_SHA256",
        Some(TLS13_AES_256_GCM_SHA384) => "TLS_AES_256_GCM_SHA384",
        Some(TLS13_CHACHA20_POLY1305_SHA256) => "TLS_CHACHA20_POLY1305_SHA256",
        Some(TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256) => "ECDHE-RSA-AES128-GCM-SHA256",
        Some(TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) => "ECDHE-RSA-AES256-GCM-SHA384",
        Some(TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256) => "ECDHE-RSA-CHACHA20-POLY1305",
        Some(TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256) => "ECDHE-ECDSA-AES128-GCM-SHA256",
        Some(TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384) => "ECDHE-ECDSA-AES256-GCM-SHA384",
        Some(TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256) => "ECDHE-ECDSA-CHACHA20-POLY1305",
        _ => "NONE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tls::{client_config, AnyCertificate};
    use rustls::{ClientConnection, ServerConnection};

    fn make_cert(cert: &Path, key: &Path, name: &str) {
        crate::testing::tls::make_cert(cert, key, name);
    }

    /// A full handshake between a rustls client and `server` in memory; returns the leaf
    /// the client saw and the server's protocol and cipher names.
    fn handshake(
        server: &Arc<ServerConfig>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (CertificateDer<'static>, &'static str, &'static str) {
        let remember = Arc::new(AnyCertificate::remembering());
        let client = client_config(version, remember.clone());
        let mut c =
            ClientConnection::new(Arc::new(client), "turn.test".try_into().unwrap()).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(!s.is_handshaking(), "handshake did not finish");
        let leaf = remember.leaf().unwrap();
        (
            leaf,
            protocol_name(s.protocol_version()),
            cipher_name(s.negotiated_cipher_suite().map(|c| c.suite())),
        )
    }

    #[test]
    fn reload_swaps_the_certificate_for_new_handshakes_and_keeps_it_on_bad_files() {
        let dir = std::env::temp_dir().join(format!("uturn-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        make_cert(&cert, &key, "first");
        let certs = Certificates::load(&cert, &key).unwrap();
        let config = certs.server_config();
        let first = certs.chain()[0].clone();
        let (seen, proto, cipher) = handshake(&config, &rustls::version::TLS13);
        assert_eq!(seen, first);
        assert_eq!(proto, "TLSv1.3");
        assert!(cipher.starts_with("TLS_"), "{cipher}");

        make_cert(&cert, &key, "second");
        certs.reload().unwrap();
        let second = certs.chain()[0].clone();
        assert_ne!(first, second);
        let (seen, proto, cipher) = handshake(&config, &rustls::version::TLS12);
        assert_eq!(
            seen, second,
            "the same ServerConfig hands out the new certificate"
        );
        assert_eq!(proto, "TLSv1.2");
        assert_eq!(cipher, "ECDHE-ECDSA-AES256-GCM-SHA384");

        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(certs.reload().is_err());
        let (seen, _, _) = handshake(&config, &rustls::version::TLS13);
        assert_eq!(seen, second, "a failed reload keeps the certificate in use");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("uturn-tls-mismatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c1, k1, c2, k2) = (
            dir.join("c1"),
            dir.join("k1"),
            dir.join("c2"),
            dir.join("k2"),
        );
        make_cert(&c1, &k1, "one");
        make_cert(&c2, &k2, "two");
        assert!(matches!(
            Certificates::load(&c1, &k2),
            Err(TlsError::Key { .. })
        ));
        assert!(matches!(
            Certificates::load(&k1, &k1),
            Err(TlsError::NoCertificate(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
