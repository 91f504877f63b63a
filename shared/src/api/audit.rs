//! `GET /v1/orgs/{org}/audit`: who changed which credential when; never a secret value. Paged, newest first:
//! `limit` (1-1000, default 100) entries a page, and `cursor` (the previous page's `next_cursor`) for the next.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Value, json};

use super::AppState;
use super::errors;
use super::extract::Names;
use super::problem::Problem;
use crate::clock::rfc3339;

/// Entries a page when the caller gives no `limit`.
pub const DEFAULT_LIMIT: usize = 100;

pub async fn list(
    State(app): State<AppState>,
    names: Names,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Problem> {
    let (limit, cursor) = paging(query.as_deref().unwrap_or(""))?;
    let page = app.audit.page(&names.org, limit, cursor.as_deref()).await?;
    let entries: Vec<Value> = page
        .entries
        .into_iter()
        .map(|a| json!({"at": rfc3339(a.at_ms), "actor": a.actor, "action": a.action, "container": a.container, "outcome": a.outcome, "detail": a.detail}))
        .collect();
    let mut body = json!({ "entries": entries });
    if let Some(next) = page.next_cursor {
        body["next_cursor"] = Value::String(next);
    }
    Ok(Json(body))
}

/// `limit` and `cursor` from the query string; other parameters are ignored. Never echoes a value.
fn paging(query: &str) -> Result<(usize, Option<String>), Problem> {
    let (mut limit, mut cursor) = (DEFAULT_LIMIT, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "limit" => {
                limit =
                    v.parse().map_err(|_| errors::invalid_paging("`limit` must be a whole number from 1 to 1000."))?
            }
            "cursor" => cursor = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok((limit, cursor))
}
