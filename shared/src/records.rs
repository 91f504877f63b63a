//! What chainkeeper stores, and under which keys. One place, so a reader sees the whole data model: every key
//! format of the store is built here and nowhere else.
//!
//! | item | pk | sk |
//! | --- | --- | --- |
//! | organisation (a tombstone once deleted; its webhook URL and secret sealed) | `org#{org}` | `meta` |
//! | list of organisations | `orgs` | `{org}` |
//! | organisation key (embedded `Keys` adapter) | `org#{org}` | `orgkey` |
//! | database | `org#{org}` | `db#{db}` |
//! | container | `org#{org}` | `ctr#{db}#{alias}` |
//! | API token (metadata, never the token) | `org#{org}` | `apitoken#{id}` |
//! | platform API token (metadata) | `platform` | `apitoken#{id}` |
//! | token issued through another | `issued-by#{issuer id}` | `{org or -}#{id}` (expires with the token) |
//! | chain | `chain#{org}#{db}#{alias}` | `chain` (index `Due`: `due#{shard}` / next due time; index `Repair`: `repair#{org}` / `{db}#{alias}`) |
//! | rescued refresh token | `chain#{org}#{db}#{alias}` | `rescue#{time}#{id}` |
//! | last use of a chain | `chain#{org}#{db}#{alias}` | `usage` |
//! | auto-recovery credentials | `chain#{org}#{db}#{alias}` | `recovery` (expires; index `Due`: `recovery-expiry` / warning time `#` chain pk) |
//! | pending authorization | `authz#{state}` | `authz` (expires) |
//! | single-instance identifier | `ident#{client_id}#{user_id}` | `ident` |
//! | revoked API token | `revoked#{id}` | `revoked` (expires with the token) |
//! | audit entry | `audit#{org}` | `{time}#{id}` (expires after the retention) |
//! | provider call budget (rate-limit governor) | `budget#{provider}#{company}` | `budget` (expires after its day) |
//! | console session (sha256 of its cookie's id, never the id) | `console-session#{sha256}` | `session` (expires: idle or absolute, whichever is first) |
//! | console sign-in link (sha256 of its token) | `console-link#{sha256}` | `link` (expires; kept once used, marked used) |
//! | console OIDC sign-in in progress | `console-oidc#{state}` | `oidc` (expires) |
//! | layout of the `Due` index: highest shard count, legacy `due` partition emptied | `due-shards` | `meta` |
//! | cached provider answer (profiles with `cache_in_store`), sealed | `answer#{org}#{db}#{alias}` | sha256 of its cache key (expires after the cache time) |

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::clock::Millis;
use crate::ids::{ContainerRef, DbName, OrgId};
use crate::store::{IndexKey, Item, Key, StoreError};

// --- organisations and what they hold (partition `org#{org}`) ---

