//! Exact Online's real sign-in, on two loopback hosts: the start host (`start.exactonline.<tld>`: the
//! authorize URL, the e-mail form, `/signin-azureb2c`) and the B2C host (`login.exact.com`: Azure AD B2C
//! self-asserted pages). Active when `SimConfig::sign_in` is [`SignIn::AzureB2c`].
//!
//! ## The flow, and the evidence for each step
//!
//! 1. `GET /api/oauth2/auth?…` without a session → `302 /?ReturnUrl=<that URL>`: the start page, a plain form
//!    with `LoginForm$UserName` (the e-mail address) and a hidden `__RequestVerificationToken`, paired with a
//!    cookie of the same name (ASP.NET anti-forgery: the cookie and the form carry different, paired values).
//!    Evidence: a Go client of Exact's web login (2026, package `exactonline`, file content seen through the
//!    code index; its repository was not named there) GETs `https://start.exactonline.nl/`, takes
//!    `name="__RequestVerificationToken" … value="…"` and POSTs `LoginForm$UserName` + the token back to `/`;
//!    a Playwright scraper (2025–26) fills `[id="LoginForm$UserName"]` and clicks `button[type="submit"]`; a
//!    Selenium script opens `https://start.exactonline.nl/?ReturnUrl=%2fdocs%2fMenuPortal.aspx`, fills
//!    `LoginForm$UserName` and clicks `#submit_btn`. The anti-forgery pairing is ASP.NET's synchronizer-token
//!    pattern (`__RequestVerificationToken` field + cookie); its error texts are ASP.NET MVC's.
//! 2. Posting the start form → `302` to the B2C host's `/{tenant}/{policy}/oauth2/v2.0/authorize?…` (OpenID
//!    Connect, `response_mode=form_post`, `login_hint` = the e-mail). The Go client says "redirects through
//!    Login.aspx → B2C authorize"; the simulator skips the intermediate `Login.aspx` hop.
//! 3. B2C pages have no HTML form: a script builds it from `var SETTINGS = {…}` (`api`, `csrf`, `transId`,
//!    `hosts.tenant`, `hosts.policy`) and `var SA_FIELDS = {"AttributeFields":[{"ID":…},…]}`. Evidence: the Go
//!    client's `parseB2CSettings`/`parseSAFields`; a B2C `SETTINGS` captured in a 2026 test fixture of another
//!    B2C client (`"api":"CombinedSigninAndSignup"`, `"transId":"StateProperties=…"`,
//!    `"hosts":{"tenant":"/<tenant>.onmicrosoft.com/B2C_1A_signin","policy":"B2C_1A_signin",…}`): `hosts.tenant`
//!    is the tenant *and* policy path, and every later URL is `<origin><hosts.tenant>/…`.
//! 4. Each step: `POST <tenant>/SelfAsserted?tx=<transId>&p=<policy>` with `X-CSRF-TOKEN: <csrf>` and
//!    `X-Requested-With: XMLHttpRequest`, form body `request_type=RESPONSE` + the fields; answer (HTTP 200)
//!    `{"status":"200"}` or `{"status":"400",…,"message":"…"}`; then `GET <tenant>/api/<api>/confirmed?
//!    csrf_token=…&tx=…&p=…` (plus `rememberMe=false` for `CombinedSigninAndSignup`) serves the next page.
//!    Evidence: the Go client's `b2cPost`/`b2cConfirmed`; B2C clients for other tenants (Python, C#, JS,
//!    PHP) post the same way. Wrong-password body with `errorCode`: azure-ad-b2c/samples issue #638
//!    (`{"status":"400","errorCode":"AADB2C90052","message":"Invalid username or password."}`).
//!    CSRF: Microsoft's "Cookies definitions for Azure AD B2C"
//!    (https://learn.microsoft.com/en-us/azure/active-directory-b2c/cookie-definitions): the synchronizer token
//!    is in the `x-ms-cpim-csrf` cookie and in the request (`csrf_token` in the URL), both must exist and match;
//!    `x-ms-cpim-trans` tracks the transaction. A stale transaction gives HTTP 400 at `SelfAsserted`
//!    (AzureAD/microsoft-authentication-library-for-js issue #1124, azure-ad-b2c/samples issue #608).
//! 5. Later steps (the Go client's `fillB2CFields` and its tests): `userAgent` (sometimes, "FetchUserAgent"),
//!    then the TOTP page with fields `rememberMePeriodChangeInfo` (informational), `totpVerificationCode`,
//!    `reset_totp` (`false`), `totp_skip_days` (`true`). The last page is a form that posts `state` and `code` to
//!    the start host's `/signin-azureb2c` by itself (the form_post "Working…" page of Microsoft's identity
//!    stack). `/signin-azureb2c` sets the session cookie and sends the browser back to the `ReturnUrl` — the
//!    authorize URL — which now redirects to the app with the authorization code (the code/token rules of the
//!    simulator are unchanged).
//! 6. What stops an unattended sign-in ([`SignInOutcome`]): captcha markers as a 2026 Exact web-login client
//!    looks for them (`iframe[src*="recaptcha"]`, `iframe[src*="hcaptcha"]`, `iframe[src*="challenges.cloudflare"]`,
//!    `.g-recaptcha`, `.h-captcha`, "verify you are human", "checking your browser"), a locked account (B2C's
//!    "Your account has been locked. Contact your support person to unlock it, then try again.", quoted in
//!    MicrosoftDocs/azure-docs issue #27733), a code sent by e-mail (`emailVerificationCode`), a changed page.
//!
//! ## Where the simulator departs from the evidence (or has none)
//! - Plain `http` on 127.0.0.1 with two ports: cookies carry no `Secure` flag (real hosts are https-only), and
//!   since cookies are not isolated by port, both hosts see each other's cookies; the names differ
//!   (`__RequestVerificationToken`, `.AspNet.Correlation.AzureB2C`, `.ASPXAUTH` on the start host; `x-ms-cpim-*`
//!   on the B2C host) as they do in reality. The two hosts are same-site here; in reality they are cross-site.
//! - Names no public source shows are the simulator's own: the tenant/policy path
//!   (`/exact-sim.onmicrosoft.com/B2C_1A_EOL_SignIn`), the start site's B2C client id, the session cookie
//!   `.ASPXAUTH` (ASP.NET forms authentication's default), the correlation cookie (OWIN's naming).
//! - Error bodies no source shows: the anti-forgery failure is HTTP 400 with ASP.NET MVC's message (classic
//!   ASP.NET would answer 500); a CSRF or transaction failure at `SelfAsserted`/`confirmed` is HTTP 400 with a
//!   `{"status":"400","message":…}` body (the HTTP 400 is evidenced, the body is not). The TOTP, e-mail-code,
//!   captcha and lock messages' wording is the simulator's (the lock text follows B2C's). `X-Requested-With`
//!   is required (every public client sends it; whether B2C insists is not known).
//! - The `csrf` value stays the same for a whole transaction (the Go client re-reads `SETTINGS` on every page,
//!   so rotation would not hurt it; whether B2C rotates is not known). `totp_skip_days` is accepted and has no
//!   effect. `SA_FIELDS` entries carry only `ID` (real ones carry more keys; clients read only `ID`).
//! - No evidence shows Exact's consent page after B2C; the simulator keeps its own consent form (start host,
//!   first authorization of an app by a user), as in `Simple` mode.

