//! Data containers and their credentials: create, show (status and a masked credential, never a secret), set
//! credentials, delete (tokens revoked at the provider first), and the repairs list of an organisation.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::chain::{ChainEngine, ChainError, RepairCode};
use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::ids::{Alias, ContainerRef, DbName, OrgId};
use crate::keys::{ContainerFields, Field, KeyError, Vault};
use crate::provider::CredentialUse;
use crate::records::*;
use crate::secrets::Secrets;
use crate::store::{Condition, Index, Put, Store, StoreError, Version, WriteOp};

use super::Ports;
use super::audit::AuditLog;
use super::lookup::{self, LookupError};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("a {kind:?} container needs a provider")]
    ProviderRequired { kind: CredentialKind, known: String },
    #[error("provider '{given}' is not known")]
    UnknownProvider { given: String, known: String },
    /// A profile that cannot serve the kind: a password or API-token container needs a `credential_use`, an
    /// OAuth2 container a `token_url`.
    #[error("provider '{provider}' cannot serve a {kind:?} container")]
    ProviderNotForKind { kind: CredentialKind, provider: String },
    #[error("{0} already exists")]
    Exists(ContainerRef),
    #[error("{0} uses an OAuth2 authorization, not stored credentials")]
    CredentialsNotSettable(ContainerRef),
    #[error("a {kind:?} container does not take `{field}`")]
    FieldNotAllowed { kind: CredentialKind, field: &'static str, allowed: &'static [&'static str] },
    #[error("no credential field given")]
    CredentialsEmpty { allowed: &'static [&'static str] },
    /// The organisation has not turned on `allow_credential_reveal`.
    #[error("organisation {0} does not allow revealing credentials")]
    RevealNotAllowed(OrgId),
    /// Only stored passwords and API tokens are revealed.
    #[error("a {kind:?} container has no password or API token to reveal")]
    NothingToReveal { kind: CredentialKind },
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The secret store could not be read (an app registration).
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A new container.
pub struct NewContainer {
    pub kind: CredentialKind,
    pub provider: Option<String>,
    pub scopes: Option<Vec<String>>,
}

/// Credentials to set; absent fields stay as they are.
#[derive(Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub api_token: Option<SecretString>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
}

/// The credential fields a container still needs before it can produce a credential (empty: complete). An
/// authorization (`oauth2_code`) is not a stored field: it is never missing here.
pub fn missing_credentials(rec: &ContainerRecord, credential_use: Option<&CredentialUse>) -> Vec<&'static str> {
    let needs_username = credential_use.is_some_and(CredentialUse::uses_username);
    let wanted: Vec<(&'static str, bool)> = match rec.kind {
        CredentialKind::Oauth2Code => vec![],
        CredentialKind::Oauth2ClientCredentials => {
            vec![("client_id", rec.client_id.is_some()), ("client_secret", rec.sealed_client_secret.is_some())]
        }
        CredentialKind::Oauth2Password => {
            vec![("username", rec.username.is_some()), ("password", rec.sealed_password.is_some())]
        }
        CredentialKind::Password => {
            vec![("username", rec.username.is_some() || !needs_username), ("password", rec.sealed_password.is_some())]
        }
        CredentialKind::ApiToken => {
            vec![("username", rec.username.is_some() || !needs_username), ("api_token", rec.sealed_api_token.is_some())]
        }
    };
    wanted.into_iter().filter(|(_, present)| !present).map(|(name, _)| name).collect()
}

/// What a container is doing, as people see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerStatus {
    /// An OAuth2 container that was never authorized.
    NotAuthorized,
    /// No credential stored yet.
    NotConfigured,
    /// Some credentials are stored, but not all the kind (and its profile) needs: see `missing`.
    CredentialsIncomplete,
    /// The kind's tokens come from the provider's app registration, and this deployment has none for it: no token
    /// can be obtained or refreshed until an operator adds `[apps.<provider>]` (in AWS: its secret).
    AppNotConfigured,
    Healthy,
    /// Someone holds the chain's lease right now.
    Refreshing,
    NeedsRepair,
}

