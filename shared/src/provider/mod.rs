//! A provider: its profile (everything chainkeeper needs to know about one OAuth2 platform, as data), its token
//! endpoint ([`oauth`]) and its sign-in pages ([`login`], the auto-recovery drivers).

pub mod credential_use;
pub mod login;
pub mod oauth;

pub use credential_use::CredentialUse;

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Deserialize;

/// An app registration at a provider (in AWS: a Secrets Manager secret).
#[derive(Clone, Deserialize)]
pub struct AppRegistration {
    pub client_id: String,
    pub client_secret: secrecy::SecretString,
    /// Where the provider sends the person back: chainkeeper's `/v1/callback`.
    pub redirect_uri: String,
}

impl std::fmt::Debug for AppRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRegistration")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAuth {
    /// HTTP Basic header with client id and secret (RFC 6749 2.3.1, preferred).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    /// One active refresh token per (app, user); every refresh and every new authorization kills the others.
    SingleActive,
    /// A new refresh token on every refresh; the old one dies.
    #[default]
    Rotating,
    /// The refresh token stays the same.
    Static,
}

/// What the provider does with the previous refresh token when a refresh was processed but its answer was lost
/// (a timeout after sending, a connection reset, a process that died before writing the answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostResponse {
    /// The previous refresh token may still work (Exact with the grace Invantive reports: usable until the new
    /// pair is used; and any request that was never processed): after the provider's minimum interval the engine
    /// refreshes with it once; `invalid_grant` then marks the chain `refresh_response_lost`.
    #[default]
    RetryPrevious,
    /// The previous refresh token is dead once a refresh was processed (and presenting it again may revoke the
    /// grant): the chain is marked `refresh_response_lost` at once, which starts auto-recovery where it is set.
    NeedsRepair,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Who-am-I endpoint; relative to `api_base_url` when it starts with "/".
    pub url: String,
    /// JSON pointer to the user id in its answer.
    pub user_id: String,
    /// JSON pointer to a display name.
    #[serde(default)]
    pub user_name: Option<String>,
    /// JSON pointer to the user's current company (Exact: `CurrentDivision`): what `{division}` in a query or
    /// OData path stands for.
    #[serde(default)]
    pub division: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderProfile {
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default, rename = "abstract")]
    pub is_abstract: bool,
    /// The OAuth2 endpoints (not needed by a profile for passwords and API tokens only: `credential_use`).
    #[serde(default)]
    pub authorize_url: String,
    #[serde(default)]
    pub token_url: String,
    /// For `password` and `api_token` containers: where the secret goes on a proxied request (see
    /// [`CredentialUse`]). Without it, those containers have no platform API to query.
    #[serde(default)]
    pub credential_use: Option<CredentialUse>,
    #[serde(default)]
    pub api_base_url: Option<String>,
    #[serde(default)]
    pub revocation_url: Option<String>,
    #[serde(default)]
    pub token_auth: TokenAuth,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "yes")]
    pub pkce: bool,
    /// Used when the provider's token response has no `expires_in`.
    #[serde(default = "one_hour")]
    pub access_token_lifetime_s: f64,
    /// The provider's minimum time between two token requests of one (app, user). Exact: 570.
    #[serde(default)]
    pub min_token_interval_s: f64,
    #[serde(default)]
    pub refresh_rotation: Rotation,
    /// What to do when a refresh's answer was lost: see [`LostResponse`].
    #[serde(default)]
    pub lost_response: LostResponse,
    /// A refresh token unused this long expires (Exact: 30 days). The sweep keeps chains alive before that.
    #[serde(default)]
    pub refresh_token_idle_expiry_s: Option<f64>,
    /// At most one container in all organisations may hold one `client_id#user_id` (Exact).
    #[serde(default)]
    pub single_instance: bool,
    #[serde(default)]
    pub identity: Option<Identity>,
    /// Called once with the new access token after every refresh (Exact: `current/Me`).
    #[serde(default)]
    pub activation_url: Option<String>,
    #[serde(default)]
    pub extra_authorize_params: BTreeMap<String, String>,
    /// More authorize parameters when a person explicitly signs in as another user ("Sign in as another user",
    /// `replace_user`): without them the provider's single sign-on signs the browser's current user in again
    /// without asking (Exact: `force_login = "1"`; OpenID Connect providers: `prompt = "login"`).
    #[serde(default)]
    pub switch_user_params: BTreeMap<String, String>,
    /// Response headers of the platform's API passed on by the query proxy.
    #[serde(default)]
    pub rate_limit_headers: Vec<String>,
    /// Seconds a GET through the query proxy may be served from cache (0 = never, the default).
    #[serde(default)]
    pub cache_ttl_s: f64,
    /// Seconds a GET through the OData feed may be served from cache (BI reads; default: `cache_ttl_s`).
    #[serde(default)]
    pub odata_cache_ttl_s: Option<f64>,
    /// Cached GET answers (of the feed and the proxy) are also kept in the store, sealed with the organisation's
    /// key, so every process and Lambda instance shares them (otherwise each keeps its own, in memory).
    #[serde(default)]
    pub cache_in_store: bool,
    /// The platform API's call limits per app and company, kept by the rate-limit governor (`app::governor`).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Which auto-recovery login driver signs in, and the hosts it may send credentials to.
    #[serde(default)]
    pub login: login::LoginProfile,
    /// How the `html_form` login driver fills the provider's login pages (field names, consent words).
    #[serde(default)]
    pub login_form: Option<toml::Table>,
}

