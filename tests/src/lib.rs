//! Helpers for chainkeeper's end-to-end tests: start the real peers and chainkeeper itself on free loopback
//! ports, and talk to the API. Every process started here is killed when its handle drops.

pub mod bi;
pub mod browser;
pub mod campaign;
pub mod console;
pub mod cred_peer;
pub mod exact;
pub mod lambda_runtime;
#[cfg(feature = "aws")]
pub mod moto;
pub mod oidc_peer;
pub mod scale;
pub mod webhook_receiver;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Every secret a test plants (passwords, client secrets, TOTP seeds) contains this marker. No response
/// body, header or log line anywhere in the suite may contain it, except the answer of the one route whose purpose
/// is to return a stored secret (`GET …/credentials/reveal`, see [`REVEAL_SUFFIX`]): `Api` checks every reply, `Serve` every
/// line its process wrote, and in-process harnesses every log line (see [`assert_no_planted_secret`]).
pub const PLANTED: &str = "PLANTED";

/// The path of the one route that answers with a stored secret (scope `credentials.reveal`, off unless the
/// organisation allows it). Its body, and only its body, may hold a planted secret.
pub const REVEAL_SUFFIX: &str = "/credentials/reveal";

/// Panics if `text` (from `what`) holds a planted secret.
pub fn assert_no_planted_secret(what: &str, text: &str) {
    if let Some(at) = text.find(PLANTED) {
        let start = text[..at].char_indices().rev().nth(60).map_or(0, |(i, _)| i);
        panic!("a planted secret leaked into {what}: …{}…", &text[start..(at + PLANTED.len()).min(text.len())]);
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `chainkeeper` binary built by `cargo build` (`CHAINKEEPER_BIN` overrides).
pub fn cli_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAINKEEPER_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
    // The benchmark (a release build) runs the release `serve`; tests run the debug one.
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let bin = target.join(profile).join("chainkeeper");
    let flag = if cfg!(debug_assertions) { "" } else { " --release" };
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build{flag} -p chainkeeper-cli` first (bash .ci/run does)",
        bin.display()
    );
    bin
}

/// Runs the CLI to completion; returns stdout. Fails on a non-zero exit.
pub fn cli(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(cli_bin()).args(args).output()?;
    if !out.status.success() {
        bail!("chainkeeper {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `chainkeeper token issue` for a data directory.
pub fn issue_token(data_dir: &Path, owner: &[&str], scopes: &[&str]) -> String {
    let mut args = vec!["token", "issue", "--data-dir", data_dir.to_str().unwrap()];
    args.extend_from_slice(owner);
    for s in scopes {
        args.push("--scope");
        args.push(s);
    }
    cli(&args).expect("token issue").trim().to_string()
}

/// A running `chainkeeper serve` process.
pub struct Serve {
    pub base: String,
    pub port: u16,
    child: tokio::process::Child,
    /// Everything the process wrote to stdout and stderr (for the no-secret-in-logs checks).
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// Starts `chainkeeper serve` on a free port and waits until `/healthz` answers.
    pub async fn start(data_dir: &Path, config: Option<&Path>) -> anyhow::Result<Serve> {
        Self::start_on(data_dir, config, free_port()).await
    }

    pub async fn start_on(data_dir: &Path, config: Option<&Path>, port: u16) -> anyhow::Result<Serve> {
        Self::start_with_args(data_dir, config, port, &[]).await
    }

    /// Like [`Serve::start_on`], with more arguments for `serve` (`--metrics-listen …`).
    pub async fn start_with_args(
        data_dir: &Path,
        config: Option<&Path>,
        port: u16,
        extra: &[&str],
    ) -> anyhow::Result<Serve> {
        Self::spawn(data_dir, config, port, extra, "debug,hyper=info,reqwest=info,h2=info,rustls=info").await
    }

    /// As an operator runs it (`info` logs): for benchmarks. Tests log at `debug`, so that the checks that no
    /// secret reaches a log see everything.
    pub async fn start_as_deployed(data_dir: &Path, config: Option<&Path>, port: u16) -> anyhow::Result<Serve> {
        Self::spawn(data_dir, config, port, &[], "info").await
    }

    async fn spawn(
        data_dir: &Path,
        config: Option<&Path>,
        port: u16,
        extra: &[&str],
        log: &str,
    ) -> anyhow::Result<Serve> {
        let mut cmd = tokio::process::Command::new(cli_bin());
        cmd.arg("serve").arg("--listen").arg(format!("127.0.0.1:{port}")).arg("--data-dir").arg(data_dir);
        cmd.args(extra);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("CHAINKEEPER_LOG", log)
            .env_remove("CHAINKEEPER_MASTER_KEY")
            .env_remove("CHAINKEEPER_SIGNING_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting chainkeeper serve")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    output.lock().unwrap().push(line);
                }
            });
        }
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await
                && r.status().is_success()
            {
                return Ok(Serve { base, port, child, output });
            }
            if let Some(status) = child.try_wait()? {
                bail!("serve exited with {status}: {}", output.lock().unwrap().join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("serve did not answer /healthz: {}", output.lock().unwrap().join("\n"))
    }

    /// SIGKILL: no shutdown, no flush.
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub fn log(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_no_planted_secret("the log of chainkeeper serve", &self.log());
        }
    }
}

/// A small API client.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// Asserts a problem+json error with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status of {}", self.body);
        assert_eq!(self.content_type, "application/problem+json", "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
        // RFC 9457 members: `status` repeats the HTTP status, `type` leads to the code's page.
        assert_eq!(self.body["status"], status, "{}", self.body);
        assert_eq!(self.body["type"], format!("/problems/{code}"), "{}", self.body);
        assert!(self.body["title"].as_str().is_some_and(|t| !t.is_empty()), "{}", self.body);
        assert!(
            self.body["detail"].as_str().is_some_and(|d| d.len() > 10),
            "a detail that says what to do: {}",
            self.body
        );
    }
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { http, base: base.to_string(), token: token.to_string() }
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self { token: token.to_string(), ..self.clone() }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{}{}", self.base, path) };
        let mut req = self.http.request(method.parse().unwrap(), url);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let text = res.text().await.unwrap_or_default();
        if !path.ends_with(REVEAL_SUFFIX) {
            assert_no_planted_secret(&format!("the answer to {method} {path}"), &text);
        }
        for (name, value) in &headers {
            assert_no_planted_secret(
                &format!("header {name} of {method} {path}"),
                &String::from_utf8_lossy(value.as_bytes()),
            );
        }
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, content_type, body, headers }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call("PUT", path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None).await
    }

    /// Creates organisation, database and container; panics on failure.
    pub async fn create_container(&self, org: &str, db: &str, alias: &str, kind: &str, provider: Option<&str>) {
        let r = self.post("/v1/orgs", serde_json::json!({"name": org})).await;
        assert!(r.status == 201 || r.status == 409, "create org: {}", r.body);
        let r = self.post(&format!("/v1/orgs/{org}/databases"), serde_json::json!({"name": db})).await;
        assert!(r.status == 201 || r.status == 409, "create db: {}", r.body);
        let mut body = serde_json::json!({"alias": alias, "kind": kind});
        if let Some(p) = provider {
            body["provider"] = Value::String(p.into());
        }
        let r = self.post(&format!("/v1/orgs/{org}/databases/{db}/containers"), body).await;
        assert_eq!(r.status, 201, "create container: {}", r.body);
    }
}

/// `/v1/orgs/{org}/databases/{db}/containers/{alias}`
pub fn container_path(org: &str, db: &str, alias: &str) -> String {
    format!("/v1/orgs/{org}/databases/{db}/containers/{alias}")
}

/// Sends one HTTP/1.1 request with the path exactly as given (no client-side normalisation of `..` or
/// percent-encoding), for traversal tests. Returns the status code and the body.
pub async fn raw_request(base: &str, method: &str, path: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}
