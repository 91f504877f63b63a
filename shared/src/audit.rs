//! The audit log of an organisation: who did what to which container, when, with what outcome.
//! Append-only, never a secret value, kept for `server.audit_retention_days`.

use crate::app::Services;
use crate::ids::{ContainerRef, OrgId, random_id};
use crate::records::{AuditRecord, audit_key, encode};
use crate::store::{Condition, Put};

/// Appends one entry. An audit write that fails is logged, never fatal to the action it records.
pub async fn record(
    s: &Services,
    org: &OrgId,
    actor: &str,
    action: &str,
    container: Option<&ContainerRef>,
    outcome: &str,
    detail: Option<String>,
) {
    let now = s.clock.now_ms();
    let rec = AuditRecord {
        at_ms: now,
        actor: actor.to_string(),
        action: action.to_string(),
        container: container.map(ContainerRef::local_name),
        outcome: outcome.to_string(),
        detail,
    };
    let retention_ms = s.config.server.audit_retention_days as i64 * 86_400_000;
    let key = audit_key(org, now, &random_id());
    let put = Put::new(key, encode(&rec), Condition::Absent).expires_at(Some(now + retention_ms));
    if let Err(e) = s.store.put(put).await {
        tracing::error!(error = %e, %org, action, "audit entry not written");
    }
}
