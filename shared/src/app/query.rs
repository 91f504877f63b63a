//! The query proxy's core: a caller's request forwarded to the container's platform API with the chain's access
//! token. It only ever reaches the profile's own API host: the path is checked before it is joined, and the
//! joined URL is checked again. A 401 from the platform gets one refreshed token and one retry; a short 429 is
//! waited out once; GET answers are cached for the profile's `cache_ttl_s` (`odata_cache_ttl_s` through the
//! OData feed), per container and URL: identical GETs at the same time make one platform call, an `ETag` comes
//! with every cached answer (`If-None-Match` gets `304`), and `Cache-Control: no-cache` from the caller (or
//! `no-store` / `no-cache` from the platform) goes around the cache. The cache is per process, and also in the
//! store (sealed) for profiles with `cache_in_store` (`app::stored_answers`). The feed's answers are cached with
//! their links already rewritten, so a hit is a copy of bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;

use crate::chain::{AccessToken, ChainEngine, ChainError};
use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::ids::ContainerRef;
use crate::keys::{ContainerFields, Field, Vault};
use crate::provider::{CredentialUse, ProviderProfile};
use crate::records::{ContainerRecord, CredentialKind};
use crate::store::{Store, StoreError};

use super::Ports;
use super::api_tokens::{AuthError, RevocationCheck};
use super::governor::{Governor, Refusal};
use super::handout::{HandOut, HandOutError};
use super::lookup::{self, LookupError};
use super::stored_answers::{StoredAnswer, StoredAnswers};

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
/// A 429 whose reset is at most this far away is waited out and retried once.
const SHORT_WAIT_MS: Millis = 3_000;
/// The placeholder in a query or OData path for the signed-in user's current company (the profile's
/// `identity.division`), as sent or percent-encoded.
const DIVISION: [&str; 2] = ["{division}", "%7Bdivision%7D"];
/// How long a container's current division is remembered (it changes only when the user switches company).
const DIVISION_TTL_MS: Millis = 10 * 60 * 1000;
/// The largest OData answer whose links are rewritten (it is held in memory to do so).
pub const ODATA_REWRITE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Why a query path is refused (each says what is wrong with it).
pub type PathRefusal = &'static str;

/// How the platform failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformFailure {
    /// No answer (connection refused, timeout).
    NoAnswer,
    /// The answer broke off.
    BrokeOff,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The caller's API token, whose revocation was read with the container.
    #[error(transparent)]
    Caller(#[from] AuthError),
    #[error("query path refused: {0}")]
    PathRefused(PathRefusal),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{0} has no platform API to query")]
    NoPlatform(ContainerRef),
    #[error("provider '{0}' has no api_base_url")]
    NoApiBaseUrl(String),
    /// Above `limits.proxy_body_bytes` (the number).
    #[error("request body too large")]
    BodyTooLarge(usize),
    #[error("{c}: {source}")]
    Chain { c: ContainerRef, source: ChainError },
    /// The container's credential could not be had (first token, missing fields).
    #[error(transparent)]
    Credential(#[from] HandOutError),
    /// A password or API-token container whose profile does not say how its secret is used.
    #[error("{c}: provider '{provider}' has no credential_use")]
    NoCredentialUse { c: ContainerRef, provider: String },
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error("the platform API of {c} failed: {failure:?}")]
    Platform { c: ContainerRef, failure: PlatformFailure },
    /// The platform's rate limit is used up; its rate-limit headers are passed on.
    #[error("the platform's rate limit for {c} is used up")]
    PlatformRateLimited { c: ContainerRef, wait_s: u64, headers: Vec<(HeaderName, HeaderValue)> },
    /// The platform's daily call limit for this company, shared by every container of chainkeeper's app, is
    /// used up (the rate-limit governor refuses before the platform would).
    #[error("the platform's daily limit for {} is used up", .0.c)]
    DailyLimit(Box<DailyLimitReached>),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An OData answer above [`ODATA_REWRITE_MAX_BYTES`]: its links cannot be rewritten.
    #[error("the platform's OData answer for {c} is too large to rewrite")]
    AnswerTooLarge { c: ContainerRef },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A used-up daily limit: whose, how many calls, and when it resets.
#[derive(Debug)]
pub struct DailyLimitReached {
    pub c: ContainerRef,
    /// The platform's display name.
    pub platform: String,
    pub company: String,
    pub limit: u32,
    pub reset_at_ms: Millis,
    pub wait_s: u64,
}

/// The caller's request.
pub struct QueryRequest {
    pub method: Method,
    /// The path relative to the platform's API (unchecked).
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Whether the answer came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
    /// Not a cacheable request.
    None,
}

/// The platform's answer, passed on.
pub struct Forwarded {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: ForwardedBody,
    pub cache: CacheUse,
}

pub enum ForwardedBody {
    Bytes(Bytes),
    /// Streamed from the platform as it arrives.
    Stream(reqwest::Response),
}

/// GET responses kept for a profile's `cache_ttl_s`, per container and URL (so never across organisations),
/// bounded in bytes (`limits.proxy_cache_bytes`, counting bodies, headers and keys): when a new answer does not
/// fit, the oldest entries go first, expired or not.
pub struct ResponseCache {
    max_bytes: usize,
    inner: Mutex<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    entries: HashMap<String, Cached>,
    /// Keys in the order they were stored, with the time stored (a key stored again is found by its newer time).
    order: std::collections::VecDeque<(String, Millis)>,
    bytes: usize,
}

#[derive(Clone)]
struct Cached {
    at_ms: Millis,
    status: StatusCode,
    /// The platform's headers, with an `ETag` (the platform's, else one made from the body).
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Cached {
    fn etag(&self) -> Option<&HeaderValue> {
        self.headers.iter().find(|(k, _)| *k == reqwest::header::ETAG).map(|(_, v)| v)
    }

    /// The answer to a caller: `304` without a body when its `If-None-Match` names this answer's `ETag`.
    fn answer(self, request: &HeaderMap, cache: CacheUse) -> Forwarded {
        let matches = |etag: &HeaderValue| {
            request.get_all(reqwest::header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|v| {
                v.split(',').map(str::trim).any(|t| {
                    t == "*" || t.trim_start_matches("W/") == etag.to_str().unwrap_or("").trim_start_matches("W/")
                })
            })
        };
        if self.etag().is_some_and(matches) {
            let headers = self.headers.into_iter().filter(|(k, _)| *k == reqwest::header::ETAG).collect();
            let body = ForwardedBody::Bytes(Bytes::new());
            return Forwarded { status: StatusCode::NOT_MODIFIED, headers, body, cache };
        }
        Forwarded { status: self.status, headers: self.headers, body: ForwardedBody::Bytes(self.body), cache }
    }
}

/// A strong `ETag` of a body: the first 16 bytes of its SHA-256, hex.
fn etag_of(body: &[u8]) -> HeaderValue {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"ck-{hex}\"")).expect("hex is a valid header value")
}

