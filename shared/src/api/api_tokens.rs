//! `POST/GET /v1/orgs/{org}/api-tokens`, `DELETE …/api-tokens/{id}`; the platform's own tokens at
//! `GET /v1/platform/api-tokens`, `DELETE /v1/platform/api-tokens/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use super::problem::Problem;
use crate::app::api_tokens::NewApiToken;
use crate::clock::rfc3339;
use crate::records::ApiTokenRecord;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    subject: String,
    scopes: Vec<String>,
    /// Seconds the token is valid; default 90 days, at most 2 years.
    #[serde(default)]
    expires_in_s: Option<u64>,
}

fn view(t: &ApiTokenRecord) -> Value {
    json!({
        "id": t.id, "subject": t.subject, "scopes": t.scopes, "issued_by": t.issued_by, "issuer_id": t.issuer_id,
        "issued_at": rfc3339(t.issued_at_ms), "expires_at": rfc3339(t.expires_at_ms),
        "revoked_at": t.revoked_at_ms.map(rfc3339),
    })
}

pub async fn create(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<NewToken>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let new = NewApiToken { subject: b.subject, scopes: b.scopes, expires_in_s: b.expires_in_s };
    let issued = app.api_tokens.issue(&names.org, &who, new).await?;
    let mut body = view(&issued.record);
    body["token"] = json!(issued.token.expose_secret());
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(State(app): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    let all: Vec<Value> = app.api_tokens.list(&names.org).await?.iter().map(view).collect();
    Ok(Json(json!({ "api_tokens": all })))
}

pub async fn revoke(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Path(params): Path<std::collections::HashMap<String, String>>,
) -> Result<StatusCode, Problem> {
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    app.api_tokens.revoke(&names.org, &who.sub, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The platform tokens the operator issued (platform token only: `RouteSpec::platform_only`).
pub async fn list_platform(State(app): State<AppState>) -> Result<Json<Value>, Problem> {
    let all: Vec<Value> = app.api_tokens.list_platform().await?.iter().map(view).collect();
    Ok(Json(json!({ "api_tokens": all })))
}

pub async fn revoke_platform(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(params): Path<std::collections::HashMap<String, String>>,
) -> Result<StatusCode, Problem> {
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    app.api_tokens.revoke_platform(&who.sub, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
