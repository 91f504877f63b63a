//! The console's API-token, webhook, audit-log and platform pages over HTTP (the browser scenario in
//! `console_browser.rs` drives them in Chromium): each needs the scope of the API route it stands for, bad input
//! comes back next to its field with nothing stored, and a webhook receives only the event types chosen.

use std::time::Duration;

use chainkeeper::ids::OrgId;
use chainkeeper_e2e::console::{Browser, Page};
use chainkeeper_e2e::exact::{CLIENT_ID, ExactHarness};
use chainkeeper_e2e::{Api, Serve, issue_token};
use serde_json::json;

struct Setup {
    serve: Serve,
    api: Api,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn browser(&self, owner: &[&str], scopes: &[&str]) -> Browser {
        let b = Browser::new(&self.serve.base);
        let signed = b.sign_in_with_link(self.dir.path(), None, owner, scopes).await;
        assert_eq!(signed.status, 303, "{}", signed.body);
        b
    }
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), None).await.unwrap();
    let api = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    for org in ["acme", "other"] {
        assert_eq!(api.post("/v1/orgs", json!({"name": org})).await.status, 201);
    }
    Setup { serve, api, dir }
}

fn assert_status(p: &Page, status: u16, what: &str) {
    assert_eq!(p.status, status, "{what}: {}", p.body);
}

