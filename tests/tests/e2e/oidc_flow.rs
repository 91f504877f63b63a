//! The authorization-code flow end to end against oidc-provider (a certified OpenID Connect server) with
//! refresh-token rotation and reuse detection on, signed in the way a person does: the login and consent
//! forms posted over HTTP.

use std::time::Duration;

use chainkeeper_e2e::oidc_peer::{OidcPeer, OidcPeerOptions, sign_in};
use chainkeeper_e2e::{Api, Serve, container_path, free_port, issue_token};
use serde_json::json;

pub struct Setup {
    pub peer: OidcPeer,
    pub serve: Serve,
    pub api: Api,
    pub _dir: tempfile::TempDir,
}

/// oidc-provider + `chainkeeper serve` configured for it. Access tokens live `access_ttl_s`.
pub async fn setup(access_ttl_s: u64, token_auth: &str) -> Setup {
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/v1/callback");
    let peer = OidcPeer::start(OidcPeerOptions {
        client_id: "ck-app".into(),
        client_secret: "ck-client-secret-PLANTED".into(),
        redirect_uris: vec![redirect.clone()],
        token_auth: token_auth.into(),
        access_ttl_s,
        ..Default::default()
    })
    .await
    .expect("oidc-provider starts (npm ci --prefix tests/peers/oidc)");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chainkeeper.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
public_url = "http://127.0.0.1:{port}"

[engine]
refresh_margin_s = 1
sweep_interval_s = 3600

[providers.oidc-test]
extends = "generic-oidc"
authorize_url = "{issuer}/auth"
token_url = "{issuer}/token"
api_base_url = "{issuer}"
revocation_url = "{issuer}/token/revocation"
token_auth = "{token_auth}"
scopes = ["openid", "profile", "email"]

[apps.oidc-test]
client_id = "ck-app"
client_secret = "ck-client-secret-PLANTED"
redirect_uri = "{redirect}"
"#,
            issuer = peer.issuer
        ),
    )
    .unwrap();
    let serve = Serve::start_on(dir.path(), Some(&config), port).await.unwrap();
    let api = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    Setup { peer, serve, api, _dir: dir }
}

/// Runs POST …/authorize, signs in at the provider, and follows the redirect back to chainkeeper.
pub async fn authorize(api: &Api, org: &str, db: &str, alias: &str, login: &str) -> chainkeeper_e2e::Reply {
    authorize_with(api, org, db, alias, login, json!({})).await
}

