//! The chain engine against the Exact Online simulator: one active refresh token per app and user, rotation on
//! every use, 600 s access tokens (`expires_in` a string), the 570 s rule, 30-day idle expiry.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chainkeeper::chain::{ChainError, CrashPoint, Want};
use chainkeeper_e2e::container_path;
use chainkeeper_e2e::exact::{CLIENT_ID, ExactHarness};
use exact_sim::Fault;
use secrecy::ExposeSecret;
use serde_json::json;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

async fn me_status(h: &ExactHarness, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/api/v1/current/Me", h.sim.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_callers_on_a_cold_chain_cause_one_token_request() {
    let h = ExactHarness::start(|_| {}).await;
    h.advance(secs(601));
    let before = h.sim.stats();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let engine = h.services.engine.clone();
        let c = h.container.clone();
        tasks.push(tokio::spawn(async move { engine.access_token(&c).await }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let token = t.await.unwrap().expect("every caller gets a token");
        tokens.insert(token.token.expose_secret().to_string());
    }
    let after = h.sim.stats();
    assert_eq!(after.refresh_requests - before.refresh_requests, 1, "exactly one token request reached Exact");
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(after.invalid_grant, 0);
    assert_eq!(me_status(&h, tokens.iter().next().unwrap()).await, 200, "the token is valid");
    assert!(after.api_calls > before.api_calls, "the new token was activated with current/Me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_570_second_rule_is_never_broken() {
    let h = ExactHarness::start(|_| {}).await;
    let first = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // 545 s: inside the refresh margin, but Exact allows no new token before 570 s: the still-valid one.
    h.advance(secs(545));
    let r = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["access_token"], first.body["access_token"]);
    assert_eq!(h.sim.stats().refresh_requests, 0);
    // The caller kept a valid token: no refresh attempt, no wait counted.
    let figures = chainkeeper::metrics::prometheus_text();
    if own_process() {
        assert!(!figures.contains("rate_limited") && !figures.contains("rate_limit_waits"), "{figures}");
    }
    // 571 s: refreshed.
    h.advance(secs(26));
    let r = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.body["access_token"], first.body["access_token"]);
    assert_eq!(h.sim.stats().refresh_requests, 1);
    assert_eq!(h.sim.stats().rate_limited, 0, "Exact never had to refuse a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_inside_the_interval_gives_token_rate_limited_with_the_wait() {
    // Access tokens of 300 s with the 570 s rule: between 300 s and 570 s there is no valid token to give.
    let h = ExactHarness::start(|c| c.access_token_lifetime = secs(300)).await;
    h.advance(secs(301));
    let r = h.api.post(&h.token_path(), json!({})).await;
    r.assert_problem(429, "token_rate_limited");
    let wait = r.body["retry_after"].as_u64().unwrap();
    assert!((268..=270).contains(&wait), "the wait is counted to the 570 s mark: {wait}");
    assert_eq!(r.headers["retry-after"].to_str().unwrap(), wait.to_string());
    assert!(r.body["detail"].as_str().unwrap().contains("eol"), "the detail names the container");
    assert_eq!(h.sim.stats().refresh_requests, 0);
    h.advance(secs(wait));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200);
    // The figures: one refresh held back by the interval (the caller had to wait), then one that worked.
    let figures = chainkeeper::metrics::prometheus_text();
    for line in [
        "chainkeeper_refresh_outcome_total{outcome=\"rate_limited\",provider=\"exact-online-nl\"} 1\n",
        "chainkeeper_rate_limit_waits_total{provider=\"exact-online-nl\"} 1\n",
        "chainkeeper_refresh_outcome_total{outcome=\"ok\",provider=\"exact-online-nl\"} 1\n",
    ] {
        assert!(!own_process() || figures.contains(line), "{line} in\n{figures}");
    }
}

