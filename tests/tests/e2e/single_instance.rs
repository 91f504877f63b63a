//! One container per `client_id#user_id` in all organisations (Exact allows one active refresh token per app
//! and user). A second authorization is refused, and the container that holds the identifier keeps working.

use std::time::Duration;

use chainkeeper_e2e::container_path;
use chainkeeper_e2e::exact::{CLIENT_ID, ExactHarness};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_container_for_the_same_app_and_user_is_refused_and_the_first_keeps_working() {
    let h = ExactHarness::start(|_| {}).await;
    let sid = format!("{CLIENT_ID}#{}", h.user.user_id);
    assert_eq!(h.status().await["credential"]["single_instance_id"], sid.as_str());

    // Another organisation registers the same Exact user with the same app.
    h.api.create_container("beta", "books", "eol", "oauth2_code", Some("exact-online-nl")).await;
    let user = h.user.clone();
    let r = h.authorize("beta", "books", "eol", &user).await;
    r.assert_problem(409, "single_instance_conflict");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains(&sid), "names the identifier: {detail}");
    assert!(!detail.contains("acme") && !detail.contains("finance"), "never reveals the other organisation: {detail}");
    // The new container is gone, and its database with it (it was the only container).
    h.api.get(&container_path("beta", "books", "eol")).await.assert_problem(404, "database_not_found");

    // Exact has just invalidated the first container's refresh token; chainkeeper handed it the new one.
    assert_eq!(h.sim.active_refresh_token_count(CLIENT_ID, &h.user.user_id), 1);
    h.advance(Duration::from_secs(601));
    let t = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(t.status, 200, "the original container still works: {}", t.body);
    assert_eq!(h.sim.stats().invalid_grant, 0, "it never used the dead token");

    // Both organisations' audit logs say what happened, neither names the other.
    let acme = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(acme.contains("chain.handover"), "{acme}");
    assert!(!acme.contains("beta"), "{acme}");
    let beta = h.api.get("/v1/orgs/beta/audit").await.body.to_string();
    assert!(beta.contains("refused_single_instance"), "{beta}");
    assert!(!beta.contains("acme") && !beta.contains("finance"), "{beta}");

    // Deleting the holder releases the identifier: now the other organisation may register it.
    assert_eq!(h.api.delete(&container_path("acme", "finance", "eol")).await.status, 204);
    h.api.create_container("beta", "books", "eol", "oauth2_code", Some("exact-online-nl")).await;
    assert_eq!(h.authorize("beta", "books", "eol", &user).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_with_another_user_moves_the_container_to_that_user() {
    let h = ExactHarness::start(|_| {}).await;
    let second = chainkeeper_e2e::exact::sim_user(2);
    let replace = json!({"replace_user": true});
    assert_eq!(h.authorize_with("acme", "finance", "eol", &second, replace).await.status, 200);
    let view = h.status().await;
    assert_eq!(view["credential"]["user_id"], second.user_id.as_str());
    assert_eq!(view["chain"]["generation"], 2);
    // The first user's identifier is free again.
    h.api.create_container("acme", "finance", "eol-old", "oauth2_code", Some("exact-online-nl")).await;
    let first = h.user.clone();
    assert_eq!(h.authorize("acme", "finance", "eol-old", &first).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_cannot_be_completed_as_another_user_unless_the_starter_asked() {
    let h = ExactHarness::start(|_| {}).await;
    let first = h.user.clone();
    let second = chainkeeper_e2e::exact::sim_user(2);
    // Someone finishes a renewal started for the container as another user (their own account, say).
    let r = h.authorize("acme", "finance", "eol", &second).await;
    r.assert_problem(409, "different_provider_user");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains(&first.full_name) && detail.contains(&first.user_id), "names the expected user: {detail}");
    assert!(!detail.contains(&second.password) && !detail.contains(&first.password), "{detail}");
    // Nothing changed: same user, same chain, and it still hands out tokens.
    let view = h.status().await;
    assert_eq!(view["credential"]["user_id"], first.user_id.as_str());
    assert_eq!(view["chain"]["generation"], 1, "{view}");
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200);
    let audit = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(audit.contains("different_user"), "{audit}");
    // The same user renews without asking.
    assert_eq!(h.authorize("acme", "finance", "eol", &first).await.status, 200);
    // A user change asked for at the start goes through.
    let replace = json!({"replace_user": true});
    assert_eq!(h.authorize_with("acme", "finance", "eol", &second, replace).await.status, 200);
    assert_eq!(h.status().await["credential"]["user_id"], second.user_id.as_str());
    // Only for that authorization: the next one expects the new user again.
    h.authorize("acme", "finance", "eol", &first).await.assert_problem(409, "different_provider_user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_case_insensitive_everywhere() {
    let h = ExactHarness::start(|_| {}).await;
    let upper = h.api.get("/v1/orgs/ACME/databases/Finance/containers/EOL").await;
    assert_eq!(upper.status, 200, "{}", upper.body);
    assert_eq!(upper.body["alias"], "eol");
    assert_eq!(h.api.post("/v1/orgs/Acme/databases/FINANCE/containers/Eol/token", json!({})).await.status, 200);
    h.api
        .post("/v1/orgs/acme/databases/finance/containers", json!({"alias": "EOL", "kind": "password"}))
        .await
        .assert_problem(409, "container_exists");
}

/// Seed 001's escalation: the organisation that holds an identifier cannot be reached. The platform finds the
/// holder (API and CLI) and releases it with a reason; both organisations' audit logs say so, neither names the
/// other; an organisation's token never reaches the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_finds_and_releases_an_identifier_whose_holder_cannot_be_reached() {
    let h = ExactHarness::start(|_| {}).await;
    let sid = format!("{CLIENT_ID}#{}", h.user.user_id);
    let path = format!("/v1/identifiers/{}", sid.replace('#', "%23"));
    h.api.create_container("beta", "books", "eol", "oauth2_code", Some("exact-online-nl")).await;
    let user = h.user.clone();
    h.authorize("beta", "books", "eol", &user).await.assert_problem(409, "single_instance_conflict");

    let r = h.api.get(&path).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (&r.body["org"], &r.body["database"], &r.body["alias"]),
        (&json!("acme"), &json!("finance"), &json!("eol"))
    );
    let out =
        chainkeeper_e2e::cli(&["identifier", "show", &sid, "--data-dir", h.dir.path().to_str().unwrap()]).unwrap();
    let shown: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shown["org"], "acme", "{out}");

    // An organisation's token, even its admin, never reaches the registry.
    let dir = h.dir.path();
    let beta_admin = h.api.with_token(&chainkeeper_e2e::issue_token(dir, &["--org", "beta"], &["admin"]));
    beta_admin.get(&path).await.assert_problem(403, "platform_scope_required");
    let body = json!({"reason": "holder unreachable"});
    beta_admin.post(&format!("{path}/release"), body).await.assert_problem(403, "platform_scope_required");

    h.api.post(&format!("{path}/release"), json!({})).await.assert_problem(400, "invalid_body");
    let body = json!({"reason": "holder unreachable, ticket 4711", "asked_by_org": "beta"});
    let r = h.api.post(&format!("{path}/release"), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["released"], true);
    h.api.get(&path).await.assert_problem(404, "identifier_not_found");

    let acme = h.api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(acme.contains("identifier.release") && acme.contains("ticket 4711"), "{acme}");
    assert!(!acme.contains("beta"), "the holder's log does not name the asker: {acme}");
    let beta = h.api.get("/v1/orgs/beta/audit").await.body.to_string();
    assert!(beta.contains("identifier.release") && beta.contains(&sid), "{beta}");
    assert!(!beta.contains("finance") && !beta.contains("\"acme"), "the asker's log does not name the holder: {beta}");

    // Now the asking organisation may register the identifier.
    h.api.create_container("beta", "books", "eol", "oauth2_code", Some("exact-online-nl")).await;
    assert_eq!(h.authorize("beta", "books", "eol", &user).await.status, 200);
}
