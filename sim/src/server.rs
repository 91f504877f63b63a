//! State, rules and HTTP handlers of the simulator.

// Handlers return ready `Response`s as their error values; boxing them would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tower::Service;

use crate::faults::{Fault, FaultRates, FaultUntil};
use crate::{
    ChainStats, ExpiredRefreshAnswer, RefreshGrace, SimApp, SimClock, SimConfig, SimStats, SimUser, odata, totp,
};

// Exact Online's real sign-in (start page + Azure AD B2C host): its own module, wired in below.
mod sign_in_flow;
pub(crate) use sign_in_flow::serve_b2c;

/// (client_id, user_id)
type ChainKey = (String, String);

/// Login sessions older than this (sim clock) are gone.
const LOGIN_SESSION_LIFETIME_MS: i64 = 3600 * 1000;

pub(crate) struct Shared {
    pub(crate) inner: Mutex<Inner>,
    pub(crate) clock: SimClock,
    /// `http://127.0.0.1:PORT`: the start of the absolute links the API writes (`__next`, `__metadata.uri`).
    pub(crate) base_url: String,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock must not take every later test down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Stage {
    Credentials,
    Totp { user_id: String },
    Consent { user_id: String },
}

struct LoginSession {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: Option<(String, String)>, // (challenge, method)
    stage: Stage,
    created_ms: i64,
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    user_id: String,
    code_challenge: Option<(String, String)>,
    expires_ms: i64,
    used: bool,
}

#[derive(Default)]
struct Chain {
    active_refresh: Option<String>,
    refresh_issued_ms: i64,
    activated: bool,
    last_access_issued_ms: Option<i64>,
    /// Earlier refresh tokens still usable in their grace ([`RefreshGrace`]), with the time each was superseded.
    previous: Vec<(String, i64)>,
}

/// At most this many earlier refresh tokens of one chain are kept in grace (oldest dropped first, to dead).
const MAX_GRACE_TOKENS: usize = 8;

struct AccessGrant {
    key: ChainKey,
    expires_ms: i64,
    refresh_token: String,
}

#[derive(Default)]
struct Window {
    minute_start: i64,
    minute_count: u32,
    day_start: i64,
    day_count: u32,
}

pub(crate) struct Inner {
    apps: HashMap<String, SimApp>,
    users: Vec<SimUser>,
    access_token_lifetime: Duration,
    min_token_interval: Duration,
    refresh_token_idle_expiry: Duration,
    code_lifetime: Duration,
    pub(crate) require_activation: bool,
    pub(crate) token_latency: Duration,
    minutely_limit: u32,
    daily_limit: u32,
    pub(crate) expired_refresh_answer: ExpiredRefreshAnswer,
    grace_default: RefreshGrace,
    grace_per_app: HashMap<String, RefreshGrace>,
    sessions: HashMap<String, LoginSession>,
    codes: HashMap<String, CodeGrant>,
    consents: HashSet<ChainKey>,
    chains: HashMap<ChainKey, Chain>,
    refresh_active: HashMap<String, ChainKey>,
    refresh_dead: HashMap<String, ChainKey>,
    /// Refresh tokens in grace → their chain (see `Chain::previous`).
    refresh_grace: HashMap<String, ChainKey>,
    access: HashMap<String, AccessGrant>,
    windows: HashMap<(String, i64), Window>,
    pub(crate) faults: VecDeque<Fault>,
    pub(crate) fault_span: Option<(FaultUntil, Fault)>,
    pub(crate) fault_rates: Option<FaultRates>,
    /// Token requests seen per draw key (chain), for [`FaultRates::draw`].
    draws: HashMap<String, u64>,
    pub(crate) data: odata::Data,
    pub(crate) stats: SimStats,
    pub(crate) sign_in: sign_in_flow::State,
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    STANDARD.encode(b)
}

fn random_id() -> String {
    let mut b = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn dur_ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn chain_id(key: &ChainKey) -> String {
    format!("{}#{}", key.0, key.1)
}

impl Inner {
    pub(crate) fn new(c: SimConfig) -> anyhow::Result<Inner> {
        for u in &c.users {
            if let Some(s) = &u.totp_secret_base32 {
                anyhow::ensure!(totp::base32_decode(s).is_some(), "user {}: totp secret is not base32", u.username);
            }
        }
        Ok(Inner {
            apps: c.apps.into_iter().map(|a| (a.client_id.clone(), a)).collect(),
            users: c.users,
            access_token_lifetime: c.access_token_lifetime,
            min_token_interval: c.min_token_interval,
            refresh_token_idle_expiry: c.refresh_token_idle_expiry,
            code_lifetime: c.code_lifetime,
            require_activation: c.require_activation,
            token_latency: c.token_latency,
            minutely_limit: c.minutely_limit,
            daily_limit: c.daily_limit,
            expired_refresh_answer: c.expired_refresh_answer,
            grace_default: c.refresh_grace,
            grace_per_app: HashMap::new(),
            sessions: HashMap::new(),
            codes: HashMap::new(),
            consents: HashSet::new(),
            chains: HashMap::new(),
            refresh_active: HashMap::new(),
            refresh_dead: HashMap::new(),
            refresh_grace: HashMap::new(),
            access: HashMap::new(),
            windows: HashMap::new(),
            faults: VecDeque::new(),
            fault_span: None,
            fault_rates: None,
            draws: HashMap::new(),
            data: odata::Data::new(c.dataset),
            stats: SimStats::default(),
            sign_in: sign_in_flow::State::new(c.sign_in, c.sign_in_behaviours),
        })
    }

    fn chain_stats(&mut self, key: &ChainKey) -> &mut ChainStats {
        self.stats.per_chain.entry(chain_id(key)).or_default()
    }

    fn user_by_name(&self, username: &str) -> Option<&SimUser> {
        self.users.iter().find(|u| u.username.eq_ignore_ascii_case(username))
    }

    fn user_by_id(&self, user_id: &str) -> Option<&SimUser> {
        self.users.iter().find(|u| u.user_id.eq_ignore_ascii_case(user_id))
    }

    pub(crate) fn totp_for(&self, username: &str, now_ms: i64) -> Option<String> {
        let secret = self.user_by_name(username)?.totp_secret_base32.as_deref()?;
        Some(totp::totp(&totp::base32_decode(secret)?, now_ms.div_euclid(1000), 6))
    }

    pub(crate) fn set_password(&mut self, username: &str, password: &str) {
        if let Some(u) = self.users.iter_mut().find(|u| u.username.eq_ignore_ascii_case(username)) {
            u.password = password.to_string();
        }
    }

    pub(crate) fn revoke(&mut self, client_id: &str, user_id: &str) {
        let key = (client_id.to_string(), user_id.to_string());
        self.consents.remove(&key);
        self.end_grace(&key);
        if let Some(chain) = self.chains.get_mut(&key)
            && let Some(old) = chain.active_refresh.take()
        {
            self.refresh_active.remove(&old);
            self.refresh_dead.insert(old, key.clone());
        }
        self.access.retain(|_, a| a.key != key);
    }

    pub(crate) fn set_refresh_grace(&mut self, client_id: Option<&str>, grace: RefreshGrace) {
        match client_id {
            Some(c) => {
                self.grace_per_app.insert(c.to_string(), grace);
            }
            None => {
                self.grace_default = grace;
                self.grace_per_app.clear();
            }
        }
    }

    fn grace_of(&self, client_id: &str) -> RefreshGrace {
        self.grace_per_app.get(client_id).copied().unwrap_or(self.grace_default)
    }

    /// Whether a token superseded at `since` is still inside the app's grace at `now` (the "new pair used" end
    /// is applied eagerly by [`Inner::end_grace`]; this checks the optional time cap).
    fn grace_alive(&self, client_id: &str, since: i64, now: i64) -> bool {
        match self.grace_of(client_id) {
            RefreshGrace::Off => false,
            RefreshGrace::UntilNewPairUsed { max: None } => true,
            RefreshGrace::UntilNewPairUsed { max: Some(m) } => now - since <= dur_ms(m),
        }
    }

    /// The new pair was used (or the chain was re-authorized or revoked): every earlier token of the chain dies.
    fn end_grace(&mut self, key: &ChainKey) {
        let Some(chain) = self.chains.get_mut(key) else { return };
        if chain.previous.is_empty() {
            return;
        }
        for (t, _) in chain.previous.drain(..) {
            self.refresh_grace.remove(&t);
            self.refresh_dead.insert(t, key.clone());
        }
        self.stats.graces_closed += 1;
    }

    pub(crate) fn grace_refresh_tokens(&self, client_id: &str, user_id: &str, now: i64) -> Vec<String> {
        let Some(chain) = self.chains.get(&(client_id.to_string(), user_id.to_string())) else { return Vec::new() };
        chain
            .previous
            .iter()
            .filter(|(_, since)| self.grace_alive(client_id, *since, now))
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub(crate) fn dataset_ids(&mut self, division: i64, entity_set: &str) -> Vec<String> {
        self.data.ids(division, entity_set)
    }

    /// The fault for this token request, if any: queue, then span, then rates (see [`crate::faults`]).
    fn next_token_fault(&mut self, form: &HashMap<String, String>, now: i64) -> Option<Fault> {
        if let Some(f) = self.faults.pop_front() {
            return Some(f);
        }
        if let Some((until, f)) = &self.fault_span {
            let live = match until {
                FaultUntil::SimMs(ms) => now < *ms,
                FaultUntil::Real(t) => std::time::Instant::now() < *t,
            };
            if live {
                return Some(f.clone());
            }
            self.fault_span = None;
        }
        let rates = self.fault_rates.as_ref()?;
        let key = self.draw_key(form);
        let n = self.draws.entry(key.clone()).or_insert(0);
        let draw = rates.draw(&key, *n);
        *n += 1;
        draw
    }

    /// The chain a token request belongs to, by its refresh token or code (or the token itself when unknown).
    fn draw_key(&self, form: &HashMap<String, String>) -> String {
        let by_refresh = form.get("refresh_token").map(|rt| {
            self.refresh_active
                .get(rt)
                .or_else(|| self.refresh_grace.get(rt))
                .or_else(|| self.refresh_dead.get(rt))
                .map(chain_id)
                .unwrap_or_else(|| rt.clone())
        });
        let by_code = || {
            form.get("code").map(|c| {
                self.codes.get(c).map(|g| format!("{}#{}", g.client_id, g.user_id)).unwrap_or_else(|| c.clone())
            })
        };
        by_refresh.or_else(by_code).unwrap_or_default()
    }

    pub(crate) fn active_refresh_token(&self, client_id: &str, user_id: &str) -> Option<String> {
        self.chains.get(&(client_id.to_string(), user_id.to_string())).and_then(|c| c.active_refresh.clone())
    }

    pub(crate) fn active_refresh_token_count(&self, client_id: &str, user_id: &str) -> usize {
        let key = (client_id.to_string(), user_id.to_string());
        // Count from the index (not the chain) so that a bookkeeping bug would show as 2.
        self.refresh_active.values().filter(|k| **k == key).count()
    }

    /// Benchmarks: a user (created if unknown) with a fresh token pair, as if they had just authorized.
    pub(crate) fn mint(&mut self, client_id: &str, user_id: &str, now: i64) -> (String, String) {
        if self.user_by_id(user_id).is_none() {
            self.users.push(SimUser {
                user_id: user_id.to_string(),
                username: user_id.to_string(),
                password: random_b64(12),
                totp_secret_base32: None,
                full_name: user_id.to_string(),
                division: crate::DEFAULT_DIVISION,
            });
        }
        let key: ChainKey = (client_id.to_string(), user_id.to_string());
        self.consents.insert(key.clone());
        self.issue(&key, now, false)
    }

    /// Issues a new access + refresh token for the chain, killing its earlier refresh token.
    fn issue(&mut self, key: &ChainKey, now: i64, from_refresh: bool) -> (String, String) {
        let access = format!("stampNL001.{}", random_b64(96));
        let refresh = format!("Gcp!IAAAA{}", random_b64(96));
        let grace = from_refresh && self.grace_of(&key.0) != RefreshGrace::Off;
        if !from_refresh {
            // A new authorization invalidates every earlier refresh token at once, grace or not.
            self.end_grace(key);
        }
        let chain = self.chains.entry(key.clone()).or_default();
        if let Some(old) = chain.active_refresh.replace(refresh.clone()) {
            self.refresh_active.remove(&old);
            if grace {
                chain.previous.push((old.clone(), now));
                self.refresh_grace.insert(old, key.clone());
                while chain.previous.len() > MAX_GRACE_TOKENS {
                    let (t, _) = chain.previous.remove(0);
                    self.refresh_grace.remove(&t);
                    self.refresh_dead.insert(t, key.clone());
                }
            } else {
                self.refresh_dead.insert(old, key.clone());
            }
        }
        chain.refresh_issued_ms = now;
        chain.activated = !from_refresh;
        chain.last_access_issued_ms = Some(now);
        self.refresh_active.insert(refresh.clone(), key.clone());
        if self.access.len() > 20_000 {
            self.access.retain(|_, a| a.expires_ms > now);
        }
        self.access.insert(
            access.clone(),
            AccessGrant {
                key: key.clone(),
                expires_ms: now + dur_ms(self.access_token_lifetime),
                refresh_token: refresh.clone(),
            },
        );
        self.stats.tokens_issued += 1;
        self.chain_stats(key).tokens_issued += 1;
        (access, refresh)
    }

    fn token_success(&mut self, key: &ChainKey, now: i64, from_refresh: bool) -> Response {
        let (access, refresh) = self.issue(key, now, from_refresh);
        let body = json!({
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.access_token_lifetime.as_secs().to_string(),
            "refresh_token": refresh,
        });
        json_response(StatusCode::OK, body)
    }

    fn invalid_grant(&mut self, key: Option<&ChainKey>, description: &str) -> Response {
        self.stats.invalid_grant += 1;
        if let Some(k) = key {
            self.chain_stats(k).invalid_grant += 1;
        }
        oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// The token endpoint's rules. Runs entirely under the lock: concurrent requests are serialised.
    fn process_token(&mut self, headers: &HeaderMap, form: &HashMap<String, String>, now: i64) -> Response {
        // --- client authentication: HTTP Basic or client_id/client_secret in the body
        let basic = basic_credentials(headers);
        let used_basic = basic.is_some();
        let (client_id, client_secret) = match basic {
            Some(p) => p,
            None => (
                form.get("client_id").cloned().unwrap_or_default(),
                form.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        let authenticated = self.apps.get(&client_id).is_some_and(|a| a.client_secret == client_secret);
        if !authenticated {
            self.stats.invalid_client += 1;
            let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed.");
            if used_basic {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Exact Online\""));
            }
            return r;
        }

        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => self.grant_code(&client_id, form, now),
            Some("refresh_token") => self.grant_refresh(&client_id, form, now),
            Some(_) => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Unsupported grant_type."),
            None => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is missing."),
        }
    }

    fn grant_code(&mut self, client_id: &str, form: &HashMap<String, String>, now: i64) -> Response {
        let Some(code) = form.get("code") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "code is missing.");
        };
        let Some(g) = self.codes.get(code) else {
            return self.invalid_grant(None, "Invalid authorization code.");
        };
        let key = (g.client_id.clone(), g.user_id.clone());
        if g.client_id != client_id {
            return self.invalid_grant(None, "Authorization code was issued to another client.");
        }
        let problem: Option<&str> = if g.used {
            Some("Authorization code already used.")
        } else if now > g.expires_ms {
            Some("Authorization code expired.")
        } else if form.get("redirect_uri") != Some(&g.redirect_uri) {
            Some("redirect_uri does not match the authorization request.")
        } else if let Some((challenge, method)) = &g.code_challenge {
            match form.get("code_verifier") {
                None => Some("code_verifier is missing."),
                Some(verifier) => {
                    let computed = if method == "S256" {
                        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
                    } else {
                        verifier.clone()
                    };
                    (&computed != challenge).then_some("PKCE verification failed: code_verifier does not match.")
                }
            }
        } else {
            None
        };
        self.chain_stats(&key).code_requests += 1;
        if let Some(p) = problem {
            return self.invalid_grant(Some(&key), p);
        }
        if let Some(g) = self.codes.get_mut(code) {
            g.used = true;
        }
        // A new authorization kills every earlier refresh token of (client, user).
        self.token_success(&key, now, false)
    }

    fn grant_refresh(&mut self, client_id: &str, form: &HashMap<String, String>, now: i64) -> Response {
        let Some(rt) = form.get("refresh_token") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is missing.");
        };
        // A token in grace that outlived the app's time cap is dead like any other old token.
        if let Some(key) = self.refresh_grace.get(rt).cloned() {
            let since = self.chains.get(&key).and_then(|c| c.previous.iter().find(|(t, _)| t == rt).map(|(_, s)| *s));
            if !since.is_some_and(|s| self.grace_alive(&key.0, s, now)) {
                if let Some(c) = self.chains.get_mut(&key) {
                    c.previous.retain(|(t, _)| t != rt);
                }
                self.refresh_grace.remove(rt);
                self.refresh_dead.insert(rt.clone(), key);
            }
        }
        if let Some(key) = self.refresh_dead.get(rt).cloned() {
            self.chain_stats(&key).refresh_requests += 1;
            self.stats.old_refresh_token_used += 1;
            self.chain_stats(&key).old_refresh_token_used += 1;
            return self.invalid_grant(Some(&key), "Old refresh token used.");
        }
        let in_grace = self.refresh_grace.get(rt).cloned();
        let Some(key) = self.refresh_active.get(rt).cloned().or(in_grace.clone()) else {
            return self.invalid_grant(None, "Invalid refresh token.");
        };
        self.chain_stats(&key).refresh_requests += 1;
        if key.0 != client_id {
            return self.invalid_grant(Some(&key), "Refresh token was issued to another client.");
        }
        let (issued, activated, last) = {
            let c = &self.chains[&key];
            (c.refresh_issued_ms, c.activated, c.last_access_issued_ms)
        };
        if in_grace.is_none() && now - issued > dur_ms(self.refresh_token_idle_expiry) {
            if self.expired_refresh_answer == ExpiredRefreshAnswer::InvalidGrant {
                return self.invalid_grant(Some(&key), "Refresh token expired");
            }
            // Exact's words for an expired refresh token (websmurf/laravel-exact-online issue #23): an
            // `invalid_request`, not an `invalid_grant`, with both times in .NET's US format.
            let desc = format!(
                "The refresh token expired at {} and it is now {}.",
                dotnet_time(issued + dur_ms(self.refresh_token_idle_expiry)),
                dotnet_time(now)
            );
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &desc);
        }
        if in_grace.is_none() && self.require_activation && !activated {
            return self.invalid_grant(Some(&key), "Refresh token not activated");
        }
        if let Some(last) = last
            && now - last < dur_ms(self.min_token_interval)
        {
            self.stats.rate_limited += 1;
            self.chain_stats(&key).rate_limited += 1;
            let mut r =
                oauth_error(StatusCode::BAD_REQUEST, "access_denied", "Rate limit exceeded: access_token not expired");
            r.headers_mut().insert("Reason", HeaderValue::from_static("TooEarlyToRefreshTokens"));
            return r;
        }
        if in_grace.is_some() {
            self.stats.grace_refreshes += 1;
            self.chain_stats(&key).grace_refreshes += 1;
        } else {
            // "retrieval of an access token" with the newest refresh token: the earlier ones' grace ends.
            self.end_grace(&key);
        }
        self.stats.refreshes_succeeded += 1;
        self.token_success(&key, now, true)
    }

    /// Bearer check for API calls; counts the call and activates the chain's refresh token.
    fn authenticate_api(&mut self, headers: &HeaderMap, now: i64) -> Result<(ChainKey, SimUser), Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let unauthorized = |msg: &str| {
            let mut r = json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"code": "", "message": {"lang": "", "value": msg}}}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"Exact Online\", error=\"invalid_token\""),
            );
            r
        };
        let Some(token) = token else {
            return Err(unauthorized("Authorization header with a bearer token is required."));
        };
        let Some(grant) = self.access.get(token) else {
            return Err(unauthorized("Invalid access token."));
        };
        if now >= grant.expires_ms {
            return Err(unauthorized("Access token expired."));
        }
        let key = grant.key.clone();
        let rt = grant.refresh_token.clone();
        let Some(user) = self.user_by_id(&key.1).cloned() else {
            return Err(unauthorized("Unknown user."));
        };
        self.stats.api_calls += 1;
        if let Some(chain) = self.chains.get_mut(&key)
            && chain.active_refresh.as_deref() == Some(rt.as_str())
        {
            chain.activated = true;
            // The newest pair was used for an API call: the earlier refresh tokens' grace ends.
            self.end_grace(&key);
        }
        Ok((key, user))
    }

    /// Counts an API call against the minutely and daily limits of (client, division); returns the
    /// rate headers and whether the call is allowed.
    ///
    /// Exact's "API limits" article (`All-All-DNO-Simulation-gen-apilimits`, read from a public copy): 60 calls
    /// per company per minute and 5,000 per company per day, per app; "If you make 60 calls between 10:00:00 and
    /// 10:00:40, any additional requests will be rejected for the next 20 seconds until 10:01:00" (fixed windows
    /// on the clock's minute); rejected with "HTTP 429 (Too Many Requests)"; every response to a call with a
    /// division in the URL carries `X-RateLimit-Minutely-Limit/-Remaining` and `X-RateLimit-Limit/-Remaining/
    /// -Reset` ("UTC epoch milliseconds"); URLs without a division (`current/Me`) do not count. The minutely
    /// reset header is epoch milliseconds too (picqer/exact-php-client `Connection::getMinutelyLimitReset`:
    /// "the time at which the minutely rate limit window resets in UTC epoch milliseconds"). The daily window
    /// here is the UTC day (Exact says "the start of the following day", without a zone). No `Retry-After` on
    /// the 429: none is documented; clients wait for the reset header. Rejected calls do not count.
    fn rate_window(&mut self, client_id: &str, division: i64, now: i64) -> (Vec<(&'static str, String)>, bool) {
        let minutely = self.minutely_limit;
        let daily = self.daily_limit;
        let w = self.windows.entry((client_id.to_string(), division)).or_default();
        let minute_start = now - now.rem_euclid(60_000);
        let day_start = now - now.rem_euclid(86_400_000);
        if w.minute_start != minute_start {
            w.minute_start = minute_start;
            w.minute_count = 0;
        }
        if w.day_start != day_start {
            w.day_start = day_start;
            w.day_count = 0;
        }
        let day_exhausted = w.day_count >= daily;
        let allowed = w.minute_count < minutely && !day_exhausted;
        if allowed {
            w.minute_count += 1;
            w.day_count += 1;
        }
        let headers = vec![
            ("X-RateLimit-Limit", daily.to_string()),
            ("X-RateLimit-Remaining", daily.saturating_sub(w.day_count).to_string()),
            ("X-RateLimit-Reset", (day_start + 86_400_000).to_string()),
            ("X-RateLimit-Minutely-Limit", minutely.to_string()),
            ("X-RateLimit-Minutely-Remaining", minutely.saturating_sub(w.minute_count).to_string()),
            ("X-RateLimit-Minutely-Reset", (minute_start + 60_000).to_string()),
        ];
        if !allowed {
            self.stats.api_rate_limited += 1;
            if day_exhausted {
                self.stats.api_daily_limited += 1;
            }
        }
        (headers, allowed)
    }
}

