//! The web console: server-rendered HTML pages (maud) under `/console`, for the people who hold the logins. An
//! outer HTTP ring like the rest of `api/`: it calls `app::` use cases only, and its actions go through the same
//! scopes as the API (each console action names the API route it stands for, [`ACTIONS`]; the session's claims
//! must allow that route's resource and method, as `api::auth` checks a token's).
//!
//! # How to add a console page
//!
//! 1. A module `console/<area>.rs` with handlers; one line per route in [`router`] (`.route("/console/…", get(…))`).
//! 2. A handler takes `s: Signed` (the session; a request without one is sent to the sign-in page, so a handler
//!    that has `Signed` is signed in) and returns [`PageResult`] (`Result<Response, Refused>`: `?` works on every
//!    helper here, and on any `Response` error: `.map_err(|e| problem_page(&s, e))?`).
//! 3. Check the scope first, as the API route the page or action stands for:
//!    `s.require_route(&app, Handler::CreateApiToken, Some(&org))?` (`org`: the organisation in the path, `None`
//!    for platform pages; `Handler` from `api::routes`). A session without the route's scope, or of another
//!    organisation, gets the 403 page. `s.allowed_route(…)` (a bool) decides whether to show a form at all. (This
//!    module's own pages name theirs in [`ACTIONS`] and call `s.require(&app, Action::X, …)`.)
//! 4. Render with the layout: `Ok(page(&s, "Title", html! { h1 { "Title" } … }))` ([`page`]; [`page_with`] for
//!    another status). One `h1` per page, then `h2`, `h3` in order; every control has a `label`.
//! 5. Forms: `form method="post" action="…" { (s.csrf_field()) … }`. A POST handler takes `body: Bytes` and calls
//!    `let f = s.form(&body)?;` first: it parses the urlencoded body into [`Fields`] and refuses a wrong or missing
//!    CSRF token with the 403 page. Then `f.get("name")`.
//! 6. Bad input: collect [`FieldErrors`] (`errors.add("field", "what is wrong")`), re-render the same form with the
//!    values given (never a secret) and `page_with(StatusCode::UNPROCESSABLE_ENTITY, …)`; build the inputs with
//!    [`input`] / [`field_error`] so each error sits next to its field (`aria-describedby`, `aria-invalid`).
//! 7. A use-case error: `.map_err(|e| problem_page(&s, e))?` renders the problem registry's title, the detail and
//!    what to do (never JSON, never a secret). After a successful POST, redirect: `Ok(see_other(url))`.
//!
//! 8. Nothing may leave for another site from a form: Chromium applies the CSP's `form-action 'self'` to a form's
//!    redirects too. Send the browser on with a link instead (`a id="continue" href=… data-autofollow="true"`,
//!    which `console.js` follows at once; see `container::authorize`).
//!
//! Every response under `/console` gets the security headers ([`security_headers`]: the CSP, no framing, no
//! caching, no referrer), and a POST another site sends is refused. A table goes in
//! `div class="table-wrap" tabindex="0" role="region" aria-label="…"` (it scrolls sideways at phone width, so the
//! keyboard must reach it). Static files: `/console/static/console.css` and `/console/static/console.js` (a copy
//! button: `button type="button" data-copy="ID"` copies the text of the element with id `ID`; a hand-over link).

pub mod audit;
pub mod container;
pub mod org;
pub mod platform;
pub mod session;
pub mod signin;
pub mod tokens;
pub mod webhook;

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::AppState;
use super::problem::{Problem, problem_type};
use super::routes::{Handler, ROUTES};
use crate::auth::allows;
pub use session::Signed;

/// The Content-Security-Policy of every console response: our own script and style only, forms post only to
/// us, no framing. Chromium applies `form-action` to a form's redirects as well, so nothing leaves for another
/// site from a form: the OIDC sign-in starts from a link, and a provider's authorization from a hand-over page
/// whose link `console.js` follows.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes as API Gateway serves them (all by the `manage` function): `chainkeeper routes` prints
/// them after the route table, and the SAM template has one HttpApi event each (`infra/validate.sh` checks).
/// `{*proxy}` is API Gateway's greedy `{proxy+}`. The console's own router ([`router`]) decides the rest.
pub const GATEWAY_ROUTES: &[(&str, &str)] =
    &[("GET", "/console"), ("GET", "/console/{*proxy}"), ("POST", "/console/{*proxy}")];

