//! The one middleware that checks API tokens, on every route of the table: a public route passes; any other
//! needs a valid token (`app::api_tokens::authenticate`) whose organisation is the one in the path, that is a
//! platform token where the route wants one, and whose scopes allow the route's resource (`auth::allows`).
//! Fail closed: a method the table does not list for the matched path is answered here, before any handler.
//!
//! The token may come as `Authorization: Bearer <token>`, as the password of `Authorization: Basic` (any user
//! name), or — on the read routes a BI tool reads (GET of the query proxy and the OData feed) — as the URL
//! parameter [`API_KEY_PARAM`] (Power Query's "Web API" credential with `ApiKeyName = "api_key"`). The parameter is
//! taken out of the request's URI here, before any handler, cache key, log line or forwarded URL can see it.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::limits::{RateLimiter, per_token};
use super::routes::{Handler, RouteSpec, allowed_methods, route_for};
use super::{AppState, errors};
use crate::api::problem::Problem;
use crate::app::api_tokens::RevocationCheck;
use crate::auth::{Claims, accepted_scopes, allows, org_of_path};

/// The URL parameter that carries an API token (Power Query's Web API `ApiKeyName`).
pub const API_KEY_PARAM: &str = "api_key";

/// What the auth middleware needs: the application, and the per-token rate limiter (`None`: limits off).
#[derive(Clone)]
pub struct Gate {
    pub app: AppState,
    pub limiter: Option<Arc<RateLimiter>>,
}

pub async fn require_token(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let app = &gate.app;
    // Whatever the route, the key leaves the URI first: no handler, cache key or forwarded URL ever holds it.
    let api_key = take_api_key(req.uri_mut());
    // This layer sits on matched routes only (the 404 fallback answers the rest).
    let Some(matched) = req.extensions().get::<MatchedPath>() else {
        return errors::no_such_route(req.uri().path()).into_response();
    };
    let Some(route) = route_for(req.method(), matched.as_str()) else {
        return method_not_in_table(matched.as_str());
    };
    if route.public {
        return next.run(req).await;
    }
    let api_key = api_key.filter(|_| takes_api_key(route));
    let token = match credential(req.headers(), api_key) {
        Ok(token) => token,
        Err(p) => return p.into_response(),
    };
    match check(app, token, req.method(), req.uri().path(), route).await {
        Ok((claims, revocation)) => {
            if let Some(limiter) = &gate.limiter
                && let Some(too_many) = per_token(limiter, &claims)
            {
                return too_many;
            }
            let mut req = req;
            req.extensions_mut().insert(claims);
            if let Some(revocation) = revocation {
                req.extensions_mut().insert(revocation);
            }
            next.run(req).await
        }
        Err(p) => p.into_response(),
    }
}

/// Whether the route's use case looks up the caller's revocation itself, in the store read it makes anyway: the
/// token hand-out (with the chain), the query proxy and the OData feed (with the container) — the warm paths tools
/// call — whose handlers take the [`RevocationCheck`]. Every other route has it looked up here, before its
/// handler runs.
fn settles_revocation(route: &RouteSpec) -> bool {
    matches!(route.handler, Handler::HandOut | Handler::Query | Handler::OData)
}

/// A `405` for a path of the table whose method is not: never passed to a handler. `Allow` lists what the table has.
fn method_not_in_table(template: &str) -> Response {
    let allow = allowed_methods(template).join(", ");
    let mut res = errors::method_not_allowed(Some(&allow)).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&allow) {
        res.headers_mut().insert(axum::http::header::ALLOW, v);
    }
    res
}

/// The routes that take the token as a URL parameter: reads of the query proxy and the OData feed, which BI
/// tools call with a Web API key. Everywhere else a key in the URL is dropped unread.
fn takes_api_key(route: &RouteSpec) -> bool {
    route.method == "GET" && matches!(route.handler, Handler::Query | Handler::OData)
}