impl ContainerStatus {
    /// `missing`: [`missing_credentials`] of the container; `has_app`: whether the deployment has an app
    /// registration for its provider (only asked of kinds that use one).
    pub fn of(
        rec: &ContainerRecord,
        chain: Option<&ChainRecord>,
        now: Millis,
        missing: &[&str],
        has_app: bool,
    ) -> Self {
        let nothing_stored = !rec.has_credentials() && rec.username.is_none() && rec.client_id.is_none();
        let status = Self::without_app_check(rec, chain, now, missing, nothing_stored);
        // A container never shows healthy (or "authorize me") while no token can be had for it.
        match status {
            Self::Healthy | Self::Refreshing | Self::NotAuthorized if !has_app => Self::AppNotConfigured,
            other => other,
        }
    }
    fn without_app_check(
        rec: &ContainerRecord,
        chain: Option<&ChainRecord>,
        now: Millis,
        missing: &[&str],
        nothing_stored: bool,
    ) -> Self {
        match chain {
            None if rec.kind == CredentialKind::Oauth2Code => Self::NotAuthorized,
            None if nothing_stored => Self::NotConfigured,
            None if !missing.is_empty() => Self::CredentialsIncomplete,
            None => Self::Healthy,
            Some(ch) if ch.status == ChainStatus::NeedsRepair => Self::NeedsRepair,
            Some(ch) if ch.lease.as_ref().is_some_and(|l| l.until_ms > now) => Self::Refreshing,
            Some(_) => Self::Healthy,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAuthorized => "not_authorized",
            Self::NotConfigured => "not_configured",
            Self::CredentialsIncomplete => "credentials_incomplete",
            Self::AppNotConfigured => "app_not_configured",
            Self::Healthy => "healthy",
            Self::Refreshing => "refreshing",
            Self::NeedsRepair => "needs_repair",
        }
    }
}

/// A container with its chain and its auto-recovery state (presence and expiry, never a value).
pub struct ContainerDetails {
    pub record: ContainerRecord,
    pub chain: Option<ChainRecord>,
    pub status: ContainerStatus,
    /// The credential fields still needed ([`missing_credentials`]).
    pub missing: Vec<&'static str>,
    /// `None` when the kind has no auto-recovery; `Some(None)` when none is stored.
    pub recovery: Option<Option<RecoveryRecord>>,
}

/// A container's stored secret, for the organisation's own tools (`…/credentials/reveal`).
pub struct Revealed {
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub api_token: Option<SecretString>,
}

/// One container that needs a person.
pub struct Repair {
    pub db: DbName,
    pub alias: Alias,
    pub code: RepairCode,
    pub broken_at_ms: Option<Millis>,
}

#[derive(Clone)]
pub struct Containers {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    secrets: Arc<dyn Secrets>,
    engine: Arc<ChainEngine>,
    audit: AuditLog,
}

impl Containers {
    pub fn new(p: &Ports, engine: Arc<ChainEngine>, audit: AuditLog) -> Self {
        let (store, vault, clock, config) = (p.store.clone(), p.vault.clone(), p.clock.clone(), p.config.clone());
        Self { store, vault, clock, config, secrets: p.secrets.clone(), engine, audit }
    }

