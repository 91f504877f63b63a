//! Auto-recovery: a broken chain repaired without a person, by signing in with stored credentials.

use std::time::Duration;

use chainkeeper::app::recovery::Outcome;
use chainkeeper::chain::{ChainError, RepairCode};
use chainkeeper_e2e::container_path;
use chainkeeper_e2e::exact::{CLIENT_ID, ExactHarness, sim_user};
use exact_sim::Fault;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_superseded_chain_is_recovered_without_a_person() {
    for how in ["revoked", "second authorization"] {
        let h = ExactHarness::start(|_| {}).await;
        let user = h.user.clone();
        store_recovery(&h, &user.username, &user.password, user.totp_secret_base32.as_deref().unwrap()).await;
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
    let view = wait_for_status(&h, "needs_repair").await;
    for _ in 0..50 {
        if h.status().await["chain"]["last_error"]["code"] == "recovery_credentials_invalid" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view =
        if view["chain"]["last_error"]["code"] == "recovery_credentials_invalid" { view } else { h.status().await };
    assert_eq!(view["chain"]["last_error"]["code"], "recovery_credentials_invalid", "{view}");
    assert_eq!(view["auto_recovery"]["stopped"], "recovery_credentials_invalid");
    // No more attempts, however often the schedule runs.
    for _ in 0..3 {
        let r = h.services.recovery.recover_container(&h.container, "test").await.unwrap();
        assert_eq!(r, Outcome::Stopped);
    }
    let repairs = h.api.get("/v1/orgs/acme/repairs").await;
    assert_eq!(repairs.body["repairs"][0]["code"], "recovery_credentials_invalid");
    // Correct credentials restart it.
    store_recovery(&h, &user.username, &user.password, user.totp_secret_base32.as_deref().unwrap()).await;
    let r = h.services.recovery.recover_container(&h.container, "test").await.unwrap();
    assert_eq!(r, Outcome::Recovered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_totp_secret_is_reported_as_wrong_credentials() {
    let h = ExactHarness::start(|_| {}).await;
    let user = h.user.clone();
    store_recovery(&h, &user.username, &user.password, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").await;
    break_chain(&h, "revoked").await;
    for _ in 0..100 {
        if h.status().await["auto_recovery"]["stopped"] == "recovery_credentials_invalid" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.status().await["auto_recovery"]["stopped"], "recovery_credentials_invalid");
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
    for _ in 0..3 {
        assert_eq!(h.services.recovery.recover_container(&h.container, "test").await.unwrap(), Outcome::Failed);
    }
    assert_eq!(h.services.recovery.recover_container(&h.container, "test").await.unwrap(), Outcome::RateLimited);
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
