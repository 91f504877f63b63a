//! `POST …/token`: a valid access token for the caller's own use.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secrecy::ExposeSecret;
use serde::Serialize;

use super::AppState;
use super::extract::Names;
use super::problem::Problem;
use crate::app::api_tokens::RevocationCheck;
use crate::clock::rfc3339;

/// The answer, in RFC 6749's token response shape (plus `expires_at`).
#[derive(Serialize)]
struct TokenAnswer<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    expires_at: String,
}

pub async fn hand_out(
    State(app): State<AppState>,
    Extension(caller): Extension<RevocationCheck>,
    names: Names,
) -> Result<Response, Problem> {
    // The caller's revocation is read with the chain (`auth::settles_revocation`).
    let token = app.handout.access_token_for(&names.into_container()?, &caller).await?;
    let now = app.clock.now_ms();
    let body = TokenAnswer {
        access_token: token.token.expose_secret(),
        token_type: "Bearer",
        expires_in: (token.expires_at_ms - now).max(0) / 1000,
        expires_at: rfc3339(token.expires_at_ms),
    };
    let mut res = Json(body).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
