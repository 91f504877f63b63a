//! The scheduled sweep (the `refresh` Lambda on EventBridge; an in-process ticker in `serve`): keeps alive every
//! chain whose refresh token would expire unused, and refreshes chains in active use shortly before their access
//! token expires. It reads the `Due` index (never a scan) and goes through the same engine path as every caller,
//! with bounded concurrency. Running it twice, or late, is harmless: the engine only refreshes what is due.
//!
//! The `Due` index is sharded (`due#0` … `due#{N-1}`, `engine.due_shards`): a sweep reads every shard, each with
//! a fair share of its limit, merged by due time ([`crate::store::query_index_partitions`]); also the shards above
//! a lowered count and the unsharded partition of older versions, until `migrate due-shards` has emptied them.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};

use crate::chain::{ChainEngine, ChainError, Want};
use crate::clock::{Clock, Millis};
use crate::handoff::{ChainName, SweepBatch, SweepQueue};
use crate::ids::ContainerRef;
use crate::records::{
    ChainRecord, DueShardsRecord, LEGACY_DUE_PK, container_of_chain_pk, decode, due_shard_of, due_shard_pk,
    due_shards_key, encode, time_sk,
};
use crate::store::{Condition, Index, IndexKey, Item, Put, Store, StoreError, Version, query_index_partitions};

use super::Ports;
use super::handoff::each_message;

