//! Auto-recovery: a broken chain of a container with stored recovery credentials gets a brand-new chain without
//! a person — chainkeeper runs the authorization itself, signing in with the stored username, password and TOTP
//! code (the login driver, `provider::login`), and accepts the result only when the identity is the container's
//! own user.
//!
//! Rules: never for a healthy chain; at most three attempts per hour per container. Each way a run can end is an
//! [`Outcome`] with a repair code a person can act on (the chain's `last_error`, so the repairs list and the
//! `chain.needs_repair` webhook event carry it, with its remedy), and an audit entry: a refused password
//! (`recovery_password_rejected`) or TOTP code (`recovery_totp_rejected`), a step only a person can take
//! (`recovery_verification_needed`), a step the login driver does not support or a host outside the profile's
//! `login.hosts` (`recovery_unsupported_step`) and a different user (`recovery_wrong_identity`) stop all
//! retries until new credentials are stored; an unreachable provider (`recovery_provider_unreachable`) is tried
//! again, backing off (1, 4, 16 minutes…, at most an hour; a person's `POST …/recover` does not wait). The credentials expire after `retention_days` (1–90, default
//! 30); the organisation is told three days before. Every run is in the audit log.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::chain::{ChainEngine, ChainError, RepairCode};
use crate::clock::{Clock, Millis, rfc3339};
use crate::config::Config;
use crate::ids::{ContainerRef, OrgId};
use crate::keys::{ContainerFields, Field, KeyError, Vault};
use crate::metrics_names as names;
use crate::provider::login::{Credentials, FormSpec, LoginError, sign_in};

/// First wait after a transient failure; multiplied by four per failure in the last hour, at most an hour.
const FIRST_BACKOFF_MS: Millis = 60_000;
use crate::records::*;
use crate::store::{Condition, Index, Put, Store, StoreError, Version};
use crate::totp::Totp;

use super::Ports;
use super::audit::AuditLog;
use super::authorization::{Authorization, AuthorizationError, Callback};
use super::lookup::{self, LookupError};
use super::webhooks::Webhooks;

pub const DEFAULT_RETENTION_DAYS: u32 = 30;
const ATTEMPTS_PER_HOUR: usize = 3;
const WARN_BEFORE_MS: Millis = 3 * 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{0} has no authorization to recover")]
    NotApplicable(ContainerRef),
    #[error("retention_days must be between 1 and 90")]
    InvalidRetention,
    #[error("{0}")]
    InvalidTotp(String),
    #[error("{0} is healthy")]
    ChainHealthy(ContainerRef),
    #[error("{0} has no auto-recovery credentials")]
    NotConfigured(ContainerRef),
    #[error("{0} had three recovery attempts in the last hour")]
    RateLimited(ContainerRef),
    /// The recovery queue (AWS: SQS) did not take the request.
    #[error("the recovery queue did not take the request: {0}")]
    QueueUnavailable(String),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Recovery credentials to store.
pub struct RecoveryCredentials {
    pub username: SecretString,
    pub password: SecretString,
    /// Base32, or an `otpauth://totp/…` URI.
    pub totp_secret: Option<SecretString>,
    pub retention_days: Option<u32>,
}

/// What was stored.
pub struct Stored {
    pub totp: bool,
    pub retention_days: u32,
    pub expires_at_ms: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Recovered,
    /// The chain is healthy: recovery never runs then.
    NotNeeded,
    NotConfigured,
    /// Retries stopped (wrong credentials or identity) until new credentials are stored.
    Stopped,
    /// Three attempts in the last hour already.
    RateLimited,
    /// The last attempt failed for a passing reason; the next waits a little longer.
    BackingOff,
    /// Another run holds this container right now.
    Busy,
    /// The provider refused the username or password. Stops retries.
    PasswordRejected,
    /// The provider refused the TOTP code. Stops retries.
    TotpRejected,
    /// Captcha, e-mail code, locked account: a person must step in. Stops retries.
    VerificationNeeded,
    /// A step the login driver does not support, or a host outside `login.hosts`. Stops retries.
    UnsupportedStep,
    WrongIdentity,
    /// Network, timeout, 5xx at the provider: tried again, backing off.
    ProviderUnreachable,
    /// chainkeeper's own trouble (store, keys): tried again on a later run.
    Failed,
}

