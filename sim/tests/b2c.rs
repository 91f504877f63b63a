//! Exact Online's real sign-in in the simulator (`SignIn::AzureB2c`), pinned fact by fact as public evidence
//! shows it (see `sim/src/server/sign_in_flow.rs` for the sources): the start page and its anti-forgery pair, the
//! B2C pages' SETTINGS/SA_FIELDS, SelfAsserted + confirmed with their headers, cookies and CSRF checks, the
//! later steps, the form_post to /signin-azureb2c, and every outcome that stops an unattended sign-in.

mod common;

use std::collections::HashMap;

use chainkeeper_forms::{first_form, forms, script_json};
use common::*;
use exact_sim::browser::{self, Stopped};
use exact_sim::{
    DEFAULT_PASSWORD, DEFAULT_REDIRECT_URI, DEFAULT_TOTP_SECRET, DEFAULT_USERNAME, ExactSim, SignIn, SignInBehaviour,
    SignInOutcome, SimConfig, totp,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

const TENANT: &str = "/exact-sim.onmicrosoft.com/B2C_1A_EOL_SignIn";
const POLICY: &str = "B2C_1A_EOL_SignIn";

fn b2c_config() -> SimConfig {
    SimConfig { sign_in: SignIn::AzureB2c, ..SimConfig::default() }
}

fn jar_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build().unwrap()
}

fn location(r: &reqwest::Response, base: &str) -> Url {
    let loc = r.headers()["location"].to_str().unwrap();
    Url::parse(base).unwrap().join(loc).unwrap()
}

/// `Set-Cookie` values of a response, by name.
fn set_cookies(r: &reqwest::Response) -> HashMap<String, String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn totp_now(sim: &ExactSim) -> String {
    sim.totp_now(DEFAULT_USERNAME).unwrap()
}

/// A B2C page's SETTINGS and SA_FIELDS IDs.
struct B2cPage {
    settings: Value,
    ids: Vec<String>,
}

fn b2c_page(html: &str) -> B2cPage {
    let settings = script_json(html, "SETTINGS").unwrap_or_else(|| panic!("no SETTINGS in {html}"));
    let ids = script_json(html, "SA_FIELDS").unwrap()["AttributeFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ID"].as_str().unwrap().to_string())
        .collect();
    B2cPage { settings, ids }
}

/// Drives the start page with `c` up to the B2C sign-in page; returns (page URL, page HTML).
async fn to_b2c_sign_in_page(sim: &ExactSim, c: &reqwest::Client, username: &str) -> (Url, String) {
    let r = c.get(authorize_url(sim, "st", None)).send().await.unwrap();
    let start = location(&r, &sim.base_url);
    let html = c.get(start.clone()).send().await.unwrap().text().await.unwrap();
    let form = first_form(&html).unwrap();
    let mut fields = form.entries(form.default_submitter());
    chainkeeper_forms::set_entry(&mut fields, "LoginForm$UserName", username);
    let r = c.post(start.join(form.action.as_deref().unwrap()).unwrap()).form(&fields).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let b2c = location(&r, &sim.base_url);
    let html = c.get(b2c.clone()).send().await.unwrap().text().await.unwrap();
    (b2c, html)
}

