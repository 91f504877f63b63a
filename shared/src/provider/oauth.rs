//! Talking to a provider's token endpoint, and reading its answer honestly.
//!
//! We call the token endpoint with `reqwest` directly rather than through the `oauth2` crate: the chain engine
//! must tell apart failures that `oauth2` folds together (a request that never left, one that was sent and
//! got no answer, Exact's `Reason: TooEarlyToRefreshTokens` header, `expires_in` as a string), and it must
//! keep the refresh token in a `SecretString` from the first byte it reads.

use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::provider::AppRegistration;
use crate::provider::{ProviderProfile, TokenAuth};

/// A successful token response.
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// Seconds; providers send a number or (Exact) a string.
    pub expires_in: Option<f64>,
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why a token request failed, in the classes the chain engine acts on.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// `invalid_grant`: the refresh token (or code) is dead. The text is the provider's description.
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    /// The app registration is wrong (`invalid_client`, 401).
    #[error("invalid_client: {0}")]
    InvalidClient(String),
    /// The provider's minimum interval rule (Exact: 400 access_denied with `Reason: TooEarlyToRefreshTokens`).
    #[error("too early to refresh: {0}")]
    TooEarly(String),
    /// Nothing was changed at the provider: could not connect, 5xx, 429. Safe to retry later.
    #[error("provider unavailable ({status:?}): {reason}")]
    Transient { status: Option<u16>, retry_after_s: Option<u64>, reason: String },
    /// The request was sent and no usable answer came back: the provider may have rotated the token.
    #[error("token response lost: {0}")]
    Lost(String),
    /// Any other refusal (other 4xx errors).
    #[error("token request refused: {0}")]
    Refused(String),
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<f64>,
    scope: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        N(f64),
        S(String),
    }
    Ok(match Option::<NumOrStr>::deserialize(d)? {
        None => None,
        Some(NumOrStr::N(n)) => Some(n),
        Some(NumOrStr::S(s)) => s.trim().parse().ok(),
    }
    // "NaN", "inf" and negative lifetimes read as "not given".
    .filter(|n: &f64| n.is_finite() && *n >= 0.0))
}