impl Outcome {
    /// The repair code a failed attempt leaves on the chain.
    pub fn repair_code(self) -> Option<RepairCode> {
        Some(match self {
            Self::PasswordRejected => RepairCode::RecoveryPasswordRejected,
            Self::TotpRejected => RepairCode::RecoveryTotpRejected,
            Self::VerificationNeeded => RepairCode::RecoveryVerificationNeeded,
            Self::UnsupportedStep => RepairCode::RecoveryUnsupportedStep,
            Self::WrongIdentity => RepairCode::RecoveryWrongIdentity,
            Self::ProviderUnreachable => RepairCode::RecoveryProviderUnreachable,
            _ => return None,
        })
    }

    /// Whether retries stop until new credentials are stored.
    pub fn stops_retries(self) -> bool {
        self.repair_code().is_some() && self != Self::ProviderUnreachable
    }

    /// A failed attempt (not a run that did not start).
    fn is_failure(self) -> bool {
        self.repair_code().is_some() || self == Self::Failed
    }

    fn of(e: LoginError) -> (Self, String) {
        let outcome = match &e {
            LoginError::PasswordRejected(_) => Self::PasswordRejected,
            LoginError::TotpRejected(_) => Self::TotpRejected,
            LoginError::VerificationNeeded(_) => Self::VerificationNeeded,
            LoginError::UnsupportedStep(_) => Self::UnsupportedStep,
            LoginError::Unreachable(_) => Self::ProviderUnreachable,
        };
        (outcome, e.to_string())
    }
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct RecoverReport {
    pub needs_repair: usize,
    pub recovered: usize,
    pub failed: usize,
    pub expiry_warnings: usize,
    pub purged: usize,
}

/// Why one attempt did not recover the chain: the outcome and what happened.
type Attempt = (Outcome, String);

#[derive(Clone)]
pub struct Recovery {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    engine: Arc<ChainEngine>,
    audit: AuditLog,
    authorization: Authorization,
    webhooks: Webhooks,
}

impl Recovery {
    pub fn new(
        p: &Ports,
        engine: Arc<ChainEngine>,
        audit: AuditLog,
        authorization: Authorization,
        webhooks: Webhooks,
    ) -> Self {
        let (store, vault, clock, config) = (p.store.clone(), p.vault.clone(), p.clock.clone(), p.config.clone());
        Self { store, vault, clock, config, engine, audit, authorization, webhooks }
    }

    /// Stores (or replaces) a container's recovery credentials, sealed, for `retention_days`.
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn store_credentials(
        &self,
        actor: &str,
        c: &ContainerRef,
        given: RecoveryCredentials,
    ) -> Result<Stored, RecoveryError> {
        let (rec, _) = lookup::container(&*self.store, c).await?;
        if rec.kind != CredentialKind::Oauth2Code {
            return Err(RecoveryError::NotApplicable(c.clone()));
        }
        let days = given.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        if !(1..=90).contains(&days) {
            return Err(RecoveryError::InvalidRetention);
        }
        let totp = match &given.totp_secret {
            Some(t) => Some(Totp::parse(t.expose_secret()).map_err(|e| RecoveryError::InvalidTotp(e.to_string()))?),
            None => None,
        };
        let sealed = self.seal(c, &given.username, &given.password, totp.as_ref(), days).await?;
        self.write(c, &sealed, Condition::None).await?;
        let detail = Some(format!("kept {days} days"));
        self.audit.record(&c.org, actor, "auto_recovery.set", Some(c), "ok", detail).await;
        Ok(Stored { totp: totp.is_some(), retention_days: days, expires_at_ms: sealed.expires_at_ms })
    }

    /// Deletes a container's recovery credentials at once.
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn delete_credentials(&self, actor: &str, c: &ContainerRef) -> Result<(), RecoveryError> {
        lookup::container(&*self.store, c).await?;
        self.store.delete(&recovery_key(c), Condition::None).await?;
        self.audit.record(&c.org, actor, "auto_recovery.delete", Some(c), "ok", None).await;
        Ok(())
    }

