//! `PUT/DELETE …/auto-recovery` and `POST …/recover`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use super::problem::Problem;
use crate::app::handoff::Requested;
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

/// `serve` runs the recovery inline and answers 200 with its outcome. In AWS (a recovery queue) the request is
/// checked and queued, and the answer is 202: the `recover` function runs it within seconds (a sign-in may take
/// longer than the `manage` function's 15 s and API Gateway's 29 s allow), its outcome then shows in the
/// container's status, the repairs list, the audit log and the webhook.
pub async fn run(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
) -> Result<(StatusCode, Json<Value>), Problem> {
    match app.handoff.request(&who.sub, &names.container()?).await? {
        Requested::Ran(outcome) => Ok((StatusCode::OK, Json(json!({ "outcome": outcome })))),
        Requested::Queued => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "outcome": "queued",
                "next": "The recover function runs this recovery within seconds. Its outcome shows in the \
                         container's status (GET …/containers/{alias}), the repairs list, the audit log \
                         (auto_recovery.run) and the chain.recovered or chain.needs_repair webhook event.",
            })),
        )),
    }
}
