//! Signing in and out: the sign-in page, single-use links (`chainkeeper console-link`), OpenID Connect, sign-out.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::session::set_cookie;
use super::{Fields, Signed, layout, message_page, see_other};
use crate::api::AppState;
use crate::app::console::{ConsoleError, NewSession};

/// `GET /console/signin`: how to sign in.
pub async fn page(State(app): State<AppState>) -> Response {
    let oidc = app.config.console.issuer.is_some();
    let body = html! {
        h1 { "Sign in to chainkeeper" }
        @if oidc {
            p { a class="button" href="/console/signin/oidc" { "Sign in with your organisation's account" } }
        }
        h2 { "With a sign-in link" }
        p {
            "An operator can print a single-use sign-in link that is valid for a few minutes: "
            code { "chainkeeper console-link --data-dir DIR --org ORG --scope admin" }
        }
    };
    layout(None, "Sign in", body).into_response()
}

#[derive(Deserialize)]
pub struct LinkQuery {
    #[serde(default)]
    t: String,
}

/// `GET /console/signin/link?t=…`: a button that uses the link. (A GET changes nothing: a mail scanner that
/// opens the link does not use it up.)
pub async fn link_page(Query(q): Query<LinkQuery>) -> Response {
    let body = html! {
        h1 { "Sign in to chainkeeper" }
        p { "This link signs you in once. Continue to open the console." }
        form method="post" action="/console/signin/link" {
            input type="hidden" name="t" value=(q.t);
            button type="submit" { "Continue" }
        }
    };
    layout(None, "Sign in", body).into_response()
}

/// `POST /console/signin/link`: uses the link, starts the session.
pub async fn link(State(app): State<AppState>, body: Bytes) -> Response {
    let f = Fields::parse(&body);
    match app.console.redeem_link(f.get("t")).await {
        Ok(new) => signed_in(&app, new),
        Err(ConsoleError::LinkUsed) => message_page(
            None,
            StatusCode::GONE,
            "This sign-in link was already used",
            "A sign-in link works once. Ask your operator for a new one (chainkeeper console-link).",
        ),
        Err(ConsoleError::LinkInvalid) => message_page(
            None,
            StatusCode::GONE,
            "This sign-in link is not valid",
            "The link has expired or was never issued. Ask your operator for a new one (chainkeeper console-link).",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in link failed");
            unavailable()
        }
    }
}

pub(super) fn unavailable() -> Response {
    message_page(
        None,
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again in a moment",
        "The console's storage did not answer.",
    )
}

/// Sets the session cookie and goes to the console.
pub(super) fn signed_in(app: &AppState, new: NewSession) -> Response {
    let max_age = app.config.console.session_absolute_s as i64;
    let mut res = see_other("/console");
    res.headers_mut().insert(header::SET_COOKIE, set_cookie(&app.config, Some(&new.id), max_age));
    res
}

/// `POST /console/signout`: ends the session (CSRF-checked), removes the cookie.
pub async fn sign_out(State(app): State<AppState>, s: Signed, body: Bytes) -> Response {
    if let Err(refused) = s.form(&body) {
        return refused.into_response();
    }
    if let Err(e) = app.console.sign_out(s.id()).await {
        tracing::warn!(error = %e, "console sign-out failed");
        return unavailable();
    }
    let mut res = message_page(None, StatusCode::OK, "Signed out", "You are signed out of the console.");
    res.headers_mut().insert(header::SET_COOKIE, set_cookie(&app.config, None, 0));
    res
}

/// `GET /console/signin/oidc` (a link, not a form: the CSP's `form-action` would stop a form's redirect to the
/// IdP in Chromium): off to the IdP with PKCE, state and nonce; the state is bound to this browser by a cookie.
pub async fn oidc_start(State(app): State<AppState>) -> Response {
    if app.config.console.issuer.is_none() {
        return message_page(
            None,
            StatusCode::NOT_FOUND,
            "No identity provider",
            "This deployment has no OpenID Connect sign-in configured ([console] issuer). Use a sign-in link.",
        );
    }
    match app.console_oidc.start().await {
        Ok((url, state)) => {
            let mut res = see_other(&url);
            res.headers_mut().insert(header::SET_COOKIE, state_cookie(&app, Some(&state)));
            res
        }
        Err(e) => oidc_error(e),
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The cookie that binds an OIDC sign-in's `state` to the browser that started it (so that nobody can hand
/// someone else a callback URL of their own sign-in).
fn state_cookie_name(app: &AppState) -> &'static str {
    if super::session::is_https(&app.config) { "__Secure-chainkeeper_oidc" } else { "chainkeeper_oidc" }
}

fn state_cookie(app: &AppState, state: Option<&str>) -> axum::http::HeaderValue {
    let secure = if super::session::is_https(&app.config) { "; Secure" } else { "" };
    let (value, age) = match state {
        Some(s) => (s, 600),
        None => ("", 0),
    };
    let text = format!(
        "{}={value}; Path=/console/signin; HttpOnly; SameSite=Lax; Max-Age={age}{secure}",
        state_cookie_name(app)
    );
    axum::http::HeaderValue::from_str(&text).expect("states are url-safe base64")
}

/// `GET /console/signin/callback`: the IdP's redirect.
pub async fn oidc_callback(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let name = state_cookie_name(&app);
    let bound = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(k, v)| k == name && !v.is_empty() && Some(v) == q.state.as_deref());
    if !bound {
        return oidc_error(crate::app::console_oidc::OidcError::StateInvalid);
    }
    if q.error.is_some() {
        return message_page(
            None,
            StatusCode::FORBIDDEN,
            "Sign-in was not completed",
            "Your identity provider did not sign you in. Try again, or ask your administrator.",
        );
    }
    let mut res =
        match app.console_oidc.complete(q.code.as_deref().unwrap_or(""), q.state.as_deref().unwrap_or("")).await {
            Ok(new) => signed_in(&app, new),
            Err(e) => oidc_error(e),
        };
    res.headers_mut().append(header::SET_COOKIE, state_cookie(&app, None));
    res
}

fn oidc_error(e: crate::app::console_oidc::OidcError) -> Response {
    use crate::app::console_oidc::OidcError as E;
    match e {
        E::NotAllowed => message_page(
            None,
            StatusCode::FORBIDDEN,
            "Not allowed",
            "You signed in, but none of your groups gives access to chainkeeper. Ask your administrator to add you \
             to a group that the console maps to an organisation.",
        ),
        E::StateInvalid => message_page(
            None,
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "This sign-in was started too long ago or already finished. Start again from the sign-in page.",
        ),
        other => {
            tracing::warn!(error = %other, "console OIDC sign-in failed");
            message_page(
                None,
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                "The identity provider's answer could not be used. Try again; if it keeps failing, ask your \
                 administrator to check the [console] settings.",
            )
        }
    }
}
