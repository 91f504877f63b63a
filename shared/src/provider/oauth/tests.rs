//! The calls `oauth2` builds, as a provider receives them, and the class of every kind of answer, against a
//! one-connection HTTP peer on loopback that records the request and then answers, hangs up or stays silent.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::*;

/// What the peer does once it has read the request.
enum Then {
    /// Writes these bytes (a whole HTTP answer) and closes.
    Answer(String),
    /// Closes without a byte.
    HangUp,
    /// Keeps the connection open and silent.
    Silent,
}

/// An HTTP/1.1 answer with these headers and body.
fn answer(status: &str, headers: &[(&str, &str)], body: &str) -> Then {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    Then::Answer(format!("{head}\r\n{body}"))
}

fn json(status: &str, headers: &[(&str, &str)], body: &str) -> Then {
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/json; charset=utf-8"));
    answer(status, &headers, body)
}

/// A request as the peer read it.
struct Seen {
    head: String,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn form(&self) -> std::collections::BTreeMap<String, String> {
        url::form_urlencoded::parse(self.body.as_bytes()).into_owned().collect()
    }
}

/// Starts a peer for one connection: its base URL, and the request it reads.
async fn peer(then: Then) -> (String, oneshot::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        let seen = loop {
            let n = socket.read(&mut buf).await.unwrap();
            bytes.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&bytes).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let seen = Seen { head: head.to_string(), body: body.to_string() };
                let length: usize = seen.header("content-length").map_or(0, |v| v.parse().unwrap());
                if body.len() >= length || n == 0 {
                    break seen;
                }
            }
        };
        let _ = tx.send(seen);
        match then {
            Then::Answer(raw) => {
                let _ = socket.write_all(raw.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
            Then::HangUp => drop(socket),
            Then::Silent => tokio::time::sleep(Duration::from_secs(30)).await,
        }
    });
    (base, rx)
}

fn profile(base: &str, token_auth: &str) -> ProviderProfile {
    toml::from_str(&format!(
        "authorize_url = \"{base}/authorize?tenant=t1\"\ntoken_url = \"{base}/token\"\n\
         revocation_url = \"{base}/revoke\"\ntoken_auth = \"{token_auth}\"\n\
         extra_authorize_params = {{ prompt = \"login\" }}\n"
    ))
    .unwrap()
}

fn app() -> AppRegistration {
    AppRegistration {
        client_id: "app id".into(),
        client_secret: SecretString::from("s3cr&t:x".to_string()),
        redirect_uri: "http://127.0.0.1:3000/v1/callback".into(),
    }
}

const TIMEOUT: Duration = Duration::from_millis(500);

async fn refresh(base: &str) -> Result<TokenSet, TokenError> {
    let rt = SecretString::from("RT-1".to_string());
    request_token(&http_client(), &profile(base, "basic"), &app(), Grant::RefreshToken(&rt), TIMEOUT).await
}

#[tokio::test]
async fn a_request_that_never_left_is_transient() {
    // A port nobody listens on: the connection is refused, nothing reached the provider.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let e = refresh(&format!("http://{closed}")).await.unwrap_err();
    assert!(matches!(e, TokenError::Transient { status: None, retry_after_s: None, .. }), "{e:?}");
}

#[tokio::test]
async fn a_request_sent_without_an_answer_is_lost() {
    for (then, why) in [(Then::HangUp, "connection broke"), (Then::Silent, "timeout")] {
        let (base, seen) = peer(then).await;
        let e = refresh(&base).await.unwrap_err();
        assert!(matches!(&e, TokenError::Lost(r) if r.contains(why)), "{e:?}");
        assert_eq!(seen.await.unwrap().form()["refresh_token"], "RT-1", "the provider had the request");
    }
    // A success whose body is cut off may have carried the new refresh token.
    let (base, _seen) = peer(Then::Answer(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"access_token\":".into(),
    ))
    .await;
    assert!(matches!(refresh(&base).await, Err(TokenError::Lost(r)) if r.contains("cut off")));
    // And so may one that cannot be read.
    for then in [
        json("200 OK", &[], "{\"token_type\":\"bearer\"}"),
        json("200 OK", &[], "<html>"),
        answer("200 OK", &[("Content-Type", "text/html")], "{\"access_token\":\"AT\"}"),
        json("200 OK", &[], ""),
    ] {
        let (base, _seen) = peer(then).await;
        let e = refresh(&base).await.unwrap_err();
        assert!(matches!(&e, TokenError::Lost(r) if r.contains("unreadable")), "{e:?}");
    }
}

