//! Organisation export and import: everything chainkeeper holds for one organisation, in one file sealed under
//! that organisation's own key, and back into a store (another data directory, or the same deployment after a
//! loss).
//!
//! What the file holds (`infra/README.md`, "Organisation export and import"): a clear JSON header (format,
//! organisation, export time, and — where the store keeps one, i.e. embedded mode — the organisation's key item,
//! itself wrapped by the master key) and one sealed body. The body is every stored item of the organisation:
//! its record, databases, containers (their secrets still sealed field by field), API-token metadata (never a
//! token), each container's chain (sealed tokens), rescued tokens and auto-recovery credentials (sealed), its
//! audit log, and the single-instance identifiers of its authorizations. Secrets are never opened: what was
//! sealed stays sealed, and the body as a whole is sealed again (AES-256-GCM with a data key wrapped by the
//! organisation's key, bound to the organisation's name), so the file opens only where that organisation's key
//! is: the same master key (embedded) or the same KMS key (AWS).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Millis};
use crate::ids::OrgId;
use crate::keys::{Field, KeyError, Vault, org_context};
use crate::records::*;
use crate::store::{Condition, IndexKey, Item, Key, Put, Store, StoreError};

use super::Ports;
use super::audit::AuditLog;
use super::lookup::{self, LookupError};

/// The format name in every export file's header.
pub const FORMAT: &str = "chainkeeper-org-export/1";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("not a chainkeeper organisation export (format {FORMAT} expected)")]
    NotAnExport,
    #[error("this file holds organisation '{found}', not '{wanted}'")]
    WrongOrg { found: String, wanted: OrgId },
    #[error(
        "the export of '{0}' does not open: the file is corrupted, or this deployment does not hold that \
         organisation's key (embedded: the source's master key; AWS: the organisation's KMS key)"
    )]
    Unreadable(OrgId),
    #[error("organisation '{0}' already exists here (a deleted one's name stays retired): nothing was imported")]
    Exists(OrgId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// The clear part of an export file.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    org: String,
    exported_at_ms: Millis,
    /// The organisation's key item (embedded stores: wrapped by the master key), base64; none on AWS (KMS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org_key_item: Option<String>,
    /// How many items the sealed body holds.
    items: usize,
    /// The body: `Vault::seal` under the organisation's key, context field `org_export`.
    sealed_body: String,
}

/// One stored item as it is in the file.
#[derive(Serialize, Deserialize)]
struct ItemOut {
    pk: String,
    sk: String,
    /// The item's bytes (a record: JSON whose secrets are `sealed_*` ciphertexts), base64.
    body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    due: Option<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    repair: Option<(String, String)>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    org: String,
    items: Vec<ItemOut>,
}

/// What an import did.
#[derive(Debug, Serialize)]
pub struct Imported {
    pub org: String,
    pub items: usize,
    pub containers: usize,
    /// Single-instance identifiers another container here already holds (left as they are).
    pub identifiers_skipped: usize,
}

#[derive(Clone)]
pub struct Backup {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
}

fn item_out(i: &Item) -> ItemOut {
    ItemOut {
        pk: i.key.pk.clone(),
        sk: i.key.sk.clone(),
        body: B64.encode(&i.body),
        expires_at_ms: i.expires_at_ms,
        due: i.due.as_ref().map(|d| (d.pk.clone(), d.sk.clone())),
        repair: i.repair.as_ref().map(|r| (r.pk.clone(), r.sk.clone())),
    }
}

impl Backup {
    pub fn new(p: &Ports, audit: AuditLog) -> Self {
        Self { store: p.store.clone(), vault: p.vault.clone(), clock: p.clock.clone(), audit }
    }

