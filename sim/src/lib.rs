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
//! * optionally (per app, as Exact sets it per app), a *grace*: the previous refresh token stays usable until
//!   the new pair is used ([`RefreshGrace`]);
//! * API calls with a division in the URL count against 60 a minute and 5,000 a day per (app, division), with
//!   Exact's `X-RateLimit-*` headers; entity sets page like Exact's OData v2 service ([`SimDataset`]).
//!
//! Time is a [`SimClock`]: manual, the system clock, or a fast clock N× real time. Faults (5xx, 429, lost
//! answers, resets, slow answers, outages over a span of time, seeded per-request rates) can be injected
//! from Rust or over HTTP under `/_sim/` (module [`faults`]).

//! ## Control over HTTP (`/_sim/`, for tests in other languages and for the binary)
//!
//! | route | what |
//! | --- | --- |
//! | `GET /_sim/stats` · `POST /_sim/stats/reset` | the [`SimStats`] counters as JSON; zero them |
//! | `GET /_sim/clock` · `POST /_sim/clock/advance?ms=` · `POST /_sim/clock/set?ms=` | `{now_ms, factor}`; move it |
//! | `POST /_sim/fault?kind=K[&n=][&ms=][&retry_after_s=]` | the next n token requests get fault K ([`Fault::kind`]) |
//! | `POST /_sim/fault?kind=K&for_sim_ms=` / `&for_real_ms=` | every token request for that span gets K |
//! | `POST /_sim/fault?kind=clear` | drop queued faults, span and rates |
//! | `GET/POST /_sim/fault/rates` | read / set [`FaultRates`] (JSON body; `{}` clears) |
//! | `POST /_sim/grace?mode=on\|off[&max_ms=][&client_id=]` | [`RefreshGrace`] of every app or one |
//! | `GET /_sim/grace_tokens?client_id=&user_id=` · `GET /_sim/active?client_id=&user_id=` | the chain's tokens |
//! | `GET /_sim/dataset?division=&entity_set=crm/Accounts` | the generated rows' IDs in paging order |
//! | `POST /_sim/revoke` · `/_sim/password` · `/_sim/latency?ms=` · `GET /_sim/totp?username=` | as named |
//!
//! ## The API
//!
//! `GET /api/v1/current/Me`; per division `D` and service (`crm`, `bulk/CRM`, `financialtransaction`,
//! `bulk/Financial`): `/api/v1/D/{service}/` (service document), `/$metadata` (EDMX), `/{Set}` (paged, with
//! `$select`, `$filter`, `$top`, `$skip`, `$orderby`, `$inlinecount`, `$skiptoken`), `/{Set}/$count`,
//! `/{Set}(guid'…')`; `/api/v1/D/echo/…` (reflects the request); and, not Exact, OData v4-style sets under
//! `/odata4/D/{service}/{Set}` (`value`, `@odata.nextLink`, `$count=true`). See the `odata` module.

pub mod browser;
pub mod faults;
mod odata;
mod server;
pub mod sign_in;
pub mod totp;

pub use faults::{Fault, FaultRates, FaultUntil};
pub use sign_in::{HostSignInStats, SignIn, SignInBehaviour, SignInOutcome, SignInStats};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use server::{Inner, Shared};

// ---------------------------------------------------------------- clock

/// The simulator's clock, in unix milliseconds. Cheap to clone; clones share the same time.
///
/// [`SimClock::new`] is a manual clock that stands still unless moved; [`SimClock::system`] follows
/// the real clock plus an offset (which `advance` and `set_ms` change); [`SimClock::scaled`] runs `factor`
/// times as fast as real time from a start (a campaign of 100 refreshes per chain, 570 s apart, takes
/// 57,000 simulated seconds: 57 real seconds at 1000×). `advance` and `set_ms` work on every kind.
#[derive(Clone, Debug)]
pub struct SimClock {
    ms: Arc<AtomicI64>,
    mode: ClockMode,
}

#[derive(Clone, Copy, Debug)]
enum ClockMode {
    Manual,
    System,
    Scaled { origin: Instant, start_ms: i64, factor: f64 },
}

