//! The one middleware that checks API tokens, on every route of the table: a public route passes; any other
//! needs a valid token (`app::api_tokens::authenticate`) whose organisation is the one in the path, that is a
//! platform token where the route wants one, and whose scopes allow the route's resource (`auth::allows`).
//! Fail closed: a method the table does not list for the matched path is answered here, before any handler.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::routes::{RouteSpec, allowed_methods, route_for};
use super::{AppState, errors};
use crate::api::problem::Problem;
use crate::auth::{Claims, accepted_scopes, allows, org_of_path};

pub async fn require_token(State(app): State<AppState>, req: Request, next: Next) -> Response {
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
    let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match check(&app, header, req.method(), req.uri().path(), route).await {
        Ok(claims) => {
            let mut req = req;
            req.extensions_mut().insert(claims);
            next.run(req).await
        }
        Err(p) => p.into_response(),
    }
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

async fn check(
    app: &AppState,
    header: Option<&str>,
    method: &Method,
    path: &str,
    route: &RouteSpec,
) -> Result<Claims, Problem> {
    let header = header.ok_or_else(errors::token_missing)?;
    let token =
        header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).ok_or_else(errors::not_bearer)?;
    let claims = app.api_tokens.authenticate(token.trim()).await?;
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
    Ok(claims)
}
