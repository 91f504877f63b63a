//! The platform's registry of single-instance identifiers (`client_id#user_id`, see `authorization`): which
//! organisation, database and container hold one, and its release when the holder cannot be reached (seed 001's
//! escalation: the operator acts on a request from another organisation). Platform tokens only: an organisation's
//! token never reaches it, so no organisation learns another's names from it.

use std::sync::Arc;

use crate::clock::Millis;
use crate::ids::{ContainerRef, OrgId};
use crate::records::{IdentRecord, decode, ident_key};
use crate::store::{Store, StoreError, WriteOp};

use super::Ports;
use super::audit::AuditLog;
use super::lookup::{self, LookupError};

#[derive(Debug, thiserror::Error)]
pub enum IdentifierError {
    #[error("the identifier is empty or too long")]
    InvalidIdentifier,
    #[error("no container holds the identifier")]
    NotFound,
    #[error("a release needs a reason (1-500 characters)")]
    ReasonRequired,
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who holds an identifier.
pub struct Holder {
    pub identifier: String,
    pub container: ContainerRef,
    pub since_ms: Millis,
}

#[derive(Clone)]
pub struct Identifiers {
    store: Arc<dyn Store>,
    audit: AuditLog,
}

fn check(identifier: &str) -> Result<(), IdentifierError> {
    match identifier.len() {
        1..=300 if !identifier.chars().any(char::is_control) => Ok(()),
        _ => Err(IdentifierError::InvalidIdentifier),
    }
}

impl Identifiers {
    pub fn new(p: &Ports, audit: AuditLog) -> Self {
        Self { store: p.store.clone(), audit }
    }

    /// The container holding `identifier`.
    #[tracing::instrument(skip_all)]
    pub async fn find(&self, identifier: &str) -> Result<Holder, IdentifierError> {
        check(identifier)?;
        let item = self.store.get(&ident_key(identifier)).await?.ok_or(IdentifierError::NotFound)?;
        let rec: IdentRecord = decode(&item)?;
        Ok(Holder { identifier: identifier.to_string(), container: rec.container, since_ms: rec.since_ms })
    }

    /// Releases `identifier`, so that another container may take it. The holder keeps its container (its chain
    /// breaks once the user authorizes elsewhere, as Exact allows one); its audit log says who released the
    /// identifier and why, and so does the asking organisation's (`asked_by`), without the other's names.
    #[tracing::instrument(skip_all)]
    pub async fn release(
        &self,
        actor: &str,
        identifier: &str,
        reason: &str,
        asked_by: Option<&OrgId>,
    ) -> Result<Holder, IdentifierError> {
        check(identifier)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(IdentifierError::ReasonRequired);
        }
        if let Some(org) = asked_by {
            lookup::org(&*self.store, org).await?;
        }
        let key = ident_key(identifier);
        let item = self.store.get(&key).await?.ok_or(IdentifierError::NotFound)?;
        let rec: IdentRecord = decode(&item)?;
        let condition = crate::store::Condition::Version(item.version);
        self.store.transact(vec![WriteOp::Delete { key, condition }]).await?;
        let holder = &rec.container;
        let other = asked_by.filter(|o| **o != holder.org);
        let at_request = if other.is_some() { "; at the request of another organisation" } else { "" };
        let detail = format!("identifier {identifier} released: {reason}{at_request}");
        self.audit.record(&holder.org, actor, "identifier.release", Some(holder), "ok", Some(detail)).await;
        if let Some(org) = other {
            let detail = format!("identifier {identifier}, held by another organisation, released: {reason}");
            self.audit.record(org, actor, "identifier.release", None, "ok", Some(detail)).await;
        }
        Ok(Holder { identifier: identifier.to_string(), container: rec.container, since_ms: rec.since_ms })
    }
}
