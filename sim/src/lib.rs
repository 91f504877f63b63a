//! `exact-sim`: an in-process (or stand-alone) simulator of Exact Online's OAuth2 authorization server
//! and a slice of its REST API, faithful to the rules that shape chainkeeper:
//!
//! * access tokens live 600 s and `expires_in` is the *string* `"600"`;
//! * a new access token at most once per 570 s per (client, user) — otherwise
//!   `400 access_denied` with header `Reason: TooEarlyToRefreshTokens` and *no* rotation;
//! * exactly one active refresh token per (client, user): every refresh and every new authorization
//!   kills all earlier ones; using one of those gives `invalid_grant` "Old refresh token used.";
//! * refresh tokens expire after 30 days unused; authorization codes are single use and live 180 s.
//!
//! Time is a [`SimClock`] that tests move by hand. Faults (503, 429, lost responses, hangs) can be injected
//! from Rust or over HTTP under `/_sim/`.

pub mod browser;
mod server;
pub mod totp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use server::{Inner, Shared};

// ---------------------------------------------------------------- clock

/// The simulator's clock, in unix milliseconds. Cheap to clone; clones share the same time.
///
/// [`SimClock::new`] is a manual clock that stands still unless moved; [`SimClock::system`] follows
/// the real clock plus an offset (which `advance` and `set_ms` change).
#[derive(Clone, Debug)]
pub struct SimClock {
    ms: Arc<AtomicI64>,
    follows_system: bool,
}

fn real_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl SimClock {
    /// A manual clock that starts at `start_ms` and moves only by `advance` / `set_ms`.
    pub fn new(start_ms: i64) -> Self {
        SimClock { ms: Arc::new(AtomicI64::new(start_ms)), follows_system: false }
    }

    /// A clock that follows real time plus an offset (initially 0).
    pub fn system() -> Self {
        SimClock { ms: Arc::new(AtomicI64::new(0)), follows_system: true }
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let v = self.ms.load(Ordering::SeqCst);
        if self.follows_system { real_now_ms() + v } else { v }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.ms.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }

    /// Sets the clock to `ms` (unix milliseconds).
    pub fn set_ms(&self, ms: i64) {
        if self.follows_system {
            self.ms.store(ms - real_now_ms(), Ordering::SeqCst);
        } else {
            self.ms.store(ms, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------- configuration

/// A user of the simulated Exact Online.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimUser {
    /// Exact's `UserID`, a GUID.
    pub user_id: String,
    pub username: String,
    pub password: String,
    /// When set, login asks for a 6-digit RFC 6238 code (SHA1, 30 s) after the password.
    #[serde(default)]
    pub totp_secret_base32: Option<String>,
    #[serde(default)]
    pub full_name: String,
    /// `CurrentDivision`; the only division whose data endpoints this user may call.
    #[serde(default = "default_division")]
    pub division: i64,
}

fn default_division() -> i64 {
    123456
}

/// An app registration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimApp {
    pub client_id: String,
    pub client_secret: String,
    /// Exact match is required for `redirect_uri`.
    pub redirect_uris: Vec<String>,
}

/// Simulator configuration. `Default` has Exact Online's real timings, one app and one user.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub apps: Vec<SimApp>,
    pub users: Vec<SimUser>,
    /// 600 s.
    pub access_token_lifetime: Duration,
    /// 570 s: a new access token for (client, user) at most once per this interval.
    pub min_token_interval: Duration,
    /// 30 days: a refresh token not used for this long is dead.
    pub refresh_token_idle_expiry: Duration,
    /// 180 s.
    pub code_lifetime: Duration,
    /// When true, a refresh token obtained by a refresh can be refreshed only after its access token
    /// served at least one API call.
    pub require_activation: bool,
    /// Extra delay before every token request is processed.
    pub token_latency: Duration,
    /// API calls per minute per (client, division); default 60.
    pub minutely_limit: u32,
}

/// Secret of the default user: base32 of `"12345678901234567890"` (the RFC 6238 test key).
pub const DEFAULT_TOTP_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
pub const DEFAULT_CLIENT_ID: &str = "sim-client";
pub const DEFAULT_CLIENT_SECRET: &str = "sim-secret";
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1:8080/v1/callback";
pub const DEFAULT_USER_ID: &str = "6f1c2a9e-3b7d-4e58-9c21-0a4d5e6f7b81";
pub const DEFAULT_USERNAME: &str = "sim-user";
pub const DEFAULT_PASSWORD: &str = "sim-password";
pub const DEFAULT_DIVISION: i64 = 123456;
/// Daily API call limit reported in `X-RateLimit-Limit` (per client and division).
pub const DAILY_LIMIT: u32 = 5000;

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            apps: vec![SimApp {
                client_id: DEFAULT_CLIENT_ID.into(),
                client_secret: DEFAULT_CLIENT_SECRET.into(),
                redirect_uris: vec![DEFAULT_REDIRECT_URI.into()],
            }],
            users: vec![SimUser {
                user_id: DEFAULT_USER_ID.into(),
                username: DEFAULT_USERNAME.into(),
                password: DEFAULT_PASSWORD.into(),
                totp_secret_base32: Some(DEFAULT_TOTP_SECRET.into()),
                full_name: "Sim User".into(),
                division: DEFAULT_DIVISION,
            }],
            access_token_lifetime: Duration::from_secs(600),
            min_token_interval: Duration::from_secs(570),
            refresh_token_idle_expiry: Duration::from_secs(30 * 24 * 3600),
            code_lifetime: Duration::from_secs(180),
            require_activation: false,
            token_latency: Duration::ZERO,
            minutely_limit: 60,
        }
    }
}