pub const ORG_LIST_PK: &str = "orgs";
pub fn org_list_key(org: &OrgId) -> Key {
    Key::new(ORG_LIST_PK, org.as_str())
}
/// The partition of an organisation: its record, databases, containers and API tokens.
pub fn org_pk(org: &OrgId) -> String {
    format!("org#{org}")
}
pub fn org_key(org: &OrgId) -> Key {
    Key::new(org_pk(org), "meta")
}
/// The organisation's key item of the embedded `Keys` adapter (the `Keys` port names organisations by text).
pub fn org_wrapped_key_key(org: &str) -> Key {
    Key::new(format!("org#{org}"), "orgkey")
}
pub const DATABASES_PREFIX: &str = "db#";
pub fn db_key(org: &OrgId, db: &DbName) -> Key {
    Key::new(org_pk(org), format!("{DATABASES_PREFIX}{db}"))
}
pub fn container_key(c: &ContainerRef) -> Key {
    Key::new(org_pk(&c.org), format!("ctr#{}#{}", c.db, c.alias))
}
pub fn containers_of_db_prefix(db: &DbName) -> String {
    format!("ctr#{db}#")
}
pub const API_TOKENS_PREFIX: &str = "apitoken#";
pub fn api_token_key(org: &OrgId, id: &str) -> Key {
    Key::new(org_pk(org), format!("{API_TOKENS_PREFIX}{id}"))
}
/// The partition of platform API tokens (not limited to one organisation), issued by the operator.
pub const PLATFORM_PK: &str = "platform";
/// A token's record: under its organisation, or under [`PLATFORM_PK`] for a platform token.
pub fn any_api_token_key(org: Option<&OrgId>, id: &str) -> Key {
    match org {
        Some(org) => api_token_key(org, id),
        None => Key::new(PLATFORM_PK, format!("{API_TOKENS_PREFIX}{id}")),
    }
}
/// The tokens issued through token `issuer`: one item each, sk `{org or -}#{id}`.
pub fn issued_by_pk(issuer: &str) -> String {
    format!("issued-by#{issuer}")
}
pub fn issued_by_key(issuer: &str, org: Option<&OrgId>, id: &str) -> Key {
    Key::new(issued_by_pk(issuer), format!("{}#{id}", org.map_or("-", OrgId::as_str)))
}
/// The organisation (`None`: platform) and id of an [`issued_by_key`] sk.
pub fn parse_issued_by_sk(sk: &str) -> Option<(Option<OrgId>, String)> {
    let (org, id) = sk.split_once('#')?;
    let org = if org == "-" { None } else { Some(OrgId::parse(org).ok()?) };
    Some((org, id.to_string()))
}
/// A revoked API token (by its id), kept until the token would have expired anyway.
pub fn revoked_key(jti: &str) -> Key {
    Key::new(format!("revoked#{jti}"), "revoked")
}

// --- chains and what is kept beside them (partition `chain#{org}#{db}#{alias}`) ---

pub fn chain_pk(c: &ContainerRef) -> String {
    format!("chain#{}#{}#{}", c.org, c.db, c.alias)
}
/// The container of a chain partition key `chain#{org}#{db}#{alias}`.
pub fn container_of_chain_pk(pk: &str) -> Option<ContainerRef> {
    let mut parts = pk.strip_prefix("chain#")?.split('#');
    let c = ContainerRef::parse(parts.next()?, parts.next()?, parts.next()?)?;
    parts.next().is_none().then_some(c)
}
pub fn chain_key(c: &ContainerRef) -> Key {
    Key::new(chain_pk(c), "chain")
}
pub fn usage_key(c: &ContainerRef) -> Key {
    Key::new(chain_pk(c), "usage")
}
pub const RESCUE_PREFIX: &str = "rescue#";
/// A rescued refresh token received at `at` (newest sorts last).
pub fn rescue_key(c: &ContainerRef, at: Millis, id: &str) -> Key {
    Key::new(chain_pk(c), format!("{RESCUE_PREFIX}{}#{id}", time_sk(at)))
}
/// The budget of calls of chainkeeper's app registration at `provider` for one company (Exact: a division),
/// shared by every process (`app::governor`).
pub fn budget_key(provider: &str, company: &str) -> Key {
    Key::new(format!("budget#{provider}#{company}"), "budget")
}
pub fn recovery_key(c: &ContainerRef) -> Key {
    Key::new(chain_pk(c), "recovery")
}
/// A provider answer kept in the store for the profile's cache time (`cache_in_store`), by the SHA-256 (hex) of
/// its cache key: in a partition of its own, so cached answers never weigh on the chain's.
pub fn stored_answer_key(c: &ContainerRef, cache_key_sha256: &str) -> Key {
    Key::new(format!("answer#{}#{}#{}", c.org, c.db, c.alias), cache_key_sha256)
}

// --- the two indexes ---