// Handlers return ready `Response`s.
#![allow(clippy::result_large_err)]

mod pages;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::json;
use sha2::Sha256;

use super::{
    AUTH_PATH, CodeGrant, Inner, LOGIN_SESSION_LIFETIME_MS, LoginSession, Shared, Stage, consent_page, dur_ms,
    json_response, parse_form, random_b64, random_id, redirect, redirect_with,
};
use crate::sign_in::{HostSignInStats, SignIn, SignInBehaviour, SignInOutcome};
use crate::totp;

/// B2C tenant and policy: `hosts.tenant` is both, as on real B2C pages.
pub(crate) const POLICY: &str = "B2C_1A_EOL_SignIn";
pub(crate) const TENANT: &str = "/exact-sim.onmicrosoft.com/B2C_1A_EOL_SignIn";
/// The start site's registration at the B2C tenant.
pub(crate) const WEB_CLIENT_ID: &str = "exact-online-start-site";
pub(crate) const CALLBACK_PATH: &str = "/signin-azureb2c";

pub(crate) const ANTIFORGERY_COOKIE: &str = "__RequestVerificationToken";
pub(crate) const ANTIFORGERY_FIELD: &str = "__RequestVerificationToken";
pub(crate) const USERNAME_FIELD: &str = "LoginForm$UserName";
pub(crate) const CORRELATION_COOKIE: &str = ".AspNet.Correlation.AzureB2C";
pub(crate) const SESSION_COOKIE: &str = ".ASPXAUTH";
pub(crate) const CSRF_COOKIE: &str = "x-ms-cpim-csrf";
pub(crate) const TRANS_COOKIE: &str = "x-ms-cpim-trans";

const COMBINED: &str = "CombinedSigninAndSignup";
const SELF_ASSERTED: &str = "SelfAsserted";
/// A B2C authorization code (for the start site) lives this long.
const B2C_CODE_LIFETIME_MS: i64 = 5 * 60 * 1000;
const TX_LIFETIME_MS: i64 = 3600 * 1000;

const WRONG_PASSWORD: &str = "Invalid username or password.";
const LOCKED: &str = "Your account has been locked. Contact your support person to unlock it, then try again.";
const WRONG_CODE: &str = "The verification code you entered is not valid. Please try again.";
const CAPTCHA_REQUIRED: &str = "Please confirm that you are not a robot.";

// ---------------------------------------------------------------- state

/// A B2C page (step) of one sign-in transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    SignIn,
    UserAgent,
    Totp,
    EmailCode,
    Done,
}

impl Step {
    fn api(self) -> &'static str {
        if self == Step::SignIn { COMBINED } else { SELF_ASSERTED }
    }
}

/// One B2C sign-in transaction (`x-ms-cpim-trans`, `transId`).
struct Tx {
    csrf: String,
    trans_cookie: String,
    /// The start host's `state` for this authorization request (echoed in the form_post).
    start_state: String,
    /// `login_hint`: whose sign-in page this is (captcha and page-shape outcomes follow it).
    hint: String,
    /// The user the password step authenticated.
    user_id: Option<String>,
    username: Option<String>,
    /// The step whose page is shown (and whose answer `SelfAsserted` takes).
    page: Step,
    /// `SelfAsserted` accepted `page`; `confirmed` then serves `next`.
    answered: bool,
    next: Step,
    created_ms: i64,
}

