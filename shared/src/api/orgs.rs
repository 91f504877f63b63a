//! `POST /v1/orgs`, `GET/DELETE /v1/orgs/{org}`, and the organisation's databases.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use super::problem::Problem;
use crate::app::webhook_target::masked;
use crate::clock::rfc3339;
use crate::ids::{DbName, OrgId};
use crate::records::{DbRecord, OrgRecord};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrg {
    name: String,
    #[serde(default)]
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDb {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    allow_credential_reveal: Option<bool>,
}

fn org_view(o: &OrgRecord) -> Value {
    json!({"name": o.name, "display_name": o.display_name, "created_at": rfc3339(o.created_at_ms), "webhook_url": o.webhook_url.as_deref().map(masked), "allow_credential_reveal": o.allow_credential_reveal})
}

pub async fn set_settings(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<Settings>,
) -> Result<Json<Value>, Problem> {
    Ok(Json(org_view(&app.orgs.set_settings(&who.sub, &names.org, b.allow_credential_reveal).await?)))
}

fn db_view(d: &DbRecord) -> Value {
    json!({"name": d.name, "description": d.description, "created_at": rfc3339(d.created_at_ms)})
}

pub async fn create_org(
    State(app): State<AppState>,
    Caller(who): Caller,
    Body(b): Body<NewOrg>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let org = OrgId::parse(&b.name)?;
    let rec = app.orgs.create(&who.sub, &org, b.display_name).await?;
    Ok((StatusCode::CREATED, Json(org_view(&rec))))
}

pub async fn get_org(State(app): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    Ok(Json(org_view(&app.orgs.get(&names.org).await?)))
}

/// Platform tokens only: the auth middleware refuses organisation tokens (`RouteSpec::platform_only`).
pub async fn delete_org(State(app): State<AppState>, Caller(who): Caller, names: Names) -> Result<StatusCode, Problem> {
    app.orgs.delete(&who.sub, &names.org).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_db(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<NewDb>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let db = DbName::parse(&b.name)?;
    let rec = app.orgs.create_db(&who.sub, &names.org, &db, b.description).await?;
    Ok((StatusCode::CREATED, Json(db_view(&rec))))
}

pub async fn list_dbs(State(app): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    let dbs: Vec<Value> = app.orgs.databases(&names.org).await?.iter().map(db_view).collect();
    Ok(Json(json!({ "databases": dbs })))
}

pub async fn delete_db(State(app): State<AppState>, Caller(who): Caller, names: Names) -> Result<StatusCode, Problem> {
    app.orgs.delete_db(&who.sub, &names.org, &names.db()?).await?;
    Ok(StatusCode::NO_CONTENT)
}