/// Index `Due`: chains by the time they are next due for a refresh, spread over `engine.due_shards` partitions
/// `due#0` … `due#{N-1}` (DynamoDB takes about 1,000 writes a second per index partition value; every refresh
/// rewrites the chain's entry). The shard is a stable hash of the chain's partition key, so a chain always lands
/// in the same shard and a rewrite replaces its entry.
pub fn due_index_key(c: &ContainerRef, at: Millis, shards: u32) -> IndexKey {
    IndexKey { pk: due_shard_pk(due_shard_of(c, shards)), sk: time_sk(at) }
}
pub fn due_shard_of(c: &ContainerRef, shards: u32) -> u32 {
    crate::store::shard_of(&chain_pk(c), shards)
}
pub fn due_shard_pk(shard: u32) -> String {
    format!("due#{shard}")
}
/// The one unsharded `Due` partition of versions before the shards. The sweep reads it until
/// `chainkeeper migrate due-shards` has emptied it; every refresh moves a chain out of it meanwhile.
pub const LEGACY_DUE_PK: &str = "due";
/// How the `Due` index is laid out now (`DueShardsRecord`).
pub fn due_shards_key() -> Key {
    Key::new("due-shards", "meta")
}
/// Written by the sweep and by `migrate due-shards`: the highest shard count any process may have written with
/// (the sweep reads every shard below it, so lowering `engine.due_shards` loses nothing), and whether the legacy
/// partition has been emptied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueShardsRecord {
    pub highest_shards: u32,
    #[serde(default)]
    pub legacy_drained: bool,
}
/// Index `Due`, second partition: auto-recovery credentials by the time their expiry is announced.
pub const RECOVERY_EXPIRY_PK: &str = "recovery-expiry";
pub fn recovery_expiry_index_key(c: &ContainerRef, warn_at: Millis) -> IndexKey {
    IndexKey { pk: RECOVERY_EXPIRY_PK.into(), sk: format!("{}#{}", time_sk(warn_at), chain_pk(c)) }
}
/// Index `Repair`: an organisation's chains that need a person.
pub fn repair_index_pk(org: &OrgId) -> String {
    format!("repair#{org}")
}
pub fn repair_index_key(c: &ContainerRef) -> IndexKey {
    IndexKey { pk: repair_index_pk(&c.org), sk: format!("{}#{}", c.db, c.alias) }
}

// --- authorizations, identifiers, audit ---

pub fn authz_key(state: &str) -> Key {
    Key::new(format!("authz#{state}"), "authz")
}
/// The single-instance authentication identifier: one app (`client_id`) and one provider user.
pub fn single_instance_id(client_id: &str, user_id: &str) -> String {
    format!("{client_id}#{user_id}")
}
pub fn ident_key(single_instance_id: &str) -> Key {
    Key::new(format!("ident#{single_instance_id}"), "ident")
}
pub fn audit_pk(org: &OrgId) -> String {
    format!("audit#{org}")
}
/// An audit entry written at `at` (text order is time order).
pub fn audit_key(org: &OrgId, at: Millis, id: &str) -> Key {
    Key::new(audit_pk(org), format!("{}#{id}", time_sk(at)))
}
/// Sort-key text of a time: fixed width so text order is time order.
pub fn time_sk(ms: Millis) -> String {
    format!("{:015}", ms.max(0))
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

pub fn decode<T: DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    serde_json::from_slice(&item.body)
        .map_err(|e| StoreError::Unavailable(anyhow::anyhow!("unreadable item {}/{}: {e}", item.key.pk, item.key.sk)))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrgRecord {
    pub name: OrgId,
    pub display_name: Option<String>,
    pub created_at_ms: Millis,
    /// The webhook URL as views show it (masked: scheme, host and port). Before the URL was sealed, the URL itself.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The webhook URL (a secret of the receiver's), sealed with the organisation's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_webhook_url: Option<String>,
    /// The HMAC key that signs webhook events, sealed with the organisation's key.
    #[serde(default)]
    pub sealed_webhook_secret: Option<String>,
    /// The event types the webhook receives ([`crate::app::webhooks::EVENT_TYPES`]); `None`: every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_events: Option<Vec<String>>,
    /// Whether tokens with the `credentials.reveal` scope may read stored passwords and API tokens
    /// (`GET …/credentials/reveal`). Off unless the organisation turns it on.
    #[serde(default)]
    pub allow_credential_reveal: bool,
    /// Set when the organisation was deleted. The record stays as a tombstone so that its name is never given
    /// to another organisation: tokens issued for the old one, and its audit trail, can never reach a newcomer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_ms: Option<Millis>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DbRecord {
    pub name: DbName,
    pub description: Option<String>,
    pub created_at_ms: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    Password,
    ApiToken,
    Oauth2Code,
    Oauth2ClientCredentials,
    Oauth2Password,
}

impl CredentialKind {
    pub fn uses_provider(self) -> bool {
        matches!(self, Self::Oauth2Code | Self::Oauth2ClientCredentials | Self::Oauth2Password)
    }
    /// Whether its tokens come from the provider's app registration (`[apps.<provider>]`): the authorization code
    /// and password grants. Client credentials use the container's own client.
    pub fn uses_app_registration(self) -> bool {
        matches!(self, Self::Oauth2Code | Self::Oauth2Password)
    }
}

/// The identity an authorization signed in as.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityInfo {
    pub user_id: String,
    pub user_name: Option<String>,
    /// `client_id#user_id`, where the provider allows one active authorization per app and user.
    pub single_instance_id: Option<String>,
    pub authorized_at_ms: Millis,
}

