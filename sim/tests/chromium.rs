//! The B2C sign-in pages in a real browser: Debian's Chromium driven by playwright-core through
//! `tests/peers/browser/exact-signin.mjs`, which signs in as a person does (the page's own script builds the B2C
//! form from SETTINGS/SA_FIELDS, posts it by XHR and goes on to `confirmed`; the last page posts itself to
//! `/signin-azureb2c`).
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`; the tests skip, saying so, when it is absent) and
//! `npm ci --prefix tests/peers/browser` (the tests fail, saying so, when it was not run).

use std::path::PathBuf;
use std::time::Duration;

use exact_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_PASSWORD, DEFAULT_REDIRECT_URI, DEFAULT_TOTP_SECRET, DEFAULT_USERNAME, ExactSim, SignIn,
    SignInBehaviour, SignInOutcome, SimClock, SimConfig, SimUser,
};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/browser")
}

/// `None` (and a message) when Chromium is not installed; panics when the npm packages are missing.
fn ready() -> Option<PathBuf> {
    let path = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| CHROMIUM.to_string());
    if !std::path::Path::new(&path).exists() {
        eprintln!("SKIPPED: {path} is not installed (apt-get install -y chromium); the real-browser test did not run");
        return None;
    }
    let dir = peer_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{} has no node_modules/playwright-core: run `npm ci --prefix tests/peers/browser`",
        dir.display()
    );
    Some(dir)
}

fn user(name: &str, n: u32) -> SimUser {
    SimUser {
        user_id: format!("00000000-0000-4000-8000-{n:012}"),
        username: name.to_string(),
        password: format!("pw-{n}-PLANTED"),
        totp_secret_base32: None,
        full_name: name.to_string(),
        division: 123456,
    }
}

async fn sim(extra: Vec<SimUser>) -> ExactSim {
    let mut config = SimConfig { sign_in: SignIn::AzureB2c, ..SimConfig::default() };
    config.users.extend(extra);
    // The browser computes the TOTP from the real clock, as an authenticator app does.
    ExactSim::start(config, SimClock::system()).await.expect("sim starts")
}

fn authorize_url(sim: &ExactSim, state: &str) -> String {
    let mut u = url::Url::parse(&sim.authorize_url()).unwrap();
    u.query_pairs_mut()
        .append_pair("client_id", DEFAULT_CLIENT_ID)
        .append_pair("redirect_uri", DEFAULT_REDIRECT_URI)
        .append_pair("response_type", "code")
        .append_pair("state", state);
    u.to_string()
}

/// Runs `exact-signin.mjs`; returns its JSON line.
async fn chromium_sign_in(dir: &PathBuf, sim: &ExactSim, state: &str, username: &str, password: &str) -> Value {
    let mut cmd = tokio::process::Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
    cmd.arg(dir.join("exact-signin.mjs"))
        .args(["--authorize-url", &authorize_url(sim, state)])
        .args(["--username", username, "--password", password])
        .args(["--totp-secret", DEFAULT_TOTP_SECRET, "--timeout-ms", "30000"])
        .current_dir(dir)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("exact-signin.mjs finished within 90 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no output; stderr:\n{stderr}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}\nstderr:\n{stderr}"));
    let expected_exit = if v["result"] == "landed" { 0 } else { 2 };
    assert_eq!(out.status.code(), Some(expected_exit), "{v}\nstderr:\n{stderr}");
    assert_eq!(v["blocked"], serde_json::json!([]), "nothing may leave loopback");
    v
}

#[tokio::test]
async fn chromium_signs_in_through_the_b2c_pages_and_lands_on_the_redirect_uri_with_a_code() {
    let Some(dir) = ready() else { return };
    let sim = sim(vec![]).await;
    let v = chromium_sign_in(&dir, &sim, "st-1", DEFAULT_USERNAME, DEFAULT_PASSWORD).await;
    assert_eq!(v["result"], "landed", "{v}");
    assert!(v["url"].as_str().unwrap().starts_with(&format!("{DEFAULT_REDIRECT_URI}?")), "{v}");
    assert_eq!(v["state"], "st-1");
    // The code is a real one: it buys tokens.
    let r = reqwest::Client::new()
        .post(sim.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", v["code"].as_str().unwrap()),
            ("redirect_uri", DEFAULT_REDIRECT_URI),
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_secret", exact_sim::DEFAULT_CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The browser went through both hosts, and the password only to the B2C host (by the page's XHR).
    let pages: Vec<&str> = v["pages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(pages.iter().any(|p| p.starts_with(&format!("{}/?ReturnUrl=", sim.base_url))), "{pages:?}");
    assert!(pages.iter().any(|p| p.starts_with(&sim.b2c_base_url) && p.contains("/confirmed?")), "{pages:?}");
    let st = sim.stats().sign_in;
    assert_eq!((st.start_host.password_seen, st.b2c_host.password_seen), (0, 1), "{st:?}");
    assert_eq!((st.self_asserted_posts, st.b2c_pages, st.completed, st.csrf_rejections), (2, 2, 1, 0), "{st:?}");
    assert_eq!(st.b2c_host.code_submissions, 1);
}

#[tokio::test]
async fn chromium_meets_each_outcome_as_a_person_would() {
    let Some(dir) = ready() else { return };
    let users = vec![
        user("agent@example.com", 1),
        user("robot@example.com", 2),
        user("changed@example.com", 3),
        user("locked@example.com", 4),
    ];
    let sim = sim(users.clone()).await;
    let set = |u: &SimUser, outcome: SignInOutcome, user_agent_step: bool| {
        sim.set_sign_in_behaviour(&u.username, SignInBehaviour { outcome, user_agent_step })
    };
    set(&users[0], SignInOutcome::Normal, true);
    set(&users[1], SignInOutcome::Recaptcha, false);
    set(&users[2], SignInOutcome::ChangedPage, false);
    set(&users[3], SignInOutcome::Locked, false);

    // Wrong password: the page shows B2C's message and stays.
    let v = chromium_sign_in(&dir, &sim, "s", DEFAULT_USERNAME, "not-the-password").await;
    assert_eq!((v["result"].as_str(), v["reason"].as_str()), (Some("stopped"), Some("password_rejected")), "{v}");
    assert_eq!(v["message"], "Invalid username or password.");

    // The user-agent step answers itself (its only field is hidden and filled by the page's script).
    let v = chromium_sign_in(&dir, &sim, "s", &users[0].username, &users[0].password).await;
    assert_eq!(v["result"], "landed", "{v}");

    // A captcha stops the browser before any credential is typed.
    let before = sim.stats().sign_in.b2c_host.password_seen;
    let v = chromium_sign_in(&dir, &sim, "s", &users[1].username, &users[1].password).await;
    assert_eq!(v["reason"], "captcha", "{v}");
    assert_eq!(sim.stats().sign_in.b2c_host.password_seen, before);

    // A page whose shape changed still works for a person (the test browser of the Rust side stops there).
    let v = chromium_sign_in(&dir, &sim, "s", &users[2].username, &users[2].password).await;
    assert_eq!(v["result"], "landed", "{v}");

    // A locked account.
    let v = chromium_sign_in(&dir, &sim, "s", &users[3].username, &users[3].password).await;
    assert_eq!(v["reason"], "locked", "{v}");
    assert!(v["message"].as_str().unwrap().contains("locked"));

    let st = sim.stats().sign_in;
    assert_eq!(st.start_host.password_seen, 0, "{st:?}");
    assert_eq!((st.completed, st.password_rejected, st.locked_rejections, st.captcha_pages), (2, 1, 1, 1), "{st:?}");
}