#[derive(Debug, Default, Serialize, Clone)]
pub struct SweepReport {
    pub due: usize,
    pub refreshed: usize,
    pub not_due: usize,
    pub broken: usize,
    pub transient_failures: usize,
    /// With a sweep queue: the batches handed to workers (the chains due are then refreshed by them).
    #[serde(skip_serializing_if = "is_zero")]
    pub batches_queued: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// At most this long for one send to the sweep queue (the SDK retries within it).
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl SweepReport {
    pub fn add(&mut self, other: &SweepReport) {
        self.due += other.due;
        self.refreshed += other.refreshed;
        self.not_due += other.not_due;
        self.broken += other.broken;
        self.transient_failures += other.transient_failures;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Batches the sweep queue did not take: their chains stay due and the next schedule hands them over again.
    #[error("{unsent} of {batches} sweep batches could not be queued (their chains stay due): {reason}")]
    Queue { unsent: usize, batches: usize, reason: String },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Chains due now, read from every partition of the `Due` index, oldest due first.
#[derive(Debug, Default, Clone)]
pub struct DueChains {
    pub at: Millis,
    pub chains: Vec<ContainerRef>,
    /// The earliest due time among them (when any).
    pub oldest_due_at: Option<Millis>,
}

impl DueChains {
    /// Records the backlog metrics: how many chains are due and not yet refreshed, how far past due the oldest is.
    pub fn record_backlog(&self) {
        let overdue_s = self.oldest_due_at.map_or(0.0, |at| (self.at - at).max(0) as f64 / 1000.0);
        crate::metrics::sweep_backlog(self.chains.len(), overdue_s);
    }
}

#[derive(Clone)]
pub struct Sweep {
    pub due: DueIndex,
    engine: Arc<ChainEngine>,
    /// `engine.sweep_concurrency`: refreshes in flight at once.
    concurrency: usize,
    /// Where the schedule hands its batches to workers (AWS); none: it refreshes them itself (`serve`).
    queue: Option<Arc<dyn SweepQueue>>,
    /// `engine.sweep_batch`: chains per message on the sweep queue.
    batch: usize,
}

impl Sweep {
    pub fn new(p: &Ports, engine: Arc<ChainEngine>, queue: Option<Arc<dyn SweepQueue>>) -> Self {
        let concurrency = p.config.engine.sweep_concurrency.max(1);
        let due = DueIndex::new(p.store.clone(), p.clock.clone(), p.config.engine.due_shards);
        Self { due, engine, concurrency, queue, batch: p.config.engine.sweep_batch.max(1) }
    }

    /// What the schedule runs: without a sweep queue [`Sweep::run_once`]; with one, the chains due (at most
    /// `limit`, fairly from every shard) are handed to workers in batches of `engine.sweep_batch`, and the backlog
    /// metrics say how many were due and how far past due the oldest is. Every batch is tried; if any could not
    /// be queued, the run fails (a Lambda error, which alarms) and their chains stay due for the next run.
    #[tracing::instrument(skip_all)]
    pub async fn run_scheduled(&self, limit: usize) -> Result<SweepReport, SweepError> {
        let Some(queue) = &self.queue else { return self.run_once(limit).await };
        let due = self.due.due_chains(limit).await?;
        due.record_backlog();
        let batches: Vec<SweepBatch> = due
            .chains
            .chunks(self.batch)
            .map(|chunk| SweepBatch { chains: chunk.iter().map(ChainName::of).collect() })
            .collect();
        let mut sends = tokio::task::JoinSet::new();
        let permits = Arc::new(Semaphore::new(16));
        let count = batches.len();
        for batch in batches {
            let (queue, permit) = (queue.clone(), permits.clone().acquire_owned().await.map_err(anyhow::Error::from)?);
            sends.spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(SEND_TIMEOUT, queue.send(&batch)).await {
                    Ok(sent) => sent,
                    Err(_) => Err(anyhow::anyhow!("no answer within {} s", SEND_TIMEOUT.as_secs())),
                }
            });
        }
        let (mut unsent, mut reason) = (0, String::new());
        while let Some(sent) = sends.join_next().await {
            if let Err(e) = sent.map_err(anyhow::Error::from).and_then(|r| r) {
                unsent += 1;
                reason = e.to_string();
            }
        }
        if unsent > 0 {
            return Err(SweepError::Queue { unsent, batches: count, reason });
        }
        tracing::info!(due = due.chains.len(), batches = count, "sweep batches queued");
        Ok(SweepReport { due: due.chains.len(), batches_queued: count, ..Default::default() })
    }

    /// A worker's SQS batch from the sweep queue: each message's chains refreshed if due. A message is reported
    /// as failed (SQS delivers it again, then moves it to the dead-letter queue) when it is not a sweep batch,
    /// names an invalid container, or a refresh could not be carried out (store, key service, the unexpected).
    /// A chain that met the provider's refusal, backoff or rate limit is done: that outcome is on the chain, and
    /// it stays due for the next schedule.
    pub async fn run_batch(&self, event: SqsEvent) -> SqsBatchResponse {
        each_message(event, |id, body| async move {
            let batch = match body.as_deref().map(serde_json::from_str::<SweepBatch>) {
                Some(Ok(batch)) => batch,
                _ => {
                    tracing::warn!(message = %id, "not a sweep batch");
                    return false;
                }
            };
            let Some(chains) = batch.chains.iter().map(ChainName::container_ref).collect::<Option<Vec<_>>>() else {
                tracing::warn!(message = %id, "a sweep batch names an invalid container");
                return false;
            };
            let outcomes = match self.refresh_each(&chains).await {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    tracing::warn!(message = %id, error = %e, "sweep batch failed");
                    return false;
                }
            };
            let mut report = SweepReport { due: chains.len(), ..Default::default() };
            let mut failed = 0;
            for (c, outcome) in outcomes {
                match outcome {
                    Ok(true) => report.refreshed += 1,
                    Ok(false) => report.not_due += 1,
                    Err(ChainError::NeedsRepair { .. }) => report.broken += 1,
                    Err(e @ (ChainError::Store(_) | ChainError::Keys(_) | ChainError::Unexpected(_))) => {
                        tracing::warn!(message = %id, container = %c, error = %e, "sweep could not refresh a chain");
                        failed += 1;
                    }
                    Err(e) => {
                        tracing::info!(message = %id, container = %c, code = e.code(), "sweep left a chain for later");
                        report.transient_failures += 1;
                    }
                }
            }
            tracing::info!(message = %id, refreshed = report.refreshed, not_due = report.not_due,
                broken = report.broken, later = report.transient_failures, failed, "sweep batch run");
            failed == 0
        })
        .await
    }

