//! Containers of a database, their credentials, and the organisation's repairs list. A container is shown with
//! its status and a masked copy of its credential, never a secret.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use super::problem::Problem;
use crate::app::containers::{ContainerDetails, Credentials, NewContainer};
use crate::chain::RepairCode;
use crate::clock::rfc3339;
use crate::ids::{Alias, ContainerRef};
use crate::records::CredentialKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewContainerBody {
    alias: String,
    kind: CredentialKind,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsBody {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<secrecy::SecretString>,
    #[serde(default)]
    api_token: Option<secrecy::SecretString>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<secrecy::SecretString>,
}

/// A container as the API shows it: status and a masked copy of the credential, never a secret.
fn container_view(d: &ContainerDetails) -> Value {
    let rec = &d.record;
    let configured = |v: &Option<String>| v.as_ref().map(|_| "configured");
    let mut credential = json!({
        "username": rec.username,
        "password": configured(&rec.sealed_password),
        "api_token": configured(&rec.sealed_api_token),
        "client_id": rec.client_id,
        "client_secret": configured(&rec.sealed_client_secret),
        "scopes": rec.scopes,
    });
    if let Some(id) = &rec.identity {
        credential["user_id"] = json!(id.user_id);
        credential["user_name"] = json!(id.user_name);
        credential["single_instance_id"] = json!(id.single_instance_id);
        credential["authorized_at"] = json!(rfc3339(id.authorized_at_ms));
    }
    credential["configured"] = json!(rec.has_credentials() || d.chain.is_some());
    let mut v = json!({
        "alias": rec.container.alias,
        "database": rec.container.db,
        "kind": rec.kind,
        "provider": rec.provider,
        "status": d.status.as_str(),
        "credential": credential,
        "created_at": rfc3339(rec.created_at_ms),
        "updated_at": rfc3339(rec.updated_at_ms),
    });
    if !d.missing.is_empty() {
        v["missing"] = json!(d.missing);
    }
    if let Some(ch) = &d.chain {
        v["chain"] = json!({
            "access_token_expires_at": ch.access_expires_at_ms.map(rfc3339),
            "last_refresh_at": ch.last_refresh_at_ms.map(rfc3339),
            "refresh_token_issued_at": ch.refresh_token_issued_at_ms.map(rfc3339),
            "refreshes": ch.refresh_count,
            "generation": ch.generation,
            "last_error": ch.last_error.as_ref().map(|e| json!({
                "code": e.code, "at": rfc3339(e.at_ms), "provider_said": e.detail,
                "remediation": RepairCode::parse(&e.code).remediation(),
            })),
            "history": ch.history.iter().map(|t| json!({"at": rfc3339(t.at_ms), "status": t.status, "code": t.code})).collect::<Vec<_>>(),
        });
    }
    if let Some(recovery) = &d.recovery {
        v["auto_recovery"] = match recovery {
            Some(r) => json!({
                "configured": true, "totp": r.sealed_totp.is_some(), "expires_at": rfc3339(r.expires_at_ms),
                "retention_days": r.retention_days, "stopped": r.stopped,
            }),
            None => json!({"configured": false}),
        };
    }
    v
}

pub async fn create(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<NewContainerBody>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let c = ContainerRef { org: names.org.clone(), db: names.db()?, alias: Alias::parse(&b.alias)? };
    let new = NewContainer { kind: b.kind, provider: b.provider, scopes: b.scopes };
    let details = app.containers.create(&who.sub, &c, new).await?;
    Ok((StatusCode::CREATED, Json(container_view(&details))))
}

pub async fn list(State(app): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    let all: Vec<Value> = app.containers.list(&names.org, &names.db()?).await?.iter().map(container_view).collect();
    Ok(Json(json!({ "containers": all })))
}

pub async fn get(State(app): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    Ok(Json(container_view(&app.containers.details(&names.container()?).await?)))
}

pub async fn delete(State(app): State<AppState>, Caller(who): Caller, names: Names) -> Result<StatusCode, Problem> {
    app.containers.delete(&who.sub, &names.container()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_credentials(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<CredentialsBody>,
) -> Result<Json<Value>, Problem> {
    let given = Credentials {
        username: b.username,
        password: b.password,
        api_token: b.api_token,
        client_id: b.client_id,
        client_secret: b.client_secret,
    };
    let details = app.containers.set_credentials(&who.sub, &names.container()?, given).await?;
    Ok(Json(container_view(&details)))
}

/// The stored secret itself (`credentials.reveal` scope, where the organisation allows it): the one response
/// that holds a secret, never cached.
pub async fn reveal(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
) -> Result<([(axum::http::HeaderName, &'static str); 1], Json<Value>), Problem> {
    use secrecy::ExposeSecret;
    let r = app.containers.reveal(&who.sub, &names.container()?).await?;
    let body = json!({
        "username": r.username,
        "password": r.password.as_ref().map(|p| p.expose_secret()),
        "api_token": r.api_token.as_ref().map(|t| t.expose_secret()),
    });
    Ok(([(axum::http::header::CACHE_CONTROL, "no-store")], Json(body)))
}

pub async fn repairs(State(app): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    let base = app.config.server.public_url.clone().unwrap_or_default();
    let org = &names.org;
    let list: Vec<Value> = app
        .containers
        .repairs(org)
        .await?
        .into_iter()
        .map(|r| {
            let (db, alias) = (&r.db, &r.alias);
            json!({
                "database": db,
                "alias": alias,
                "code": r.code.code(),
                "broken_at": r.broken_at_ms.map(rfc3339),
                "remediation": r.code.remediation(),
                "renew": {"method": "POST", "url": format!("{base}/v1/orgs/{org}/databases/{db}/containers/{alias}/authorize")},
            })
        })
        .collect();
    Ok(Json(json!({ "count": list.len(), "repairs": list })))
}
