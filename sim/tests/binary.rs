//! The `exact-sim` binary: one ready line on stdout, a config file, the system clock.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// A running `exact-sim` and the two hosts of its ready lines. Its stdout stays open for as long as it runs: a
/// closed pipe would end it.
struct Sim {
    child: std::process::Child,
    _stdout: BufReader<std::process::ChildStdout>,
    base: String,
    b2c: String,
}

impl Sim {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_exact-sim"))
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("listening on ").expect("ready line").to_string();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let b2c = line.trim().strip_prefix("b2c host on ").expect("second line: the B2C host").to_string();
        Self { child, _stdout: stdout, base, b2c }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn binary_prints_ready_line_and_serves_config() {
    let dir = std::env::temp_dir().join(format!("exact-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("sim.json");
    let mut f = std::fs::File::create(&cfg).unwrap();
    write!(
        f,
        r#"{{"min_token_interval_s": 1, "access_token_lifetime": 10,
             "apps": [{{"client_id": "ck-app", "client_secret": "ck-secret", "redirect_uris": ["http://127.0.0.1:8080/v1/callback"]}}],
             "users": [{{"user_id": "u-1", "username": "bob", "password": "pw", "full_name": "Bob", "division": 42}}]}}"#
    )
    .unwrap();
    drop(f);

    let sim = Sim::start(&["--config", cfg.to_str().unwrap()]);
    let (base, b2c) = (sim.base.clone(), sim.b2c.clone());
    assert!(base.starts_with("http://127.0.0.1:") && !base.ends_with('/'), "{base}");
    assert!(b2c.starts_with("http://127.0.0.1:") && b2c != base, "{b2c}");

    let auth = format!(
        "{base}/api/oauth2/auth?client_id=ck-app&redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Fv1%2Fcallback&response_type=code&state=xyz"
    );
    // no TOTP secret: password, consent, redirect
    let loc = exact_sim::browser::login(&auth, "bob", "pw", None).await.unwrap();
    let q: std::collections::HashMap<String, String> =
        url::Url::parse(&loc).unwrap().query_pairs().into_owned().collect();
    assert_eq!(q["state"], "xyz");
    let c = reqwest::Client::new();
    let r: serde_json::Value = c
        .post(format!("{base}/api/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", q["code"].as_str()),
            ("redirect_uri", "http://127.0.0.1:8080/v1/callback"),
            ("client_id", "ck-app"),
            ("client_secret", "ck-secret"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["expires_in"], "10");
    let me: serde_json::Value = c
        .get(format!("{base}/api/v1/current/Me"))
        .bearer_auth(r["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["d"]["results"][0]["CurrentDivision"], 42);
    let st: serde_json::Value = c.get(format!("{base}/_sim/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(st["code_requests"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn binary_runs_a_fast_clock_and_refuses_a_bad_factor() {
    let sim = Sim::start(&["--clock-factor", "100"]);
    let base = sim.base.clone();
    let c = reqwest::Client::new();
    let t0: serde_json::Value = c.get(format!("{base}/_sim/clock")).send().await.unwrap().json().await.unwrap();
    assert_eq!(t0["factor"], 100.0);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let t1: serde_json::Value = c.get(format!("{base}/_sim/clock")).send().await.unwrap().json().await.unwrap();
    let moved = t1["now_ms"].as_i64().unwrap() - t0["now_ms"].as_i64().unwrap();
    assert!(moved >= 19_000, "≈ 20 s in 0.2 s: {moved}");

    let out = Command::new(env!("CARGO_BIN_EXE_exact-sim")).args(["--clock-factor", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clock-factor must be a positive number"));
}

#[tokio::test]
async fn binary_serves_the_b2c_sign_in_from_its_config() {
    let dir = std::env::temp_dir().join(format!("exact-sim-b2c-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("sim.json");
    std::fs::write(
        &cfg,
        r#"{"sign_in": "azure_b2c",
            "apps": [{"client_id": "ck-app", "client_secret": "ck-secret", "redirect_uris": ["http://127.0.0.1:8080/v1/callback"]}],
            "users": [{"user_id": "u-1", "username": "bob@example.com", "password": "pw", "full_name": "Bob"}],
            "sign_in_behaviours": {"carol@example.com": {"outcome": "locked"}}}"#,
    )
    .unwrap();
    let sim = Sim::start(&["--config", cfg.to_str().unwrap()]);
    let base = sim.base.clone();
    let auth = format!(
        "{base}/api/oauth2/auth?client_id=ck-app&redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Fv1%2Fcallback&response_type=code&state=xyz"
    );
    let loc = exact_sim::browser::login(&auth, "bob@example.com", "pw", None).await.unwrap();
    assert!(loc.starts_with("http://127.0.0.1:8080/v1/callback?code="), "{loc}");
    let st: serde_json::Value =
        reqwest::Client::new().get(format!("{base}/_sim/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(st["sign_in"]["completed"], 1);
    assert_eq!(st["sign_in"]["start_host"]["password_seen"], 0);
    assert_eq!(st["sign_in"]["b2c_host"]["password_seen"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}
