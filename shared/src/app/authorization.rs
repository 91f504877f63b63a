//! Authorizing an `oauth2_code` container: start (a single-use expiring `state` bound to the container, PKCE where
//! the profile uses it), complete (exchange the code, read who signed in, register the single-instance
//! identifier, install the chain), and the hand-over when a second container signs in as an app and user that
//! another container already holds.
//!
//! An authorization cannot be hijacked: completing it as another provider user than the container's current one
//! is refused (`DifferentUser`) unless the starter asked for a user change when starting it (`replace_user`).

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::chain::{ChainEngine, ChainError};
use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::ids::{ContainerRef, random_id};
use crate::keys::{ContainerFields, Field, KeyError, Vault};
use crate::provider::oauth::{self, Grant, TokenError, TokenSet};
use crate::provider::{AppRegistration, ProviderProfile};
use crate::records::*;
use crate::secrets::Secrets;
use crate::store::{Condition, Put, Store, StoreError, Version, WriteOp};

use super::Ports;
use super::audit::AuditLog;
use super::containers::{ContainerError, Containers};
use super::lookup::{self, LookupError};

#[derive(Debug, thiserror::Error)]
pub enum AuthorizationError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{c} uses {kind:?} credentials, not an authorization")]
    NotAnAuthorizationContainer { c: ContainerRef, kind: CredentialKind },
    #[error("provider '{0}' is not configured")]
    UnknownProvider(String),
    #[error("no app registration for provider '{0}'")]
    AppNotConfigured(String),
    #[error("the callback has no state")]
    StateMissing,
    #[error("the state is unknown or expired")]
    StateInvalid,
    #[error("the state was already used")]
    StateUsed,
    #[error("the provider did not authorize {c}: {said}")]
    Denied { c: ContainerRef, said: String },
    #[error("the callback has no code")]
    CodeMissing,
    #[error("the provider did not answer the code exchange for {0}")]
    ProviderUnavailable(ContainerRef),
    #[error("the provider refused the app registration of '{0}'")]
    InvalidClient(String),
    #[error("the provider refused the code for {c}: {reason}")]
    CodeRejected { c: ContainerRef, reason: String },
    #[error("could not read who signed in for {0}")]
    IdentityUnavailable(ContainerRef),
    /// Auto-recovery's run signed in as another user than the container's own.
    #[error("{c} signed in as another user than expected")]
    WrongIdentity { c: ContainerRef },
    /// A person's sign-in as another user than the container's, without `replace_user` at the start.
    #[error("{c} signs in as {expected}; the authorization was completed as another user")]
    DifferentUser { c: ContainerRef, expected: String },
    #[error("identifier {sid} is held by another container")]
    SingleInstanceConflict { sid: String, removed: String },
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A started authorization.
pub struct Started {
    /// The provider's sign-in URL (with `state`, and the PKCE challenge where the profile uses it).
    pub authorize_url: String,
    pub state: String,
    /// Where the provider sends the person back.
    pub redirect_uri: String,
    pub expires_at_ms: Millis,
}

/// What the provider's redirect brought back.
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    /// The provider's `error` (and its description).
    pub error: Option<String>,
}

/// A completed authorization.
pub struct Completed {
    pub container: ContainerRef,
    pub user_id: String,
    pub user_name: Option<String>,
    pub single_instance_id: Option<String>,
}

#[derive(Clone)]
pub struct Authorization {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    secrets: Arc<dyn Secrets>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    http: reqwest::Client,
    engine: Arc<ChainEngine>,
    audit: AuditLog,
    containers: Containers,
}

impl Authorization {
    pub fn new(p: &Ports, engine: Arc<ChainEngine>, audit: AuditLog, containers: Containers) -> Self {
        let Ports { store, vault, secrets, clock, config, http, .. } = p.clone();
        Self { store, vault, secrets, clock, config, http, engine, audit, containers }
    }

    /// A person starts (or renews) the authorization of `c`: audited. With `replace_user`, it may be completed
    /// as another provider user than the container's current one.
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn start(
        &self,
        c: &ContainerRef,
        actor: &str,
        replace_user: bool,
    ) -> Result<Started, AuthorizationError> {
        let started = self.begin(c, actor, replace_user).await?;
        let detail = replace_user.then(|| "the provider user may change".to_string());
        self.audit.record(&c.org, actor, "authorization.start", Some(c), "ok", detail).await;
        Ok(started)
    }

