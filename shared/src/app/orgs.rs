//! Organisations (each with its own encryption key) and their databases.

use std::sync::Arc;

use crate::clock::{Clock, Millis};
use crate::ids::{DbName, OrgId};
use crate::keys::{KeyError, Vault};
use crate::records::*;
use crate::store::{Condition, Put, Store, StoreError, WriteOp};

use super::Ports;
use super::api_tokens::ApiTokens;
use super::audit::AuditLog;
use super::lookup::{self, LookupError};

#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("organisation '{0}' already exists")]
    Exists(OrgId),
    #[error("the name '{org}' belonged to an organisation deleted at {deleted_at_ms}")]
    NameRetired { org: OrgId, deleted_at_ms: Millis },
    #[error("organisation '{0}' still has databases")]
    NotEmpty(OrgId),
    #[error("database '{0}' already exists")]
    DatabaseExists(DbName),
    #[error("database '{0}' still has containers")]
    DatabaseNotEmpty(DbName),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

#[derive(Clone)]
pub struct Orgs {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
    api_tokens: ApiTokens,
}

impl Orgs {
    pub fn new(p: &Ports, audit: AuditLog, api_tokens: ApiTokens) -> Self {
        Self { store: p.store.clone(), vault: p.vault.clone(), clock: p.clock.clone(), audit, api_tokens }
    }

    /// Changes the organisation's settings (`allow_credential_reveal`); audited with the old and new value.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn set_settings(
        &self,
        actor: &str,
        org: &OrgId,
        allow_credential_reveal: Option<bool>,
    ) -> Result<OrgRecord, OrgError> {
        let (mut rec, version) = lookup::org(&*self.store, org).await?;
        if let Some(allow) = allow_credential_reveal {
            let detail = format!("allow_credential_reveal: {} -> {allow}", rec.allow_credential_reveal);
            rec.allow_credential_reveal = allow;
            self.store.put(Put::new(org_key(org), encode(&rec), Condition::Version(version))).await?;
            self.audit.record(org, actor, "org.settings", None, "ok", Some(detail)).await;
        }
        Ok(rec)
    }

    /// Creates an organisation and its encryption key.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn create(&self, actor: &str, org: &OrgId, display_name: Option<String>) -> Result<OrgRecord, OrgError> {
        // Look before making a key, so that a taken or retired name does not leave an orphan key behind.
        if let Some(item) = self.store.get(&org_key(org)).await? {
            let existing: OrgRecord = decode(&item)?;
            return Err(match existing.deleted_at_ms {
                Some(at) => OrgError::NameRetired { org: org.clone(), deleted_at_ms: at },
                None => OrgError::Exists(org.clone()),
            });
        }
        self.vault.keys().create_org_key(org.as_str()).await?;
        let rec = OrgRecord {
            name: org.clone(),
            display_name,
            created_at_ms: self.clock.now_ms(),
            webhook_url: None,
            sealed_webhook_url: None,
            sealed_webhook_secret: None,
            webhook_events: None,
            allow_credential_reveal: false,
            deleted_at_ms: None,
        };
        let ops = vec![
            WriteOp::Put(Put::new(org_key(org), encode(&rec), Condition::Absent)),
            WriteOp::Put(Put::new(org_list_key(org), Vec::new(), Condition::None)),
        ];
        match self.store.transact(ops).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Err(OrgError::Exists(org.clone())),
            Err(e) => return Err(e.into()),
        }
        self.audit.record(org, actor, "org.create", None, "ok", None).await;
        Ok(rec)
    }

    /// Every organisation that exists (not the deleted ones), by name: for platform operators.
    #[tracing::instrument(skip_all)]
    pub async fn list(&self) -> Result<Vec<OrgRecord>, OrgError> {
        let mut out = Vec::new();
        for item in self.store.query(ORG_LIST_PK, "", 100_000).await? {
            let Ok(org) = OrgId::parse(&item.key.sk) else { continue };
            match lookup::org(&*self.store, &org).await {
                Ok((rec, _)) => out.push(rec),
                Err(LookupError::OrgNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(out)
    }

    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn get(&self, org: &OrgId) -> Result<OrgRecord, OrgError> {
        Ok(lookup::org(&*self.store, org).await?.0)
    }

    /// Deletes an empty organisation (platform callers only, which the API enforces): its API tokens are revoked,
    /// its record becomes a tombstone (the name is retired), and its key is destroyed (KMS: scheduled for
    /// deletion), so whatever sealed data remained anywhere can no longer be opened. Returns how many API tokens
    /// were revoked.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn delete(&self, actor: &str, org: &OrgId) -> Result<usize, OrgError> {
        let (mut rec, version) = lookup::org(&*self.store, org).await?;
        if !self.store.query(&org_pk(org), DATABASES_PREFIX, 1).await?.is_empty() {
            return Err(OrgError::NotEmpty(org.clone()));
        }
        let revoked = self.api_tokens.revoke_all(org).await?;
        rec.deleted_at_ms = Some(self.clock.now_ms());
        rec.webhook_url = None;
        rec.sealed_webhook_url = None;
        rec.sealed_webhook_secret = None;
        self.store
            .transact(vec![
                WriteOp::Put(Put::new(org_key(org), encode(&rec), Condition::Version(version))),
                WriteOp::Delete { key: org_list_key(org), condition: Condition::None },
            ])
            .await?;
        self.vault.keys().delete_org_key(org.as_str()).await?;
        self.vault.forget_all();
        let detail = format!("key destroyed, {revoked} API tokens revoked");
        self.audit.record(org, actor, "org.delete", None, "ok", Some(detail)).await;
        Ok(revoked)
    }

    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn create_db(
        &self,
        actor: &str,
        org: &OrgId,
        db: &DbName,
        description: Option<String>,
    ) -> Result<DbRecord, OrgError> {
        lookup::org(&*self.store, org).await?;
        let rec = DbRecord { name: db.clone(), description, created_at_ms: self.clock.now_ms() };
        match self.store.put(Put::new(db_key(org, db), encode(&rec), Condition::Absent)).await {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(OrgError::DatabaseExists(db.clone())),
            Err(e) => return Err(e.into()),
        }
        self.audit.record(org, actor, "database.create", None, "ok", Some(db.to_string())).await;
        Ok(rec)
    }

    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn databases(&self, org: &OrgId) -> Result<Vec<DbRecord>, OrgError> {
        lookup::org(&*self.store, org).await?;
        let items = self.store.query(&org_pk(org), DATABASES_PREFIX, 1000).await?;
        Ok(items.iter().map(decode).collect::<Result<_, _>>()?)
    }

    /// Deletes an empty database.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn delete_db(&self, actor: &str, org: &OrgId, db: &DbName) -> Result<(), OrgError> {
        lookup::database(&*self.store, org, db).await?;
        if !self.store.query(&org_pk(org), &containers_of_db_prefix(db), 1).await?.is_empty() {
            return Err(OrgError::DatabaseNotEmpty(db.clone()));
        }
        self.store.delete(&db_key(org, db), Condition::Exists).await?;
        self.audit.record(org, actor, "database.delete", None, "ok", Some(db.to_string())).await;
        Ok(())
    }
}
