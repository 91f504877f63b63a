//! API tokens and the one middleware that checks them.
//!
//! A token is a JWT (HS256, key from the `Secrets` port) naming its subject, its organisation (or none, for a
//! platform token) and its scopes. Scopes come from the API's own resources ([`crate::api::routes::ROUTES`]):
//! `GET` needs `<resource>.read` or `<resource>.readwrite`; `POST`/`PUT`/`PATCH`/`DELETE` need
//! `<resource>.readwrite`. The group scope `admin` covers every resource; operators define more groups in
//! the config (`[scope_groups]`). The middleware enforces exactly the table that `/openapi.json` publishes.

use std::collections::BTreeMap;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::routes::{RouteSpec, route_for};
use crate::clock::Millis;
use crate::problem::Problem;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    /// The organisation the token is limited to; `None` for a platform token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    pub scopes: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    pub iat: i64,
    /// Token id (for revocation).
    pub jti: String,
}

pub fn issue(key: &[u8], claims: &Claims) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(key))?)
}

/// Checks signature and expiry (against chainkeeper's clock, not the system's).
pub fn verify(key: &[u8], token: &str, now_ms: Millis) -> Result<Claims, Problem> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &validation).map_err(|_| {
        unauthorized("The API token is not valid (bad signature or format). Ask an administrator for a new one.")
    })?;
    if data.claims.exp * 1000 <= now_ms {
        return Err(unauthorized("The API token has expired. Ask an administrator for a new one."));
    }
    Ok(data.claims)
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

/// The scopes that allow `method` on `resource`.
pub fn accepted_scopes(method: &Method, resource: &str) -> Vec<String> {
    let mut s = vec![format!("{resource}.readwrite")];
    if method == Method::GET || method == Method::HEAD {
        s.insert(0, format!("{resource}.read"));
    }
    s
}

/// Does a token with `scopes` allow `method` on `resource`? Group scopes expand first.
pub fn allows(scopes: &[String], groups: &BTreeMap<String, Vec<String>>, method: &Method, resource: &str) -> bool {
    let accepted = accepted_scopes(method, resource);
    scopes.iter().any(|s| {
        s == "admin"
            || accepted.contains(s)
            || groups.get(s).is_some_and(|members| members.iter().any(|m| m == "admin" || accepted.contains(m)))
    })
}

/// The organisation a request path names (`/v1/orgs/{org}/…`), lower-cased like every name.
fn org_of_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/orgs/")?;
    let org = rest.split('/').next().filter(|s| !s.is_empty())?;
    Some(org.to_ascii_lowercase())
}

/// The middleware: every route but the public ones needs a valid token whose organisation and scopes fit.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Fail closed: this layer sits on matched routes only (the 404 fallback answers the rest), and a method the
    // route table does not list for the matched path is answered here, before any handler.
    let Some(matched) = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()) else {
        return Problem::not_found("no_such_route", "There is no such route. See /openapi.json for the API.")
            .into_response();
    };
    let Some(route) = route_for(req.method(), &matched) else {
        return crate::api::method_not_in_table(&matched);
    };
    if route.public {
        return next.run(req).await;
    }
    let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    match check(&state, header, &method, &path, route).await {
        Ok(claims) => {
            let mut req = req;
            req.extensions_mut().insert(claims);
            next.run(req).await
        }
        Err(p) => p.into_response(),
    }
}

async fn check(
    state: &AppState,
    header: Option<String>,
    method: &Method,
    path: &str,
    route: &RouteSpec,
) -> Result<Claims, Problem> {
    let resource = route.resource;
    let header = header
        .ok_or_else(|| unauthorized("This call needs `Authorization: Bearer <API token>`. Issue one with `chainkeeper token issue` or POST /v1/orgs/{org}/api-tokens."))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| unauthorized("Use the Bearer scheme: `Authorization: Bearer <API token>`."))?;
    let key = state.secrets.signing_key().await.map_err(|e| Problem::internal(&e))?;
    let claims = verify(&key, token.trim(), state.clock.now_ms())?;
    if state.store.get(&crate::records::revoked_key(&claims.jti)).await.map_err(Problem::from)?.is_some() {
        return Err(unauthorized("This API token was revoked. Ask an administrator for a new one."));
    }
    if let Some(path_org) = org_of_path(path)
        && claims.org.as_deref().is_some_and(|o| o != path_org)
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "wrong_organisation",
            "This API token belongs to another organisation. Use a token of the organisation in the URL.",
        ));
    }
    if claims.org.is_some() && route.platform_only() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "platform_scope_required",
            "Creating or deleting organisations needs a platform token (`chainkeeper token issue --platform`).",
        ));
    }
    if !allows(&claims.scopes, &state.config.scope_groups, method, resource) {
        let needed = accepted_scopes(method, resource).join("` or `");
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("This call needs scope `{needed}` (or `admin`); the API token has: {}.", claims.scopes.join(", ")),
        ));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_readwrite_follow_the_method() {
        let g = BTreeMap::new();
        let read = vec!["containers.read".to_string()];
        assert!(allows(&read, &g, &Method::GET, "containers"));
        assert!(!allows(&read, &g, &Method::POST, "containers"));
        assert!(!allows(&read, &g, &Method::GET, "databases"));
        let rw = vec!["containers.readwrite".to_string()];
        assert!(allows(&rw, &g, &Method::GET, "containers"));
        assert!(allows(&rw, &g, &Method::DELETE, "containers"));
        assert!(allows(&["admin".to_string()], &g, &Method::PUT, "audit"));
        let mut groups = BTreeMap::new();
        groups.insert("bi".to_string(), vec!["tokens.readwrite".to_string(), "query.read".to_string()]);
        let bi = vec!["bi".to_string()];
        assert!(allows(&bi, &groups, &Method::POST, "tokens"));
        assert!(allows(&bi, &groups, &Method::GET, "query"));
        assert!(!allows(&bi, &groups, &Method::POST, "query"));
    }

    #[test]
    fn tokens_verify_and_expire_by_our_clock() {
        let key = b"0123456789abcdef0123456789abcdef";
        let claims = Claims {
            sub: "a".into(),
            org: Some("acme".into()),
            scopes: vec!["admin".into()],
            exp: 2_000,
            iat: 1_000,
            jti: "j".into(),
        };
        let t = issue(key, &claims).unwrap();
        assert_eq!(verify(key, &t, 1_500_000).unwrap().org.as_deref(), Some("acme"));
        assert_eq!(verify(key, &t, 2_000_000).unwrap_err().code, "unauthorized");
        assert!(verify(b"another-key-another-key-another!!", &t, 1_500_000).is_err());
        assert_eq!(org_of_path("/v1/orgs/Acme/databases"), Some("acme".into()));
        assert_eq!(org_of_path("/v1/orgs"), None);
    }
}