    /// A person asks for a recovery run now.
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn run_now(&self, actor: &str, c: &ContainerRef) -> Result<Outcome, RecoveryError> {
        lookup::container(&*self.store, c).await?;
        match self.run(c, &format!("requested by {actor}"), true).await? {
            Outcome::NotNeeded => Err(RecoveryError::ChainHealthy(c.clone())),
            Outcome::NotConfigured => Err(RecoveryError::NotConfigured(c.clone())),
            Outcome::RateLimited => Err(RecoveryError::RateLimited(c.clone())),
            other => Ok(other),
        }
    }

    /// The container exists (a queued request for one deleted meanwhile, or never there, is a failure).
    pub async fn check_exists(&self, c: &ContainerRef) -> Result<(), RecoveryError> {
        lookup::container(&*self.store, c).await?;
        Ok(())
    }

    /// What [`Recovery::run_now`] would refuse at once, checked without running: the container exists, its
    /// chain needs repair, credentials are stored, fewer than three attempts in the last hour.
    pub async fn check_runnable(&self, c: &ContainerRef) -> Result<(), RecoveryError> {
        lookup::container(&*self.store, c).await?;
        match self.engine.chain(c).await? {
            Some((chain, _)) if chain.status != ChainStatus::Healthy => {}
            _ => return Err(RecoveryError::ChainHealthy(c.clone())),
        }
        let Some((rec, _)) = lookup::recovery(&*self.store, c).await? else {
            return Err(RecoveryError::NotConfigured(c.clone()));
        };
        let now = self.clock.now_ms();
        if rec.attempts_ms.iter().filter(|t| now - **t < 3_600_000).count() >= ATTEMPTS_PER_HOUR {
            return Err(RecoveryError::RateLimited(c.clone()));
        }
        Ok(())
    }

    /// One recovery attempt for one container, if it needs one and may have one.
    #[tracing::instrument(skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn recover_container(&self, c: &ContainerRef, why: &str) -> Result<Outcome, RecoveryError> {
        self.run(c, why, false).await
    }

    /// `person`: a person asked (no waiting for the backoff).
    async fn run(&self, c: &ContainerRef, why: &str, person: bool) -> Result<Outcome, RecoveryError> {
        let Some((chain, _)) = self.engine.chain(c).await? else { return Ok(Outcome::NotNeeded) };
        if chain.status == ChainStatus::Healthy {
            return Ok(Outcome::NotNeeded);
        }
        let Some((mut rec, version)) = lookup::recovery(&*self.store, c).await? else {
            return Ok(Outcome::NotConfigured);
        };
        if rec.stopped.is_some() {
            return Ok(Outcome::Stopped);
        }
        let now = self.clock.now_ms();
        rec.attempts_ms.retain(|t| now - t < 3_600_000);
        if rec.attempts_ms.len() >= ATTEMPTS_PER_HOUR {
            return Ok(Outcome::RateLimited);
        }
        if !person && rec.retry_at_ms.is_some_and(|t| now < t) {
            return Ok(Outcome::BackingOff);
        }
        rec.attempts_ms.push(now);
        let version = match self.write(c, &rec, Condition::Version(version)).await {
            Ok(v) => v,
            Err(StoreError::Conflict) => return Ok(Outcome::Busy),
            Err(e) => return Err(e.into()),
        };
        let (outcome, detail) = match self.attempt(c, &rec).await {
            Ok(()) => (Outcome::Recovered, None),
            Err((outcome, why)) => (outcome, Some(why)),
        };
        crate::metrics::recovery_outcome(match outcome {
            Outcome::Recovered => names::OUTCOME_RECOVERED,
            Outcome::PasswordRejected | Outcome::TotpRejected => names::OUTCOME_CREDENTIALS_REJECTED,
            Outcome::WrongIdentity => names::OUTCOME_WRONG_IDENTITY,
            _ => names::OUTCOME_FAILED,
        });
        let changed = if outcome.stops_retries() {
            rec.stopped = outcome.repair_code().map(|code| code.code().to_string());
            true
        } else if outcome.is_failure() {
            let failures = rec.attempts_ms.len().max(1) as u32;
            rec.retry_at_ms = Some(now + (FIRST_BACKOFF_MS << (2 * (failures - 1))).min(3_600_000));
            true
        } else {
            rec.retry_at_ms.take().is_some()
        };
        if changed && let Err(e) = self.write(c, &rec, Condition::Version(version)).await {
            tracing::warn!(error = %e, container = %c, "could not record the recovery outcome");
        }
        if let Some(code) = outcome.repair_code() {
            // The reason shows in the chain, the repairs list and the `chain.needs_repair` webhook event.
            self.engine.set_repair_code(c, code, detail.as_deref().unwrap_or("")).await?;
        }
        let result = serde_json::to_value(outcome).map_err(anyhow::Error::from)?.as_str().unwrap_or("").to_string();
        let text = match &detail {
            Some(d) => format!("{why}: {d}"),
            None => why.to_string(),
        };
        self.audit.record(&c.org, "chainkeeper-recovery", "auto_recovery.run", Some(c), &result, Some(text)).await;
        Ok(outcome)
    }