/// The JSON form of [`SimConfig`] read by the `exact-sim` binary. Every field is optional (missing ones
/// take the default); durations are seconds (numbers, fractions allowed); a `_s` suffix is accepted too.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SimConfigFile {
    apps: Option<Vec<SimApp>>,
    users: Option<Vec<SimUser>>,
    #[serde(alias = "access_token_lifetime_s")]
    access_token_lifetime: Option<f64>,
    #[serde(alias = "min_token_interval_s")]
    min_token_interval: Option<f64>,
    #[serde(alias = "refresh_token_idle_expiry_s")]
    refresh_token_idle_expiry: Option<f64>,
    #[serde(alias = "code_lifetime_s")]
    code_lifetime: Option<f64>,
    require_activation: Option<bool>,
    #[serde(alias = "token_latency_s")]
    token_latency: Option<f64>,
    minutely_limit: Option<u32>,
}

fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|e| anyhow::anyhow!("{what}: {v} is not a valid number of seconds: {e}"))
}

impl SimConfig {
    /// Parses the JSON config format of the binary (see the crate README / `SimConfigFile`).
    pub fn from_json(text: &str) -> anyhow::Result<SimConfig> {
        let f: SimConfigFile = serde_json::from_str(text)?;
        let mut c = SimConfig::default();
        if let Some(a) = f.apps {
            c.apps = a;
        }
        if let Some(u) = f.users {
            c.users = u;
        }
        if let Some(v) = f.access_token_lifetime {
            c.access_token_lifetime = secs(v, "access_token_lifetime")?;
        }
        if let Some(v) = f.min_token_interval {
            c.min_token_interval = secs(v, "min_token_interval")?;
        }
        if let Some(v) = f.refresh_token_idle_expiry {
            c.refresh_token_idle_expiry = secs(v, "refresh_token_idle_expiry")?;
        }
        if let Some(v) = f.code_lifetime {
            c.code_lifetime = secs(v, "code_lifetime")?;
        }
        if let Some(v) = f.require_activation {
            c.require_activation = v;
        }
        if let Some(v) = f.token_latency {
            c.token_latency = secs(v, "token_latency")?;
        }
        if let Some(v) = f.minutely_limit {
            c.minutely_limit = v;
        }
        Ok(c)
    }
}

// ---------------------------------------------------------------- faults and stats

/// A fault for the next token request(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `503 Service Unavailable` (an HTML body, as a load balancer sends); not processed.
    ServiceUnavailable,
    /// `429 Too Many Requests` with `Retry-After: retry_after_s`; not processed.
    TooManyRequests { retry_after_s: u64 },
    /// Processed (a refresh rotates!) but no response is ever sent: the connection is closed at once
    /// without a response.
    LoseResponse,
    /// Processed, then the connection is held for the duration and closed without a response
    /// (a client with a shorter timeout sees a timeout).
    LoseResponseAfter(Duration),
    /// The request waits this long (real time) before it is processed; it is then processed even if the
    /// client gave up meanwhile, and answered if the connection is still open.
    Hang(Duration),
}

/// Counters per (client, user) — key `client_id#user_id` in [`SimStats::per_chain`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChainStats {
    pub code_requests: u64,
    pub refresh_requests: u64,
    pub tokens_issued: u64,
    pub rate_limited: u64,
    pub invalid_grant: u64,
}

