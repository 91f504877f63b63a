//! The `Store` port: items with versions, conditional writes, all-or-nothing transactions and TTL.
//!
//! Its shape is DynamoDB's on purpose (partition key + sort key, a version attribute guarded by condition
//! expressions, two sparse secondary indexes), so that the SQLite adapter, the in-memory fake and the DynamoDB
//! adapter are interchangeable and one conformance suite ([`conformance`]) runs against all of them.
//!
//! Contract, for every adapter:
//! - Every successful write of an item sets its `version` to the previous version + 1 (1 for a new item).
//! - A write whose [`Condition`] does not hold MUST fail with [`StoreError::Conflict`] and change nothing.
//! - An item whose `expires_at_ms` is in the past MUST read as absent (DynamoDB deletes expired items late,
//!   moto never): `get`, `query` and conditions all treat it as gone.
//! - `transact` applies every operation or none; any failed condition gives `Conflict`.
//! - `get` and `query` are strongly consistent. `query_index` may lag behind writes (DynamoDB's secondary indexes
//!   are eventually consistent): callers use it to find candidates and re-read each item before acting on it.

pub mod conformance;
pub mod memory;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Millis;

pub type Version = u64;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Self { pk: pk.into(), sk: sk.into() }
    }
}

/// The two sparse secondary indexes. An item appears in an index only when it carries a key for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index {
    /// Chains ordered by the time they are next due for a refresh (the sweep reads this, never a scan).
    Due,
    /// Containers that need a person, per organisation.
    Repair,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexKey {
    pub pk: String,
    pub sk: String,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub key: Key,
    pub version: Version,
    pub body: Vec<u8>,
    pub expires_at_ms: Option<Millis>,
    pub due: Option<IndexKey>,
    pub repair: Option<IndexKey>,
}

/// When a write may happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    None,
    /// Only if no (unexpired) item has this key.
    Absent,
    /// Only if the item exists (unexpired).
    Exists,
    /// Only if the item exists at exactly this version.
    Version(Version),
}

/// A full write of one item.
#[derive(Clone, Debug)]
pub struct Put {
    pub key: Key,
    pub body: Vec<u8>,
    pub expires_at_ms: Option<Millis>,
    pub due: Option<IndexKey>,
    pub repair: Option<IndexKey>,
    pub condition: Condition,
}

impl Put {
    pub fn new(key: Key, body: Vec<u8>, condition: Condition) -> Self {
        Self { key, body, expires_at_ms: None, due: None, repair: None, condition }
    }
    pub fn expires_at(mut self, at: Option<Millis>) -> Self {
        self.expires_at_ms = at;
        self
    }
}

