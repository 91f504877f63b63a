//! `PUT/DELETE …/auto-recovery` and `POST …/recover`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use super::problem::Problem;
use crate::app::recovery::RecoveryCredentials;
use crate::clock::rfc3339;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryCredentialsBody {
    username: secrecy::SecretString,
    password: secrecy::SecretString,
    /// Base32, or an `otpauth://totp/…` URI.
    #[serde(default)]
    totp_secret: Option<secrecy::SecretString>,
    #[serde(default)]
    retention_days: Option<u32>,
}

pub async fn set(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<RecoveryCredentialsBody>,
) -> Result<Json<Value>, Problem> {
    let given = RecoveryCredentials {
        username: b.username,
        password: b.password,
        totp_secret: b.totp_secret,
        retention_days: b.retention_days,
    };
    let stored = app.recovery.store_credentials(&who.sub, &names.container()?, given).await?;
    Ok(Json(json!({
        "configured": true, "totp": stored.totp, "retention_days": stored.retention_days,
        "expires_at": rfc3339(stored.expires_at_ms),
    })))
}

pub async fn delete(State(app): State<AppState>, Caller(who): Caller, names: Names) -> Result<StatusCode, Problem> {
    app.recovery.delete_credentials(&who.sub, &names.container()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn run(State(app): State<AppState>, Caller(who): Caller, names: Names) -> Result<Json<Value>, Problem> {
    let outcome = app.recovery.run_now(&who.sub, &names.container()?).await?;
    Ok(Json(json!({ "outcome": outcome })))
}
