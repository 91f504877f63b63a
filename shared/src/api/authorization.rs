//! Starting an authorization (`POST …/authorize`) and completing it (`GET /v1/callback`, the redirect URI: an HTML
//! page for a person's browser, JSON for a client that asks for it).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use super::problem::{Problem, html_escape};
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

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub async fn callback(State(app): State<AppState>, headers: HeaderMap, Query(q): Query<CallbackQuery>) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
    let callback = Callback {
        code: q.code,
        state: q.state,
        error: q.error.map(|e| format!("{e} {}", q.error_description.unwrap_or_default())),
    };
    let done = match app.authorization.complete(callback, None).await {
        Ok(done) => done,
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
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>chainkeeper</title><h1>Authorization complete</h1><p>Container <b>{}</b> of database <b>{}</b> now signs in as <b>{}</b>. You can close this window.</p>",
        html_escape(c.alias.as_str()),
        html_escape(c.db.as_str()),
        html_escape(done.user_name.as_deref().unwrap_or(&done.user_id)),
    ))
    .into_response()
}
