//! Every credential kind through `serve`'s query proxy from the first call, against a peer that checks the
//! credential as real platforms do (header, Bearer, Basic, query, session login with expiry, OAuth2 client
//! credentials); wrong combinations refused; a container that cannot produce a credential never healthy.

use chainkeeper_e2e::cred_peer::{CredPeer, Expected};
use chainkeeper_e2e::{Api, Serve, container_path, issue_token};
use serde_json::json;

const KEY: &str = "PLANTED-api-key-1";
const PASSWORD: &str = "PLANTED-pw-\"&=1";
const SECRET: &str = "PLANTED-client-secret";

struct Setup {
    serve: Serve,
    api: Api,
    peer: CredPeer,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let expected = Expected {
        api_key: KEY.into(),
        username: "ann".into(),
        password: PASSWORD.into(),
        client_id: "app-1".into(),
        client_secret: SECRET.into(),
    };
    let peer = CredPeer::start(expected).await;
    let dir = tempfile::tempdir().unwrap();
    let base = &peer.base;
    let config = format!(
        r#"
[providers.peer-header]
api_base_url = "{base}/header"
credential_use = {{ kind = "header", name = "X-API-Key" }}
[providers.peer-bearer]
api_base_url = "{base}/bearer"
credential_use = {{ kind = "bearer" }}
[providers.peer-basic]
api_base_url = "{base}/basic"
credential_use = {{ kind = "basic" }}
[providers.peer-query]
api_base_url = "{base}/query"
credential_use = {{ kind = "query", name = "api_key" }}
[providers.peer-session]
api_base_url = "{base}/session"
credential_use = {{ kind = "session_login", url = "/login", body = '{{"user":"{{username}}","password":"{{password}}"}}', token = {{ json_pointer = "/result/sessionId" }}, lifetime_s = 3600, apply = {{ kind = "header", name = "X-Session" }} }}
# The engine renews 60 s before the end (refresh_margin_s): this session is good for 3 s.
[providers.peer-session-short]
api_base_url = "{base}/session"
credential_use = {{ kind = "session_login", url = "/login", body = '{{"user":"{{username}}","password":"{{password}}"}}', token = {{ json_pointer = "/result/sessionId" }}, lifetime_s = 63, apply = {{ kind = "header", name = "X-Session" }} }}
[providers.peer-cc]
authorize_url = "{base}/cc/authorize"
token_url = "{base}/cc/token"
api_base_url = "{base}/cc"
scopes = []
pkce = false
"#
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let serve = Serve::start(dir.path(), Some(&path)).await.unwrap();
    let api = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    Setup { serve, api, peer, _dir: dir }
}

fn c(alias: &str) -> String {
    container_path("acme", "main", alias)
}

async fn container(api: &Api, alias: &str, kind: &str, provider: &str, credentials: serde_json::Value) {
    api.create_container("acme", "main", alias, kind, Some(provider)).await;
    let r = api.put(&format!("{}/credentials", c(alias)), credentials).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_works_through_the_proxy_from_the_first_call() {
    let s = setup().await;
    let api = &s.api;
    container(api, "hdr", "api_token", "peer-header", json!({"api_token": KEY})).await;
    container(api, "brr", "api_token", "peer-bearer", json!({"password": KEY})).await;
    container(api, "bas", "password", "peer-basic", json!({"username": "ann", "password": PASSWORD})).await;
    container(api, "qry", "api_token", "peer-query", json!({"api_token": KEY})).await;
    container(api, "ses", "password", "peer-session", json!({"username": "ann", "password": PASSWORD})).await;
    container(
        api,
        "cc",
        "oauth2_client_credentials",
        "peer-cc",
        json!({"client_id": "app-1", "client_secret": SECRET}),
    )
    .await;
    for (alias, kind) in [
        ("hdr", "header"),
        ("brr", "bearer"),
        ("bas", "basic"),
        ("qry", "query"),
        ("ses", "session"),
        ("cc", "client_credentials"),
    ] {
        assert_eq!(api.get(&c(alias)).await.body["status"], "healthy", "{alias}");
        let r = api.get(&format!("{}/query/data", c(alias))).await;
        assert_eq!(r.status, 200, "{alias}: {}", r.body);
        assert_eq!(r.body["kind"], kind, "{alias}");
    }
    assert_eq!(s.peer.logins(), 1, "one session login");
    assert_eq!(s.peer.cc_tokens(), 1, "the proxy obtained the first client-credentials token itself");

    // The session is reused, and renewed once when the platform ends it (a 401).
    assert_eq!(api.get(&format!("{}/query/data", c("ses"))).await.status, 200);
    assert_eq!(s.peer.logins(), 1, "the cached session is reused");
    s.peer.expire_sessions();
    let r = api.get(&format!("{}/query/data", c("ses"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.peer.logins(), 2, "one new login after the platform's 401");
    // The session token is handed out like an access token.
    let r = api.post(&format!("{}/token", c("ses")), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["access_token"], "session-2");

    // A wrong stored secret: the platform's 401 is passed on (no retry with the same secret).
    let r = api.put(&format!("{}/credentials", c("hdr")), json!({"api_token": "PLANTED-wrong"})).await;
    assert_eq!(r.status, 200);
    let refused = s.peer.counts.refused.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(api.get(&format!("{}/query/data", c("hdr"))).await.status, 401);
    assert_eq!(s.peer.counts.refused.load(std::sync::atomic::Ordering::SeqCst), refused + 1, "one call, no retry");
    // A wrong login password marks the container: the login is refused, nothing is sent to the API.
    let r = api.put(&format!("{}/credentials", c("ses")), json!({"password": "PLANTED-wrong"})).await;
    assert_eq!(r.status, 200);
    let r = api.get(&format!("{}/query/data", c("ses"))).await;
    r.assert_problem(409, "credentials_rejected");
    drop(s.serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_combinations_are_refused_and_incomplete_containers_are_not_healthy() {
    let s = setup().await;
    let api = &s.api;
    // Seed 000's Roller case: username and password on a client-credentials container are refused, not ignored.
    api.create_container("acme", "main", "cc", "oauth2_client_credentials", Some("peer-cc")).await;
    let r = api.put(&format!("{}/credentials", c("cc")), json!({"username": "ann", "password": PASSWORD})).await;
    r.assert_problem(400, "credential_field_not_allowed");
    assert!(r.body["detail"].as_str().unwrap().contains("client_id, client_secret"), "{}", r.body);
    let r = api.put(&format!("{}/credentials", c("cc")), json!({"client_id": "app-1"})).await;
    assert_eq!(r.status, 200);
    let r = api.get(&c("cc")).await;
    assert_eq!(r.body["status"], "credentials_incomplete", "{}", r.body);
    assert_eq!(r.body["missing"], json!(["client_secret"]));
    api.get(&format!("{}/query/data", c("cc"))).await.assert_problem(409, "credentials_missing");

    // A login that names the username needs it; an API key in a header takes no username.
    api.create_container("acme", "main", "ses", "password", Some("peer-session")).await;
    api.put(&format!("{}/credentials", c("ses")), json!({"password": PASSWORD})).await;
    let r = api.get(&c("ses")).await;
    assert_eq!(r.body["status"], "credentials_incomplete", "{}", r.body);
    assert_eq!(r.body["missing"], json!(["username"]));
    api.create_container("acme", "main", "hdr", "api_token", Some("peer-header")).await;
    let r = api.put(&format!("{}/credentials", c("hdr")), json!({"username": "ann", "api_token": KEY})).await;
    r.assert_problem(400, "credential_field_not_allowed");
    // A password container without a profile keeps its secret, but has no platform to query.
    api.create_container("acme", "main", "sql", "password", None).await;
    api.put(&format!("{}/credentials", c("sql")), json!({"username": "sa", "password": PASSWORD})).await;
    assert_eq!(api.get(&c("sql")).await.body["status"], "healthy");
    api.get(&format!("{}/query/data", c("sql"))).await.assert_problem(409, "unknown_provider");
    // Password grant and authorization code use the provider's app registration: without one (peer-cc has none),
    // the container says so instead of showing healthy (or "authorize me") until its first token request fails.
    api.create_container("acme", "main", "ropc", "oauth2_password", Some("peer-cc")).await;
    api.put(&format!("{}/credentials", c("ropc")), json!({"username": "ann", "password": PASSWORD})).await;
    assert_eq!(api.get(&c("ropc")).await.body["status"], "app_not_configured");
    api.post(&format!("{}/token", c("ropc")), json!({})).await.assert_problem(409, "app_not_configured");
    api.get(&format!("{}/query/data", c("ropc"))).await.assert_problem(409, "app_not_configured");
    api.create_container("acme", "main", "code", "oauth2_code", Some("peer-cc")).await;
    let listed = api.get("/v1/orgs/acme/databases/main/containers").await.body.to_string();
    assert!(listed.contains("app_not_configured"), "{listed}");
    assert_eq!(api.get(&c("code")).await.body["status"], "app_not_configured");
    // Client credentials use the container's own client: no app registration needed.
    assert_ne!(api.get(&c("cc")).await.body["status"], "app_not_configured");
    // An unknown profile is refused for every kind.
    let r = api
        .post("/v1/orgs/acme/databases/main/containers", json!({"alias": "x", "kind": "api_token", "provider": "nope"}))
        .await;
    r.assert_problem(400, "unknown_provider");
    // A profile that cannot serve the kind is refused: an OAuth2 profile for a password, a login for OAuth2.
    let containers = "/v1/orgs/acme/databases/main/containers";
    let r = api.post(containers, json!({"alias": "y", "kind": "password", "provider": "peer-cc"})).await;
    r.assert_problem(400, "provider_not_for_kind");
    let r =
        api.post(containers, json!({"alias": "z", "kind": "oauth2_client_credentials", "provider": "roller"})).await;
    r.assert_problem(400, "provider_not_for_kind");
    drop(s.serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_needs_its_own_scope_and_the_organisations_consent_and_is_audited() {
    let s = setup().await;
    let api = &s.api;
    container(api, "sql", "password", "peer-basic", json!({"username": "sa", "password": PASSWORD})).await;
    container(api, "yuki", "api_token", "peer-header", json!({"api_token": KEY})).await;
    let dir = s._dir.path();
    let reveal = |alias: &str| format!("{}/credentials/reveal", c(alias));
    let etl = api.with_token(&issue_token(dir, &["--org", "acme", "--subject", "etl-job"], &["credentials.reveal"]));
    let admin = api.with_token(&issue_token(dir, &["--org", "acme"], &["admin"]));

    // Off until the organisation turns it on: refused, and the refusal is audited.
    etl.get(&reveal("sql")).await.assert_problem(403, "credential_reveal_disabled");
    assert_eq!(api.get("/v1/orgs/acme").await.body["allow_credential_reveal"], false);
    let r = admin.call("PATCH", "/v1/orgs/acme/settings", Some(json!({"allow_credential_reveal": true}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["allow_credential_reveal"], true);

    // admin does not cover the reveal scope, nor may it issue a token with it.
    admin.get(&reveal("sql")).await.assert_problem(403, "insufficient_scope");
    let r = admin.post("/v1/orgs/acme/api-tokens", json!({"subject": "x", "scopes": ["credentials.reveal"]})).await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Another organisation's reveal token never reaches this one.
    let stranger = api.with_token(&issue_token(dir, &["--org", "other"], &["credentials.reveal"]));
    stranger.get(&reveal("sql")).await.assert_problem(403, "wrong_organisation");

    let r = etl.get(&reveal("sql")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["username"], "sa");
    assert_eq!(r.body["password"], PASSWORD);
    assert_eq!(r.headers["cache-control"], "no-store");
    let r = etl.get(&reveal("yuki")).await;
    assert_eq!(r.body["api_token"], KEY);
    // Reveal is for stored passwords and API tokens only.
    api.create_container("acme", "main", "cc", "oauth2_client_credentials", Some("peer-cc")).await;
    etl.get(&reveal("cc")).await.assert_problem(400, "nothing_to_reveal");
    // The reveal token reaches nothing else.
    etl.get(&c("sql")).await.assert_problem(403, "insufficient_scope");

    let audit = api.get("/v1/orgs/acme/audit").await.body;
    let entries = audit["entries"].as_array().unwrap();
    let reveals: Vec<_> = entries.iter().filter(|e| e["action"] == "credentials.reveal").collect();
    assert_eq!(reveals.len(), 3, "{audit}");
    assert!(reveals.iter().all(|e| e["actor"] == "etl-job"), "{audit}");
    assert!(reveals.iter().any(|e| e["outcome"] == "refused"), "{audit}");
    assert!(entries.iter().any(|e| e["action"] == "org.settings"), "{audit}");
    drop(s.serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_renewed_when_its_lifetime_ends_without_waiting_for_a_401() {
    let s = setup().await;
    let api = &s.api;
    container(api, "ses", "password", "peer-session-short", json!({"username": "ann", "password": PASSWORD})).await;
    let data = format!("{}/query/data", c("ses"));
    assert_eq!(api.get(&data).await.status, 200);
    assert_eq!(api.get(&data).await.status, 200);
    assert_eq!(s.peer.logins(), 1, "reused while it lasts");
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let refused = s.peer.counts.refused.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(api.get(&data).await.status, 200);
    assert_eq!(s.peer.logins(), 2, "a new login once the lifetime ended");
    assert_eq!(
        s.peer.counts.refused.load(std::sync::atomic::Ordering::SeqCst),
        refused,
        "no call with the old session"
    );
    drop(s.serve);
}