// ---------------------------------------------------------------- helpers

/// `M/d/yyyy h:mm:ss tt`, .NET's US format of a UTC time, as Exact writes times into its error texts.
fn dotnet_time(ms: i64) -> String {
    let iso = odata::iso(ms); // yyyy-mm-ddThh:mm:ssZ
    let num = |a: usize, b: usize| iso[a..b].parse::<u32>().unwrap_or(0);
    let (y, mo, d, h, mi, sec) = (num(0, 4), num(5, 7), num(8, 10), num(11, 13), num(14, 16), num(17, 19));
    let (h12, ampm) = match h {
        0 => (12, "AM"),
        1..=11 => (h, "AM"),
        12 => (12, "PM"),
        _ => (h - 12, "PM"),
    };
    format!("{mo}/{d}/{y} {h12}:{mi:02}:{sec:02} {ampm}")
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(status, json!({"error": error, "error_description": description}))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('&', "%26").replace('=', "%3D")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(rest.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    Some((percent_decode(id), percent_decode(secret)))
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} | Exact Online</title></head>\n<body>\n<h1>Exact Online</h1>\n{}\n</body></html>\n",
        html_escape(title),
        body
    );
    let mut r = (status, Html(html)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error_page(msg: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Error",
        &format!("<div class=\"error\" id=\"ErrorMessage\">{}</div>", html_escape(msg)),
    )
}

