//! Talking to a provider's OAuth endpoints through the `oauth2` crate, and reading its answers honestly.
//!
//! `oauth2` builds every request (the authorize URL with state and PKCE, the code exchange, the refresh, client
//! credentials, the password grant, revocation; client authentication per profile) and reads a `200` token answer
//! into `answer::ProviderTokenResponse` (`expires_in` as a number or a string). It sends through
//! `client::ProviderHttp`, which keeps what `oauth2`'s own clients drop and the chain engine acts on: a request
//! that never left versus one sent without an answer, and the status and headers of any other answer, which
//! [`read_token_answer`] reads into a [`TokenError`]. Tokens are moved into `SecretString`s as they are read.

mod answer;
mod client;

use std::borrow::Cow;
use std::time::Duration;

use anyhow::Context;
use oauth2::basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse};
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, ResourceOwnerPassword, ResourceOwnerUsername,
    RevocationUrl, Scope, StandardRevocableToken, TokenUrl,
};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use self::answer::ProviderTokenResponse;
use self::client::{CallError, ProviderHttp};
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
    /// Any other refusal (other 4xx errors), or a request that could not be built (nothing was sent).
    #[error("token request refused: {0}")]
    Refused(String),
}

#[derive(Deserialize, Default)]
struct RawError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: Option<String>,
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

/// An `oauth2` client for the app at the provider, authenticating the way the profile says: HTTP Basic (RFC 6749
/// 2.3.1, both parts form-urlencoded before Base64) or `client_id`/`client_secret` in the body. Each call sets the
/// endpoints it uses.
type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    ProviderTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

fn oauth_client(profile: &ProviderProfile, app: &AppRegistration) -> OAuthClient {
    OAuthClient::new(ClientId::new(app.client_id.clone()))
        .set_client_secret(ClientSecret::new(app.client_secret.expose_secret().to_string()))
        .set_auth_type(match profile.token_auth {
            TokenAuth::Basic => AuthType::BasicAuth,
            TokenAuth::Post => AuthType::RequestBody,
        })
}

fn scopes(scopes: &[String]) -> impl Iterator<Item = Scope> + '_ {
    scopes.iter().map(|s| Scope::new(s.clone()))
}

/// The URL a person is sent to, to authorize the app: `response_type=code`, the app's `client_id` and
/// `redirect_uri`, `state`, the scopes, the PKCE S256 challenge of `pkce_verifier` (see [`pkce_pair`]) and the
/// profile's extra parameters, after any query the profile's `authorize_url` has.
pub fn authorize_url(
    profile: &ProviderProfile,
    app: &AppRegistration,
    state: &str,
    requested_scopes: &[String],
    pkce_verifier: Option<&str>,
) -> anyhow::Result<String> {
    let auth_url = AuthUrl::new(profile.authorize_url.clone()).context("the profile's authorize_url")?;
    let redirect = RedirectUrl::new(app.redirect_uri.clone()).context("the app registration's redirect_uri")?;
    let client = oauth_client(profile, app).set_auth_uri(auth_url).set_redirect_uri(redirect);
    let mut request = client.authorize_url(|| CsrfToken::new(state.to_string())).add_scopes(scopes(requested_scopes));
    if let Some(verifier) = pkce_verifier {
        // RFC 7636 4.1: 43 to 128 characters (`oauth2` panics on others).
        anyhow::ensure!((43..=128).contains(&verifier.len()), "a PKCE verifier has 43 to 128 characters");
        let verifier = PkceCodeVerifier::new(verifier.to_string());
        request = request.set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier));
    }
    for (name, value) in &profile.extra_authorize_params {
        request = request.add_extra_param(name.as_str(), value.as_str());
    }
    Ok(request.url().0.to_string())
}

/// Calls the token endpoint once.
pub async fn request_token(
    http: &reqwest::Client,
    profile: &ProviderProfile,
    app: &AppRegistration,
    grant: Grant<'_>,
    timeout: Duration,
) -> Result<TokenSet, TokenError> {
    let token_url = TokenUrl::new(profile.token_url.clone())
        .map_err(|_| TokenError::Refused("the profile's token_url is not a URL".into()))?;
    let oauth = oauth_client(profile, app).set_token_uri(token_url);
    let client = ProviderHttp::new(http, timeout);
    let started = std::time::Instant::now();
    let answer = match grant {
        Grant::AuthorizationCode { code, redirect_uri, pkce_verifier } => {
            let redirect = RedirectUrl::new(redirect_uri.to_string())
                .map_err(|_| TokenError::Refused("the redirect_uri is not a URL".into()))?;
            let mut request =
                oauth.exchange_code(AuthorizationCode::new(code.to_string())).set_redirect_uri(Cow::Owned(redirect));
            if let Some(verifier) = pkce_verifier {
                request = request.set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()));
            }
            request.request_async(&client).await
        }
        Grant::RefreshToken(token) => {
            let token = RefreshToken::new(token.expose_secret().to_string());
            oauth.exchange_refresh_token(&token).request_async(&client).await
        }
        Grant::ClientCredentials { scopes: requested } => {
            oauth.exchange_client_credentials().add_scopes(scopes(requested)).request_async(&client).await
        }
        Grant::Password { username, password, scopes: requested } => {
            let username = ResourceOwnerUsername::new(username.to_string());
            let password = ResourceOwnerPassword::new(password.expose_secret().to_string());
            oauth.exchange_password(&username, &password).add_scopes(scopes(requested)).request_async(&client).await
        }
    };
    crate::metrics::provider_token_latency(&profile.name, started.elapsed().as_secs_f64() * 1000.0);
    match answer {
        Ok(tokens) => Ok(tokens.into_token_set()),
        Err(e) => token_failure(e, client.sent()),
    }
}

