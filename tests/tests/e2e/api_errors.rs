//! Bad input gets problem+json with a stable code, never a panic, never a stack trace.

use chainkeeper_e2e::{Api, Serve, container_path, issue_token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_problem_json_with_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), None).await.unwrap();
    let admin = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    let anon = admin.with_token("");

    // Public routes answer without a token.
    assert_eq!(anon.get("/healthz").await.status, 200);
    let spec = anon.get("/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.body["openapi"], "3.1.0");

    anon.get("/v1/orgs/acme").await.assert_problem(401, "unauthorized");
    admin.with_token("not-a-jwt").get("/v1/orgs/acme").await.assert_problem(401, "unauthorized");
    admin.get("/v1/nowhere").await.assert_problem(404, "no_such_route");
    let missing = admin.get("/v1/orgs/acme").await;
    missing.assert_problem(404, "org_not_found");
    // Every problem's `type` leads to a public page that says what the code means and what to do.
    let page = anon.get(missing.body["type"].as_str().unwrap()).await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{}", page.content_type);
    let html = page.body.as_str().unwrap();
    assert!(html.contains("Organisation not found") && html.contains("What to do"), "{html}");
    anon.get("/problems/no_such_code").await.assert_problem(404, "no_such_problem_type");
    anon.call("POST", "/problems/org_not_found", None).await.assert_problem(405, "method_not_allowed");
    admin.post("/v1/orgs", json!({"name": "bad name!"})).await.assert_problem(400, "invalid_name");
    admin.post("/v1/orgs", json!({"nam": "x"})).await.assert_problem(400, "invalid_body");
    let r = admin.call("POST", "/v1/orgs", None).await;
    r.assert_problem(400, "invalid_body");
    admin.post("/v1/orgs", json!({"name": "acme"})).await;
    admin.post("/v1/orgs", json!({"name": "ACME"})).await.assert_problem(409, "org_exists");
    admin.post("/v1/orgs/acme/databases", json!({"name": "main"})).await;
    admin
        .post("/v1/orgs/acme/databases/main/containers", json!({"alias": "eol", "kind": "oauth2_code"}))
        .await
        .assert_problem(400, "provider_required");
    admin
        .post(
            "/v1/orgs/acme/databases/main/containers",
            json!({"alias": "eol", "kind": "oauth2_code", "provider": "nope"}),
        )
        .await
        .assert_problem(400, "unknown_provider");
    admin
        .post("/v1/orgs/acme/databases/main/containers", json!({"alias": "eol", "kind": "teleport"}))
        .await
        .assert_problem(400, "invalid_body");
    admin.call("PATCH", "/v1/orgs/acme", None).await.assert_problem(405, "method_not_allowed");

    // A wrong value in a secret field is never echoed back.
    admin.post("/v1/orgs/acme/databases/main/containers", json!({"alias": "sql", "kind": "password"})).await;
    let r = admin
        .put(&format!("{}/credentials", container_path("acme", "main", "sql")), json!({"password": 4242424242u64}))
        .await;
    r.assert_problem(400, "invalid_body");
    assert!(!r.body.to_string().contains("4242424242"), "the value is not echoed: {}", r.body);

    // Scopes and organisations.
    let reader = admin.with_token(&issue_token(dir.path(), &["--org", "acme"], &["databases.read"]));
    assert_eq!(reader.get("/v1/orgs/acme/databases").await.status, 200);
    reader.post("/v1/orgs/acme/databases", json!({"name": "x"})).await.assert_problem(403, "insufficient_scope");
    let other = admin.with_token(&issue_token(dir.path(), &["--org", "other"], &["admin"]));
    other.get("/v1/orgs/acme/databases").await.assert_problem(403, "wrong_organisation");
    other.post("/v1/orgs", json!({"name": "third"})).await.assert_problem(403, "platform_scope_required");

    // Nothing above crashed the server or leaked internals.
    assert_eq!(anon.get("/healthz").await.status, 200);
    let log = serve.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Deleting an organisation: platform tokens only, only when empty; its API tokens die with it, its name is
/// retired, and its key is destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_organisation_needs_the_platform_an_empty_org_and_shreds_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), None).await.unwrap();
    let admin = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    admin.post("/v1/orgs", json!({"name": "acme"})).await;
    admin.post("/v1/orgs/acme/databases", json!({"name": "main"})).await;
    admin.create_container("acme", "main", "sql", "password", None).await;
    let r = admin
        .put(
            &format!("{}/credentials", container_path("acme", "main", "sql")),
            json!({"username": "u", "password": "pw-PLANTED"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.post("/v1/orgs/acme/api-tokens", json!({"subject": "power-bi", "scopes": ["databases.read"]})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let bi = admin.with_token(r.body["token"].as_str().unwrap());
    assert_eq!(bi.get("/v1/orgs/acme/databases").await.status, 200);

    let own_admin = admin.with_token(&issue_token(dir.path(), &["--org", "acme"], &["admin"]));
    own_admin.delete("/v1/orgs/acme").await.assert_problem(403, "platform_scope_required");
    admin.delete("/v1/orgs/acme").await.assert_problem(409, "org_not_empty");
    assert_eq!(admin.delete(&container_path("acme", "main", "sql")).await.status, 204);
    assert_eq!(admin.delete("/v1/orgs/acme/databases/main").await.status, 204);
    assert_eq!(admin.delete("/v1/orgs/acme").await.status, 204);
    admin.get("/v1/orgs/acme").await.assert_problem(404, "org_not_found");
    admin.delete("/v1/orgs/acme").await.assert_problem(404, "org_not_found");

    // Its tokens are dead, and its name is retired: no newcomer inherits its tokens or its audit trail.
    // (The CLI's token too: it is recorded like any other.)
    bi.get("/v1/orgs/acme/databases").await.assert_problem(401, "unauthorized");
    own_admin.get("/v1/orgs/acme/databases").await.assert_problem(401, "unauthorized");
    admin.post("/v1/orgs", json!({"name": "ACME"})).await.assert_problem(409, "org_name_retired");
    admin
        .put("/v1/orgs/acme/webhook", json!({"url": "https://hooks.example/x"}))
        .await
        .assert_problem(404, "org_not_found");
    assert_eq!(admin.post("/v1/orgs", json!({"name": "acme2"})).await.status, 201, "other names are fine");
}