/// Whether a `Cache-Control` (or `Pragma`) header says `no-cache` or `no-store`.
fn says_no_cache(headers: &HeaderMap) -> bool {
    [reqwest::header::CACHE_CONTROL, reqwest::header::PRAGMA].iter().any(|name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').map(|d| d.trim().to_ascii_lowercase()).any(|d| d == "no-cache" || d == "no-store"))
    })
}

/// One gate per cache key: identical GETs at the same time queue behind the first, which calls the platform;
/// the others then find its answer in the cache.
#[derive(Default)]
struct Gates(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

struct GateGuard {
    gates: Arc<Gates>,
    key: String,
    gate: Arc<tokio::sync::Mutex<()>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Gates {
    async fn enter(self: &Arc<Self>, key: &str) -> GateGuard {
        let gate = self.0.lock().unwrap().entry(key.to_string()).or_default().clone();
        let held = Some(gate.clone().lock_owned().await);
        GateGuard { gates: self.clone(), key: key.to_string(), gate, held }
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.held = None;
        let mut gates = self.gates.0.lock().unwrap();
        // The map's and ours: nobody else waits, the gate goes.
        if Arc::strong_count(&self.gate) <= 2 {
            gates.remove(&self.key);
        }
    }
}

impl Cached {
    /// What the entry costs, key included.
    fn size(&self, key: &str) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 16).sum();
        key.len() + self.body.len() + headers + 64
    }
}

impl ResponseCache {
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, inner: Mutex::default() }
    }

    fn get(&self, key: &str, now: Millis, ttl_ms: Millis) -> Option<Cached> {
        let inner = self.inner.lock().unwrap();
        inner.entries.get(key).filter(|c| now - c.at_ms < ttl_ms).cloned()
    }

    fn put(&self, key: String, value: Cached) {
        let size = value.size(&key);
        if size > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.size(&key);
        }
        while inner.bytes + size > self.max_bytes {
            let Some((oldest, at)) = inner.order.pop_front() else { break };
            if inner.entries.get(&oldest).is_some_and(|c| c.at_ms == at) {
                let gone = inner.entries.remove(&oldest).expect("just seen");
                inner.bytes -= gone.size(&oldest);
            }
        }
        inner.order.push_back((key.clone(), value.at_ms));
        inner.bytes += size;
        inner.entries.insert(key, value);
        // Keys stored again leave stale places in `order`; drop them once they outnumber the entries.
        if inner.order.len() > 2 * inner.entries.len() + 64 {
            let CacheEntries { entries, order, .. } = &mut *inner;
            order.retain(|(k, at)| entries.get(k).is_some_and(|c| c.at_ms == *at));
        }
    }

    /// Bytes held now, and entries.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.bytes, inner.entries.len())
    }
}