/// The start host's pending OpenID Connect request to B2C (state → correlation).
struct Correlation {
    cookie: String,
    return_url: String,
    created_ms: i64,
}

struct B2cCode {
    user_id: String,
    expires_ms: i64,
}

struct Session {
    user_id: String,
    created_ms: i64,
    /// Set by `/signin-azureb2c`, taken by the next authorize request: what lets `force_login=1` through once.
    fresh: bool,
}

/// Everything the two hosts remember about sign-ins.
pub(crate) struct State {
    pub(crate) mode: SignIn,
    behaviours: HashMap<String, SignInBehaviour>,
    start_base: String,
    b2c_base: String,
    antiforgery_key: [u8; 32],
    correlations: HashMap<String, Correlation>,
    transactions: HashMap<String, Tx>,
    b2c_codes: HashMap<String, B2cCode>,
    sessions: HashMap<String, Session>,
    email_codes: HashMap<String, String>,
}

impl State {
    pub(crate) fn new(mode: SignIn, behaviours: std::collections::BTreeMap<String, SignInBehaviour>) -> State {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        State {
            mode,
            behaviours: behaviours.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect(),
            start_base: String::new(),
            b2c_base: String::new(),
            antiforgery_key: key,
            correlations: HashMap::new(),
            transactions: HashMap::new(),
            b2c_codes: HashMap::new(),
            sessions: HashMap::new(),
            email_codes: HashMap::new(),
        }
    }

    pub(crate) fn set_hosts(&mut self, start_base: &str, b2c_base: &str) {
        self.start_base = start_base.to_string();
        self.b2c_base = b2c_base.to_string();
    }

    pub(crate) fn set_behaviour(&mut self, username: &str, b: SignInBehaviour) {
        self.behaviours.insert(username.to_lowercase(), b);
    }

    pub(crate) fn email_code(&self, username: &str) -> Option<String> {
        self.email_codes.get(&username.to_lowercase()).cloned()
    }

    fn behaviour(&self, username: &str) -> SignInBehaviour {
        self.behaviours.get(&username.to_lowercase()).copied().unwrap_or_default()
    }

    /// The form token paired with an anti-forgery cookie token.
    fn form_token(&self, cookie_token: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.antiforgery_key).expect("HMAC accepts any key length");
        mac.update(cookie_token.as_bytes());
        format!("CfDJ8{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn expire(&mut self, now: i64) {
        self.correlations.retain(|_, c| now - c.created_ms < TX_LIFETIME_MS);
        self.transactions.retain(|_, t| now - t.created_ms < TX_LIFETIME_MS);
        self.b2c_codes.retain(|_, c| now < c.expires_ms);
        self.sessions.retain(|_, s| now - s.created_ms < LOGIN_SESSION_LIFETIME_MS);
    }
}

// ---------------------------------------------------------------- helpers

fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                out.entry(k.trim().to_string()).or_insert_with(|| val.trim().to_string());
            }
        }
    }
    out
}

fn set_cookie(r: &mut Response, name: &str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("{name}={value}; path=/; HttpOnly; SameSite=Lax")) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn clear_cookie(r: &mut Response, name: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("{name}=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT")) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A local path for `ReturnUrl` (`/…`, not `//host`), else `/`.
fn local_return_url(v: Option<&String>) -> String {
    match v {
        Some(u) if u.starts_with('/') && !u.starts_with("//") && !u.starts_with("/\\") => u.clone(),
        _ => "/".to_string(),
    }
}

/// B2C's answer to a `SelfAsserted` post: HTTP 200 and a JSON status.
fn b2c_status(ok: bool, error_code: Option<&str>, message: &str) -> Response {
    if ok {
        return json_response(StatusCode::OK, json!({"status": "200"}));
    }
    let mut body = json!({"status": "400", "message": message});
    if let Some(c) = error_code {
        body["errorCode"] = json!(c);
    }
    json_response(StatusCode::OK, body)
}

/// A request B2C refuses before looking at it (CSRF, transaction): HTTP 400.
fn b2c_bad_request(message: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({"status": "400", "message": message}))
}

fn user_by_name<'a>(g: &'a Inner, username: &str) -> Option<&'a crate::SimUser> {
    g.user_by_name(username.trim())
}

// ---------------------------------------------------------------- start host: authorize

pub(crate) struct AuthorizeRequest {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) state: Option<String>,
    pub(crate) code_challenge: Option<(String, String)>,
    pub(crate) force_login: bool,
    pub(crate) uri: axum::http::Uri,
    pub(crate) headers: HeaderMap,
}