/// Removes every `api_key` parameter from `uri`'s query, leaving the others exactly as sent (their encoding
/// included), and returns the first one's value.
pub fn take_api_key(uri: &mut Uri) -> Option<String> {
    let query = uri.query()?;
    let mut key = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let (name, value) = url::form_urlencoded::parse(pair.as_bytes()).next().unwrap_or_default();
        if name == API_KEY_PARAM {
            key.get_or_insert_with(|| value.into_owned());
        } else {
            kept.push(pair);
        }
    }
    key.as_ref()?;
    let path = uri.path();
    let rebuilt = if kept.is_empty() { path.to_string() } else { format!("{path}?{}", kept.join("&")) };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = rebuilt.parse().ok();
    if let Ok(stripped) = Uri::from_parts(parts) {
        *uri = stripped;
    } else {
        // Cannot happen (a part of a valid URI is valid); never keep the key.
        *uri = Uri::from_static("/");
    }
    key
}

/// The API token of the request: `Authorization: Bearer`, the password of `Authorization: Basic`, else the
/// URL's key (where the route takes one). `None` when there is none.
fn credential(headers: &HeaderMap, api_key: Option<String>) -> Result<Option<String>, Problem> {
    let Some(header) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(api_key.filter(|k| !k.is_empty()));
    };
    let header = header.to_str().map_err(|_| errors::not_bearer())?;
    let (scheme, rest) = header.split_once(' ').ok_or_else(errors::not_bearer)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.trim().to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded =
            base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| errors::not_bearer())?;
        let text = String::from_utf8(decoded).map_err(|_| errors::not_bearer())?;
        let (_user, password) = text.split_once(':').ok_or_else(errors::not_bearer)?;
        return Ok(Some(password.trim().to_string()).filter(|p| !p.is_empty()));
    }
    Err(errors::not_bearer())
}

async fn check(
    app: &AppState,
    token: Option<String>,
    method: &Method,
    path: &str,
    route: &RouteSpec,
) -> Result<(Arc<Claims>, Option<RevocationCheck>), Problem> {
    let token = token.ok_or_else(errors::token_missing)?;
    let (claims, revocation) = app.api_tokens.verify(token.trim()).await?;
    let revocation = if settles_revocation(route) {
        Some(revocation)
    } else {
        app.api_tokens.look_up(&revocation).await?;
        None
    };
    if let Some(path_org) = org_of_path(path)
        && claims.org.as_deref().is_some_and(|o| o != path_org)
    {
        return Err(errors::wrong_organisation());
    }
    if claims.org.is_some() && route.platform_only() {
        return Err(errors::platform_scope_required());
    }
    if !allows(&claims.scopes, &app.config.scope_groups, method, route.resource) {
        return Err(errors::insufficient_scope(&accepted_scopes(method, route.resource), &claims.scopes));
    }
    Ok((claims, revocation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_leaves_the_uri_and_every_other_parameter_stays_as_sent() {
        let mut uri: Uri =
            "/q/v1/crm/Accounts?$select=ID,Name&api_key=tok.en-1&$filter=Name%20eq%20'a'&api_key=x".parse().unwrap();
        assert_eq!(take_api_key(&mut uri).as_deref(), Some("tok.en-1"));
        assert_eq!(uri.to_string(), "/q/v1/crm/Accounts?$select=ID,Name&$filter=Name%20eq%20'a'");
        let mut only: Uri = "/q?api%5Fkey=k".parse().unwrap();
        assert_eq!(take_api_key(&mut only).as_deref(), Some("k"), "an encoded name is the same name");
        assert_eq!(only.to_string(), "/q");
        let mut none: Uri = "/q?api_keys=1&x=2".parse().unwrap();
        assert_eq!(take_api_key(&mut none), None);
        assert_eq!(none.to_string(), "/q?api_keys=1&x=2");
    }

    #[test]
    fn bearer_basic_password_and_key_are_read_in_that_order() {
        use base64::Engine;
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h, Some("k".into())).unwrap().as_deref(), Some("k"));
        assert_eq!(credential(&h, None).unwrap(), None);
        let basic = base64::engine::general_purpose::STANDARD.encode("powerbi:the-token");
        h.insert("authorization", format!("Basic {basic}").parse().unwrap());
        assert_eq!(credential(&h, Some("k".into())).unwrap().as_deref(), Some("the-token"));
        h.insert("authorization", "bearer b".parse().unwrap());
        assert_eq!(credential(&h, None).unwrap().as_deref(), Some("b"));
        for bad in ["Digest x", "Basic !!!", "Bearer", "Basic bm9jb2xvbg=="] {
            h.insert("authorization", bad.parse().unwrap());
            assert!(credential(&h, None).is_err(), "{bad}");
        }
    }
}