fn error_div(error: Option<&str>) -> String {
    error.map(|e| format!("<div class=\"error\" id=\"ErrorMessage\">{}</div>\n", html_escape(e))).unwrap_or_default()
}

fn login_page(session_id: &str, action: &str, error: Option<&str>, username: &str) -> Response {
    page(
        StatusCode::OK,
        "Log in",
        &format!(
            "{err}<form method=\"post\" action=\"{action}\" id=\"LoginForm\">\n\
             <input type=\"hidden\" name=\"LoginSessionId\" value=\"{sid}\">\n\
             <label for=\"UserName\">Username</label> <input type=\"text\" id=\"UserName\" name=\"UserName\" value=\"{user}\" autocomplete=\"username\">\n\
             <label for=\"Password\">Password</label> <input type=\"password\" id=\"Password\" name=\"Password\" autocomplete=\"current-password\">\n\
             <input type=\"submit\" name=\"LoginButton\" value=\"Log in\">\n</form>",
            err = error_div(error),
            action = html_escape(action),
            sid = html_escape(session_id),
            user = html_escape(username),
        ),
    )
}

fn totp_page(session_id: &str, action: &str, error: Option<&str>) -> Response {
    page(
        StatusCode::OK,
        "Two-step verification",
        &format!(
            "{err}<p>Enter the verification code from your authenticator app.</p>\n\
             <form method=\"post\" action=\"{action}\" id=\"TotpForm\">\n\
             <input type=\"hidden\" name=\"LoginSessionId\" value=\"{sid}\">\n\
             <label for=\"Code\">Verification code</label> <input type=\"text\" id=\"Code\" name=\"Code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" maxlength=\"6\">\n\
             <input type=\"submit\" name=\"VerifyButton\" value=\"Verify\">\n</form>",
            err = error_div(error),
            action = html_escape(action),
            sid = html_escape(session_id),
        ),
    )
}