fn real_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl SimClock {
    /// A manual clock that starts at `start_ms` and moves only by `advance` / `set_ms`.
    pub fn new(start_ms: i64) -> Self {
        SimClock { ms: Arc::new(AtomicI64::new(start_ms)), mode: ClockMode::Manual }
    }

    /// A clock that follows real time plus an offset (initially 0).
    pub fn system() -> Self {
        SimClock { ms: Arc::new(AtomicI64::new(0)), mode: ClockMode::System }
    }

    /// A fast clock: starts at `start_ms` and runs `factor` times as fast as real time (a factor of 1 runs
    /// at real speed; a factor below 0 or not finite counts as 0, a clock that stands still).
    pub fn scaled(start_ms: i64, factor: f64) -> Self {
        let factor = if factor.is_finite() && factor > 0.0 { factor } else { 0.0 };
        SimClock {
            ms: Arc::new(AtomicI64::new(0)),
            mode: ClockMode::Scaled { origin: Instant::now(), start_ms, factor },
        }
    }

    /// How many simulated seconds pass per real second: 0 for a manual clock, 1 for the system clock.
    pub fn factor(&self) -> f64 {
        match self.mode {
            ClockMode::Manual => 0.0,
            ClockMode::System => 1.0,
            ClockMode::Scaled { factor, .. } => factor,
        }
    }

    fn base_ms(&self) -> i64 {
        match self.mode {
            ClockMode::Manual => 0,
            ClockMode::System => real_now_ms(),
            ClockMode::Scaled { origin, start_ms, factor } => {
                start_ms + (origin.elapsed().as_secs_f64() * factor * 1000.0) as i64
            }
        }
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.base_ms() + self.ms.load(Ordering::SeqCst)
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.ms.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }

    /// Sets the clock to `ms` (unix milliseconds); a running clock goes on from there.
    pub fn set_ms(&self, ms: i64) {
        self.ms.store(ms - self.base_ms(), Ordering::SeqCst);
    }

    /// A real duration that spans `sim` on this clock (a manual clock: `sim` itself, as nothing moves it).
    pub fn real_duration_of(&self, sim: Duration) -> Duration {
        match self.factor() {
            f if f > 0.0 => sim.div_f64(f),
            _ => sim,
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
    /// API calls per day per (client, division); default 5,000.
    pub daily_limit: u32,
    /// Whether the previous refresh token stays usable after a refresh (for every app; see
    /// [`ExactSim::set_refresh_grace`] for one app). Default [`RefreshGrace::Off`]: dead at once.
    pub refresh_grace: RefreshGrace,
    /// The generated rows of the entity sets.
    pub dataset: SimDataset,
    /// How a refresh token unused past `refresh_token_idle_expiry` is refused. See [`ExpiredRefreshAnswer`].
    pub expired_refresh_answer: ExpiredRefreshAnswer,
    /// The sign-in the authorize URL leads to; Exact Online's real one, [`SignIn::AzureB2c`], by default.
    pub sign_in: SignIn,
    /// Per-user sign-in behaviour in [`SignIn::AzureB2c`] mode, by username (case-insensitive).
    pub sign_in_behaviours: BTreeMap<String, SignInBehaviour>,
}

/// The answer to a refresh with a refresh token that expired unused (30 days).
///
/// Exact's answer, as a user of websmurf/laravel-exact-online reported it (issue #23, 2022):
/// `400 {"error":"invalid_request","error_description":"The refresh token expired at 10/11/2022 9:18:20 PM and
/// it is now 10/28/2022 4:15:50 PM."}` — an `invalid_request`, not an `invalid_grant`. That is [`Exact`].
/// The default is still the simulator's earlier `invalid_grant` "Refresh token expired", because chainkeeper's
/// engine (shared/src/oauth.rs) classifies an `invalid_request` as a retryable failure and would answer callers
/// `503 provider_unavailable` for a chain that is in fact dead (the e2e test
/// `a_refresh_token_left_unused_for_thirty_days_is_reported_expired` shows it when `Exact` is chosen). Switch
/// the default once the engine recognises this answer.
///
/// [`Exact`]: ExpiredRefreshAnswer::Exact
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiredRefreshAnswer {
    /// `invalid_request`, "The refresh token expired at {M/d/yyyy h:mm:ss tt} and it is now {…}."
    Exact,
    /// `invalid_grant`, "Refresh token expired" (not seen from Exact).
    #[default]
    InvalidGrant,
}

/// What happens to the previous refresh token of a (client, user) when a refresh issues a new pair.
///
/// Evidence. Exact's own documentation says the old refresh token dies at once ("Your old refresh token is no
/// longer valid"; "When you receive a refresh token, any previous refresh token is invalidated": knowledge-base
/// articles `All-All-DNO-Content-oauth-eol-oauth-devstep4` and `…-devtrblshtng`, quoted in the public research
/// notes found by the search index). Invantive, which runs thousands of Exact chains, writes: "upon first use
/// for an API call or retrieval of an access token, all previous refresh tokens expire" and "on part of the
/// applications the use of older refresh tokens is possible, on part not. This is set per Exact Online
/// application by Exact" (<https://forums.invantive.com/t/exact-online-error-message-old-refresh-token-used/2903>,
/// and the Dutch original /2227). Both are modelled: `Off` is the documented behaviour, `UntilNewPairUsed` the
/// one Invantive reports for some apps.
///
/// "Used", precisely (our reading of Invantive's sentence): the grace of the earlier refresh tokens ends at
/// the first (a) API call authenticated with an access token issued together with the newest refresh token,
/// or (b) successful refresh with the newest refresh token. An API call with an older, still valid access
/// token does not end it; a refresh answered `TooEarlyToRefreshTokens` is no "retrieval of an access token"
/// and does not end it either. A refresh with a grace token itself issues a new pair (rotation as usual, the
/// 570 s rule applies as to any refresh), after which both earlier tokens are in grace until that new pair is
/// used. A new authorization (code grant) ends every grace at once. Invantive's "refresh tokens are valid for
/// ten minutes when used" may mean a time cap; `max` models one if set (no evidence gives its length).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum RefreshGrace {
    /// The previous refresh token dies when the new one is issued: using it gives `Old refresh token used.`
    #[default]
    Off,
    /// The previous refresh token(s) stay usable until the new pair is used (see above), and at most `max`
    /// after they were superseded when set.
    UntilNewPairUsed {
        #[serde(default, with = "opt_ms")]
        max: Option<Duration>,
    },
}

mod opt_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Sizes of the generated data behind the entity sets, per division. Rows are generated from
/// (`seed`, division, entity set, row number), so the same configuration always gives the same rows and the
/// same GUIDs ([`ExactSim::dataset_ids`] lists them, for "every row returned exactly once" checks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimDataset {
    pub seed: u64,
    /// Rows of `crm/Accounts` (and `bulk/CRM/Accounts`). Default 130: three pages of 60.
    pub accounts: usize,
    /// Rows of `financialtransaction/TransactionLines` (and `bulk/Financial/TransactionLines`). Default 2,500.
    pub transaction_lines: usize,
}

