//! Webhooks: a signed JSON event when a chain needs repair and when it recovered.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use chainkeeper::store::Store;
use chainkeeper_e2e::exact::{CLIENT_ID, ExactHarness};
use serde_json::{Value, json};

use chainkeeper_e2e::webhook_receiver::Received;

/// A receiver on loopback; its URL's path holds a planted secret (a webhook URL is a secret: the harness checks
/// that no reply and no log line shows it).
async fn receiver() -> (String, Received) {
    receiver_at("127.0.0.1").await
}

async fn receiver_at(host: &str) -> (String, Received) {
    chainkeeper_e2e::webhook_receiver::start(host, "/hook/PLANTED-receiver-key").await
}

async fn wait_for(got: &Received, n: usize) -> Vec<(HeaderMap, Bytes)> {
    for _ in 0..100 {
        if got.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_when_a_chain_breaks_and_recovers() {
    // Private addresses are refused by default; this deployment allows them (the receiver is on loopback).
    let h = ExactHarness::start_full(|_| {}, "", "").await;
    let (url, got) = receiver().await;
    h.api.put("/v1/orgs/acme/webhook", json!({"url": url})).await.assert_problem(400, "invalid_webhook_url");
    drop(h);

    let h = ExactHarness::start_server_config(|_| {}, ALLOW_LOOPBACK).await;
    let r = h.api.put("/v1/orgs/acme/webhook", json!({"url": url})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let masked = url.split("/hook").next().unwrap().to_string() + "/…";
    assert_eq!(r.body["url"], masked.as_str(), "the URL is shown masked");
    let secret = r.body["secret"].as_str().unwrap().to_string();
    assert_eq!(h.api.get("/v1/orgs/acme").await.body["webhook_url"], masked.as_str());
    let stored = h.store.get(&chainkeeper::records::org_key(&h.container.org)).await.unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&stored.body).contains("PLANTED"), "the URL is sealed at rest");
    assert!(!h.api.get("/v1/orgs/acme").await.body.to_string().contains(&secret), "the secret is shown once");

    h.sim.revoke(CLIENT_ID, &h.user.user_id);
    h.advance(Duration::from_secs(601));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 409);
    let events = wait_for(&got, 1).await;
    assert_eq!(events.len(), 1, "one event for one break");
    let (headers, body) = &events[0];
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["type"], "chain.needs_repair");
    assert_eq!(event["organisation"], "acme");
    assert_eq!(event["container"], "eol");
    assert!(event["code"].as_str().unwrap().starts_with("refresh_token_"), "{event}");
    assert_eq!(headers["x-chainkeeper-event"], "chain.needs_repair");
    let sig = headers["x-chainkeeper-signature"].to_str().unwrap();
    let t: i64 = sig.split(',').next().unwrap().trim_start_matches("t=").parse().unwrap();
    assert_eq!(
        sig,
        chainkeeper::app::webhooks::signature(secret.as_bytes(), t, body),
        "HMAC-SHA256 over t.body with the secret"
    );
    assert_ne!(sig, chainkeeper::app::webhooks::signature(b"another secret", t, body));

    let user = h.user.clone();
    assert_eq!(h.authorize("acme", "finance", "eol", &user).await.status, 200);
    let events = wait_for(&got, 2).await;
    let recovered: Value = serde_json::from_slice(&events[1].1).unwrap();
    assert_eq!(recovered["type"], "chain.recovered");
    let audit = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(audit.contains("webhook.deliver") && audit.contains(&masked), "{audit}");
}

/// The operator's allowance for the loopback receiver (tests): plain http and a private address, for this host only.
const ALLOW_LOOPBACK: &str =
    "\n[webhooks]\nallow_http_hosts = [\"127.0.0.1\"]\nallow_private_hosts = [\"127.0.0.1\"]\n";

