//! Fail closed: every route of the table under every method, without a token, with another organisation's token
//! and with a read-only token. Nothing the table does not allow reaches a handler, and the provider (the Exact
//! simulator) receives no request that was not authenticated and allowed.

use chainkeeper::api::routes::ROUTES;
use chainkeeper::auth::{Claims, issue};
use chainkeeper::wiring::DataDir;
use chainkeeper_e2e::Api;
use chainkeeper_e2e::exact::{ExactHarness, T0};

const METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "MERGE", "get"];

fn concrete(path: &str) -> String {
    path.replace("{org}", "acme")
        .replace("{db}", "finance")
        .replace("{alias}", "eol")
        .replace("{id}", "nope")
        .replace("{*path}", "v1/current/Me")
}

/// The route the table has for `method` on `path` (`HEAD` is `GET`), if any.
fn in_table(method: &str, path: &str) -> Option<&'static chainkeeper::api::routes::RouteSpec> {
    let m = if method == "HEAD" { "GET" } else { method };
    ROUTES.iter().find(|r| r.path == path && r.method == m)
}

fn token(h: &ExactHarness, org: Option<&str>, scopes: &[&str]) -> String {
    let key = DataDir::open(h.dir.path()).unwrap().signing_key().unwrap();
    let claims = Claims {
        sub: "security-suite".into(),
        org: org.map(str::to_string),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        exp: T0 / 1000 + 86_400,
        iat: T0 / 1000,
        jti: chainkeeper::ids::random_id(),
    };
    issue(&key, &claims).unwrap()
}

