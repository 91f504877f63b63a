//! API tokens: what they claim, how they are signed and checked, and which scopes allow what.
//!
//! A token is a JWT (HS256, key from the `Secrets` port) naming its subject, its organisation (or none, for a
//! platform token) and its scopes. Scopes come from the API's own resources (the route table, `api::routes`):
//! `GET` needs `<resource>.read` or `<resource>.readwrite`; `POST`/`PUT`/`PATCH`/`DELETE` need
//! `<resource>.readwrite`. The group scope `admin` covers every resource; operators define more groups in
//! the config (`[scope_groups]`). The API's middleware applies these rules to exactly the table that
//! `/openapi.json` publishes; the use case `app::api_tokens` issues, lists and revokes tokens.

use std::collections::BTreeMap;

use axum::http::Method;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::Millis;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    /// The organisation the token is limited to; `None` for a platform token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    pub scopes: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    pub iat: i64,
    /// Token id (for revocation).
    pub jti: String,
}

/// The id of a signing key, carried as `kid` in every token's header: the first 16 hex digits of the key's
/// SHA-256. Derived, never stored: every process that holds the key agrees on its id, and the id gives nothing of
/// the key away.
pub fn key_id(key: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs `claims` with `key`; the header names the key (`kid`).
pub fn issue(key: &[u8], claims: &Claims) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key_id(key));
    Ok(jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key))?)
}

/// Why a token is refused before its revocation is even looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejected {
    #[error("the API token is not valid (bad signature or format)")]
    Invalid,
    #[error("the API token has expired")]
    Expired,
}

/// Checks signature and expiry (against chainkeeper's clock, not the system's).
pub fn verify(key: &[u8], token: &str, now_ms: Millis) -> Result<Claims, TokenRejected> {
    verify_any(&[key], token, now_ms)
}

/// Checks a token against the keys accepted now (during a rotation: the current and the previous one). A token
/// names its key (`kid`): only that key is tried, and a key that is no longer accepted makes it `Invalid`. A
/// token without `kid` (issued before key ids) is tried against each accepted key.
pub fn verify_any(keys: &[&[u8]], token: &str, now_ms: Millis) -> Result<Claims, TokenRejected> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejected::Invalid)?;
    let mut result = Err(TokenRejected::Invalid);
    for key in keys.iter().filter(|k| header.kid.as_ref().is_none_or(|kid| *kid == key_id(k))) {
        result = verify_one(key, token, now_ms);
        if !matches!(result, Err(TokenRejected::Invalid)) {
            break;
        }
    }
    result
}

fn verify_one(key: &[u8], token: &str, now_ms: Millis) -> Result<Claims, TokenRejected> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &validation)
        .map_err(|_| TokenRejected::Invalid)?;
    // Saturating: a signed token with an absurd `exp` must not overflow (found by `auth::fuzz`).
    if data.claims.exp.saturating_mul(1000) <= now_ms {
        return Err(TokenRejected::Expired);
    }
    Ok(data.claims)
}

/// The scope that reveals a stored password or API token (`GET …/credentials/reveal`). It stands apart: `admin`
/// does not cover it, and a token holds it only when it was issued with it by name (directly or in a group).
pub const REVEAL_SCOPE: &str = "credentials.reveal";
/// The route resource that [`REVEAL_SCOPE`] alone allows.
pub const REVEAL_RESOURCE: &str = "credentials";

/// The scopes that allow `method` on `resource`.
pub fn accepted_scopes(method: &Method, resource: &str) -> Vec<String> {
    if resource == REVEAL_RESOURCE {
        return vec![REVEAL_SCOPE.to_string()];
    }
    let mut s = vec![format!("{resource}.readwrite")];
    if method == Method::GET || method == Method::HEAD {
        s.insert(0, format!("{resource}.read"));
    }
    s
}

/// Does a token with `scopes` allow `method` on `resource`? Group scopes expand first.
pub fn allows(scopes: &[String], groups: &BTreeMap<String, Vec<String>>, method: &Method, resource: &str) -> bool {
    let accepted = accepted_scopes(method, resource);
    if resource == REVEAL_RESOURCE {
        return scopes
            .iter()
            .any(|s| s == REVEAL_SCOPE || groups.get(s).is_some_and(|m| m.iter().any(|m| m == REVEAL_SCOPE)));
    }
    scopes.iter().any(|s| {
        s == "admin"
            || accepted.contains(s)
            || groups.get(s).is_some_and(|members| members.iter().any(|m| m == "admin" || accepted.contains(m)))
    })
}

/// Does a token with `held` scopes cover the scope `wanted`, so that it may issue a token with it? Yes when it
/// holds it (directly or through a group), when it holds `admin`, when `wanted` is `x.read` and it holds
/// `x.readwrite`, and, for a group, when it covers every scope of the group.
pub fn covers(held: &[String], groups: &BTreeMap<String, Vec<String>>, wanted: &str) -> bool {
    covers_at(held, groups, wanted, 0)
}

