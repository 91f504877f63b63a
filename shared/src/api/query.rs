//! The query proxy: `…/containers/{alias}/query/{path}` (GET, POST, PUT, PATCH, DELETE) forwards to the
//! container's platform API with the chain's access token (`app::query` does the work); `…/odata/{path}` (GET)
//! is the same API as an OData feed for BI tools, its links pointing back through chainkeeper.

use std::collections::HashMap;

use axum::Extension;
use axum::body::Body as AxumBody;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::Response;

use super::AppState;
use super::extract::{Names, RawBody};
use super::problem::Problem;
use crate::app::api_tokens::RevocationCheck;
use crate::app::query::{CacheUse, Forwarded, ForwardedBody, QueryRequest};
use crate::ids::ContainerRef;

pub async fn proxy(
    State(app): State<AppState>,
    (names, Extension(caller)): (Names, Extension<RevocationCheck>),
    method: Method,
    Path(params): Path<HashMap<String, String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let c = names.container()?;
    let path = params.get("path").cloned().unwrap_or_default();
    let forwarded = app.query.forward(&c, &caller, QueryRequest { method, path, query, headers, body }).await?;
    Ok(render(forwarded))
}

/// `GET …/containers/{alias}/odata/{path}`: the platform's OData service, its service document, `$metadata` and
/// entity sets, with every link to the platform rewritten to this route.
pub async fn odata(
    State(app): State<AppState>,
    Extension(caller): Extension<RevocationCheck>,
    names: Names,
    method: Method,
    Path(params): Path<HashMap<String, String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let c = names.container()?;
    let path = params.get("path").cloned().unwrap_or_default();
    let feed = feed_base(&app, &c, &headers);
    let req = QueryRequest { method, path, query, headers, body: Default::default() };
    let forwarded = app.query.odata(&c, &caller, req, &feed).await?;
    Ok(render(forwarded))
}

/// Where the container's feed is, as the caller reaches it: `server.public_url` (the `Host` header when it is
/// not set, as for a local `serve`) and the route's prefix.
fn feed_base(app: &AppState, c: &ContainerRef, headers: &HeaderMap) -> String {
    let origin = match &app.config.server.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    format!("{origin}/v1/orgs/{}/databases/{}/containers/{}/odata", c.org, c.db, c.alias)
}

fn render(forwarded: Forwarded) -> Response {
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
    res
}
