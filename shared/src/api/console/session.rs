//! The console's session cookie and the [`Signed`] extractor. The cookie holds a random id (the store keeps only
//! its SHA-256, `app::console`): `HttpOnly; SameSite=Lax`, and over https `Secure` with the `__Host-` prefix (which
//! makes the browser refuse it from any other origin; the prefix requires `Path=/`); over plain http (a local
//! `serve`) `Path=/console`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::super::AppState;
use crate::app::console::Session;
use crate::config::Config;

/// A signed-in request: the session and its raw id (for sign-out).
#[derive(Clone, Debug)]
pub struct Signed {
    pub session: Session,
    pub(super) id: String,
}

/// Whether people reach chainkeeper over https (`[server] public_url`).
pub fn is_https(config: &Config) -> bool {
    config.server.public_url.as_deref().is_some_and(|u| u.starts_with("https://"))
}

/// The cookie's name: `__Host-chainkeeper_console` over https, `chainkeeper_console` otherwise.
pub fn cookie_name(config: &Config) -> &'static str {
    if is_https(config) { "__Host-chainkeeper_console" } else { "chainkeeper_console" }
}

/// The `Set-Cookie` value of a new session (`max_age_s`: until its absolute expiry), or of its removal (`None`).
pub fn set_cookie(config: &Config, id: Option<&str>, max_age_s: i64) -> HeaderValue {
    let name = cookie_name(config);
    let attrs = if is_https(config) {
        "Path=/; Secure; HttpOnly; SameSite=Lax"
    } else {
        "Path=/console; HttpOnly; SameSite=Lax"
    };
    let text = match id {
        Some(id) => format!("{name}={id}; {attrs}; Max-Age={max_age_s}"),
        None => format!("{name}=; {attrs}; Max-Age=0"),
    };
    HeaderValue::from_str(&text).expect("session ids are url-safe base64")
}

/// The session id the request's cookie holds, if any.
pub fn cookie_id(headers: &HeaderMap, config: &Config) -> Option<String> {
    let name = cookie_name(config);
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let to_signin = || Redirect::to("/console/signin").into_response();
        let Some(id) = cookie_id(&parts.headers, &app.config) else { return Err(to_signin()) };
        match app.console.session(&id).await {
            Ok(Some(session)) => Ok(Signed { session, id }),
            Ok(None) => Err(to_signin()),
            Err(e) => {
                tracing::warn!(error = %e, "console session lookup failed");
                Err(super::message_page(
                    None,
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "Try again in a moment",
                    "The console could not read your session: its storage did not answer.",
                ))
            }
        }
    }
}

impl Signed {
    pub fn id(&self) -> &str {
        &self.id
    }
}
