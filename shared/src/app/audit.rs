//! The audit log of an organisation: who did what to which container, when, with what outcome. Append-only,
//! never a secret value, kept for `server.audit_retention_days`.

use std::sync::Arc;

use crate::clock::Clock;
use crate::ids::{ContainerRef, OrgId, random_id};
use crate::records::{AuditRecord, audit_key, audit_pk, decode, encode};
use crate::store::{Condition, Put, Store, StoreError};

use super::Ports;
use super::lookup::{self, LookupError};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention_days: u64,
}

impl AuditLog {
    pub fn new(p: &Ports) -> Self {
        Self { store: p.store.clone(), clock: p.clock.clone(), retention_days: p.config.server.audit_retention_days }
    }

    /// Appends one entry. An audit write that fails is logged, never fatal to the action it records.
    pub async fn record(
        &self,
        org: &OrgId,
        actor: &str,
        action: &str,
        container: Option<&ContainerRef>,
        outcome: &str,
        detail: Option<String>,
    ) {
        let now = self.clock.now_ms();
        let rec = AuditRecord {
            at_ms: now,
            actor: actor.to_string(),
            action: action.to_string(),
            container: container.map(ContainerRef::local_name),
            outcome: outcome.to_string(),
            detail,
        };
        let retention_ms = self.retention_days as i64 * 86_400_000;
        let put = Put::new(audit_key(org, now, &random_id()), encode(&rec), Condition::Absent)
            .expires_at(Some(now + retention_ms));
        if let Err(e) = self.store.put(put).await {
            tracing::error!(error = %e, %org, action, "audit entry not written");
        }
    }

    /// The newest `limit` entries (1-1000), newest first.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn entries(&self, org: &OrgId, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        lookup::org(&*self.store, org).await?;
        let mut items = self.store.query(&audit_pk(org), "", 100_000).await?;
        items.reverse();
        items.truncate(limit.clamp(1, 1000));
        Ok(items.iter().map(decode).collect::<Result<_, _>>()?)
    }
}
