//! A real OpenID Connect / OAuth 2.0 peer for tests: `oidc-provider` (npm) started from
//! `tests/peers/oidc/server.mjs`, plus [`sign_in`], which walks its HTML login and consent
//! forms over plain HTTP the way a person's browser would.
//!
//! The peer rotates refresh tokens on every refresh and revokes the whole grant when an old
//! refresh token is reused (see `tests/peers/oidc/README.md`). State is in memory; every
//! [`OidcPeer`] is a fresh server and dies with its handle (`kill_on_drop`).
//!
//! Needs `node` on PATH (or `$NODE`) and `npm ci --prefix tests/peers/oidc` done once.
//! `$OIDC_PEER_DIR` overrides the peer directory; `$OIDC_PEER_LOG=1` echoes the peer's stderr.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use url::Url;

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STDERR_TAIL_LINES: usize = 200;

/// How the peer's confidential client (and its client_credentials twin) is registered.
#[derive(Debug, Clone)]
pub struct OidcPeerOptions {
    pub client_id: String,
    pub client_secret: String,
    /// Exact redirect URIs the client may use (oidc-provider compares them exactly, port included).
    pub redirect_uris: Vec<String>,
    /// `"basic"` (client_secret_basic) or `"post"` (client_secret_post). The peer accepts both anyway.
    pub token_auth: String,
    /// Access-token lifetime (`expires_in`), seconds. Also used for client_credentials tokens.
    pub access_ttl_s: u64,
    /// Refresh-token lifetime, seconds (each rotated refresh token gets the full lifetime again).
    pub refresh_ttl_s: u64,
    /// Listen on this port (0: a free one). A restarted peer on the same port has forgotten every grant.
    pub port: u16,
    /// Redirect URIs of the console sign-in client (`<client_id>-console` / `<client_secret>-console`, code flow
    /// with PKCE); none: not registered. Logins like `alice+ck-admins` carry `groups: ["ck-admins"]`.
    pub console_redirect_uris: Vec<String>,
}

impl Default for OidcPeerOptions {
    fn default() -> Self {
        OidcPeerOptions {
            client_id: "chainkeeper".to_owned(),
            client_secret: "chainkeeper-secret".to_owned(),
            redirect_uris: vec!["http://127.0.0.1:3000/oauth/callback".to_owned()],
            token_auth: "basic".to_owned(),
            access_ttl_s: 60,
            refresh_ttl_s: 24 * 60 * 60,
            port: 0,
            console_redirect_uris: Vec::new(),
        }
    }
}

/// A running oidc-provider. Killed when dropped.
pub struct OidcPeer {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub issuer: String,
    pub port: u16,
    /// The authorization_code + refresh_token client (as given in the options).
    pub client_id: String,
    pub client_secret: String,
    /// A second client allowed only the client_credentials grant:
    /// `<client_id>-cc` / `<client_secret>-cc`.
    pub cc_client_id: String,
    pub cc_client_secret: String,
    child: Child,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

fn peer_dir() -> PathBuf {
    match std::env::var_os("OIDC_PEER_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers").join("oidc"),
    }
}

fn spawn_line_drain<R>(reader: R, tail: Option<Arc<Mutex<VecDeque<String>>>>, echo: bool)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("[oidc-peer] {line}");
            }
            if let Some(tail) = &tail {
                let mut t = tail.lock().unwrap();
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    });
}