    async fn attempt(&self, c: &ContainerRef, rec: &RecoveryRecord) -> Result<(), Attempt> {
        let failed = |e: &dyn std::fmt::Display| (Outcome::Failed, e.to_string());
        let fields = ContainerFields::of(c);
        let username = self
            .vault
            .open_string(&fields.context(Field::RecoveryUsername), &rec.sealed_username)
            .await
            .map_err(|e| failed(&e))?;
        let password = self
            .vault
            .open_string(&fields.context(Field::RecoveryPassword), &rec.sealed_password)
            .await
            .map_err(|e| failed(&e))?;
        let totp: Option<Totp> = match &rec.sealed_totp {
            Some(sealed) => {
                let bytes =
                    self.vault.open(&fields.context(Field::RecoveryTotp), sealed).await.map_err(|e| failed(&e))?;
                Some(serde_json::from_slice(&bytes).map_err(|e| failed(&e))?)
            }
            None => None,
        };
        let (container, _) = lookup::container(&*self.store, c).await.map_err(|e| failed(&e))?;
        let expected = container
            .identity
            .as_ref()
            .map(|i| i.user_id.clone())
            .ok_or_else(|| (Outcome::Failed, "the container never had a user".to_string()))?;
        let started = self.authorization.begin(c, "chainkeeper-recovery", false).await.map_err(|e| failed(&e))?;
        let profile = self
            .config
            .provider(container.provider.as_deref().unwrap_or(""))
            .ok_or_else(|| (Outcome::Failed, "provider not configured".to_string()))?;
        let spec = FormSpec::from_profile(profile.login_form.as_ref());
        let clock = self.clock.clone();
        let code = move || totp.as_ref().map(|t| t.at((clock.now_ms() / 1000) as u64)).unwrap_or_default();
        let has_totp = rec.sealed_totp.is_some();
        let creds =
            Credentials { username: &username, password: &password, totp: if has_totp { Some(&code) } else { None } };
        let back = sign_in(
            &profile.login,
            &spec,
            &started.authorize_url,
            &started.redirect_uri,
            &creds,
            &self.config.server.login_allow_http_hosts,
        )
        .await
        .map_err(Outcome::of)?;
        let url = url::Url::parse(&back).map_err(|e| failed(&e))?;
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        let callback =
            Callback { code: q.get("code").cloned(), state: q.get("state").cloned(), error: q.get("error").cloned() };
        match self.authorization.complete(callback, Some(&expected)).await {
            Ok(_) => Ok(()),
            Err(AuthorizationError::WrongIdentity { .. }) => {
                Err((Outcome::WrongIdentity, "a different user signed in than the container's own".to_string()))
            }
            Err(e @ (AuthorizationError::ProviderUnavailable(_) | AuthorizationError::IdentityUnavailable(_))) => {
                Err((Outcome::ProviderUnreachable, e.to_string()))
            }
            Err(e) => Err(failed(&e)),
        }
    }