/// Checks the caller's path before it is joined to the API base URL.
pub fn check_path(raw: &str) -> Result<String, QueryError> {
    let refuse = |why| Err(QueryError::PathRefused(why));
    if raw.is_empty() {
        return refuse("The query path is empty.");
    }
    if raw.len() > 2048 {
        return refuse("The query path is too long.");
    }
    let lower = raw.to_ascii_lowercase();
    if raw.starts_with('/') || lower.contains("://") || raw.contains('\\') || raw.contains('@') {
        return refuse("Absolute URLs and other hosts are not allowed.");
    }
    if raw.chars().any(|c| c.is_control() || c == ' ') {
        return refuse("The query path holds control characters or spaces.");
    }
    if lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%2e")
        || lower.contains("%25")
        || lower.contains("%00")
    {
        return refuse("Encoded slashes, dots and percent signs are not allowed.");
    }
    // One trailing slash is allowed (an OData service root: `v1/{division}/crm/`).
    let segments = raw.strip_suffix('/').unwrap_or(raw);
    if segments.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()) {
        return refuse("Path segments '.', '..' and empty ones are not allowed.");
    }
    Ok(raw.to_string())
}

/// Joins and re-checks: the result must be on the base's scheme, host and port, under its path.
pub fn join(base: &str, path: &str, query: Option<&str>) -> Result<url::Url, QueryError> {
    let base_url = url::Url::parse(base).map_err(anyhow::Error::from)?;
    let mut joined = format!("{}/{}", base.trim_end_matches('/'), path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        if q.chars().any(|c| c.is_control() || c == ' ') {
            return Err(QueryError::PathRefused("The query string holds control characters or spaces."));
        }
        joined.push('?');
        joined.push_str(q);
    }
    let url =
        url::Url::parse(&joined).map_err(|_| QueryError::PathRefused("The query path is not a valid URL path."))?;
    let same_origin = url.scheme() == base_url.scheme()
        && url.host_str() == base_url.host_str()
        && url.port_or_known_default() == base_url.port_or_known_default();
    if !same_origin || !url.path().starts_with(base_url.path().trim_end_matches('/')) {
        return Err(QueryError::PathRefused("The query path leaves the platform's API."));
    }
    Ok(url)
}

#[derive(Clone)]
pub struct QueryProxy {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    http: reqwest::Client,
    engine: Arc<ChainEngine>,
    handout: HandOut,
    vault: Arc<Vault>,
    cache: Arc<ResponseCache>,
    /// Current division per container (`org#db/alias`), with when it was read.
    divisions: Arc<Mutex<HashMap<String, (String, Millis)>>>,
    /// One division lookup at a time: readers arriving together make one identity call.
    division_lookup: Arc<tokio::sync::Mutex<()>>,
    governor: Governor,
    gates: Arc<Gates>,
    /// The cache's tier in the store, for profiles with `cache_in_store`.
    stored: StoredAnswers,
}

impl QueryProxy {
    pub fn new(p: &Ports, engine: Arc<ChainEngine>) -> Self {
        let (store, clock, config, http) = (p.store.clone(), p.clock.clone(), p.config.clone(), p.http.clone());
        let cache = Arc::new(ResponseCache::new(config.limits.proxy_cache_bytes));
        let governor = Governor::new(store.clone(), clock.clone());
        let stored = StoredAnswers::new(store.clone(), p.vault.clone(), clock.clone());
        Self {
            store,
            clock,
            config,
            http,
            handout: HandOut::new(p, engine.clone()),
            vault: p.vault.clone(),
            engine,
            cache,
            divisions: Arc::default(),
            division_lookup: Arc::default(),
            governor,
            gates: Arc::default(),
            stored,
        }
    }