fn consent_page(session_id: &str, action: &str, client_id: &str, full_name: &str) -> Response {
    page(
        StatusCode::OK,
        "Grant access",
        &format!(
            "<p>The app <b>{client}</b> asks for access to Exact Online on behalf of {name}.</p>\n\
             <form method=\"post\" action=\"{action}\" id=\"ConsentForm\">\n\
             <input type=\"hidden\" name=\"LoginSessionId\" value=\"{sid}\">\n\
             <button type=\"submit\" name=\"Allow\" value=\"yes\">Allow</button>\n\
             <button type=\"submit\" name=\"Allow\" value=\"no\">Deny</button>\n</form>",
            client = html_escape(client_id),
            name = html_escape(full_name),
            action = html_escape(action),
            sid = html_escape(session_id),
        ),
    )
}

fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut r = StatusCode::FOUND.into_response();
            r.headers_mut().insert(header::LOCATION, v);
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(_) => error_page("Invalid redirect URI."),
    }
}

/// `{redirect_uri}?…&key=value…` (appended to any query the URI already has).
fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    match url::Url::parse(redirect_uri) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            redirect(u.as_str())
        }
        Err(_) => error_page("Invalid redirect URI."),
    }
}

// ---------------------------------------------------------------- authorize (HTML)

const AUTH_PATH: &str = "/api/oauth2/auth";