/// A data container. Fields named `sealed_*` hold ciphertexts from the `Vault`; nothing here is plaintext secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub container: ContainerRef,
    pub kind: CredentialKind,
    pub provider: Option<String>,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub sealed_password: Option<String>,
    #[serde(default)]
    pub sealed_api_token: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub sealed_client_secret: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub identity: Option<IdentityInfo>,
}

impl ContainerRecord {
    /// Whether any secret credential is stored (a password, an API token or a client secret).
    pub fn has_credentials(&self) -> bool {
        self.sealed_password.is_some() || self.sealed_api_token.is_some() || self.sealed_client_secret.is_some()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainStatus {
    Healthy,
    NeedsRepair,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub until_ms: Millis,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChainErrorInfo {
    pub code: String,
    pub at_ms: Millis,
    /// The provider's own words (never a token).
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: Millis,
    pub status: ChainStatus,
    pub code: String,
}

/// The live token state of an `oauth2_code` container (also used for client-credentials and password grants,
/// which simply have no refresh token to keep).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChainRecord {
    pub provider: String,
    pub status: ChainStatus,
    /// Grows by one with every new authorization; rescued tokens of another generation are ignored.
    pub generation: u64,
    /// For client-credentials and password containers: the grant that gets a new token (no refresh token).
    #[serde(default)]
    pub grant: Option<CredentialKind>,
    pub sealed_refresh_token: Option<String>,
    pub sealed_access_token: Option<String>,
    pub access_expires_at_ms: Option<Millis>,
    /// When chainkeeper last asked the provider for a token (the provider's minimum interval counts from here).
    pub last_token_request_at_ms: Option<Millis>,
    /// When the current refresh token was received.
    pub refresh_token_issued_at_ms: Option<Millis>,
    /// A token request may have been sent and its outcome is not recorded (crash or lost answer).
    #[serde(default)]
    pub pending_request_at_ms: Option<Millis>,
    #[serde(default)]
    pub lease: Option<Lease>,
    #[serde(default)]
    pub backoff_until_ms: Option<Millis>,
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_error: Option<ChainErrorInfo>,
    #[serde(default)]
    pub history: Vec<Transition>,
    #[serde(default)]
    pub last_refresh_at_ms: Option<Millis>,
    #[serde(default)]
    pub refresh_count: u64,
}

impl ChainRecord {
    /// A healthy chain with no tokens yet, of `generation` (1 for a container's first); `grant` for the token cache
    /// of a client-credentials or password container.
    pub fn new(provider: &str, generation: u64, grant: Option<CredentialKind>) -> Self {
        Self {
            provider: provider.to_string(),
            status: ChainStatus::Healthy,
            generation,
            grant,
            sealed_refresh_token: None,
            sealed_access_token: None,
            access_expires_at_ms: None,
            last_token_request_at_ms: None,
            refresh_token_issued_at_ms: None,
            pending_request_at_ms: None,
            lease: None,
            backoff_until_ms: None,
            failures: 0,
            last_error: None,
            history: Vec::new(),
            last_refresh_at_ms: None,
            refresh_count: 0,
        }
    }
}

/// A refresh token received but not written to its chain (the write lost its lease): the next holder tries it first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RescueRecord {
    pub generation: u64,
    pub sealed_refresh_token: String,
    pub sealed_access_token: String,
    pub access_expires_at_ms: Millis,
    pub received_at_ms: Millis,
}

/// Calls made in the current minute and day (fixed windows on the clock, as Exact counts), and a time before
/// which the provider said no call may go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRecord {
    pub minute_start_ms: Millis,
    pub minute_calls: u32,
    pub day_start_ms: Millis,
    pub day_calls: u32,
    #[serde(default)]
    pub blocked_until_ms: Millis,
}