    /// Creates a container in an existing database.
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn create(
        &self,
        actor: &str,
        c: &ContainerRef,
        new: NewContainer,
    ) -> Result<ContainerDetails, ContainerError> {
        lookup::database(&*self.store, &c.org, &c.db).await?;
        let provider = match (new.kind.uses_provider(), new.provider) {
            (true, None) => return Err(ContainerError::ProviderRequired { kind: new.kind, known: self.known() }),
            (false, None) => None,
            // A password or API-token container may name a profile: its `credential_use` lets the proxy use it.
            (oauth, Some(p)) => match self.config.provider(&p) {
                Some(profile)
                    if (oauth && profile.token_url.is_empty()) || (!oauth && profile.credential_use.is_none()) =>
                {
                    return Err(ContainerError::ProviderNotForKind { kind: new.kind, provider: profile.name.clone() });
                }
                Some(profile) => Some(profile.name.clone()),
                None => {
                    let given = p.chars().take(60).collect();
                    return Err(ContainerError::UnknownProvider { given, known: self.known() });
                }
            },
        };
        let scopes = new.scopes.unwrap_or_else(|| {
            provider.as_deref().and_then(|p| self.config.provider(p)).map(|p| p.scopes.clone()).unwrap_or_default()
        });
        let now = self.clock.now_ms();
        let rec = ContainerRecord {
            container: c.clone(),
            kind: new.kind,
            provider,
            created_at_ms: now,
            updated_at_ms: now,
            username: None,
            sealed_password: None,
            sealed_api_token: None,
            client_id: None,
            sealed_client_secret: None,
            scopes,
            identity: None,
        };
        match self.store.put(Put::new(container_key(c), encode(&rec), Condition::Absent)).await {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(ContainerError::Exists(c.clone())),
            Err(e) => return Err(e.into()),
        }
        self.audit.record(&c.org, actor, "container.create", Some(c), "ok", None).await;
        self.without_chain(rec).await
    }

    fn known(&self) -> String {
        self.config.providers.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// The profile's `credential_use`, for a container whose provider has one.
    fn credential_use(&self, rec: &ContainerRecord) -> Option<&CredentialUse> {
        rec.provider.as_deref().and_then(|p| self.config.provider(p)).and_then(|p| p.credential_use.as_ref())
    }

    fn missing(&self, rec: &ContainerRecord) -> Vec<&'static str> {
        missing_credentials(rec, self.credential_use(rec))
    }

    /// Whether the deployment has the app registration the container's kind needs (true when it needs none).
    async fn has_app(&self, rec: &ContainerRecord) -> Result<bool, ContainerError> {
        match (&rec.provider, rec.kind.uses_app_registration()) {
            (Some(provider), true) => Ok(self.secrets.app(provider).await?.is_some()),
            _ => Ok(true),
        }
    }

    async fn without_chain(&self, record: ContainerRecord) -> Result<ContainerDetails, ContainerError> {
        let missing = self.missing(&record);
        let has_app = self.has_app(&record).await?;
        let status = ContainerStatus::of(&record, None, self.clock.now_ms(), &missing, has_app);
        Ok(ContainerDetails { record, chain: None, status, missing, recovery: None })
    }

    /// A container with its chain and auto-recovery state.
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn details(&self, c: &ContainerRef) -> Result<ContainerDetails, ContainerError> {
        let (rec, _) = lookup::container(&*self.store, c).await?;
        self.with_chain(rec).await
    }

    async fn with_chain(&self, record: ContainerRecord) -> Result<ContainerDetails, ContainerError> {
        let chain = self.engine.chain(&record.container).await?.map(|(ch, _)| ch);
        let recovery = match record.kind {
            CredentialKind::Oauth2Code => {
                Some(lookup::recovery(&*self.store, &record.container).await?.map(|(r, _)| r))
            }
            _ => None,
        };
        let missing = self.missing(&record);
        let has_app = self.has_app(&record).await?;
        let status = ContainerStatus::of(&record, chain.as_ref(), self.clock.now_ms(), &missing, has_app);
        Ok(ContainerDetails { record, chain, status, missing, recovery })
    }