/// Every method that is not in the table answers 405 with the table's methods in `Allow`.
fn assert_method_refused(r: &chainkeeper_e2e::Reply, method: &str, path: &str) {
    assert_eq!(r.status, 405, "{method} {path} is not in the table: {}", r.body);
    let allow = r.headers.get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    for spec in ROUTES.iter().filter(|s| s.path == path) {
        assert!(allow.contains(spec.method), "{method} {path}: Allow `{allow}` lacks {}", spec.method);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_under_every_method_fails_closed_and_nothing_reaches_the_provider() {
    let h = ExactHarness::start(|_| {}).await;
    let anonymous = h.api.with_token("");
    let stranger = h.api.with_token(&token(&h, Some("other"), &["admin"]));
    let received_before = h.sim.stats().api_requests_received;
    let mut checked = 0;
    let paths: std::collections::BTreeSet<&str> = ROUTES.iter().map(|r| r.path).collect();
    for path in &paths {
        let url = concrete(path);
        for method in METHODS {
            let route = in_table(method, path);
            if route.is_some_and(|r| r.public) {
                continue; // public routes are the only ones without a token
            }
            // Without a token.
            let r = anonymous.call(method, &url, None).await;
            match route {
                Some(_) => assert_eq!(r.status, 401, "{method} {path} without a token: {}", r.body),
                None => assert_method_refused(&r, method, path),
            }
            // With another organisation's admin token.
            let r = stranger.call(method, &url, None).await;
            match route {
                Some(_) if path.contains("{org}") => {
                    assert_eq!(r.status, 403, "{method} {path} with another organisation's token: {}", r.body);
                }
                Some(spec) => {
                    assert!(spec.platform_only(), "{method} {path}");
                    assert_eq!(r.status, 403, "{method} {path} needs a platform token: {}", r.body);
                }
                None => assert_method_refused(&r, method, path),
            }
            checked += 1;
        }
    }
    assert!(checked > 200, "walked {checked} (route, method) pairs");
    assert_eq!(
        h.sim.stats().api_requests_received,
        received_before,
        "no request without a valid token of the organisation reached the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_reads_and_never_writes_through_any_method() {
    let h = ExactHarness::start(|_| {}).await;
    let mut forwarded_reads = 0;
    let received_before = h.sim.stats().api_requests_received;
    let paths: std::collections::BTreeSet<&str> = ROUTES.iter().map(|r| r.path).collect();
    for path in &paths {
        let url = concrete(path);
        for method in METHODS {
            let Some(route) = in_table(method, path) else { continue };
            if route.public {
                continue;
            }
            let reader = Api::new(&h.api.base, &token(&h, Some("acme"), &[&format!("{}.read", route.resource)]));
            let r = reader.call(method, &url, None).await;
            if route.resource == chainkeeper::auth::REVEAL_RESOURCE {
                // No read scope reveals a stored secret: only `credentials.reveal` by name does.
                assert_eq!(r.status, 403, "{method} {path} with {}.read", route.resource);
            } else if route.method == "GET" && !route.platform_only() {
                assert!(
                    r.status != 401 && r.status != 403,
                    "{method} {path} with {}.read: {} {}",
                    route.resource,
                    r.status,
                    r.body
                );
                if route.resource == "query" {
                    forwarded_reads += 1;
                }
            } else if *method == "HEAD" {
                assert_eq!(r.status, 403, "HEAD {path} (a platform route) with an organisation's token");
            } else {
                r.assert_problem(
                    403,
                    if route.platform_only() { "platform_scope_required" } else { "insufficient_scope" },
                );
            }
        }
    }
    assert_eq!(forwarded_reads, 4, "GET and HEAD of the query route and of the OData feed");
    assert_eq!(
        h.sim.stats().api_requests_received - received_before,
        forwarded_reads,
        "only the allowed reads reached the provider"
    );
}

/// Another organisation's token learns nothing: on every organisation route, for every kind of resource, what
/// exists in another organisation ("not yours") and what exists nowhere ("not there", even the organisation)
/// get the same answer, and no answer names anything of the other organisation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organisations_token_cannot_tell_not_yours_from_not_there() {
    let h = ExactHarness::start(|_| {}).await;
    // acme holds a database, a container with a live chain, an API token, auto-recovery-free defaults.
    let issued = h
        .api
        .post("/v1/orgs/acme/api-tokens", serde_json::json!({"subject": "acme-bi", "scopes": ["databases.read"]}))
        .await;
    let acme_token_id = issued.body["id"].as_str().unwrap().to_string();
    assert_eq!(h.api.post("/v1/orgs", serde_json::json!({"name": "beta"})).await.status, 201);
    let beta = h.api.with_token(&token(&h, Some("beta"), &["admin"]));
    assert_eq!(beta.get("/v1/orgs/beta").await.status, 200, "beta's own token works on beta");

    let fill = |path: &str, org: &str, db: &str, alias: &str, id: &str| {
        path.replace("{org}", org)
            .replace("{db}", db)
            .replace("{alias}", alias)
            .replace("{id}", id)
            .replace("{*path}", "v1/current/Me")
    };
    let secrets_of_acme = ["finance", "eol", acme_token_id.as_str(), "acme-bi", h.user.user_id.as_str()];
    let received_before = h.sim.stats().api_requests_received;
    let mut compared = 0;
    for route in ROUTES.iter().filter(|r| !r.public && r.path.contains("{org}")) {
        let method = route.method;
        let mine_elsewhere = fill(route.path, "acme", "finance", "eol", &acme_token_id);
        let nowhere = fill(route.path, "ghost", "nodb", "noalias", "noid");
        let absent_in_acme = fill(route.path, "acme", "nodb", "noalias", "noid");
        let a = beta.call(method, &mine_elsewhere, None).await;
        let b = beta.call(method, &nowhere, None).await;
        let c = beta.call(method, &absent_in_acme, None).await;
        for (what, r) in [("not yours", &a), ("not there", &b), ("not there in acme", &c)] {
            assert_eq!(r.status, 403, "{method} {} ({what}): {}", route.path, r.body);
            let text = format!("{} {:?}", r.body, r.headers);
            for s in secrets_of_acme {
                assert!(!text.contains(s), "{method} {} ({what}) names {s}: {text}", route.path);
            }
        }
        let norm = |r: &chainkeeper_e2e::Reply, org: &str| r.body.to_string().replace(org, "ORG");
        assert_eq!(norm(&a, "acme"), norm(&b, "ghost"), "{method} {}: one answer for both", route.path);
        assert_eq!(norm(&a, "acme"), norm(&c, "acme"), "{method} {}", route.path);
        compared += 1;
    }
    assert!(compared >= 20, "compared {compared} routes");
    assert_eq!(h.sim.stats().api_requests_received, received_before, "nothing reached the provider");
}

/// The token hand-out, the query proxy and the OData feed read the caller's revocation in the same store read as
/// the chain or the container (one snapshot): a revoked token gets nothing from them, warm or due for a refresh,
/// and the provider is asked for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_gets_nothing_from_the_hand_out_the_proxy_or_the_feed() {
    let h = ExactHarness::start(|_| {}).await;
    let r = h
        .api
        .post(
            "/v1/orgs/acme/api-tokens",
            serde_json::json!({"subject": "etl", "scopes": ["tokens.readwrite", "query.read"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let etl = Api::new(&h.api.base, r.body["token"].as_str().unwrap());
    let id = r.body["id"].as_str().unwrap().to_string();
    let hand_out = format!("{}/token", chainkeeper_e2e::container_path("acme", "finance", "eol"));
    let got = etl.post(&hand_out, serde_json::json!({})).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let container = chainkeeper_e2e::container_path("acme", "finance", "eol");
    let reads = [format!("{container}/query/v1/current/Me"), format!("{container}/odata/v1/current/Me")];
    for read in &reads {
        assert_eq!(etl.get(read).await.status, 200, "{read} before the revocation");
    }
    assert_eq!(h.api.delete(&format!("/v1/orgs/acme/api-tokens/{id}")).await.status, 204);
    etl.post(&hand_out, serde_json::json!({})).await.assert_problem(401, "unauthorized");
    let received = h.sim.stats().api_requests_received;
    for read in &reads {
        etl.get(read).await.assert_problem(401, "unauthorized");
    }
    assert_eq!(h.sim.stats().api_requests_received, received, "nothing forwarded for a revoked caller");
    // Past the access token's life: a hand-out would refresh, but not for a revoked caller.
    let refreshes = h.sim.stats().refresh_requests;
    h.advance(std::time::Duration::from_secs(3_600));
    etl.post(&hand_out, serde_json::json!({})).await.assert_problem(401, "unauthorized");
    assert_eq!(h.sim.stats().refresh_requests, refreshes, "no refresh for a revoked caller");
    // Another caller still gets its token.
    assert_eq!(h.api.post(&hand_out, serde_json::json!({})).await.status, 200);
}
