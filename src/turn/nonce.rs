//! Stateless nonces (RFC 8489 §9.2): `<8 hex digits of issue time><16 hex digits of
//! HMAC-SHA1(secret, time || client IP)>`. Checking one costs one HMAC and keeps no state,
//! so unauthenticated clients cannot make the server remember anything.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::net::IpAddr;

pub const NONCE_LEN: usize = 24;

/// Why a nonce was not accepted.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NonceError {
    /// Not one of ours (or for another client IP).
    Invalid,
    /// Ours, but older than the nonce lifetime: 438 Stale Nonce.
    Stale,
}

fn mac(secret: &[u8; 32], issued: u32, ip: IpAddr) -> [u8; 8] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(&issued.to_be_bytes());
    match ip {
        IpAddr::V4(v4) => mac.update(&v4.octets()),
        IpAddr::V6(v6) => mac.update(&v6.octets()),
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A fresh nonce for `ip` issued at `now_sec` (seconds since the server epoch).
pub fn issue(secret: &[u8; 32], now_sec: u64, ip: IpAddr) -> String {
    let issued = now_sec as u32;
    let tag = mac(secret, issued, ip);
    let mut s = String::with_capacity(NONCE_LEN);
    for b in issued.to_be_bytes().iter().chain(tag.iter()) {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (s[2 * i] as char).to_digit(16)?;
        let lo = (s[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(())
}

/// Checks a nonce presented by `ip` at `now_sec`.
pub fn check(
    secret: &[u8; 32],
    nonce: &str,
    now_sec: u64,
    lifetime_sec: u64,
    ip: IpAddr,
) -> Result<(), NonceError> {
    let bytes = nonce.as_bytes();
    if bytes.len() != NONCE_LEN {
        return Err(NonceError::Invalid);
    }
    let mut raw = [0u8; 12];
    unhex(bytes, &mut raw).ok_or(NonceError::Invalid)?;
    let issued = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let expected = mac(secret, issued, ip);
    let mut diff = 0u8;
    for (a, b) in expected.iter().zip(&raw[4..]) {
        diff |= a ^ b;
    }
    if diff != 0 {
        return Err(NonceError::Invalid);
    }
    // Issue times are seconds since the epoch truncated to 32 bits: compare in that space.
    let age = (now_sec as u32).wrapping_sub(issued) as u64;
    if age > lifetime_sec {
        return Err(NonceError::Stale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    #[test]
    fn issue_then_check() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let n = issue(&SECRET, 1000, ip);
        assert_eq!(n.len(), NONCE_LEN);
        assert_eq!(check(&SECRET, &n, 1000, 600, ip), Ok(()));
        assert_eq!(check(&SECRET, &n, 1600, 600, ip), Ok(()));
        assert_eq!(check(&SECRET, &n, 1601, 600, ip), Err(NonceError::Stale));
    }

    #[test]
    fn rejects_forgeries() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let n = issue(&SECRET, 5, ip);
        assert_eq!(check(&SECRET, &n, 5, 600, other), Err(NonceError::Invalid));
        assert_eq!(check(&[8; 32], &n, 5, 600, ip), Err(NonceError::Invalid));
        let mut forged = n.clone().into_bytes();
        forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            check(&SECRET, &forged, 5, 600, ip),
            Err(NonceError::Invalid)
        );
        for bad in ["", "zz", "ééééééééééééé", &"g".repeat(24)] {
            assert_eq!(check(&SECRET, bad, 5, 600, ip), Err(NonceError::Invalid));
        }
    }
}