    /// Forwards one request to the platform API of `c`.
    // A debug span: this is the warm path, where an info-level span would cost every request an allocation.
    #[tracing::instrument(level = "debug", skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn forward(
        &self,
        c: &ContainerRef,
        caller: &RevocationCheck,
        req: QueryRequest,
    ) -> Result<Forwarded, QueryError> {
        self.forward_to(c, caller, req, None).await
    }

    /// `GET` through the container's OData feed at `feed_base` (the URL of `…/odata` as the caller reaches it):
    /// forwarded as by [`Self::forward`], then every link to the platform's API in a JSON or XML answer (v2
    /// `__next`, v4 `@odata.nextLink`, `__metadata.uri`, the service document's `xml:base`) points back at
    /// `feed_base`. The caller's credential is never in a link: a BI tool sends its own with every request.
    #[tracing::instrument(level = "debug", skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn odata(
        &self,
        c: &ContainerRef,
        caller: &RevocationCheck,
        req: QueryRequest,
        feed_base: &str,
    ) -> Result<Forwarded, QueryError> {
        self.forward_to(c, caller, req, Some(feed_base)).await
    }

    /// The signed-in user's current division in `c` (the profile's `identity.division`), remembered for
    /// [`DIVISION_TTL_MS`].
    async fn current_division(
        &self,
        c: &ContainerRef,
        profile: &crate::provider::ProviderProfile,
    ) -> Result<String, QueryError> {
        let no_division = QueryError::PathRefused(
            "This provider has no current division: give the division in the path instead of {division}.",
        );
        let Some(identity) = profile.identity.as_ref().filter(|i| i.division.is_some()) else {
            return Err(no_division);
        };
        let key = format!("{}#{}", c.org, c.local_name());
        let remembered = |now: Millis| {
            let divisions = self.divisions.lock().unwrap();
            divisions.get(&key).filter(|(_, at)| now - at < DIVISION_TTL_MS).map(|(d, _)| d.clone())
        };
        if let Some(d) = remembered(self.clock.now_ms()) {
            return Ok(d);
        }
        let _one_at_a_time = self.division_lookup.lock().await;
        let now = self.clock.now_ms();
        if let Some(d) = remembered(now) {
            return Ok(d);
        }
        let token = self.engine.access_token(c).await.map_err(|source| QueryError::Chain { c: c.clone(), source })?;
        let url = profile.endpoint(&identity.url)?;
        let unanswered = |_| QueryError::Platform { c: c.clone(), failure: PlatformFailure::NoAnswer };
        let res = self
            .http
            .get(url)
            .bearer_auth(token.token.expose_secret())
            .header("accept", "application/json")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(unanswered)?;
        if !res.status().is_success() {
            tracing::warn!(status = res.status().as_u16(), "the identity call for the current division failed");
            return Err(QueryError::Platform { c: c.clone(), failure: PlatformFailure::NoAnswer });
        }
        let body: serde_json::Value = res.json().await.map_err(unanswered)?;
        let pointer = identity.division.as_deref().unwrap_or_default();
        let division = match body.pointer(pointer) {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(no_division),
        };
        check_path(&division)?;
        self.divisions.lock().unwrap().insert(key, (division.clone(), now));
        Ok(division)
    }

    /// [`Self::forward`]; through the OData feed at `feed` (its cache time, links rewritten) when given. The
    /// caller's revocation and the container come from one store read; a revoked caller gets nothing.
    async fn forward_to(
        &self,
        c: &ContainerRef,
        caller: &RevocationCheck,
        req: QueryRequest,
        feed: Option<&str>,
    ) -> Result<Forwarded, QueryError> {
        let container_key = crate::records::container_key(c);
        let mut read = self.store.get_many(&[caller.key(), &container_key]).await.map_err(AuthError::Store)?;
        let container = read.pop().flatten();
        caller.settle(read.pop().flatten())?;
        let mut path = check_path(&req.path)?;
        let (rec, rec_version) = lookup::container_read(&*self.store, c, container).await?;
        let provider = rec.provider.clone().unwrap_or_default();
        let profile = self.config.provider(&provider).ok_or_else(|| QueryError::NoPlatform(c.clone()))?;
        let base = profile.api_base_url.clone().ok_or_else(|| QueryError::NoApiBaseUrl(provider.clone()))?;
        if DIVISION.iter().any(|p| path.contains(p)) {
            let division = self.current_division(c, profile).await?;
            for p in DIVISION {
                path = path.replace(p, &division);
            }
        }
        let url = join(&base, &path, req.query.as_deref())?;
        let max_body = self.config.limits.proxy_body_bytes;
        if req.body.len() > max_body {
            return Err(QueryError::BodyTooLarge(max_body));
        }
        let now = self.clock.now_ms();
        let ttl_s = match feed {
            Some(_) => profile.odata_cache_ttl_s.unwrap_or(profile.cache_ttl_s),
            None => profile.cache_ttl_s,
        };
        let ttl_ms = (ttl_s * 1000.0) as Millis;
        // Per container and URL, and per version of the container: made again under the same name (its creation
        // time), authorized again — perhaps as another user, whose rights differ — or given other credentials (its
        // item version), it starts afresh, so an answer fetched with one person's rights is never served after
        // another's sign-in. The feed's answers, whose links point at `feed`, apart from the proxy's.
        let (created, feed_or_proxy) = (rec.created_at_ms, feed.unwrap_or("proxy"));
        let cache_key = format!("{}#{}#{created}.{rec_version}#{feed_or_proxy}#{url}", c.org, c.local_name());
        let cacheable = req.method == Method::GET && ttl_ms > 0;
        // The caller's `Cache-Control: no-cache` goes to the platform (and refreshes the cached answer).
        let look = cacheable && !says_no_cache(&req.headers);
        if look && let Some(hit) = self.cache.get(&cache_key, now, ttl_ms) {
            return Ok(hit.answer(&req.headers, CacheUse::Hit));
        }
        // Identical GETs at the same time: the first calls the platform, the others wait for its answer.
        let _gate = match look {
            true => Some(self.gates.enter(&cache_key).await),
            false => None,
        };
        if look && let Some(hit) = self.cache.get(&cache_key, self.clock.now_ms(), ttl_ms) {
            return Ok(hit.answer(&req.headers, CacheUse::Hit));
        }
        let in_store = cacheable && profile.cache_in_store;
        if look
            && in_store
            && let Some(s) = self.stored.get(c, &cache_key, ttl_ms).await
        {
            let hit = Cached { at_ms: s.at_ms, status: s.status, headers: s.headers, body: s.body };
            self.cache.put(cache_key, hit.clone());
            return Ok(hit.answer(&req.headers, CacheUse::Hit));
        }

        let chain_error = |source| QueryError::Chain { c: c.clone(), source };
        let mut credential = self.credential(&rec, profile).await?;
        let mut refreshed = false;
        let mut waited = false;
        crate::metrics::proxy_call(&provider);
        // The company whose call budget this call takes from (profiles with a `rate_limit` only).
        let budget = profile.rate_limit.as_ref().and_then(|l| Some((l, l.company(&path)?.to_string())));
        let res = loop {
            if let Some((limit, company)) = &budget {
                self.governor.take(&provider, company, limit).await.map_err(|r| match r {
                    Refusal::Minute { wait_s, free_at_ms } => {
                        // Said as the platform would have said it: its minutely headers.
                        let headers = [
                            ("x-ratelimit-minutely-limit", limit.per_minute.to_string()),
                            ("x-ratelimit-minutely-remaining", "0".to_string()),
                            ("x-ratelimit-minutely-reset", free_at_ms.to_string()),
                        ]
                        .into_iter()
                        .filter_map(|(k, v)| Some((HeaderName::from_static(k), HeaderValue::from_str(&v).ok()?)))
                        .collect();
                        QueryError::PlatformRateLimited { c: c.clone(), wait_s, headers }
                    }
                    Refusal::Day { limit, reset_at_ms } => QueryError::DailyLimit(Box::new(DailyLimitReached {
                        c: c.clone(),
                        platform: profile.display_name.clone().unwrap_or_else(|| provider.clone()),
                        company: company.clone(),
                        limit,
                        reset_at_ms,
                        wait_s: ((reset_at_ms - self.clock.now_ms()).max(1000) / 1000) as u64,
                    })),
                    Refusal::Store(e) => QueryError::Store(e),
                })?;
            }
            let mut out = credential.apply(self.http.request(req.method.clone(), url.clone()), profile);
            out = out.timeout(Duration::from_secs(60));
            for name in FORWARD_REQUEST {
                if let Some(v) = req.headers.get(*name) {
                    out = out.header(*name, v.clone());
                }
            }
            if !req.body.is_empty() {
                out = out.body(req.body.clone());
            }
            let res = out.send().await.map_err(|e| {
                tracing::warn!(error = %e.without_url(), "platform API unreachable");
                QueryError::Platform { c: c.clone(), failure: PlatformFailure::NoAnswer }
            })?;
            if let Some((limit, company)) = &budget {
                let refused = res.status() == StatusCode::TOO_MANY_REQUESTS;
                if let Err(e) = self.governor.observe(&provider, company, limit, res.headers(), refused).await {
                    tracing::warn!(error = %e, "the call budget could not take the platform's count");
                }
            }
            if res.status() == StatusCode::UNAUTHORIZED
                && !refreshed
                && let Credential::Token(token) = &credential
            {
                // The platform refused a token (or session) we thought valid: renew it once (through the engine)
                // and retry. A stored secret is sent as it is: a second try would be refused the same way.
                refreshed = true;
                credential = Credential::Token(self.engine.replace_rejected(c, token).await.map_err(chain_error)?);
                continue;
            }
            if res.status() == StatusCode::TOO_MANY_REQUESTS
                && !waited
                && let Some(wait) = wait_ms(res.headers(), self.clock.now_ms()).filter(|w| *w <= SHORT_WAIT_MS)
            {
                waited = true;
                crate::metrics::rate_limit_wait(&provider);
                tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
                continue;
            }
            break res;
        };
        let status = res.status();
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for (k, v) in res.headers() {
            let name = k.as_str();
            if FORWARD_RESPONSE.contains(&name)
                || profile.rate_limit_headers.iter().any(|h| h.eq_ignore_ascii_case(name))
            {
                headers.push((k.clone(), v.clone()));
            }
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait_s = wait_ms(res.headers(), self.clock.now_ms()).map_or(60, |w| ((w + 999) / 1000).max(1) as u64);
            return Err(QueryError::PlatformRateLimited { c: c.clone(), wait_s, headers });
        }
        let cache = if cacheable { CacheUse::Miss } else { CacheUse::None };
        if cacheable
            && status == StatusCode::OK
            && !says_no_cache(res.headers())
            && res.content_length().is_some_and(|l| (l as usize) <= self.config.limits.proxy_cache_entry_bytes)
        {
            let bytes = res
                .bytes()
                .await
                .map_err(|_| QueryError::Platform { c: c.clone(), failure: PlatformFailure::BrokeOff })?;
            let bytes = match feed {
                Some(feed) if is_textual(&headers) => rewrite_body(&bytes, &base, feed),
                _ => bytes,
            };
            let mut headers = headers;
            if !headers.iter().any(|(k, _)| *k == reqwest::header::ETAG) {
                headers.push((reqwest::header::ETAG, etag_of(&bytes)));
            }
            let cached = Cached { at_ms: self.clock.now_ms(), status, headers, body: bytes };
            if in_store {
                let Cached { at_ms, status, headers, body } = cached.clone();
                self.stored.put(c, &cache_key, ttl_ms, &StoredAnswer { at_ms, status, headers, body }).await;
            }
            self.cache.put(cache_key, cached.clone());
            return Ok(cached.answer(&req.headers, cache));
        }
        let body = match feed {
            Some(feed) if is_textual(&headers) => {
                let mut res = res;
                let mut buf = Vec::new();
                while let Some(chunk) = res
                    .chunk()
                    .await
                    .map_err(|_| QueryError::Platform { c: c.clone(), failure: PlatformFailure::BrokeOff })?
                {
                    if buf.len() + chunk.len() > ODATA_REWRITE_MAX_BYTES {
                        return Err(QueryError::AnswerTooLarge { c: c.clone() });
                    }
                    buf.extend_from_slice(&chunk);
                }
                ForwardedBody::Bytes(rewrite_body(&buf, &base, feed))
            }
            _ => ForwardedBody::Stream(res),
        };
        Ok(Forwarded { status, headers, body, cache })
    }
}

