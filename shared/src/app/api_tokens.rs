//! API tokens of an organisation: authenticate a caller, issue, list, revoke. A revoked token is refused on its
//! next request, in every process (the revocation is a store item, looked up on every request).

use std::sync::Arc;

use crate::auth::{Claims, TokenRejected, issue, verify_any};
use crate::clock::Clock;
use crate::ids::{OrgId, random_id};
use crate::records::{API_TOKENS_PREFIX, ApiTokenRecord, api_token_key, decode, encode, org_pk, revoked_key};
use crate::secrets::Secrets;
use crate::store::{Condition, Put, Store, StoreError};

use super::Ports;
use super::audit::AuditLog;
use super::lookup::{self, LookupError};

/// Why a caller's token is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Rejected(#[from] TokenRejected),
    #[error("the API token was revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ApiTokenError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("the scopes of the new token are missing or malformed")]
    InvalidScopes,
    #[error("the caller's token does not hold scope {0}")]
    ScopeEscalation(String),
    #[error("not an API token id")]
    InvalidId,
    #[error("organisation '{org}' has no API token '{id}'")]
    NotFound { org: OrgId, id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A token to issue.
pub struct NewApiToken {
    pub subject: String,
    pub scopes: Vec<String>,
    /// Seconds the token is valid; default 90 days, 60 s to 2 years.
    pub expires_in_s: Option<u64>,
}

/// An issued token: its metadata, and the token itself (shown once).
pub struct Issued {
    pub record: ApiTokenRecord,
    pub token: secrecy::SecretString,
}

#[derive(Clone)]
pub struct ApiTokens {
    store: Arc<dyn Store>,
    secrets: Arc<dyn Secrets>,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
}

impl ApiTokens {
    pub fn new(p: &Ports, audit: AuditLog) -> Self {
        Self { store: p.store.clone(), secrets: p.secrets.clone(), clock: p.clock.clone(), audit }
    }

    /// The claims of a bearer token: signed by a key this deployment accepts now (the current one, or the
    /// previous one inside its rotation window), not expired, not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Claims, AuthError> {
        let keys = self.secrets.signing_keys().await?;
        let now = self.clock.now_ms();
        let claims = verify_any(&keys.accepted(now), token, now)?;
        if self.store.get(&revoked_key(&claims.jti)).await?.is_some() {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }

    /// Issues a token of `org` with at most the scopes the caller holds.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn issue(&self, org: &OrgId, caller: &Claims, new: NewApiToken) -> Result<Issued, ApiTokenError> {
        lookup::org(&*self.store, org).await?;
        if new.scopes.is_empty()
            || new.scopes.iter().any(|sc| sc.is_empty() || sc.len() > 80 || sc.contains(char::is_whitespace))
        {
            return Err(ApiTokenError::InvalidScopes);
        }
        // Nobody hands out more than they hold.
        let holds_admin = caller.scopes.iter().any(|s| s == "admin");
        if !holds_admin && let Some(extra) = new.scopes.iter().find(|sc| !caller.scopes.contains(sc)) {
            return Err(ApiTokenError::ScopeEscalation(extra.clone()));
        }
        let ttl = new.expires_in_s.unwrap_or(90 * 86_400).clamp(60, 2 * 365 * 86_400);
        let now = self.clock.now_ms();
        let id = random_id();
        let claims = Claims {
            sub: new.subject.chars().take(120).collect(),
            org: Some(org.to_string()),
            scopes: new.scopes.clone(),
            exp: now / 1000 + ttl as i64,
            iat: now / 1000,
            jti: id.clone(),
        };
        let keys = self.secrets.signing_keys().await?;
        let token = issue(&keys.current, &claims)?;
        let record = ApiTokenRecord {
            id: id.clone(),
            subject: claims.sub.clone(),
            scopes: new.scopes,
            issued_by: caller.sub.clone(),
            issued_at_ms: now,
            expires_at_ms: claims.exp * 1000,
            revoked_at_ms: None,
        };
        let put = Put::new(api_token_key(org, &id), encode(&record), Condition::Absent)
            .expires_at(Some(record.expires_at_ms));
        self.store.put(put).await?;
        let detail = format!("id {id} for {}", record.subject);
        self.audit.record(org, &caller.sub, "api_token.issue", None, "ok", Some(detail)).await;
        Ok(Issued { record, token: token.into() })
    }

    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn list(&self, org: &OrgId) -> Result<Vec<ApiTokenRecord>, ApiTokenError> {
        lookup::org(&*self.store, org).await?;
        let items = self.store.query(&org_pk(org), API_TOKENS_PREFIX, 10_000).await?;
        Ok(items.iter().map(decode).collect::<Result<_, _>>()?)
    }

    /// Revokes one token: from the marker's write on, every process refuses it.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn revoke(&self, org: &OrgId, actor: &str, id: &str) -> Result<(), ApiTokenError> {
        lookup::org(&*self.store, org).await?;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ApiTokenError::InvalidId);
        }
        let key = api_token_key(org, id);
        let Some(item) = self.store.get(&key).await? else {
            return Err(ApiTokenError::NotFound { org: org.clone(), id: id.to_string() });
        };
        let mut rec: ApiTokenRecord = decode(&item)?;
        // The revocation marker first: from this write on, every process refuses the token.
        self.store.put(revocation_marker(&rec)).await?;
        rec.revoked_at_ms.get_or_insert(self.clock.now_ms());
        self.store.put(Put::new(key, encode(&rec), Condition::None).expires_at(Some(rec.expires_at_ms))).await?;
        self.audit.record(org, actor, "api_token.revoke", None, "ok", Some(format!("id {id}"))).await;
        Ok(())
    }

    /// Revokes every token issued for the organisation through the API (when the organisation is deleted, so
    /// that a later organisation of the same name does not inherit them). Returns how many were revoked.
    pub async fn revoke_all(&self, org: &OrgId) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let mut n = 0;
        for item in self.store.query(&org_pk(org), API_TOKENS_PREFIX, 100_000).await? {
            let rec: ApiTokenRecord = decode(&item)?;
            if rec.expires_at_ms > now {
                self.store.put(revocation_marker(&rec)).await?;
                n += 1;
            }
            self.store.delete(&item.key, Condition::None).await?;
        }
        Ok(n)
    }
}

/// The marker that makes every process refuse a token, kept until the token would have expired anyway.
fn revocation_marker(rec: &ApiTokenRecord) -> Put {
    Put::new(revoked_key(&rec.id), Vec::new(), Condition::None).expires_at(Some(rec.expires_at_ms + 60_000))
}
