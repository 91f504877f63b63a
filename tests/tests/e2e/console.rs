//! The web console over HTTP (no browser; the browser tests drive Chromium): sign-in links (single use), OIDC
//! sign-in through oidc-provider with group mapping and refusal, cookie flags, CSRF, the CSP on every page, the
//! API's scopes, each form's bad input (nothing stored is lost), sign-out and session expiry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chainkeeper_e2e::console::{Browser, Page, console_link};
use chainkeeper_e2e::oidc_peer::{OidcPeer, OidcPeerOptions, sign_in};
use chainkeeper_e2e::{Api, Serve, container_path, free_port, issue_token};
use serde_json::json;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct Setup {
    serve: Serve,
    api: Api,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    fn data(&self) -> &Path {
        self.dir.path()
    }
    async fn browser(&self, owner: &[&str], scopes: &[&str]) -> Browser {
        let b = Browser::new(&self.serve.base);
        let signed = b.sign_in_with_link(self.data(), Some(&self.config), owner, scopes).await;
        assert_eq!(signed.status, 303, "{}", signed.body);
        b
    }
}

/// `serve` with `extra` config, organisation `acme` with database `main`.
async fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chainkeeper.toml");
    std::fs::write(&config, extra).unwrap();
    let serve = Serve::start(dir.path(), Some(&config)).await.unwrap();
    let api = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    assert_eq!(api.post("/v1/orgs", json!({"name": "acme"})).await.status, 201);
    assert_eq!(api.post("/v1/orgs", json!({"name": "other"})).await.status, 201);
    assert_eq!(api.post("/v1/orgs/acme/databases", json!({"name": "main"})).await.status, 201);
    Setup { serve, api, config, dir }
}