/// `GET /api/oauth2/auth` in B2C mode, after the client and redirect URI checks: with a session, consent (first
/// time) or the code; without one, the start page.
pub(crate) fn authorize(g: &mut Inner, req: AuthorizeRequest, now: i64) -> Response {
    g.sign_in.expire(now);
    let session_id = cookies(&req.headers).get(SESSION_COOKIE).cloned().unwrap_or_default();
    let session_user = match g.sign_in.sessions.get_mut(&session_id) {
        Some(s) if !req.force_login || s.fresh => {
            s.fresh = false;
            Some(s.user_id.clone())
        }
        _ => None,
    };
    if session_user.is_none() && req.force_login {
        // `force_login=1` ("sign in as another user"): the browser's earlier sign-in no longer counts, so the start
        // page asks for an e-mail address again instead of sending the browser straight back here (a loop).
        g.sign_in.sessions.remove(&session_id);
    }
    let Some(user_id) = session_user.filter(|u| g.user_by_id(u).is_some()) else {
        let path_and_query = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or(AUTH_PATH);
        return redirect(&format!("/?ReturnUrl={}", enc(path_and_query)));
    };
    let key = (req.client_id.clone(), user_id.clone());
    if !g.consents.contains(&key) {
        // The simulator's own consent form; `authorize_post` takes it from there.
        g.sessions.retain(|_, ls| now - ls.created_ms < LOGIN_SESSION_LIFETIME_MS);
        let sid = random_id();
        let name = g.user_by_id(&user_id).map(|u| u.full_name.clone()).unwrap_or_default();
        g.sessions.insert(
            sid.clone(),
            LoginSession {
                client_id: req.client_id.clone(),
                redirect_uri: req.redirect_uri,
                state: req.state,
                code_challenge: req.code_challenge,
                stage: Stage::Consent { user_id },
                created_ms: now,
            },
        );
        return consent_page(&sid, AUTH_PATH, &req.client_id, &name);
    }
    let code = format!("stampNL001.!IAAAA{}", random_b64(48));
    g.codes.retain(|_, c| now <= c.expires_ms);
    g.codes.insert(
        code.clone(),
        CodeGrant {
            client_id: req.client_id,
            redirect_uri: req.redirect_uri.clone(),
            user_id,
            code_challenge: req.code_challenge,
            expires_ms: now + dur_ms(g.code_lifetime),
            used: false,
        },
    );
    let mut params = vec![("code", code.as_str())];
    if let Some(st) = &req.state {
        params.push(("state", st));
    }
    redirect_with(&req.redirect_uri, &params)
}

// ---------------------------------------------------------------- start host: start page and callback

type Q = Query<HashMap<String, String>>;

/// `GET /`: the start page (or, with a session, where `ReturnUrl` points).
async fn start_page(AxState(s): AxState<Arc<Shared>>, Query(q): Q, headers: HeaderMap) -> Response {
    let now = s.clock.now_ms();
    let mut g = s.lock();
    g.sign_in.expire(now);
    let return_url = local_return_url(q.get("ReturnUrl"));
    let jar = cookies(&headers);
    if let Some(sess) = jar.get(SESSION_COOKIE).and_then(|id| g.sign_in.sessions.get(id)) {
        if q.contains_key("ReturnUrl") {
            return redirect(&return_url);
        }
        let name = g.user_by_id(&sess.user_id).map(|u| u.full_name.clone()).unwrap_or_default();
        return pages::portal(&name);
    }
    g.stats.sign_in.start_pages += 1;
    let cookie_token = jar.get(ANTIFORGERY_COOKIE).filter(|t| t.len() >= 16).cloned();
    let fresh = cookie_token.is_none();
    let cookie_token = cookie_token.unwrap_or_else(random_id);
    let form_token = g.sign_in.form_token(&cookie_token);
    let action = format!("/?ReturnUrl={}", enc(&return_url));
    let mut r = pages::start_page(&action, &form_token, None, "");
    if fresh {
        set_cookie(&mut r, ANTIFORGERY_COOKIE, &cookie_token);
    }
    r
}

/// `POST /`: the e-mail address, then off to B2C.
async fn start_page_post(AxState(s): AxState<Arc<Shared>>, Query(q): Q, headers: HeaderMap, body: Bytes) -> Response {
    let now = s.clock.now_ms();
    let form = parse_form(&body);
    let mut g = s.lock();
    let g = &mut *g;
    g.sign_in.expire(now);
    let return_url = local_return_url(q.get("ReturnUrl"));
    let jar = cookies(&headers);
    let problem = match (jar.get(ANTIFORGERY_COOKIE), form.get(ANTIFORGERY_FIELD)) {
        (None, _) => Some("The required anti-forgery cookie \"__RequestVerificationToken\" is not present."),
        (_, None) => Some("The required anti-forgery form field \"__RequestVerificationToken\" is not present."),
        (Some(c), Some(f)) if g.sign_in.form_token(c) != *f => {
            Some("The anti-forgery cookie token and form field token do not match.")
        }
        _ => None,
    };
    if let Some(p) = problem {
        g.stats.sign_in.antiforgery_rejections += 1;
        return pages::error(StatusCode::BAD_REQUEST, "Bad Request", p);
    }
    let username = form.get(USERNAME_FIELD).map(|u| u.trim().to_string()).unwrap_or_default();
    if username.is_empty() {
        let token = form.get(ANTIFORGERY_FIELD).cloned().unwrap_or_default();
        let action = format!("/?ReturnUrl={}", enc(&return_url));
        return pages::start_page(&action, &token, Some("Enter your e-mail address."), "");
    }
    let state = format!("OpenIdConnect.AuthenticationProperties={}", random_id());
    let correlation = random_id();
    let nonce = random_id();
    g.sign_in.correlations.insert(
        state.clone(),
        Correlation { cookie: correlation.clone(), return_url: return_url.clone(), created_ms: now },
    );
    let url = format!(
        "{b2c}{TENANT}/oauth2/v2.0/authorize?client_id={client}&redirect_uri={cb}&response_type=code&response_mode=form_post&scope=openid%20offline_access&state={state}&nonce={nonce}&login_hint={hint}",
        b2c = g.sign_in.b2c_base,
        client = WEB_CLIENT_ID,
        cb = enc(&format!("{}{CALLBACK_PATH}", g.sign_in.start_base)),
        state = enc(&state),
        hint = enc(&username),
    );
    let mut r = redirect(&url);
    set_cookie(&mut r, CORRELATION_COOKIE, &correlation);
    r
}