    /// The scheduled run (the `recover` function; `serve`'s ticker): every broken chain with recovery credentials
    /// gets an attempt; recovery credentials expiring within three days are announced once; expired items are
    /// purged.
    #[tracing::instrument(skip_all)]
    pub async fn run_once(&self) -> Result<RecoverReport, RecoveryError> {
        let mut report = RecoverReport::default();
        let started = self.clock.now_ms();
        // The chains still broken after this run, and since when the oldest of them is (the metrics' gauges).
        let mut oldest_since: Option<Millis> = None;
        for org in self.store.query(ORG_LIST_PK, "", 100_000).await? {
            let Ok(org_id) = OrgId::parse(&org.key.sk) else { continue };
            for item in self.store.query_index(Index::Repair, &repair_index_pk(&org_id), None, 10_000).await? {
                let Some(c) = container_of_chain_pk(&item.key.pk) else { continue };
                report.needs_repair += 1;
                let outcome = self.recover_container(&c, "scheduled run").await?;
                match outcome {
                    Outcome::Recovered => report.recovered += 1,
                    o if o.is_failure() => report.failed += 1,
                    _ => {}
                }
                if outcome != Outcome::Recovered {
                    let since =
                        decode::<ChainRecord>(&item).ok().and_then(|ch| ch.last_error).map_or(started, |e| e.at_ms);
                    oldest_since = Some(oldest_since.map_or(since, |o| o.min(since)));
                }
            }
        }
        let still_broken = report.needs_repair - report.recovered;
        let oldest_age_s = oldest_since.map_or(0.0, |s| (started - s).max(0) as f64 / 1000.0);
        crate::metrics::chains_needing_repair(still_broken, oldest_age_s);
        let now = self.clock.now_ms();
        for item in self.store.query_index(Index::Due, RECOVERY_EXPIRY_PK, Some(&time_sk(now)), 10_000).await? {
            let Some(c) = container_of_chain_pk(&item.key.pk) else { continue };
            let mut rec: RecoveryRecord = decode(&item)?;
            rec.expiry_notified = true;
            if self.write(&c, &rec, Condition::Version(item.version)).await.is_ok() {
                self.webhooks.expiring_event(&c, rfc3339(rec.expires_at_ms));
                let detail = Some(format!("expires {}", rfc3339(rec.expires_at_ms)));
                self.audit.record(&c.org, "chainkeeper", "auto_recovery.expiring", Some(&c), "notified", detail).await;
                report.expiry_warnings += 1;
            }
        }
        report.purged = self.store.purge_expired().await?;
        Ok(report)
    }

    /// Writes the record with its TTL and its place in the expiry-warning index.
    async fn write(&self, c: &ContainerRef, rec: &RecoveryRecord, condition: Condition) -> Result<Version, StoreError> {
        let mut put = Put::new(recovery_key(c), encode(rec), condition).expires_at(Some(rec.expires_at_ms));
        if !rec.expiry_notified {
            put.due = Some(recovery_expiry_index_key(c, rec.expires_at_ms - WARN_BEFORE_MS));
        }
        self.store.put(put).await
    }

    /// Seals new recovery credentials.
    async fn seal(
        &self,
        c: &ContainerRef,
        username: &SecretString,
        password: &SecretString,
        totp: Option<&Totp>,
        retention_days: u32,
    ) -> Result<RecoveryRecord, KeyError> {
        let fields = ContainerFields::of(c);
        let now = self.clock.now_ms();
        let sealed_totp = match totp {
            Some(t) => Some(
                self.vault
                    .seal(&fields.context(Field::RecoveryTotp), &serde_json::to_vec(t).unwrap_or_default())
                    .await?,
            ),
            None => None,
        };
        Ok(RecoveryRecord {
            sealed_username: self
                .vault
                .seal(&fields.context(Field::RecoveryUsername), username.expose_secret().as_bytes())
                .await?,
            sealed_password: self
                .vault
                .seal(&fields.context(Field::RecoveryPassword), password.expose_secret().as_bytes())
                .await?,
            sealed_totp,
            retention_days,
            created_at_ms: now,
            expires_at_ms: now + retention_days as i64 * 86_400_000,
            expiry_notified: false,
            attempts_ms: Vec::new(),
            stopped: None,
            retry_at_ms: None,
        })
    }
}