fn covers_at(held: &[String], groups: &BTreeMap<String, Vec<String>>, wanted: &str, depth: usize) -> bool {
    let expanded = || {
        held.iter()
            .flat_map(|h| std::iter::once(h.as_str()).chain(groups.get(h).into_iter().flatten().map(String::as_str)))
    };
    if wanted == REVEAL_SCOPE {
        // Only by name: `admin` does not reach it.
        return expanded().any(|h| h == REVEAL_SCOPE);
    }
    if expanded().any(|h| h == "admin" || h == wanted) {
        return true;
    }
    if let Some(resource) = wanted.strip_suffix(".read")
        && expanded().any(|h| h.strip_suffix(".readwrite") == Some(resource))
    {
        return true;
    }
    match groups.get(wanted) {
        Some(members) if depth < 4 => members.iter().all(|m| m != "admin" && covers_at(held, groups, m, depth + 1)),
        _ => false,
    }
}

/// The organisation a request path names (`/v1/orgs/{org}/…`), lower-cased like every name.
pub fn org_of_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/orgs/")?;
    let org = rest.split('/').next().filter(|s| !s.is_empty())?;
    Some(org.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_readwrite_follow_the_method() {
        let g = BTreeMap::new();
        let read = vec!["containers.read".to_string()];
        assert!(allows(&read, &g, &Method::GET, "containers"));
        assert!(!allows(&read, &g, &Method::POST, "containers"));
        assert!(!allows(&read, &g, &Method::GET, "databases"));
        let rw = vec!["containers.readwrite".to_string()];
        assert!(allows(&rw, &g, &Method::GET, "containers"));
        assert!(allows(&rw, &g, &Method::DELETE, "containers"));
        assert!(allows(&["admin".to_string()], &g, &Method::PUT, "audit"));
        let mut groups = BTreeMap::new();
        groups.insert("bi".to_string(), vec!["tokens.readwrite".to_string(), "query.read".to_string()]);
        let bi = vec!["bi".to_string()];
        assert!(allows(&bi, &groups, &Method::POST, "tokens"));
        assert!(allows(&bi, &groups, &Method::GET, "query"));
        assert!(!allows(&bi, &groups, &Method::POST, "query"));
    }

    #[test]
    fn a_token_covers_what_it_holds_and_no_more() {
        let mut groups = BTreeMap::new();
        groups.insert("bi".to_string(), vec!["tokens.readwrite".to_string(), "query.read".to_string()]);
        let held = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(covers(&held(&["admin"]), &groups, "containers.readwrite"));
        assert!(covers(&held(&["admin"]), &groups, "admin"));
        assert!(covers(&held(&["containers.readwrite"]), &groups, "containers.read"));
        assert!(!covers(&held(&["containers.read"]), &groups, "containers.readwrite"));
        assert!(!covers(&held(&["containers.readwrite"]), &groups, "admin"));
        assert!(!covers(&held(&["admin"]), &groups, REVEAL_SCOPE), "admin does not reach the reveal scope");
        assert!(covers(&held(&["credentials.reveal"]), &groups, REVEAL_SCOPE));
        assert!(!allows(&held(&["admin"]), &groups, &Method::GET, REVEAL_RESOURCE));
        assert!(allows(&held(&["credentials.reveal"]), &groups, &Method::GET, REVEAL_RESOURCE));
        assert!(!allows(&held(&["credentials.reveal"]), &groups, &Method::GET, "containers"));
        assert!(covers(&held(&["bi"]), &groups, "tokens.read"));
        assert!(covers(&held(&["bi"]), &groups, "bi"));
        assert!(covers(&held(&["tokens.readwrite", "query.readwrite"]), &groups, "bi"));
        assert!(!covers(&held(&["tokens.readwrite"]), &groups, "bi"));
        assert!(!covers(&held(&["bi"]), &groups, "query.readwrite"));
    }

    #[test]
    fn tokens_verify_and_expire_by_our_clock() {
        let key = b"0123456789abcdef0123456789abcdef";
        let claims = Claims {
            sub: "a".into(),
            org: Some("acme".into()),
            scopes: vec!["admin".into()],
            exp: 2_000,
            iat: 1_000,
            jti: "j".into(),
        };
        let t = issue(key, &claims).unwrap();
        assert_eq!(verify(key, &t, 1_500_000).unwrap().org.as_deref(), Some("acme"));
        assert_eq!(verify(key, &t, 2_000_000).unwrap_err(), TokenRejected::Expired);
        assert_eq!(verify(b"another-key-another-key-another!!", &t, 1_500_000).unwrap_err(), TokenRejected::Invalid);
        assert_eq!(org_of_path("/v1/orgs/Acme/databases"), Some("acme".into()));
    }

    #[test]
    fn a_token_names_its_key_and_only_that_key_verifies_it() {
        let old = b"0123456789abcdef0123456789abcdef".as_slice();
        let new = b"fedcba9876543210fedcba9876543210".as_slice();
        let claims = Claims {
            sub: "a".into(),
            org: None,
            scopes: vec!["admin".into()],
            exp: 2_000,
            iat: 1_000,
            jti: "j".into(),
        };
        let t = issue(old, &claims).unwrap();
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key_id(old).as_str()));
        assert_eq!(key_id(old).len(), 16);
        assert_ne!(key_id(old), key_id(new));
        // During a rotation both keys are accepted: the token's own key verifies it, in any order.
        assert!(verify_any(&[new, old], &t, 1_500_000).is_ok());
        // Once its key is retired, the token is invalid (not merely expired).
        assert_eq!(verify_any(&[new], &t, 1_500_000).unwrap_err(), TokenRejected::Invalid);
        assert_eq!(verify_any(&[new, old], &t, 2_000_000).unwrap_err(), TokenRejected::Expired);
        // A token that names a key but was signed by another is refused even if that other key is accepted.
        let mut forged = Header::new(Algorithm::HS256);
        forged.kid = Some(key_id(new));
        let f = jsonwebtoken::encode(&forged, &claims, &EncodingKey::from_secret(old)).unwrap();
        assert_eq!(verify_any(&[new, old], &f, 1_500_000).unwrap_err(), TokenRejected::Invalid);
        // A token from before key ids (no kid) is tried against every accepted key.
        let legacy =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(old)).unwrap();
        assert!(verify_any(&[new, old], &legacy, 1_500_000).is_ok());
        assert_eq!(verify_any(&[new], &legacy, 1_500_000).unwrap_err(), TokenRejected::Invalid);
        assert_eq!(org_of_path("/v1/orgs"), None);
    }
}