impl Default for SimDataset {
    fn default() -> Self {
        SimDataset { seed: 1, accounts: 130, transaction_lines: 2500 }
    }
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
            daily_limit: DAILY_LIMIT,
            refresh_grace: RefreshGrace::Off,
            dataset: SimDataset::default(),
            expired_refresh_answer: ExpiredRefreshAnswer::default(),
            sign_in: SignIn::AzureB2c,
            sign_in_behaviours: BTreeMap::new(),
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
    daily_limit: Option<u32>,
    refresh_grace: Option<RefreshGrace>,
    dataset: Option<SimDataset>,
    expired_refresh_answer: Option<ExpiredRefreshAnswer>,
    sign_in: Option<SignIn>,
    sign_in_behaviours: Option<BTreeMap<String, SignInBehaviour>>,
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
        if let Some(v) = f.daily_limit {
            c.daily_limit = v;
        }
        if let Some(v) = f.refresh_grace {
            c.refresh_grace = v;
        }
        if let Some(v) = f.dataset {
            c.dataset = v;
        }
        if let Some(v) = f.expired_refresh_answer {
            c.expired_refresh_answer = v;
        }
        if let Some(v) = f.sign_in {
            c.sign_in = v;
        }
        if let Some(v) = f.sign_in_behaviours {
            c.sign_in_behaviours = v;
        }
        Ok(c)
    }
}