/// What a console handler returns: a page, or an error page / redirect ([`Refused`]).
pub type PageResult = Result<Response, Refused>;

/// A page that ends a handler early (403, a problem page, a redirect to sign in): `?` turns any `Response` into
/// one. Boxed, so that every `Result` stays small.
pub struct Refused(Box<Response>);

impl From<Response> for Refused {
    fn from(r: Response) -> Self {
        Self(Box::new(r))
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// Every console route. Merged into `serve`'s router and the `manage` function's.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(org::home))
        .route("/console/", get(org::home))
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .route("/console/signin", get(signin::page))
        .route("/console/signin/link", get(signin::link_page).post(signin::link))
        .route("/console/signin/oidc", get(signin::oidc_start))
        .route("/console/signin/callback", get(signin::oidc_callback))
        .route("/console/signout", post(signin::sign_out))
        .route("/console/orgs/{org}", get(org::show))
        .route("/console/orgs/{org}/databases", post(org::create_db))
        .route("/console/orgs/{org}/databases/{db}/containers", post(org::create_container))
        .route("/console/orgs/{org}/databases/{db}/containers/{alias}", get(container::show))
        .route("/console/orgs/{org}/databases/{db}/containers/{alias}/authorize", post(container::authorize))
        .route("/console/orgs/{org}/databases/{db}/containers/{alias}/credentials", post(container::credentials))
        .route("/console/orgs/{org}/databases/{db}/containers/{alias}/auto-recovery", post(container::recovery))
        .route(
            "/console/orgs/{org}/databases/{db}/containers/{alias}/auto-recovery/delete",
            post(container::recovery_delete),
        )
        .route("/console/orgs/{org}/api-tokens", get(tokens::show).post(tokens::create))
        .route("/console/orgs/{org}/api-tokens/{id}/revoke", post(tokens::revoke))
        .route("/console/orgs/{org}/webhook", get(webhook::show).post(webhook::set))
        .route("/console/orgs/{org}/webhook/test", post(webhook::test))
        .route("/console/orgs/{org}/webhook/delete", post(webhook::delete))
        .route("/console/orgs/{org}/audit", get(audit::show))
        .route("/console/platform", get(platform::show))
        // Its own 404 page for anything else under /console (a merged router's fallback would not be kept).
        .route("/console/{*rest}", get(console_not_found).post(console_not_found))
        .layer(axum::middleware::from_fn(security_headers))
}

/// What a person can do in the console. Each stands for one API route: its scopes are that route's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    ViewOrg,
    ViewContainers,
    CreateDatabase,
    CreateContainer,
    ViewContainer,
    Authorize,
    SetCredentials,
    SetAutoRecovery,
    DeleteAutoRecovery,
    ViewRepairs,
    ViewAudit,
}

/// Console action → the API route whose scope it needs. A read-only session (`containers.read`) sees the pages
/// but gets the 403 page on every write.
pub const ACTIONS: &[(Action, Handler)] = &[
    (Action::ViewOrg, Handler::GetOrg),
    (Action::ViewContainers, Handler::ListContainers),
    (Action::CreateDatabase, Handler::CreateDb),
    (Action::CreateContainer, Handler::CreateContainer),
    (Action::ViewContainer, Handler::GetContainer),
    (Action::Authorize, Handler::Authorize),
    (Action::SetCredentials, Handler::SetCredentials),
    (Action::SetAutoRecovery, Handler::SetAutoRecovery),
    (Action::DeleteAutoRecovery, Handler::DeleteAutoRecovery),
    (Action::ViewRepairs, Handler::Repairs),
    (Action::ViewAudit, Handler::Audit),
];

/// The API route an action stands for: (method, resource, platform only).
pub fn scope_of(action: Action) -> (Method, &'static str, bool) {
    let handler = ACTIONS.iter().find(|(a, _)| *a == action).map(|(_, h)| *h).expect("every action is in ACTIONS");
    route_scope(handler)
}

/// The scope of an API route: (method, resource, platform only).
pub fn route_scope(handler: Handler) -> (Method, &'static str, bool) {
    let route = ROUTES.iter().find(|r| r.handler == handler).expect("every console handler is in the route table");
    (route.method.parse().expect("route table methods are valid"), route.resource, route.platform_only())
}

