//! Configuration: one TOML file (`--config` / `CHAINKEEPER_CONFIG`). Provider profiles are data: the built-in
//! ones (`shared/providers.toml`) are merged key by key with the file's `[providers.*]` tables, then
//! `extends` is resolved. App registrations (`[apps.<profile>]`, [`AppRegistration`]) are the embedded `Secrets`
//! source.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::provider::{AppRegistration, ProviderProfile};

const BUILT_IN_PROVIDERS: &str = include_str!("../providers.toml");

/// Tuning of the chain engine; the defaults suit every built-in provider.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Refresh when the access token has less than this left.
    pub refresh_margin_s: f64,
    /// How long a lease on a chain lasts; a crashed holder's lease frees itself after this.
    pub lease_s: f64,
    /// Timeout of one token request (well below `lease_s`).
    pub token_timeout_s: f64,
    /// How long a caller waits for another caller's refresh before giving up.
    pub wait_s: f64,
    /// First backoff after a transient provider failure; doubles per failure up to `max_backoff_s`.
    pub backoff_s: f64,
    pub max_backoff_s: f64,
    /// How long the lease holder keeps retrying a transient provider failure (not sent, refused connection,
    /// 502/503/504, 429 with a `Retry-After` that fits) before its callers get `503` with `Retry-After`.
    pub retry_budget_s: f64,
    /// The first pause between two such retries; it doubles per retry, with jitter.
    pub retry_first_s: f64,
    /// How often `serve` sweeps for chains to keep alive (the `refresh` Lambda runs on EventBridge instead).
    pub sweep_interval_s: f64,
    /// How many chains one sweep refreshes at once.
    pub sweep_concurrency: usize,
    /// Partitions of the `Due` index (`due#0` … `due#{N-1}`), 1 to 1024. DynamoDB takes about 1,000 writes a
    /// second per index partition value, and every refresh writes its entry (6 WCU for a 1.2 KB chain, `ALL`
    /// projection). The sweep's refreshes come in bursts: with the template's 20 workers, a day of a million chains
    /// peaks at 1,008 WCU on one of 16 shards, 600 on one of 32 and 372 on one of 64 (`chainkeeper-bench scale`),
    /// so 64, while a sweep's 2 reads per shard stay cheap (also for SQLite). Raising it takes effect at once; after lowering it the sweep keeps reading the old
    /// shards until `chainkeeper migrate due-shards` has moved their chains.
    pub due_shards: u32,
    /// Chains per message on the sweep queue (AWS): one `refresh` worker refreshes them `sweep_concurrency` at
    /// once, well within its timeout (each refresh is bounded by `token_timeout_s` plus the retry budget).
    pub sweep_batch: usize,
    /// At most this many chains per scheduled sweep, shared fairly among the shards; the rest stay due for the
    /// next one (and show in `SweepBacklog`). In AWS the schedule only reads their keys and queues them.
    pub sweep_limit: usize,
    /// A chain whose token was handed out in this window counts as "in active use" and is refreshed ahead.
    pub active_use_window_s: f64,
    /// Keep-alive: refresh a chain this long before its refresh token would expire unused.
    pub keep_alive_margin_s: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            refresh_margin_s: 60.0,
            lease_s: 30.0,
            token_timeout_s: 10.0,
            wait_s: 20.0,
            backoff_s: 5.0,
            max_backoff_s: 300.0,
            retry_budget_s: 3.0,
            retry_first_s: 0.1,
            sweep_interval_s: 30.0,
            sweep_concurrency: 64,
            due_shards: 64,
            sweep_batch: 50,
            sweep_limit: 10_000,
            active_use_window_s: 900.0,
            keep_alive_margin_s: 86_400.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address where people and tools reach chainkeeper; renew links and the default redirect URI use it.
    pub public_url: Option<String>,
    /// How long an authorization started with `…/authorize` may take.
    pub authorization_ttl_s: u64,
    /// Days an audit entry is kept.
    pub audit_retention_days: u64,
    /// Hosts besides loopback where auto-recovery's login driver may send credentials over plain `http` (tests).
    pub login_allow_http_hosts: Vec<String>,
    /// Replaced by `[webhooks]` (named hosts instead of every private address): refused with a pointer there.
    webhook_allow_private_networks: Option<bool>,
}

