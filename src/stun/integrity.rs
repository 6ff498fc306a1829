//! MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5), MESSAGE-INTEGRITY-SHA256 (§14.6),
//! FINGERPRINT (§14.7) and the long-term credential key (§9.2.2).

/// MD5(username ":" realm ":" password).
pub type LongTermKey = [u8; 16];

/// The long-term credential key (RFC 8489 §9.2.2, MD5 variant).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> LongTermKey {
    let _ = (username, realm, password);
    todo!()
}

/// CRC-32 of `bytes` xored with 0x5354554e.
pub fn fingerprint(bytes: &[u8]) -> u32 {
    let _ = bytes;
    todo!()
}
