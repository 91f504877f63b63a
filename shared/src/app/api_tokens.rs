//! API tokens of an organisation: authenticate a caller, issue, list, revoke. A revoked token is refused on its
//! next request, in every process (the revocation is a store item, looked up on every request).
//!
//! A token cannot outlive or escape its issuer: a token issued with another gets at most the issuer's scopes
//! and expiry, its record names the issuer's id, and revoking a token revokes every token issued through it,
//! transitively (an `issued-by` item per child makes the walk a query per token, across organisations).
//! Tokens the operator issues (`chainkeeper token issue`) are recorded too, so they are listed and revoked by
//! id like any other.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::auth::{Claims, TokenRejected, covers, issue};
use crate::clock::Clock;
use crate::ids::{OrgId, random_id};
use crate::records::{
    API_TOKENS_PREFIX, ApiTokenRecord, PLATFORM_PK, any_api_token_key, decode, encode, issued_by_key, issued_by_pk,
    org_pk, parse_issued_by_sk, revoked_key,
};
use crate::secrets::Secrets;
use crate::store::{Condition, Put, Store, StoreError};

use super::Ports;
use super::audit::AuditLog;
use super::lookup::{self, LookupError};
use super::verified_tokens::VerifiedTokens;

/// The revocation lookup of a verified token, left to a use case that reads the store anyway, so that both come
/// from one read (one snapshot, one round of locks): [`Store::get_many`] with [`Self::key`] among its keys, then
/// [`Self::settle`] with what was found there. The token hand-out does so; everything else authenticates at once
/// ([`ApiTokens::authenticate`]). The API layer holds one only for a route whose use case settles it.
#[derive(Clone, Debug)]
pub struct RevocationCheck {
    key: crate::store::Key,
}

impl RevocationCheck {
    /// Where the token's revocation would be stored.
    pub fn key(&self) -> &crate::store::Key {
        &self.key
    }

    /// The outcome, given what the store holds at [`Self::key`].
    pub fn settle(&self, found: Option<crate::store::Item>) -> Result<(), AuthError> {
        match found {
            Some(_) => Err(AuthError::Revoked),
            None => Ok(()),
        }
    }
}

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
    #[error("the new token would outlive the caller's token (it expires at {issuer_expires_at_ms})")]
    OutlivesIssuer { issuer_expires_at_ms: i64 },
    #[error("the caller's token was revoked while it issued a token")]
    IssuerRevoked,
    #[error("not an API token id")]
    InvalidId,
    #[error("organisation '{org}' has no API token '{id}'")]
    NotFound { org: OrgId, id: String },
    #[error("there is no platform API token '{0}'")]
    PlatformNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A token to issue.
pub struct NewApiToken {
    pub subject: String,
    pub scopes: Vec<String>,
    /// Seconds the token is valid; default 90 days (or the issuer's expiry, if sooner), 60 s to 2 years.
    pub expires_in_s: Option<u64>,
}

const DEFAULT_TTL_S: u64 = 90 * 86_400;
const MAX_TTL_S: u64 = 2 * 365 * 86_400;

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_scopes(scopes: &[String]) -> bool {
    !scopes.is_empty() && scopes.iter().all(|sc| !sc.is_empty() && sc.len() <= 80 && !sc.contains(char::is_whitespace))
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
    scope_groups: Arc<BTreeMap<String, Vec<String>>>,
    verified: Arc<VerifiedTokens>,
}

impl ApiTokens {
    pub fn new(p: &Ports, audit: AuditLog) -> Self {
        Self {
            store: p.store.clone(),
            secrets: p.secrets.clone(),
            clock: p.clock.clone(),
            audit,
            scope_groups: Arc::new(p.config.scope_groups.clone()),
            verified: Arc::default(),
        }
    }