async fn authorize_get(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let now = s.clock.now_ms();
    let mut g = s.lock();
    let client_id = q.get("client_id").cloned().unwrap_or_default();
    let Some(app) = g.apps.get(&client_id) else {
        return error_page("Unknown client_id.");
    };
    let Some(redirect_uri) = q.get("redirect_uri").cloned() else {
        return error_page("redirect_uri is missing.");
    };
    if !app.redirect_uris.contains(&redirect_uri) {
        return error_page("The redirect_uri is not registered for this client.");
    }
    let state = q.get("state").cloned();
    let mut params: Vec<(&str, &str)> = Vec::new();
    if q.get("response_type").map(String::as_str) != Some("code") {
        params.push(("error", "unsupported_response_type"));
        if let Some(st) = &state {
            params.push(("state", st));
        }
        return redirect_with(&redirect_uri, &params);
    }
    let code_challenge = match q.get("code_challenge") {
        None => None,
        Some(ch) => {
            let method = q.get("code_challenge_method").cloned().unwrap_or_else(|| "plain".into());
            if method != "S256" && method != "plain" {
                params.push(("error", "invalid_request"));
                params.push(("error_description", "Unsupported code_challenge_method."));
                if let Some(st) = &state {
                    params.push(("state", st));
                }
                return redirect_with(&redirect_uri, &params);
            }
            Some((ch.clone(), method))
        }
    };
    if g.sign_in.mode == crate::SignIn::AzureB2c {
        let force_login = q.get("force_login").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        let req = sign_in_flow::AuthorizeRequest {
            client_id,
            redirect_uri,
            state,
            code_challenge,
            force_login,
            uri,
            headers,
        };
        return sign_in_flow::authorize(&mut g, req, now);
    }
    // force_login is accepted: the sim has no single sign-on, every authorization shows the login page.
    g.sessions.retain(|_, ls| now - ls.created_ms < LOGIN_SESSION_LIFETIME_MS);
    let sid = random_id();
    g.sessions.insert(
        sid.clone(),
        LoginSession { client_id, redirect_uri, state, code_challenge, stage: Stage::Credentials, created_ms: now },
    );
    login_page(&sid, AUTH_PATH, None, "")
}

async fn authorize_post(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let now = s.clock.now_ms();
    let form = parse_form(&body);
    let mut g = s.lock();
    let g = &mut *g;
    let sid = form.get("LoginSessionId").cloned().unwrap_or_default();
    let Some(ls) = g.sessions.get_mut(&sid) else {
        return error_page("Your login session has expired. Start the authorization again.");
    };
    if now - ls.created_ms >= LOGIN_SESSION_LIFETIME_MS {
        g.sessions.remove(&sid);
        return error_page("Your login session has expired. Start the authorization again.");
    }
    let user_id = match &ls.stage {
        Stage::Credentials => {
            let username = form.get("UserName").cloned().unwrap_or_default();
            let password = form.get("Password").cloned().unwrap_or_default();
            let user = g.users.iter().find(|u| u.username.eq_ignore_ascii_case(&username) && u.password == password);
            let Some(user) = user else {
                return login_page(&sid, AUTH_PATH, Some("The user name or password is incorrect."), &username);
            };
            if user.totp_secret_base32.is_some() {
                ls.stage = Stage::Totp { user_id: user.user_id.clone() };
                return totp_page(&sid, AUTH_PATH, None);
            }
            user.user_id.clone()
        }
        Stage::Totp { user_id } => {
            let user_id = user_id.clone();
            let secret = g
                .users
                .iter()
                .find(|u| u.user_id == user_id)
                .and_then(|u| u.totp_secret_base32.as_deref())
                .and_then(totp::base32_decode);
            let code = form.get("Code").map(String::as_str).unwrap_or("");
            let ok = secret.is_some_and(|sec| totp::verify(&sec, now.div_euclid(1000), code));
            if !ok {
                return totp_page(&sid, AUTH_PATH, Some("The verification code is incorrect."));
            }
            user_id
        }
        Stage::Consent { user_id } => {
            let user_id = user_id.clone();
            match form.get("Allow").map(String::as_str) {
                Some("yes") => {
                    g.consents.insert((ls.client_id.clone(), user_id.clone()));
                    user_id
                }
                Some(_) => {
                    let ls = g.sessions.remove(&sid).expect("session present");
                    let mut params = vec![("error", "access_denied")];
                    if let Some(st) = &ls.state {
                        params.push(("state", st));
                    }
                    return redirect_with(&ls.redirect_uri, &params);
                }
                None => {
                    let name = g.users.iter().find(|u| u.user_id == user_id).map(|u| u.full_name.clone());
                    return consent_page(&sid, AUTH_PATH, &ls.client_id, &name.unwrap_or_default());
                }
            }
        }
    };
    // Authenticated: consent (unless given before), then the code.
    let key = (ls.client_id.clone(), user_id.clone());
    if !g.consents.contains(&key) {
        ls.stage = Stage::Consent { user_id: user_id.clone() };
        let name = g.users.iter().find(|u| u.user_id == user_id).map(|u| u.full_name.clone());
        return consent_page(&sid, AUTH_PATH, &ls.client_id, &name.unwrap_or_default());
    }
    let ls = g.sessions.remove(&sid).expect("session present");
    let code = format!("stampNL001.!IAAAA{}", random_b64(48));
    g.codes.retain(|_, c| now <= c.expires_ms);
    g.codes.insert(
        code.clone(),
        CodeGrant {
            client_id: ls.client_id,
            redirect_uri: ls.redirect_uri.clone(),
            user_id,
            code_challenge: ls.code_challenge,
            expires_ms: now + dur_ms(g.code_lifetime),
            used: false,
        },
    );
    let mut params = vec![("code", code.as_str())];
    if let Some(st) = &ls.state {
        params.push(("state", st));
    }
    redirect_with(&ls.redirect_uri, &params)
}