fn assert_page(p: &Page, status: u16, what: &str) {
    assert_eq!(p.status, status, "{what}: {}", p.body);
    assert_eq!(p.csp(), CSP, "{what}: the CSP");
    assert_eq!(p.headers["x-frame-options"], "DENY", "{what}");
    if status == 200 {
        assert!(p.body.starts_with("<!DOCTYPE html><html lang=\"en\">"), "{what}: {}", p.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_link_works_once_and_sets_a_safe_cookie() {
    let s = setup("").await;
    let b = Browser::new(&s.serve.base);
    // Not signed in: every page sends you to the sign-in page.
    let p = b.get("/console/orgs/acme").await;
    assert_page(&p, 303, "not signed in");
    assert_eq!(p.location(), "/console/signin");
    assert_page(&b.get("/console/signin").await, 200, "the sign-in page");

    let link = console_link(s.data(), Some(&s.config), &["--org", "acme"], &["admin"], &s.serve.base);
    assert!(link.starts_with(&format!("{}/console/signin/link?t=", s.serve.base)), "{link}");
    let token = link.split("t=").nth(1).unwrap().to_string();
    // Opening the link (a mail scanner does) uses nothing up.
    assert_page(&b.get(&link).await, 200, "the link's page");
    assert_page(&b.get(&link).await, 200, "the link's page again");
    let signed = b.post_raw("/console/signin/link", &[("t", &token)]).await;
    assert_page(&signed, 303, "sign-in");
    assert_eq!(signed.location(), "/console");
    let cookie = signed.set_cookies().join("\n");
    assert!(cookie.starts_with("chainkeeper_console="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/console"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: no Secure flag: {cookie}");
    let id = cookie.split(';').next().unwrap().split('=').nth(1).unwrap().to_string();

    // The session: the organisation's page, with the CSP on every page and the static files.
    let home = b.get("/console").await;
    assert_eq!(home.location(), "/console/orgs/acme");
    let org = b.get("/console/orgs/acme").await;
    assert_page(&org, 200, "organisation");
    assert!(org.body.contains("Organisation acme") && org.body.contains("Database main"), "{}", org.body);
    for path in ["/console/static/console.css", "/console/static/console.js", "/console/nowhere"] {
        let p = b.get(path).await;
        assert_eq!(p.csp(), CSP, "{path}");
    }

    // Used once: the second use says so, and gives no session.
    let again = Browser::new(&s.serve.base);
    let second = again.post_raw("/console/signin/link", &[("t", &token)]).await;
    assert_page(&second, 410, "second use");
    assert!(second.body.contains("already used"), "{}", second.body);
    assert!(second.set_cookies().is_empty());
    let forged = again.post_raw("/console/signin/link", &[("t", "forged-token")]).await;
    assert_page(&forged, 410, "unknown link");
    assert!(forged.body.contains("not valid"), "{}", forged.body);

    // The store holds the session under its SHA-256 only: the raw id is in no store file.
    let db = std::fs::read(s.data().join("chainkeeper.sqlite")).unwrap();
    let wal = std::fs::read(s.data().join("chainkeeper.sqlite-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(id.len()).any(|w| w == id.as_bytes()), "the raw session id is not stored");
    }
    // A link that has expired.
    let brief =
        console_link(s.data(), Some(&s.config), &["--org", "acme", "--seconds", "1"], &["admin"], &s.serve.base);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let late =
        Browser::new(&s.serve.base).post_raw("/console/signin/link", &[("t", brief.split("t=").nth(1).unwrap())]).await;
    assert_page(&late, 410, "an expired link");
    assert!(late.body.contains("has expired"), "{}", late.body);
    // A link for an organisation that does not exist is refused by the CLI.
    let out = std::process::Command::new(chainkeeper_e2e::cli_bin())
        .args(["console-link", "--data-dir", s.data().to_str().unwrap(), "--org", "nobody", "--scope", "admin"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_cookie_is_secure_with_the_host_prefix() {
    let s = setup("[server]\npublic_url = \"https://ck.example.test\"\n").await;
    let b = Browser::new(&s.serve.base);
    let link = console_link(s.data(), Some(&s.config), &["--org", "acme"], &["admin"], &s.serve.base);
    let token = link.split("t=").nth(1).unwrap().to_string();
    let signed = b.post_raw("/console/signin/link", &[("t", &token)]).await;
    assert_eq!(signed.status, 303);
    let cookie = signed.set_cookies().join("\n");
    assert!(cookie.starts_with("__Host-chainkeeper_console="), "{cookie}");
    for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/;"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    // The CLI prints the public address by default.
    let printed = chainkeeper_e2e::cli(&[
        "console-link",
        "--data-dir",
        s.data().to_str().unwrap(),
        "--config",
        s.config.to_str().unwrap(),
        "--platform",
        "--scope",
        "admin",
    ])
    .unwrap();
    assert!(printed.starts_with("https://ck.example.test/console/signin/link?t="), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_the_session_csrf_token_and_the_api_scope() {
    let s = setup("").await;
    let admin = s.browser(&["--org", "acme"], &["admin"]).await;
    // No token, or another session's: the 403 page, nothing created.
    let none = admin.post_raw("/console/orgs/acme/databases", &[("name", "nocsrf")]).await;
    assert_page(&none, 403, "no CSRF token");
    let other = s.browser(&["--org", "acme"], &["admin"]).await;
    let other_csrf = other.get("/console/orgs/acme").await.csrf().unwrap();
    let wrong = admin.post_raw("/console/orgs/acme/databases", &[("csrf", &other_csrf), ("name", "wrongcsrf")]).await;
    assert_page(&wrong, 403, "another session's CSRF token");
    // A form another site posts (the browser says so) is refused even with the token; so is a link sign-in.
    let csrf = admin.get("/console/orgs/acme").await.csrf().unwrap();
    let res = admin
        .http
        .post(format!("{}/console/orgs/acme/databases", s.serve.base))
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", csrf.as_str()), ("name", "crosssite")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let dbs = s.api.get("/v1/orgs/acme/databases").await.body.to_string();
    assert!(!dbs.contains("nocsrf") && !dbs.contains("wrongcsrf") && !dbs.contains("crosssite"), "{dbs}");
    // With it: created.
    let ok = admin.post("/console/orgs/acme", "/console/orgs/acme/databases", &[("name", "sales")]).await;
    assert_page(&ok, 303, "create database");
    assert!(s.api.get("/v1/orgs/acme/databases").await.body.to_string().contains("sales"));

    // A read-only session sees the pages but may not write: the API's scopes.
    let reader = s.browser(&["--org", "acme"], &["orgs.read", "databases.read", "containers.read"]).await;
    let page = reader.get("/console/orgs/acme").await;
    assert_page(&page, 200, "read-only organisation page");
    assert!(!page.body.contains("Create database"), "no form it cannot use");
    let refused = reader.post("/console/orgs/acme", "/console/orgs/acme/databases", &[("name", "readonly")]).await;
    assert_page(&refused, 403, "read-only write");
    assert!(refused.body.contains("databases.readwrite"), "{}", refused.body);
    // Another organisation's pages: 403, like the API.
    assert_page(&admin.get("/console/orgs/other").await, 403, "another organisation");
    // A session without the organisation's read scope.
    let narrow = s.browser(&["--org", "acme"], &["tokens.read"]).await;
    assert_page(&narrow.get("/console/orgs/acme").await, 403, "no orgs.read");
    // A platform session reaches every organisation.
    let platform = s.browser(&["--platform"], &["admin"]).await;
    assert_page(&platform.get("/console/orgs/other").await, 200, "platform");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_shows_the_problem_next_to_the_field_and_loses_nothing() {
    let s = setup("").await;
    let b = s.browser(&["--org", "acme"], &["admin"]).await;
    let org = "/console/orgs/acme";
    // The database form: empty, too long, not a name.
    for (name, says) in
        [("", "Fill this in."), (&"x".repeat(300)[..], "At most 63 characters."), ("no spaces", "letters, digits")]
    {
        let p = b.post(org, "/console/orgs/acme/databases", &[("name", name)]).await;
        assert_page(&p, 422, "bad database name");
        assert!(p.body.contains(says), "{says}: {}", p.body);
        assert!(p.body.contains(r#"aria-describedby="db-name-error db-name-hint""#), "{}", p.body);
        assert!(p.body.contains(r#"<p class="error" id="db-name-error">"#), "{}", p.body);
    }
    // The container form: an empty name, a kind that needs a provider without one.
    let p = b
        .post(
            org,
            "/console/orgs/acme/databases/-/containers",
            &[("database", "main"), ("alias", ""), ("kind", "oauth2_code"), ("provider", "")],
        )
        .await;
    assert_page(&p, 422, "bad container");
    assert!(p.body.contains("ctr-alias-error") && p.body.contains("This kind needs a provider."), "{}", p.body);
    let made = b
        .post(
            org,
            "/console/orgs/acme/databases/-/containers",
            &[("database", "main"), ("alias", "eol"), ("kind", "oauth2_code"), ("provider", "exact-online-nl")],
        )
        .await;
    assert_page(&made, 303, "create container");
    let ctr = "/console/orgs/acme/databases/main/containers/eol";
    assert_eq!(made.location(), ctr);
    let dup = b
        .post(
            org,
            "/console/orgs/acme/databases/-/containers",
            &[("database", "main"), ("alias", "eol"), ("kind", "oauth2_code"), ("provider", "exact-online-nl")],
        )
        .await;
    assert_page(&dup, 409, "an existing container");
    assert!(dup.body.contains("exists already"), "{}", dup.body);

    // Auto-recovery: stored once, then every bad form keeps it as it was.
    let rec = format!("{ctr}/auto-recovery");
    let good = [
        ("username", "ops@acme.test"),
        ("password", "pw-PLANTED"),
        ("totp", "JBSWY3DPEHPK3PXP"),
        ("retention_days", "30"),
    ];
    assert_page(&b.post(ctr, &rec, &good).await, 303, "store auto-recovery");
    let stored = || async { s.api.get(&container_path("acme", "main", "eol")).await.body["auto_recovery"].clone() };
    let before = stored().await;
    assert_eq!(before["retention_days"], 30, "{before}");
    let long = "p".repeat(2000);
    type Form<'a> = &'a [(&'a str, &'a str)];
    let bad: [(Form, &str, &str); 6] = [
        (&[("username", ""), ("password", "x"), ("retention_days", "30")], "rec-username-error", "Fill this in."),
        (&[("username", "u"), ("password", ""), ("retention_days", "30")], "rec-password-error", "Fill this in."),
        (&[("username", "u"), ("password", &long), ("retention_days", "30")], "rec-password-error", "At most 1024"),
        (&[("username", "u"), ("password", "x"), ("retention_days", "0")], "rec-retention_days-error", "1 to 90"),
        (&[("username", "u"), ("password", "x"), ("retention_days", "91")], "rec-retention_days-error", "1 to 90"),
        (
            &[("username", "u"), ("password", "x"), ("totp", "not a secret!"), ("retention_days", "30")],
            "rec-totp-error",
            "not a TOTP secret",
        ),
    ];
    for (fields, error_id, says) in bad {
        let p = b.post(ctr, &rec, fields).await;
        assert_page(&p, 422, error_id);
        assert!(p.body.contains(&format!(r#"id="{error_id}""#)) && p.body.contains(says), "{error_id}: {}", p.body);
        assert!(p.body.contains(r#"aria-invalid="true""#), "{}", p.body);
        assert_eq!(stored().await, before, "{error_id}: what was stored stays");
    }
    // What was typed (never a password) comes back.
    let p = b.post(ctr, &rec, &[("username", "kept-user"), ("password", "x"), ("retention_days", "91")]).await;
    assert!(p.body.contains(r#"value="kept-user""#) && p.body.contains(r#"value="91""#), "{}", p.body);
    let page = b.get(ctr).await;
    assert!(page.body.contains("with a TOTP secret, kept 30 days, until"), "{}", page.body);

    // The credential form of a password container.
    s.api.create_container("acme", "main", "sql", "password", None).await;
    let sql = "/console/orgs/acme/databases/main/containers/sql";
    let cred = format!("{sql}/credentials");
    assert_page(&b.post(sql, &cred, &[("username", "reader"), ("password", "db-PLANTED")]).await, 303, "credentials");
    let view = || async { s.api.get(&container_path("acme", "main", "sql")).await.body["credential"].clone() };
    let stored_cred = view().await;
    assert_eq!(stored_cred["username"], "reader");
    assert_eq!(stored_cred["password"], "configured");
    let empty = b.post(sql, &cred, &[("username", ""), ("password", "")]).await;
    assert_page(&empty, 422, "empty credential form");
    assert!(
        empty.body.contains("cred-username-error") && empty.body.contains("Fill in at least one field."),
        "{}",
        empty.body
    );
    let too_long = b.post(sql, &cred, &[("username", &"u".repeat(2000)), ("password", "")]).await;
    assert_page(&too_long, 422, "too long username");
    assert_eq!(view().await, stored_cred, "what was stored stays");
    let page = b.get(sql).await;
    assert!(page.body.contains("reader") && !page.body.contains("db-PLANTED"), "masked");

    // Delete the auto-recovery credentials.
    assert_page(&b.post(ctr, &format!("{rec}/delete"), &[]).await, 303, "delete auto-recovery");
    assert_eq!(stored().await["configured"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_ends_the_session_and_idle_sessions_expire() {
    let s = setup("[console]\nsession_idle_s = 2\nsession_absolute_s = 60\n").await;
    let b = s.browser(&["--org", "acme"], &["admin"]).await;
    assert_page(&b.get("/console/orgs/acme").await, 200, "signed in");
    let out = b.post("/console/orgs/acme", "/console/signout", &[]).await;
    assert_page(&out, 200, "signed out");
    assert!(out.set_cookies().join("").contains("Max-Age=0"), "the cookie is removed");
    assert_eq!(b.get("/console/orgs/acme").await.location(), "/console/signin");

    let idle = s.browser(&["--org", "acme"], &["admin"]).await;
    assert_eq!(idle.get("/console/orgs/acme").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let expired = idle.get("/console/orgs/acme").await;
    assert_page(&expired, 303, "expired");
    assert_eq!(expired.location(), "/console/signin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_the_oauth_callback_failure_as_a_page() {
    let s = setup("").await;
    let b = Browser::new(&s.serve.base);
    let p = b.get("/v1/callback?code=x&state=forged").await;
    assert_page(&p, 400, "callback failure");
    assert!(p.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(p.body.contains("The authorization did not complete") && p.body.contains("What to do"), "{}", p.body);
    // A client that does not ask for HTML still gets the problem document.
    s.api
        .with_token("")
        .get("/v1/callback?code=x&state=forged")
        .await
        .assert_problem(400, "authorization_state_invalid");
}

/// oidc-provider as the IdP: `alice+ck-admins` maps to acme's admins, `bob+ck-nobody` to nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_maps_groups_and_refuses_people_without_one() {
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/console/signin/callback");
    let peer = OidcPeer::start(OidcPeerOptions {
        client_id: "ck-app".into(),
        client_secret: "ck-client-secret-PLANTED".into(),
        redirect_uris: vec![format!("http://127.0.0.1:{port}/v1/callback")],
        console_redirect_uris: vec![redirect.clone()],
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

[console]
issuer = "{issuer}"
groups_claim = "groups"

[[console.groups]]
value = "ck-admins"
org = "acme"
scopes = ["admin"]

[[console.groups]]
value = "ck-readers"
org = "acme"
scopes = ["orgs.read", "databases.read", "containers.read"]

[providers.oidc-test]
extends = "generic-oidc"
display_name = "Test IdP"
authorize_url = "{issuer}/auth"
token_url = "{issuer}/token"
api_base_url = "{issuer}"
revocation_url = "{issuer}/token/revocation"
scopes = ["openid", "profile", "email"]

[apps.oidc-test]
client_id = "ck-app"
client_secret = "ck-client-secret-PLANTED"
redirect_uri = "http://127.0.0.1:{port}/v1/callback"

[apps.console]
client_id = "ck-app-console"
client_secret = "ck-client-secret-PLANTED-console"
redirect_uri = "{redirect}"
"#,
            issuer = peer.issuer
        ),
    )
    .unwrap();
    let serve = Serve::start_on(dir.path(), Some(&config), port).await.unwrap();
    let api = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    assert_eq!(api.post("/v1/orgs", json!({"name": "acme"})).await.status, 201);

    let sign_in_as = |login: &'static str| {
        let base = serve.base.clone();
        async move {
            let b = Browser::new(&base);
            let signin = b.get("/console/signin").await;
            assert!(signin.body.contains(r#"href="/console/signin/oidc""#), "{}", signin.body);
            let start = b.get("/console/signin/oidc").await;
            assert_page(&start, 303, "to the IdP");
            let to_idp = url::Url::parse(start.location()).unwrap();
            let q: std::collections::HashMap<_, _> = to_idp.query_pairs().into_owned().collect();
            assert_eq!(q["code_challenge_method"], "S256");
            assert!(q.contains_key("nonce") && q.contains_key("state"), "{to_idp}");
            assert_eq!(q["redirect_uri"], format!("{base}/console/signin/callback"));
            let back = sign_in(start.location(), login, "any-password").await.expect("the IdP's forms");
            let done = b.get(back.as_str()).await;
            // Someone else's callback URL (no state cookie) is refused.
            let stranger = Browser::new(&base).get(back.as_str()).await;
            assert_eq!(stranger.status, 400, "{}", stranger.body);
            (b, done)
        }
    };

    let (alice, done) = sign_in_as("alice+ck-admins").await;
    assert_page(&done, 303, "signed in through OIDC");
    assert!(done.set_cookies().iter().any(|c| c.starts_with("chainkeeper_console=")), "{:?}", done.set_cookies());
    assert_eq!(alice.get("/console").await.location(), "/console/orgs/acme");
    let page = alice.get("/console/orgs/acme").await;
    assert_page(&page, 200, "alice's organisation page");
    assert!(page.body.contains("alice · acme") && page.body.contains("Create database"), "{}", page.body);

    // Alice creates a database and a container, authorizes it, then moves it to another user (seed 000): each
    // time the browser goes to the provider and comes back to a page that says who is connected.
    let org = "/console/orgs/acme";
    assert_eq!(alice.post(org, "/console/orgs/acme/databases", &[("name", "main")]).await.status, 303);
    let made = alice
        .post(
            org,
            "/console/orgs/acme/databases/-/containers",
            &[("database", "main"), ("alias", "crm"), ("kind", "oauth2_code"), ("provider", "oidc-test")],
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.body);
    let ctr = "/console/orgs/acme/databases/main/containers/crm";
    let authorize = |replace: &'static str, login: &'static str| {
        let alice = &alice;
        async move {
            let go = alice.post(ctr, &format!("{ctr}/authorize"), &[("replace_user", replace)]).await;
            // A hand-over page, not a redirect (form-action): its link goes to the provider.
            assert_page(&go, 200, "hand-over to the provider");
            assert!(go.body.contains("Continue to Test IdP") && go.body.contains("data-autofollow"), "{}", go.body);
            let to = go.continue_link().expect("the link to the provider");
            let back = sign_in(&to, login, "pw").await.expect("the provider's forms");
            alice.get(back.as_str()).await
        }
    };
    let page = alice.get(ctr).await;
    assert!(page.body.contains("not authorized yet") && page.body.contains(">Authorize<"), "{}", page.body);
    let done = authorize("false", "dave").await;
    assert_page(&done, 200, "the callback page");
    assert!(
        done.body.contains("Test IdP connected as dave") && done.body.contains(&format!("href=\"{ctr}\"")),
        "{}",
        done.body
    );
    let page = alice.get(ctr).await;
    assert!(page.body.contains("<dd>dave</dd>") && page.body.contains("Renew authorization"), "{}", page.body);
    assert!(
        page.body.contains("Sign in as another user") && page.body.contains("authorization.start"),
        "{}",
        page.body
    );
    let moved = authorize("true", "erin").await;
    assert_page(&moved, 200, "another user");
    assert!(moved.body.contains("connected as erin"), "{}", moved.body);
    // Renewing (not replacing) as someone else: refused, in words.
    let wrong = authorize("false", "frank").await;
    assert!(wrong.status >= 400, "{}", wrong.body);
    assert!(
        wrong.body.contains("The authorization did not complete") && wrong.body.contains("What to do"),
        "{}",
        wrong.body
    );
    assert!(alice.get(ctr).await.body.contains("<dd>erin</dd>"));

    let (reader, done) = sign_in_as("carol+ck-readers").await;
    assert_eq!(done.status, 303);
    let refused = reader.post("/console/orgs/acme", "/console/orgs/acme/databases", &[("name", "x")]).await;
    assert_page(&refused, 403, "a reader's write");

    let (_, refused) = sign_in_as("bob+ck-nobody").await;
    assert_page(&refused, 403, "no group");
    assert!(refused.body.contains("none of your groups"), "{}", refused.body);
    assert!(refused.set_cookies().iter().all(|c| !c.starts_with("chainkeeper_console=")), "no session");
    drop(peer);
}

/// A chain that breaks shows on the organisation page: the repair counter (seed 002) with a link to the
/// container, its status and reason with since when; the container page says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chain_shows_in_the_repair_counter_with_its_reason() {
    let super::oidc_flow::Setup { peer, serve, api, _dir: dir } = super::oidc_flow::setup(2, "basic").await;
    api.create_container("acme", "main", "crm", "oauth2_code", Some("oidc-test")).await;
    assert_eq!(super::oidc_flow::authorize(&api, "acme", "main", "crm", "gina").await.status, 200);
    let b = Browser::new(&serve.base);
    let signed = b
        .sign_in_with_link(dir.path(), Some(&dir.path().join("chainkeeper.toml")), &["--org", "acme"], &["admin"])
        .await;
    assert_eq!(signed.status, 303);
    let org = b.get("/console/orgs/acme").await;
    assert!(org.body.contains(r#"<span class="counter ok">0</span> containers need repair"#), "{}", org.body);
    assert!(org.body.contains(r#"<span class="status ok">Healthy</span>"#), "{}", org.body);

    // The provider forgets every grant: the next refresh finds the refresh token dead.
    let port = peer.port;
    peer.stop().await.unwrap();
    let _peer = OidcPeer::start(OidcPeerOptions {
        client_id: "ck-app".into(),
        client_secret: "ck-client-secret-PLANTED".into(),
        redirect_uris: vec![format!("{}/v1/callback", serve.base)],
        access_ttl_s: 60,
        port,
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let broken = api.post(&format!("{}/token", container_path("acme", "main", "crm")), json!({})).await;
    assert_eq!(broken.status, 409, "{}", broken.body);

    let org = b.get("/console/orgs/acme").await;
    assert_page(&org, 200, "organisation with a broken chain");
    assert!(org.body.contains(r#"<span class="counter bad">1</span> container needs repair"#), "{}", org.body);
    let ctr = "/console/orgs/acme/databases/main/containers/crm";
    assert!(org.body.contains(&format!(r#"<a href="{ctr}">main / crm</a>"#)), "one click to the repair: {}", org.body);
    assert!(
        org.body.contains(r#"<span class="status bad">Needs repair</span>"#) && org.body.contains(" — since "),
        "{}",
        org.body
    );
    let page = b.get(ctr).await;
    assert!(page.body.contains("<dt>Reason</dt>") && page.body.contains("Renew authorization"), "{}", page.body);
}