// ---------------------------------------------------------------- faults and stats

/// Counters per (client, user) — key `client_id#user_id` in [`SimStats::per_chain`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChainStats {
    pub code_requests: u64,
    pub refresh_requests: u64,
    pub tokens_issued: u64,
    pub rate_limited: u64,
    pub invalid_grant: u64,
    /// `invalid_grant` answers "Old refresh token used."
    #[serde(default)]
    pub old_refresh_token_used: u64,
    /// Refreshes accepted with a previous refresh token inside its grace ([`RefreshGrace`]).
    #[serde(default)]
    pub grace_refreshes: u64,
    /// Faults injected into this chain's token requests.
    #[serde(default)]
    pub faults_injected: u64,
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
    /// Token requests processed but deliberately not answered (`LoseResponse*`, `ResetAfterProcessing`).
    pub lost_responses: u64,
    /// Faults injected, by [`Fault::kind`].
    #[serde(default)]
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Successful refreshes (a new pair issued for a `refresh_token` grant); with `refresh_requests` this gives
    /// "provider token calls per refresh".
    #[serde(default)]
    pub refreshes_succeeded: u64,
    /// `invalid_grant` answers "Old refresh token used.": a broken chain. A broker must keep this at 0.
    #[serde(default)]
    pub old_refresh_token_used: u64,
    /// Refreshes accepted with a previous refresh token inside its grace: lost answers healed by the grace.
    #[serde(default)]
    pub grace_refreshes: u64,
    /// Graces that ended because the new pair was used (each ends the grace of one or more earlier tokens).
    #[serde(default)]
    pub graces_closed: u64,
    /// Authenticated API calls (`current/Me`, data endpoints), including those answered 429.
    pub api_calls: u64,
    /// Every request that reached `/api/v1/…` (the REST API), whatever its method, route or token.
    #[serde(default)]
    pub api_requests_received: u64,
    /// API calls answered 429 by the minutely/daily limit.
    pub api_rate_limited: u64,
    /// … of which by the daily limit.
    #[serde(default)]
    pub api_daily_limited: u64,
    /// Entity-set rows served (every page's `d.results`, v2 and v4).
    #[serde(default)]
    pub api_rows_served: u64,
    /// Entity-set pages served.
    #[serde(default)]
    pub api_pages_served: u64,
    /// Per `client_id#user_id`.
    pub per_chain: BTreeMap<String, ChainStats>,
    /// Sign-in pages and credentials, per host.
    #[serde(default)]
    pub sign_in: SignInStats,
}

// ---------------------------------------------------------------- the server