    /// Starts an authorization of `c` (a person's, or auto-recovery's).
    pub async fn begin(
        &self,
        c: &ContainerRef,
        started_by: &str,
        replace_user: bool,
    ) -> Result<Started, AuthorizationError> {
        let (rec, _) = lookup::container(&*self.store, c).await?;
        if rec.kind != CredentialKind::Oauth2Code {
            return Err(AuthorizationError::NotAnAuthorizationContainer { c: c.clone(), kind: rec.kind });
        }
        let provider = rec.provider.clone().unwrap_or_default();
        let profile = self.profile(&provider)?;
        let app = self.app(&provider).await?;
        let state = random_id();
        let now = self.clock.now_ms();
        let verifier = profile.pkce.then(|| oauth::pkce_pair().0);
        let mut authorize_url = oauth::authorize_url(&profile, &app, &state, &rec.scopes, verifier.as_deref())?;
        if replace_user
            && !profile.switch_user_params.is_empty()
            && let Ok(mut u) = url::Url::parse(&authorize_url)
        {
            u.query_pairs_mut().extend_pairs(&profile.switch_user_params);
            authorize_url = u.into();
        }
        let sealed_pkce_verifier = match &verifier {
            Some(v) => Some(self.vault.seal(&ContainerFields::of(c).context(Field::PkceVerifier), v.as_bytes()).await?),
            None => None,
        };
        let expires_at_ms = now + self.config.server.authorization_ttl_s as i64 * 1000;
        let authz = AuthzRecord {
            container: c.clone(),
            provider: provider.clone(),
            sealed_pkce_verifier,
            redirect_uri: app.redirect_uri.clone(),
            started_by: started_by.to_string(),
            replace_user,
            created_at_ms: now,
            expires_at_ms,
        };
        let put = Put::new(authz_key(&state), encode(&authz), Condition::Absent).expires_at(Some(expires_at_ms));
        self.store.put(put).await?;
        Ok(Started { authorize_url, state, redirect_uri: app.redirect_uri, expires_at_ms })
    }

    fn profile(&self, provider: &str) -> Result<ProviderProfile, AuthorizationError> {
        self.config.provider(provider).cloned().ok_or_else(|| AuthorizationError::UnknownProvider(provider.into()))
    }

    async fn app(&self, provider: &str) -> Result<AppRegistration, AuthorizationError> {
        self.secrets.app(provider).await?.ok_or_else(|| AuthorizationError::AppNotConfigured(provider.into()))
    }

