//! Auto-recovery: a broken chain repaired without a person, by signing in with stored credentials — through
//! Exact Online's real sign-in shape (start page, then Azure AD B2C on a second host: the simulator's
//! `SignIn::AzureB2c`), with the profile's `login.hosts` pointing at the simulator's two hosts. Every outcome
//! has its test: recovered, and each failure with its repair code.

use std::time::Duration;

use chainkeeper::app::recovery::Outcome;
use chainkeeper::chain::{ChainError, RepairCode};
use chainkeeper_e2e::container_path;
use chainkeeper_e2e::exact::{CLIENT_ID, ExactHarness, sim_user};
use exact_sim::{Fault, SignInBehaviour, SignInOutcome};
use serde_json::{Value, json};

fn recovery_path() -> String {
    format!("{}/auto-recovery", container_path("acme", "finance", "eol"))
}

async fn store_recovery(h: &ExactHarness, username: &str, password: &str, totp: &str) {
    let r = h
        .api
        .put(
            &recovery_path(),
            json!({"username": username, "password": password, "totp_secret": totp, "retention_days": 30}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn wait_for_status(h: &ExactHarness, want: &str) -> Value {
    let mut view = h.status().await;
    for _ in 0..100 {
        if view["status"] == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = h.status().await;
    }
    view
}

/// Breaks the chain the way the provider does: the grant revoked (or the user authorized again elsewhere).
async fn break_chain(h: &ExactHarness, how: &str) {
    match how {
        "revoked" => h.sim.revoke(CLIENT_ID, &h.user.user_id),
        _ => {
            let _ = h.sim.mint_tokens(CLIENT_ID, &h.user.user_id); // a second authorization kills ours
        }
    }
    h.advance(Duration::from_secs(601));
    let r = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(r.status, 409, "the chain broke: {}", r.body);
}

/// Waits until retries stopped with `code`; returns the container view.
async fn wait_for_stop(h: &ExactHarness, code: &str) -> Value {
    for _ in 0..100 {
        let view = h.status().await;
        if view["auto_recovery"]["stopped"] == code && view["chain"]["last_error"]["code"] == code {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.status().await
}

/// Asserts a stopped outcome everywhere a person looks: the chain, the repairs list (with its remedy), the audit.
async fn assert_stopped_with(h: &ExactHarness, code: &str, what: &str) {
    let view = wait_for_stop(h, code).await;
    assert_eq!(view["auto_recovery"]["stopped"], code, "{what}: {view}");
    assert_eq!(view["chain"]["last_error"]["code"], code, "{what}: {view}");
    assert_eq!(view["chain"]["generation"], 1, "{what}: no new chain");
    let repairs = h.api.get("/v1/orgs/acme/repairs").await;
    assert_eq!(repairs.body["repairs"][0]["code"], code, "{what}: {}", repairs.body);
    let remedy = repairs.body["repairs"][0]["remediation"].as_str().unwrap_or_default().to_string();
    assert!(remedy.contains("Auto-recovery"), "{what}: {remedy}");
    let audit = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
    let outcome = code.trim_start_matches("recovery_");
    assert!(audit.contains("auto_recovery.run") && audit.contains(outcome), "{what}: {audit}");
    // Stopped: however often the schedule runs, no further sign-in.
    let pages = h.sim.stats().sign_in.start_pages;
    assert_eq!(h.services.recovery.recover_container(&h.container, "test").await.unwrap(), Outcome::Stopped);
    assert_eq!(h.sim.stats().sign_in.start_pages, pages, "{what}: no sign-in after the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_superseded_chain_is_recovered_without_a_person() {
    for how in ["revoked", "second authorization"] {
        let h = ExactHarness::start(|_| {}).await;
        let user = h.user.clone();
        store_recovery(&h, &user.username, &user.password, user.totp_secret_base32.as_deref().unwrap()).await;
        if how == "revoked" {
            // B2C's occasional user-agent step between the password and the TOTP code is answered too.
            let b = SignInBehaviour { user_agent_step: true, ..Default::default() };
            h.sim.set_sign_in_behaviour(&user.username, b);
        }
        let view = h.status().await;
        assert_eq!(view["auto_recovery"]["configured"], true);
        assert_eq!(view["auto_recovery"]["totp"], true);
        assert!(view["auto_recovery"]["expires_at"].is_string());
        break_chain(&h, how).await;
        // The break starts a recovery run at once.
        let view = wait_for_status(&h, "healthy").await;
        assert_eq!(view["status"], "healthy", "{how}: recovered: {view}");
        assert_eq!(view["chain"]["generation"], 2, "{how}: a brand-new chain");
        let t = h.api.post(&h.token_path(), json!({})).await;
        assert_eq!(t.status, 200, "{how}: callers get valid tokens again: {}", t.body);
        let me = reqwest::Client::new()
            .get(format!("{}/api/v1/current/Me", h.sim.base_url))
            .bearer_auth(t.body["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200);
        let audit = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
        assert!(audit.contains("auto_recovery.run") && audit.contains("recovered"), "{how}: {audit}");
        // Through the real shape: the start page, then B2C; the password reached the B2C host only.
        let st = h.sim.stats().sign_in;
        assert_eq!(st.completed, 2, "{how}: the person's sign-in and the recovery's: {st:?}");
        assert_eq!(st.start_host.password_seen, 0, "{how}: {st:?}");
        assert!(st.b2c_host.password_seen >= 2 && st.b2c_host.code_submissions >= 2, "{how}: {st:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_chain_is_never_recovered() {
    let h = ExactHarness::start(|_| {}).await;
    let user = h.user.clone();
    store_recovery(&h, &user.username, &user.password, user.totp_secret_base32.as_deref().unwrap()).await;
    let codes = h.sim.stats().code_requests;
    h.api
        .post(&format!("{}/recover", container_path("acme", "finance", "eol")), json!({}))
        .await
        .assert_problem(409, "chain_healthy");
    let report = h.services.recovery.run_once().await.unwrap();
    assert_eq!(report.needs_repair, 0);
    assert_eq!(h.sim.stats().code_requests, codes, "no sign-in happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_stops_retries_at_once_and_says_so() {
    let h = ExactHarness::start(|_| {}).await;
    let user = h.user.clone();
    store_recovery(&h, &user.username, "not-the-password-PLANTED", user.totp_secret_base32.as_deref().unwrap()).await;
    break_chain(&h, "revoked").await;
    assert_stopped_with(&h, "recovery_password_rejected", "wrong password").await;
    assert!(h.sim.stats().sign_in.password_rejected >= 1);
    // Correct credentials restart it.
    store_recovery(&h, &user.username, &user.password, user.totp_secret_base32.as_deref().unwrap()).await;
    let r = h.services.recovery.recover_container(&h.container, "test").await.unwrap();
    assert_eq!(r, Outcome::Recovered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_totp_secret_stops_retries_as_totp_rejected() {
    let h = ExactHarness::start(|_| {}).await;
    let user = h.user.clone();
    store_recovery(&h, &user.username, &user.password, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").await;
    break_chain(&h, "revoked").await;
    assert_stopped_with(&h, "recovery_totp_rejected", "wrong TOTP secret").await;
    assert!(h.sim.stats().sign_in.code_rejected >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captcha_an_email_code_or_a_locked_account_asks_for_a_person() {
    for outcome in [
        SignInOutcome::Recaptcha,
        SignInOutcome::Hcaptcha,
        SignInOutcome::CloudflareChallenge,
        SignInOutcome::EmailCode,
        SignInOutcome::Locked,
    ] {
        let h = ExactHarness::start(|_| {}).await;
        let user = h.user.clone();
        store_recovery(&h, &user.username, &user.password, user.totp_secret_base32.as_deref().unwrap()).await;
        h.sim.set_sign_in_behaviour(&user.username, SignInBehaviour { outcome, ..Default::default() });
        break_chain(&h, "revoked").await;
        assert_stopped_with(&h, "recovery_verification_needed", &format!("{outcome:?}")).await;
        if outcome == SignInOutcome::EmailCode {
            assert_eq!(h.sim.stats().sign_in.email_code_pages, 1, "the e-mail-code page was reached, and left alone");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_sign_in_page_is_an_unsupported_step() {
    let h = ExactHarness::start(|_| {}).await;
    let user = h.user.clone();
    store_recovery(&h, &user.username, &user.password, user.totp_secret_base32.as_deref().unwrap()).await;
    h.sim.set_sign_in_behaviour(
        &user.username,
        SignInBehaviour { outcome: SignInOutcome::ChangedPage, ..Default::default() },
    );
    let before = h.sim.stats().sign_in.b2c_host.password_seen;
    break_chain(&h, "revoked").await;
    assert_stopped_with(&h, "recovery_unsupported_step", "changed page").await;
    assert_eq!(h.sim.stats().sign_in.b2c_host.password_seen, before, "no password into a page it does not know");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_a_host_outside_the_profiles_login_hosts() {
    // The profile lists the start host only: the redirect to B2C is where the driver stops.
    let h = ExactHarness::start_with(|_| {}, "login.hosts = [\"{start_host}\"]").await;
    let user = h.user.clone();
    store_recovery(&h, &user.username, &user.password, user.totp_secret_base32.as_deref().unwrap()).await;
    let b2c_before = h.sim.stats().sign_in.b2c_host.clone();
    let start_pages = h.sim.stats().sign_in.start_pages;
    break_chain(&h, "revoked").await;
    assert_stopped_with(&h, "recovery_unsupported_step", "B2C host not listed").await;
    let st = h.sim.stats().sign_in;
    assert_eq!(st.start_pages, start_pages + 1, "the driver did start: {st:?}");
    assert_eq!(st.b2c_host, b2c_before, "the B2C host got no request at all, so no password: {st:?}");
    assert_eq!(st.start_host.password_seen, 0, "{st:?}");
    let detail = h.status().await["chain"]["last_error"]["provider_said"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("login.hosts") && detail.contains(&h.sim.b2c_addr.to_string()), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_credentials_are_refused_and_audited() {
    let h = ExactHarness::start(|_| {}).await;
    let other = sim_user(2);
    store_recovery(&h, &other.username, &other.password, other.totp_secret_base32.as_deref().unwrap()).await;
    break_chain(&h, "revoked").await;
    for _ in 0..100 {
        if h.status().await["auto_recovery"]["stopped"] == "recovery_wrong_identity" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = h.status().await;
    assert_eq!(view["auto_recovery"]["stopped"], "recovery_wrong_identity", "{view}");
    assert_eq!(view["chain"]["last_error"]["code"], "recovery_wrong_identity");
    assert_eq!(view["chain"]["generation"], 1, "the other user's chain was not stored");
    assert_eq!(view["credential"]["user_id"], h.user.user_id.as_str());
    let audit = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(audit.contains("wrong_identity"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_bounded_per_hour() {
    let h = ExactHarness::start(|_| {}).await;
    // Broken, no recovery credentials yet (so the break itself starts nothing).
    h.services.engine.set_repair_code(&h.container, RepairCode::RefreshTokenSuperseded, "test").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let user = h.user.clone();
    store_recovery(&h, &user.username, &user.password, user.totp_secret_base32.as_deref().unwrap()).await;
    h.sim.fail_next_token_requests(10, Fault::ServiceUnavailable); // the code exchange fails: a transient failure
    let run = || h.services.recovery.recover_container(&h.container, "test");
    // Backing off between transient failures: 1 minute, then 4.
    for wait_s in [60, 240, 0] {
        assert_eq!(run().await.unwrap(), Outcome::ProviderUnreachable);
        let view = h.status().await;
        assert_eq!(view["chain"]["last_error"]["code"], "recovery_provider_unreachable", "{view}");
        assert_eq!(view["auto_recovery"]["stopped"], Value::Null, "a passing failure stops nothing");
        if wait_s > 0 {
            assert_eq!(run().await.unwrap(), Outcome::BackingOff);
            h.advance(Duration::from_secs(wait_s - 1));
            assert_eq!(run().await.unwrap(), Outcome::BackingOff);
            h.advance(Duration::from_secs(2));
        }
    }
    assert_eq!(run().await.unwrap(), Outcome::RateLimited);
    let repairs = h.api.get("/v1/orgs/acme/repairs").await;
    assert_eq!(repairs.body["repairs"][0]["code"], "recovery_provider_unreachable");
    h.sim.clear_faults();
    h.advance(Duration::from_secs(3_601));
    assert_eq!(h.services.recovery.recover_container(&h.container, "test").await.unwrap(), Outcome::Recovered);
    assert!(matches!(h.services.engine.access_token(&h.container).await, Ok(_) | Err(ChainError::RateLimited { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_credentials_expire_with_a_warning_three_days_before() {
    let h = ExactHarness::start(|_| {}).await;
    let user = h.user.clone();
    for bad in [
        json!({"username": "u", "password": "p", "retention_days": 0}),
        json!({"username": "u", "password": "p", "retention_days": 91}),
    ] {
        h.api.put(&recovery_path(), bad).await.assert_problem(400, "invalid_retention");
    }
    h.api
        .put(&recovery_path(), json!({"username": "u", "password": "p", "totp_secret": "not base32!"}))
        .await
        .assert_problem(400, "invalid_totp_secret");
    let r = h
        .api
        .put(&recovery_path(), json!({"username": user.username, "password": user.password, "retention_days": 5}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["retention_days"], 5);
    h.advance(Duration::from_secs(86_400));
    assert_eq!(h.services.recovery.run_once().await.unwrap().expiry_warnings, 0, "not yet");
    h.advance(Duration::from_secs(86_400 + 3_600));
    assert_eq!(h.services.recovery.run_once().await.unwrap().expiry_warnings, 1, "three days before");
    assert_eq!(h.services.recovery.run_once().await.unwrap().expiry_warnings, 0, "once");
    let audit = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(audit.contains("auto_recovery.expiring"), "{audit}");
    h.advance(Duration::from_secs(3 * 86_400));
    assert_eq!(h.status().await["auto_recovery"]["configured"], false, "deleted after the retention");
    assert!(h.services.recovery.run_once().await.unwrap().purged >= 1, "and purged from the embedded store");
    // DELETE removes them at once.
    h.api.put(&recovery_path(), json!({"username": user.username, "password": user.password})).await;
    assert_eq!(h.api.delete(&recovery_path()).await.status, 204);
    assert_eq!(h.status().await["auto_recovery"]["configured"], false);
}