    /// The export file of `org` (JSON text). Reads only; nothing in the store changes but an audit entry.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn export(&self, actor: &str, org: &OrgId) -> Result<String, BackupError> {
        lookup::org(&*self.store, org).await?;
        let key_item = org_wrapped_key_key(org.as_str());
        let mut items = Vec::new();
        let mut containers = Vec::new();
        for i in self.store.query(&org_pk(org), "", 1_000_000).await? {
            if i.key == key_item {
                continue; // travels in the header: it must be in place before the body can be opened
            }
            if let Ok(c) = decode::<ContainerRecord>(&i) {
                containers.push(c);
            }
            items.push(item_out(&i));
        }
        if let Some(i) = self.store.get(&org_list_key(org)).await? {
            items.push(item_out(&i));
        }
        for c in &containers {
            for i in self.store.query(&chain_pk(&c.container), "", 1_000_000).await? {
                items.push(item_out(&i));
            }
            if let Some(id) = c.identity.as_ref().and_then(|i| i.single_instance_id.as_deref())
                && let Some(i) = self.store.get(&ident_key(id)).await?
            {
                items.push(item_out(&i));
            }
        }
        for i in self.store.query(&audit_pk(org), "", 1_000_000).await? {
            items.push(item_out(&i));
        }
        let body = Body { org: org.to_string(), items };
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(&body).map_err(anyhow_store)?);
        let sealed_body = self.vault.seal(&org_context(org, Field::OrgExport), &plain).await?;
        let org_key_item = self.store.get(&key_item).await?.map(|i| B64.encode(&i.body));
        let header = Header {
            format: FORMAT.into(),
            org: org.to_string(),
            exported_at_ms: self.clock.now_ms(),
            org_key_item,
            items: body.items.len(),
            sealed_body,
        };
        let detail = format!("{} items, {} containers", body.items.len(), containers.len());
        self.audit.record(org, actor, "org.export", None, "ok", Some(detail)).await;
        Ok(serde_json::to_string_pretty(&header).map_err(anyhow_store)?)
    }

    /// Imports an export file. `expect`: the organisation the caller means (refused if the file holds another).
    /// Refuses an organisation that exists here; writes the organisation's record last, so that a failure
    /// midway leaves no visible organisation and the import can simply be run again.
    #[tracing::instrument(skip_all)]
    pub async fn import(&self, actor: &str, file: &str, expect: Option<&OrgId>) -> Result<Imported, BackupError> {
        let header: Header = serde_json::from_str(file).map_err(|_| BackupError::NotAnExport)?;
        if header.format != FORMAT {
            return Err(BackupError::NotAnExport);
        }
        let org = OrgId::parse(&header.org).map_err(|_| BackupError::NotAnExport)?;
        if let Some(want) = expect
            && *want != org
        {
            return Err(BackupError::WrongOrg { found: header.org.clone(), wanted: want.clone() });
        }
        if self.store.get(&org_key(&org)).await?.is_some() {
            return Err(BackupError::Exists(org));
        }
        // The organisation's key item (embedded) goes in first: the body opens with it.
        let key_item = org_wrapped_key_key(org.as_str());
        let mut placed_key = false;
        if let Some(k) = &header.org_key_item {
            let bytes = B64.decode(k).map_err(|_| BackupError::Unreadable(org.clone()))?;
            match self.store.put(Put::new(key_item.clone(), bytes, Condition::Absent)).await {
                Ok(_) => placed_key = true,
                Err(StoreError::Conflict) => {} // this store already has a key for the name: the body says if it fits
                Err(e) => return Err(e.into()),
            }
        }
        let plain = match self.vault.open(&org_context(&org, Field::OrgExport), &header.sealed_body).await {
            Ok(p) => p,
            Err(KeyError::Decrypt) | Err(KeyError::NoOrgKey(_)) => {
                if placed_key {
                    let _ = self.store.delete(&key_item, Condition::None).await;
                    self.vault.forget_all();
                }
                return Err(BackupError::Unreadable(org));
            }
            Err(e) => return Err(e.into()),
        };
        let body: Body = serde_json::from_slice(&plain).map_err(|_| BackupError::Unreadable(org.clone()))?;
        if body.org != org.as_str() {
            return Err(BackupError::Unreadable(org));
        }
        let meta = org_key(&org);
        let mut report = Imported { org: org.to_string(), items: 0, containers: 0, identifiers_skipped: 0 };
        let mut meta_put = None;
        let mut revoked = Vec::new();
        for i in body.items {
            let key = Key::new(i.pk, i.sk);
            if !belongs_to(&org, &key) {
                return Err(BackupError::Unreadable(org));
            }
            let bytes = B64.decode(&i.body).map_err(|_| BackupError::Unreadable(org.clone()))?;
            let is_ident = key.pk.starts_with("ident#");
            let mut put = Put::new(key.clone(), bytes, if is_ident { Condition::Absent } else { Condition::None })
                .expires_at(i.expires_at_ms);
            put.due = i.due.map(|(pk, sk)| IndexKey { pk, sk });
            put.repair = i.repair.map(|(pk, sk)| IndexKey { pk, sk });
            if key.sk.starts_with("ctr#") {
                report.containers += 1;
            }
            if key.sk.starts_with(API_TOKENS_PREFIX)
                && let Ok(t) = serde_json::from_slice::<ApiTokenRecord>(&put.body)
                && t.revoked_at_ms.is_some()
            {
                revoked.push(t);
            }
            if key == meta {
                meta_put = Some(put);
                continue;
            }
            match self.store.put(put).await {
                Ok(_) => report.items += 1,
                Err(StoreError::Conflict) if is_ident => report.identifiers_skipped += 1,
                Err(e) => return Err(e.into()),
            }
        }
        // A token revoked at the source stays refused here.
        for t in revoked {
            let marker =
                Put::new(revoked_key(&t.id), Vec::new(), Condition::None).expires_at(Some(t.expires_at_ms + 60_000));
            self.store.put(marker).await?;
        }
        let Some(mut meta_put) = meta_put else { return Err(BackupError::Unreadable(org)) };
        meta_put.condition = Condition::Absent;
        match self.store.put(meta_put).await {
            Ok(_) => report.items += 1,
            Err(StoreError::Conflict) => return Err(BackupError::Exists(org)),
            Err(e) => return Err(e.into()),
        }
        let detail = format!("{} items, {} containers", report.items, report.containers);
        self.audit.record(&org, actor, "org.import", None, "ok", Some(detail)).await;
        Ok(report)
    }
}

/// Whether an item of an export belongs to `org` (a file that names other partitions is refused).
fn belongs_to(org: &OrgId, key: &Key) -> bool {
    key.pk == org_pk(org)
        || *key == org_list_key(org)
        || key.pk.starts_with(&format!("chain#{org}#"))
        || key.pk == audit_pk(org)
        || (key.pk.starts_with("ident#") && key.sk == "ident")
}

fn anyhow_store(e: serde_json::Error) -> StoreError {
    StoreError::Unavailable(anyhow::Error::from(e))
}