/// Where webhooks may go (`[webhooks]`). By default: `https` to public addresses only.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Hosts (as written in the URL: a name or an address) that webhooks may reach over plain `http`.
    pub allow_http_hosts: Vec<String>,
    /// Hosts that may be (or resolve to) loopback, private, link-local, unique-local or CGNAT addresses: tests
    /// and closed networks. Metadata, multicast and reserved addresses stay refused.
    pub allow_private_hosts: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            authorization_ttl_s: 600,
            audit_retention_days: 400,
            login_allow_http_hosts: Vec::new(),
            webhook_allow_private_networks: None,
        }
    }
}

/// Limits that keep one client from taking the service down (`[limits]`). Every value has a default that suits a
/// single `serve` and a Lambda function alike; `0` turns a limit off where its doc says so.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `serve`: a connection that has not sent a request's complete headers within this is closed (slow loris).
    pub header_read_timeout_s: f64,
    /// A request whose answer has not begun within this gets `503 request_timeout` (a streamed proxy answer
    /// that has begun is not cut). Above the query proxy's 60 s wait for the platform.
    pub request_timeout_s: f64,
    /// Requests served at once by one process; more get `503 overloaded` at once, with `Retry-After`. 0: no cap.
    pub max_concurrent_requests: usize,
    /// Largest body of a JSON route, in bytes (`413 body_too_large` above).
    pub json_body_bytes: usize,
    /// Largest body the query proxy forwards, in bytes.
    pub proxy_body_bytes: usize,
    /// Bytes of platform answers the query proxy's cache holds per process (oldest entries go first).
    pub proxy_cache_bytes: usize,
    /// Largest single answer the proxy caches, in bytes.
    pub proxy_cache_entry_bytes: usize,
    /// Requests per second one API token may make, sustained (a token bucket per token id, per process);
    /// above it `429 rate_limited` with `Retry-After`. 0: no per-token limit.
    pub token_requests_per_s: f64,
    /// Requests one API token may make in a burst above the sustained rate.
    pub token_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_s: 10.0,
            request_timeout_s: 120.0,
            max_concurrent_requests: 1024,
            json_body_bytes: 64 * 1024,
            proxy_body_bytes: 10 * 1024 * 1024,
            proxy_cache_bytes: 64 * 1024 * 1024,
            proxy_cache_entry_bytes: 1024 * 1024,
            token_requests_per_s: 200.0,
            token_burst: 400,
        }
    }
}

/// The web console (`[console]`): session lifetimes, and the OpenID Connect sign-in of a deployment. The OIDC
/// client's id and secret are an app registration named [`CONSOLE_APP`] (`[apps.console]` in the config file's
/// secrets, a Secrets Manager secret in AWS), like every other client secret.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// A session ends after this long without a request.
    pub session_idle_s: u64,
    /// A session ends this long after sign-in, however busy.
    pub session_absolute_s: u64,
    /// The OpenID Connect issuer (its `/.well-known/openid-configuration` is read); no OIDC sign-in without it.
    pub issuer: Option<String>,
    /// The ID-token claim that lists the person's groups or roles (`groups`, `roles`, …).
    pub groups_claim: String,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// Which group (a value of `groups_claim`) gives which organisation (or the platform) which scopes.
    pub groups: Vec<ConsoleGroup>,
}

/// One `[[console.groups]]` row: people in group `value` get `scopes` (scopes or scope groups) on `org`, or on the
/// platform with `platform = true`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleGroup {
    pub value: String,
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default)]
    pub platform: bool,
    pub scopes: Vec<String>,
}

/// The app registration that holds the console's OIDC client (id, secret, redirect URI).
pub const CONSOLE_APP: &str = "console";

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            session_idle_s: 8 * 3600,
            session_absolute_s: 12 * 3600,
            issuer: None,
            groups_claim: "groups".into(),
            scopes: vec!["profile".into(), "email".into()],
            groups: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub providers: BTreeMap<String, ProviderProfile>,
    pub apps: BTreeMap<String, AppRegistration>,
    pub engine: EngineConfig,
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub webhooks: WebhookConfig,
    pub console: ConsoleConfig,
    /// Group scopes defined by the operator: name → the scopes it grants.
    pub scope_groups: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    providers: toml::Table,
    #[serde(default)]
    apps: BTreeMap<String, AppRegistration>,
    #[serde(default)]
    engine: EngineConfig,
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    webhooks: WebhookConfig,
    #[serde(default)]
    console: ConsoleConfig,
    #[serde(default)]
    scope_groups: BTreeMap<String, Vec<String>>,
}

