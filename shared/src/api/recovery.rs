//! `PUT/DELETE …/auto-recovery` and `POST …/recover`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use super::manage::load_container;
use crate::audit;
use crate::clock::rfc3339;
use crate::problem::Problem;
use crate::records::CredentialKind;
use crate::records::recovery_key;
use crate::recover::{self, DEFAULT_RETENTION_DAYS, Outcome};
use crate::store::Condition;
use crate::totp::Totp;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryCredentials {
    username: secrecy::SecretString,
    password: secrecy::SecretString,
    /// Base32, or an `otpauth://totp/…` URI.
    #[serde(default)]
    totp_secret: Option<secrecy::SecretString>,
    #[serde(default)]
    retention_days: Option<u32>,
}

pub async fn set(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<RecoveryCredentials>,
) -> Result<Json<Value>, Problem> {
    use secrecy::ExposeSecret;
    let c = names.container()?;
    let (rec, _) = load_container(&s, &c).await?;
    if rec.kind != CredentialKind::Oauth2Code {
        return Err(Problem::bad_request(
            "auto_recovery_not_applicable",
            format!("{c} has no authorization to recover; auto-recovery is for oauth2_code containers."),
        ));
    }
    let days = b.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
    if !(1..=90).contains(&days) {
        return Err(Problem::bad_request("invalid_retention", "retention_days must be between 1 and 90."));
    }
    let totp = match &b.totp_secret {
        Some(t) => Some(Totp::parse(t.expose_secret()).map_err(|e| {
            Problem::bad_request(
                "invalid_totp_secret",
                format!("{e}. Give the base32 secret or the otpauth:// URI your authenticator shows."),
            )
        })?),
        None => None,
    };
    let sealed = recover::seal(&s, &c, &b.username, &b.password, totp.as_ref(), days).await?;
    recover::write(&s, &c, &sealed, Condition::None).await?;
    audit::record(&s, &c.org, &who.sub, "auto_recovery.set", Some(&c), "ok", Some(format!("kept {days} days"))).await;
    Ok(Json(
        json!({"configured": true, "totp": totp.is_some(), "retention_days": days, "expires_at": rfc3339(sealed.expires_at_ms)}),
    ))
}

pub async fn delete(State(s): State<AppState>, Caller(who): Caller, names: Names) -> Result<StatusCode, Problem> {
    let c = names.container()?;
    load_container(&s, &c).await?;
    s.store.delete(&recovery_key(&c), Condition::None).await?;
    audit::record(&s, &c.org, &who.sub, "auto_recovery.delete", Some(&c), "ok", None).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn run(State(s): State<AppState>, Caller(who): Caller, names: Names) -> Result<Json<Value>, Problem> {
    let c = names.container()?;
    load_container(&s, &c).await?;
    let outcome = recover::recover_container(&s, &c, &format!("requested by {}", who.sub))
        .await
        .map_err(|e| Problem::internal(&e))?;
    match outcome {
        Outcome::NotNeeded => Err(Problem::conflict(
            "chain_healthy",
            format!("{c} is healthy: auto-recovery only runs for a chain that needs repair."),
        )),
        Outcome::NotConfigured => Err(Problem::conflict(
            "auto_recovery_not_configured",
            format!("{c} has no auto-recovery credentials. Store them with PUT …/auto-recovery."),
        )),
        Outcome::RateLimited => Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "recovery_rate_limited",
            format!("{c} had three recovery attempts in the last hour; the next is allowed later."),
        )
        .retry_after(600)),
        other => Ok(Json(json!({"outcome": other}))),
    }
}