    /// The claims of a bearer token: signed by a key this deployment accepts now (the current one, or the
    /// previous one inside its rotation window), not expired, not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let (claims, revocation) = self.verify(token).await?;
        self.look_up(&revocation).await?;
        Ok(claims)
    }

    /// A verified token's revocation, looked up on its own.
    pub async fn look_up(&self, revocation: &RevocationCheck) -> Result<(), AuthError> {
        revocation.settle(self.store.get(revocation.key()).await?)
    }

    /// The claims of a bearer token signed by a key this deployment accepts now and not expired, with its
    /// revocation still to be looked up: by the caller, in a store read it makes anyway (see [`RevocationCheck`]).
    pub async fn verify(&self, token: &str) -> Result<(Arc<Claims>, RevocationCheck), AuthError> {
        let keys = self.secrets.signing_keys().await?;
        let now = self.clock.now_ms();
        let claims = self.verified.verify(&keys, token, now)?;
        let check = RevocationCheck { key: revoked_key(&claims.jti) };
        Ok((claims, check))
    }

    /// Issues a token of `org` with at most the scopes and the expiry of the caller's token, recorded with the
    /// caller's token id (revoking the caller's token revokes it).
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn issue(&self, org: &OrgId, caller: &Claims, new: NewApiToken) -> Result<Issued, ApiTokenError> {
        lookup::org(&*self.store, org).await?;
        if !valid_scopes(&new.scopes) {
            return Err(ApiTokenError::InvalidScopes);
        }
        // Nobody hands out more than they hold.
        if let Some(extra) = new.scopes.iter().find(|sc| !covers(&caller.scopes, &self.scope_groups, sc)) {
            return Err(ApiTokenError::ScopeEscalation(extra.clone()));
        }
        // Nor for longer than they hold it.
        let now_s = self.clock.now_ms() / 1000;
        let ttl = new.expires_in_s.unwrap_or(DEFAULT_TTL_S).clamp(60, MAX_TTL_S) as i64;
        let exp = match new.expires_in_s {
            Some(_) if now_s + ttl > caller.exp => {
                return Err(ApiTokenError::OutlivesIssuer { issuer_expires_at_ms: caller.exp * 1000 });
            }
            _ => (now_s + ttl).min(caller.exp),
        };
        let issued = self.sign_and_record(Some(org), &new, exp, &caller.sub, Some(caller.jti.as_str())).await?;
        // A revocation of the issuer that ran while this token was written may have missed it: the issuer's
        // marker is written before its walk, this token's `issued-by` item before this check, so one of the two
        // sees the other.
        if self.store.get(&revoked_key(&caller.jti)).await?.is_some() {
            self.revoke_tree(&issued.record, Some(org)).await?;
            return Err(ApiTokenError::IssuerRevoked);
        }
        let detail = format!("id {} for {}", issued.record.id, issued.record.subject);
        self.audit.record(org, &caller.sub, "api_token.issue", None, "ok", Some(detail)).await;
        Ok(issued)
    }

    /// A token issued by a person signed in to the web console, who holds `held` (the session's scopes): bounded by
    /// them as a token issued with another token is ("nobody hands out more than they hold"), but not by the
    /// session's lifetime (a session lasts hours, the token is for a tool); default 90 days, at most 2 years. Its
    /// record names the person; revoking it is by id, as for an operator's token.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn issue_for_person(
        &self,
        org: &OrgId,
        person: &str,
        held: &[String],
        new: NewApiToken,
    ) -> Result<Issued, ApiTokenError> {
        lookup::org(&*self.store, org).await?;
        if !valid_scopes(&new.scopes) {
            return Err(ApiTokenError::InvalidScopes);
        }
        if let Some(extra) = new.scopes.iter().find(|sc| !covers(held, &self.scope_groups, sc)) {
            return Err(ApiTokenError::ScopeEscalation(extra.clone()));
        }
        let ttl = new.expires_in_s.unwrap_or(DEFAULT_TTL_S).clamp(60, MAX_TTL_S) as i64;
        let exp = self.clock.now_ms() / 1000 + ttl;
        let issued = self.sign_and_record(Some(org), &new, exp, person, None).await?;
        let detail = format!("id {} for {} (console)", issued.record.id, issued.record.subject);
        self.audit.record(org, person, "api_token.issue", None, "ok", Some(detail)).await;
        Ok(issued)
    }

    /// A token issued by the operator with the signing key (`chainkeeper token issue`): for `org`, or a platform
    /// token (`None`). Recorded like any other, so it can be listed and revoked by id.
    #[tracing::instrument(skip_all)]
    pub async fn issue_by_operator(&self, org: Option<&OrgId>, new: NewApiToken) -> Result<Issued, ApiTokenError> {
        if !valid_scopes(&new.scopes) {
            return Err(ApiTokenError::InvalidScopes);
        }
        let ttl = new.expires_in_s.unwrap_or(DEFAULT_TTL_S).max(60) as i64;
        let exp = self.clock.now_ms() / 1000 + ttl;
        let issued = self.sign_and_record(org, &new, exp, "operator", None).await?;
        if let Some(org) = org {
            let detail = format!("id {} for {}", issued.record.id, issued.record.subject);
            self.audit.record(org, "operator", "api_token.issue", None, "ok", Some(detail)).await;
        }
        Ok(issued)
    }

    async fn sign_and_record(
        &self,
        org: Option<&OrgId>,
        new: &NewApiToken,
        exp: i64,
        issued_by: &str,
        issuer_id: Option<&str>,
    ) -> Result<Issued, ApiTokenError> {
        let now = self.clock.now_ms();
        let id = random_id();
        let claims = Claims {
            sub: new.subject.chars().take(120).collect(),
            org: org.map(|o| o.to_string()),
            scopes: new.scopes.clone(),
            exp,
            iat: now / 1000,
            jti: id.clone(),
        };
        let keys = self.secrets.signing_keys().await?;
        let token = issue(&keys.current, &claims)?;
        let record = ApiTokenRecord {
            id: id.clone(),
            subject: claims.sub.clone(),
            scopes: new.scopes.clone(),
            issued_by: issued_by.chars().take(120).collect(),
            issuer_id: issuer_id.map(str::to_string),
            issued_at_ms: now,
            expires_at_ms: exp * 1000,
            revoked_at_ms: None,
        };
        if let Some(issuer) = issuer_id {
            let link = Put::new(issued_by_key(issuer, org, &id), Vec::new(), Condition::None)
                .expires_at(Some(record.expires_at_ms + 60_000));
            self.store.put(link).await?;
        }
        let put = Put::new(any_api_token_key(org, &id), encode(&record), Condition::Absent)
            .expires_at(Some(record.expires_at_ms));
        self.store.put(put).await?;
        Ok(Issued { record, token: token.into() })
    }

    /// The operator's platform tokens (not limited to one organisation).
    pub async fn list_platform(&self) -> Result<Vec<ApiTokenRecord>, ApiTokenError> {
        let items = self.store.query(PLATFORM_PK, API_TOKENS_PREFIX, 10_000).await?;
        Ok(items.iter().map(decode).collect::<Result<_, _>>()?)
    }

    /// Revokes a platform token by id, and every token issued through it. Returns how many were revoked.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_platform(&self, actor: &str, id: &str) -> Result<usize, ApiTokenError> {
        if !valid_id(id) {
            return Err(ApiTokenError::InvalidId);
        }
        let Some(item) = self.store.get(&any_api_token_key(None, id)).await? else {
            return Err(ApiTokenError::PlatformNotFound(id.to_string()));
        };
        let rec: ApiTokenRecord = decode(&item)?;
        let n = self.revoke_tree(&rec, None).await?;
        tracing::info!(actor, id, revoked = n, "platform API token revoked");
        Ok(n)
    }

    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn list(&self, org: &OrgId) -> Result<Vec<ApiTokenRecord>, ApiTokenError> {
        lookup::org(&*self.store, org).await?;
        let items = self.store.query(&org_pk(org), API_TOKENS_PREFIX, 10_000).await?;
        Ok(items.iter().map(decode).collect::<Result<_, _>>()?)
    }

    /// Revokes one token and every token issued through it (transitively): from the markers' writes on, every
    /// process refuses them.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn revoke(&self, org: &OrgId, actor: &str, id: &str) -> Result<(), ApiTokenError> {
        lookup::org(&*self.store, org).await?;
        if !valid_id(id) {
            return Err(ApiTokenError::InvalidId);
        }
        let Some(item) = self.store.get(&any_api_token_key(Some(org), id)).await? else {
            return Err(ApiTokenError::NotFound { org: org.clone(), id: id.to_string() });
        };
        let rec: ApiTokenRecord = decode(&item)?;
        let n = self.revoke_tree(&rec, Some(org)).await?;
        let detail = match n {
            1 => format!("id {id}"),
            n => format!("id {id} and {} tokens issued through it", n - 1),
        };
        self.audit.record(org, actor, "api_token.revoke", None, "ok", Some(detail)).await;
        Ok(())
    }

    /// Revokes `root` and, breadth first, every token issued through it. Each token's marker is written before
    /// its children are looked up. Returns how many tokens were revoked (`root` included).
    async fn revoke_tree(&self, root: &ApiTokenRecord, org: Option<&OrgId>) -> Result<usize, ApiTokenError> {
        let mut queue = std::collections::VecDeque::from([(org.cloned(), root.clone())]);
        let mut seen = std::collections::HashSet::new();
        while let Some((org, mut rec)) = queue.pop_front() {
            if !seen.insert(rec.id.clone()) {
                continue;
            }
            self.store.put(revocation_marker(&rec)).await?;
            if rec.revoked_at_ms.is_none() {
                rec.revoked_at_ms = Some(self.clock.now_ms());
                let key = any_api_token_key(org.as_ref(), &rec.id);
                self.store
                    .put(Put::new(key, encode(&rec), Condition::None).expires_at(Some(rec.expires_at_ms)))
                    .await?;
            }
            for link in self.store.query(&issued_by_pk(&rec.id), "", 100_000).await? {
                let Some((child_org, child_id)) = parse_issued_by_sk(&link.key.sk) else { continue };
                if let Some(item) = self.store.get(&any_api_token_key(child_org.as_ref(), &child_id)).await? {
                    queue.push_back((child_org, decode(&item)?));
                }
            }
        }
        Ok(seen.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::keys::local::LocalKeys;
    use crate::secrets::LocalSecrets;
    use crate::store::memory::MemoryStore;

    fn app(clock: &ManualClock) -> Arc<super::super::App> {
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let keys = Arc::new(LocalKeys::new(store.clone(), [7u8; 32]));
        let secrets = Arc::new(LocalSecrets::new(Default::default(), [9u8; 32]));
        let config = Config::from_toml("[scope_groups]\nbi = [\"containers.read\", \"databases.read\"]\n").unwrap();
        super::super::App::new(store, keys, secrets, Arc::new(clock.clone()), config)
    }

    fn new(scopes: &[&str], expires_in_s: Option<u64>) -> NewApiToken {
        NewApiToken { subject: "power-bi".into(), scopes: scopes.iter().map(|s| s.to_string()).collect(), expires_in_s }
    }

    #[tokio::test]
    async fn a_person_issues_within_the_sessions_scopes_for_up_to_two_years() {
        let clock = ManualClock::new(1_700_000_000_000);
        let app = app(&clock);
        let acme = OrgId::parse("acme").unwrap();
        app.orgs.create("ops", &acme, None).await.unwrap();
        let held: Vec<String> = vec!["containers.readwrite".into(), "databases.read".into()];
        let t = &app.api_tokens;
        // A group whose every scope the person holds; a read scope under a readwrite one.
        let ok = t.issue_for_person(&acme, "oidc:alice", &held, new(&["bi"], None)).await.unwrap();
        assert_eq!(ok.record.issued_by, "oidc:alice");
        assert_eq!(ok.record.issuer_id, None, "not tied to the session's lifetime");
        assert_eq!(ok.record.expires_at_ms - clock.now_ms(), 90 * 86_400_000, "90 days by default");
        let long = t.issue_for_person(&acme, "oidc:alice", &held, new(&["containers.read"], Some(10 * 365 * 86_400)));
        assert_eq!(
            long.await.unwrap().record.expires_at_ms - clock.now_ms(),
            MAX_TTL_S as i64 * 1000,
            "two years at most"
        );
        // More than held, the reveal scope under admin, malformed: refused, nothing stored.
        let more = t.issue_for_person(&acme, "oidc:alice", &held, new(&["databases.readwrite"], None)).await;
        assert!(matches!(more, Err(ApiTokenError::ScopeEscalation(s)) if s == "databases.readwrite"));
        let admin = vec!["admin".to_string()];
        let reveal = t.issue_for_person(&acme, "oidc:alice", &admin, new(&["credentials.reveal"], None)).await;
        assert!(matches!(reveal, Err(ApiTokenError::ScopeEscalation(_))));
        let bad = t.issue_for_person(&acme, "oidc:alice", &admin, new(&[], None)).await;
        assert!(matches!(bad, Err(ApiTokenError::InvalidScopes)));
        assert_eq!(t.list(&acme).await.unwrap().len(), 2);
        // The token works as any other, and names the organisation.
        let claims = t.authenticate(secrecy::ExposeSecret::expose_secret(&ok.token)).await.unwrap();
        assert_eq!((claims.org.as_deref(), claims.scopes.clone()), (Some("acme"), vec!["bi".to_string()]));
        // Organisations: listed by name, a deleted one not.
        let other = OrgId::parse("other").unwrap();
        app.orgs.create("ops", &other, None).await.unwrap();
        let names: Vec<String> = app.orgs.list().await.unwrap().iter().map(|o| o.name.to_string()).collect();
        assert_eq!(names, ["acme", "other"]);
        app.orgs.delete("ops", &other).await.unwrap();
        let names: Vec<String> = app.orgs.list().await.unwrap().iter().map(|o| o.name.to_string()).collect();
        assert_eq!(names, ["acme"]);
    }
}
