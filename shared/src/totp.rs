//! TOTP (RFC 6238) for auto-recovery's two-step login: SHA1, SHA256 or SHA512, 6 or 8 digits, a 30 s step,
//! at a time the caller gives (chainkeeper's clock). Secrets come as base32 or as an `otpauth://` URI.
//!
//! Written out (forty lines over `hmac`, `sha1`, `sha2`) rather than taken from `totp-rs`: that crate refuses
//! secrets shorter than 128 bits unless told not to check, and authenticator apps commonly hand out 80-bit ones.

use hmac::{Hmac, Mac};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// A TOTP generator. `Debug` never shows the secret.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Totp {
    secret: Vec<u8>,
    pub algorithm: Algorithm,
    pub digits: u32,
    pub period_s: u64,
}

impl std::fmt::Debug for Totp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Totp({:?}, {} digits, {} s)", self.algorithm, self.digits, self.period_s)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the TOTP secret is not valid: {0}")]
pub struct InvalidTotp(&'static str);

impl Totp {
    pub fn new(secret: Vec<u8>, algorithm: Algorithm, digits: u32, period_s: u64) -> Result<Self, InvalidTotp> {
        if secret.is_empty() {
            return Err(InvalidTotp("empty secret"));
        }
        if !(6..=8).contains(&digits) {
            return Err(InvalidTotp("digits must be 6, 7 or 8"));
        }
        if period_s == 0 {
            return Err(InvalidTotp("period must be positive"));
        }
        Ok(Self { secret, algorithm, digits, period_s })
    }

    /// A base32 secret (spaces and case ignored) or an `otpauth://totp/…?secret=…&algorithm=…&digits=…&period=…` URI.
    pub fn parse(text: &str) -> Result<Self, InvalidTotp> {
        let text = text.trim();
        if text.to_ascii_lowercase().starts_with("otpauth://") {
            let url = url::Url::parse(text).map_err(|_| InvalidTotp("not a valid otpauth URI"))?;
            if url.host_str() != Some("totp") {
                return Err(InvalidTotp("only otpauth://totp/ URIs are supported"));
            }
            let mut secret = None;
            let (mut algorithm, mut digits, mut period) = (Algorithm::Sha1, 6, 30);
            for (k, v) in url.query_pairs() {
                match k.to_ascii_lowercase().as_str() {
                    "secret" => secret = Some(base32_decode(&v).ok_or(InvalidTotp("secret is not base32"))?),
                    "algorithm" => {
                        algorithm = match v.to_ascii_uppercase().as_str() {
                            "SHA1" => Algorithm::Sha1,
                            "SHA256" => Algorithm::Sha256,
                            "SHA512" => Algorithm::Sha512,
                            _ => return Err(InvalidTotp("algorithm must be SHA1, SHA256 or SHA512")),
                        }
                    }
                    "digits" => digits = v.parse().map_err(|_| InvalidTotp("digits is not a number"))?,
                    "period" => period = v.parse().map_err(|_| InvalidTotp("period is not a number"))?,
                    _ => {}
                }
            }
            return Self::new(secret.ok_or(InvalidTotp("the URI has no secret"))?, algorithm, digits, period);
        }
        Self::new(base32_decode(text).ok_or(InvalidTotp("not base32"))?, Algorithm::Sha1, 6, 30)
    }

    /// The code at `unix_s`.
    pub fn at(&self, unix_s: u64) -> String {
        let counter = (unix_s / self.period_s).to_be_bytes();
        let digest = match self.algorithm {
            Algorithm::Sha1 => mac::<Hmac<sha1::Sha1>>(&self.secret, &counter),
            Algorithm::Sha256 => mac::<Hmac<sha2::Sha256>>(&self.secret, &counter),
            Algorithm::Sha512 => mac::<Hmac<sha2::Sha512>>(&self.secret, &counter),
        };
        let offset = (digest[digest.len() - 1] & 0x0f) as usize;
        let binary =
            u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
        format!("{:0width$}", binary % 10u32.pow(self.digits), width = self.digits as usize)
    }
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// RFC 4648 base32, case-insensitive, spaces, dashes and padding ignored.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in text.chars().filter(|c| !matches!(c, ' ' | '-' | '=')) {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            _ => return None,
        };
        bits = (bits << 5) | v;
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, appendix B: every published vector (8 digits).
    #[test]
    fn rfc_6238_test_vectors() {
        let sha1 = b"12345678901234567890".to_vec();
        let sha256 = b"12345678901234567890123456789012".to_vec();
        let sha512 = b"1234567890123456789012345678901234567890123456789012345678901234".to_vec();
        let vectors: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (t, a, b, c) in vectors {
            assert_eq!(Totp::new(sha1.clone(), Algorithm::Sha1, 8, 30).unwrap().at(t), a, "SHA1 at {t}");
            assert_eq!(Totp::new(sha256.clone(), Algorithm::Sha256, 8, 30).unwrap().at(t), b, "SHA256 at {t}");
            assert_eq!(Totp::new(sha512.clone(), Algorithm::Sha512, 8, 30).unwrap().at(t), c, "SHA512 at {t}");
        }
        assert_eq!(Totp::new(sha1, Algorithm::Sha1, 6, 30).unwrap().at(59), "287082", "6 digits are the low 6");
    }

    #[test]
    fn base32_and_otpauth_secrets() {
        // "12345678901234567890" in base32.
        let t = Totp::parse("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap();
        assert_eq!(t.at(59), "287082");
        let u = Totp::parse("otpauth://totp/Exact:me@example.nl?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Exact&digits=8&algorithm=SHA1&period=30").unwrap();
        assert_eq!(u.at(59), "94287082");
        assert!(Totp::parse("not base32!").is_err());
        assert!(Totp::parse("otpauth://hotp/x?secret=GEZDGNBV").is_err());
        assert!(!format!("{u:?}").contains("GEZD"), "Debug hides the secret");
    }
}
