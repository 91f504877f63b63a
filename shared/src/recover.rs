//! Auto-recovery: a broken chain of a container with stored recovery credentials gets a brand-new chain without
//! a person — chainkeeper runs the authorization itself, signing in with the stored username, password and TOTP
//! code, and accepts the result only when the identity is the container's own user.
//!
//! Rules: never for a healthy chain; at most three attempts per hour per container; credentials the provider
//! rejects stop all retries at once (`recovery_credentials_invalid`) until new ones are stored; a different
//! user is refused (`recovery_wrong_identity`). The credentials expire after `retention_days` (1–90, default
//! 30); the organisation is told three days before. Every run is in the audit log.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::app::Services;
use crate::audit;
use crate::chain::RepairCode;
use crate::clock::{Millis, rfc3339};
use crate::ids::ContainerRef;
use crate::keys::{ContainerFields, Field};
use crate::provider::login::{Credentials, FormSpec, LoginError, sign_in};
use crate::records::*;
use crate::store::{Condition, Index, Put};
use crate::totp::Totp;

pub const DEFAULT_RETENTION_DAYS: u32 = 30;
const ATTEMPTS_PER_HOUR: usize = 3;
const WARN_BEFORE_MS: Millis = 3 * 86_400_000;

/// Stored recovery credentials (all sealed with the organisation's key).
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
}

/// Writes the record with its TTL and its place in the expiry-warning index.
pub async fn write(
    s: &Services,
    c: &ContainerRef,
    rec: &RecoveryRecord,
    condition: Condition,
) -> Result<u64, crate::store::StoreError> {
    let mut put = Put::new(recovery_key(c), encode(rec), condition).expires_at(Some(rec.expires_at_ms));
    if !rec.expiry_notified {
        put.due = Some(recovery_expiry_index_key(c, rec.expires_at_ms - WARN_BEFORE_MS));
    }
    s.store.put(put).await
}

pub async fn load(s: &Services, c: &ContainerRef) -> Result<Option<(RecoveryRecord, u64)>, crate::store::StoreError> {
    match s.store.get(&recovery_key(c)).await? {
        Some(item) => Ok(Some((decode(&item)?, item.version))),
        None => Ok(None),
    }
}

/// Seals new recovery credentials.
pub async fn seal(
    s: &Services,
    c: &ContainerRef,
    username: &SecretString,
    password: &SecretString,
    totp: Option<&Totp>,
    retention_days: u32,
) -> Result<RecoveryRecord, crate::keys::KeyError> {
    let fields = ContainerFields::of(c);
    let now = s.clock.now_ms();
    let sealed_totp = match totp {
        Some(t) => {
            Some(s.vault.seal(&fields.context(Field::RecoveryTotp), &serde_json::to_vec(t).unwrap_or_default()).await?)
        }
        None => None,
    };
    Ok(RecoveryRecord {
        sealed_username: s
            .vault
            .seal(&fields.context(Field::RecoveryUsername), username.expose_secret().as_bytes())
            .await?,
        sealed_password: s
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
    })
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
    /// Another run holds this container right now.
    Busy,
    CredentialsRejected,
    WrongIdentity,
    /// Network or page trouble: tried again on a later run.
    Failed,
}

/// One recovery attempt for one container, if it needs one and may have one.
pub async fn recover_container(s: &Arc<Services>, c: &ContainerRef, why: &str) -> anyhow::Result<Outcome> {
    let Some((chain, _)) = s.engine.chain(c).await? else { return Ok(Outcome::NotNeeded) };
    if chain.status == ChainStatus::Healthy {
        return Ok(Outcome::NotNeeded);
    }
    let Some((mut rec, version)) = load(s, c).await? else { return Ok(Outcome::NotConfigured) };
    if rec.stopped.is_some() {
        return Ok(Outcome::Stopped);
    }
    let now = s.clock.now_ms();
    rec.attempts_ms.retain(|t| now - t < 3_600_000);
    if rec.attempts_ms.len() >= ATTEMPTS_PER_HOUR {
        return Ok(Outcome::RateLimited);
    }
    rec.attempts_ms.push(now);
    let version = match write(s, c, &rec, Condition::Version(version)).await {
        Ok(v) => v,
        Err(crate::store::StoreError::Conflict) => return Ok(Outcome::Busy),
        Err(e) => return Err(e.into()),
    };
    let outcome = attempt(s, c, &rec).await;
    let (outcome, detail) = match outcome {
        Ok(()) => (Outcome::Recovered, None),
        Err(Attempt::Rejected(what)) => {
            (Outcome::CredentialsRejected, Some(format!("the provider did not accept the stored {what}")))
        }
        Err(Attempt::WrongIdentity) => {
            (Outcome::WrongIdentity, Some("a different user signed in than the container's own".to_string()))
        }
        Err(Attempt::Failed(why)) => (Outcome::Failed, Some(why)),
    };
    let stop_code = match outcome {
        Outcome::CredentialsRejected => Some(RepairCode::RecoveryCredentialsInvalid),
        Outcome::WrongIdentity => Some(RepairCode::RecoveryWrongIdentity),
        _ => None,
    };
    if let Some(code) = stop_code {
        rec.stopped = Some(code.code().to_string());
        let _ = write(s, c, &rec, Condition::Version(version)).await;
        s.engine.set_repair_code(c, code, detail.as_deref().unwrap_or("")).await?;
    }
    let result = serde_json::to_value(outcome)?.as_str().unwrap_or("").to_string();
    let text = match &detail {
        Some(d) => format!("{why}: {d}"),
        None => why.to_string(),
    };
    audit::record(s, &c.org, "chainkeeper-recovery", "auto_recovery.run", Some(c), &result, Some(text)).await;
    Ok(outcome)
}