/// Counters. Request counts are counted on arrival (faulted requests included).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimStats {
    /// Every request to `POST /api/oauth2/token`.
    pub token_requests: u64,
    /// … with `grant_type=refresh_token`.
    pub refresh_requests: u64,
    /// … with `grant_type=authorization_code`.
    pub code_requests: u64,
    /// Access (and refresh) tokens issued.
    pub tokens_issued: u64,
    /// Refreshes rejected by the 570 s rule.
    pub rate_limited: u64,
    /// `invalid_grant` answers.
    pub invalid_grant: u64,
    /// `invalid_client` answers.
    pub invalid_client: u64,
    /// Token requests answered (or not answered) by an injected fault.
    pub faults_injected: u64,
    /// Token responses deliberately lost (`LoseResponse*`).
    pub lost_responses: u64,
    /// Authenticated API calls (`current/Me`, data endpoints), including those answered 429.
    pub api_calls: u64,
    /// Every request that reached `/api/v1/…` (the REST API), whatever its method, route or token.
    #[serde(default)]
    pub api_requests_received: u64,
    /// API calls answered 429 by the minutely/daily limit.
    pub api_rate_limited: u64,
    /// Per `client_id#user_id`.
    pub per_chain: BTreeMap<String, ChainStats>,
}

// ---------------------------------------------------------------- the server

/// A running simulator bound to `127.0.0.1`. Dropping it stops the server.
pub struct ExactSim {
    /// `http://127.0.0.1:PORT` — no trailing slash, no `/api`.
    pub base_url: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl ExactSim {
    /// Starts the simulator on `127.0.0.1:0`.
    pub async fn start(config: SimConfig, clock: SimClock) -> anyhow::Result<ExactSim> {
        Self::start_on(config, clock, "127.0.0.1:0".parse()?).await
    }

    /// Starts the simulator on the given address.
    pub async fn start_on(config: SimConfig, clock: SimClock, addr: SocketAddr) -> anyhow::Result<ExactSim> {
        let shared = Arc::new(Shared { inner: Mutex::new(Inner::new(config)?), clock });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(server::serve(listener, shared.clone(), rx));
        Ok(ExactSim { base_url: format!("http://{addr}"), addr, shared, shutdown: tx })
    }

    /// `{base_url}/api/oauth2/auth`
    pub fn authorize_url(&self) -> String {
        format!("{}/api/oauth2/auth", self.base_url)
    }
    /// `{base_url}/api/oauth2/token`
    pub fn token_url(&self) -> String {
        format!("{}/api/oauth2/token", self.base_url)
    }
    /// `{base_url}/api`
    pub fn api_base_url(&self) -> String {
        format!("{}/api", self.base_url)
    }

    pub fn clock(&self) -> &SimClock {
        &self.shared.clock
    }

    pub fn stats(&self) -> SimStats {
        self.shared.lock().stats.clone()
    }

    /// The next `n` token requests get `fault` (queued after faults already pending).
    pub fn fail_next_token_requests(&self, n: u32, fault: Fault) {
        let mut g = self.shared.lock();
        for _ in 0..n {
            g.faults.push_back(fault.clone());
        }
    }

    /// Drops all pending faults.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Revokes the user's grant for the client: its refresh token dies ("Old refresh token used."),
    /// its access tokens stop working, and the next authorization asks for consent again.
    pub fn revoke(&self, client_id: &str, user_id: &str) {
        self.shared.lock().revoke(client_id, user_id);
    }

    /// Changes a user's password (tokens are not affected).
    pub fn set_password(&self, username: &str, password: &str) {
        self.shared.lock().set_password(username, password);
    }

    pub fn set_token_latency(&self, d: Duration) {
        self.shared.lock().token_latency = d;
    }

    pub fn set_require_activation(&self, on: bool) {
        self.shared.lock().require_activation = on;
    }

    /// The user's current 6-digit TOTP code by the sim clock, if the user has a TOTP secret.
    pub fn totp_now(&self, username: &str) -> Option<String> {
        let now = self.shared.clock.now_ms();
        self.shared.lock().totp_for(username, now)
    }

    /// 0 or 1 by construction.
    pub fn active_refresh_token_count(&self, client_id: &str, user_id: &str) -> usize {
        self.shared.lock().active_refresh_token_count(client_id, user_id)
    }

    /// Benchmarks and bulk set-ups: `(access_token, refresh_token)` for (client, user) as if the user had just
    /// authorized (the user is created if unknown; earlier refresh tokens of the pair die, as in Exact).
    pub fn mint_tokens(&self, client_id: &str, user_id: &str) -> (String, String) {
        let now = self.shared.clock.now_ms();
        self.shared.lock().mint(client_id, user_id, now)
    }

    /// The one active refresh token of (client, user), if any.
    pub fn active_refresh_token(&self, client_id: &str, user_id: &str) -> Option<String> {
        self.shared.lock().active_refresh_token(client_id, user_id)
    }
}

impl Drop for ExactSim {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