    /// Completes an authorization from the provider's redirect. With `expect_user` (auto-recovery), a different
    /// user than expected is refused before anything is stored.
    #[tracing::instrument(skip_all, fields(org = tracing::field::Empty, container = tracing::field::Empty))]
    pub async fn complete(
        &self,
        callback: Callback,
        expect_user: Option<&str>,
    ) -> Result<Completed, AuthorizationError> {
        let state =
            callback.state.filter(|v| !v.is_empty() && v.len() <= 200).ok_or(AuthorizationError::StateMissing)?;
        let key = authz_key(&state);
        let item = self.store.get(&key).await?.ok_or(AuthorizationError::StateInvalid)?;
        // Single use: whoever deletes it first completes the authorization.
        match self.store.delete(&key, Condition::Version(item.version)).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Err(AuthorizationError::StateUsed),
            Err(e) => return Err(e.into()),
        }
        let authz: AuthzRecord = decode(&item)?;
        let c = authz.container.clone();
        let span = tracing::Span::current();
        span.record("org", tracing::field::display(&c.org));
        span.record("container", tracing::field::display(c.local_name()));
        if let Some(err) = callback.error {
            let said: String = err.trim().chars().take(200).collect();
            let detail = Some(said.clone());
            self.audit.record(&c.org, &authz.started_by, "authorization.complete", Some(&c), "denied", detail).await;
            return Err(AuthorizationError::Denied { c, said });
        }
        let code = callback.code.filter(|v| !v.is_empty()).ok_or(AuthorizationError::CodeMissing)?;
        let (rec, version) = lookup::container(&*self.store, &c).await?;
        let profile = self.profile(&authz.provider)?;
        let app = self.app(&profile.name).await?;
        let verifier = match &authz.sealed_pkce_verifier {
            Some(v) => Some(self.vault.open_string(&ContainerFields::of(&c).context(Field::PkceVerifier), v).await?),
            None => None,
        };
        let timeout = Duration::from_secs_f64(self.config.engine.token_timeout_s);
        let grant = Grant::AuthorizationCode {
            code: &code,
            redirect_uri: &authz.redirect_uri,
            pkce_verifier: verifier.as_ref().map(|v| v.expose_secret()),
        };
        let tokens = oauth::request_token(&self.http, &profile, &app, grant, timeout).await.map_err(|e| match e {
            TokenError::Transient { .. } | TokenError::Lost(_) => AuthorizationError::ProviderUnavailable(c.clone()),
            TokenError::InvalidClient(_) => AuthorizationError::InvalidClient(profile.name.clone()),
            other => AuthorizationError::CodeRejected { c: c.clone(), reason: other.to_string() },
        })?;
        // Who signed in?
        let (user_id, user_name) = match &profile.identity {
            Some(_) => {
                oauth::fetch_identity(&self.http, &profile, &tokens.access_token, timeout).await.map_err(|e| {
                    tracing::warn!(error = %e, "identity lookup failed");
                    AuthorizationError::IdentityUnavailable(c.clone())
                })?
            }
            None => (String::from("unknown"), None),
        };
        if let Some(expected) = expect_user.filter(|e| *e != user_id) {
            let detail = Some(format!("signed in as {user_id}, expected {expected}"));
            self.audit
                .record(&c.org, &authz.started_by, "authorization.complete", Some(&c), "wrong_identity", detail)
                .await;
            return Err(AuthorizationError::WrongIdentity { c });
        }
        let now = self.clock.now_ms();
        let sid = profile.single_instance.then(|| single_instance_id(&app.client_id, &user_id));
        if let Some(sid) = &sid
            && let Some(holder_item) = self.store.get(&ident_key(sid)).await?
        {
            let holder: IdentRecord = decode(&holder_item)?;
            if holder.container != c {
                return Err(self.hand_over(&authz, &rec, version, holder, sid, &tokens).await);
            }
        }
        // Another user than the container's, not asked for: refused before anything is stored (the container
        // keeps its chain; the other user's tokens are dropped).
        if let Some(current) = rec.identity.as_ref().filter(|i| i.user_id != user_id && i.user_id != "unknown")
            && expect_user.is_none()
            && !authz.replace_user
        {
            let expected = match &current.user_name {
                Some(name) => format!("{name} ({})", current.user_id),
                None => current.user_id.clone(),
            };
            let detail = Some(format!("signed in as {user_id}, the container's user is {}", current.user_id));
            self.audit
                .record(&c.org, &authz.started_by, "authorization.complete", Some(&c), "different_user", detail)
                .await;
            return Err(AuthorizationError::DifferentUser { c, expected });
        }
        // Register the identifier, release the previous one (another user), and update the container, together.
        let mut updated = rec.clone();
        updated.identity = Some(IdentityInfo {
            user_id: user_id.clone(),
            user_name: user_name.clone(),
            single_instance_id: sid.clone(),
            authorized_at_ms: now,
        });
        updated.updated_at_ms = now;
        let mut ops = vec![WriteOp::Put(Put::new(container_key(&c), encode(&updated), Condition::Version(version)))];
        let previous_sid = rec.identity.as_ref().and_then(|i| i.single_instance_id.clone());
        if let Some(previous) = previous_sid.as_ref().filter(|p| Some(*p) != sid.as_ref()) {
            ops.push(WriteOp::Delete { key: ident_key(previous), condition: Condition::None });
        }
        if let Some(sid) = &sid {
            let holder = IdentRecord { container: c.clone(), since_ms: now };
            ops.push(WriteOp::Put(Put::new(ident_key(sid), encode(&holder), Condition::None)));
        }
        let previous_user =
            rec.identity.as_ref().map(|i| i.user_id.clone()).filter(|p| *p != user_id && p != "unknown");
        self.store.transact(ops).await?;
        if let Some(previous) = &previous_user {
            self.leave_nothing_of(&c, &authz.started_by, previous).await?;
        }
        self.engine.install(&c, &profile.name, &tokens).await?;
        let detail = Some(format!("user {user_id}"));
        self.audit.record(&c.org, &authz.started_by, "authorization.complete", Some(&c), "ok", detail).await;
        Ok(Completed { container: c, user_id, user_name, single_instance_id: sid })
    }

    /// The container moved to another provider user (`replace_user`): nothing of the previous person stays.
    /// Their refresh token is revoked at the provider where the profile has a revocation endpoint (best effort:
    /// the new chain replaces it anyway), and their auto-recovery credentials are deleted. Audited.
    async fn leave_nothing_of(&self, c: &ContainerRef, actor: &str, previous: &str) -> Result<(), AuthorizationError> {
        let revoked = match self.engine.revoke_at_provider(c).await {
            Ok(Some(true)) => "the previous refresh token was revoked at the provider",
            Ok(Some(false)) | Err(_) => {
                "revoking the previous refresh token at the provider failed; it expires on its own"
            }
            Ok(None) => "the provider has no revocation endpoint (or there was no token)",
        };
        let had_recovery = self.store.get(&recovery_key(c)).await?.is_some();
        if had_recovery {
            self.store.delete(&recovery_key(c), Condition::None).await?;
        }
        let recovery = if had_recovery {
            "the previous user's auto-recovery credentials were deleted"
        } else {
            "no auto-recovery credentials were stored"
        };
        let detail = Some(format!("previous user {previous}: {recovery}; {revoked}"));
        self.audit.record(&c.org, actor, "authorization.replace_user", Some(c), "ok", detail).await;
        Ok(())
    }

    /// A second container for one `client_id#user_id`: refused. The provider has just invalidated the holder's
    /// refresh token, so the fresh tokens go to the holder (same app, same user) and it keeps working. A new
    /// container that never had an authorization is removed again (and its database, if it was the only one).
    async fn hand_over(
        &self,
        authz: &AuthzRecord,
        rec: &ContainerRecord,
        version: Version,
        holder: IdentRecord,
        sid: &str,
        tokens: &TokenSet,
    ) -> AuthorizationError {
        match self.refuse_second_instance(authz, rec, version, holder, sid, tokens).await {
            Ok(removed) => AuthorizationError::SingleInstanceConflict { sid: sid.to_string(), removed },
            Err(e) => e,
        }
    }

    async fn refuse_second_instance(
        &self,
        authz: &AuthzRecord,
        rec: &ContainerRecord,
        version: Version,
        holder: IdentRecord,
        sid: &str,
        tokens: &TokenSet,
    ) -> Result<String, AuthorizationError> {
        let c: &ContainerRef = &authz.container;
        let handed_over = self.engine.install(&holder.container, &authz.provider, tokens).await.is_ok();
        let never_authorized = self.engine.chain(c).await?.is_none();
        let mut removed = String::new();
        if never_authorized {
            self.containers.remove(rec, version).await?;
            removed = format!(" The new container '{}' was removed", c.alias);
            let rest = self.store.query(&org_pk(&c.org), &containers_of_db_prefix(&c.db), 1).await?;
            if rest.is_empty() {
                self.store.delete(&db_key(&c.org, &c.db), Condition::None).await?;
                removed.push_str(&format!(", and its database '{}', which had no other container", c.db));
            }
            removed.push('.');
        }
        let detail = Some(format!("identifier {sid} is held by another container"));
        self.audit
            .record(&c.org, &authz.started_by, "authorization.complete", Some(c), "refused_single_instance", detail)
            .await;
        let outcome = if handed_over { "ok" } else { "failed" };
        let detail =
            Some(format!("identifier {sid} was authorized again elsewhere; this container received the new tokens"));
        self.audit
            .record(&holder.container.org, "chainkeeper", "chain.handover", Some(&holder.container), outcome, detail)
            .await;
        Ok(removed)
    }
}
