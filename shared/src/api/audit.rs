//! `GET /v1/orgs/{org}/audit`: who changed which credential when; never a secret value.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::Names;
use super::problem::Problem;
use crate::clock::rfc3339;

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn list(
    State(app): State<AppState>,
    names: Names,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, Problem> {
    let entries: Vec<Value> = app
        .audit
        .entries(&names.org, q.limit.unwrap_or(100))
        .await?
        .into_iter()
        .map(|a| json!({"at": rfc3339(a.at_ms), "actor": a.actor, "action": a.action, "container": a.container, "outcome": a.outcome, "detail": a.detail}))
        .collect();
    Ok(Json(json!({ "entries": entries })))
}