/// Breaks the chain at the provider (a `chain.needs_repair` event to deliver) and returns the audit log once it
/// holds the delivery's entry (or after 5 s).
async fn break_the_chain_and_read_the_delivery_audit(h: &ExactHarness) -> String {
    h.sim.revoke(CLIENT_ID, &h.user.user_id);
    h.advance(Duration::from_secs(601));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 409);
    let mut audit = String::new();
    for _ in 0..100 {
        audit = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
        if audit.contains("webhook.deliver") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    audit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_never_reach_inside_without_the_operators_allowance() {
    // Plain http is allowed for `localhost`, private addresses are not: the registration (which does not
    // resolve names) takes the URL, the delivery resolves `localhost` to loopback and refuses to send.
    let h = ExactHarness::start_server_config(|_| {}, "\n[webhooks]\nallow_http_hosts = [\"localhost\"]\n").await;
    let (url, got) = receiver_at("localhost").await;
    for refused in [
        "http://hooks.example.com/hook",
        "https://127.0.0.1/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[64:ff9b::a9fe:a9fe]/latest/meta-data",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.1/hook",
        "https://2130706433/hook",
        "https://user:pw@hooks.example.com/hook",
    ] {
        h.api.put("/v1/orgs/acme/webhook", json!({"url": refused})).await.assert_problem(400, "invalid_webhook_url");
    }
    let r = h.api.put("/v1/orgs/acme/webhook", json!({"url": url})).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let audit = break_the_chain_and_read_the_delivery_audit(&h).await;
    assert!(audit.contains("failed") && audit.contains("a loopback address"), "a failed delivery, with why: {audit}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(got.lock().unwrap().is_empty(), "nothing reached the loopback receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_fails_is_audited_with_why_and_without_the_url() {
    let h = ExactHarness::start_server_config(|_| {}, ALLOW_LOOPBACK).await;
    // A receiver that is gone: nothing listens on its port any more.
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/hook/PLANTED-receiver-key");
    assert_eq!(h.api.put("/v1/orgs/acme/webhook", json!({"url": url})).await.status, 200);
    let audit = break_the_chain_and_read_the_delivery_audit(&h).await;
    assert!(audit.contains("three tries failed") && audit.contains("failed"), "{audit}");
    assert!(!audit.contains("PLANTED"), "the audit never shows the URL: {audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_auto_recovery_is_an_event_with_its_code_and_remedy() {
    let h = ExactHarness::start_server_config(|_| {}, ALLOW_LOOPBACK).await;
    let (url, got) = receiver().await;
    assert_eq!(h.api.put("/v1/orgs/acme/webhook", json!({"url": url})).await.status, 200);
    let user = h.user.clone();
    let path = format!("{}/auto-recovery", chainkeeper_e2e::container_path("acme", "finance", "eol"));
    let stored =
        json!({"username": user.username, "password": "stale-PLANTED", "totp_secret": user.totp_secret_base32});
    assert_eq!(h.api.put(&path, stored).await.status, 200);
    h.sim.revoke(CLIENT_ID, &h.user.user_id);
    h.advance(Duration::from_secs(601));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 409);
    // The break, then the recovery's refused sign-in: two events, in either order.
    let events: Vec<Value> =
        wait_for(&got, 2).await.iter().map(|(_, body)| serde_json::from_slice(body).unwrap()).collect();
    let failed = events.iter().find(|e| e["code"] == "recovery_password_rejected");
    let failed = failed.unwrap_or_else(|| panic!("an event for the refused password: {events:?}"));
    assert_eq!(failed["type"], "chain.needs_repair");
    let remedy = failed["remediation"].as_str().unwrap();
    assert!(remedy.contains("PUT …/auto-recovery") && !remedy.contains("PLANTED"), "{remedy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_chooses_event_types_as_the_console_does() {
    let h = ExactHarness::start_server_config(|_| {}, ALLOW_LOOPBACK).await;
    let (url, got) = receiver().await;
    let r = h.api.put("/v1/orgs/acme/webhook", json!({"url": url, "events": ["chain.nope"]})).await;
    r.assert_problem(400, "invalid_body");
    let r = h.api.put("/v1/orgs/acme/webhook", json!({"url": url})).await;
    assert_eq!(r.body["events"].as_array().map(Vec::len), Some(3), "every event type when none is named: {}", r.body);
    let r = h.api.put("/v1/orgs/acme/webhook", json!({"url": url, "events": ["chain.recovered"]})).await;
    assert_eq!((r.status, &r.body["events"]), (200, &json!(["chain.recovered"])), "{}", r.body);

    h.sim.revoke(CLIENT_ID, &h.user.user_id);
    h.advance(Duration::from_secs(601));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 409);
    let user = h.user.clone();
    assert_eq!(h.authorize("acme", "finance", "eol", &user).await.status, 200);
    let events = wait_for(&got, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kinds: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["chain.recovered"], "the break was not delivered, the recovery was: {events:?}");
}
