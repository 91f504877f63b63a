//! The query proxy: `ANY …/containers/{alias}/query/{path}` forwards to the container's platform API with the
//! chain's access token. It only ever reaches the profile's own API host: the path is checked before it is
//! joined, and the joined URL is checked again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;

use super::AppState;
use super::extract::Names;
use super::manage::load_container;
use super::token::chain_problem;
use crate::clock::Millis;
use crate::problem::Problem;

/// Request headers passed on to the platform (content negotiation and conditional requests).
const FORWARD_REQUEST: &[&str] = &[
    "accept",
    "accept-language",
    "content-type",
    "if-none-match",
    "if-match",
    "if-modified-since",
    "prefer",
    "odata-version",
    "odata-maxversion",
];
/// Response headers passed back, besides the profile's rate-limit headers.
const FORWARD_RESPONSE: &[&str] =
    &["content-type", "etag", "last-modified", "retry-after", "odata-version", "preference-applied", "location"];
const MAX_BODY: usize = 10 * 1024 * 1024;
const MAX_CACHED_BODY: usize = 1024 * 1024;
/// A 429 whose reset is at most this far away is waited out and retried once.
const SHORT_WAIT_MS: Millis = 3_000;

/// GET responses kept for a profile's `cache_ttl_s`, per container and URL (so never across organisations).
#[derive(Default)]
pub struct ResponseCache {
    entries: Mutex<HashMap<String, Cached>>,
}

#[derive(Clone)]
struct Cached {
    at_ms: Millis,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: bytes::Bytes,
}

impl ResponseCache {
    fn get(&self, key: &str, now: Millis, ttl_ms: Millis) -> Option<Cached> {
        let entries = self.entries.lock().unwrap();
        entries.get(key).filter(|c| now - c.at_ms < ttl_ms).cloned()
    }
    fn put(&self, key: String, value: Cached, ttl_ms: Millis) {
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= 10_000 {
            let now = value.at_ms;
            entries.retain(|_, c| now - c.at_ms < ttl_ms);
            if entries.len() >= 10_000 {
                entries.clear();
            }
        }
        entries.insert(key, value);
    }
}

fn refuse(detail: &str) -> Problem {
    Problem::bad_request(
        "query_path_refused",
        format!("{detail} The query path is relative to the platform's API, e.g. `v1/current/Me`."),
    )
}

/// Checks the caller's path before it is joined to the API base URL.
pub fn check_path(raw: &str) -> Result<String, Problem> {
    if raw.is_empty() {
        return Err(refuse("The query path is empty."));
    }
    if raw.len() > 2048 {
        return Err(refuse("The query path is too long."));
    }
    let lower = raw.to_ascii_lowercase();
    if raw.starts_with('/') || lower.contains("://") || raw.contains('\\') || raw.contains('@') {
        return Err(refuse("Absolute URLs and other hosts are not allowed."));
    }
    if raw.chars().any(|c| c.is_control() || c == ' ') {
        return Err(refuse("The query path holds control characters or spaces."));
    }
    if lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%2e")
        || lower.contains("%25")
        || lower.contains("%00")
    {
        return Err(refuse("Encoded slashes, dots and percent signs are not allowed."));
    }
    if raw.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()) {
        return Err(refuse("Path segments '.', '..' and empty ones are not allowed."));
    }
    Ok(raw.to_string())
}

/// Joins and re-checks: the result must be on the base's scheme, host and port, under its path.
pub fn join(base: &str, path: &str, query: Option<&str>) -> Result<url::Url, Problem> {
    let base_url = url::Url::parse(base).map_err(|e| Problem::internal(&e))?;
    let mut joined = format!("{}/{}", base.trim_end_matches('/'), path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        if q.chars().any(|c| c.is_control() || c == ' ') {
            return Err(refuse("The query string holds control characters or spaces."));
        }
        joined.push('?');
        joined.push_str(q);
    }
    let url = url::Url::parse(&joined).map_err(|_| refuse("The query path is not a valid URL path."))?;
    let same_origin = url.scheme() == base_url.scheme()
        && url.host_str() == base_url.host_str()
        && url.port_or_known_default() == base_url.port_or_known_default();
    if !same_origin || !url.path().starts_with(base_url.path().trim_end_matches('/')) {
        return Err(refuse("The query path leaves the platform's API."));
    }
    Ok(url)
}