/// The text of the element with `id` (a field's problem, the new token), tags stripped.
fn text_of(p: &Page, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let Some(at) = p.body.find(&marker) else { return String::new() };
    let rest = &p.body[at..];
    let start = rest.find('>').map_or(0, |i| i + 1);
    let end = rest[start..].find("</").map_or(rest.len(), |i| start + i);
    rest[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_needs_the_scope_of_its_api_route() {
    let s = setup().await;
    let tokens = "/console/orgs/acme/api-tokens";
    // Tokens: listing needs tokens.read; creating and revoking tokens.readwrite.
    let reader = s.browser(&["--org", "acme"], &["api-tokens.read", "orgs.read"]).await;
    let page = reader.get(tokens).await;
    assert_status(&page, 200, "api-tokens.read lists");
    assert!(!page.body.contains("Create token"), "no form it cannot use");
    let org = reader.get("/console/orgs/acme").await;
    assert!(org.body.contains("/console/orgs/acme/api-tokens"), "the organisation page links to what it may open");
    assert!(!org.body.contains("/console/orgs/acme/webhook") && !org.body.contains("/console/orgs/acme/audit"));
    let refused = reader.post(tokens, tokens, &[("subject", "x"), ("scopes", "api-tokens.read"), ("days", "1")]).await;
    assert_status(&refused, 403, "api-tokens.read may not create");
    assert!(refused.body.contains("api-tokens.readwrite"), "{}", refused.body);
    assert_eq!(s.api.get("/v1/orgs/acme/api-tokens").await.body["api_tokens"], json!([]));
    let none = s.browser(&["--org", "acme"], &["containers.read"]).await;
    assert_status(&none.get(tokens).await, 403, "no api-tokens scope");
    // Webhook: webhooks.readwrite (who may set it sees and tests it); audit: audit.read.
    assert_status(&reader.get("/console/orgs/acme/webhook").await, 403, "no webhooks scope");
    assert_status(&reader.get("/console/orgs/acme/audit").await, 403, "no audit scope");
    let auditor = s.browser(&["--org", "acme"], &["audit.read"]).await;
    assert_status(&auditor.get("/console/orgs/acme/audit").await, 200, "audit.read");
    // Another organisation's pages, and the platform page, are not an organisation's.
    let admin = s.browser(&["--org", "acme"], &["admin"]).await;
    assert_status(&admin.get("/console/orgs/other/api-tokens").await, 403, "another organisation");
    assert_status(&admin.get("/console/orgs/other/audit").await, 403, "another organisation");
    assert_status(&admin.get("/console/platform").await, 403, "platform page");
    // Platform operators see every organisation.
    let platform = s.browser(&["--platform"], &["admin"]).await;
    let all = platform.get("/console/platform").await;
    assert_status(&all, 200, "platform page");
    assert!(all.body.contains("/console/orgs/acme") && all.body.contains("/console/orgs/other"), "{}", all.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_bounded_by_the_session_shown_once_and_revoked() {
    let s = setup().await;
    let tokens = "/console/orgs/acme/api-tokens";
    let b = s.browser(&["--org", "acme"], &["api-tokens.readwrite", "containers.read"]).await;
    // More than the session holds: refused next to the field, what was typed kept, nothing stored.
    let more =
        b.post(tokens, tokens, &[("subject", "bi-tool"), ("scopes", "containers.readwrite"), ("days", "30")]).await;
    assert_status(&more, 403, "escalation");
    assert!(text_of(&more, "tok-scopes-error").contains("containers.readwrite"), "{}", more.body);
    assert!(more.body.contains("value=\"bi-tool\""), "the name is kept: {}", more.body);
    for (fields, id, what) in [
        ([("subject", ""), ("scopes", "containers.read"), ("days", "30")], "tok-subject-error", "empty name"),
        ([("subject", &"n".repeat(121)), ("scopes", "containers.read"), ("days", "30")], "tok-subject-error", "long"),
        ([("subject", "x"), ("scopes", ""), ("days", "30")], "tok-scopes-error", "no scopes"),
        ([("subject", "x"), ("scopes", "containers.read"), ("days", "731")], "tok-days-error", "731 days"),
        ([("subject", "x"), ("scopes", "containers.read"), ("days", "soon")], "tok-days-error", "not a number"),
    ] {
        let p = b.post(tokens, tokens, &fields).await;
        assert_status(&p, 422, what);
        assert!(!text_of(&p, id).is_empty(), "{what}: a problem next to the field: {}", p.body);
        assert!(p.body.contains(&format!("aria-describedby=\"{id}")), "{what}: {}", p.body);
    }
    assert_eq!(s.api.get("/v1/orgs/acme/api-tokens").await.body["api_tokens"], json!([]), "nothing stored");
    // Within the session's scopes: created, shown once, bounded to 30 days.
    let made = b.post(tokens, tokens, &[("subject", "bi-tool"), ("scopes", "containers.read"), ("days", "30")]).await;
    assert_status(&made, 201, "created");
    let token = text_of(&made, "new-token");
    assert!(token.len() > 40, "{}", made.body);
    let listed = s.api.get("/v1/orgs/acme/api-tokens").await.body;
    let rec = &listed["api_tokens"][0];
    assert_eq!(rec["scopes"], json!(["containers.read"]));
    assert_eq!(rec["issued_by"], "link:operator", "the person who made it: {listed}");
    let tool = Api::new(&s.serve.base, &token);
    assert_eq!(tool.get("/v1/orgs/acme/databases").await.status, 403, "only what it was given");
    assert_eq!(tool.get("/v1/orgs/acme/audit").await.status, 403);
    let again = b.get(tokens).await;
    assert!(!again.body.contains(&token), "shown once only");
    // Revoked from the console: the API refuses it at once.
    let id = rec["id"].as_str().unwrap();
    let gone = b.post(tokens, &format!("{tokens}/{id}/revoke"), &[]).await;
    assert_status(&gone, 303, "revoked");
    let refused = tool.get("/v1/orgs/acme/databases/x/containers").await;
    refused.assert_problem(401, "unauthorized");
    let audit = s.api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(audit.contains("api_token.issue") && audit.contains("api_token.revoke"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_filter_and_paging() {
    let s = setup().await;
    for i in 0..60 {
        assert_eq!(s.api.post("/v1/orgs/acme/databases", json!({"name": format!("db{i}")})).await.status, 201);
    }
    let b = s.browser(&["--org", "acme"], &["admin"]).await;
    let first = b.get("/console/orgs/acme/audit?action=database").await;
    assert_status(&first, 200, "filtered");
    assert_eq!(first.body.matches("<td>database.create</td>").count(), 50, "a page of 50: {}", first.body);
    assert!(!first.body.contains("org.create"), "filtered");
    let next = first.body.split("href=\"").find(|h| h.contains("cursor=")).expect("an Older entries link");
    let next = next.split('"').next().unwrap().replace("&amp;", "&");
    let second = b.get(&next).await;
    assert_status(&second, 200, "second page");
    assert_eq!(second.body.matches("<td>database.create</td>").count(), 10, "the rest");
    assert!(!second.body.contains("cursor="), "the last page");
    // Bad input: next to its field, or a clear page for a broken link.
    let long = b.get(&format!("/console/orgs/acme/audit?action={}", "a".repeat(101))).await;
    assert_status(&long, 422, "too long");
    assert!(!text_of(&long, "audit-action-error").is_empty(), "{}", long.body);
    let outcome = b.get("/console/orgs/acme/audit?outcome=maybe").await;
    assert_status(&outcome, 422, "unknown outcome");
    assert!(!text_of(&outcome, "audit-outcome-error").is_empty(), "{}", outcome.body);
    let cursor = b.get("/console/orgs/acme/audit?cursor=%21%21not-a-cursor").await;
    assert_status(&cursor, 400, "a forged cursor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receives_only_the_event_types_chosen() {
    let h = ExactHarness::start_server_config(
        |_| {},
        "\n[webhooks]\nallow_http_hosts = [\"127.0.0.1\"]\nallow_private_hosts = [\"127.0.0.1\"]\n",
    )
    .await;
    let (url, got) = chainkeeper_e2e::webhook_receiver::start("127.0.0.1", "/hook").await;
    let org = OrgId::parse("acme").unwrap();
    let webhooks = &h.services.webhooks;
    let unknown = webhooks.register_for(&org, "t", &url, Some(vec!["chain.exploded".into()])).await;
    assert!(unknown.is_err(), "an unknown event type is refused");
    webhooks.register_for(&org, "t", &url, Some(vec!["chain.recovered".into()])).await.unwrap();
    // A test event goes whatever was chosen.
    let sent = webhooks.send_test(&org, "t").await.unwrap();
    assert_eq!(sent, chainkeeper::app::webhooks::TestDelivery::Delivered);
    // The chain breaks: chain.needs_repair was not chosen, so nothing is sent.
    h.sim.revoke(CLIENT_ID, &h.user.user_id);
    h.advance(Duration::from_secs(601));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 409);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kinds: Vec<String> =
        got.lock().unwrap().iter().map(|(hd, _)| hd["x-chainkeeper-event"].to_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["webhook.test"], "only the test event");
    // Set again through the API (every event type): the break's event goes.
    let r = h.api.put("/v1/orgs/acme/webhook", json!({"url": url})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    webhooks.chain_event("chain.needs_repair", &h.container, None);
    for _ in 0..100 {
        if got.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = got.lock().unwrap().last().map(|(hd, _)| hd["x-chainkeeper-event"].to_str().unwrap().to_string());
    assert_eq!(last.as_deref(), Some("chain.needs_repair"));
    // A receiver that is not there: the test says so, in words that name no part of the URL.
    let closed = format!("http://127.0.0.1:{}/hook-secret-path", chainkeeper_e2e::free_port());
    webhooks.register_for(&org, "t", &closed, None).await.unwrap();
    match webhooks.send_test(&org, "t").await.unwrap() {
        chainkeeper::app::webhooks::TestDelivery::Failed(why) => {
            assert!(!why.contains("hook-secret-path") && !why.is_empty(), "{why}")
        }
        other => panic!("{other:?}"),
    }
    webhooks.remove(&org, "t").await.unwrap();
    assert_eq!(webhooks.send_test(&org, "t").await.unwrap(), chainkeeper::app::webhooks::TestDelivery::NoWebhook);
    let audit = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(audit.contains("webhook.test"), "{audit}");
}