#[derive(Clone, Debug)]
pub enum WriteOp {
    Put(Put),
    Delete {
        key: Key,
        condition: Condition,
    },
    /// Writes nothing; fails the transaction if the condition does not hold.
    Check {
        key: Key,
        condition: Condition,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conditional write failed")]
    Conflict,
    #[error("store unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The item, or `None` if absent or expired.
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError>;
    /// Several items read together, in the order of `keys` (`None` where absent or expired). A backend that can
    /// read them in one snapshot does (SQLite: one read transaction, which also costs one lock instead of one
    /// per item); the default reads them one by one.
    async fn get_many(&self, keys: &[&Key]) -> Result<Vec<Option<Item>>, StoreError> {
        let mut items = Vec::with_capacity(keys.len());
        for key in keys {
            items.push(self.get(key).await?);
        }
        Ok(items)
    }
    /// Writes one item if `put.condition` holds; returns its new version.
    async fn put(&self, put: Put) -> Result<Version, StoreError>;
    /// Deletes one item if the condition holds. Deleting an absent item with `Condition::None` succeeds.
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError>;
    /// Items of one partition whose sort key starts with `sk_prefix`, in sort-key order, at most `limit`.
    async fn query(&self, pk: &str, sk_prefix: &str, limit: usize) -> Result<Vec<Item>, StoreError>;
    /// Items of one partition whose sort key is below `before` (every one when `None`), newest first: in
    /// descending sort-key order, at most `limit`. (For paging back through time-ordered keys.)
    async fn query_back(&self, pk: &str, before: Option<&str>, limit: usize) -> Result<Vec<Item>, StoreError>;
    /// Items of one index partition with index sort key `<= sk_max` (all when `None`), in index order.
    async fn query_index(
        &self,
        index: Index,
        pk: &str,
        sk_max: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError>;
    /// All operations or none.
    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError>;
    /// Deletes expired items for good; returns how many. Backends that expire items themselves (DynamoDB TTL)
    /// keep the default, which does nothing.
    async fn purge_expired(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// The shard (`0..shards`) of a partition key: FNV-1a (64 bit) of its bytes, mixed by MurmurHash3's 64-bit
/// finalizer, modulo `shards`. Stable across versions, processes and platforms on purpose: the same item always
/// lands in the same shard, so rewriting it with another index sort key replaces its entry instead of leaving a
/// stale copy in another shard. The finalizer matters: FNV-1a's low bits depend only on the bytes' low bits, so
/// keys that differ in a repeated number (`chain#o7#db#c7`) would fill only some of 16 shards without it.
pub fn shard_of(key: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(shards.max(1))) as u32
}

/// Reads several partitions of one index (the shards of a sharded index key) with `sk_max` as in
/// [`Store::query_index`], at most `limit` items in all, and merges them in index order (ties by item key).
///
/// Fair by construction: each partition first gets an equal share of `limit` (read concurrently), so one crowded
/// partition cannot take the whole budget and the others' oldest items come along every time; what the quiet
/// partitions left unused is then shared among the partitions that filled their share (a second read of those).
pub async fn query_index_partitions(
    store: &Arc<dyn Store>,
    index: Index,
    pks: &[String],
    sk_max: Option<&str>,
    limit: usize,
) -> Result<Vec<Item>, StoreError> {
    if pks.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let share = limit.div_ceil(pks.len());
    let mut found = read_partitions(store, index, pks, sk_max, share).await?;
    let used: usize = found.iter().map(Vec::len).sum();
    let full: Vec<usize> = (0..pks.len()).filter(|&i| found[i].len() >= share).collect();
    if used < limit && !full.is_empty() {
        let more = share + (limit - used) / full.len();
        if more > share {
            let again: Vec<String> = full.iter().map(|&i| pks[i].clone()).collect();
            for (i, items) in full.into_iter().zip(read_partitions(store, index, &again, sk_max, more).await?) {
                found[i] = items;
            }
        }
    }
    let sk_of = |i: &Item| match index {
        Index::Due => i.due.as_ref().map(|k| k.sk.clone()),
        Index::Repair => i.repair.as_ref().map(|k| k.sk.clone()),
    };
    let mut items: Vec<Item> = found.into_iter().flatten().collect();
    items.sort_by(|a, b| sk_of(a).cmp(&sk_of(b)).then_with(|| a.key.cmp(&b.key)));
    Ok(items)
}

/// Each partition's items (at most `limit` each), in the order of `pks`, read concurrently.
async fn read_partitions(
    store: &Arc<dyn Store>,
    index: Index,
    pks: &[String],
    sk_max: Option<&str>,
    limit: usize,
) -> Result<Vec<Vec<Item>>, StoreError> {
    let mut reads = tokio::task::JoinSet::new();
    for (n, pk) in pks.iter().enumerate() {
        let (store, pk, sk_max) = (store.clone(), pk.clone(), sk_max.map(str::to_owned));
        reads.spawn(async move { (n, store.query_index(index, &pk, sk_max.as_deref(), limit).await) });
    }
    let mut found = vec![Vec::new(); pks.len()];
    while let Some(read) = reads.join_next().await {
        let (n, items) = read.map_err(|e| StoreError::Unavailable(e.into()))?;
        found[n] = items?;
    }
    Ok(found)
}

/// Decide whether `condition` holds for the item currently stored (already filtered for expiry).
pub(crate) fn condition_holds(condition: Condition, current: Option<Version>) -> bool {
    match (condition, current) {
        (Condition::None, _) => true,
        (Condition::Absent, None) => true,
        (Condition::Absent, Some(_)) => false,
        (Condition::Exists, Some(_)) => true,
        (Condition::Exists, None) => false,
        (Condition::Version(want), Some(have)) => want == have,
        (Condition::Version(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::ManualClock;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let store = super::sqlite::SqliteStore::open(&dir.path().join("s.sqlite"), Arc::new(clock.clone())).unwrap();
        super::conformance::run(Arc::new(store), clock, "t").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_store_conforms() {
        let clock = ManualClock::new(1_700_000_000_000);
        let store = super::memory::MemoryStore::new(Arc::new(clock.clone()));
        super::conformance::run(Arc::new(store), clock, "t").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_sqlite_handles_on_one_file_see_each_others_writes_and_conflicts() {
        use super::*;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let path = dir.path().join("s.sqlite");
        let a = sqlite::SqliteStore::open(&path, Arc::new(clock.clone())).unwrap();
        let b = sqlite::SqliteStore::open(&path, Arc::new(clock.clone())).unwrap();
        a.put(Put::new(Key::new("p", "s"), b"1".to_vec(), Condition::Absent)).await.unwrap();
        assert_eq!(b.get(&Key::new("p", "s")).await.unwrap().unwrap().body, b"1");
        b.put(Put::new(Key::new("p", "s"), b"2".to_vec(), Condition::Version(1))).await.unwrap();
        assert!(matches!(
            a.put(Put::new(Key::new("p", "s"), b"x".to_vec(), Condition::Version(1))).await,
            Err(StoreError::Conflict)
        ));
    }
}