impl OidcPeer {
    /// Starts `node tests/peers/oidc/server.mjs --port 0 ...` and waits (up to 20 s) for its
    /// `{"issuer":...,"port":...}` line.
    pub async fn start(opts: OidcPeerOptions) -> anyhow::Result<OidcPeer> {
        let dir = peer_dir();
        let script = dir.join("server.mjs");
        if !script.is_file() {
            bail!("oidc peer: {} not found", script.display());
        }
        if !dir.join("node_modules").join("oidc-provider").is_dir() {
            bail!(
                "oidc peer: {} has no node_modules/oidc-provider; run `npm ci --prefix tests/peers/oidc`",
                dir.display()
            );
        }
        let token_auth = match opts.token_auth.as_str() {
            "basic" | "client_secret_basic" => "basic",
            "post" | "client_secret_post" => "post",
            other => bail!("oidc peer: token_auth must be \"basic\" or \"post\", got {other:?}"),
        };
        if opts.redirect_uris.is_empty() {
            bail!("oidc peer: at least one redirect URI is required");
        }
        if opts.access_ttl_s == 0 || opts.refresh_ttl_s == 0 {
            bail!("oidc peer: TTLs must be > 0");
        }

        let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
        let mut cmd = Command::new(&node);
        cmd.arg(&script)
            .args(["--port", &opts.port.to_string()])
            .args(["--client-id", &opts.client_id])
            .args(["--client-secret", &opts.client_secret])
            .args(["--token-auth", token_auth])
            .args(["--access-ttl", &opts.access_ttl_s.to_string()])
            .args(["--refresh-ttl", &opts.refresh_ttl_s.to_string()]);
        for uri in &opts.redirect_uris {
            cmd.args(["--redirect-uri", uri]);
        }
        for uri in &opts.console_redirect_uris {
            cmd.args(["--console-redirect-uri", uri]);
        }
        cmd.current_dir(&dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("oidc peer: cannot run {:?} (is Node.js installed and on PATH?)", node))?;

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let echo = std::env::var_os("OIDC_PEER_LOG").is_some_and(|v| !v.is_empty() && v != "0");
        spawn_line_drain(child.stderr.take().expect("piped stderr"), Some(stderr_tail.clone()), echo);

        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, reader.read_line(&mut line)).await;
        let tail = |t: &Arc<Mutex<VecDeque<String>>>| t.lock().unwrap().iter().cloned().collect::<Vec<_>>().join("\n");
        match read {
            Err(_) => {
                let _ = child.start_kill();
                bail!("oidc peer: no ready line within {}s; stderr:\n{}", START_TIMEOUT.as_secs(), tail(&stderr_tail));
            }
            Ok(Err(e)) => {
                let _ = child.start_kill();
                return Err(anyhow!(e).context("oidc peer: reading its stdout"));
            }
            Ok(Ok(0)) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                // Give the stderr drain a moment to catch the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                bail!(
                    "oidc peer exited before it was ready ({:?}); stderr:\n{}",
                    status.ok().and_then(|s| s.ok()),
                    tail(&stderr_tail)
                );
            }
            Ok(Ok(_)) => {}
        }
        let ready: serde_json::Value =
            serde_json::from_str(line.trim()).with_context(|| format!("oidc peer: bad ready line {line:?}"))?;
        let issuer = ready["issuer"]
            .as_str()
            .ok_or_else(|| anyhow!("oidc peer: ready line without issuer: {line:?}"))?
            .trim_end_matches('/')
            .to_owned();
        let port = ready["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("oidc peer: ready line without port: {line:?}"))?;
        // Keep draining stdout so the peer can never block on a full pipe.
        spawn_line_drain(reader.into_inner(), None, echo);

        Ok(OidcPeer {
            issuer,
            port,
            cc_client_id: format!("{}-cc", opts.client_id),
            cc_client_secret: format!("{}-cc", opts.client_secret),
            client_id: opts.client_id,
            client_secret: opts.client_secret,
            child,
            stderr_tail,
        })
    }

    /// `{issuer}/auth`
    pub fn authorize_url(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    /// `{issuer}/token`
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// `{issuer}/me`
    pub fn userinfo_url(&self) -> String {
        format!("{}/me", self.issuer)
    }

    /// `{issuer}/token/revocation`
    pub fn revocation_url(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }

    /// `{issuer}/token/introspection` (client auth required; returns `{"active":false}` for dead tokens).
    pub fn introspection_url(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    /// `{issuer}/.well-known/openid-configuration`
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// The last (up to 200) lines the peer wrote to stderr: startup warnings and one line per
    /// token/userinfo error with oidc-provider's internal reason, e.g.
    /// `oidc peer grant.error: invalid_grant (refresh token already used)`.
    pub fn logs(&self) -> String {
        self.stderr_tail.lock().unwrap().iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Kills the peer (SIGKILL) and waits for it. Dropping the handle also kills it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.child.start_kill();
        self.child.wait().await.context("oidc peer: waiting for exit")?;
        Ok(())
    }
}

/// Drives the login and consent forms over HTTP as a person's browser would: starts at
/// `authorize_url` (full URL with query, as produced by the app under test), follows redirects
/// within the issuer's origin (with a cookie jar), posts the login form with `login`/`password`,
/// posts the consent form, and returns the final redirect `Location` (the app's redirect URI with
/// `code`, `state` and `iss`, or `error=...`) WITHOUT requesting it.
///
/// Each call is a fresh browser (new cookie jar), so login and consent are always shown.
/// The peer accepts any login/password; `sub` = `login`.
pub async fn sign_in(authorize_url: &str, login: &str, password: &str) -> anyhow::Result<Url> {
    let start = Url::parse(authorize_url).with_context(|| format!("sign_in: bad authorize URL {authorize_url:?}"))?;
    let origin = start.origin();
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()?;

    let mut url = start;
    let mut post_body: Option<String> = None;
    let mut forms_posted = Vec::new();
    for _ in 0..24 {
        let req = match post_body.take() {
            Some(body) => http
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body),
            None => http.get(url.clone()),
        };
        let resp = req
            .header(reqwest::header::ACCEPT, "text/html,application/xhtml+xml")
            .send()
            .await
            .with_context(|| format!("sign_in: requesting {url}"))?;
        let status = resp.status();

        if status.is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .ok_or_else(|| anyhow!("sign_in: {status} from {url} without Location"))?
                .to_str()
                .context("sign_in: non-UTF-8 Location")?;
            let next = url.join(location).with_context(|| format!("sign_in: bad Location {location:?} from {url}"))?;
            if next.origin() != origin {
                return Ok(next);
            }
            url = next;
            continue;
        }

        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("sign_in: {status} at {url} (after posting {forms_posted:?}): {}", page_text(&body));
        }
        let form = chainkeeper_forms::first_form(&body)
            .ok_or_else(|| anyhow!("sign_in: no form on the page at {url}: {}", page_text(&body)))?;
        if form.method != "post" {
            bail!("sign_in: form at {url} uses method {:?}", form.method);
        }
        let inputs = form.entries(None);
        let prompt = inputs.iter().find(|(n, _)| n == "prompt").map(|(_, v)| v.clone()).unwrap_or_default();
        let has_login = inputs.iter().any(|(n, _)| n == "login");
        if prompt == "login" && !has_login {
            bail!("sign_in: login form at {url} has no `login` field");
        }
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in &inputs {
            match name.as_str() {
                "login" => ser.append_pair(name, login),
                "password" => ser.append_pair(name, password),
                _ => ser.append_pair(name, value),
            };
        }
        forms_posted.push(if prompt.is_empty() { "form".to_owned() } else { prompt });
        let action = match form.action.as_deref() {
            Some(a) if !a.is_empty() => url.join(a).with_context(|| format!("sign_in: bad form action {a:?}"))?,
            _ => url.clone(),
        };
        url = action;
        post_body = Some(ser.finish());
    }
    bail!("sign_in: too many steps (posted {forms_posted:?}), last at {url}")
}

/// Visible text of an HTML page, cut to 600 chars — for error messages (oidc-provider's error page names the
/// error there).
fn page_text(html: &str) -> String {
    let text = chainkeeper_forms::visible_text(html);
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    text.chars().take(600).collect()
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn reads_oidc_provider_login_form_and_error_page() {
        let html = r#"<html><body><form autocomplete="off" action="http://127.0.0.1:1/interaction/abc" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
  <input required type="password" name="password" placeholder="and password" >
  <button type="submit" class="login login-submit">Sign-in</button>
</form></body></html>"#;
        let f = chainkeeper_forms::first_form(html).unwrap();
        assert_eq!(f.action.as_deref(), Some("http://127.0.0.1:1/interaction/abc"));
        assert_eq!(f.method, "post");
        assert_eq!(
            f.entries(None),
            vec![
                ("prompt".into(), "login".into()),
                ("login".into(), String::new()),
                ("password".into(), String::new())
            ]
        );
        let err = "<html><head><style>h1{}</style></head><body><h1>oops! something went wrong</h1><pre>error: invalid_request</pre><script>x()</script></body></html>";
        assert_eq!(page_text(err), "oops! something went wrong error: invalid_request");
        assert_eq!(page_text("<html></html>"), "(empty body)");
    }
}