impl Signed {
    /// May this session do `action` on `org` (`None`: a platform page)?
    pub fn allowed(&self, app: &AppState, action: Action, org: Option<&str>) -> bool {
        self.allowed_route(app, ACTIONS.iter().find(|(a, _)| *a == action).map(|(_, h)| *h).expect("in ACTIONS"), org)
    }

    /// May this session do what the API route `handler` does, on `org` (`None`: a platform page)? The same rules
    /// as `api::auth` applies to a token: its organisation (a platform session reaches every one; an
    /// organisation's never a platform-only route) and `auth::allows` on the route's resource and method.
    pub fn allowed_route(&self, app: &AppState, handler: Handler, org: Option<&str>) -> bool {
        let (method, resource, platform_only) = route_scope(handler);
        let s = &self.session;
        let org_ok = match (&s.org, org) {
            (None, _) => true,
            (Some(mine), Some(org)) => mine.eq_ignore_ascii_case(org) && !platform_only,
            (Some(_), None) => false,
        };
        org_ok && allows(&s.scopes, &app.config.scope_groups, &method, resource)
    }

    /// [`Signed::allowed`], or the 403 page.
    pub fn require(&self, app: &AppState, action: Action, org: Option<&str>) -> Result<(), Refused> {
        self.require_route(app, ACTIONS.iter().find(|(a, _)| *a == action).map(|(_, h)| *h).expect("in ACTIONS"), org)
    }

    /// [`Signed::allowed_route`], or the 403 page naming the scope it needs.
    pub fn require_route(&self, app: &AppState, handler: Handler, org: Option<&str>) -> Result<(), Refused> {
        if self.allowed_route(app, handler, org) {
            return Ok(());
        }
        let (method, resource, _) = route_scope(handler);
        let needed = crate::auth::accepted_scopes(&method, resource).join(" or ");
        Err(message_page(
            Some(self),
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!("Your session does not allow this: it needs the scope {needed} for this organisation."),
        )
        .into())
    }

