//! The web console in a real browser (issue 16, "Tested in a real browser"): Debian's Chromium driven by
//! playwright-core through `tests/peers/browser/console.mjs`, against `chainkeeper serve`, the oidc-provider peer
//! as the organisation's identity provider and the Exact Online simulator (B2C sign-in pages, system clock).
//! axe-core runs on every console page (0 serious or critical violations), and every page's screenshot is saved
//! under `target/console-screenshots/` (the path is printed per step).
//!
//! Needs `/usr/bin/chromium` (skipped, saying so, without it), `npm ci --prefix tests/peers/browser` and
//! `--prefix tests/peers/oidc`, and a fresh `cargo build -p chainkeeper-cli`.

use std::time::{Duration, Instant};

use chainkeeper_e2e::browser::{ConsoleBrowser, field, field_problem, page_summary};
use chainkeeper_e2e::exact::{CLIENT_ID, CLIENT_SECRET, sim_profile_toml, sim_user};
use chainkeeper_e2e::oidc_peer::{OidcPeer, OidcPeerOptions};
use chainkeeper_e2e::{Api, Serve, cli, container_path, free_port, issue_token};
use exact_sim::{ExactSim, SignIn, SimApp, SimClock, SimConfig, SimUser};
use serde_json::{Value, json};

const ORG: &str = "acme";
const CONTAINER: &str = "/console/orgs/acme/databases/finance/containers/eol";

use chainkeeper_e2e::webhook_receiver::Received;

/// A webhook receiver on loopback (the deployment allows plain http to 127.0.0.1).
async fn receiver() -> (String, Received) {
    chainkeeper_e2e::webhook_receiver::start("127.0.0.1", "/hook").await
}

/// Everything the scenario runs against.
struct World {
    sim: ExactSim,
    /// The IdP, kept running for the test's length.
    _idp: OidcPeer,
    serve: Serve,
    /// A platform token, for what the test checks behind the browser's back.
    api: Api,
    users: [SimUser; 2],
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let users = [sim_user(1), sim_user(2)];
    let sim = ExactSim::start(
        SimConfig {
            apps: vec![SimApp {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uris: vec![format!("{base}/v1/callback")],
            }],
            users: users.to_vec(),
            sign_in: SignIn::AzureB2c,
            // Exact's 570 s between token requests would keep the test waiting for its refreshes.
            min_token_interval: Duration::from_secs(1),
            ..SimConfig::default()
        },
        // The browser computes the TOTP from the real clock, as an authenticator app does.
        SimClock::system(),
    )
    .await
    .expect("the Exact simulator starts");
    let idp = OidcPeer::start(OidcPeerOptions {
        client_id: "ck-idp".into(),
        client_secret: "ck-idp-secret-PLANTED".into(),
        console_redirect_uris: vec![format!("{base}/console/signin/callback")],
        ..OidcPeerOptions::default()
    })
    .await
    .expect("the oidc peer starts (npm ci --prefix tests/peers/oidc)");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chainkeeper.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
public_url = "{base}"

[webhooks]
allow_http_hosts = ["127.0.0.1"]
allow_private_hosts = ["127.0.0.1"]

[console]
issuer = "{issuer}"
groups_claim = "groups"

[[console.groups]]
value = "ck-admins"
org = "{ORG}"
scopes = ["admin"]

[[console.groups]]
value = "ck-readers"
org = "{ORG}"
scopes = ["containers.read", "databases.read", "orgs.read", "repairs.read"]

{profile}min_token_interval_s = 1

[apps.exact-online-nl]
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uri = "{base}/v1/callback"

[apps.console]
client_id = "ck-idp-console"
client_secret = "ck-idp-secret-PLANTED-console"
redirect_uri = "{base}/console/signin/callback"
"#,
            issuer = idp.issuer,
            profile = sim_profile_toml(&sim),
        ),
    )
    .unwrap();
    let serve = Serve::start_on(dir.path(), Some(&config), port).await.expect("serve starts");
    let token = issue_token(dir.path(), &["--platform"], &["admin"]);
    let api = Api::new(&serve.base, &token);
    let r = api.post("/v1/orgs", json!({"name": ORG})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    World { sim, _idp: idp, serve, api, users, dir }
}

/// The Exact sign-in of a simulated user, as `exact_signin` actions take it.
fn exact_person(u: &SimUser) -> Value {
    json!({"username": u.username, "password": u.password, "totp_secret": u.totp_secret_base32})
}

