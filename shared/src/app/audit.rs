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
    #[error("limit out of range")]
    BadLimit,
    #[error("cursor not valid")]
    BadCursor,
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

    /// One page of entries, newest first: at most `limit` (1-1000) entries older than the page `cursor`
    /// ended at (from the newest when `None`). `next_cursor` leads to the next page; `None` on the last.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn page(&self, org: &OrgId, limit: usize, cursor: Option<&str>) -> Result<AuditPage, AuditError> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(AuditError::BadLimit);
        }
        let before = cursor.map(decode_cursor).transpose()?;
        lookup::org(&*self.store, org).await?;
        let mut items = self.store.query_back(&audit_pk(org), before.as_deref(), limit + 1).await?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = if more { items.last().map(|i| encode_cursor(&i.key.sk)) } else { None };
        let entries = items.iter().map(decode).collect::<Result<_, _>>()?;
        Ok(AuditPage { entries, next_cursor })
    }
}

/// The largest page of audit entries.
pub const MAX_PAGE: usize = 1000;

/// One page of the audit log.
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    /// Where the next page starts; opaque to callers.
    pub next_cursor: Option<String>,
}

/// A cursor is the sort key of the last entry of a page, base64url-encoded: opaque, and only ever compared
/// against sort keys of the same organisation's partition.
fn encode_cursor(sk: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sk)
}

fn decode_cursor(cursor: &str) -> Result<String, AuditError> {
    use base64::Engine;
    if cursor.len() > 200 {
        return Err(AuditError::BadCursor);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| AuditError::BadCursor)?;
    let sk = String::from_utf8(bytes).map_err(|_| AuditError::BadCursor)?;
    // An audit sort key: `{15-digit time}#{random id}`.
    let (time, id) = sk.split_once('#').ok_or(AuditError::BadCursor)?;
    let well_formed = time.len() == 15
        && time.bytes().all(|b| b.is_ascii_digit())
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if well_formed { Ok(sk) } else { Err(AuditError::BadCursor) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_nothing_else_passes() {
        let sk = "000001700000000#AbC-_9";
        assert_eq!(decode_cursor(&encode_cursor(sk)).unwrap(), sk);
        for bad in ["", "!!", "e30", &encode_cursor("x#y"), &encode_cursor("000001700000000#"), &"A".repeat(300)] {
            assert!(decode_cursor(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any cursor text: no panic; what passes is an audit sort key; every sort key round-trips.
        #[test]
        fn fuzz_audit_cursor(raw in "\\PC{0,250}|[A-Za-z0-9_-]{0,60}", at in 0i64..999_999_999_999_999, id in "[A-Za-z0-9_-]{1,22}") {
            if let Ok(sk) = decode_cursor(&raw) {
                prop_assert!(sk.len() > 16 && sk.as_bytes()[15] == b'#');
            }
            let sk = format!("{}#{id}", crate::records::time_sk(at));
            prop_assert_eq!(decode_cursor(&encode_cursor(&sk)).unwrap(), sk);
        }
    }
}