/// `POST /signin-azureb2c` (form: `state`, `code`): B2C's form_post lands here.
async fn signin_callback(AxState(s): AxState<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = s.clock.now_ms();
    let form = parse_form(&body);
    let mut g = s.lock();
    let g = &mut *g;
    g.sign_in.expire(now);
    let jar = cookies(&headers);
    let state = form.get("state").cloned().unwrap_or_default();
    let reject = |g: &mut Inner, msg: &str| {
        g.stats.sign_in.callback_rejections += 1;
        pages::error(StatusCode::BAD_REQUEST, "Bad Request", msg)
    };
    let Some(corr) = g.sign_in.correlations.get(&state) else {
        return reject(g, "Correlation failed: unknown or expired state.");
    };
    if jar.get(CORRELATION_COOKIE) != Some(&corr.cookie) {
        return reject(g, "Correlation failed: the correlation cookie is missing or does not match.");
    }
    let code = form.get("code").cloned().unwrap_or_default();
    let Some(grant) = g.sign_in.b2c_codes.remove(&code).filter(|c| now < c.expires_ms) else {
        return reject(g, "The authorization code from the sign-in service is invalid or expired.");
    };
    let Some(corr) = g.sign_in.correlations.remove(&state) else {
        return reject(g, "Correlation failed.");
    };
    let session = random_id();
    g.sign_in.sessions.insert(session.clone(), Session { user_id: grant.user_id, created_ms: now, fresh: true });
    g.stats.sign_in.completed += 1;
    let mut r = redirect(&corr.return_url);
    set_cookie(&mut r, SESSION_COOKIE, &session);
    clear_cookie(&mut r, CORRELATION_COOKIE);
    r
}

// ---------------------------------------------------------------- B2C host

/// The sign-in page's variant for a user (by `login_hint`).
fn sign_in_page(g: &mut Inner, tid: &str, hint: &str) -> Response {
    let b = g.sign_in.behaviour(hint);
    match b.outcome {
        SignInOutcome::Recaptcha | SignInOutcome::Hcaptcha => g.stats.sign_in.captcha_pages += 1,
        SignInOutcome::ChangedPage => g.stats.sign_in.changed_pages += 1,
        _ => {}
    }
    step_page(g, tid, Step::SignIn, b.outcome)
}

/// The page of `step` for transaction `tid`.
fn step_page(g: &mut Inner, tid: &str, step: Step, outcome: SignInOutcome) -> Response {
    let Some(tx) = g.sign_in.transactions.get(tid) else {
        return pages::error(StatusCode::BAD_REQUEST, "Sign in", "Your session has expired. Please start again.");
    };
    g.stats.sign_in.b2c_pages += 1;
    let settings = json!({
        "remoteResource": format!("{}/static/exact/selfasserted.html", g.sign_in.b2c_base),
        "retryLimit": 3,
        "api": step.api(),
        "csrf": tx.csrf,
        "transId": format!("StateProperties={}", URL_SAFE_NO_PAD.encode(json!({"TID": tid}).to_string())),
        "pageViewId": random_id(),
        "suppressElementCss": false,
        "isPageViewIdSentWithHeader": false,
        "allowAutoFocusOnPasswordField": true,
        "pageMode": 0,
        "config": {"operatingMode": "Email", "enableRememberMe": "false"},
        "hosts": {"tenant": TENANT, "policy": POLICY, "static": format!("{}/static/", g.sign_in.b2c_base)},
        "locale": {"lang": "en"},
    });
    let ids: &[&str] = match step {
        Step::SignIn => match outcome {
            SignInOutcome::Recaptcha | SignInOutcome::Hcaptcha => {
                &["signInName", "password", "captchaControlChallengeCode"]
            }
            _ => &["signInName", "password"],
        },
        Step::UserAgent => &["userAgent"],
        Step::Totp => &["rememberMePeriodChangeInfo", "totpVerificationCode", "reset_totp", "totp_skip_days"],
        Step::EmailCode => &["emailVerificationCode"],
        Step::Done => &[],
    };
    let fields = json!({"AttributeFields": ids.iter().map(|id| json!({"ID": id})).collect::<Vec<_>>()});
    let variant = match (step, outcome) {
        (Step::SignIn, SignInOutcome::Recaptcha) => pages::Variant::Recaptcha,
        (Step::SignIn, SignInOutcome::Hcaptcha) => pages::Variant::Hcaptcha,
        (Step::SignIn, SignInOutcome::ChangedPage) => pages::Variant::Changed,
        _ => pages::Variant::Normal,
    };
    pages::b2c_page(&settings, &fields, variant)
}