/// The callback's page names the person now connected.
fn assert_connected(v: &Value, u: &SimUser) {
    let text = v["text"].as_str().unwrap_or("");
    assert!(
        text.contains(&u.full_name) && (text.contains("connected") || text.contains("signs in as")),
        "{}",
        page_summary(v)
    );
}

fn assert_status(v: &Value, status: u64) {
    assert_eq!(v["status"], status, "{}", page_summary(v));
}

fn assert_text(v: &Value, needle: &str) {
    assert!(v["text"].as_str().unwrap_or("").contains(needle), "{needle:?} not on the page: {}", page_summary(v));
}

/// A form sent with bad input: the page comes back with `status`, the problem next to the field labelled
/// `label` (its `aria-describedby`), and the field marked invalid.
fn assert_field_problem(v: &Value, status: u64, label: &str, says: &str) {
    assert_status(v, status);
    let problem = field_problem(v, label);
    assert!(
        problem.contains(says),
        "the problem next to {label:?} is {problem:?}, wanted {says:?}: {}",
        page_summary(v)
    );
    assert_eq!(field(v, label)["invalid"], true, "{label:?} is aria-invalid: {}", page_summary(v));
}

/// `chainkeeper console-link …` on the deployment's data directory: the single-use sign-in link it prints.
fn console_link(w: &World, args: &[&str]) -> String {
    let dir = w.dir.path();
    let config = dir.join("chainkeeper.toml");
    let mut all = vec!["console-link", "--data-dir", dir.to_str().unwrap(), "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = cli(&all).expect("console-link");
    out.split_whitespace().find(|l| l.contains("/console/signin/link?")).expect("a link").to_string()
}

async fn container_view(w: &World) -> Value {
    w.api.get(&container_path(ORG, "finance", "eol")).await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_sign_in_set_up_renew_recover_replace_and_tokens() {
    if !ConsoleBrowser::available() {
        return;
    }
    let started = Instant::now();
    let w = world().await;
    let mut b = ConsoleBrowser::start(&w.serve.base, "scenario").await.expect("Chromium starts");
    let [u1, u2] = w.users.clone();

    // Signed out: the console sends a person to its sign-in page.
    let v = b.step("signin-page", json!([{"goto": "/console"}])).await;
    assert!(v["url"].as_str().unwrap().ends_with("/console/signin"), "{}", page_summary(&v));

    // Sign in through the organisation's IdP (the oidc peer): the groups claim maps ck-admins to admin on acme.
    let v = b
        .step(
            "organisation-empty",
            json!([
                {"click": {"role": "link", "name": "Sign in with your organisation's account"}},
                {"oidc_login": {"login": "alice+ck-admins"}}
            ]),
        )
        .await;
    assert!(v["url"].as_str().unwrap().ends_with("/console/orgs/acme"), "{}", page_summary(&v));
    assert_text(&v, "No databases yet");

    // Bad input in the database form: empty, too long, not a name.
    let v = b
        .step(
            "new-database-empty",
            json!([{"fill": {"label": "Database name", "value": ""}}, {"click": {"name": "Create database"}}]),
        )
        .await;
    assert_field_problem(&v, 422, "Database name", "Fill this in");
    let long = "d".repeat(64);
    let v = b
        .step(
            "new-database-too-long",
            json!([{"fill": {"label": "Database name", "value": long}}, {"click": {"name": "Create database"}}]),
        )
        .await;
    assert_field_problem(&v, 422, "Database name", "At most 63");
    assert_eq!(field(&v, "Database name")["value"], long, "what was typed is kept");

    // A database and an Exact container, created in the browser.
    let v = b
        .step(
            "database-created",
            json!([{"fill": {"label": "Database name", "value": "finance"}}, {"click": {"name": "Create database"}}]),
        )
        .await;
    assert_status(&v, 200);
    assert_text(&v, "Database finance");
    let v = b
        .step(
            "new-container-empty",
            json!([{"fill": {"label": "Container name", "value": ""}}, {"click": {"name": "Create container"}}]),
        )
        .await;
    assert_field_problem(&v, 422, "Container name", "Fill this in");
    let v = b
        .step(
            "container-created",
            json!([
                {"select": {"label": "Database", "value": "finance"}},
                {"fill": {"label": "Container name", "value": "eol"}},
                {"select": {"label": "Kind", "value": "oauth2_code"}},
                {"select": {"label": "Provider", "value": "exact-online-nl"}},
                {"click": {"name": "Create container"}}
            ]),
        )
        .await;
    assert!(v["url"].as_str().unwrap().ends_with(CONTAINER), "{}", page_summary(&v));

    // Authorize through the Exact simulator's sign-in pages (start page, B2C, authenticator code, consent); the
    // callback ends on a page a person understands.
    let v = b.step("authorized", json!([{"click": {"name": "Authorize"}}, {"exact_signin": exact_person(&u1)}])).await;
    assert_status(&v, 200);
    assert_connected(&v, &u1);
    let view = container_view(&w).await;
    assert_eq!(view["status"], "healthy", "{view}");
    let v = b.step("container-healthy", json!([{"goto": CONTAINER}])).await;
    assert_text(&v, "Healthy");
    assert_text(&v, &u1.user_id);
    let v = b.step("container-keyboard", json!([{"tab_walk": {"key": "focus", "count": 40}}])).await;
    let focus = v["values"]["focus"].to_string();
    assert!(focus.contains("Renew authorization"), "Renew authorization is reached with Tab: {focus}");

    // Auto-recovery form: bad input shows the problem next to the field and stores nothing.
    let totp = u1.totp_secret_base32.clone().unwrap();
    let recovery = |user: &str, password: &str, totp: &str, days: &str| {
        json!([
            {"goto": CONTAINER},
            {"fill": {"label": "Username at the provider", "value": user}},
            {"fill": {"label": "Password", "value": password}},
            {"fill": {"label": "TOTP secret or otpauth:// URI (optional)", "value": totp}},
            {"fill": {"label": "Keep for (days, 1–90)", "value": days}},
            {"click": {"name": "Store auto-recovery credentials"}}
        ])
    };
    let cases = [
        ("recovery-retention-0", recovery(&u1.username, &u1.password, &totp, "0"), "Keep for (days, 1–90)"),
        ("recovery-retention-91", recovery(&u1.username, &u1.password, &totp, "91"), "Keep for (days, 1–90)"),
        (
            "recovery-bad-totp",
            recovery(&u1.username, &u1.password, "not base32 !", "30"),
            "TOTP secret or otpauth:// URI (optional)",
        ),
        ("recovery-no-username", recovery("", &u1.password, &totp, "30"), "Username at the provider"),
        (
            "recovery-username-too-long",
            recovery(&"u".repeat(1100), &u1.password, &totp, "30"),
            "Username at the provider",
        ),
    ];
    for (name, actions, label) in cases {
        let v = b.step(name, actions).await;
        let status = v["status"].as_u64().unwrap();
        assert!(status == 400 || status == 422, "{name}: {}", page_summary(&v));
        assert!(!field_problem(&v, label).is_empty(), "{name}: a problem next to {label:?}: {}", page_summary(&v));
        assert_eq!(container_view(&w).await["auto_recovery"]["configured"], false, "{name}: nothing stored");
    }
    // Stored, with an otpauth:// URI pasted as an authenticator app shows it.
    let uri = format!("otpauth://totp/Exact:{}?secret={totp}&issuer=Exact", u1.username);
    let v = b.step("recovery-stored", recovery(&u1.username, &u1.password, &uri, "30")).await;
    assert_status(&v, 200);
    let view = container_view(&w).await;
    assert_eq!(view["auto_recovery"]["configured"], true, "{view}");
    assert_eq!(view["auto_recovery"]["totp"], true, "{view}");
    let expires = view["auto_recovery"]["expires_at"].as_str().unwrap()[..10].to_string();
    assert_text(&v, &expires);
    // Bad input again, now that credentials are stored: they stay.
    let v = b.step("recovery-retention-91-kept", recovery(&u1.username, "other", &totp, "91")).await;
    assert!(!field_problem(&v, "Keep for (days, 1–90)").is_empty(), "{}", page_summary(&v));
    assert_eq!(container_view(&w).await["auto_recovery"]["configured"], true, "the stored credentials stay");

    // Break the chain at the provider (the grant revoked, as when the user signs in elsewhere), slowly enough to
    // watch: a BI tool's next query finds it broken, auto-recovery signs in again, and the container is healthy.
    w.sim.set_token_latency(Duration::from_secs(3));
    w.sim.revoke(CLIENT_ID, &u1.user_id);
    let query = {
        let api = w.api.clone();
        tokio::spawn(async move {
            api.get(&format!("{}/query/v1/current/Me", container_path(ORG, "finance", "eol"))).await.status
        })
    };
    let v = b
        .step(
            "container-broken",
            json!([{"goto": CONTAINER}, {"wait_text": {"any": ["Needs repair", "Recovering"], "timeout_ms": 20000}}]),
        )
        .await;
    assert_text(&v, "since");
    let v = b.step("container-recovered", json!([{"wait_text": {"text": "Healthy", "timeout_ms": 30000}}])).await;
    assert_text(&v, "Healthy");
    assert_eq!(query.await.unwrap(), 409, "the query that found the chain broken is told so");
    w.sim.set_token_latency(Duration::ZERO);
    let view = container_view(&w).await;
    assert_eq!(view["status"], "healthy", "{view}");
    assert_eq!(view["chain"]["generation"], 2, "a brand-new chain: {view}");
    let audit = w.api.get("/v1/orgs/acme/audit").await.body.to_string();
    assert!(audit.contains("auto_recovery.run") && audit.contains("recovered"), "{audit}");

    // Replace the user: "Sign in as another user" signs in a colleague; the identity changes.
    let v = b
        .step(
            "replaced-user",
            json!([{"goto": CONTAINER}, {"click": {"name": "Sign in as another user"}}, {"exact_signin": exact_person(&u2)}]),
        )
        .await;
    assert_connected(&v, &u2);
    let v = b.step("container-replaced", json!([{"goto": CONTAINER}])).await;
    assert_text(&v, &u2.user_id);
    assert_text(&v, "Healthy");

    // The organisation page at a phone's width.
    b.step("organisation-phone", json!([{"viewport": {"width": 390, "height": 844}}, {"goto": "/console/orgs/acme"}]))
        .await;
    b.step("container-phone", json!([{"goto": CONTAINER}])).await;
    b.step("desktop", json!([{"viewport": {"width": 1024, "height": 768}}])).await;

    // API tokens: bad input next to the field, a token shown once and copied, revoked, then refused by the API.
    let token_form = |name: &str, scopes: &str, days: &str| {
        json!([
            {"goto": "/console/orgs/acme/api-tokens"},
            {"fill": {"label": "Name", "value": name}},
            {"fill": {"label": "Scopes or groups", "value": scopes}},
            {"fill": {"label": "Valid for (days)", "value": days}},
            {"click": {"name": "Create token"}}
        ])
    };
    let v = b.step("token-no-name", token_form("", "containers.read", "30")).await;
    assert_field_problem(&v, 422, "Name", "Fill this in");
    let v = b.step("token-no-scopes", token_form("power-bi", "", "30")).await;
    assert_field_problem(&v, 422, "Scopes or groups", "Fill this in");
    let v = b.step("token-days-0", token_form("power-bi", "containers.read", "0")).await;
    assert_field_problem(&v, 422, "Valid for (days)", "1 to 730");
    let v = b.step("token-escalation", token_form("power-bi", "credentials.reveal", "30")).await;
    assert_field_problem(&v, 403, "Scopes or groups", "credentials.reveal");
    assert_eq!(field(&v, "Name")["value"], "power-bi", "what was typed is kept");
    let listed = w.api.get("/v1/orgs/acme/api-tokens").await.body;
    assert_eq!(listed["api_tokens"].as_array().unwrap().len(), 0, "nothing stored: {listed}");
    let v = b
        .step(
            "token-created",
            json!([
                {"goto": "/console/orgs/acme"},
                {"click": {"role": "link", "name": "API tokens"}},
                {"fill": {"label": "Name", "value": "power-bi"}},
                {"fill": {"label": "Scopes or groups", "value": "containers.read databases.read"}},
                {"fill": {"label": "Valid for (days)", "value": "30"}},
                {"click": {"name": "Create token"}},
                {"read": {"key": "token", "selector": "#new-token"}},
                {"click": {"name": "Copy token", "no_navigation": true}},
                {"read_clipboard": {"key": "copied"}}
            ]),
        )
        .await;
    assert_status(&v, 201);
    let token = v["values"]["token"].as_str().unwrap().to_string();
    assert_eq!(v["values"]["copied"], token.as_str(), "the copy button copies the token");
    let tool = Api::new(&w.serve.base, &token);
    let path = "/v1/orgs/acme/databases/finance/containers";
    assert_eq!(tool.get(path).await.status, 200, "the new token works");
    assert_eq!(tool.post("/v1/orgs/acme/databases", json!({"name": "x"})).await.status, 403, "read only");
    // Shown once: the list shows its id, never the token again.
    let v = b.step("tokens-listed", json!([{"goto": "/console/orgs/acme/api-tokens"}])).await;
    assert!(!v["text"].as_str().unwrap().contains(&token), "the token is shown only once");
    let id = w.api.get("/v1/orgs/acme/api-tokens").await.body["api_tokens"][0]["id"].as_str().unwrap().to_string();
    let v = b.step("token-revoked", json!([{"click": {"name": format!("Revoke power-bi ({id})")}}])).await;
    assert_text(&v, "Revoked");
    let refused = tool.get(path).await;
    refused.assert_problem(401, "unauthorized");
    assert!(refused.body["detail"].as_str().unwrap().contains("revoked"), "{}", refused.body);

    // Webhook: bad input next to the field; saved (secret shown once); a test delivery, signed with that secret.
    let (hook, received) = receiver().await;
    let v = b
        .step(
            "webhook-bad-url",
            json!([
                {"goto": "/console/orgs/acme"},
                {"click": {"role": "link", "name": "Webhook"}},
                {"fill": {"label": "Webhook URL", "value": "ftp://example.com/x"}},
                {"click": {"name": "Save webhook"}}
            ]),
        )
        .await;
    assert_field_problem(&v, 422, "Webhook URL", "");
    let v = b
        .step(
            "webhook-no-events",
            json!([
                {"goto": "/console/orgs/acme/webhook"},
                {"fill": {"label": "Webhook URL", "value": hook}},
                {"uncheck": {"label": "chain.needs_repair — A container's chain broke and needs a person (or auto-recovery)."}},
                {"uncheck": {"label": "chain.recovered — A broken chain works again."}},
                {"uncheck": {"label": "auto_recovery.expiring — A container's auto-recovery credentials expire soon."}},
                {"click": {"name": "Save webhook"}}
            ]),
        )
        .await;
    assert_status(&v, 422);
    assert_text(&v, "Choose at least one event type");
    assert!(w.api.get("/v1/orgs/acme").await.body["webhook_url"].is_null(), "nothing stored");
    let v = b
        .step(
            "webhook-saved",
            json!([
                {"goto": "/console/orgs/acme/webhook"},
                {"fill": {"label": "Webhook URL", "value": hook}},
                {"uncheck": {"label": "auto_recovery.expiring — A container's auto-recovery credentials expire soon."}},
                {"click": {"name": "Save webhook"}},
                {"read": {"key": "secret", "selector": "#webhook-secret"}}
            ]),
        )
        .await;
    assert_status(&v, 200);
    assert_text(&v, "chain.needs_repair, chain.recovered");
    let secret = v["values"]["secret"].as_str().unwrap().to_string();
    let v = b.step("webhook-tested", json!([{"click": {"name": "Send a test event"}}])).await;
    assert_status(&v, 200);
    assert_text(&v, "delivered");
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one test event");
    let (headers, body) = &got[0];
    assert_eq!(headers["x-chainkeeper-event"], "webhook.test");
    let sig = headers["x-chainkeeper-signature"].to_str().unwrap();
    let t: i64 = sig.split(',').next().unwrap().trim_start_matches("t=").parse().unwrap();
    assert_eq!(sig, chainkeeper::app::webhooks::signature(secret.as_bytes(), t, body), "signed with the secret shown");

    // Audit log: filtered, and bad input in the filter next to its field.
    let v = b
        .step(
            "audit-filtered",
            json!([
                {"goto": "/console/orgs/acme"},
                {"click": {"role": "link", "name": "Audit log"}},
                {"fill": {"label": "Action", "value": "api_token"}},
                {"click": {"name": "Filter"}}
            ]),
        )
        .await;
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("api_token.issue") && text.contains("api_token.revoke"), "{text}");
    assert!(!text.contains("auto_recovery.set"), "filtered: {text}");
    let v = b
        .step(
            "audit-filter-too-long",
            json!([{"fill": {"label": "Action", "value": "a".repeat(101)}}, {"click": {"name": "Filter"}}]),
        )
        .await;
    assert_field_problem(&v, 422, "Action", "At most 100");
    b.step("audit-all", json!([{"goto": "/console/orgs/acme/audit"}])).await;

    // The organisation's other pages at a phone's width (axe on each, as everywhere).
    b.step(
        "tokens-phone",
        json!([{"viewport": {"width": 390, "height": 844}}, {"goto": "/console/orgs/acme/api-tokens"}]),
    )
    .await;
    b.step("webhook-phone", json!([{"goto": "/console/orgs/acme/webhook"}])).await;
    b.step("audit-phone", json!([{"goto": "/console/orgs/acme/audit"}])).await;
    b.step("back-to-desktop", json!([{"viewport": {"width": 1024, "height": 768}}])).await;

    // The credential form of a password container: bad input next to the field, what is stored stays.
    let files = "/console/orgs/acme/databases/finance/containers/files";
    let v = b
        .step(
            "password-container",
            json!([
                {"goto": "/console/orgs/acme"},
                {"select": {"label": "Database", "value": "finance"}},
                {"fill": {"label": "Container name", "value": "files"}},
                {"select": {"label": "Kind", "value": "password"}},
                {"select": {"label": "Provider", "value": ""}},
                {"click": {"name": "Create container"}}
            ]),
        )
        .await;
    assert!(v["url"].as_str().unwrap().ends_with(files), "{}", page_summary(&v));
    let credential = |user: &str, password: &str| {
        json!([
            {"goto": files},
            {"fill": {"label": "Username", "value": user}},
            {"fill": {"label": "Password", "value": password}},
            {"click": {"name": "Save credential"}}
        ])
    };
    let v = b.step("credential-empty", credential("", "")).await;
    assert_field_problem(&v, 422, "Username", "Fill in at least one field");
    let v = b.step("credential-saved", credential("svc-reader", "pw-files-PLANTED")).await;
    assert_status(&v, 200);
    assert!(v["url"].as_str().unwrap().ends_with(files), "{}", page_summary(&v));
    let v = b.step("credential-too-long", credential(&"u".repeat(1100), "other")).await;
    assert_field_problem(&v, 422, "Username", "At most 1024");
    let stored = w.api.get(&container_path(ORG, "finance", "files")).await.body;
    assert_eq!(stored["credential"]["username"], "svc-reader", "what is stored stays: {stored}");

    // An organisation's session is refused the platform page.
    let v = b.try_step("platform-refused", json!([{"goto": "/console/platform"}])).await;
    assert_status(&v, 403);

    // Sign out; a platform operator signs in with a single-use link and sees every organisation.
    b.step("signed-out", json!([{"click": {"name": "Sign out"}}])).await;
    let link = console_link(&w, &["--platform", "--scope", "admin"]);
    let v = b.step("platform-link", json!([{"goto": link}])).await;
    assert_status(&v, 200);
    let v = b.step("platform-home", json!([{"click": {"name": "Continue"}}, {"goto": "/console/platform"}])).await;
    assert_status(&v, 200);
    assert_text(&v, "acme");
    let v = b.step("platform-to-org", json!([{"click": {"role": "link", "name": "acme"}}])).await;
    assert!(v["url"].as_str().unwrap().ends_with("/console/orgs/acme"), "{}", page_summary(&v));

    let shots = b.screenshots.clone();
    let steps = b.reports.len();
    b.close().await;
    let pngs = std::fs::read_dir(&shots).unwrap().count();
    assert!(pngs >= steps, "a screenshot per step in {}", shots.display());
    eprintln!("{steps} steps, {pngs} screenshots in {}, {:.1} s", shots.display(), started.elapsed().as_secs_f64());
    // About a minute here (2 cores shared with other builds); the bound leaves room for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(150), "the browser test stays near a minute");
}

/// "Sign in as another user" must show Exact's login page even where the browser is still signed in to Exact
/// (its single sign-on would sign the same person in again without asking): the authorize URL of a
/// `replace_user` start carries the profile's `switch_user_params` (`force_login=1`), a renewal's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_as_another_user_asks_exact_for_its_login_page() {
    let h = chainkeeper_e2e::exact::ExactHarness::start(|_| {}).await;
    let path = format!("{}/authorize", container_path(ORG, "finance", "eol"));
    let renew = h.api.post(&path, json!({})).await;
    assert_eq!(renew.status, 200, "{}", renew.body);
    assert!(!renew.body["authorize_url"].as_str().unwrap().contains("force_login"), "{}", renew.body);
    let replace = h.api.post(&path, json!({"replace_user": true})).await;
    assert_eq!(replace.status, 200, "{}", replace.body);
    let url = url::Url::parse(replace.body["authorize_url"].as_str().unwrap()).unwrap();
    assert!(url.query_pairs().any(|(k, v)| k == "force_login" && v == "1"), "{url}");
}