// ---------------------------------------------------------------- token endpoint

/// Put into every request's extensions by the connection loop: [`ConnKill::close`] drops the connection
/// without a response (FIN), [`ConnKill::reset`] aborts it (RST).
#[derive(Clone)]
struct ConnKill {
    notify: Arc<Notify>,
    reset: Arc<AtomicBool>,
}

impl ConnKill {
    fn close(&self) {
        self.notify.notify_one();
    }
    fn reset(&self) {
        self.reset.store(true, AtomicOrdering::SeqCst);
        self.notify.notify_one();
    }
}

enum Delivery {
    Send,
    /// Send after this long (real time), if the client still waits.
    Delay(Duration),
    /// Close without a response after holding the connection this long.
    Lose(Duration),
    /// Abort the connection (TCP RST) without a response.
    Reset,
}

fn html_status(status: StatusCode, title: &str) -> Response {
    let mut r = (
        status,
        Html(format!(
            "<html><body><h1>{} {title}</h1><p>The service is temporarily unavailable.</p></body></html>",
            status.as_u16()
        )),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

async fn token(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let kill = req.extensions().get::<ConnKill>().cloned();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Unreadable body.");
        }
    };
    // The work runs in its own task: once started it completes even if the client goes away
    // (as a real server would), which keeps the rotation rules deterministic.
    let task = tokio::spawn(async move {
        let form = parse_form(&body);
        let (fault, latency) = {
            let now = s.clock.now_ms();
            let mut g = s.lock();
            g.stats.token_requests += 1;
            match form.get("grant_type").map(String::as_str) {
                Some("refresh_token") => g.stats.refresh_requests += 1,
                Some("authorization_code") => g.stats.code_requests += 1,
                _ => {}
            }
            let fault = g.next_token_fault(&form, now);
            if let Some(f) = &fault {
                g.stats.faults_injected += 1;
                *g.stats.faults_by_kind.entry(f.kind().to_string()).or_default() += 1;
                let key = g.draw_key(&form);
                if let Some(per) = g.stats.per_chain.get_mut(&key) {
                    per.faults_injected += 1;
                }
            }
            (fault, g.token_latency)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let delivery = match fault {
            Some(Fault::ServiceUnavailable) => {
                return (html_status(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"), Delivery::Send);
            }
            Some(Fault::BadGateway) => return (html_status(StatusCode::BAD_GATEWAY, "Bad Gateway"), Delivery::Send),
            Some(Fault::GatewayTimeout) => {
                return (html_status(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout"), Delivery::Send);
            }
            Some(Fault::TooManyRequests { retry_after_s }) => {
                let mut r = json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": {"code": "", "message": {"lang": "", "value": "Too many requests."}}}),
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
                return (r, Delivery::Send);
            }
            Some(Fault::ResetBeforeRead) => return (StatusCode::OK.into_response(), Delivery::Reset),
            Some(Fault::Hang(d)) => {
                tokio::time::sleep(d).await;
                Delivery::Send
            }
            Some(Fault::SlowAnswer(d)) => Delivery::Delay(d),
            Some(Fault::LoseResponse) => Delivery::Lose(Duration::ZERO),
            Some(Fault::LoseResponseAfter(d)) => Delivery::Lose(d),
            Some(Fault::ResetAfterProcessing) => Delivery::Reset,
            None => Delivery::Send,
        };
        let now = s.clock.now_ms();
        let mut g = s.lock();
        let r = g.process_token(&headers, &form, now);
        if matches!(delivery, Delivery::Lose(_) | Delivery::Reset) {
            g.stats.lost_responses += 1;
        }
        (r, delivery)
    });
    let (resp, delivery) = match task.await {
        Ok(v) => v,
        Err(_) => {
            return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "Internal error.");
        }
    };
    match delivery {
        Delivery::Send => resp,
        Delivery::Delay(d) => {
            tokio::time::sleep(d).await;
            resp
        }
        Delivery::Lose(hold) => {
            drop(resp);
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            if let Some(k) = kill {
                k.close();
            }
            std::future::pending::<Response>().await
        }
        Delivery::Reset => {
            drop(resp);
            if let Some(k) = kill {
                k.reset();
            }
            std::future::pending::<Response>().await
        }
    }
}

// ---------------------------------------------------------------- API

fn with_headers(mut r: Response, hs: Vec<(&'static str, String)>) -> Response {
    for (k, v) in hs {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

async fn me(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let now = s.clock.now_ms();
    let mut g = s.lock();
    let (_, user) = match g.authenticate_api(&headers, now) {
        Ok(v) => v,
        Err(r) => return r,
    };
    json_response(
        StatusCode::OK,
        json!({"d": {"results": [{
            "__metadata": {"uri": format!("/api/v1/current/Me(guid'{}')", user.user_id), "type": "Exact.Web.Api.System.Me"},
            "UserID": user.user_id,
            "UserName": user.username,
            "FullName": user.full_name,
            "CurrentDivision": user.division,
            "LanguageCode": "en-NL",
        }]}}),
    )
}

/// The `X-RateLimit-*` headers of one answer.
pub(crate) type RateHeaders = Vec<(&'static str, String)>;

/// Authenticates a data-endpoint call, checks the division and counts it against the limits; returns the
/// rate-limit headers for the answer and the division.
pub(crate) fn data_call(s: &Shared, headers: &HeaderMap, division: &str) -> Result<(RateHeaders, i64), Response> {
    let now = s.clock.now_ms();
    let mut g = s.lock();
    let (key, user) = g.authenticate_api(headers, now)?;
    let Ok(division) = division.parse::<i64>() else {
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "", "message": {"lang": "", "value": "Invalid division."}}}),
        ));
    };
    if division != user.division {
        return Err(json_response(
            StatusCode::FORBIDDEN,
            json!({"error": {"code": "", "message": {"lang": "", "value": "Forbidden: no access to this division."}}}),
        ));
    }
    let (hs, allowed) = g.rate_window(&key.0, division, now);
    if !allowed {
        let r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"code": "", "message": {"lang": "", "value": "API rate limit exceeded."}}}),
        );
        return Err(with_headers(r, hs));
    }
    Ok((hs, division))
}

async fn echo(
    State(s): State<Arc<Shared>>,
    Path((division, _rest)): Path<(String, String)>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hs = match data_call(&s, &headers, &division) {
        Ok((hs, _)) => hs,
        Err(r) => return r,
    };
    let mut hmap = serde_json::Map::new();
    for name in headers.keys() {
        let vals: Vec<String> =
            headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        hmap.insert(name.as_str().to_string(), Value::String(vals.join(", ")));
    }
    let query = uri.query().unwrap_or("").to_string();
    let query_params: Vec<Value> = url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| json!([k, v])).collect();
    let r = json_response(
        StatusCode::OK,
        json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": query,
            "query_params": query_params,
            "headers": hmap,
            "body": String::from_utf8_lossy(&body),
        }),
    );
    with_headers(r, hs)
}