/// Whether this test has the process (and the metrics registry, which is per process) to itself: nextest runs
/// each test in its own process; `cargo test` runs them side by side in one.
fn own_process() -> bool {
    std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exacts_rate_answer_keeps_the_chain_and_stops_retries() {
    // A profile that forgot the 570 s rule: Exact refuses, chainkeeper keeps the chain and backs off.
    let h = ExactHarness::start_with(|c| c.access_token_lifetime = secs(120), "min_token_interval_s = 0").await;
    h.advance(secs(100));
    let r = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(r.status, 200, "the still-valid token: {}", r.body);
    assert_eq!(h.sim.stats().rate_limited, 1);
    h.advance(secs(5));
    let _ = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(h.sim.stats().rate_limited, 1, "no second try inside the backoff");
    assert_eq!(h.status().await["status"], "healthy");
    h.advance(secs(470));
    let r = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(r.status, 200, "the refresh token was not rotated by the refusal: {}", r.body);
    assert_eq!(h.sim.stats().refresh_requests, 2);
    assert_eq!(h.sim.stats().invalid_grant, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_chain_needs_repair_is_listed_and_is_not_retried() {
    let h = ExactHarness::start(|_| {}).await;
    h.sim.revoke(CLIENT_ID, &h.user.user_id);
    h.advance(secs(601));
    let r = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let code = r.body["code"].as_str().unwrap().to_string();
    assert!(code == "refresh_token_superseded" || code == "refresh_token_invalid", "{code}");
    assert!(r.body["detail"].as_str().unwrap().contains("authorize"), "says how to repair: {}", r.body);
    let requests = h.sim.stats().token_requests;
    for _ in 0..5 {
        assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 409);
    }
    assert_eq!(h.sim.stats().token_requests, requests, "a broken chain is not retried against Exact");
    let view = h.status().await;
    assert_eq!(view["status"], "needs_repair");
    assert_eq!(view["chain"]["last_error"]["code"], code.as_str());
    let log = chainkeeper_e2e::exact::captured_log();
    assert!(log.contains("chain needs repair") && log.contains(&code), "the break is logged, structured: {log}");
    assert_eq!(view["chain"]["history"].as_array().unwrap().last().unwrap()["status"], "needs_repair");
    let repairs = h.api.get("/v1/orgs/acme/repairs").await;
    assert_eq!(repairs.body["count"], 1, "{}", repairs.body);
    assert_eq!(repairs.body["repairs"][0]["alias"], "eol");
    let renew = repairs.body["repairs"][0]["renew"]["url"].as_str().unwrap();
    assert!(renew.ends_with(&format!("{}/authorize", container_path("acme", "finance", "eol"))), "{renew}");
    // The renew link repairs exactly this container.
    let user = h.user.clone();
    assert_eq!(h.authorize("acme", "finance", "eol", &user).await.status, 200);
    assert_eq!(h.status().await["status"], "healthy");
    assert_eq!(h.api.get("/v1/orgs/acme/repairs").await.body["count"], 0);
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_keeps_an_unused_chain_alive_past_thirty_days_and_is_idempotent() {
    let h = ExactHarness::start(|_| {}).await;
    for month in 0..3 {
        h.advance(Duration::from_secs(29 * 86_400 + 43_200));
        let first = h.services.sweep.run_once(100).await.unwrap();
        assert_eq!(first.refreshed, 1, "month {month}: kept alive: {first:?}");
        let again = h.services.sweep.run_once(100).await.unwrap();
        assert_eq!(again.refreshed, 0, "month {month}: a second event refreshes nothing");
    }
    assert_eq!(h.sim.stats().refresh_requests, 3);
    h.advance(secs(601));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200, "alive after 88 days");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_refreshes_chains_in_active_use_ahead_of_expiry() {
    let h = ExactHarness::start(|_| {}).await;
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200); // in use
    tokio::time::sleep(Duration::from_millis(100)).await; // the usage note is written in the background
    h.advance(secs(560));
    let r = h.services.sweep.run_once(100).await.unwrap();
    assert_eq!(r.refreshed, 0, "not before 570 s: {r:?}");
    h.advance(secs(11));
    let r = h.services.sweep.run_once(100).await.unwrap();
    assert_eq!(r.refreshed, 1, "{r:?}");
    let requests = h.sim.stats().token_requests;
    h.advance(secs(100));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200);
    assert_eq!(h.sim.stats().token_requests, requests, "callers found a fresh token: no refresh on their path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_request_breaks_nothing() {
    let h = ExactHarness::start(|_| {}).await;
    h.advance(secs(601));
    h.services.engine.crash_next_refresh_at(CrashPoint::BeforeRequest);
    assert!(h.services.engine.access_token(&h.container).await.is_err());
    // The lease runs out; the interval is counted from the (possible) request.
    h.advance(secs(31));
    assert!(matches!(h.services.engine.access_token(&h.container).await, Err(ChainError::RateLimited { .. })));
    h.advance(secs(571));
    let t = h.services.engine.access_token(&h.container).await.expect("the chain is intact");
    assert_eq!(me_status(&h, t.token.expose_secret()).await, 200);
    assert_eq!(h.sim.stats().refresh_requests, 1);
    assert_eq!(h.sim.stats().invalid_grant, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_answer_is_reported_as_a_lost_response() {
    let h = ExactHarness::start(|_| {}).await;
    h.advance(secs(601));
    h.services.engine.crash_next_refresh_at(CrashPoint::AfterAnswer);
    assert!(h.services.engine.access_token(&h.container).await.is_err());
    // Exact rotated the token; the answer died with the process. The old token is tried once, then the chain
    // says precisely what happened.
    h.advance(secs(31 + 571));
    match h.services.engine.access_token(&h.container).await {
        Err(ChainError::NeedsRepair { code, .. }) => assert_eq!(code.code(), "refresh_response_lost"),
        other => panic!("expected needs_repair: {other:?}"),
    }
    assert_eq!(h.status().await["chain"]["last_error"]["code"], "refresh_response_lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_write_before_activation_is_repaired_by_the_next_refresh() {
    let h = ExactHarness::start(|c| c.require_activation = true).await;
    h.advance(secs(601));
    h.services.engine.crash_next_refresh_at(CrashPoint::AfterWrite);
    assert!(h.services.engine.access_token(&h.container).await.is_err());
    // The new tokens were written: the next caller has a token without asking Exact.
    let requests = h.sim.stats().token_requests;
    let t = h.services.engine.access_token(&h.container).await.expect("written before use");
    assert_eq!(h.sim.stats().token_requests, requests);
    drop(t);
    // The next refresh activates first, so Exact accepts the never-activated refresh token.
    h.advance(secs(571));
    h.services.engine.access_token(&h.container).await.expect("refresh after a missed activation");
    assert_eq!(h.sim.stats().invalid_grant, 0);
    h.advance(secs(571));
    h.services.engine.access_token(&h.container).await.expect("and the chain goes on");
    assert_eq!(h.status().await["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outages_keep_the_chain_and_back_off() {
    let h = ExactHarness::start_full(|_| {}, "retry_budget_s = 0.3", "").await;
    h.advance(secs(601));
    // An outage longer than the retry budget (a single 503 is absorbed: `provider_faults.rs`).
    h.sim.unavailable_for_real(Duration::from_secs(2));
    let r = h.api.post(&h.token_path(), json!({})).await;
    r.assert_problem(503, "provider_unavailable");
    assert!(r.body["retry_after"].as_u64().unwrap() >= 1);
    let requests = h.sim.stats().token_requests;
    h.api.post(&h.token_path(), json!({})).await.assert_problem(503, "provider_unavailable");
    assert_eq!(h.sim.stats().token_requests, requests, "one attempt per backoff window");
    assert_eq!(h.status().await["status"], "healthy");
    h.sim.clear_faults();
    h.advance(secs(7));
    let r = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(r.status, 200, "after the backoff, without waiting out 570 s again: {}", r.body);

    // 429 from the token endpoint: transient too.
    h.advance(secs(601));
    h.sim.fail_next_token_requests(1, Fault::TooManyRequests { retry_after_s: 30 });
    let r = h.api.post(&h.token_path(), json!({})).await;
    r.assert_problem(503, "provider_unavailable");
    assert!(r.body["retry_after"].as_u64().unwrap() >= 30, "the provider's Retry-After is kept: {}", r.body);
    h.advance(secs(31));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200);
    assert_eq!(h.sim.stats().invalid_grant, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_write_failures_never_lose_a_received_refresh_token() {
    let h = ExactHarness::start(|_| {}).await;
    h.advance(secs(601));
    // The lease write succeeds; then every write fails: the persist (6 tries) and the rescue slot.
    h.store.skip_then_fail(1, 7);
    let t = h.services.engine.obtain(&h.container, Want::Valid).await.expect("the caller still gets the new token");
    assert!(t.is_some());
    assert_eq!(h.services.engine.stats.rescues_written.load(Ordering::SeqCst), 1);
    // The store still holds the old (now dead) refresh token; the process kept the new one in memory.
    h.advance(secs(31 + 571));
    h.services.engine.access_token(&h.container).await.expect("the in-memory rescue saves the chain");
    assert_eq!(h.sim.stats().invalid_grant, 0, "the dead token was never tried first");
    assert_eq!(h.status().await["status"], "healthy");

    // Persist fails, rescue slot written: another process finds the token there.
    h.advance(secs(571));
    h.store.skip_then_fail(1, 6);
    h.services.engine.obtain(&h.container, Want::Valid).await.expect("token");
    let other = chainkeeper::wiring::embedded(
        &chainkeeper::wiring::DataDir::open(h.dir.path()).unwrap(),
        (*h.services.config).clone(),
        Arc::new(h.clock.clone()),
    )
    .unwrap();
    h.advance(secs(31 + 571));
    other.engine.access_token(&h.container).await.expect("the rescue slot saves the chain in another process");
    assert_eq!(other.engine.stats.rescues_used.load(Ordering::SeqCst), 1);
    assert_eq!(h.sim.stats().invalid_grant, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_left_too_long_expires() {
    let h = ExactHarness::start(|_| {}).await;
    let r = h.api.post(&format!("{}/authorize", container_path("acme", "finance", "eol")), json!({})).await;
    let url = r.body["authorize_url"].as_str().unwrap().to_string();
    let back = exact_sim::browser::login(
        &url,
        &h.user.username,
        &h.user.password,
        h.sim.totp_now(&h.user.username).as_deref(),
    )
    .await
    .unwrap();
    // The person took eleven minutes: the state (10 minutes) is gone, even though the code itself were valid.
    h.advance(secs(11 * 60));
    h.api.with_token("").get(&back).await.assert_problem(400, "authorization_state_invalid");
    assert_eq!(h.status().await["chain"]["generation"], 1, "the chain was not replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_left_unused_for_thirty_days_is_reported_expired() {
    let h = ExactHarness::start(|_| {}).await;
    // No sweep ran (as if the scheduler was off for a month).
    h.advance(Duration::from_secs(31 * 86_400));
    let r = h.api.post(&h.token_path(), json!({})).await;
    r.assert_problem(409, "refresh_token_expired");
    assert!(r.body["detail"].as_str().unwrap().contains("expired unused"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_keeps_the_chain_and_backs_off() {
    let h = ExactHarness::start(|_| {}).await;
    // A second process whose app registration has the wrong secret.
    let mut config = (*h.services.config).clone();
    config.apps.get_mut("exact-online-nl").unwrap().client_secret = secrecy::SecretString::from("wrong".to_string());
    let other = chainkeeper::wiring::embedded(
        &chainkeeper::wiring::DataDir::open(h.dir.path()).unwrap(),
        config,
        Arc::new(h.clock.clone()),
    )
    .unwrap();
    h.advance(secs(601));
    assert!(matches!(other.engine.access_token(&h.container).await, Err(ChainError::InvalidClient(_))));
    let requests = h.sim.stats().token_requests;
    assert!(other.engine.access_token(&h.container).await.is_err());
    assert_eq!(h.sim.stats().token_requests, requests, "no retry inside the backoff");
    let view = h.status().await;
    assert_eq!(view["status"], "healthy", "the chain itself is fine: {view}");
    assert_eq!(view["chain"]["last_error"]["code"], "invalid_client");
    // The right registration refreshes as soon as the backoff is over.
    h.advance(secs(301));
    h.services.engine.access_token(&h.container).await.expect("the chain was never broken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_token_hand_out_does_no_key_work() {
    let h = ExactHarness::start(|_| {}).await;
    h.services.engine.access_token(&h.container).await.unwrap(); // warms the data-key cache
    let before = h.keys.calls();
    for _ in 0..100 {
        h.services.engine.access_token(&h.container).await.unwrap();
    }
    assert_eq!(h.keys.calls(), before, "no key-file (or KMS) call on the warm path");
}
