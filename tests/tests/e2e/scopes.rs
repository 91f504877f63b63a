//! The scope table, walked from the published OpenAPI spec: the middleware enforces exactly what the spec says.

use chainkeeper_e2e::{Api, Serve, issue_token};
use serde_json::{Value, json};

fn concrete(path: &str) -> String {
    path.replace("{org}", "acme")
        .replace("{db}", "main")
        .replace("{alias}", "eol")
        .replace("{id}", "nope")
        .replace("{path}", "v1/current/Me")
        .replace("{identifier}", "app%23user")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_enforces_the_scopes_the_spec_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), None).await.unwrap();
    let platform = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    platform.create_container("acme", "main", "eol", "password", None).await;
    // The reveal route answers (rather than refusing by the organisation's setting) only where it is allowed.
    let on = json!({"allow_credential_reveal": true});
    assert_eq!(platform.call("PATCH", "/v1/orgs/acme/settings", Some(on)).await.status, 200);
    let spec = platform.with_token("").get("/openapi.json").await.body;
    let paths = spec["paths"].as_object().unwrap();
    let mut checked = 0;
    // DELETE last, so the resources the other routes use still exist.
    let mut ops: Vec<(String, String, Value)> = paths
        .iter()
        .flat_map(|(p, methods)| {
            methods.as_object().unwrap().iter().map(move |(m, op)| (p.clone(), m.clone(), op.clone()))
        })
        .collect();
    ops.sort_by_key(|(_, m, _)| m == "delete");
    for (path, method, op) in ops {
        let security = op["security"].as_array().unwrap();
        let url = concrete(&path);
        let m = method.to_uppercase();
        if security.is_empty() {
            let r = platform.with_token("").call(&m, &url, None).await;
            assert_ne!(r.status, 401, "{m} {path} is public");
            continue;
        }
        let scopes: Vec<String> = security.iter().map(|alt| alt["apiToken"][0].as_str().unwrap().to_string()).collect();
        let resource = op["x-chainkeeper-resource"].as_str().unwrap();
        let platform_only = op["x-chainkeeper-platform-only"] == json!(true);
        let owner: &[&str] =
            if path.contains("{org}") && !platform_only { &["--org", "acme"] } else { &["--platform"] };
        if platform_only && path.contains("{org}") {
            // The organisation's own admin token does not reach a platform-only route.
            let own_admin = platform.with_token(&issue_token(dir.path(), &["--org", "acme"], &["admin"]));
            let body = if m == "GET" || m == "DELETE" { None } else { Some(json!({})) };
            own_admin.call(&m, &url, body).await.assert_problem(403, "platform_scope_required");
        }
        // A token with another resource's scopes only: refused.
        let other = if resource == "audit" { "repairs.readwrite" } else { "audit.readwrite" };
        let wrong = platform.with_token(&issue_token(dir.path(), owner, &[other]));
        let body = if m == "GET" || m == "DELETE" { None } else { Some(json!({})) };
        let r = wrong.call(&m, &url, body.clone()).await;
        r.assert_problem(403, "insufficient_scope");
        // A read scope never allows a write.
        if m != "GET" {
            let read_only = platform.with_token(&issue_token(dir.path(), owner, &[&format!("{resource}.read")]));
            read_only.call(&m, &url, body.clone()).await.assert_problem(403, "insufficient_scope");
        }
        // Each published alternative is accepted by the middleware.
        for scope in &scopes {
            let right = platform.with_token(&issue_token(dir.path(), owner, &[scope]));
            let r = right.call(&m, &url, body.clone()).await;
            assert!(r.status != 401 && r.status != 403, "{m} {path} with {scope}: {} {}", r.status, r.body);
        }
        // Another organisation's admin token never reaches this organisation.
        if path.contains("{org}") {
            let stranger = platform.with_token(&issue_token(dir.path(), &["--org", "other"], &["admin"]));
            stranger.call(&m, &url, body).await.assert_problem(403, "wrong_organisation");
        }
        checked += 1;
    }
    assert!(checked >= 15, "walked {checked} protected routes");
}