impl Config {
    /// Built-in profiles only, default settings.
    pub fn built_in() -> Self {
        Self::from_toml("").expect("built-in providers parse")
    }

    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            None => Ok(Self::built_in()),
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
                Self::from_toml(&text).with_context(|| format!("in config {}", p.display()))
            }
        }
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let raw: RawConfig = toml::from_str(text)?;
        if raw.server.webhook_allow_private_networks.is_some() {
            bail!(
                "server.webhook_allow_private_networks was replaced by [webhooks] allow_http_hosts and \
                 allow_private_hosts, which name the hosts (e.g. allow_private_hosts = [\"127.0.0.1\"])"
            );
        }
        let built_in: RawConfig = toml::from_str(BUILT_IN_PROVIDERS).context("built-in providers.toml")?;
        let mut tables = built_in.providers;
        for (name, value) in raw.providers {
            let Some(overlay) = value.as_table() else { bail!("providers.{name} must be a table") };
            match tables.get_mut(&name).and_then(|v| v.as_table_mut()) {
                Some(base) => merge(base, overlay),
                None => {
                    tables.insert(name, value);
                }
            }
        }
        let mut providers = BTreeMap::new();
        for name in tables.keys() {
            let resolved = resolve_extends(&tables, name, 0)?;
            if resolved.get("abstract").and_then(|v| v.as_bool()).unwrap_or(false) {
                continue;
            }
            let mut profile: ProviderProfile =
                toml::Value::Table(resolved).try_into().with_context(|| format!("provider profile {name:?}"))?;
            profile.name = name.clone();
            profile.validate()?;
            providers.insert(name.clone(), profile);
        }
        for app in raw.apps.keys() {
            if !providers.contains_key(app) && app != CONSOLE_APP {
                bail!(
                    "[apps.{app}] names no provider profile; known: {}",
                    providers.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        let engine = &raw.engine;
        if !(engine.retry_budget_s >= 0.0 && engine.retry_first_s > 0.0) {
            bail!("engine: retry_budget_s must not be negative and retry_first_s must be above 0");
        }
        if engine.retry_budget_s + engine.token_timeout_s >= engine.lease_s {
            bail!("engine: retry_budget_s + token_timeout_s must stay below lease_s (the lease covers the retries)");
        }
        let console = &raw.console;
        if console.session_idle_s == 0 || console.session_absolute_s < console.session_idle_s {
            bail!("console: session_idle_s must be above 0 and session_absolute_s at least session_idle_s");
        }
        for g in &console.groups {
            if g.platform == g.org.is_some() || g.scopes.is_empty() {
                bail!("console.groups {:?}: give either org or platform = true, and at least one scope", g.value);
            }
        }
        if !(1..=1024).contains(&engine.due_shards) {
            bail!("engine: due_shards must be between 1 and 1024");
        }
        if !(1..=1000).contains(&engine.sweep_batch) {
            bail!("engine: sweep_batch must be between 1 and 1000 (an SQS message holds up to 256 KB)");
        }
        if !(1..=1_000_000).contains(&engine.sweep_limit) {
            bail!("engine: sweep_limit must be between 1 and 1000000");
        }
        let limits = raw.limits;
        if !(limits.header_read_timeout_s > 0.0 && limits.request_timeout_s > 0.0) {
            bail!("limits: header_read_timeout_s and request_timeout_s must be above 0");
        }
        if limits.token_requests_per_s < 0.0 || limits.json_body_bytes == 0 || limits.proxy_body_bytes == 0 {
            bail!("limits: token_requests_per_s must not be negative, body limits must be above 0");
        }
        Ok(Self {
            providers,
            apps: raw.apps,
            engine: raw.engine,
            server: raw.server,
            limits,
            webhooks: raw.webhooks,
            console: raw.console,
            scope_groups: raw.scope_groups,
        })
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderProfile> {
        self.providers.get(name)
    }
}

/// Key-by-key merge: nested tables merge, everything else is replaced.
fn merge(base: &mut toml::Table, overlay: &toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn resolve_extends(tables: &toml::Table, name: &str, depth: usize) -> anyhow::Result<toml::Table> {
    if depth > 8 {
        bail!("provider {name:?}: `extends` goes round in a circle");
    }
    let Some(own) = tables.get(name).and_then(|v| v.as_table()) else {
        bail!("provider {name:?} does not exist");
    };
    let mut own = own.clone();
    let Some(parent) = own.remove("extends") else { return Ok(own) };
    let parent = parent.as_str().with_context(|| format!("provider {name:?}: extends must be a name"))?;
    let mut base = resolve_extends(tables, parent, depth + 1)?;
    base.remove("abstract");
    merge(&mut base, &own);
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_cover_the_platforms() {
        let c = Config::built_in();
        for name in [
            "exact-online-nl",
            "exact-online-be",
            "exact-online-de",
            "exact-online-uk",
            "exact-online-us",
            "exact-online-fr",
            "exact-online-es",
            "twinfield",
            "teamleader",
            "salesforce",
        ] {
            assert!(c.provider(name).is_some(), "{name} is built in");
        }
        assert!(c.provider("exact-online").is_none(), "abstract profiles are not usable");
        let be = c.provider("exact-online-be").unwrap();
        assert_eq!(be.token_url, "https://start.exactonline.be/api/oauth2/token");
        assert_eq!(be.min_token_interval_s, 570.0);
        assert!(be.single_instance);
    }

    #[test]
    fn a_config_file_overrides_key_by_key_and_adds_profiles() {
        let c = Config::from_toml(
            r#"
            [providers.exact-online-nl]
            token_url = "http://127.0.0.1:9/api/oauth2/token"
            min_token_interval_s = 9.5
            [providers.my-idp]
            extends = "generic-oidc"
            authorize_url = "http://127.0.0.1:9/auth"
            token_url = "http://127.0.0.1:9/token"
            api_base_url = "http://127.0.0.1:9"
            token_auth = "post"
            [apps.my-idp]
            client_id = "c"
            client_secret = "s"
            redirect_uri = "http://127.0.0.1:8080/v1/callback"
            "#,
        )
        .unwrap();
        let nl = c.provider("exact-online-nl").unwrap();
        assert_eq!(nl.token_url, "http://127.0.0.1:9/api/oauth2/token");
        assert_eq!(nl.min_token_interval_s, 9.5);
        assert_eq!(nl.authorize_url, "https://start.exactonline.nl/api/oauth2/auth", "untouched keys stay");
        let mine = c.provider("my-idp").unwrap();
        assert_eq!(mine.identity.as_ref().unwrap().user_id, "/sub");
        assert_eq!(mine.token_auth, crate::provider::TokenAuth::Post);
        assert!(format!("{:?}", c.apps["my-idp"]).contains("[redacted]"));
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let e = Config::from_toml("[apps.nope]\nclient_id='a'\nclient_secret='b'\nredirect_uri='c'").unwrap_err();
        assert!(format!("{e:#}").contains("names no provider profile"));
        let e = Config::from_toml("[providers.x]\nextends='y'").unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"));
        assert!(Config::from_toml("[enginee]\nx=1").is_err());
        let e = Config::from_toml("[server]\nwebhook_allow_private_networks = true").unwrap_err();
        assert!(format!("{e:#}").contains("allow_private_hosts"), "{e:#}");
        let c = Config::from_toml("[webhooks]\nallow_http_hosts = ['127.0.0.1']\nallow_private_hosts = ['127.0.0.1']");
        assert_eq!(c.unwrap().webhooks.allow_private_hosts, ["127.0.0.1"]);
        let e = Config::from_toml("[engine]\nretry_budget_s = 25").unwrap_err();
        assert!(format!("{e:#}").contains("below lease_s"), "the lease must cover the retries: {e:#}");
        assert!(Config::from_toml("[engine]\nretry_first_s = 0").is_err());
        let c = Config::from_toml("[engine]\nretry_budget_s = 0").unwrap();
        assert_eq!((c.engine.retry_budget_s, Config::built_in().engine.retry_budget_s), (0.0, 3.0));
        assert_eq!((Config::built_in().engine.due_shards, Config::built_in().engine.sweep_batch), (64, 50));
        for bad in ["due_shards = 0", "due_shards = 1025", "sweep_batch = 0", "sweep_batch = 1001", "sweep_limit = 0"] {
            let e = Config::from_toml(&format!("[engine]\n{bad}")).unwrap_err();
            assert!(format!("{e:#}").contains("must be between"), "{bad}: {e:#}");
        }
        assert_eq!(Config::from_toml("[engine]\ndue_shards = 16").unwrap().engine.due_shards, 16);
        let exact = &Config::built_in().providers["exact-online-nl"];
        assert_eq!(exact.lost_response, crate::provider::LostResponse::RetryPrevious);
        let p = Config::from_toml("[providers.exact-online-nl]\nlost_response = 'needs_repair'").unwrap();
        assert_eq!(p.providers["exact-online-nl"].lost_response, crate::provider::LostResponse::NeedsRepair);
        assert!(Config::from_toml("[providers.exact-online-nl]\nlost_response = 'maybe'").is_err());
    }
}