// ---------------------------------------------------------------- /_sim control

type Q = Query<HashMap<String, String>>;

fn bad(msg: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({"error": msg}))
}

async fn sim_stats(State(s): State<Arc<Shared>>) -> Response {
    let st = s.lock().stats.clone();
    json_response(StatusCode::OK, serde_json::to_value(st).unwrap_or_default())
}

async fn sim_clock(State(s): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, json!({"now_ms": s.clock.now_ms(), "factor": s.clock.factor()}))
}

async fn sim_clock_advance(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let Some(ms) = q.get("ms").and_then(|v| v.parse::<u64>().ok()) else {
        return bad("ms (a non-negative integer) is required");
    };
    s.clock.advance(Duration::from_millis(ms));
    json_response(StatusCode::OK, json!({"now_ms": s.clock.now_ms()}))
}

async fn sim_clock_set(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let Some(ms) = q.get("ms").and_then(|v| v.parse::<i64>().ok()) else {
        return bad("ms (an integer) is required");
    };
    s.clock.set_ms(ms);
    json_response(StatusCode::OK, json!({"now_ms": s.clock.now_ms()}))
}

/// `POST /_sim/fault?kind=K[&n=N][&ms=MS][&retry_after_s=S][&for_sim_ms=MS | &for_real_ms=MS]`: the next N
/// token requests get the fault, or (with `for_sim_ms` / `for_real_ms`) every token request for that span of
/// simulated or real time. Kinds: the names of [`Fault::kind`] (`unavailable`, `bad_gateway`,
/// `gateway_timeout`, `too_many`, `lose` (`ms` > 0: `lose_after`), `hang`, `slow`, `reset_before_read`,
/// `reset_after_processing`) and `clear` (drops queue, span and rates).
async fn sim_fault(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let n = q.get("n").and_then(|v| v.parse::<u32>().ok()).unwrap_or(1);
    let ms = q.get("ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let fault = match q.get("kind").map(String::as_str) {
        Some("unavailable") => Fault::ServiceUnavailable,
        Some("bad_gateway") => Fault::BadGateway,
        Some("gateway_timeout") => Fault::GatewayTimeout,
        Some("too_many") => {
            let secs = q.get("retry_after_s").and_then(|v| v.parse().ok()).unwrap_or(30);
            Fault::TooManyRequests { retry_after_s: secs }
        }
        Some("lose") if ms == 0 => Fault::LoseResponse,
        Some("lose" | "lose_after") => Fault::LoseResponseAfter(Duration::from_millis(ms)),
        Some("hang") => Fault::Hang(Duration::from_millis(ms)),
        Some("slow") => Fault::SlowAnswer(Duration::from_millis(ms)),
        Some("reset_before_read") => Fault::ResetBeforeRead,
        Some("reset_after_processing") => Fault::ResetAfterProcessing,
        Some("clear") => {
            let mut g = s.lock();
            g.faults.clear();
            g.fault_span = None;
            g.fault_rates = None;
            return json_response(StatusCode::OK, json!({"pending": 0}));
        }
        _ => {
            return bad("kind must be unavailable|bad_gateway|gateway_timeout|too_many|lose|lose_after|hang|slow|\
                 reset_before_read|reset_after_processing|clear");
        }
    };
    let span = if let Some(v) = q.get("for_sim_ms") {
        let Ok(d) = v.parse::<i64>() else { return bad("for_sim_ms must be an integer") };
        Some(FaultUntil::SimMs(s.clock.now_ms() + d))
    } else if let Some(v) = q.get("for_real_ms") {
        let Ok(d) = v.parse::<u64>() else { return bad("for_real_ms must be a non-negative integer") };
        Some(FaultUntil::Real(std::time::Instant::now() + Duration::from_millis(d)))
    } else {
        None
    };
    let mut g = s.lock();
    if let Some(until) = span {
        g.fault_span = Some((until, fault));
        return json_response(StatusCode::OK, json!({"pending": g.faults.len(), "span": true}));
    }
    for _ in 0..n {
        g.faults.push_back(fault.clone());
    }
    json_response(StatusCode::OK, json!({"pending": g.faults.len()}))
}

/// `GET /_sim/fault/rates`: the current rates (`null` when none). `POST` with a JSON [`FaultRates`] body sets
/// them (an empty object clears them); a wrong body is a 400 that says why.
async fn sim_rates_get(State(s): State<Arc<Shared>>) -> Response {
    let r = s.lock().fault_rates.clone();
    json_response(StatusCode::OK, serde_json::to_value(r).unwrap_or_default())
}

async fn sim_rates_set(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let rates: FaultRates = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(&format!("the body must be a JSON object of fault rates: {e}")),
    };
    if let Err(e) = rates.validate() {
        return bad(&e);
    }
    let mut g = s.lock();
    g.fault_rates = (rates != FaultRates::default()).then_some(rates.clone());
    json_response(StatusCode::OK, serde_json::to_value(rates).unwrap_or_default())
}

/// `POST /_sim/grace?mode=off|on[&max_ms=MS][&client_id=C]`: the refresh-token grace of every app, or of one.
async fn sim_grace(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let max = match q.get("max_ms").map(|v| v.parse::<u64>()) {
        None => None,
        Some(Ok(ms)) => Some(Duration::from_millis(ms)),
        Some(Err(_)) => return bad("max_ms must be a non-negative integer"),
    };
    let grace = match q.get("mode").map(String::as_str) {
        Some("off") => RefreshGrace::Off,
        Some("on") => RefreshGrace::UntilNewPairUsed { max },
        _ => return bad("mode must be off|on"),
    };
    s.lock().set_refresh_grace(q.get("client_id").map(String::as_str), grace);
    json_response(StatusCode::OK, serde_json::to_value(grace).unwrap_or_default())
}

/// `POST /_sim/stats/reset`: zeroes every counter.
async fn sim_stats_reset(State(s): State<Arc<Shared>>) -> Response {
    s.lock().stats = SimStats::default();
    json_response(StatusCode::OK, json!({"reset": true}))
}

/// `GET /_sim/dataset?division=D&entity_set=crm/Accounts`: the IDs of the generated rows, in paging order.
async fn sim_dataset(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let (Some(Ok(d)), Some(set)) = (q.get("division").map(|v| v.parse::<i64>()), q.get("entity_set")) else {
        return bad("division (an integer) and entity_set (e.g. crm/Accounts) are required");
    };
    let ids = s.lock().dataset_ids(d, set);
    json_response(StatusCode::OK, json!({"count": ids.len(), "ids": ids}))
}