    /// One sweep over every chain due now, at most `limit` of them; then the backlog metrics.
    #[tracing::instrument(skip_all)]
    pub async fn run_once(&self, limit: usize) -> Result<SweepReport, SweepError> {
        let due = self.due.due_chains(limit).await?;
        let report = self.refresh(&due.chains).await?;
        // What is still due now is left for the next sweep (backoff, a rate limit, more than `limit`).
        let left = self.due.due_chains_at(due.at, limit).await?;
        left.record_backlog();
        Ok(report)
    }

    /// Refreshes each chain if it is due (the engine decides, on a fresh read), `engine.sweep_concurrency` at once.
    pub async fn refresh(&self, chains: &[ContainerRef]) -> Result<SweepReport, SweepError> {
        let mut report = SweepReport { due: chains.len(), ..Default::default() };
        for (_, outcome) in self.refresh_each(chains).await? {
            match outcome {
                Ok(true) => report.refreshed += 1,
                Ok(false) => report.not_due += 1,
                Err(ChainError::NeedsRepair { .. }) => report.broken += 1,
                Err(e) => {
                    tracing::warn!(code = e.code(), "sweep could not refresh a chain");
                    report.transient_failures += 1;
                }
            }
        }
        Ok(report)
    }

    /// Each chain's outcome (`Ok(true)`: refreshed; `Ok(false)`: not due), in no particular order.
    pub async fn refresh_each(
        &self,
        chains: &[ContainerRef],
    ) -> Result<Vec<(ContainerRef, Result<bool, ChainError>)>, SweepError> {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for c in chains {
            let (engine, c) = (self.engine.clone(), c.clone());
            let permit = permits.clone().acquire_owned().await.map_err(anyhow::Error::from)?;
            tasks.spawn(async move {
                let _permit = permit;
                let outcome = engine.obtain(&c, Want::IfDue).await.map(|t| t.is_some());
                (c, outcome)
            });
        }
        let mut outcomes = Vec::with_capacity(chains.len());
        while let Some(joined) = tasks.join_next().await {
            outcomes.push(joined.map_err(anyhow::Error::from)?);
        }
        Ok(outcomes)
    }
}

/// The sharded `Due` index as the sweep reads it: which partitions, the chains due in them, and the layout
/// record that says which partitions exist.
#[derive(Clone)]
pub struct DueIndex {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// `engine.due_shards`: the shards this process writes.
    shards: u32,
}

