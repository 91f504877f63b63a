//! The query proxy: `…/containers/{alias}/query/{path}` (GET, POST, PUT, PATCH, DELETE) forwards to the
//! container's platform API with the chain's access token (`app::query` does the work).

use std::collections::HashMap;

use axum::body::Body as AxumBody;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::Response;

use super::AppState;
use super::extract::{Names, RawBody};
use super::problem::Problem;
use crate::app::query::{CacheUse, ForwardedBody, QueryRequest};

pub async fn proxy(
    State(app): State<AppState>,
    names: Names,
    method: Method,
    Path(params): Path<HashMap<String, String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let c = names.container()?;
    let path = params.get("path").cloned().unwrap_or_default();
    let forwarded = app.query.forward(&c, QueryRequest { method, path, query, headers, body }).await?;
    let mut res = Response::new(match forwarded.body {
        ForwardedBody::Bytes(bytes) => AxumBody::from(bytes),
        ForwardedBody::Stream(upstream) => AxumBody::from_stream(upstream.bytes_stream()),
    });
    *res.status_mut() = forwarded.status;
    for (k, v) in forwarded.headers {
        res.headers_mut().append(k, v);
    }
    let cache = match forwarded.cache {
        CacheUse::Hit => Some("hit"),
        CacheUse::Miss => Some("miss"),
        CacheUse::None => None,
    };
    if let Some(cache) = cache {
        res.headers_mut().insert("x-chainkeeper-cache", HeaderValue::from_static(cache));
    }
    Ok(res)
}