    /// The hidden CSRF field every form carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.session.csrf); }
    }

    /// The form's fields, once its CSRF token matched this session's; otherwise the 403 page.
    pub fn form(&self, body: &[u8]) -> Result<Fields, Refused> {
        let fields = Fields::parse(body);
        let given = fields.get("csrf");
        if !constant_time_eq(given.as_bytes(), self.session.csrf.as_bytes()) || given.is_empty() {
            return Err(message_page(
                Some(self),
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form was not sent from your current console session. Go back, reload the page and try again.",
            )
            .into());
        }
        Ok(fields)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A urlencoded form's fields (the first value of each name).
#[derive(Default, Debug)]
pub struct Fields(BTreeMap<String, String>);

impl Fields {
    pub fn parse(body: &[u8]) -> Self {
        let mut map = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(body) {
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Self(map)
    }
    /// The field's value, trimmed ("" when absent).
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", |v| v.trim())
    }
    /// The field's value as sent (passwords: spaces count).
    pub fn raw(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Problems with a form's fields, shown next to each field.
#[derive(Default, Debug)]
pub struct FieldErrors(BTreeMap<&'static str, String>);

impl FieldErrors {
    pub fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.entry(field).or_insert_with(|| message.into());
    }
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `field` must be given and at most `max` characters.
    pub fn required(&mut self, field: &'static str, value: &str, max: usize) {
        if value.is_empty() {
            self.add(field, "Fill this in.");
        } else if value.chars().count() > max {
            self.add(field, format!("At most {max} characters."));
        }
    }
}

/// A labelled input with its error (if any) next to it. `id_prefix` keeps ids unique when a page has several
/// forms with the same field names.
pub fn input(
    id_prefix: &str,
    name: &'static str,
    label: &str,
    kind: &str,
    value: &str,
    errors: &FieldErrors,
    hint: Option<&str>,
) -> Markup {
    let id = format!("{id_prefix}-{name}");
    let err_id = format!("{id}-error");
    let hint_id = format!("{id}-hint");
    let error = errors.get(name);
    let described = match (error.is_some(), hint.is_some()) {
        (true, true) => Some(format!("{err_id} {hint_id}")),
        (true, false) => Some(err_id.clone()),
        (false, true) => Some(hint_id.clone()),
        (false, false) => None,
    };
    html! {
        div class="field" {
            label for=(id) { (label) }
            @if let Some(h) = hint { p class="hint" id=(hint_id) { (h) } }
            input id=(id) name=(name) type=(kind) value=(value)
                aria-invalid=[error.map(|_| "true")] aria-describedby=[described]
                autocomplete=[(kind == "password").then_some("new-password")];
            (field_error(&err_id, error))
        }
    }
}

/// The error text of a field (`id` is what the field's `aria-describedby` names).
pub fn field_error(id: &str, error: Option<&str>) -> Markup {
    html! { @if let Some(e) = error { p class="error" id=(id) { (e) } } }
}

/// A page in the console's layout: 200.
pub fn page(s: &Signed, title: &str, body: Markup) -> Response {
    page_with(s, StatusCode::OK, title, body)
}

/// A page in the console's layout with `status`.
pub fn page_with(s: &Signed, status: StatusCode, title: &str, body: Markup) -> Response {
    (status, layout(Some(s), title, body)).into_response()
}

/// The layout: `lang`, viewport, our stylesheet and script, a header with who is signed in and sign-out.
pub fn layout(s: Option<&Signed>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · chainkeeper" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                header class="top" {
                    a class="brand" href="/console" { "chainkeeper" }
                    @if let Some(s) = s {
                        nav aria-label="Session" {
                            span class="who" { (s.session.name) " · " (s.session.org.as_deref().unwrap_or("platform")) }
                            form method="post" action="/console/signout" class="inline" {
                                (s.csrf_field())
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page with a heading and one paragraph (errors, refusals, confirmations).
pub fn message_page(s: Option<&Signed>, status: StatusCode, title: &str, text: &str) -> Response {
    let body = html! {
        h1 { (title) }
        p { (text) }
        p { a href="/console" { "Back to the console" } }
    };
    (status, layout(s, title, body)).into_response()
}

/// A use case's error as a page: the problem registry's title, the detail, and what to do.
pub fn problem_page(s: &Signed, e: impl Into<Problem>) -> Response {
    let p: Problem = e.into();
    let remedy = problem_type(p.code).map(|t| t.remedy).unwrap_or("");
    let body = html! {
        h1 { (p.title) }
        p { (p.detail) }
        @if !remedy.is_empty() { p { strong { "What to do: " } (remedy) } }
        p { a href="/console" { "Back to the console" } }
    };
    (p.status, layout(Some(s), p.title, body)).into_response()
}

/// After a successful POST: 303 to `to`.
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A time as people read it (UTC).
pub fn when(ms: crate::clock::Millis) -> String {
    let t = crate::clock::rfc3339(ms);
    t.get(..16).map(|d| format!("{} UTC", d.replace('T', " "))).unwrap_or(t)
}

async fn console_not_found() -> Response {
    message_page(None, StatusCode::NOT_FOUND, "Page not found", "There is no console page at this address.")
}

/// The security headers of every console response. A form posted from another site (`Sec-Fetch-Site:
/// cross-site`, which browsers send) is refused before any handler: besides the CSRF token, this keeps another
/// site from signing a browser in with a link or an IdP sign-in of its own (login CSRF).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let cross_site = req.method() == Method::POST
        && req.headers().get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let mut res = if cross_site {
        message_page(None, StatusCode::FORBIDDEN, "Form refused", "This form was sent from another site.")
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

async fn css() -> Response {
    static_file("text/css; charset=utf-8", CSS)
}
async fn js() -> Response {
    static_file("text/javascript; charset=utf-8", JS)
}
fn static_file(kind: &'static str, text: &'static str) -> Response {
    let mut res = (StatusCode::OK, PreEscaped(text).into_string()).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_names_a_route_of_the_table() {
        for (action, _) in ACTIONS {
            let (method, resource, _) = scope_of(*action);
            assert!(!resource.is_empty(), "{action:?}");
            let _ = method;
        }
        assert_eq!(scope_of(Action::SetAutoRecovery).0, Method::PUT);
        assert_eq!(scope_of(Action::ViewContainer).0, Method::GET);
    }

    #[test]
    fn the_csrf_comparison_wants_the_same_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
