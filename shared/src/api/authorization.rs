//! Starting an authorization (`POST …/authorize`) and completing it (`GET /v1/callback`, the redirect URI: an HTML
//! page for a person's browser, JSON for a client that asks for it).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::console;
use super::extract::{Body, Caller, Names};
use super::problem::{Problem, problem_type};
use crate::app::authorization::Callback;
use crate::clock::rfc3339;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// Allow the authorization to be completed as another provider user than the container's current one.
    #[serde(default)]
    replace_user: bool,
}

pub async fn start(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<Start>,
) -> Result<Json<Value>, Problem> {
    let started = app.authorization.start(&names.container()?, &who.sub, b.replace_user).await?;
    Ok(Json(json!({
        "authorize_url": started.authorize_url,
        "state": started.state,
        "expires_at": rfc3339(started.expires_at_ms),
    })))
}

/// The provider's redirect to `/v1/callback`: its query parameters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl CallbackQuery {
    /// Reads any query string without failing (axum's `Query` would answer a repeated or malformed parameter
    /// with plain text): the first of a repeated parameter counts, others are ignored, bad percent-encoding
    /// reads as U+FFFD (and then matches no state). Fuzzed in `api::authorization::fuzz`.
    pub fn parse(raw: &str) -> Self {
        let mut q = Self::default();
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
            let slot = match &*k {
                "code" => &mut q.code,
                "state" => &mut q.state,
                "error" => &mut q.error,
                "error_description" => &mut q.error_description,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v.into_owned());
            }
        }
        q
    }
}

pub async fn callback(State(app): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let q = CallbackQuery::parse(raw.as_deref().unwrap_or(""));
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let wants_json = accept.contains("application/json") && !accept.contains("text/html");
    // A browser (it asks for HTML) gets a page for a failure too; a client that does not ask gets the problem.
    let is_browser = accept.contains("text/html");
    let callback = Callback {
        code: q.code,
        state: q.state,
        error: q.error.map(|e| format!("{e} {}", q.error_description.unwrap_or_default())),
    };
    let done = match app.authorization.complete(callback, None).await {
        Ok(done) => done,
        Err(e) if is_browser => return failure_page(Problem::from(e)),
        Err(e) => return Problem::from(e).into_response(),
    };
    let c = &done.container;
    if wants_json {
        return Json(json!({
            "alias": c.alias, "database": c.db, "status": "healthy",
            "user_id": done.user_id, "user_name": done.user_name, "single_instance_id": done.single_instance_id,
        }))
        .into_response();
    }
    let provider = match app.containers.details(c).await {
        Ok(d) => d
            .record
            .provider
            .map(|p| app.config.provider(&p).and_then(|profile| profile.display_name.clone()).unwrap_or(p)),
        Err(_) => None,
    };
    let provider = provider.unwrap_or_else(|| "The provider".to_string());
    let name = done.user_name.as_deref().unwrap_or(&done.user_id);
    let title = format!("{provider} connected as {name}");
    let back = console::org::container_url(c);
    let body = maud::html! {
        h1 { (title) }
        p {
            "Authorization complete. Container " strong { (c.alias) } " of database " strong { (c.db) }
            " now signs in as " strong { (name) } "."
        }
        @if let Some(id) = &done.single_instance_id { p { "Identity: " code { (id) } } }
        p { a href=(back) { "Back to the container in the console" } }
    };
    with_console_headers((StatusCode::OK, console::layout(None, &title, body)).into_response())
}

/// A failed authorization as a page a person understands: what went wrong (the problem's title and detail) and
/// what to do (the registry's remedy), with a way back.
fn failure_page(p: Problem) -> Response {
    let remedy = problem_type(p.code).map(|t| t.remedy).unwrap_or("");
    let body = maud::html! {
        h1 { "The authorization did not complete" }
        h2 { (p.title) }
        p { (p.detail) }
        @if !remedy.is_empty() { p { strong { "What to do: " } (remedy) } }
        @if p.code == "different_provider_user" {
            p { "In the console, " strong { "Sign in as another user" } " on the container's page moves it to the user you sign in as." }
        }
        p { a href="/console" { "Back to the console" } }
    };
    with_console_headers((p.status, console::layout(None, p.title, body)).into_response())
}

fn with_console_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(console::CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::CallbackQuery;

    fn encode(pairs: &[(String, String)]) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            out.append_pair(k, v);
        }
        out.finish()
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_callback_query_never_panics(raw in "[a-z_=&%0-9A-F+;#?]{0,80}|\\PC{0,120}") {
            let _ = CallbackQuery::parse(&raw);
        }

        #[test]
        fn fuzz_callback_query_round_trips(code in "\\PC{0,40}", state in "\\PC{0,40}", noise in "[a-z_]{1,8}", other in "\\PC{0,20}") {
            // The provider's parameters come back exactly, whatever they hold and wherever other parameters are;
            // a repeated parameter never replaces the first.
            let q = CallbackQuery::parse(&encode(&[
                (noise.clone(), other.clone()),
                ("state".into(), state.clone()),
                ("code".into(), code.clone()),
                ("state".into(), "second".into()),
            ]));
            let noise_is_field = ["code", "state", "error", "error_description"].contains(&noise.as_str());
            if !noise_is_field {
                prop_assert_eq!(q.state.as_deref(), Some(state.as_str()));
                prop_assert_eq!(q.code.as_deref(), Some(code.as_str()));
                prop_assert_eq!(q.error, None);
            }
        }
    }
}
