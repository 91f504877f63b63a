//! Extractors whose failures are problem+json, never axum's plain-text rejections, and never echo a value
//! from the request (it could be a secret someone put in the wrong field).

use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::errors;
use super::problem::Problem;
use crate::auth::Claims;
use crate::ids::{Alias, ContainerRef, DbName, OrgId};

/// The body limit of the route (set with axum's `DefaultBodyLimit` in `routes_of`), for the 413's detail.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A request body as bytes, at most the route's limit: above it `413 body_too_large`, a problem document.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => Err(errors::body_too_large(limit)),
            Err(_) => Err(errors::unreadable_body()),
        }
    }
}

/// A JSON body. An empty body reads as `{}`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        let bytes =
            if bytes.iter().all(u8::is_ascii_whitespace) { axum::body::Bytes::from_static(b"{}") } else { bytes };
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            let msg = e.to_string();
            let safe = if msg.starts_with("missing field") || msg.starts_with("unknown field") {
                msg.split(" at line").next().unwrap_or("").to_string()
            } else {
                format!("a value is missing or has the wrong type (line {}, column {})", e.line(), e.column())
            };
            errors::invalid_body(&safe)
        })
    }
}

/// The names in the path, validated (and lower-cased: names are case-insensitive).
pub struct Names {
    pub org: OrgId,
    pub db: Option<DbName>,
    pub alias: Option<Alias>,
}

impl Names {
    pub fn container(&self) -> Result<ContainerRef, Problem> {
        match (&self.db, &self.alias) {
            (Some(db), Some(alias)) => Ok(ContainerRef { org: self.org.clone(), db: db.clone(), alias: alias.clone() }),
            _ => Err(errors::route_needs("a database and a container alias")),
        }
    }
    /// [`Self::container`], without copying the names.
    pub fn into_container(self) -> Result<ContainerRef, Problem> {
        match (self.db, self.alias) {
            (Some(db), Some(alias)) => Ok(ContainerRef { org: self.org, db, alias }),
            _ => Err(errors::route_needs("a database and a container alias")),
        }
    }
    pub fn db(&self) -> Result<DbName, Problem> {
        self.db.clone().ok_or_else(|| errors::route_needs("a database name"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Names {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        // Borrowed, percent-decoded captures: no map and no copies before the names' own.
        let params = RawPathParams::from_request_parts(parts, state).await.map_err(|_| errors::invalid_path_names())?;
        let (mut org, mut db, mut alias) = ("", None, None);
        for (name, value) in &params {
            match name {
                "org" => org = value,
                "db" => db = Some(value),
                "alias" => alias = Some(value),
                _ => {}
            }
        }
        let org = OrgId::parse(org)?;
        let db = db.map(DbName::parse).transpose()?;
        let alias = alias.map(Alias::parse).transpose()?;
        Ok(Self { org, db, alias })
    }
}

/// The verified claims of the caller's API token (set by the auth middleware).
pub struct Caller(pub std::sync::Arc<Claims>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<std::sync::Arc<Claims>>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| errors::internal(&"route without auth middleware"))
    }
}