/// [`authorize`] with a start body (`{"replace_user": true}`).
pub async fn authorize_with(
    api: &Api,
    org: &str,
    db: &str,
    alias: &str,
    login: &str,
    start: serde_json::Value,
) -> chainkeeper_e2e::Reply {
    let r = api.post(&format!("{}/authorize", container_path(org, db, alias)), start).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.body["authorize_url"].as_str().unwrap().to_string();
    let parsed = url::Url::parse(&url).unwrap();
    let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256", "PKCE S256");
    assert_eq!(q["state"], r.body["state"].as_str().unwrap());
    let back = sign_in(&url, login, "any-password").await.expect("sign in at oidc-provider");
    assert!(back.as_str().starts_with(&api.base), "redirected back to chainkeeper: {back}");
    api.with_token("").get(back.as_str()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_flow_end_to_end_with_rotation() {
    let s = setup(4, "basic").await;
    let api = &s.api;
    api.create_container("acme", "main", "crm", "oauth2_code", Some("oidc-test")).await;
    let path = container_path("acme", "main", "crm");

    // Before authorization: a clear error.
    api.post(&format!("{path}/token"), json!({})).await.assert_problem(409, "not_authorized");

    let done = authorize(api, "acme", "main", "crm", "alice").await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.as_str().unwrap_or("").contains("Authorization complete"), "{}", done.body);

    // The masked view: configured, the user, never a token.
    let view = api.get(&path).await;
    assert_eq!(view.body["status"], "healthy", "{}", view.body);
    assert_eq!(view.body["credential"]["user_id"], "alice");
    assert_eq!(view.body["credential"]["configured"], true);

    // A valid token, accepted by the provider's userinfo endpoint.
    let t1 = api.post(&format!("{path}/token"), json!({})).await;
    assert_eq!(t1.status, 200, "{}", t1.body);
    assert_eq!(t1.headers["cache-control"], "no-store");
    let at1 = t1.body["access_token"].as_str().unwrap().to_string();
    let me = reqwest::Client::new().get(s.peer.userinfo_url()).bearer_auth(&at1).send().await.unwrap();
    assert_eq!(me.status(), 200, "the handed-out token works at the provider");
    assert!(!view.body.to_string().contains(&at1), "the masked view never shows a token");

    // Warm: the same token while it is valid.
    let again = api.post(&format!("{path}/token"), json!({})).await;
    assert_eq!(again.body["access_token"], at1.as_str());

    // Twice past expiry: each time one refresh through the rotating chain, and the new token works.
    let mut previous = at1.clone();
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let t = api.post(&format!("{path}/token"), json!({})).await;
        assert_eq!(t.status, 200, "round {round}: {}", t.body);
        let at = t.body["access_token"].as_str().unwrap().to_string();
        assert_ne!(at, previous, "round {round}: refreshed");
        let me = reqwest::Client::new().get(s.peer.userinfo_url()).bearer_auth(&at).send().await.unwrap();
        assert_eq!(me.status(), 200, "round {round}: the refreshed token works (the chain was not broken by reuse)");
        previous = at;
    }
    // The query proxy reaches the provider's API (here: userinfo) with the chain's token.
    let me = api.get(&format!("{path}/query/me")).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["sub"], "alice");

    let view = api.get(&path).await;
    assert_eq!(view.body["chain"]["refreshes"], 2, "{}", view.body);
    assert_eq!(view.body["status"], "healthy");

    // The client secret and tokens never reached a log line.
    let log = s.serve.log();
    assert!(!log.contains("ck-client-secret-PLANTED"), "client secret in the log");
    assert!(!log.contains(&at1) && !log.contains(&previous), "access token in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_client_auth_and_200_concurrent_callers_share_one_refresh() {
    let s = setup(3, "post").await;
    let api = &s.api;
    api.create_container("acme", "main", "crm", "oauth2_code", Some("oidc-test")).await;
    let done = authorize(api, "acme", "main", "crm", "bob").await;
    assert_eq!(done.status, 200, "{}", done.body);
    let first = api.post(&format!("{}/token", container_path("acme", "main", "crm")), json!({})).await;
    let first = first.body["access_token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // 200 callers at once on an expiring token: one refresh (oidc-provider would revoke the grant on a second
    // use of the same refresh token), and every caller gets a working token.
    let path = format!("{}/token", container_path("acme", "main", "crm"));
    let calls = (0..200).map(|_| {
        let api = api.clone();
        let path = path.clone();
        async move { api.post(&path, json!({})).await }
    });
    let replies = futures::future::join_all(calls).await;
    let mut tokens = std::collections::HashSet::new();
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.body);
        let t = r.body["access_token"].as_str().unwrap().to_string();
        assert_ne!(t, first, "nobody gets the expiring token once a refresh is due: {}", r.body);
        tokens.insert(t);
    }
    for t in &tokens {
        let me = reqwest::Client::new().get(s.peer.userinfo_url()).bearer_auth(t).send().await.unwrap();
        assert_eq!(
            me.status(),
            200,
            "every handed-out token works: the grant was never revoked by a reused refresh token ({} distinct tokens)\npeer: {}\nview: {}",
            tokens.len(),
            s.peer.logs(),
            api.get(&container_path("acme", "main", "crm")).await.body
        );
    }
    let view = api.get(&container_path("acme", "main", "crm")).await;
    assert_eq!(view.body["chain"]["refreshes"], 1, "exactly one refresh for 200 callers: {}", view.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_state_is_single_use_expiring_and_bound() {
    let s = setup(60, "basic").await;
    let api = &s.api;
    api.create_container("acme", "main", "crm", "oauth2_code", Some("oidc-test")).await;
    let anon = api.with_token("");
    anon.get("/v1/callback?code=x").await.assert_problem(400, "authorization_state_missing");
    anon.get("/v1/callback?code=x&state=forged").await.assert_problem(400, "authorization_state_invalid");

    let r = api.post(&format!("{}/authorize", container_path("acme", "main", "crm")), json!({})).await;
    let url = r.body["authorize_url"].as_str().unwrap().to_string();
    let back = sign_in(&url, "carol", "pw").await.unwrap();
    let first = anon.get(back.as_str()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // Replaying the same callback does nothing.
    let replay = anon.get(back.as_str()).await;
    assert_eq!(replay.status, 400);
    assert_eq!(replay.content_type, "application/problem+json");
    let view = api.get(&container_path("acme", "main", "crm")).await;
    assert_eq!(view.body["status"], "healthy", "a replayed callback leaves the chain alone");

    // A provider error comes back as a clear problem.
    let r = api.post(&format!("{}/authorize", container_path("acme", "main", "crm")), json!({})).await;
    let state = r.body["state"].as_str().unwrap();
    anon.get(&format!("/v1/callback?error=access_denied&state={state}"))
        .await
        .assert_problem(400, "authorization_denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_and_password_containers_get_and_renew_tokens() {
    let s = setup(3, "basic").await;
    let api = &s.api;
    let svc = container_path("acme", "main", "svc");
    api.create_container("acme", "main", "svc", "oauth2_client_credentials", Some("oidc-test")).await;
    api.post(&format!("{svc}/token"), json!({})).await.assert_problem(409, "credentials_missing");
    let r = api
        .put(
            &format!("{svc}/credentials"),
            json!({"client_id": "ck-app-cc", "client_secret": "ck-client-secret-PLANTED-cc"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["credential"]["client_secret"], "configured");
    assert!(!r.body.to_string().contains("PLANTED"));
    let t1 = api.post(&format!("{svc}/token"), json!({})).await;
    assert_eq!(t1.status, 200, "{}", t1.body);
    assert_eq!(
        api.post(&format!("{svc}/token"), json!({})).await.body["access_token"],
        t1.body["access_token"],
        "cached while valid"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let t2 = api.post(&format!("{svc}/token"), json!({})).await;
    assert_eq!(t2.status, 200);
    assert_ne!(t2.body["access_token"], t1.body["access_token"], "renewed when it expires");
    // A wrong secret: the container says so and is not retried until the secret is replaced.
    api.put(&format!("{svc}/credentials"), json!({"client_secret": "wrong"})).await;
    api.post(&format!("{svc}/token"), json!({})).await.assert_problem(409, "credentials_rejected");
    assert_eq!(api.get(&svc).await.body["status"], "needs_repair");
    api.put(&format!("{svc}/credentials"), json!({"client_secret": "ck-client-secret-PLANTED-cc"})).await;
    assert_eq!(api.post(&format!("{svc}/token"), json!({})).await.status, 200);

    // The resource-owner password grant.
    let ropc = container_path("acme", "main", "ropc");
    api.create_container("acme", "main", "ropc", "oauth2_password", Some("oidc-test")).await;
    api.put(&format!("{ropc}/credentials"), json!({"username": "zoe", "password": "correct horse battery staple"}))
        .await;
    let t = api.post(&format!("{ropc}/token"), json!({})).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let me = reqwest::Client::new()
        .get(s.peer.userinfo_url())
        .bearer_auth(t.body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.json::<serde_json::Value>().await.unwrap()["sub"], "zoe");
    api.put(&format!("{ropc}/credentials"), json!({"password": "wrong-PLANTED"})).await;
    api.post(&format!("{ropc}/token"), json!({})).await.assert_problem(409, "credentials_rejected");
    let view = api.get(&ropc).await;
    assert_eq!(view.body["credential"]["username"], "zoe");
    assert_eq!(view.body["credential"]["password"], "configured");
    assert!(!view.body.to_string().contains("PLANTED"));
    let audit = api.get("/v1/orgs/acme/audit").await;
    assert!(audit.body.to_string().contains("credentials.set"), "{}", audit.body);
    assert!(!audit.body.to_string().contains("PLANTED"));
    assert!(!s.serve.log().contains("PLANTED"), "no planted secret in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_container_revokes_its_tokens_at_the_provider() {
    let s = setup(60, "basic").await;
    let api = &s.api;
    api.create_container("acme", "main", "crm", "oauth2_code", Some("oidc-test")).await;
    assert_eq!(authorize(api, "acme", "main", "crm", "dave").await.status, 200);
    let path = container_path("acme", "main", "crm");
    let at = api.post(&format!("{path}/token"), json!({})).await.body["access_token"].as_str().unwrap().to_string();
    let me = || async {
        reqwest::Client::new().get(s.peer.userinfo_url()).bearer_auth(&at).send().await.unwrap().status().as_u16()
    };
    assert_eq!(me().await, 200);
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(me().await, 401, "revoking the refresh token revoked the grant at oidc-provider");
    api.get(&path).await.assert_problem(404, "container_not_found");
    let audit = api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(audit.contains("tokens revoked at the provider"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_user_leaves_nothing_of_the_previous_person() {
    let s = setup(60, "basic").await;
    let api = &s.api;
    api.create_container("acme", "main", "crm", "oauth2_code", Some("oidc-test")).await;
    assert_eq!(authorize(api, "acme", "main", "crm", "erin").await.status, 200);
    let path = container_path("acme", "main", "crm");
    let r = api
        .put(&format!("{path}/auto-recovery"), json!({"username": "erin", "password": "erins-password-PLANTED"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let at = api.post(&format!("{path}/token"), json!({})).await.body["access_token"].as_str().unwrap().to_string();
    let me = || async {
        reqwest::Client::new().get(s.peer.userinfo_url()).bearer_auth(&at).send().await.unwrap().status().as_u16()
    };
    assert_eq!(me().await, 200);
    // The container moves to another person.
    let done = authorize_with(api, "acme", "main", "crm", "fiona", json!({"replace_user": true})).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let view = api.get(&path).await.body;
    assert_eq!(view["credential"]["user_id"], "fiona");
    assert_eq!(view["auto_recovery"]["configured"], false, "erin's sign-in credentials are gone: {view}");
    assert_eq!(me().await, 401, "erin's grant was revoked at oidc-provider");
    let audit = api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(audit.contains("authorization.replace_user"), "{audit}");
    assert!(audit.contains("previous user erin"), "{audit}");
    assert!(audit.contains("auto-recovery credentials were deleted"), "{audit}");
    assert!(audit.contains("revoked at the provider"), "{audit}");
    assert!(!audit.contains("PLANTED"));
    // The new person's chain works.
    assert_eq!(api.post(&format!("{path}/token"), json!({})).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_recovery_signs_in_through_the_providers_login_and_consent_forms() {
    let Setup { peer, serve, api, _dir } = setup(2, "basic").await;
    api.create_container("acme", "main", "crm", "oauth2_code", Some("oidc-test")).await;
    assert_eq!(authorize(&api, "acme", "main", "crm", "frank").await.status, 200);
    let path = container_path("acme", "main", "crm");
    let r = api
        .put(&format!("{path}/auto-recovery"), json!({"username": "frank", "password": "any-password-PLANTED"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The provider forgets every grant (a restart of its in-memory store): the chain's refresh token is dead.
    let port = peer.port;
    peer.stop().await.unwrap();
    let peer = OidcPeer::start(OidcPeerOptions {
        client_id: "ck-app".into(),
        client_secret: "ck-client-secret-PLANTED".into(),
        redirect_uris: vec![format!("{}/v1/callback", serve.base)],
        token_auth: "basic".into(),
        access_ttl_s: 60,
        port,
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let broken = api.post(&format!("{path}/token"), json!({})).await;
    assert_eq!(broken.status, 409, "{}", broken.body);
    // The break starts auto-recovery, which signs in through oidc-provider's HTML login and consent forms.
    let mut view = api.get(&path).await.body;
    for _ in 0..100 {
        if view["status"] == "healthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = api.get(&path).await.body;
    }
    assert_eq!(view["status"], "healthy", "{view}");
    let t = api.post(&format!("{path}/token"), json!({})).await;
    assert_eq!(t.status, 200);
    let me = reqwest::Client::new()
        .get(peer.userinfo_url())
        .bearer_auth(t.body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.json::<serde_json::Value>().await.unwrap()["sub"], "frank");
    drop(serve);
}