pub async fn proxy(
    State(s): State<AppState>,
    names: Names,
    method: Method,
    Path(params): Path<HashMap<String, String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let c = names.container()?;
    let path = check_path(params.get("path").map(String::as_str).unwrap_or(""))?;
    let (rec, _) = load_container(&s, &c).await?;
    let provider = rec.provider.clone().unwrap_or_default();
    let profile = s
        .config
        .provider(&provider)
        .ok_or_else(|| Problem::conflict("unknown_provider", format!("{c} has no platform API to query.")))?;
    let base = profile.api_base_url.clone().ok_or_else(|| {
        Problem::conflict("no_api_base_url", format!("Provider '{provider}' has no api_base_url to query."))
    })?;
    let url = join(&base, &path, query.as_deref())?;
    if body.len() > MAX_BODY {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Request bodies through the query proxy are limited to 10 MB.",
        ));
    }
    let now = s.clock.now_ms();
    let ttl_ms = (profile.cache_ttl_s * 1000.0) as Millis;
    let cache_key = format!("{}#{}#{}", c.org, c.local_name(), url);
    let cacheable = method == Method::GET && ttl_ms > 0;
    if cacheable && let Some(hit) = s.query_cache.get(&cache_key, now, ttl_ms) {
        let mut res = Response::new(AxumBody::from(hit.body));
        *res.status_mut() = hit.status;
        for (k, v) in hit.headers {
            res.headers_mut().append(k, v);
        }
        res.headers_mut().insert("x-chainkeeper-cache", HeaderValue::from_static("hit"));
        return Ok(res);
    }

    let mut token = s.engine.access_token(&c).await.map_err(|e| chain_problem(&c, e))?;
    let mut refreshed = false;
    let mut waited = false;
    let res = loop {
        let mut req = s
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(token.token.expose_secret())
            .timeout(Duration::from_secs(60));
        for name in FORWARD_REQUEST {
            if let Some(v) = headers.get(*name) {
                req = req.header(*name, v.clone());
            }
        }
        if !body.is_empty() {
            req = req.body(body.clone());
        }
        let res = req.send().await.map_err(|e| {
            tracing::warn!(error = %e, container = %c, "platform API unreachable");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "platform_unavailable",
                format!("The platform API of {c} did not answer. Try again shortly."),
            )
        })?;
        if res.status() == StatusCode::UNAUTHORIZED && !refreshed {
            // The platform refused a token we thought valid: refresh once (through the engine) and retry.
            refreshed = true;
            token = s.engine.replace_rejected(&c, &token).await.map_err(|e| chain_problem(&c, e))?;
            continue;
        }
        if res.status() == StatusCode::TOO_MANY_REQUESTS
            && !waited
            && let Some(wait) = wait_ms(res.headers(), s.clock.now_ms()).filter(|w| *w <= SHORT_WAIT_MS)
        {
            waited = true;
            tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
            continue;
        }
        break res;
    };
    let status = res.status();
    let mut out_headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for (k, v) in res.headers() {
        let name = k.as_str();
        if FORWARD_RESPONSE.contains(&name) || profile.rate_limit_headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            out_headers.push((k.clone(), v.clone()));
        }
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let wait_s = wait_ms(res.headers(), s.clock.now_ms()).map_or(60, |w| ((w + 999) / 1000).max(1) as u64);
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "platform_rate_limited",
            format!("The platform's rate limit for {c} is used up. Try again in {wait_s} seconds."),
        )
        .retry_after(wait_s)
        .into_response();
        for (k, v) in out_headers {
            if k != header::CONTENT_TYPE && k != header::RETRY_AFTER {
                p.headers_mut().append(k, v);
            }
        }
        return Ok(p);
    }
    if cacheable && status == StatusCode::OK && res.content_length().is_some_and(|l| (l as usize) <= MAX_CACHED_BODY) {
        let bytes = res.bytes().await.map_err(|_| {
            Problem::new(StatusCode::BAD_GATEWAY, "platform_unavailable", "The platform's answer broke off.")
        })?;
        s.query_cache.put(
            cache_key,
            Cached { at_ms: now, status, headers: out_headers.clone(), body: bytes.clone() },
            ttl_ms,
        );
        let mut out = Response::new(AxumBody::from(bytes));
        *out.status_mut() = status;
        for (k, v) in out_headers {
            out.headers_mut().append(k, v);
        }
        out.headers_mut().insert("x-chainkeeper-cache", HeaderValue::from_static("miss"));
        return Ok(out);
    }
    let mut out = Response::new(AxumBody::from_stream(res.bytes_stream()));
    *out.status_mut() = status;
    for (k, v) in out_headers {
        out.headers_mut().append(k, v);
    }
    if cacheable {
        out.headers_mut().insert("x-chainkeeper-cache", HeaderValue::from_static("miss"));
    }
    Ok(out)
}

/// How long a 429 asks us to wait: `Retry-After` (seconds), or Exact's `X-RateLimit-Minutely-Reset` /
/// `X-RateLimit-Reset` (a time in ms or s since the epoch).
fn wait_ms(headers: &HeaderMap, now: Millis) -> Option<Millis> {
    if let Some(s) =
        headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok())
    {
        return Some(s * 1000);
    }
    for name in ["x-ratelimit-minutely-reset", "x-ratelimit-reset"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok()) {
            let at = if v > 100_000_000_000 {
                v
            } else if v > 1_000_000_000 {
                v * 1000
            } else {
                now + v * 1000
            };
            return Some((at - now).max(0));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_relative_paths_under_the_api_pass() {
        for ok in ["v1/current/Me", "v1/123/crm/Accounts", "a.b/c-d_e", "v1/x%20y"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "http://evil.example/x",
            "HTTP://evil",
            "//evil.example/x",
            "../x",
            "a/../../b",
            "a/./b",
            "%2e%2e/x",
            "a%2Fb",
            "a%5cb",
            "a\\b",
            "user@evil.example",
            "a//b",
            "a\r\nX-Injected: 1",
            "a b",
            "%252e%252e/x",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn joined_urls_stay_on_the_api() {
        let base = "https://start.exactonline.nl/api";
        assert_eq!(
            join(base, "v1/current/Me", Some("$select=UserID")).unwrap().as_str(),
            "https://start.exactonline.nl/api/v1/current/Me?$select=UserID"
        );
        assert!(join(base, "v1/x", Some("a=1\r\nb")).is_err());
    }
}
