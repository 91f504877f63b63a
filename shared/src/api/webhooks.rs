//! `PUT/DELETE /v1/orgs/{org}/webhook`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use super::problem::Problem;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    url: String,
    /// The event types to deliver (`app::webhooks::EVENT_TYPES`); every one when absent.
    #[serde(default)]
    events: Option<Vec<String>>,
}

/// Registers (or replaces) the organisation's webhook; the signing secret is returned once, the URL masked.
pub async fn set(
    State(app): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<Webhook>,
) -> Result<Json<Value>, Problem> {
    let events = b.events.clone();
    let done = app.webhooks.register_for(&names.org, &who.sub, &b.url, b.events).await?;
    let all = || crate::app::webhooks::EVENT_TYPES.iter().map(|(t, _)| t.to_string()).collect::<Vec<_>>();
    Ok(Json(json!({
        "url": done.masked_url,
        "events": events.unwrap_or_else(all),
        "secret": done.secret.expose_secret(),
        "signature_header": "X-Chainkeeper-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<body>\")>",
    })))
}

pub async fn delete(State(app): State<AppState>, Caller(who): Caller, names: Names) -> Result<StatusCode, Problem> {
    app.webhooks.remove(&names.org, &who.sub).await?;
    Ok(StatusCode::NO_CONTENT)
}