/// A provider answer of the query proxy's cache, sealed with the organisation's key (the provider's data is the
/// organisation's): its cache key, status and headers, then its body (`app::stored_answers`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredAnswerRecord {
    pub stored_at_ms: Millis,
    pub sealed_answer: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsageRecord {
    pub last_used_at_ms: Millis,
}

// --- the web console ---

pub fn console_session_key(id_sha256: &str) -> Key {
    Key::new(format!("console-session#{id_sha256}"), "session")
}
pub fn console_link_key(token_sha256: &str) -> Key {
    Key::new(format!("console-link#{token_sha256}"), "link")
}
pub fn console_oidc_key(state: &str) -> Key {
    Key::new(format!("console-oidc#{state}"), "oidc")
}

/// A signed-in person's console session: what it may do (like an API token's claims) and its CSRF token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsoleSessionRecord {
    /// Who signed in (`link:{subject}` or the IdP's `iss`-scoped subject and name).
    pub sub: String,
    /// A name to show.
    pub name: String,
    /// `None`: a platform session.
    pub org: Option<String>,
    pub scopes: Vec<String>,
    pub csrf: String,
    pub created_at_ms: Millis,
    pub last_seen_ms: Millis,
}

/// A single-use console sign-in link.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsoleLinkRecord {
    pub sub: String,
    pub org: Option<String>,
    pub scopes: Vec<String>,
    pub expires_at_ms: Millis,
    #[serde(default)]
    pub used_at_ms: Option<Millis>,
}

/// An OIDC sign-in between the redirect to the IdP and its callback (keyed by `state`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsoleOidcRecord {
    pub nonce: String,
    /// The PKCE verifier. Kept plain: it expires in minutes and is of no use without the code the IdP gives the
    /// browser and the client secret.
    pub pkce_verifier: String,
    pub expires_at_ms: Millis,
}

/// A pending authorization (`state`), single use, expiring.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthzRecord {
    pub container: ContainerRef,
    pub provider: String,
    pub sealed_pkce_verifier: Option<String>,
    pub redirect_uri: String,
    pub started_by: String,
    /// The starter asked to change the container's provider user: completing as another user than the
    /// container's current one is allowed (without it, refused: `different_provider_user`).
    #[serde(default)]
    pub replace_user: bool,
    pub created_at_ms: Millis,
    pub expires_at_ms: Millis,
}

/// The holder of a single-instance identifier.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentRecord {
    pub container: ContainerRef,
    pub since_ms: Millis,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at_ms: Millis,
    pub actor: String,
    pub action: String,
    pub container: Option<String>,
    pub outcome: String,
    #[serde(default)]
    pub detail: Option<String>,
}

/// An API token's metadata (never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub issued_by: String,
    /// The id of the token it was issued with (`None`: issued by the operator, `chainkeeper token issue`).
    /// Revoking that token revokes this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_id: Option<String>,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
}

/// Auto-recovery credentials of a container (all sealed with the organisation's key).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryRecord {
    pub sealed_username: String,
    pub sealed_password: String,
    #[serde(default)]
    pub sealed_totp: Option<String>,
    pub retention_days: u32,
    pub created_at_ms: Millis,
    pub expires_at_ms: Millis,
    #[serde(default)]
    pub expiry_notified: bool,
    #[serde(default)]
    pub attempts_ms: Vec<Millis>,
    /// Set when retries stopped for good (wrong credentials, wrong identity): only new credentials restart them.
    #[serde(default)]
    pub stopped: Option<String>,
    /// After a passing failure: no scheduled or event-started attempt before this.
    #[serde(default)]
    pub retry_at_ms: Option<Millis>,
}