/// `GET <tenant>/oauth2/v2.0/authorize`: a new transaction and the sign-in page.
async fn b2c_authorize(AxState(s): AxState<Arc<Shared>>, Query(q): Q) -> Response {
    let now = s.clock.now_ms();
    let mut g = s.lock();
    let g = &mut *g;
    g.sign_in.expire(now);
    let expected_cb = format!("{}{CALLBACK_PATH}", g.sign_in.start_base);
    if q.get("client_id").map(String::as_str) != Some(WEB_CLIENT_ID) {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "Sign in",
            "AADB2C90018: The client id specified in the request is not registered in the tenant.",
        );
    }
    if q.get("redirect_uri") != Some(&expected_cb) {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "Sign in",
            "AADB2C90006: The redirect URI provided in the request is not registered for the client id.",
        );
    }
    let Some(start_state) = q.get("state").cloned() else {
        return pages::error(StatusCode::BAD_REQUEST, "Sign in", "The request does not contain a state parameter.");
    };
    let hint = q.get("login_hint").cloned().unwrap_or_default();
    if g.sign_in.behaviour(&hint).outcome == SignInOutcome::CloudflareChallenge {
        g.stats.sign_in.captcha_pages += 1;
        return pages::cloudflare_challenge();
    }
    let tid = uuid_like();
    let csrf = {
        let mut raw = vec![0u8; 48];
        rand::thread_rng().fill_bytes(&mut raw);
        // Base64 with `+`, `/` and `=`: a client has to URL-encode it in `confirmed`, as with the real token.
        STANDARD.encode([STANDARD.encode(&raw).as_bytes(), format!(";{now};").as_bytes()].concat())
    };
    let trans_cookie = STANDARD.encode(json!({"T_DIC": [{"I": tid}], "C_ID": tid}).to_string());
    g.sign_in.transactions.insert(
        tid.clone(),
        Tx {
            csrf: csrf.clone(),
            trans_cookie: trans_cookie.clone(),
            start_state,
            hint: hint.clone(),
            user_id: None,
            username: None,
            page: Step::SignIn,
            answered: false,
            next: Step::SignIn,
            created_ms: now,
        },
    );
    let mut r = sign_in_page(g, &tid, &hint);
    set_cookie(&mut r, CSRF_COOKIE, &csrf);
    set_cookie(&mut r, TRANS_COOKIE, &trans_cookie);
    r
}

fn uuid_like() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The transaction id in `tx=StateProperties=<base64url {"TID":…}>`.
fn tid_of(tx: &str) -> Option<String> {
    let b64 = tx.strip_prefix("StateProperties=")?;
    let raw = URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("TID")?.as_str().map(str::to_string)
}