#[cfg(test)]
mod fuzz {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;

    use super::*;

    const KEY: &[u8] = b"fuzz-signing-key-of-at-least-32-bytes!";

    fn claims() -> impl Strategy<Value = Claims> {
        (
            "\\PC{0,20}",
            proptest::option::of("[a-z0-9_-]{1,10}"),
            proptest::collection::vec("[a-z.]{1,20}", 0..4),
            any::<i64>(),
            any::<i64>(),
            "[A-Za-z0-9_-]{0,22}",
        )
            .prop_map(|(sub, org, scopes, exp, iat, jti)| Claims { sub, org, scopes, exp, iat, jti })
    }

    /// Three dot-separated parts of base64url JSON (or anything), the shape a parser sees most.
    fn jwt_shaped() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            "\\PC{0,40}".prop_map(|json| URL_SAFE_NO_PAD.encode(json)),
            Just(URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#)),
            Just(URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)),
            Just(URL_SAFE_NO_PAD.encode(r#"{"sub":"x","scopes":["admin"],"exp":9999999999,"iat":0,"jti":"j"}"#)),
            "[A-Za-z0-9_=+/-]{0,50}",
        ];
        (part.clone(), part.clone(), part).prop_map(|(h, p, s)| format!("{h}.{p}.{s}"))
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any text is refused without a panic (and only a signed token passes).
        #[test]
        fn fuzz_jwt_parser_refuses_junk(token in "\\PC{0,200}|[A-Za-z0-9_.-]{0,200}", shaped in jwt_shaped(), now in any::<i64>()) {
            prop_assert!(verify(KEY, &token, now).is_err());
            prop_assert!(verify(KEY, &shaped, now).is_err());
        }

        /// A token signed with the key reads back as exactly its claims while it is valid, whatever the claims
        /// hold (extreme times included); any change to its text, or another key, refuses it.
        #[test]
        fn fuzz_jwt_round_trip_and_tamper(c in claims(), flip in any::<prop::sample::Index>(), now in any::<i64>()) {
            let token = issue(KEY, &c).unwrap();
            match verify(KEY, &token, now) {
                Ok(back) => {
                    prop_assert!(c.exp.saturating_mul(1000) > now);
                    prop_assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&c).unwrap());
                }
                Err(e) => prop_assert_eq!(e, TokenRejected::Expired),
            }
            prop_assert!(verify(b"another-key-another-key-another-key!", &token, now).is_err());
            let mut bytes = token.into_bytes();
            let i = flip.index(bytes.len());
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            if let Ok(back) = verify(KEY, &tampered, now) {
                // Base64 has spare bits in its last character: a change there can decode to the same bytes.
                prop_assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&c).unwrap());
            }
        }
    }
}