/// One HTTP client for the process: redirects off (no SSRF through a token endpoint's redirect), rustls.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("chainkeeper/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// The grant being exchanged.
pub enum Grant<'a> {
    AuthorizationCode { code: &'a str, redirect_uri: &'a str, pkce_verifier: Option<&'a str> },
    RefreshToken(&'a SecretString),
    ClientCredentials { scopes: &'a [String] },
    Password { username: &'a str, password: &'a SecretString, scopes: &'a [String] },
}

/// A form POST to one of the provider's OAuth endpoints, authenticated as the app the way the profile says:
/// HTTP Basic (RFC 6749 2.3.1: both parts form-urlencoded before Base64) or `client_id`/`client_secret` in the body.
fn client_form(
    req: reqwest::RequestBuilder,
    profile: &ProviderProfile,
    app: &AppRegistration,
    mut form: Vec<(&str, String)>,
) -> reqwest::RequestBuilder {
    let req = match profile.token_auth {
        TokenAuth::Basic => {
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let cred = format!("{}:{}", enc(&app.client_id), enc(app.client_secret.expose_secret()));
            req.header("Authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(cred)))
        }
        TokenAuth::Post => {
            form.push(("client_id", app.client_id.clone()));
            form.push(("client_secret", app.client_secret.expose_secret().to_string()));
            req
        }
    };
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form.iter()).finish();
    req.header("Content-Type", "application/x-www-form-urlencoded").body(body)
}

/// Calls the token endpoint once.
pub async fn request_token(
    http: &reqwest::Client,
    profile: &ProviderProfile,
    app: &AppRegistration,
    grant: Grant<'_>,
    timeout: Duration,
) -> Result<TokenSet, TokenError> {
    let mut form: Vec<(&str, String)> = Vec::new();
    match &grant {
        Grant::AuthorizationCode { code, redirect_uri, pkce_verifier } => {
            form.push(("grant_type", "authorization_code".into()));
            form.push(("code", code.to_string()));
            form.push(("redirect_uri", redirect_uri.to_string()));
            if let Some(v) = pkce_verifier {
                form.push(("code_verifier", v.to_string()));
            }
        }
        Grant::RefreshToken(rt) => {
            form.push(("grant_type", "refresh_token".into()));
            form.push(("refresh_token", rt.expose_secret().to_string()));
        }
        Grant::ClientCredentials { scopes } => {
            form.push(("grant_type", "client_credentials".into()));
            if !scopes.is_empty() {
                form.push(("scope", scopes.join(" ")));
            }
        }
        Grant::Password { username, password, scopes } => {
            form.push(("grant_type", "password".into()));
            form.push(("username", username.to_string()));
            form.push(("password", password.expose_secret().to_string()));
            if !scopes.is_empty() {
                form.push(("scope", scopes.join(" ")));
            }
        }
    }
    let req = http.post(&profile.token_url).timeout(timeout).header("Accept", "application/json");
    let started = std::time::Instant::now();
    let res = client_form(req, profile, app, form).send().await;
    crate::metrics::provider_token_latency(&profile.name, started.elapsed().as_secs_f64() * 1000.0);
    let res = match res {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Err(TokenError::Transient {
                status: None,
                retry_after_s: None,
                reason: "could not connect".into(),
            });
        }
        Err(e) if e.is_timeout() => return Err(TokenError::Lost("no answer before the timeout".into())),
        Err(_) => return Err(TokenError::Lost("connection broke before an answer".into())),
    };
    let status = res.status();
    let reason_header = res.headers().get("reason").and_then(|v| v.to_str().ok()).map(str::to_string);
    let retry_after = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let bytes = match res.bytes().await {
        Ok(b) => b,
        Err(_) if status.is_success() => return Err(TokenError::Lost("answer cut off".into())),
        Err(_) => bytes::Bytes::new(),
    };
    read_token_answer(status, reason_header.as_deref(), retry_after, &bytes)
}

/// Reads a token endpoint's answer (status, `Reason` header, `Retry-After`, body) into a token set or the class
/// of failure the chain engine acts on. Pure, so it is fuzzed (`provider::oauth::fuzz`): it never panics, and
/// an `expires_in` it returns is finite and not negative.
pub fn read_token_answer(
    status: StatusCode,
    reason_header: Option<&str>,
    retry_after: Option<u64>,
    bytes: &[u8],
) -> Result<TokenSet, TokenError> {
    if status.is_success() {
        let raw: RawTokenResponse = serde_json::from_slice(bytes)
            .map_err(|_| TokenError::Lost(format!("unreadable token response (HTTP {status})")))?;
        let Some(access) = raw.access_token else {
            return Err(TokenError::Lost("token response without access_token".into()));
        };
        return Ok(TokenSet {
            access_token: SecretString::from(access),
            refresh_token: raw.refresh_token.map(SecretString::from),
            expires_in: raw.expires_in,
            scope: raw.scope,
        });
    }
    let err: RawError = serde_json::from_slice(bytes).unwrap_or_default();
    let description = err.error_description.clone().unwrap_or_else(|| err.error.clone());
    // Descriptions are the provider's words, never secrets; keep them short.
    let description: String = description.chars().take(200).collect();
    if reason_header.is_some_and(|r| r.eq_ignore_ascii_case("TooEarlyToRefreshTokens"))
        || (err.error == "access_denied" && description.to_ascii_lowercase().contains("rate limit"))
    {
        return Err(TokenError::TooEarly(description));
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(TokenError::Transient {
            status: Some(status.as_u16()),
            retry_after_s: retry_after,
            reason: description,
        });
    }
    match err.error.as_str() {
        "invalid_grant" => Err(TokenError::InvalidGrant(description)),
        "invalid_client" | "unauthorized_client" => Err(TokenError::InvalidClient(description)),
        _ if status == StatusCode::UNAUTHORIZED => Err(TokenError::InvalidClient(description)),
        _ => Err(TokenError::Refused(format!("HTTP {}: {description}", status.as_u16()))),
    }
}

/// RFC 7009 token revocation at the provider. Returns whether the provider confirmed it (200).
pub async fn revoke_token(
    http: &reqwest::Client,
    profile: &ProviderProfile,
    app: &AppRegistration,
    token: &SecretString,
    hint: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let Some(url) = &profile.revocation_url else {
        anyhow::bail!("provider {} has no revocation endpoint", profile.name)
    };
    let form: Vec<(&str, String)> =
        vec![("token", token.expose_secret().to_string()), ("token_type_hint", hint.to_string())];
    let res = client_form(http.post(url).timeout(timeout), profile, app, form).send().await?;
    anyhow::ensure!(res.status().is_success(), "revocation endpoint answered HTTP {}", res.status().as_u16());
    Ok(())
}

/// PKCE (RFC 7636): a random verifier and its S256 challenge.
pub fn pkce_pair() -> (String, String) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes: [u8; 32] = rand::random();
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Reads the user's identity with an access token: (user id, display name).
pub async fn fetch_identity(
    http: &reqwest::Client,
    profile: &ProviderProfile,
    access_token: &SecretString,
    timeout: Duration,
) -> anyhow::Result<(String, Option<String>)> {
    let Some(identity) = &profile.identity else { anyhow::bail!("provider {} has no identity endpoint", profile.name) };
    let url = profile.endpoint(&identity.url)?;
    let res = http
        .get(url)
        .bearer_auth(access_token.expose_secret())
        .header("Accept", "application/json")
        .timeout(timeout)
        .send()
        .await?;
    if !res.status().is_success() {
        anyhow::bail!("identity endpoint answered HTTP {}", res.status().as_u16());
    }
    let doc: serde_json::Value = res.json().await?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let user_id = doc
        .pointer(&identity.user_id)
        .and_then(text)
        .ok_or_else(|| anyhow::anyhow!("identity answer has no user id at {}", identity.user_id))?;
    let name = identity.user_name.as_deref().and_then(|p| doc.pointer(p)).and_then(text);
    Ok((user_id, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_may_be_a_string_or_a_number() {
        let a: RawTokenResponse = serde_json::from_str(r#"{"access_token":"a","expires_in":"600"}"#).unwrap();
        assert_eq!(a.expires_in, Some(600.0));
        let b: RawTokenResponse = serde_json::from_str(r#"{"access_token":"a","expires_in":3599}"#).unwrap();
        assert_eq!(b.expires_in, Some(3599.0));
        let c: RawTokenResponse = serde_json::from_str(r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(c.expires_in, None);
    }

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        let (v, c) = pkce_pair();
        assert!(v.len() >= 43);
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(c, URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())));
    }

    #[test]
    fn token_set_debug_hides_tokens() {
        let t = TokenSet {
            access_token: SecretString::from("AT-SECRET".to_string()),
            refresh_token: Some(SecretString::from("RT-SECRET".to_string())),
            expires_in: Some(600.0),
            scope: None,
        };
        let d = format!("{t:?}");
        assert!(!d.contains("SECRET"), "{d}");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// JSON values of the kinds a token endpoint (or a broken one) sends in each field.
    fn field() -> impl Strategy<Value = Value> {
        prop_oneof![
            "\\PC{0,30}".prop_map(Value::from),
            any::<f64>().prop_map(|n| json!(n)),
            any::<i64>().prop_map(Value::from),
            Just(Value::Null),
            Just(json!(true)),
            Just(json!(["a"])),
            Just(json!({"x": 1})),
            Just(json!("NaN")),
            Just(json!("-1")),
            Just(json!("inf")),
            Just(json!(" 3599 ")),
        ]
    }

    fn answer_body() -> impl Strategy<Value = Vec<u8>> {
        const KEYS: &[&str] =
            &["access_token", "refresh_token", "expires_in", "scope", "error", "error_description", "token_type"];
        let object = proptest::collection::btree_map(proptest::sample::select(KEYS), field(), 0..7)
            .prop_map(|m| serde_json::to_vec(&m).unwrap());
        prop_oneof![object, proptest::collection::vec(any::<u8>(), 0..200), "\\PC{0,200}".prop_map(String::into_bytes)]
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any answer from a token endpoint: no panic, a class of failure for every non-2xx, and a token set
        /// only with an access token and a sane `expires_in`.
        #[test]
        fn fuzz_token_response_parser(
            status in 100u16..600,
            reason in proptest::option::of(prop_oneof![Just("TooEarlyToRefreshTokens".to_string()), "\\PC{0,20}"]),
            retry_after in proptest::option::of(any::<u64>()),
            body in answer_body(),
        ) {
            let status = StatusCode::from_u16(status).unwrap();
            match read_token_answer(status, reason.as_deref(), retry_after, &body) {
                Ok(set) => {
                    prop_assert!(status.is_success());
                    let doc: Value = serde_json::from_slice(&body).unwrap();
                    if doc.is_object() {
                        prop_assert_eq!(Some(set.access_token.expose_secret()), doc["access_token"].as_str());
                    }
                    if let Some(e) = set.expires_in {
                        prop_assert!(e.is_finite() && e >= 0.0, "expires_in {}", e);
                    }
                }
                Err(TokenError::Lost(_)) => prop_assert!(status.is_success()),
                Err(TokenError::Transient { status: s, .. }) => {
                    prop_assert_eq!(s, Some(status.as_u16()));
                    prop_assert!(status.as_u16() == 429 || status.is_server_error());
                }
                Err(e) => {
                    prop_assert!(!status.is_success(), "{:?}", e);
                    prop_assert!(e.to_string().chars().count() < 300, "descriptions are cut short");
                }
            }
        }

        /// A well-formed answer reads back exactly (`expires_in` as a number or a string).
        #[test]
        fn fuzz_token_response_round_trip(
            access in "\\PC{1,40}",
            refresh in proptest::option::of("\\PC{1,40}"),
            expires in 0u32..10_000_000,
            as_string in any::<bool>(),
        ) {
            let e = if as_string { json!(expires.to_string()) } else { json!(expires) };
            let body = serde_json::to_vec(&json!({"access_token": access, "refresh_token": refresh, "expires_in": e})).unwrap();
            let set = read_token_answer(StatusCode::OK, None, None, &body).unwrap();
            prop_assert_eq!(set.access_token.expose_secret(), access.as_str());
            prop_assert_eq!(set.refresh_token.as_ref().map(|r| r.expose_secret().to_string()), refresh);
            prop_assert_eq!(set.expires_in, Some(f64::from(expires)));
        }
    }
}
