//! RFC 4226 HOTP / RFC 6238 TOTP (HMAC-SHA1, 30 s step) and RFC 4648 base32.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// TOTP time step in seconds.
pub const STEP_S: i64 = 30;

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Decodes RFC 4648 base32 (case-insensitive; spaces, dashes and `=` padding ignored).
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buf: u64 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        if matches!(c, b' ' | b'-' | b'=') {
            continue;
        }
        let c = c.to_ascii_uppercase();
        let v = ALPHABET.iter().position(|&a| a == c)? as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1u64 << bits) - 1;
        }
    }
    Some(out)
}

/// Encodes RFC 4648 base32 without padding.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::new();
    let mut buf: u64 = 0;
    let mut bits = 0u32;
    for &b in data {
        buf = (buf << 8) | b as u64;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
        buf &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// RFC 4226 HOTP value for `counter`, zero-padded to `digits` digits.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h[h.len() - 1] & 0x0f) as usize;
    let bin =
        ((h[off] as u32 & 0x7f) << 24) | ((h[off + 1] as u32) << 16) | ((h[off + 2] as u32) << 8) | (h[off + 3] as u32);
    let modulo = 10u64.pow(digits);
    format!("{:0width$}", bin as u64 % modulo, width = digits as usize)
}

/// RFC 6238 TOTP (SHA1, 30 s step) at `unix_s`.
pub fn totp(secret: &[u8], unix_s: i64, digits: u32) -> String {
    hotp(secret, unix_s.div_euclid(STEP_S) as u64, digits)
}

/// True when `code` is the 6-digit TOTP of `secret` at `unix_s`, or one step before or after.
pub fn verify(secret: &[u8], unix_s: i64, code: &str) -> bool {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    (-1..=1).any(|k| totp(secret, unix_s + k * STEP_S, 6) == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        let secret = b"12345678901234567890";
        assert_eq!(totp(secret, 59, 8), "94287082");
        assert_eq!(totp(secret, 1111111109, 8), "07081804");
        assert_eq!(totp(secret, 1234567890, 8), "89005924");
        assert_eq!(totp(secret, 20000000000, 8), "65353130");
        assert_eq!(totp(secret, 59, 6), "287082");
    }

    #[test]
    fn base32_roundtrip() {
        let enc = base32_encode(b"12345678901234567890");
        assert_eq!(enc, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(base32_decode(&enc).unwrap(), b"12345678901234567890");
        assert_eq!(base32_decode("gezd gnbv").unwrap(), base32_decode("GEZDGNBV").unwrap());
        assert!(base32_decode("not base32!").is_none());
    }

    #[test]
    fn verify_window() {
        let s = b"12345678901234567890";
        let t = 1_700_000_000;
        assert!(verify(s, t, &totp(s, t, 6)));
        assert!(verify(s, t, &totp(s, t - 30, 6)));
        assert!(verify(s, t, &totp(s, t + 30, 6)));
        assert!(!verify(s, t, &totp(s, t - 90, 6)));
        assert!(!verify(s, t, "12345"));
    }
}