/// A platform's call limits for one app registration and one company (Exact: 60 a minute and 5,000 a day per
/// division), as data.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Calls per clock minute.
    pub per_minute: u32,
    /// Calls per UTC day.
    pub per_day: u32,
    /// Which segment of the API path (0-based, after `api_base_url`) names the company; a call whose segment is
    /// not a number does not count (Exact: 1, the division in `v1/{division}/…`; `v1/current/Me` is free).
    pub company_segment: usize,
    /// Longest a reader queues for the next minute's calls before it gets `429` with `Retry-After`.
    #[serde(default = "default_max_wait")]
    pub max_wait_s: f64,
}

fn default_max_wait() -> f64 {
    25.0
}

impl RateLimit {
    /// The company a call to `path` (relative to the API) counts against, if any.
    pub fn company<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.split('/').nth(self.company_segment).filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
    }
}

fn yes() -> bool {
    true
}
fn one_hour() -> f64 {
    3600.0
}

impl ProviderProfile {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (what, u) in [("authorize_url", &self.authorize_url), ("token_url", &self.token_url)] {
            // A profile for passwords and API tokens only may leave the OAuth2 endpoints out.
            if u.is_empty() && self.credential_use.is_some() {
                continue;
            }
            if url::Url::parse(u).is_err() {
                bail!("{what} {u:?} is not an absolute URL");
            }
        }
        if self.min_token_interval_s < 0.0 || self.access_token_lifetime_s <= 0.0 {
            bail!("token times must be positive");
        }
        if let Some(u) = &self.credential_use {
            u.validate().map_err(|e| anyhow::anyhow!("provider {}: {e}", self.name))?;
        }
        Ok(())
    }

    /// An endpoint URL: absolute as given, or relative to `api_base_url`.
    pub fn endpoint(&self, url_or_path: &str) -> anyhow::Result<String> {
        if url_or_path.starts_with('/') {
            let Some(base) = &self.api_base_url else {
                bail!("provider {} has no api_base_url for {url_or_path}", self.name)
            };
            Ok(format!("{}{}", base.trim_end_matches('/'), url_or_path))
        } else {
            Ok(url_or_path.to_string())
        }
    }

    pub fn min_token_interval_ms(&self) -> i64 {
        (self.min_token_interval_s * 1000.0) as i64
    }
}

/// A request error's text with its causes ("connection refused", a certificate error), never its URL (whose query
/// may carry a login hint or a webhook's secret path). For the outbound clients: login drivers, webhooks.
pub fn request_error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
