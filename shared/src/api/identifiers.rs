//! `GET /v1/identifiers/{identifier}` and `POST …/release`: the platform's single-instance identifier registry
//! (platform tokens only, `RouteSpec::platform_only`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller};
use super::problem::Problem;
use crate::app::identifiers::Holder;
use crate::clock::rfc3339;
use crate::ids::OrgId;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    reason: String,
    /// The organisation that asked for the release (its audit log records it too).
    #[serde(default)]
    asked_by_org: Option<String>,
}

fn holder_view(h: &Holder) -> Value {
    let c = &h.container;
    json!({"identifier": h.identifier, "org": c.org, "database": c.db, "alias": c.alias, "since": rfc3339(h.since_ms)})
}

fn identifier(params: &HashMap<String, String>) -> &str {
    params.get("identifier").map(String::as_str).unwrap_or_default()
}

pub async fn find(
    State(app): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, Problem> {
    Ok(Json(holder_view(&app.identifiers.find(identifier(&params)).await?)))
}

pub async fn release(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(params): Path<HashMap<String, String>>,
    Body(b): Body<ReleaseBody>,
) -> Result<Json<Value>, Problem> {
    let asked_by = b.asked_by_org.as_deref().map(OrgId::parse).transpose()?;
    let holder = app.identifiers.release(&who.sub, identifier(&params), &b.reason, asked_by.as_ref()).await?;
    let mut v = holder_view(&holder);
    v["released"] = json!(true);
    Ok(Json(v))
}