/// A running simulator bound to `127.0.0.1`: the start host (authorize, token, API) and the sign-in (Azure AD
/// B2C) host on a second port. Dropping it stops both.
pub struct ExactSim {
    /// The start host, `http://127.0.0.1:PORT` — no trailing slash, no `/api` (stands for
    /// `https://start.exactonline.nl`).
    pub base_url: String,
    pub addr: SocketAddr,
    /// The B2C host, `http://127.0.0.1:PORT2` (stands for `https://login.exact.com`).
    pub b2c_base_url: String,
    pub b2c_addr: SocketAddr,
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
        Self::start_with_b2c_on(config, clock, addr, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the simulator with the start host on `addr` and the B2C host on `b2c_addr`.
    pub async fn start_with_b2c_on(
        config: SimConfig,
        clock: SimClock,
        addr: SocketAddr,
        b2c_addr: SocketAddr,
    ) -> anyhow::Result<ExactSim> {
        let inner = Inner::new(config)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let b2c_listener = tokio::net::TcpListener::bind(b2c_addr).await?;
        let b2c_addr = b2c_listener.local_addr()?;
        let (base_url, b2c_base_url) = (format!("http://{addr}"), format!("http://{b2c_addr}"));
        let shared = Arc::new(Shared { inner: Mutex::new(inner), clock, base_url: base_url.clone() });
        shared.lock().sign_in.set_hosts(&base_url, &b2c_base_url);
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(server::serve_b2c(b2c_listener, shared.clone(), rx.clone()));
        tokio::spawn(server::serve(listener, shared.clone(), rx));
        Ok(ExactSim { base_url, addr, b2c_base_url, b2c_addr, shared, shutdown: tx })
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

    /// Every token request until `until` gets `fault` (after the queued ones): an outage over a span of
    /// simulated or real time. A later call replaces the span.
    pub fn fail_token_requests_until(&self, until: FaultUntil, fault: Fault) {
        self.shared.lock().fault_span = Some((until, fault));
    }

    /// A 503 outage of the token endpoint for `d` on the simulator's clock (from now).
    pub fn unavailable_for(&self, d: Duration) {
        let until = self.shared.clock.now_ms() + d.as_millis() as i64;
        self.fail_token_requests_until(FaultUntil::SimMs(until), Fault::ServiceUnavailable);
    }

    /// A 503 outage of the token endpoint for `d` of real time (from now).
    pub fn unavailable_for_real(&self, d: Duration) {
        self.fail_token_requests_until(FaultUntil::Real(Instant::now() + d), Fault::ServiceUnavailable);
    }

    /// Per-request fault probabilities for campaigns (replacing earlier rates); see [`FaultRates`].
    pub fn set_fault_rates(&self, rates: FaultRates) -> Result<(), String> {
        rates.validate()?;
        self.shared.lock().fault_rates = Some(rates);
        Ok(())
    }

    /// Drops all pending faults: the queue, the span and the rates.
    pub fn clear_faults(&self) {
        let mut g = self.shared.lock();
        g.faults.clear();
        g.fault_span = None;
        g.fault_rates = None;
    }

    /// The grace of every app's previous refresh tokens (`client_id` `None`), or of one app's (overriding the
    /// default for that app). Applies to refreshes from now on.
    pub fn set_refresh_grace(&self, client_id: Option<&str>, grace: RefreshGrace) {
        self.shared.lock().set_refresh_grace(client_id, grace);
    }

    /// The refresh tokens of (client, user) that are past but still usable in their grace (oldest first).
    pub fn grace_refresh_tokens(&self, client_id: &str, user_id: &str) -> Vec<String> {
        let now = self.shared.clock.now_ms();
        self.shared.lock().grace_refresh_tokens(client_id, user_id, now)
    }

    /// How an expired refresh token is refused from now on.
    pub fn set_expired_refresh_answer(&self, answer: ExpiredRefreshAnswer) {
        self.shared.lock().expired_refresh_answer = answer;
    }

    /// Zeroes every counter (benchmarks: measure one phase at a time).
    pub fn reset_stats(&self) {
        self.shared.lock().stats = SimStats::default();
    }

    /// The `ID`s of an entity set's generated rows in `division`, in the order the set pages them (by ID).
    /// `entity_set` is the path after the division: `crm/Accounts`, `bulk/CRM/Accounts`,
    /// `financialtransaction/TransactionLines` or `bulk/Financial/TransactionLines`. Unknown sets: empty.
    pub fn dataset_ids(&self, division: i64, entity_set: &str) -> Vec<String> {
        self.shared.lock().dataset_ids(division, entity_set)
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

    /// Switches the sign-in the authorize URL leads to (sign-ins under way keep going).
    pub fn set_sign_in(&self, mode: SignIn) {
        self.shared.lock().sign_in.mode = mode;
    }

    /// Sets how `username`'s B2C sign-ins go from now on.
    pub fn set_sign_in_behaviour(&self, username: &str, behaviour: SignInBehaviour) {
        self.shared.lock().sign_in.set_behaviour(username, behaviour);
    }

    /// The code the simulated Exact Online last "sent by e-mail" to `username` ([`SignInOutcome::EmailCode`]):
    /// what a person would read in their mailbox.
    pub fn email_code(&self, username: &str) -> Option<String> {
        self.shared.lock().sign_in.email_code(username)
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