/// `POST <tenant>/SelfAsserted` as B2C's script does; returns (HTTP status, body JSON).
async fn self_asserted(
    sim: &ExactSim,
    c: &reqwest::Client,
    s: &Value,
    fields: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut u =
        Url::parse(&format!("{}{}/SelfAsserted", sim.b2c_base_url, s["hosts"]["tenant"].as_str().unwrap())).unwrap();
    u.query_pairs_mut()
        .append_pair("tx", s["transId"].as_str().unwrap())
        .append_pair("p", s["hosts"]["policy"].as_str().unwrap());
    let mut body = vec![("request_type", "RESPONSE")];
    body.extend_from_slice(fields);
    let mut rb = c.post(u).form(&body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn xhr(s: &Value) -> Vec<(&'static str, String)> {
    vec![("X-CSRF-TOKEN", s["csrf"].as_str().unwrap().to_string()), ("X-Requested-With", "XMLHttpRequest".into())]
}

async fn post_step(sim: &ExactSim, c: &reqwest::Client, s: &Value, fields: &[(&str, &str)]) -> Value {
    let h = xhr(s);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, json) = self_asserted(sim, c, s, fields, &h).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json
}

/// `GET <tenant>/api/<api>/confirmed?…` with the page's values.
async fn confirmed(sim: &ExactSim, c: &reqwest::Client, s: &Value) -> reqwest::Response {
    let api = s["api"].as_str().unwrap();
    let mut u =
        Url::parse(&format!("{}{}/api/{api}/confirmed", sim.b2c_base_url, s["hosts"]["tenant"].as_str().unwrap()))
            .unwrap();
    {
        let mut q = u.query_pairs_mut();
        if api == "CombinedSigninAndSignup" {
            q.append_pair("rememberMe", "false");
        }
        q.append_pair("csrf_token", s["csrf"].as_str().unwrap())
            .append_pair("tx", s["transId"].as_str().unwrap())
            .append_pair("p", s["hosts"]["policy"].as_str().unwrap());
    }
    c.get(u).send().await.unwrap()
}

// ------------------------------------------------------------------ the whole flow

#[tokio::test]
async fn browser_signs_in_through_b2c_and_credentials_go_to_the_b2c_host_only() {
    let sim = start(b2c_config()).await;
    let loc =
        browser::login(&authorize_url(&sim, "s&1", None), DEFAULT_USERNAME, DEFAULT_PASSWORD, Some(&totp_now(&sim)))
            .await
            .unwrap();
    assert!(loc.starts_with(&format!("{DEFAULT_REDIRECT_URI}?")), "{loc}");
    let q = query_of(&loc);
    assert_eq!(q["state"], "s&1");
    let r = exchange(&sim, &q["code"], None).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let st = sim.stats().sign_in;
    assert_eq!(st.start_host.password_seen, 0, "{st:?}");
    assert_eq!(st.b2c_host.password_seen, 1, "{st:?}");
    assert_eq!(st.b2c_host.code_submissions, 1);
    assert_eq!(st.start_host.code_submissions, 0);
    assert!(st.start_host.username_seen >= 1 && st.b2c_host.username_seen >= 1, "{st:?}");
    assert_eq!((st.start_pages, st.b2c_pages, st.completed, st.self_asserted_posts), (1, 2, 1, 2));
    assert_eq!((st.password_rejected, st.code_rejected, st.csrf_rejections, st.antiforgery_rejections), (0, 0, 0, 0));
    // The stats are also served over HTTP.
    let http: Value = client().get(format!("{}/_sim/stats", sim.base_url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(http["sign_in"]["b2c_host"]["password_seen"], 1);
}

#[tokio::test]
async fn azure_b2c_is_the_default_and_simple_stays_switchable() {
    assert_eq!(SimConfig::default().sign_in, SignIn::AzureB2c);
    let sim = start(SimConfig { sign_in: SignIn::Simple, ..SimConfig::default() }).await;
    let html = client().get(authorize_url(&sim, "s", None)).send().await.unwrap().text().await.unwrap();
    assert!(first_form(&html).unwrap().has_field("Password"), "Simple: one form with the password");
    assert_eq!(sim.stats().sign_in.start_host.password_seen, 0);
    let _ = get_code(&sim, None).await;
    assert_eq!(sim.stats().sign_in.start_host.password_seen, 1, "Simple posts the password to the start host");

    let r = client().post(format!("{}/_sim/sign_in?mode=azure_b2c", sim.base_url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(authorize_url(&sim, "s", None)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/?ReturnUrl="));
    let hosts: Value = client().get(format!("{}/_sim/hosts", sim.base_url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(hosts, json!({"start": sim.base_url, "b2c": sim.b2c_base_url, "sign_in": "azure_b2c"}));
    assert_ne!(sim.base_url, sim.b2c_base_url);

    let c = SimConfig::from_json(
        r#"{"sign_in": "azure_b2c", "sign_in_behaviours": {"Bob": {"outcome": "email_code", "user_agent_step": true}}}"#,
    )
    .unwrap();
    assert_eq!(c.sign_in, SignIn::AzureB2c);
    assert_eq!(
        c.sign_in_behaviours["Bob"],
        SignInBehaviour { outcome: SignInOutcome::EmailCode, user_agent_step: true }
    );
    assert!(SimConfig::from_json(r#"{"sign_in": "b2c"}"#).is_err());
}

// ------------------------------------------------------------------ 1. start page

#[tokio::test]
async fn authorize_without_session_sends_to_the_start_page_with_an_anti_forgery_pair() {
    let sim = start(b2c_config()).await;
    let c = client();
    let auth = authorize_url(&sim, "st", None);
    let r = c.get(&auth).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let start_url = location(&r, &sim.base_url);
    assert_eq!(start_url.path(), "/");
    let return_url = start_url.query_pairs().find(|(k, _)| k == "ReturnUrl").unwrap().1.into_owned();
    let a = Url::parse(&auth).unwrap();
    assert_eq!(return_url, format!("{}?{}", a.path(), a.query().unwrap()), "ReturnUrl is the authorize URL");

    let r = c.get(start_url.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = set_cookies(&r)["__RequestVerificationToken"].clone();
    let html = r.text().await.unwrap();
    let form = first_form(&html).unwrap();
    assert_eq!(form.method, "post");
    let user = form.field("LoginForm$UserName").unwrap();
    assert_eq!((user.kind.as_str(), user.id()), ("email", Some("LoginForm$UserName")));
    assert!(user.has_autocomplete("username"));
    let token = form.field("__RequestVerificationToken").unwrap();
    assert!(token.is_hidden() && !token.value.is_empty());
    assert_ne!(token.value, cookie, "cookie and form carry paired, different values");
    assert!(form.field_of_kind("password").is_none(), "the start page asks for the e-mail address only");
    assert_eq!(form.default_submitter().unwrap().id(), Some("submit_btn"));
}

#[tokio::test]
async fn start_post_checks_the_anti_forgery_cookie_and_field_then_redirects_to_b2c() {
    let sim = start(b2c_config()).await;
    let c = jar_client();
    let start = location(&c.get(authorize_url(&sim, "st", None)).send().await.unwrap(), &sim.base_url);
    let html = c.get(start.clone()).send().await.unwrap().text().await.unwrap();
    let token = first_form(&html).unwrap().field("__RequestVerificationToken").unwrap().value.clone();
    let post = |c: reqwest::Client, fields: Vec<(&'static str, String)>| {
        let start = start.clone();
        async move { c.post(start).form(&fields).send().await.unwrap() }
    };
    let user = ("LoginForm$UserName", DEFAULT_USERNAME.to_string());
    // No cookie (another client), no field, a field from another page.
    let r = post(client(), vec![user.clone(), ("__RequestVerificationToken", token.clone())]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("anti-forgery cookie"));
    let r = post(c.clone(), vec![user.clone()]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("anti-forgery form field"));
    let r = post(c.clone(), vec![user.clone(), ("__RequestVerificationToken", format!("{token}x"))]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("do not match"));
    assert_eq!(sim.stats().sign_in.antiforgery_rejections, 3);

    let r = post(c.clone(), vec![user, ("__RequestVerificationToken", token)]).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let b2c = location(&r, &sim.base_url);
    assert_eq!(b2c.origin().ascii_serialization(), sim.b2c_base_url, "to the other host");
    assert_eq!(b2c.path(), format!("{TENANT}/oauth2/v2.0/authorize"), "under the tenant path and policy");
    let q: HashMap<_, _> = b2c.query_pairs().into_owned().collect();
    assert_eq!(q["response_mode"], "form_post");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["login_hint"], DEFAULT_USERNAME);
    assert_eq!(q["redirect_uri"], format!("{}/signin-azureb2c", sim.base_url));
    assert!(!q["state"].is_empty());
    let st = sim.stats().sign_in;
    assert_eq!(st.start_host.password_seen, 0);
}

// ------------------------------------------------------------------ 2. B2C pages

#[tokio::test]
async fn b2c_sign_in_page_has_no_form_only_settings_and_sa_fields() {
    let sim = start(b2c_config()).await;
    let c = jar_client();
    let r = c.get(authorize_url(&sim, "st", None)).send().await.unwrap();
    let start = location(&r, &sim.base_url);
    let html = c.get(start.clone()).send().await.unwrap().text().await.unwrap();
    let form = first_form(&html).unwrap();
    let mut fields = form.entries(None);
    chainkeeper_forms::set_entry(&mut fields, "LoginForm$UserName", DEFAULT_USERNAME);
    let b2c = location(&c.post(start).form(&fields).send().await.unwrap(), &sim.base_url);
    let r = c.get(b2c).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookies = set_cookies(&r);
    let html = r.text().await.unwrap();
    assert!(forms(&html).is_empty(), "no HTML form: the script builds it");
    let p = b2c_page(&html);
    assert_eq!(p.ids, vec!["signInName", "password"]);
    let s = &p.settings;
    assert_eq!(s["api"], "CombinedSigninAndSignup");
    assert_eq!(s["hosts"]["tenant"], TENANT);
    assert_eq!(s["hosts"]["policy"], POLICY);
    assert!(s["transId"].as_str().unwrap().starts_with("StateProperties="));
    assert_eq!(cookies["x-ms-cpim-csrf"], s["csrf"].as_str().unwrap(), "the CSRF token is in the cookie and the page");
    assert!(cookies.contains_key("x-ms-cpim-trans"));
    assert!(html.contains("XMLHttpRequest") && html.contains("/SelfAsserted?tx=") && html.contains("/confirmed?"));
}

#[tokio::test]
async fn self_asserted_requires_csrf_header_xhr_header_cookies_and_its_transaction() {
    let sim = start(b2c_config()).await;
    let c = jar_client();
    let (_, html) = to_b2c_sign_in_page(&sim, &c, DEFAULT_USERNAME).await;
    let s = b2c_page(&html).settings;
    let csrf = s["csrf"].as_str().unwrap().to_string();
    let creds = [("signInName", DEFAULT_USERNAME), ("password", DEFAULT_PASSWORD)];
    let xrw = ("X-Requested-With", "XMLHttpRequest");
    type Case<'a> = (&'a str, reqwest::Client, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("no X-CSRF-TOKEN", c.clone(), vec![xrw]),
        ("wrong X-CSRF-TOKEN", c.clone(), vec![xrw, ("X-CSRF-TOKEN", "bm9wZQ==")]),
        ("no X-Requested-With", c.clone(), vec![("X-CSRF-TOKEN", &csrf)]),
        ("no cookies", client(), vec![xrw, ("X-CSRF-TOKEN", &csrf)]),
    ];
    let n = cases.len() as u64;
    for (what, client, headers) in cases {
        let (status, body) = self_asserted(&sim, &client, &s, &creds, &headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["status"], "400", "{what}");
    }
    // Another transaction id, another policy.
    let mut other = s.clone();
    other["transId"] = json!("StateProperties=eyJUSUQiOiJub3BlIn0");
    let (status, _) = self_asserted(&sim, &c, &other, &creds, &[xrw, ("X-CSRF-TOKEN", &csrf)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut other = s.clone();
    other["hosts"]["policy"] = json!("B2C_1A_other");
    let (status, _) = self_asserted(&sim, &c, &other, &creds, &[xrw, ("X-CSRF-TOKEN", &csrf)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let st = sim.stats().sign_in;
    assert_eq!(st.csrf_rejections, n + 2);
    assert_eq!(st.self_asserted_posts, 0, "none of them got past the checks");
    assert_eq!(st.b2c_host.password_seen, n + 2, "the password did reach the B2C host each time");

    // request_type=RESPONSE is required.
    let mut u = Url::parse(&format!("{}{TENANT}/SelfAsserted", sim.b2c_base_url)).unwrap();
    u.query_pairs_mut().append_pair("tx", s["transId"].as_str().unwrap()).append_pair("p", POLICY);
    let r = c.post(u).header("X-CSRF-TOKEN", &csrf).header("X-Requested-With", "XMLHttpRequest").form(&creds);
    let body: Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "400");
    // With everything right: {"status":"200"}.
    assert_eq!(post_step(&sim, &c, &s, &creds).await, json!({"status": "200"}));
}

#[tokio::test]
async fn wrong_password_answers_status_400_json_and_the_page_stays() {
    let sim = start(b2c_config()).await;
    let c = jar_client();
    let (_, html) = to_b2c_sign_in_page(&sim, &c, DEFAULT_USERNAME).await;
    let s = b2c_page(&html).settings;
    let wrong = post_step(&sim, &c, &s, &[("signInName", DEFAULT_USERNAME), ("password", "nope")]).await;
    assert_eq!(wrong, json!({"status": "400", "errorCode": "AADB2C90052", "message": "Invalid username or password."}));
    // confirmed before an accepted answer: the same sign-in page again.
    let again = confirmed(&sim, &c, &s).await.text().await.unwrap();
    assert_eq!(b2c_page(&again).ids, vec!["signInName", "password"]);
    let s = b2c_page(&again).settings;
    let ok = post_step(&sim, &c, &s, &[("signInName", "SIM-USER"), ("password", DEFAULT_PASSWORD)]).await;
    assert_eq!(ok, json!({"status": "200"}), "the e-mail address is not case-sensitive");
    let st = sim.stats().sign_in;
    assert_eq!(st.password_rejected, 1);
}

#[tokio::test]
async fn confirmed_checks_the_csrf_token_parameter_and_the_api_of_the_step() {
    let sim = start(b2c_config()).await;
    let c = jar_client();
    let (_, html) = to_b2c_sign_in_page(&sim, &c, DEFAULT_USERNAME).await;
    let s = b2c_page(&html).settings;
    post_step(&sim, &c, &s, &[("signInName", DEFAULT_USERNAME), ("password", DEFAULT_PASSWORD)]).await;
    let mut bad = s.clone();
    bad["csrf"] = json!("d3Jvbmc=");
    assert_eq!(confirmed(&sim, &c, &bad).await.status(), StatusCode::BAD_REQUEST);
    let mut other_api = s.clone();
    other_api["api"] = json!("SelfAsserted");
    assert_eq!(confirmed(&sim, &c, &other_api).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sim.stats().sign_in.csrf_rejections, 1);
    let r = confirmed(&sim, &c, &s).await;
    assert_eq!(r.status(), 200);
    let totp_page = b2c_page(&r.text().await.unwrap());
    assert_eq!(
        totp_page.ids,
        vec!["rememberMePeriodChangeInfo", "totpVerificationCode", "reset_totp", "totp_skip_days"]
    );
    assert_eq!(totp_page.settings["api"], "SelfAsserted");
}

// ------------------------------------------------------------------ 3. TOTP, form_post, session

#[tokio::test]
async fn totp_on_the_sim_clock_then_form_post_to_signin_azureb2c_then_consent_then_code() {
    let sim = start(b2c_config()).await;
    let c = jar_client();
    let (_, html) = to_b2c_sign_in_page(&sim, &c, DEFAULT_USERNAME).await;
    let s = b2c_page(&html).settings;
    post_step(&sim, &c, &s, &[("signInName", DEFAULT_USERNAME), ("password", DEFAULT_PASSWORD)]).await;
    let s = b2c_page(&confirmed(&sim, &c, &s).await.text().await.unwrap()).settings;
    let secret = totp::base32_decode(DEFAULT_TOTP_SECRET).unwrap();
    let old = totp::totp(&secret, sim.clock().now_ms() / 1000 - 300, 6);
    let wrong =
        post_step(&sim, &c, &s, &[("totpVerificationCode", &old), ("reset_totp", "false"), ("totp_skip_days", "true")])
            .await;
    assert_eq!(wrong["status"], "400");
    assert!(wrong["message"].as_str().unwrap().contains("verification code"));
    let code = totp_now(&sim);
    let ok = post_step(
        &sim,
        &c,
        &s,
        &[("totpVerificationCode", &code), ("reset_totp", "false"), ("totp_skip_days", "true")],
    )
    .await;
    assert_eq!(ok["status"], "200");

    // The last page posts state and code to the start host by itself.
    let r = confirmed(&sim, &c, &s).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(script_json(&html, "SETTINGS").is_none());
    let form = first_form(&html).unwrap();
    assert_eq!(form.method, "post");
    assert_eq!(form.action.as_deref(), Some(format!("{}/signin-azureb2c", sim.base_url).as_str()));
    let entries = form.entries(None);
    let names: Vec<_> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["state", "code"]);
    assert!(html.contains("document.forms[0].submit()"));

    // Without the correlation cookie (another browser): refused.
    let r = client().post(format!("{}/signin-azureb2c", sim.base_url)).form(&entries).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sim.stats().sign_in.callback_rejections, 1);
    // With it: the session cookie, and back to the authorize URL.
    let r = c.post(format!("{}/signin-azureb2c", sim.base_url)).form(&entries).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(set_cookies(&r).contains_key(".ASPXAUTH"));
    let back = location(&r, &sim.base_url);
    assert_eq!(back.path(), "/api/oauth2/auth");
    // The code is single use.
    let r = c.post(format!("{}/signin-azureb2c", sim.base_url)).form(&entries).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // First authorization of this app by this user: the consent form, then the code.
    let html = c.get(back.clone()).send().await.unwrap().text().await.unwrap();
    let form = first_form(&html).unwrap();
    let allow = form.fields.iter().find(|f| f.name == "Allow" && f.value == "yes").unwrap();
    let r = c.post(sim.authorize_url()).form(&form.entries(Some(allow))).send().await.unwrap();
    let app = location(&r, &sim.base_url);
    assert!(app.as_str().starts_with(DEFAULT_REDIRECT_URI), "{app}");
    let q = query_of(app.as_str());
    assert_eq!(q["state"], "st");
    assert_eq!(exchange(&sim, &q["code"], None).await.status, 200);

    // The session stays: the next authorization goes straight to the app; force_login=1 asks again.
    let again = authorize_url(&sim, "again", None).replace("&force_login=1", "");
    let r = c.get(&again).send().await.unwrap();
    assert!(location(&r, &sim.base_url).as_str().starts_with(DEFAULT_REDIRECT_URI));
    let forced = authorize_url(&sim, "forced", None);
    assert!(forced.contains("force_login=1"));
    let r = c.get(&forced).send().await.unwrap();
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/?ReturnUrl="));
    assert_eq!(sim.stats().sign_in.completed, 1);
}

#[tokio::test]
async fn a_user_without_totp_goes_from_password_to_the_form_post() {
    let mut config = b2c_config();
    config.users[0].totp_secret_base32 = None;
    let sim = start(config).await;
    let loc = browser::login(&authorize_url(&sim, "s", None), DEFAULT_USERNAME, DEFAULT_PASSWORD, None).await.unwrap();
    assert!(loc.starts_with(DEFAULT_REDIRECT_URI));
    assert_eq!(sim.stats().sign_in.b2c_pages, 1);
}

#[tokio::test]
async fn user_agent_step_comes_between_password_and_totp() {
    let sim = start(b2c_config()).await;
    sim.set_sign_in_behaviour(DEFAULT_USERNAME, SignInBehaviour { user_agent_step: true, ..Default::default() });
    let c = jar_client();
    let (_, html) = to_b2c_sign_in_page(&sim, &c, DEFAULT_USERNAME).await;
    let s = b2c_page(&html).settings;
    post_step(&sim, &c, &s, &[("signInName", DEFAULT_USERNAME), ("password", DEFAULT_PASSWORD)]).await;
    let p = b2c_page(&confirmed(&sim, &c, &s).await.text().await.unwrap());
    assert_eq!(p.ids, vec!["userAgent"]);
    let empty = post_step(&sim, &c, &p.settings, &[("userAgent", "")]).await;
    assert_eq!(empty["status"], "400");
    post_step(&sim, &c, &p.settings, &[("userAgent", "Mozilla/5.0")]).await;
    let p = b2c_page(&confirmed(&sim, &c, &p.settings).await.text().await.unwrap());
    assert!(p.ids.contains(&"totpVerificationCode".to_string()));
    // The test browser handles the extra step.
    let loc =
        browser::login(&authorize_url(&sim, "s", None), DEFAULT_USERNAME, DEFAULT_PASSWORD, Some(&totp_now(&sim)))
            .await
            .unwrap();
    assert!(loc.starts_with(DEFAULT_REDIRECT_URI));
}

// ------------------------------------------------------------------ 4. outcomes that stop a sign-in

async fn stopped_with(sim: &ExactSim, outcome: SignInOutcome) -> Stopped {
    sim.set_sign_in_behaviour(DEFAULT_USERNAME, SignInBehaviour { outcome, ..Default::default() });
    let err = browser::login(&authorize_url(sim, "s", None), DEFAULT_USERNAME, DEFAULT_PASSWORD, Some(&totp_now(sim)))
        .await
        .expect_err("the sign-in must stop");
    err.downcast_ref::<Stopped>().unwrap_or_else(|| panic!("not a Stopped: {err:#}")).clone()
}

#[tokio::test]
async fn wrong_password_and_wrong_totp_outcomes() {
    let sim = start(b2c_config()).await;
    assert_eq!(
        stopped_with(&sim, SignInOutcome::WrongPassword).await,
        Stopped::PasswordRejected("Invalid username or password.".into())
    );
    assert!(matches!(stopped_with(&sim, SignInOutcome::WrongTotp).await, Stopped::CodeRejected(_)));
    let st = sim.stats().sign_in;
    assert_eq!((st.password_rejected, st.code_rejected, st.completed), (1, 1, 0));
    // A plain wrong password is refused the same way.
    sim.set_sign_in_behaviour(DEFAULT_USERNAME, SignInBehaviour::default());
    let err = browser::login(&authorize_url(&sim, "s", None), DEFAULT_USERNAME, "wrong", None).await.unwrap_err();
    assert!(matches!(err.downcast_ref::<Stopped>(), Some(Stopped::PasswordRejected(_))));
}

#[tokio::test]
async fn captcha_outcomes_show_their_markers() {
    let sim = start(b2c_config()).await;
    assert_eq!(stopped_with(&sim, SignInOutcome::Recaptcha).await, Stopped::Captcha("reCAPTCHA".into()));
    assert_eq!(stopped_with(&sim, SignInOutcome::Hcaptcha).await, Stopped::Captcha("hCaptcha".into()));
    assert_eq!(
        stopped_with(&sim, SignInOutcome::CloudflareChallenge).await,
        Stopped::Captcha("Cloudflare challenge".into())
    );
    assert_eq!(sim.stats().sign_in.captcha_pages, 3);

    // The pages themselves: a widget and a field no script fills; a 403 challenge.
    sim.set_sign_in_behaviour(
        DEFAULT_USERNAME,
        SignInBehaviour { outcome: SignInOutcome::Recaptcha, ..Default::default() },
    );
    let c = jar_client();
    let (_, html) = to_b2c_sign_in_page(&sim, &c, DEFAULT_USERNAME).await;
    assert!(html.contains("class=\"g-recaptcha\"") && html.contains("iframe") && html.contains("recaptcha/api2"));
    let p = b2c_page(&html);
    assert_eq!(p.ids, vec!["signInName", "password", "captchaControlChallengeCode"]);
    let r = post_step(&sim, &c, &p.settings, &[("signInName", DEFAULT_USERNAME), ("password", DEFAULT_PASSWORD)]).await;
    assert_eq!(r["status"], "400");
    let frame = c.get(format!("{}/_captcha/recaptcha/api2/anchor?k=x", sim.b2c_base_url)).send().await.unwrap();
    assert_eq!(frame.status(), 200, "the widget's frame stays on the B2C host");

    sim.set_sign_in_behaviour(
        DEFAULT_USERNAME,
        SignInBehaviour { outcome: SignInOutcome::CloudflareChallenge, ..Default::default() },
    );
    let c = jar_client();
    let start = location(&c.get(authorize_url(&sim, "s", None)).send().await.unwrap(), &sim.base_url);
    let html = c.get(start.clone()).send().await.unwrap().text().await.unwrap();
    let mut fields = first_form(&html).unwrap().entries(None);
    chainkeeper_forms::set_entry(&mut fields, "LoginForm$UserName", DEFAULT_USERNAME);
    let b2c = location(&c.post(start).form(&fields).send().await.unwrap(), &sim.base_url);
    let r = c.get(b2c).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["cf-mitigated"], "challenge");
    let html = r.text().await.unwrap();
    assert!(html.contains("Just a moment...") && html.contains("challenges.cloudflare") && !html.contains("SETTINGS"));
}

#[tokio::test]
async fn locked_account_outcome() {
    let sim = start(b2c_config()).await;
    let Stopped::Locked(msg) = stopped_with(&sim, SignInOutcome::Locked).await else { panic!("not locked") };
    assert!(msg.contains("locked"), "{msg}");
    assert_eq!(sim.stats().sign_in.locked_rejections, 1);
}

#[tokio::test]
async fn email_code_outcome_asks_for_a_mailed_code_a_person_can_enter() {
    let sim = start(b2c_config()).await;
    assert_eq!(stopped_with(&sim, SignInOutcome::EmailCode).await, Stopped::EmailCode);
    assert_eq!(sim.stats().sign_in.email_code_pages, 1);
    // A person reads the mail and types the code.
    let c = jar_client();
    let (_, html) = to_b2c_sign_in_page(&sim, &c, DEFAULT_USERNAME).await;
    let s = b2c_page(&html).settings;
    post_step(&sim, &c, &s, &[("signInName", DEFAULT_USERNAME), ("password", DEFAULT_PASSWORD)]).await;
    let p = b2c_page(&confirmed(&sim, &c, &s).await.text().await.unwrap());
    assert_eq!(p.ids, vec!["emailVerificationCode"]);
    let wrong = post_step(&sim, &c, &p.settings, &[("emailVerificationCode", &totp_now(&sim))]).await;
    assert_eq!(wrong["status"], "400", "the TOTP is not the mailed code");
    let mailed = sim.email_code(DEFAULT_USERNAME).unwrap();
    let ok = post_step(&sim, &c, &p.settings, &[("emailVerificationCode", &mailed)]).await;
    assert_eq!(ok["status"], "200");
    let html = confirmed(&sim, &c, &p.settings).await.text().await.unwrap();
    assert!(html.contains("signin-azureb2c"));
}

#[tokio::test]
async fn changed_page_outcome_has_no_settings_for_a_driver() {
    let sim = start(b2c_config()).await;
    assert!(matches!(stopped_with(&sim, SignInOutcome::ChangedPage).await, Stopped::UnknownPage(_)));
    assert_eq!(sim.stats().sign_in.changed_pages, 1);
    let c = jar_client();
    let (_, html) = to_b2c_sign_in_page(&sim, &c, DEFAULT_USERNAME).await;
    assert!(script_json(&html, "SETTINGS").is_none() && script_json(&html, "SA_FIELDS").is_none());
    let config = script_json(&html, "$Config").expect("the data is still there, in a new shape");
    assert_eq!(config["AttributeFields"][1]["ID"], "password");
}

#[tokio::test]
async fn outcomes_are_per_user_and_settable_over_http() {
    let mut config = b2c_config();
    let mut other = config.users[0].clone();
    other.username = "other@example.com".into();
    other.user_id = "0a0b0c0d-0000-4000-8000-000000000002".into();
    other.totp_secret_base32 = None;
    config.users.push(other);
    let sim = start(config).await;
    let r = client()
        .post(format!("{}/_sim/sign_in?username={DEFAULT_USERNAME}&outcome=locked", sim.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let err =
        browser::login(&authorize_url(&sim, "s", None), DEFAULT_USERNAME, DEFAULT_PASSWORD, Some(&totp_now(&sim)))
            .await
            .unwrap_err();
    assert!(matches!(err.downcast_ref::<Stopped>(), Some(Stopped::Locked(_))));
    let loc =
        browser::login(&authorize_url(&sim, "s", None), "other@example.com", DEFAULT_PASSWORD, None).await.unwrap();
    assert!(loc.starts_with(DEFAULT_REDIRECT_URI), "the other user is not locked");
    let r = client().post(format!("{}/_sim/sign_in?username=x&outcome=nonsense", sim.base_url)).send().await.unwrap();
    assert_eq!(r.status(), 400);
}
