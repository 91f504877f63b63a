//! Signature checks this process has already done, remembered: the warm path of every request checks an API
//! token, and the same few tokens come back thousands of times a second (a BI tool, an ETL job). A hit skips the
//! JWT's decoding and HMAC; it never skips the revocation lookup (that stays a store read on every request, so a
//! revoked token is refused at once in every process, see [`super::api_tokens`]).
//!
//! A remembered check holds only while nothing it rests on has changed: the same signing keys (the very
//! [`SigningKeys`] the `Secrets` port hands out, so a rotation or a reload checks again), the token not expired, and
//! — for a token of the previous key — that key's rotation window still open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::auth::{Claims, TokenRejected, verify_any};
use crate::clock::Millis;
use crate::secrets::SigningKeys;

/// Tokens remembered at most; the map is emptied when full (a flood of distinct tokens costs a re-check, no more).
const MAX_ENTRIES: usize = 4_096;

#[derive(Default)]
pub struct VerifiedTokens {
    entries: Mutex<HashMap<Box<str>, Verified>>,
}

struct Verified {
    keys: Arc<SigningKeys>,
    claims: Arc<Claims>,
    /// The token's expiry, or the end of its key's rotation window if that comes first.
    good_until_ms: Millis,
}

impl VerifiedTokens {
    /// The claims of `token` if one of `keys` signed it and it has not expired — as `auth::verify_any` with
    /// `keys.accepted(now_ms)` says, remembered for the next call.
    pub fn verify(&self, keys: &Arc<SigningKeys>, token: &str, now_ms: Millis) -> Result<Arc<Claims>, TokenRejected> {
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = entries.get(token)
                && Arc::ptr_eq(&v.keys, keys)
                && now_ms < v.good_until_ms
            {
                return Ok(v.claims.clone());
            }
        }
        let (claims, key_until_ms) = match verify_any(&[keys.current.as_slice()], token, now_ms) {
            Ok(claims) => (claims, Millis::MAX),
            Err(TokenRejected::Invalid) => match keys.previous.as_ref().filter(|p| now_ms < p.accepted_until_ms) {
                Some(p) => (verify_any(&[p.key.as_slice()], token, now_ms)?, p.accepted_until_ms),
                None => return Err(TokenRejected::Invalid),
            },
            Err(e) => return Err(e),
        };
        let good_until_ms = claims.exp.saturating_mul(1000).min(key_until_ms);
        let claims = Arc::new(claims);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(token.into(), Verified { keys: keys.clone(), claims: claims.clone(), good_until_ms });
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::issue;
    use crate::secrets::PreviousKey;
    use zeroize::Zeroizing;

    const NOW: Millis = 1_800_000_000_000;

    fn claims(exp_s: i64) -> Claims {
        Claims { sub: "s".into(), org: None, scopes: vec!["admin".into()], exp: exp_s, iat: 0, jti: "j".into() }
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_forged_one_is_never_remembered() {
        let keys = Arc::new(SigningKeys::single(&[7; 32]));
        let cache = VerifiedTokens::default();
        let token = issue(&keys.current, &claims(NOW / 1000 + 60)).unwrap();
        assert_eq!(cache.verify(&keys, &token, NOW).unwrap().jti, "j");
        assert_eq!(cache.verify(&keys, &token, NOW + 1).unwrap().jti, "j", "a hit");
        assert_eq!(cache.verify(&keys, &token, NOW + 60_000).map(|c| c.jti.clone()), Err(TokenRejected::Expired));
        let mut forged = token.clone();
        forged.pop();
        assert_eq!(cache.verify(&keys, &forged, NOW).map(|c| c.jti.clone()), Err(TokenRejected::Invalid));
    }

    #[test]
    fn new_keys_check_again_and_a_previous_keys_token_ends_with_its_window() {
        let old = Arc::new(SigningKeys::single(&[1; 32]));
        let cache = VerifiedTokens::default();
        let token = issue(&old.current, &claims(NOW / 1000 + 3_600)).unwrap();
        assert!(cache.verify(&old, &token, NOW).is_ok());
        // Rotated: the old key is the previous one for ten seconds.
        let rotated = Arc::new(SigningKeys {
            current: Zeroizing::new(vec![2; 32]),
            previous: Some(PreviousKey { key: Zeroizing::new(vec![1; 32]), accepted_until_ms: NOW + 10_000 }),
        });
        assert!(cache.verify(&rotated, &token, NOW + 1).is_ok(), "inside the window");
        assert_eq!(cache.verify(&rotated, &token, NOW + 10_000).map(|c| c.jti.clone()), Err(TokenRejected::Invalid));
        // Rotated again: the first key is gone, whatever was remembered.
        let again = Arc::new(SigningKeys::single(&[3; 32]));
        assert_eq!(cache.verify(&again, &token, NOW + 2).map(|c| c.jti.clone()), Err(TokenRejected::Invalid));
    }
}