/// `GET /_sim/grace_tokens?client_id=C&user_id=U`: the chain's refresh tokens still in grace.
async fn sim_grace_tokens(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let (Some(c), Some(u)) = (q.get("client_id"), q.get("user_id")) else {
        return bad("client_id and user_id are required");
    };
    let now = s.clock.now_ms();
    json_response(StatusCode::OK, json!({"refresh_tokens": s.lock().grace_refresh_tokens(c, u, now)}))
}

async fn sim_revoke(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let (Some(c), Some(u)) = (q.get("client_id"), q.get("user_id")) else {
        return bad("client_id and user_id are required");
    };
    s.lock().revoke(c, u);
    json_response(StatusCode::OK, json!({"revoked": true}))
}

async fn sim_password(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let (Some(u), Some(p)) = (q.get("username"), q.get("password")) else {
        return bad("username and password are required");
    };
    s.lock().set_password(u, p);
    json_response(StatusCode::OK, json!({"changed": true}))
}

async fn sim_latency(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let Some(ms) = q.get("ms").and_then(|v| v.parse::<u64>().ok()) else {
        return bad("ms is required");
    };
    s.lock().token_latency = Duration::from_millis(ms);
    json_response(StatusCode::OK, json!({"token_latency_ms": ms}))
}

async fn sim_totp(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let now = s.clock.now_ms();
    let code = q.get("username").and_then(|u| s.lock().totp_for(u, now));
    match code {
        Some(c) => json_response(StatusCode::OK, json!({"code": c})),
        None => json_response(StatusCode::NOT_FOUND, json!({"error": "unknown user or no TOTP secret"})),
    }
}

async fn sim_active(State(s): State<Arc<Shared>>, Query(q): Q) -> Response {
    let (Some(c), Some(u)) = (q.get("client_id"), q.get("user_id")) else {
        return bad("client_id and user_id are required");
    };
    let g = s.lock();
    json_response(
        StatusCode::OK,
        json!({"count": g.active_refresh_token_count(c, u), "refresh_token": g.active_refresh_token(c, u)}),
    )
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(AUTH_PATH, get(authorize_get).post(authorize_post))
        .route("/api/oauth2/token", post(token))
        .route("/api/v1/current/Me", get(me))
        .merge(odata_routes())
        .route("/api/v1/{division}/echo/{*rest}", any(echo))
        .route("/_sim/stats", get(sim_stats))
        .route("/_sim/clock", get(sim_clock))
        .route("/_sim/clock/advance", post(sim_clock_advance))
        .route("/_sim/clock/set", post(sim_clock_set))
        .route("/_sim/fault", post(sim_fault))
        .route("/_sim/revoke", post(sim_revoke))
        .route("/_sim/password", post(sim_password))
        .route("/_sim/latency", post(sim_latency))
        .route("/_sim/totp", get(sim_totp))
        .route("/_sim/active", get(sim_active))
        .route("/_sim/fault/rates", get(sim_rates_get).post(sim_rates_set))
        .route("/_sim/grace", post(sim_grace))
        .route("/_sim/grace_tokens", get(sim_grace_tokens))
        .route("/_sim/stats/reset", post(sim_stats_reset))
        .route("/_sim/dataset", get(sim_dataset))
        .merge(sign_in_flow::start_routes())
        .layer(axum::middleware::from_fn_with_state(shared.clone(), count_api_requests))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), sign_in_flow::watch_start_host))
        .with_state(shared)
}

/// The OData routes of [`odata`]: per service its service document, `$metadata`, one entity by key, and per
/// entity set the set and its `$count`; plus the v4-style (not Exact) sets under `/odata4/`.
fn odata_routes() -> Router<Arc<Shared>> {
    type St = State<Arc<Shared>>;
    let mut r = Router::new();
    for service in odata::services() {
        let root = format!("/api/v1/{{division}}/{service}");
        let doc =
            move |State(s): St, Path(d): Path<String>, h: HeaderMap| odata::get_service_document(s, service, d, h);
        r = r.route(&root, get(doc)).route(&format!("{root}/"), get(doc));
        r = r.route(
            &format!("{root}/$metadata"),
            get(move |State(s): St, Path(d): Path<String>, h: HeaderMap| odata::get_metadata(s, service, d, h)),
        );
        r = r.route(
            &format!("{root}/{{segment}}"),
            get(move |State(s): St, Path((d, seg)): Path<(String, String)>, h: HeaderMap, u: axum::http::Uri| {
                odata::get_entity(s, service, d, seg, h, u)
            }),
        );
    }
    for set in odata::ENTITY_SETS {
        let path = format!("/api/v1/{{division}}/{}/{}", set.service, set.name);
        r = r.route(
            &path,
            get(move |State(s): St, Path(d): Path<String>, h: HeaderMap, u: axum::http::Uri| {
                odata::get_entity_set(s, set, d, h, u)
            }),
        );
        r = r.route(
            &format!("{path}/$count"),
            get(move |State(s): St, Path(d): Path<String>, h: HeaderMap, u: axum::http::Uri| {
                odata::get_count(s, set, d, h, u)
            }),
        );
        r = r.route(
            &format!("/odata4/{{division}}/{}/{}", set.service, set.name),
            get(move |State(s): St, Path(d): Path<String>, h: HeaderMap, u: axum::http::Uri| {
                odata::get_entity_set_v4(s, set, d, h, u)
            }),
        );
    }
    r
}

/// Counts every request that reaches the REST API's paths, whatever its method, route or token, before any
/// routing: the security tests prove that nothing unauthenticated is forwarded to the provider.
async fn count_api_requests(State(s): State<Arc<Shared>>, req: Request, next: axum::middleware::Next) -> Response {
    if req.uri().path().starts_with("/api/v1/") {
        s.lock().stats.api_requests_received += 1;
    }
    next.run(req).await
}

/// Accept loop: one task per connection; a connection ends when the client closes it, when a handler
/// asks for it to be dropped without a response ([`ConnKill`]), or when the simulator shuts down.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(shared);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let kill = ConnKill { notify: Arc::new(Notify::new()), reset: Arc::new(AtomicBool::new(false)) };
            let k = kill.clone();
            let io = ResettableStream { inner: stream, reset: kill.reset.clone() };
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut app = app.clone();
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(k.clone());
                async move { Ok::<_, Infallible>(app.call(req).await.unwrap_or_else(|e| match e {})) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.notify.notified() => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// A connection's socket that, when dropped after [`ConnKill::reset`], aborts the connection with a TCP RST
/// (`SO_LINGER` 0) instead of closing it: what a client sees when a server or load balancer resets it.
struct ResettableStream {
    inner: tokio::net::TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(AtomicOrdering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl tokio::io::AsyncRead for ResettableStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