    /// Every container of a database.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn list(&self, org: &OrgId, db: &DbName) -> Result<Vec<ContainerDetails>, ContainerError> {
        lookup::database(&*self.store, org, db).await?;
        let items = self.store.query(&org_pk(org), &containers_of_db_prefix(db), 1000).await?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.with_chain(decode(&item)?).await?);
        }
        Ok(out)
    }

    /// Deletes a container: its tokens are revoked at the provider first (best effort: an unreachable provider
    /// does not keep the container alive), then the container, its identifier and its chain go. Returns whether
    /// the provider confirmed the revocation (`None`: nothing to revoke).
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn delete(&self, actor: &str, c: &ContainerRef) -> Result<Option<bool>, ContainerError> {
        let (rec, version) = lookup::container(&*self.store, c).await?;
        let revoked = self.engine.revoke_at_provider(c).await?;
        self.remove(&rec, version).await?;
        let detail = match revoked {
            Some(true) => Some("tokens revoked at the provider".to_string()),
            Some(false) => Some("revocation at the provider failed; the tokens expire on their own".to_string()),
            None => None,
        };
        self.audit.record(&c.org, actor, "container.delete", Some(c), "ok", detail).await;
        Ok(revoked)
    }

    /// Deletes a container's chain, then the container with its identifier registration. In that order, so that
    /// a failure in between leaves a container without a chain (deleting it again finishes the job), never a chain
    /// without a container (which the sweep would keep refreshing).
    pub(super) async fn remove(&self, rec: &ContainerRecord, version: Version) -> Result<(), ContainerError> {
        let c = &rec.container;
        self.engine.remove(c).await?;
        let mut ops = vec![WriteOp::Delete { key: container_key(c), condition: Condition::Version(version) }];
        if let Some(sid) = rec.identity.as_ref().and_then(|i| i.single_instance_id.as_ref())
            && let Some(item) = self.store.get(&ident_key(sid)).await?
        {
            let holder: IdentRecord = decode(&item)?;
            if holder.container == *c {
                ops.push(WriteOp::Delete { key: ident_key(sid), condition: Condition::Version(item.version) });
            }
        }
        self.store.transact(ops).await?;
        Ok(())
    }

    /// Sets a container's stored credentials (sealed under its organisation's key).
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn set_credentials(
        &self,
        actor: &str,
        c: &ContainerRef,
        given: Credentials,
    ) -> Result<ContainerDetails, ContainerError> {
        let (mut rec, version) = lookup::container(&*self.store, c).await?;
        let allowed: &'static [&'static str] = match rec.kind {
            CredentialKind::Password => &["username", "password"],
            // The username only where the profile uses it (HTTP Basic, a login that names it).
            CredentialKind::ApiToken if self.credential_use(&rec).is_some_and(CredentialUse::uses_username) => {
                &["api_token", "password", "username"]
            }
            CredentialKind::ApiToken => &["api_token", "password"],
            // A client-credentials grant takes the client's id and secret only: a username and password would be
            // stored and never used (a platform whose login takes them is a `password` container, ROLLER's too).
            CredentialKind::Oauth2ClientCredentials => &["client_id", "client_secret"],
            CredentialKind::Oauth2Password => &["username", "password"],
            CredentialKind::Oauth2Code => &[],
        };
        let named: Vec<&'static str> = [
            ("username", given.username.is_some()),
            ("password", given.password.is_some()),
            ("api_token", given.api_token.is_some()),
            ("client_id", given.client_id.is_some()),
            ("client_secret", given.client_secret.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect();
        if rec.kind == CredentialKind::Oauth2Code {
            return Err(ContainerError::CredentialsNotSettable(c.clone()));
        }
        if let Some(bad) = named.iter().find(|g| !allowed.contains(g)) {
            return Err(ContainerError::FieldNotAllowed { kind: rec.kind, field: bad, allowed });
        }
        if named.is_empty() {
            return Err(ContainerError::CredentialsEmpty { allowed });
        }
        let fields = ContainerFields::of(c);
        if let Some(u) = given.username {
            rec.username = Some(u);
        }
        // For api_token containers the token may come through the password field (as Yuki and NMBRS users know it).
        let (password, api_token) = match rec.kind {
            CredentialKind::ApiToken => (None, given.api_token.or(given.password)),
            _ => (given.password, given.api_token),
        };
        if let Some(p) = password {
            rec.sealed_password =
                Some(self.vault.seal(&fields.context(Field::Password), p.expose_secret().as_bytes()).await?);
        }
        if let Some(t) = api_token {
            rec.sealed_api_token =
                Some(self.vault.seal(&fields.context(Field::ApiToken), t.expose_secret().as_bytes()).await?);
        }
        if let Some(id) = given.client_id {
            rec.client_id = Some(id);
        }
        if let Some(sec) = given.client_secret {
            rec.sealed_client_secret =
                Some(self.vault.seal(&fields.context(Field::ClientSecret), sec.expose_secret().as_bytes()).await?);
        }
        rec.updated_at_ms = self.clock.now_ms();
        self.store.put(Put::new(container_key(c), encode(&rec), Condition::Version(version))).await?;
        if rec.kind != CredentialKind::Oauth2Code {
            // Tokens (and sessions) of the old credentials (and a `credentials_rejected` state) go; the next call uses the new ones.
            self.engine.remove(c).await?;
        }
        self.audit.record(&c.org, actor, "credentials.set", Some(c), "ok", Some(named.join(","))).await;
        self.without_chain(rec).await
    }

    /// The stored password and API token of a `password` or `api_token` container, where the organisation allows
    /// it; every reveal is in the audit log with the caller (and so is every refusal).
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn reveal(&self, actor: &str, c: &ContainerRef) -> Result<Revealed, ContainerError> {
        let (org, _) = lookup::org(&*self.store, &c.org).await?;
        if !org.allow_credential_reveal {
            self.audit
                .record(&c.org, actor, "credentials.reveal", Some(c), "refused", Some("not allowed".into()))
                .await;
            return Err(ContainerError::RevealNotAllowed(c.org.clone()));
        }
        let (rec, _) = lookup::container(&*self.store, c).await?;
        if !matches!(rec.kind, CredentialKind::Password | CredentialKind::ApiToken) {
            return Err(ContainerError::NothingToReveal { kind: rec.kind });
        }
        let fields = ContainerFields::of(c);
        let mut out = Revealed { username: rec.username.clone(), password: None, api_token: None };
        if let Some(sealed) = rec.sealed_password.as_deref() {
            out.password = Some(self.vault.open_string(&fields.context(Field::Password), sealed).await?);
        }
        if let Some(sealed) = rec.sealed_api_token.as_deref() {
            out.api_token = Some(self.vault.open_string(&fields.context(Field::ApiToken), sealed).await?);
        }
        let which: Vec<&str> = [("password", out.password.is_some()), ("api_token", out.api_token.is_some())]
            .into_iter()
            .filter_map(|(n, present)| present.then_some(n))
            .collect();
        self.audit.record(&c.org, actor, "credentials.reveal", Some(c), "ok", Some(which.join(","))).await;
        Ok(out)
    }

    /// The organisation's containers that need a person.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn repairs(&self, org: &OrgId) -> Result<Vec<Repair>, ContainerError> {
        lookup::org(&*self.store, org).await?;
        let items = self.store.query_index(Index::Repair, &repair_index_pk(org), None, 1000).await?;
        let mut list = Vec::new();
        for item in items {
            let chain: ChainRecord = decode(&item)?;
            let Some(ContainerRef { db, alias, .. }) = container_of_chain_pk(&item.key.pk) else { continue };
            let code =
                chain.last_error.as_ref().map_or(RepairCode::RefreshTokenInvalid, |e| RepairCode::parse(&e.code));
            list.push(Repair { db, alias, code, broken_at_ms: chain.last_error.as_ref().map(|e| e.at_ms) });
        }
        Ok(list)
    }
}