/// What goes on a proxied request: a token of the chain engine (an OAuth2 access token, or a session login's
/// token), or a stored password or API token as the profile's `credential_use` says.
enum Credential {
    Token(AccessToken),
    Stored { username: Option<String>, secret: secrecy::SecretString },
}

impl Credential {
    fn apply(&self, req: reqwest::RequestBuilder, profile: &ProviderProfile) -> reqwest::RequestBuilder {
        match (self, &profile.credential_use) {
            // A session login's token goes as the login's `apply` says (CredentialUse::apply delegates).
            (Self::Token(t), Some(u @ CredentialUse::SessionLogin(_))) => u.apply(req, None, &t.token),
            (Self::Token(t), _) => req.bearer_auth(t.token.expose_secret()),
            (Self::Stored { username, secret }, Some(u)) => u.apply(req, username.as_deref(), secret),
            (Self::Stored { .. }, None) => req,
        }
    }
}

impl QueryProxy {
    /// The credential of `rec` for its platform: OAuth2 containers' access token (the first one obtained here for
    /// client-credentials and password grants), a session login's token, or the stored secret itself.
    async fn credential(&self, rec: &ContainerRecord, profile: &ProviderProfile) -> Result<Credential, QueryError> {
        let c = &rec.container;
        let stored = match (rec.kind, &profile.credential_use) {
            (CredentialKind::Password | CredentialKind::ApiToken, None) => {
                return Err(QueryError::NoCredentialUse { c: c.clone(), provider: profile.name.clone() });
            }
            (CredentialKind::Password | CredentialKind::ApiToken, Some(u)) => {
                !matches!(u, CredentialUse::SessionLogin(_))
            }
            _ => false,
        };
        if !stored {
            return Ok(Credential::Token(self.handout.access_token(c).await?));
        }
        let missing = super::containers::missing_credentials(rec, profile.credential_use.as_ref());
        let (field, sealed) = match rec.kind {
            CredentialKind::ApiToken => (Field::ApiToken, rec.sealed_api_token.as_deref()),
            _ => (Field::Password, rec.sealed_password.as_deref()),
        };
        let (Some(sealed), true) = (sealed, missing.is_empty()) else {
            let needs = match rec.kind {
                CredentialKind::ApiToken => "API token",
                _ => "password",
            };
            return Err(HandOutError::CredentialsMissing { c: c.clone(), needs }.into());
        };
        let secret = self.vault.open_string(&ContainerFields::of(c).context(field), sealed).await?;
        Ok(Credential::Stored { username: rec.username.clone(), secret })
    }
}

