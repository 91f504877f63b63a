//! `POST …/token`: a valid access token for the caller's own use.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde_json::json;

use super::AppState;
use super::extract::Names;
use super::manage::load_container;
use crate::chain::ChainError;
use crate::clock::rfc3339;
use crate::ids::ContainerRef;
use crate::problem::Problem;
use crate::records::CredentialKind;

pub async fn hand_out(State(s): State<AppState>, names: Names) -> Result<Response, Problem> {
    let c = names.container()?;
    let token = match s.engine.access_token(&c).await {
        Ok(t) => t,
        Err(ChainError::NotAuthorized) => {
            // Not a chain: say why, without a second read on the warm path.
            let (rec, _) = load_container(&s, &c).await?;
            return Err(match rec.kind {
                CredentialKind::Oauth2Code => Problem::conflict(
                    "not_authorized",
                    format!("{c} has no authorization yet. Start one with POST …/containers/{}/authorize.", c.alias),
                ),
                kind @ (CredentialKind::Oauth2ClientCredentials | CredentialKind::Oauth2Password) => {
                    let complete = match kind {
                        CredentialKind::Oauth2ClientCredentials => {
                            rec.client_id.is_some() && rec.sealed_client_secret.is_some()
                        }
                        _ => rec.username.is_some() && rec.sealed_password.is_some(),
                    };
                    if !complete {
                        let needs = if kind == CredentialKind::Oauth2ClientCredentials {
                            "client_id and client_secret"
                        } else {
                            "username and password"
                        };
                        return Err(Problem::conflict(
                            "credentials_missing",
                            format!("{c} has no {needs} yet. Set them with PUT …/containers/{}/credentials.", c.alias),
                        ));
                    }
                    let provider = rec.provider.clone().unwrap_or_default();
                    match s.engine.grant_token(&c, &provider, kind).await {
                        Ok(t) => return Ok(token_response(&s, t)),
                        Err(e) => chain_problem(&c, e),
                    }
                }
                _ => Problem::bad_request(
                    "no_access_token",
                    format!("{c} uses {:?} credentials, which have no access token.", rec.kind),
                ),
            });
        }
        Err(e) => return Err(chain_problem(&c, e)),
    };
    Ok(token_response(&s, token))
}

fn token_response(s: &AppState, token: crate::chain::AccessToken) -> Response {
    let now = s.clock.now_ms();
    let body = json!({
        "access_token": token.token.expose_secret(),
        "token_type": "Bearer",
        "expires_in": ((token.expires_at_ms - now).max(0) / 1000),
        "expires_at": rfc3339(token.expires_at_ms),
    });
    let mut res = Json(body).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A chain failure as the API shows it, naming the container and what to do.
pub fn chain_problem(c: &ContainerRef, e: ChainError) -> Problem {
    match e {
        ChainError::NeedsRepair { code, .. } if code.needs_new_credentials() => {
            Problem::conflict(code.code(), format!("{c} needs new credentials: {}", code.remediation()))
        }
        ChainError::NeedsRepair { code, .. } => Problem::conflict(
            code.code(),
            format!(
                "{c} needs repair: {} Renew it with POST …/containers/{}/authorize.",
                code.remediation(),
                c.alias
            ),
        ),
        ChainError::RateLimited { wait_s } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "token_rate_limited",
            format!("The provider allows a new access token for {c} in {wait_s} seconds (minimum interval between token requests). Try again then."),
        )
        .retry_after(wait_s),
        ChainError::ProviderUnavailable { retry_after_s, .. } => Problem::unavailable(
            "provider_unavailable",
            format!("The provider did not give {c} a new token just now; the chain is intact. Try again in {retry_after_s} seconds."),
            retry_after_s,
        ),
        ChainError::RefreshInProgress => Problem::unavailable(
            "refresh_in_progress",
            format!("A refresh of {c} is taking longer than usual; the chain is intact. Try again in a few seconds."),
            2,
        ),
        ChainError::InvalidClient(_) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "invalid_client",
            format!("The provider refused chainkeeper's app registration while refreshing {c}. An operator must check client_id and client_secret."),
        ),
        ChainError::NoApp(p) => Problem::conflict("app_not_configured", format!("No app registration for provider '{p}'. Add [apps.{p}] to the config.")),
        ChainError::UnknownProvider(p) => Problem::conflict("unknown_provider", format!("Provider '{p}' of {c} is not configured.")),
        ChainError::NotAuthorized => Problem::conflict("not_authorized", format!("{c} has no authorization yet.")),
        ChainError::Store(e) => e.into(),
        other => Problem::internal(&other),
    }
}