/// The class of a failed token call. `sent`: whether the request went out (or was attempted).
fn token_failure(e: RequestTokenError<CallError, BasicErrorResponse>, sent: bool) -> Result<TokenSet, TokenError> {
    Err(match e {
        RequestTokenError::Request(CallError::Answered(a)) => {
            return read_token_answer(a.status, a.reason.as_deref(), a.retry_after_s, &a.body);
        }
        RequestTokenError::Request(CallError::NotSent(why)) => {
            TokenError::Transient { status: None, retry_after_s: None, reason: why.into() }
        }
        RequestTokenError::Request(CallError::NoAnswer(why)) => TokenError::Lost(why.into()),
        RequestTokenError::Request(e @ CallError::NotBuilt(_)) => TokenError::Refused(e.to_string()),
        // A `200` whose body is not a token response (the path names the field, never a value).
        RequestTokenError::Parse(e, _) => {
            TokenError::Lost(format!("unreadable token response (HTTP 200) at {}", e.path()))
        }
        // A `200` that is not JSON or is empty.
        RequestTokenError::Other(why) if sent => TokenError::Lost(format!("unreadable token response: {why}")),
        RequestTokenError::Other(why) => TokenError::Refused(format!("request not built: {why}")),
        // `ProviderHttp` hands `oauth2` only `200` answers, which it does not read as error documents.
        RequestTokenError::ServerResponse(e) => TokenError::Refused(e.to_string().chars().take(200).collect()),
    })
}

/// Reads a token endpoint's answer (status, `Reason` header, `Retry-After`, body) into a token set or the class
/// of failure the chain engine acts on. Pure, so it is fuzzed (`provider::oauth::fuzz`): it never panics, and
/// an `expires_in` it returns is finite and not negative.
///
/// `oauth2` reads only the `200`s (`answer::ProviderTokenResponse`); every other answer is read here, because
/// its class depends on the status and headers (which `oauth2`'s error type does not keep), and a provider's `503`
/// page or empty `400` is no RFC 6749 error document.
pub fn read_token_answer(
    status: StatusCode,
    reason_header: Option<&str>,
    retry_after: Option<u64>,
    bytes: &[u8],
) -> Result<TokenSet, TokenError> {
    if status.is_success() {
        let tokens: ProviderTokenResponse = serde_json::from_slice(bytes)
            .map_err(|_| TokenError::Lost(format!("unreadable token response (HTTP {status})")))?;
        return Ok(tokens.into_token_set());
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

/// RFC 7009 token revocation at the provider (`hint`: `refresh_token` or `access_token`). Succeeds when the
/// provider confirmed it (2xx).
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
    let url = url::Url::parse(url).context("the profile's revocation_url")?;
    let secret = token.expose_secret().to_string();
    let token = match hint {
        "refresh_token" => StandardRevocableToken::RefreshToken(RefreshToken::new(secret)),
        "access_token" => StandardRevocableToken::AccessToken(AccessToken::new(secret)),
        other => anyhow::bail!("no such token type hint: {other}"),
    };
    let mut client = ProviderHttp::new(http, timeout);
    // `oauth2` refuses a revocation URL that is not https (RFC 7009 2: the client MUST verify it). The test peers
    // (oidc-provider, the Exact simulator) and a local setup serve plain http on loopback, as RFC 8252 8.3 allows
    // for loopback redirects: for a loopback host `oauth2` builds the request for the https form of the URL and
    // it goes to the URL the profile names. Any other http URL stays refused.
    let revocation_url = match url.scheme() {
        "https" => url,
        "http" if is_loopback(&url) => {
            client = client.sending_to(url.as_str().parse().context("the profile's revocation_url")?);
            let mut https = url;
            https.set_scheme("https").map_err(|()| anyhow::anyhow!("revocation_url {https} has no https form"))?;
            https
        }
        _ => anyhow::bail!("revocation_url {url} is not https"),
    };
    let oauth = oauth_client(profile, app).set_revocation_url(RevocationUrl::from_url(revocation_url));
    match oauth.revoke_token(token)?.request_async(&client).await {
        Ok(()) => Ok(()),
        Err(RequestTokenError::Request(CallError::Answered(a))) if a.status.is_success() => Ok(()),
        Err(RequestTokenError::Request(e)) => anyhow::bail!("revocation endpoint: {e}"),
        Err(e) => anyhow::bail!("revocation endpoint: {e}"),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// PKCE (RFC 7636): a random verifier and its S256 challenge.
pub fn pkce_pair() -> (String, String) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    (verifier.into_secret(), challenge.as_str().to_string())
}

/// Reads the user's identity with an access token: (user id, display name).
///
/// Not through `oauth2`: the crate covers the OAuth endpoints (authorize, token, revocation, introspection,
/// device), and a provider's who-am-I call is an API call with a bearer token, whatever its shape.
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
mod tests;

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