/// Whether an answer is JSON or XML (whose links the feed rewrites).
fn is_textual(headers: &[(HeaderName, HeaderValue)]) -> bool {
    headers.iter().any(|(k, v)| {
        *k == reqwest::header::CONTENT_TYPE && v.to_str().is_ok_and(|t| t.contains("json") || t.contains("xml"))
    })
}

/// An answer's body with its links to the platform's API (`api_base`) pointing at the feed.
fn rewrite_body(body: &[u8], api_base: &str, feed_base: &str) -> Bytes {
    Bytes::from(rewrite_links(&String::from_utf8_lossy(body), api_base, feed_base))
}

/// Every link to the platform's API (`api_base`) in an answer's text, as written or with JSON's escaped
/// slashes, made a link to the feed (`feed_base`): the rest of the link (path, `$skiptoken`, `$select`, …) stays.
pub fn rewrite_links(text: &str, api_base: &str, feed_base: &str) -> String {
    let (from, to) = (format!("{}/", api_base.trim_end_matches('/')), format!("{}/", feed_base.trim_end_matches('/')));
    let escaped = |s: &str| s.replace('/', "\\/");
    text.replace(&from, &to).replace(&escaped(&from), &escaped(&to))
}

/// How long a 429 asks us to wait: `Retry-After` (seconds), or Exact's `X-RateLimit-Minutely-Reset` /
/// `X-RateLimit-Reset` (a time in ms or s since the epoch).
fn wait_ms(headers: &HeaderMap, now: Millis) -> Option<Millis> {
    if let Some(s) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok()) {
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
        for ok in ["v1/current/Me", "v1/123/crm/Accounts", "a.b/c-d_e", "v1/x%20y", "v1/{division}/crm/"] {
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
            "a/b//",
            "a\r\nX-Injected: 1",
            "a b",
            "%252e%252e/x",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn links_to_the_platform_point_at_the_feed_and_nothing_else_changes() {
        let api = "https://start.exactonline.nl/api";
        let feed = "https://ck.example/v1/orgs/a/databases/b/containers/c/odata";
        let v2 = r#"{"d":{"results":[{"__metadata":{"uri":"https://start.exactonline.nl/api/v1/1/crm/Accounts(guid'x')"},"Web":"https://start.exactonline.nl/other"}],"__next":"https://start.exactonline.nl/api/v1/1/crm/Accounts?$select=ID&$skiptoken=guid'x'"}}"#;
        let out = rewrite_links(v2, api, feed);
        assert!(
            out.contains(&format!(r#""__next":"{feed}/v1/1/crm/Accounts?$select=ID&$skiptoken=guid'x'""#)),
            "{out}"
        );
        assert!(out.contains(&format!("{feed}/v1/1/crm/Accounts(guid'x')")), "{out}");
        assert!(out.contains("https://start.exactonline.nl/other"), "not under the API: unchanged");
        let v4 = r#"{"@odata.nextLink":"https:\/\/start.exactonline.nl\/api\/odata\/Items?$skip=5"}"#;
        assert_eq!(
            rewrite_links(v4, api, feed),
            r#"{"@odata.nextLink":"https:\/\/ck.example\/v1\/orgs\/a\/databases\/b\/containers\/c\/odata\/odata\/Items?$skip=5"}"#
        );
        let doc = r#"<service xml:base="https://start.exactonline.nl/api/v1/1/crm/">"#;
        assert_eq!(rewrite_links(doc, api, feed), format!(r#"<service xml:base="{feed}/v1/1/crm/">"#));
    }

    #[test]
    fn if_none_match_gets_304_and_no_cache_goes_around_the_cache() {
        let body = Bytes::from_static(b"{\"d\":{}}");
        let etag = etag_of(&body);
        assert_eq!(etag, etag_of(&Bytes::from_static(b"{\"d\":{}}")), "the same body, the same ETag");
        assert_ne!(etag, etag_of(b"{}"));
        let cached = Cached {
            at_ms: 0,
            status: StatusCode::OK,
            headers: vec![
                (reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (reqwest::header::ETAG, etag.clone()),
            ],
            body,
        };
        let mut req = HeaderMap::new();
        assert_eq!(cached.clone().answer(&req, CacheUse::Hit).status, StatusCode::OK);
        req.insert(reqwest::header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(cached.clone().answer(&req, CacheUse::Hit).status, StatusCode::OK);
        let list = format!("\"other\", W/{}", etag.to_str().unwrap());
        req.insert(reqwest::header::IF_NONE_MATCH, HeaderValue::from_str(&list).unwrap());
        let not_modified = cached.answer(&req, CacheUse::Hit);
        assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
        assert_eq!(not_modified.headers, vec![(reqwest::header::ETAG, etag)], "only the ETag, no body headers");

        let mut h = HeaderMap::new();
        assert!(!says_no_cache(&h));
        h.insert(reqwest::header::CACHE_CONTROL, HeaderValue::from_static("max-age=0, No-Cache"));
        assert!(says_no_cache(&h));
        h.insert(reqwest::header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=60"));
        assert!(!says_no_cache(&h));
        h.insert(reqwest::header::PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(says_no_cache(&h));
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

    fn answer(at_ms: Millis, body_len: usize) -> Cached {
        Cached { at_ms, status: StatusCode::OK, headers: Vec::new(), body: Bytes::from(vec![b'x'; body_len]) }
    }

    #[test]
    fn the_cache_never_holds_more_bytes_than_its_bound_and_drops_the_oldest_first() {
        let cache = ResponseCache::new(10_000);
        for i in 0..1_000 {
            cache.put(format!("k{i}"), answer(i, 900 + (i as usize % 7) * 50));
            assert!(cache.usage().0 <= 10_000, "{:?} after {i}", cache.usage());
        }
        let (bytes, entries) = cache.usage();
        assert!(bytes > 7_000 && entries >= 7, "it stays full: {bytes} bytes in {entries}");
        assert!(cache.get("k999", 999, 60_000).is_some(), "the newest stays");
        assert!(cache.get("k0", 999, 60_000).is_none(), "the oldest went");
        // An answer larger than the whole cache is not kept, and does not empty it.
        cache.put("huge".into(), answer(1_000, 20_000));
        assert!(cache.get("huge", 1_000, 60_000).is_none());
        assert_eq!(cache.usage().1, entries);
        // The same key stored again replaces its bytes instead of adding them.
        for t in 0..500 {
            cache.put("again".into(), answer(2_000 + t, 1_000));
        }
        assert!(cache.usage().0 <= 10_000);
        assert!(cache.get("again", 2_499, 60_000).is_some());
        let entries = cache.usage().1;
        assert!(cache.inner.lock().unwrap().order.len() <= 2 * entries + 64 + 1);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const BASES: &[&str] = &["https://start.exactonline.nl/api", "http://127.0.0.1:9/api/", "https://h.example"];

    /// Paths built from the pieces traversal attempts are made of.
    fn tricky_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just("/".to_string()),
            Just("\\".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%2f".to_string()),
            Just("%25".to_string()),
            Just("%5c".to_string()),
            Just("%00".to_string()),
            Just("@".to_string()),
            Just(":".to_string()),
            Just("//".to_string()),
            Just("?".to_string()),
            Just("#".to_string()),
            Just("http:".to_string()),
            Just("\u{ff0e}".to_string()),
            Just("\u{2024}".to_string()),
            "[a-zA-Z0-9_~-]{1,6}",
            "\\PC{1,3}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    fn decoded_segments(path: &str) -> Vec<String> {
        path.split('/').map(percent_decode).collect()
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
            {
                out.push(b);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Whatever the caller sends as a query path and query string: no panic, and a URL that passes both
        /// checks is on the API's own origin, under its base path, with no `.` or `..` segment, even decoded.
        #[test]
        fn fuzz_proxy_path_never_escapes_the_api(
            path in tricky_path(),
            query in proptest::option::of("[a-z=&%./#?@:\\\\]{0,20}|\\PC{0,10}"),
            base in proptest::sample::select(BASES),
        ) {
            let Ok(checked) = check_path(&path) else { return Ok(()) };
            let Ok(url) = join(base, &checked, query.as_deref()) else { return Ok(()) };
            let base_url = url::Url::parse(base).unwrap();
            prop_assert_eq!(url.scheme(), base_url.scheme());
            prop_assert_eq!(url.host_str(), base_url.host_str());
            prop_assert_eq!(url.port_or_known_default(), base_url.port_or_known_default());
            let prefix = format!("{}/", base_url.path().trim_end_matches('/'));
            prop_assert!(url.path().starts_with(&prefix), "{} left {}", url, prefix);
            prop_assert!(url.username().is_empty() && url.password().is_none());
            for seg in decoded_segments(&url.path()[prefix.len()..]) {
                prop_assert!(seg != ".." && seg != ".", "{} holds a dot segment", url);
                prop_assert!(!seg.contains('/') && !seg.contains('\\'), "{} holds an encoded slash", url);
            }
        }

        /// Any text at all, too.
        #[test]
        fn fuzz_proxy_path_any_text(path in "\\PC{0,100}", query in proptest::option::of("\\PC{0,40}")) {
            if let Ok(p) = check_path(&path) {
                prop_assert!(!p.starts_with('/') && !p.split('/').any(|s| s == ".." || s == "."));
                if let Ok(url) = join(BASES[0], &p, query.as_deref()) {
                    prop_assert_eq!(url.host_str(), Some("start.exactonline.nl"));
                    prop_assert!(url.path().starts_with("/api/"));
                }
            }
        }
    }
}
