//! Embedded mode across processes: a second `serve` on the same data directory sees the same containers,
//! and a SIGKILL loses nothing that was acknowledged.

use chainkeeper_e2e::{Api, Serve, cli, container_path, issue_token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_data_directory_and_sigkill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let a = Serve::start(dir.path(), None).await.unwrap();
    let token = issue_token(dir.path(), &["--platform"], &["admin"]);
    let api_a = Api::new(&a.base, &token);
    api_a.create_container("acme", "main", "sql", "password", None).await;

    // A second process on the same directory sees it and writes too.
    let b = Serve::start(dir.path(), None).await.unwrap();
    let api_b = Api::new(&b.base, &token);
    let r = api_b.get(&container_path("acme", "main", "sql")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api_b
        .put(
            &format!("{}/credentials", container_path("acme", "main", "sql")),
            json!({"username": "u", "password": "pw-one"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api_a.get(&container_path("acme", "main", "sql")).await;
    assert_eq!(r.body["credential"]["password"], "configured", "process A sees B's write: {}", r.body);

    // Acknowledged writes survive SIGKILL of every process.
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let alias = format!("c{i}");
        let r =
            api_a.post("/v1/orgs/acme/databases/main/containers", json!({"alias": alias, "kind": "api_token"})).await;
        assert_eq!(r.status, 201);
        acknowledged.push(alias);
    }
    a.kill9().await;
    b.kill9().await;
    let c = Serve::start(dir.path(), None).await.unwrap();
    let api_c = Api::new(&c.base, &token);
    let r = api_c.get("/v1/orgs/acme/databases/main/containers").await;
    let names: Vec<String> =
        r.body["containers"].as_array().unwrap().iter().map(|c| c["alias"].as_str().unwrap().to_string()).collect();
    for alias in acknowledged {
        assert!(names.contains(&alias), "{alias} survived the kill: {names:?}");
    }
    assert_eq!(api_c.get(&container_path("acme", "main", "sql")).await.body["credential"]["username"], "u");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_api_token_is_refused_at_once_by_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let a = Serve::start(dir.path(), None).await.unwrap();
    let b = Serve::start(dir.path(), None).await.unwrap();
    let admin = Api::new(&a.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    admin.post("/v1/orgs", json!({"name": "acme"})).await;
    let org_admin =
        admin.with_token(&issue_token(dir.path(), &["--org", "acme"], &["api-tokens.readwrite", "databases.read"]));
    let r =
        org_admin.post("/v1/orgs/acme/api-tokens", json!({"subject": "power-bi", "scopes": ["databases.read"]})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.body["token"].as_str().unwrap().to_string();
    let id = r.body["id"].as_str().unwrap().to_string();
    // Nobody grants more than they hold.
    org_admin
        .post("/v1/orgs/acme/api-tokens", json!({"subject": "x", "scopes": ["admin"]}))
        .await
        .assert_problem(403, "scope_escalation");
    let on_a = Api::new(&a.base, &token);
    let on_b = Api::new(&b.base, &token);
    assert_eq!(on_a.get("/v1/orgs/acme/databases").await.status, 200);
    assert_eq!(on_b.get("/v1/orgs/acme/databases").await.status, 200);
    let list = org_admin.get("/v1/orgs/acme/api-tokens").await;
    assert!(list.body["api_tokens"].as_array().unwrap().iter().any(|t| t["subject"] == "power-bi"), "{}", list.body);
    assert!(!list.body.to_string().contains(&token), "the list never shows a token");
    assert_eq!(org_admin.delete(&format!("/v1/orgs/acme/api-tokens/{id}")).await.status, 204);
    on_a.get("/v1/orgs/acme/databases").await.assert_problem(401, "unauthorized");
    on_b.get("/v1/orgs/acme/databases").await.assert_problem(401, "unauthorized");
    org_admin.delete("/v1/orgs/acme/api-tokens/nope").await.assert_problem(404, "api_token_not_found");
}

fn id_of(list: &serde_json::Value, subject: &str) -> String {
    let t = list["api_tokens"].as_array().unwrap().iter().find(|t| t["subject"] == subject);
    t.unwrap_or_else(|| panic!("{subject} in {list}"))["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cannot_outlive_or_escape_its_issuer_and_cli_tokens_are_revocable_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let a = Serve::start(dir.path(), None).await.unwrap();
    let admin = Api::new(&a.base, &issue_token(dir.path(), &["--platform", "--subject", "ops"], &["admin"]));
    assert_eq!(admin.post("/v1/orgs", json!({"name": "acme"})).await.status, 201);

    // The CLI's tokens are recorded: the platform token in `token list`, an organisation's in its list.
    let platform: Vec<serde_json::Value> =
        cli(&["token", "list", "--data-dir", d]).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ops = platform.iter().find(|t| t["subject"] == "ops").expect("the platform token is listed");
    assert_eq!(ops["issued_by"], "operator");
    let ops_id = ops["id"].as_str().unwrap().to_string();
    let org_admin = admin.with_token(&issue_token(
        dir.path(),
        &["--org", "acme", "--subject", "org-admin"],
        &["api-tokens.readwrite", "databases.read"],
    ));
    let list = admin.get("/v1/orgs/acme/api-tokens").await.body;
    let org_admin_id = id_of(&list, "org-admin");

    // At most the issuer's scopes (`.readwrite` covers `.read`), at most its expiry.
    for scopes in [json!(["admin"]), json!(["databases.readwrite"]), json!(["containers.read"])] {
        org_admin
            .post("/v1/orgs/acme/api-tokens", json!({"subject": "x", "scopes": scopes}))
            .await
            .assert_problem(403, "scope_escalation");
    }
    org_admin
        .post(
            "/v1/orgs/acme/api-tokens",
            json!({"subject": "x", "scopes": ["databases.read"], "expires_in_s": 2 * 365 * 86_400}),
        )
        .await
        .assert_problem(403, "token_outlives_issuer");
    let b = org_admin
        .post("/v1/orgs/acme/api-tokens", json!({"subject": "etl", "scopes": ["api-tokens.read", "databases.read"]}))
        .await;
    assert_eq!(b.status, 201, "{}", b.body);
    assert_eq!(b.body["issuer_id"], org_admin_id.as_str(), "the issuer's id is stored");
    let list = admin.get("/v1/orgs/acme/api-tokens").await.body;
    let org_admin_expiry = list["api_tokens"].as_array().unwrap().iter().find(|t| t["id"] == org_admin_id.as_str());
    assert_eq!(b.body["expires_at"], org_admin_expiry.unwrap()["expires_at"], "no later than its issuer");
    let etl = org_admin.with_token(b.body["token"].as_str().unwrap());
    etl.post("/v1/orgs/acme/api-tokens", json!({"subject": "y", "scopes": ["databases.read"]}))
        .await
        .assert_problem(403, "insufficient_scope");
    // A grandchild: issued by a token that the org admin issued.
    let c = org_admin
        .post(
            "/v1/orgs/acme/api-tokens",
            json!({"subject": "bi", "scopes": ["api-tokens.readwrite", "databases.read"]}),
        )
        .await;
    let bi = org_admin.with_token(c.body["token"].as_str().unwrap());
    let g = bi.post("/v1/orgs/acme/api-tokens", json!({"subject": "report", "scopes": ["databases.read"]})).await;
    assert_eq!(g.status, 201, "{}", g.body);
    let report = org_admin.with_token(g.body["token"].as_str().unwrap());
    // A token the platform token issued (stored under acme, its issuer under the platform).
    let p = admin
        .post("/v1/orgs/acme/api-tokens", json!({"subject": "platform-child", "scopes": ["databases.read"]}))
        .await;
    let platform_child = admin.with_token(p.body["token"].as_str().unwrap());
    for t in [&org_admin, &etl, &bi, &report, &platform_child] {
        assert_eq!(t.get("/v1/orgs/acme/databases").await.status, 200);
    }

    // Revoking the org admin's token (a CLI token, by id) revokes everything issued through it, transitively.
    assert_eq!(admin.delete(&format!("/v1/orgs/acme/api-tokens/{org_admin_id}")).await.status, 204);
    for t in [&org_admin, &etl, &bi, &report] {
        t.get("/v1/orgs/acme/databases").await.assert_problem(401, "unauthorized");
    }
    assert_eq!(platform_child.get("/v1/orgs/acme/databases").await.status, 200, "not issued through it");
    let list = admin.get("/v1/orgs/acme/api-tokens").await.body;
    for t in list["api_tokens"].as_array().unwrap() {
        assert_eq!(t["revoked_at"].is_null(), t["subject"] == "platform-child", "{t}");
    }

    // Platform tokens are listed and revoked by id through the API too (platform tokens only).
    let ops2 = admin.with_token(&issue_token(dir.path(), &["--platform", "--subject", "ops2"], &["admin"]));
    let listed = admin.get("/v1/platform/api-tokens").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let ops2_id = id_of(&listed.body, "ops2");
    assert_eq!(id_of(&listed.body, "ops"), ops_id);
    platform_child.get("/v1/platform/api-tokens").await.assert_problem(403, "platform_scope_required");
    assert_eq!(admin.delete(&format!("/v1/platform/api-tokens/{ops2_id}")).await.status, 204);
    ops2.get("/v1/orgs/acme").await.assert_problem(401, "unauthorized");
    admin.delete("/v1/platform/api-tokens/nope").await.assert_problem(404, "api_token_not_found");

    // The platform token, revoked by id with the CLI, takes its children along.
    cli(&["token", "revoke", "--data-dir", d, &ops_id]).unwrap();
    admin.get("/v1/orgs/acme").await.assert_problem(401, "unauthorized");
    platform_child.get("/v1/orgs/acme/databases").await.assert_problem(401, "unauthorized");
}