#[tokio::test]
async fn a_503_with_retry_after_is_transient_with_its_status_and_delay() {
    let (base, _seen) = peer(answer("503 Service Unavailable", &[("Retry-After", "7")], "<html>busy</html>")).await;
    let e = refresh(&base).await.unwrap_err();
    assert!(matches!(e, TokenError::Transient { status: Some(503), retry_after_s: Some(7), .. }), "{e:?}");
    let (base, _seen) = peer(json("429 Too Many Requests", &[("Retry-After", " 2 ")], "{}")).await;
    let e = refresh(&base).await.unwrap_err();
    assert!(matches!(e, TokenError::Transient { status: Some(429), retry_after_s: Some(2), .. }), "{e:?}");
}

#[tokio::test]
async fn a_400_with_exacts_reason_header_is_too_early_and_other_refusals_keep_their_class() {
    let too_early = r#"{"error":"access_denied","error_description":"Access denied"}"#;
    let (base, _seen) = peer(json("400 Bad Request", &[("Reason", "TooEarlyToRefreshTokens")], too_early)).await;
    let e = refresh(&base).await.unwrap_err();
    assert!(matches!(&e, TokenError::TooEarly(d) if d == "Access denied"), "{e:?}");
    // The same body without the header is a plain refusal.
    let (base, _seen) = peer(json("400 Bad Request", &[], too_early)).await;
    assert!(matches!(refresh(&base).await, Err(TokenError::Refused(_))));
    let dead = r#"{"error":"invalid_grant","error_description":"Old refresh token used."}"#;
    let (base, _seen) = peer(json("400 Bad Request", &[], dead)).await;
    assert!(matches!(refresh(&base).await, Err(TokenError::InvalidGrant(d)) if d == "Old refresh token used."));
    let (base, _seen) = peer(json("401 Unauthorized", &[], r#"{"error":"invalid_client"}"#)).await;
    assert!(matches!(refresh(&base).await, Err(TokenError::InvalidClient(_))));
}

#[tokio::test]
async fn a_200_with_expires_in_as_a_string_reads() {
    let body = r#"{"access_token":"AT-2","refresh_token":"RT-2","expires_in":"600","token_type":"bearer"}"#;
    let (base, seen) = peer(json("200 OK", &[], body)).await;
    let set = refresh(&base).await.unwrap();
    assert_eq!(set.access_token.expose_secret(), "AT-2");
    assert_eq!(set.refresh_token.as_ref().map(|t| t.expose_secret()), Some("RT-2"));
    assert_eq!(set.expires_in, Some(600.0));
    let seen = seen.await.unwrap();
    assert!(seen.head.starts_with("POST /token HTTP/1.1"), "{}", seen.head);
    assert_eq!(seen.form().get("grant_type").map(String::as_str), Some("refresh_token"));
    assert_eq!(seen.header("accept"), Some("application/json"));
}

#[tokio::test]
async fn the_app_authenticates_as_the_profile_says() {
    let ok = r#"{"access_token":"AT","token_type":"bearer","expires_in":3600}"#;
    // Basic: id and secret form-urlencoded, then Base64 (RFC 6749 2.3.1); nothing of them in the body.
    let (base, seen) = peer(json("200 OK", &[], ok)).await;
    let grant = Grant::ClientCredentials { scopes: &["read".to_string(), "write".to_string()] };
    request_token(&http_client(), &profile(&base, "basic"), &app(), grant, TIMEOUT).await.unwrap();
    let seen = seen.await.unwrap();
    let basic = format!("Basic {}", STANDARD.encode("app+id:s3cr%26t%3Ax"));
    assert_eq!(seen.header("authorization"), Some(basic.as_str()));
    let form = seen.form();
    assert_eq!((form["grant_type"].as_str(), form["scope"].as_str()), ("client_credentials", "read write"));
    assert!(!form.contains_key("client_secret") && !form.contains_key("client_id"), "{form:?}");
    // Post: both in the body, no Authorization header.
    let (base, seen) = peer(json("200 OK", &[], ok)).await;
    let password = SecretString::from("pw".to_string());
    let grant = Grant::Password { username: "ann", password: &password, scopes: &[] };
    request_token(&http_client(), &profile(&base, "post"), &app(), grant, TIMEOUT).await.unwrap();
    let seen = seen.await.unwrap();
    assert_eq!(seen.header("authorization"), None);
    let form = seen.form();
    assert_eq!(form["grant_type"], "password");
    assert_eq!((form["username"].as_str(), form["password"].as_str()), ("ann", "pw"));
    assert_eq!((form["client_id"].as_str(), form["client_secret"].as_str()), ("app id", "s3cr&t:x"));
    assert!(!form.contains_key("scope"));
}

#[tokio::test]
async fn the_code_exchange_sends_the_code_redirect_uri_and_pkce_verifier() {
    let (base, seen) = peer(json("200 OK", &[], r#"{"access_token":"AT","refresh_token":"RT"}"#)).await;
    let (verifier, _) = pkce_pair();
    let grant = Grant::AuthorizationCode {
        code: "C0DE",
        redirect_uri: "http://127.0.0.1:3000/v1/callback",
        pkce_verifier: Some(&verifier),
    };
    let set = request_token(&http_client(), &profile(&base, "post"), &app(), grant, TIMEOUT).await.unwrap();
    assert_eq!(set.refresh_token.as_ref().map(|t| t.expose_secret()), Some("RT"));
    let form = seen.await.unwrap().form();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "C0DE");
    assert_eq!(form["redirect_uri"], "http://127.0.0.1:3000/v1/callback");
    assert_eq!(form["code_verifier"], verifier);
}

#[test]
fn the_authorize_url_carries_state_pkce_scopes_and_the_profiles_parameters() {
    let (verifier, challenge) = pkce_pair();
    let scopes = ["openid".to_string(), "offline_access".to_string()];
    let url = authorize_url(&profile("https://idp.test", "basic"), &app(), "st4te", &scopes, Some(&verifier)).unwrap();
    let url = url::Url::parse(&url).unwrap();
    assert_eq!(url.path(), "/authorize");
    let q: std::collections::BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["tenant"], "t1", "the profile's own query stays");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "app id");
    assert_eq!(q["redirect_uri"], "http://127.0.0.1:3000/v1/callback");
    assert_eq!(q["state"], "st4te");
    assert_eq!(q["scope"], "openid offline_access");
    assert_eq!(q["code_challenge"], challenge);
    assert_eq!(q["code_challenge"], URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["prompt"], "login");
    assert!(!url.as_str().contains("s3cr"), "no client secret in a URL");
    // Without PKCE (a profile with `pkce = false`) and without scopes: neither parameter.
    let url = authorize_url(&profile("https://idp.test", "basic"), &app(), "s", &[], None).unwrap();
    assert!(!url.contains("code_challenge") && !url.contains("scope="), "{url}");
    // A verifier RFC 7636 does not allow is an error, not a panic.
    assert!(authorize_url(&profile("https://idp.test", "basic"), &app(), "s", &[], Some("short")).is_err());
}

#[test]
fn pkce_challenge_is_s256_of_the_verifier() {
    let (v, c) = pkce_pair();
    assert!((43..=128).contains(&v.len()));
    assert_eq!(c, URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())));
    assert_ne!(pkce_pair().0, v, "random");
}