enum Attempt {
    Rejected(&'static str),
    WrongIdentity,
    Failed(String),
}

async fn attempt(s: &Arc<Services>, c: &ContainerRef, rec: &RecoveryRecord) -> Result<(), Attempt> {
    let failed = |e: &dyn std::fmt::Display| Attempt::Failed(e.to_string());
    let fields = ContainerFields::of(c);
    let username = s
        .vault
        .open_string(&fields.context(Field::RecoveryUsername), &rec.sealed_username)
        .await
        .map_err(|e| failed(&e))?;
    let password = s
        .vault
        .open_string(&fields.context(Field::RecoveryPassword), &rec.sealed_password)
        .await
        .map_err(|e| failed(&e))?;
    let totp: Option<Totp> = match &rec.sealed_totp {
        Some(sealed) => {
            let bytes = s.vault.open(&fields.context(Field::RecoveryTotp), sealed).await.map_err(|e| failed(&e))?;
            Some(serde_json::from_slice(&bytes).map_err(|e| failed(&e))?)
        }
        None => None,
    };
    let (container, _) = crate::api::manage::load_container(s, c).await.map_err(|e| failed(&e))?;
    let expected = container
        .identity
        .as_ref()
        .map(|i| i.user_id.clone())
        .ok_or_else(|| Attempt::Failed("the container never had a user".into()))?;
    let (authorize_url, redirect_uri) =
        crate::api::authorize::begin(s, c, "chainkeeper-recovery").await.map_err(|e| failed(&e))?;
    let profile = s
        .config
        .provider(container.provider.as_deref().unwrap_or(""))
        .ok_or_else(|| Attempt::Failed("provider not configured".into()))?;
    let spec = FormSpec::from_profile(profile.login_form.as_ref());
    let clock = s.clock.clone();
    let code = move || totp.as_ref().map(|t| t.at((clock.now_ms() / 1000) as u64)).unwrap_or_default();
    let has_totp = rec.sealed_totp.is_some();
    let creds =
        Credentials { username: &username, password: &password, totp: if has_totp { Some(&code) } else { None } };
    let back = match sign_in(&authorize_url, &redirect_uri, &creds, &spec).await {
        Ok(url) => url,
        Err(LoginError::Rejected(what)) => return Err(Attempt::Rejected(what)),
        Err(LoginError::Failed(why)) => return Err(Attempt::Failed(why)),
    };
    let url = url::Url::parse(&back).map_err(|e| failed(&e))?;
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    match crate::api::authorize::complete_with(
        s,
        q.get("code").cloned(),
        q.get("state").cloned(),
        q.get("error").cloned(),
        Some(&expected),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(p) if p.code == "recovery_wrong_identity" => Err(Attempt::WrongIdentity),
        Err(p) => Err(Attempt::Failed(p.to_string())),
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

/// The `recover` function's run (and `serve`'s ticker): every broken chain with recovery credentials gets an
/// attempt; recovery credentials expiring within three days are announced once; expired items are purged.
pub async fn run_once(s: &Arc<Services>) -> anyhow::Result<RecoverReport> {
    let mut report = RecoverReport::default();
    for org in s.store.query(ORG_LIST_PK, "", 100_000).await? {
        let Ok(org_id) = crate::ids::OrgId::parse(&org.key.sk) else { continue };
        for item in s.store.query_index(Index::Repair, &repair_index_pk(&org_id), None, 10_000).await? {
            let Some(c) = container_of_chain_pk(&item.key.pk) else { continue };
            report.needs_repair += 1;
            match recover_container(s, &c, "scheduled run").await? {
                Outcome::Recovered => report.recovered += 1,
                Outcome::CredentialsRejected | Outcome::WrongIdentity | Outcome::Failed => report.failed += 1,
                _ => {}
            }
        }
    }
    let now = s.clock.now_ms();
    for item in s.store.query_index(Index::Due, RECOVERY_EXPIRY_PK, Some(&time_sk(now)), 10_000).await? {
        let Some(c) = container_of_chain_pk(&item.key.pk) else { continue };
        let mut rec: RecoveryRecord = decode(&item)?;
        rec.expiry_notified = true;
        if write(s, &c, &rec, Condition::Version(item.version)).await.is_ok() {
            s.notifier.expiring_event(&c, rfc3339(rec.expires_at_ms));
            audit::record(
                s,
                &c.org,
                "chainkeeper",
                "auto_recovery.expiring",
                Some(&c),
                "notified",
                Some(format!("expires {}", rfc3339(rec.expires_at_ms))),
            )
            .await;
            report.expiry_warnings += 1;
        }
    }
    report.purged = s.store.purge_expired().await?;
    Ok(report)
}
