//! Embedded mode across processes: a second `serve` on the same data directory sees the same containers,
//! and a SIGKILL loses nothing that was acknowledged.

use chainkeeper_e2e::{Api, Serve, container_path, issue_token};
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
    assert_eq!(list.body["api_tokens"][0]["subject"], "power-bi");
    assert!(!list.body.to_string().contains(&token), "the list never shows a token");
    assert_eq!(org_admin.delete(&format!("/v1/orgs/acme/api-tokens/{id}")).await.status, 204);
    on_a.get("/v1/orgs/acme/databases").await.assert_problem(401, "unauthorized");
    on_b.get("/v1/orgs/acme/databases").await.assert_problem(401, "unauthorized");
    org_admin.delete("/v1/orgs/acme/api-tokens/nope").await.assert_problem(404, "api_token_not_found");
}