#[tokio::test]
async fn revocation_goes_to_the_profiles_loopback_url_and_reads_the_status() {
    let token = SecretString::from("RT-9".to_string());
    let (base, seen) = peer(answer("200 OK", &[], "")).await;
    revoke_token(&http_client(), &profile(&base, "post"), &app(), &token, "refresh_token", TIMEOUT).await.unwrap();
    let seen = seen.await.unwrap();
    assert!(seen.head.starts_with("POST /revoke HTTP/1.1"), "{}", seen.head);
    let host = base.trim_start_matches("http://");
    assert_eq!(seen.header("host"), Some(host));
    let form = seen.form();
    assert_eq!((form["token"].as_str(), form["token_type_hint"].as_str()), ("RT-9", "refresh_token"));
    assert_eq!(form["client_secret"], "s3cr&t:x");

    let (base, _seen) = peer(json("503 Service Unavailable", &[], "{}")).await;
    let e = revoke_token(&http_client(), &profile(&base, "basic"), &app(), &token, "access_token", TIMEOUT).await;
    assert!(e.unwrap_err().to_string().contains("503"));
    // Plain http elsewhere than loopback: refused before anything is sent (RFC 7009 2).
    let elsewhere = profile("http://idp.test", "basic");
    let e = revoke_token(&http_client(), &elsewhere, &app(), &token, "refresh_token", TIMEOUT).await;
    assert!(e.unwrap_err().to_string().contains("not https"));
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