impl DueIndex {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, shards: u32) -> Self {
        Self { store, clock, shards: shards.max(1) }
    }

    /// The chains due now, at most `limit`, shared fairly among the index partitions.
    pub async fn due_chains(&self, limit: usize) -> Result<DueChains, SweepError> {
        self.due_chains_at(self.clock.now_ms(), limit).await
    }

    pub async fn due_chains_at(&self, now: Millis, limit: usize) -> Result<DueChains, SweepError> {
        let pks = self.due_partitions().await?;
        let items = query_index_partitions(&self.store, Index::Due, &pks, Some(&time_sk(now)), limit).await?;
        let oldest_due_at = items.iter().filter_map(due_at).min();
        let mut chains: Vec<ContainerRef> = items.iter().filter_map(|i| container_of_chain_pk(&i.key.pk)).collect();
        // A chain met twice (its new entry and, until the index catches up, its legacy one) is refreshed once. By
        // its key: a `ContainerRef`'s text leaves out the organisation, and two organisations may name alike.
        let mut seen = std::collections::HashSet::new();
        chains.retain(|c| seen.insert(crate::records::chain_pk(c)));
        Ok(DueChains { at: now, chains, oldest_due_at })
    }

    /// The partitions of the `Due` index a sweep reads: `due#0` up to the highest shard count ever written with,
    /// and the legacy `due` partition until it has been emptied.
    pub async fn due_partitions(&self) -> Result<Vec<String>, StoreError> {
        let layout = self.layout().await?;
        let mut pks: Vec<String> = (0..layout.highest_shards.max(self.shards)).map(due_shard_pk).collect();
        if !layout.legacy_drained {
            pks.push(LEGACY_DUE_PK.into());
        }
        Ok(pks)
    }

    /// The layout record, first raised to this process's shard count when below it.
    async fn layout(&self) -> Result<DueShardsRecord, StoreError> {
        Ok(self.layout_at().await?.0)
    }

    async fn layout_at(&self) -> Result<(DueShardsRecord, Version), StoreError> {
        loop {
            let item = self.store.get(&due_shards_key()).await?;
            let (mut layout, condition) = match &item {
                Some(i) => (decode::<DueShardsRecord>(i)?, Condition::Version(i.version)),
                None => (DueShardsRecord::default(), Condition::Absent),
            };
            if let (true, Some(i)) = (layout.highest_shards >= self.shards, &item) {
                return Ok((layout, i.version));
            }
            layout.highest_shards = layout.highest_shards.max(self.shards);
            match self.store.put(Put::new(due_shards_key(), encode(&layout), condition)).await {
                Ok(version) => return Ok((layout, version)),
                Err(StoreError::Conflict) => continue, // another process wrote it meanwhile: read it again
                Err(e) => return Err(e),
            }
        }
    }

    /// `chainkeeper migrate due-shards`: moves every chain out of the partitions the sweep reads only until they
    /// are empty (the legacy `due` partition, the shards at or above `engine.due_shards`) into its own shard, its
    /// due time kept. One conditional write per chain at the version read; a chain whose lease is held is left to
    /// its refresh, which moves it anyway. When none is left the layout record is lowered to this shard count,
    /// legacy partition drained, and sweeps stop reading them. Safe to run twice, and beside running sweeps and
    /// refreshes (a refresh that wrote first makes the move a no-op; one that comes after reads the new version).
    /// Run it once every process writes with the new version and shard count.
    pub async fn migrate(&self) -> Result<MigrateReport, SweepError> {
        let (layout, version) = self.layout_at().await?;
        let mut drain: Vec<String> = (self.shards..layout.highest_shards).map(due_shard_pk).collect();
        drain.push(LEGACY_DUE_PK.into());
        let now = self.clock.now_ms();
        let mut report = MigrateReport { shards: self.shards, ..Default::default() };
        let mut seen = std::collections::HashSet::new();
        for pk in &drain {
            loop {
                // The index may lag behind the moves: ask past what this run has already handled.
                let page = self.store.query_index(Index::Due, pk, None, 100 + seen.len()).await?;
                let fresh: Vec<Item> = page.into_iter().filter(|i| !seen.contains(&i.key)).collect();
                if fresh.is_empty() {
                    break;
                }
                for entry in fresh {
                    seen.insert(entry.key.clone());
                    match self.move_to_shard(&entry.key, pk, now).await? {
                        Move::Done => report.moved += 1,
                        Move::Busy => report.busy += 1,
                        Move::Gone => {}
                    }
                }
            }
        }
        if report.busy == 0 {
            let lowered = DueShardsRecord { highest_shards: self.shards, legacy_drained: true };
            match self.store.put(Put::new(due_shards_key(), encode(&lowered), Condition::Version(version))).await {
                Ok(_) => report.drained = true,
                Err(StoreError::Conflict) => {} // a process raised the count meanwhile: its shards stay read
                Err(e) => return Err(e.into()),
            }
        }
        Ok(report)
    }

    async fn move_to_shard(&self, key: &crate::store::Key, from: &str, now: Millis) -> Result<Move, StoreError> {
        let Some(c) = container_of_chain_pk(&key.pk) else { return Ok(Move::Busy) };
        for _ in 0..3 {
            let Some(item) = self.store.get(key).await? else { return Ok(Move::Gone) };
            let Some(due) = item.due.clone().filter(|d| d.pk == from) else { return Ok(Move::Gone) };
            let chain: ChainRecord = decode(&item)?;
            if chain.lease.as_ref().is_some_and(|l| l.until_ms > now) {
                return Ok(Move::Busy);
            }
            let mut put = Put::new(key.clone(), item.body, Condition::Version(item.version));
            put.expires_at_ms = item.expires_at_ms;
            put.repair = item.repair;
            put.due = Some(IndexKey { pk: due_shard_pk(due_shard_of(&c, self.shards)), sk: due.sk });
            match self.store.put(put).await {
                Ok(_) => return Ok(Move::Done),
                Err(StoreError::Conflict) => continue, // written meanwhile: look again
                Err(e) => return Err(e),
            }
        }
        Ok(Move::Busy)
    }
}