/// The checks every B2C request of a transaction passes: `tx` names a live transaction, `p` its policy, the
/// `x-ms-cpim-trans` cookie is the transaction's, and the CSRF token (`header_csrf`: the `X-CSRF-TOKEN` header
/// or the `csrf_token` parameter) equals the `x-ms-cpim-csrf` cookie and the transaction's token.
fn check_tx(
    g: &mut Inner,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<String, Response> {
    let fail = |g: &mut Inner, m: &str| {
        g.stats.sign_in.csrf_rejections += 1;
        Err(b2c_bad_request(m))
    };
    let Some(tid) = q.get("tx").and_then(|t| tid_of(t)) else {
        return fail(g, "The request is missing a valid transaction (tx).");
    };
    let Some(tx) = g.sign_in.transactions.get(&tid) else {
        return fail(g, "The transaction has expired or is unknown. Start the sign-in again.");
    };
    if !q.get("p").is_some_and(|p| p.eq_ignore_ascii_case(POLICY)) {
        return fail(g, "The policy (p) does not match the transaction.");
    }
    let jar = cookies(headers);
    if jar.get(TRANS_COOKIE) != Some(&tx.trans_cookie) {
        return fail(g, "The transaction cookie is missing or does not match.");
    }
    match (jar.get(CSRF_COOKIE), csrf) {
        (Some(c), Some(t)) if *c == tx.csrf && t == tx.csrf => Ok(tid),
        _ => fail(g, "The CSRF token is missing or does not match."),
    }
}

/// `POST <tenant>/SelfAsserted?tx=…&p=…`: one step's answer.
async fn self_asserted(AxState(s): AxState<Arc<Shared>>, Query(q): Q, headers: HeaderMap, body: Bytes) -> Response {
    let now = s.clock.now_ms();
    let form = parse_form(&body);
    let mut g = s.lock();
    let g = &mut *g;
    g.sign_in.expire(now);
    if headers.get("x-requested-with").and_then(|v| v.to_str().ok()) != Some("XMLHttpRequest") {
        g.stats.sign_in.csrf_rejections += 1;
        return b2c_bad_request("This endpoint answers XMLHttpRequest calls only (X-Requested-With).");
    }
    let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    let tid = match check_tx(g, &q, &headers, csrf) {
        Ok(t) => t,
        Err(r) => return r,
    };
    g.stats.sign_in.self_asserted_posts += 1;
    if form.get("request_type").map(String::as_str) != Some("RESPONSE") {
        return b2c_status(false, None, "The request is malformed: request_type=RESPONSE is required.");
    }
    let step = g.sign_in.transactions[&tid].page;
    let field = |n: &str| form.get(n).map(|v| v.trim().to_string()).unwrap_or_default();
    let next = match step {
        Step::SignIn => {
            let name = field("signInName");
            let password = form.get("password").cloned().unwrap_or_default();
            let hint = g.sign_in.transactions[&tid].hint.clone();
            let page_outcome = g.sign_in.behaviour(&name).outcome;
            if matches!(g.sign_in.behaviour(&hint).outcome, SignInOutcome::Recaptcha | SignInOutcome::Hcaptcha)
                && field("captchaControlChallengeCode").is_empty()
            {
                return b2c_status(false, None, CAPTCHA_REQUIRED);
            }
            if name.is_empty() || password.is_empty() {
                return b2c_status(false, None, "Please enter your e-mail address and your password.");
            }
            if page_outcome == SignInOutcome::Locked {
                g.stats.sign_in.locked_rejections += 1;
                return b2c_status(false, None, LOCKED);
            }
            let user = user_by_name(g, &name).filter(|u| u.password == password).cloned();
            let Some(user) = user.filter(|_| page_outcome != SignInOutcome::WrongPassword) else {
                g.stats.sign_in.password_rejected += 1;
                return b2c_status(false, Some("AADB2C90052"), WRONG_PASSWORD);
            };
            let b = g.sign_in.behaviour(&user.username);
            let tx = g.sign_in.transactions.get_mut(&tid).expect("checked");
            tx.user_id = Some(user.user_id.clone());
            tx.username = Some(user.username.clone());
            if b.user_agent_step { Step::UserAgent } else { after_password(&user, b) }
        }
        Step::UserAgent => {
            if field("userAgent").is_empty() {
                return b2c_status(false, None, "The user agent is missing.");
            }
            let username = g.sign_in.transactions[&tid].username.clone().unwrap_or_default();
            let Some(user) = user_by_name(g, &username).cloned() else {
                return b2c_bad_request("The user of this transaction is gone.");
            };
            after_password(&user, g.sign_in.behaviour(&username))
        }
        Step::Totp | Step::EmailCode => {
            g.stats.sign_in.b2c_host.code_submissions += 1;
            let username = g.sign_in.transactions[&tid].username.clone().unwrap_or_default();
            let ok = if step == Step::Totp {
                let code = field("totpVerificationCode");
                let secret = user_by_name(g, &username)
                    .and_then(|u| u.totp_secret_base32.clone())
                    .and_then(|s| totp::base32_decode(&s));
                g.sign_in.behaviour(&username).outcome != SignInOutcome::WrongTotp
                    && secret.is_some_and(|sec| totp::verify(&sec, now.div_euclid(1000), &code))
            } else {
                let code = field("emailVerificationCode");
                !code.is_empty() && g.sign_in.email_code(&username).as_deref() == Some(code.as_str())
            };
            if !ok {
                g.stats.sign_in.code_rejected += 1;
                return b2c_status(false, None, WRONG_CODE);
            }
            Step::Done
        }
        Step::Done => return b2c_status(true, None, ""),
    };
    let tx = g.sign_in.transactions.get_mut(&tid).expect("checked");
    tx.answered = true;
    tx.next = next;
    b2c_status(true, None, "")
}

/// The step after a correct password (and user-agent step).
fn after_password(user: &crate::SimUser, b: SignInBehaviour) -> Step {
    if b.outcome == SignInOutcome::EmailCode {
        Step::EmailCode
    } else if user.totp_secret_base32.is_some() {
        Step::Totp
    } else {
        Step::Done
    }
}

/// `GET <tenant>/api/<api>/confirmed?csrf_token=…&tx=…&p=…`: the next page, or the form_post to the start host.
async fn confirmed(
    AxState(s): AxState<Arc<Shared>>,
    Path(api): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
) -> Response {
    let now = s.clock.now_ms();
    let mut g = s.lock();
    let g = &mut *g;
    g.sign_in.expire(now);
    let csrf = q.get("csrf_token").cloned();
    let tid = match check_tx(g, &q, &headers, csrf.as_deref()) {
        Ok(t) => t,
        Err(_) => {
            return pages::error(
                StatusCode::BAD_REQUEST,
                "Sign in",
                "We can't sign you in: the request was not valid (CSRF token or transaction). Start the sign-in again.",
            );
        }
    };
    let (page, answered, next, username, hint) = {
        let tx = &g.sign_in.transactions[&tid];
        (tx.page, tx.answered, tx.next, tx.username.clone().unwrap_or_default(), tx.hint.clone())
    };
    let outcome = g.sign_in.behaviour(if page == Step::SignIn && !answered { &hint } else { &username }).outcome;
    if !api.eq_ignore_ascii_case(page.api()) {
        return pages::error(StatusCode::BAD_REQUEST, "Sign in", "The requested page does not belong to this step.");
    }
    if !answered {
        // Nothing accepted since the page was served: the same page again, as B2C shows a step until it is answered.
        return step_page(g, &tid, page, outcome);
    }
    if let Some(tx) = g.sign_in.transactions.get_mut(&tid) {
        tx.page = next;
        tx.answered = false;
    }
    let step = next;
    match step {
        Step::Done => {
            let Some(tx) = g.sign_in.transactions.remove(&tid) else {
                return b2c_bad_request("The transaction has expired.");
            };
            let Some(user_id) = tx.user_id else {
                return pages::error(StatusCode::BAD_REQUEST, "Sign in", "No user was authenticated.");
            };
            let code = format!("eyJraWQiOiJzaW0ifQ.{}", random_id());
            g.sign_in.b2c_codes.insert(code.clone(), B2cCode { user_id, expires_ms: now + B2C_CODE_LIFETIME_MS });
            let action = format!("{}{CALLBACK_PATH}", g.sign_in.start_base);
            let mut r = pages::form_post(&action, &[("state", &tx.start_state), ("code", &code)]);
            clear_cookie(&mut r, TRANS_COOKIE);
            r
        }
        Step::EmailCode => {
            let mut digits = [0u8; 4];
            rand::thread_rng().fill_bytes(&mut digits);
            let code = format!("{:06}", u32::from_be_bytes(digits) % 1_000_000);
            g.sign_in.email_codes.insert(username.to_lowercase(), code);
            g.stats.sign_in.email_code_pages += 1;
            step_page(g, &tid, step, outcome)
        }
        _ => step_page(g, &tid, step, outcome),
    }
}

/// Stand-ins for the captcha providers' frames (same host: nothing leaves the machine).
async fn captcha_frame() -> Response {
    pages::captcha_frame()
}

// ---------------------------------------------------------------- watching credentials on both hosts

#[derive(Clone, Copy)]
enum Host {
    Start,
    B2c,
}

fn host_stats(g: &mut Inner, host: Host) -> &mut HostSignInStats {
    match host {
        Host::Start => &mut g.stats.sign_in.start_host,
        Host::B2c => &mut g.stats.sign_in.b2c_host,
    }
}

/// Counts the request and whether its query or form body carries a user's name or password.
async fn watch(s: Arc<Shared>, host: Host, req: Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
    };
    {
        let mut values: Vec<String> = Vec::new();
        if let Some(q) = parts.uri.query() {
            values.extend(url::form_urlencoded::parse(q.as_bytes()).map(|(_, v)| v.into_owned()));
        }
        if !bytes.is_empty() {
            values.extend(url::form_urlencoded::parse(&bytes).map(|(_, v)| v.into_owned()));
        }
        let mut g = s.lock();
        let (mut name, mut password) = (false, false);
        if !values.is_empty() {
            for u in &g.users {
                for v in &values {
                    name |= v.len() == u.username.len() && v.eq_ignore_ascii_case(&u.username);
                    password |= !u.password.is_empty() && *v == u.password;
                }
            }
        }
        let st = host_stats(&mut g, host);
        st.requests += 1;
        st.username_seen += name as u64;
        st.password_seen += password as u64;
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

pub(crate) async fn watch_start_host(
    AxState(s): AxState<Arc<Shared>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    watch(s, Host::Start, req, next).await
}

async fn watch_b2c_host(AxState(s): AxState<Arc<Shared>>, req: Request, next: axum::middleware::Next) -> Response {
    watch(s, Host::B2c, req, next).await
}

// ---------------------------------------------------------------- control endpoints (start host)

async fn sim_hosts(AxState(s): AxState<Arc<Shared>>) -> Response {
    let g = s.lock();
    json_response(
        StatusCode::OK,
        json!({"start": g.sign_in.start_base, "b2c": g.sign_in.b2c_base, "sign_in": g.sign_in.mode}),
    )
}

/// `POST /_sim/sign_in?mode=simple|azure_b2c` and/or `?username=U&outcome=O&user_agent_step=true|false`.
async fn sim_sign_in(AxState(s): AxState<Arc<Shared>>, Query(q): Q) -> Response {
    fn parse<T: serde::de::DeserializeOwned>(v: &str) -> Result<T, serde_json::Error> {
        serde_json::from_value(serde_json::Value::String(v.to_string()))
    }
    let mut g = s.lock();
    if let Some(m) = q.get("mode") {
        match parse(m) {
            Ok(mode) => g.sign_in.mode = mode,
            Err(_) => return super::bad("mode must be simple or azure_b2c"),
        }
    }
    if let Some(u) = q.get("username") {
        let mut b = g.sign_in.behaviour(u);
        if let Some(o) = q.get("outcome") {
            match parse(o) {
                Ok(outcome) => b.outcome = outcome,
                Err(_) => {
                    return super::bad(
                        "outcome must be normal|wrong_password|wrong_totp|recaptcha|hcaptcha|cloudflare_challenge|locked|email_code|changed_page",
                    );
                }
            }
        }
        if let Some(v) = q.get("user_agent_step") {
            b.user_agent_step = v == "true" || v == "1";
        }
        g.sign_in.set_behaviour(u, b);
    }
    json_response(StatusCode::OK, json!({"sign_in": g.sign_in.mode}))
}

async fn sim_email_code(AxState(s): AxState<Arc<Shared>>, Query(q): Q) -> Response {
    match q.get("username").and_then(|u| s.lock().sign_in.email_code(u)) {
        Some(c) => json_response(StatusCode::OK, json!({"code": c})),
        None => json_response(StatusCode::NOT_FOUND, json!({"error": "no e-mail code was sent to this user"})),
    }
}

// ---------------------------------------------------------------- routers and the B2C listener

/// The start host's sign-in routes (merged into the main router).
pub(crate) fn start_routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(start_page).post(start_page_post))
        .route(CALLBACK_PATH, post(signin_callback))
        .route("/_sim/hosts", get(sim_hosts))
        .route("/_sim/sign_in", post(sim_sign_in))
        .route("/_sim/email_code", get(sim_email_code))
}

fn b2c_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(&format!("{TENANT}/oauth2/v2.0/authorize"), get(b2c_authorize))
        .route(&format!("{TENANT}/SelfAsserted"), post(self_asserted))
        .route(&format!("{TENANT}/api/{{api}}/confirmed"), get(confirmed))
        .route("/_captcha/{*rest}", get(captcha_frame))
        .route("/challenges.cloudflare.com/{*rest}", get(captcha_frame))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), watch_b2c_host))
        .with_state(shared)
}

/// Serves the B2C host until the simulator shuts down.
pub(crate) async fn serve_b2c(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = b2c_router(shared);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
}