/// What `migrate due-shards` did.
#[derive(Debug, Default, Serialize, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The shard count the chains were moved into (`engine.due_shards`).
    pub shards: u32,
    pub moved: usize,
    /// Chains left where they were (a lease held, or written three times while moving it): run it again later.
    pub busy: usize,
    /// Nothing left to move: sweeps now read only `due#0` … `due#{shards-1}`.
    pub drained: bool,
}

enum Move {
    Done,
    Busy,
    Gone,
}

fn due_at(item: &Item) -> Option<Millis> {
    item.due.as_ref()?.sk.parse::<Millis>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::background::Background;
    use crate::clock::ManualClock;
    use crate::handoff::MemoryQueue;
    use crate::ids::{Alias, DbName, OrgId};
    use crate::records::{chain_key, due_index_key};
    use crate::store::memory::MemoryStore;

    const NOW: Millis = 1_800_000_000_000;

    fn container(n: usize) -> ContainerRef {
        ContainerRef {
            org: OrgId::parse(&format!("org{}", n % 7)).unwrap(),
            db: DbName::parse("finance").unwrap(),
            alias: Alias::parse(&format!("c{n}")).unwrap(),
        }
    }

    fn setup(shards: u32) -> (Arc<dyn Store>, ManualClock, DueIndex) {
        let clock = ManualClock::new(NOW);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let index = DueIndex::new(store.clone(), Arc::new(clock.clone()), shards);
        (store, clock, index)
    }

    /// A chain item due at `at`, under `due_pk` (a shard, or the legacy partition), leased until `lease_until`.
    async fn chain(store: &Arc<dyn Store>, c: &ContainerRef, due_pk: String, at: Millis, lease_until: Option<Millis>) {
        let lease = lease_until.map(|until| serde_json::json!({"owner": "other", "until_ms": until}));
        let body = serde_json::json!({
            "provider": "exact", "status": "healthy", "generation": 1, "sealed_refresh_token": null,
            "sealed_access_token": null, "access_expires_at_ms": null, "last_token_request_at_ms": null,
            "refresh_token_issued_at_ms": null, "lease": lease,
        });
        let mut put = Put::new(chain_key(c), serde_json::to_vec(&body).unwrap(), Condition::None);
        put.due = Some(IndexKey { pk: due_pk, sk: time_sk(at) });
        store.put(put).await.unwrap();
    }

    async fn sharded(store: &Arc<dyn Store>, c: &ContainerRef, at: Millis, shards: u32) {
        chain(store, c, due_index_key(c, at, shards).pk, at, None).await;
    }

    #[test]
    fn the_shard_is_a_stable_hash_of_the_chain_and_spreads_evenly() {
        let c = container(1);
        assert_eq!(due_index_key(&c, 5, 16).pk, due_index_key(&c, 9_999, 16).pk, "the due time never moves a chain");
        // Fixed value: changing the hash would strand every chain written before in another shard.
        // FNV-1a 64 of the key is 0x782a31b105d5468b, mixed by MurmurHash3's fmix64 0xec8b1055f474b8a6 (computed
        // independently, in Python).
        assert_eq!(crate::store::shard_of("chain#acme#finance#eol", 16), 6);
        assert_eq!(crate::store::shard_of("chain#acme#finance#eol", 1024), 166);
        // Keys that differ only in a repeated number still use every shard (plain FNV-1a filled 8 of 16 here).
        let mut numbered = [0usize; 16];
        for n in 0..1_600 {
            numbered[crate::store::shard_of(&format!("chain#o{n}#db#c{n}"), 16) as usize] += 1;
        }
        assert!(numbered.iter().all(|&k| (60..=150).contains(&k)), "numbered keys over 16 shards: {numbered:?}");
        let mut counts = [0usize; 16];
        for n in 0..1_600 {
            counts[due_shard_of(&container(n), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&k| (60..=140).contains(&k)), "1,600 chains over 16 shards: {counts:?}");
        assert_eq!(due_shard_of(&c, 1), 0);
    }

    #[tokio::test]
    async fn the_sweep_reads_every_shard_and_the_legacy_partition_merged_by_due_time() {
        let (store, _clock, index) = setup(8);
        for n in 0..40 {
            sharded(&store, &container(n), NOW - 1_000 * (n as i64 % 13), 8).await;
        }
        sharded(&store, &container(99), NOW + 60_000, 8).await; // not due yet
        chain(&store, &container(100), LEGACY_DUE_PK.into(), NOW - 100_000, None).await;
        let due = index.due_chains(1_000).await.unwrap();
        assert_eq!(due.chains.len(), 41, "every due chain of every shard, and the legacy one; not the future one");
        assert_eq!(due.chains[0], container(100), "oldest first");
        assert_eq!(due.oldest_due_at, Some(NOW - 100_000));
        assert!(!due.chains.contains(&container(99)));
        let pks = index.due_partitions().await.unwrap();
        assert_eq!(pks.len(), 9, "eight shards and the legacy partition: {pks:?}");
        // A small read still gets each shard's oldest: no shard starves.
        let small = index.due_chains(9).await.unwrap();
        assert!(small.chains.contains(&container(100)));
        let shards_seen: std::collections::HashSet<u32> =
            small.chains.iter().filter(|c| **c != container(100)).map(|c| due_shard_of(c, 8)).collect();
        let shards_with_due: std::collections::HashSet<u32> = (0..40).map(|n| due_shard_of(&container(n), 8)).collect();
        assert_eq!(shards_seen, shards_with_due, "one from each shard that has due chains");
    }

    #[tokio::test]
    async fn a_lowered_shard_count_keeps_reading_the_old_shards_until_migrated() {
        let (store, _clock, wide) = setup(16);
        for n in 0..30 {
            sharded(&store, &container(n), NOW - 5_000, 16).await;
        }
        chain(&store, &container(50), LEGACY_DUE_PK.into(), NOW - 7_000, None).await;
        chain(&store, &container(51), LEGACY_DUE_PK.into(), NOW + 86_400_000, None).await; // due tomorrow
        assert_eq!(wide.due_chains(1_000).await.unwrap().chains.len(), 31);
        // The count is lowered to 4: nothing is lost.
        let narrow = DueIndex::new(store.clone(), wide.clock.clone(), 4);
        assert_eq!(narrow.due_partitions().await.unwrap().len(), 17, "16 shards ever written, and the legacy one");
        assert_eq!(narrow.due_chains(1_000).await.unwrap().chains.len(), 31);
        // A leased chain is left to its refresh: not drained yet.
        let leased = (0..30).find(|&n| due_shard_of(&container(n), 16) >= 4).unwrap();
        chain(
            &store,
            &container(leased),
            due_index_key(&container(leased), NOW - 5_000, 16).pk,
            NOW - 5_000,
            Some(NOW + 30_000),
        )
        .await;
        let first = narrow.migrate().await.unwrap();
        assert_eq!(first.busy, 1);
        assert!(!first.drained);
        assert_eq!(narrow.due_partitions().await.unwrap().len(), 17, "still read");
        // The lease ended; run again.
        chain(&store, &container(leased), due_index_key(&container(leased), NOW - 5_000, 16).pk, NOW - 5_000, None)
            .await;
        let second = narrow.migrate().await.unwrap();
        assert_eq!((second.busy, second.moved), (0, 1));
        assert!(second.drained);
        assert_eq!(narrow.due_partitions().await.unwrap(), (0..4).map(due_shard_pk).collect::<Vec<_>>());
        let due = narrow.due_chains(1_000).await.unwrap();
        assert_eq!(due.chains.len(), 31, "every chain still found, in the four shards");
        for pk in (4..16).map(due_shard_pk).chain([LEGACY_DUE_PK.to_string()]) {
            assert!(store.query_index(Index::Due, &pk, None, 10).await.unwrap().is_empty(), "{pk} emptied");
        }
        let tomorrow = store.get(&chain_key(&container(51))).await.unwrap().unwrap().due.unwrap();
        assert_eq!(tomorrow, due_index_key(&container(51), NOW + 86_400_000, 4), "a chain not due yet moved too");
        let third = narrow.migrate().await.unwrap();
        assert_eq!((third.moved, third.busy, third.drained), (0, 0, true), "safe to run twice");
    }

    /// An application over the memory store whose sweep hands its batches to `queue`.
    fn app_with_queue(
        store: Arc<dyn Store>,
        clock: ManualClock,
        queue: Arc<MemoryQueue<SweepBatch>>,
    ) -> Arc<super::super::App> {
        let keys = Arc::new(crate::keys::local::LocalKeys::new(store.clone(), [7u8; 32]));
        let secrets = Arc::new(crate::secrets::LocalSecrets::new(Default::default(), [9u8; 32]));
        let queues = super::super::Queues { recovery: None, sweep: Some(queue) };
        let config = crate::config::Config::built_in();
        super::super::App::with_queues(store, keys, secrets, Arc::new(clock), config, queues, Background::detached())
    }

    fn sqs_event(bodies: &[String]) -> SqsEvent {
        let records: Vec<serde_json::Value> = bodies
            .iter()
            .enumerate()
            .map(|(n, b)| serde_json::json!({"messageId": format!("m{n}"), "body": b, "eventSource": "aws:sqs"}))
            .collect();
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
    }

    #[tokio::test]
    async fn the_schedule_hands_every_due_chain_of_every_shard_to_the_queue_in_batches() {
        let (store, clock, _) = setup(16);
        for n in 0..120 {
            sharded(&store, &container(n), NOW - 1_000 - n as i64, 16).await;
        }
        chain(&store, &container(500), LEGACY_DUE_PK.into(), NOW - 90_000, None).await;
        sharded(&store, &container(501), NOW + 60_000, 16).await; // not due
        let queue = Arc::new(MemoryQueue::<SweepBatch>::default());
        let app = app_with_queue(store.clone(), clock.clone(), queue.clone());
        let report = app.sweep.run_scheduled(10_000).await.unwrap();
        assert_eq!((report.due, report.batches_queued, report.refreshed), (121, 3, 0), "{report:?}");
        let sent = queue.sent.lock().unwrap().clone();
        assert_eq!(sent.iter().map(|b| b.chains.len()).collect::<Vec<_>>(), [50, 50, 21]);
        let mut named: Vec<ContainerRef> =
            sent.iter().flat_map(|b| &b.chains).filter_map(|c| c.container_ref()).collect();
        assert_eq!(named[0], container(500), "oldest due first");
        named.sort_by_key(|c| c.to_string());
        named.dedup();
        let mut want: Vec<ContainerRef> = (0..120).map(container).chain([container(500)]).collect();
        want.sort_by_key(|c| c.to_string());
        assert_eq!(named, want, "every due chain once, from every shard and the legacy partition; not the future one");

        // A queue that takes nothing: the run fails (an alarmed Lambda error), nothing is lost from the index.
        queue.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        match app.sweep.run_scheduled(10_000).await {
            Err(SweepError::Queue { unsent: 3, batches: 3, .. }) => {}
            other => panic!("expected a queue failure, got {other:?}"),
        }
        assert_eq!(app.sweep.due.due_chains(10_000).await.unwrap().chains.len(), 121, "still due");
    }

    #[tokio::test]
    async fn a_worker_reports_the_messages_it_could_not_run() {
        let (store, clock, _) = setup(16);
        let queue = Arc::new(MemoryQueue::<SweepBatch>::default());
        let app = app_with_queue(store, clock, queue);
        let good = serde_json::to_string(&SweepBatch { chains: vec![ChainName::of(&container(1))] }).unwrap();
        let bad_name = r#"{"chains":[{"org":"../x","database":"d","container":"c"}]}"#.to_string();
        let answer = app.sweep.run_batch(sqs_event(&[good, "not json".into(), bad_name])).await;
        let failed: Vec<String> = answer.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
        assert_eq!(failed, ["m1", "m2"], "the batch that ran is done; the unreadable ones go back to the queue");
    }

    /// A store where a refresh elsewhere rewrites the chain (into its shard, with a new due time) just before
    /// the migration's write of it.
    struct RefreshFirst {
        inner: Arc<dyn Store>,
        refresh: std::sync::Mutex<Option<Put>>,
    }

    #[async_trait::async_trait]
    impl Store for RefreshFirst {
        async fn get(&self, key: &crate::store::Key) -> Result<Option<Item>, StoreError> {
            self.inner.get(key).await
        }
        async fn put(&self, put: Put) -> Result<Version, StoreError> {
            let refresh = self.refresh.lock().unwrap().take_if(|r| r.key == put.key);
            if let Some(refresh) = refresh {
                self.inner.put(refresh).await?;
            }
            self.inner.put(put).await
        }
        async fn delete(&self, key: &crate::store::Key, condition: Condition) -> Result<(), StoreError> {
            self.inner.delete(key, condition).await
        }
        async fn query(&self, pk: &str, sk_prefix: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
            self.inner.query(pk, sk_prefix, limit).await
        }
        async fn query_back(&self, pk: &str, before: Option<&str>, limit: usize) -> Result<Vec<Item>, StoreError> {
            self.inner.query_back(pk, before, limit).await
        }
        async fn query_index(
            &self,
            index: Index,
            pk: &str,
            sk_max: Option<&str>,
            limit: usize,
        ) -> Result<Vec<Item>, StoreError> {
            self.inner.query_index(index, pk, sk_max, limit).await
        }
        async fn transact(&self, ops: Vec<crate::store::WriteOp>) -> Result<(), StoreError> {
            self.inner.transact(ops).await
        }
    }

    #[tokio::test]
    async fn a_refresh_between_the_migrations_read_and_write_wins_and_the_chain_is_in_one_place() {
        let (inner, clock, _) = setup(4);
        let c = container(3);
        chain(&inner, &c, LEGACY_DUE_PK.into(), NOW - 1_000, None).await;
        // The refresh writes the chain as the engine does: its shard, its next due time.
        let mut refresh = Put::new(chain_key(&c), b"{}".to_vec(), Condition::None);
        let current = inner.get(&chain_key(&c)).await.unwrap().unwrap();
        refresh.body = current.body.clone();
        refresh.due = Some(due_index_key(&c, NOW + 600_000, 4));
        let store: Arc<dyn Store> = Arc::new(RefreshFirst { inner: inner.clone(), refresh: Some(refresh).into() });
        let index = DueIndex::new(store, Arc::new(clock), 4);
        let report = index.migrate().await.unwrap();
        assert_eq!((report.moved, report.busy, report.drained), (0, 0, true), "the refresh moved it: {report:?}");
        let item = inner.get(&chain_key(&c)).await.unwrap().unwrap();
        assert_eq!(item.version, current.version + 1, "the migration wrote nothing over the refresh");
        assert_eq!(item.due, Some(due_index_key(&c, NOW + 600_000, 4)), "the refresh's due time stands");
        let everywhere = query_index_partitions(
            &inner,
            Index::Due,
            &(0..4).map(due_shard_pk).chain([LEGACY_DUE_PK.to_string()]).collect::<Vec<_>>(),
            None,
            100,
        )
        .await
        .unwrap();
        assert_eq!(everywhere.iter().filter(|i| i.key == chain_key(&c)).count(), 1, "in exactly one place");
    }
}
