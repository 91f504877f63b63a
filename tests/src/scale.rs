//! The simulation at scale (`chainkeeper-bench scale`; its short version is the e2e test `scale::…`). Two parts:
//!
//! 1. **A measured slice.** The real engine, sweep and hand-out, on the in-memory store behind [`MeteredStore`]
//!    (DynamoDB's capacity units and per-partition-key-value limits modelled: 1,000 WCU/s and 3,000 RCU/s per
//!    value, every second of the virtual clock; the `due` index's writes counted as DynamoDB counts a GSI's:
//!    two when an item's index key changes), the key port counted as KMS, the secrets port as Secrets Manager,
//!    against the Exact Online simulator (600 s tokens, 570 s between requests). It yields the cost of each
//!    event: a sweep refresh, a warm hand-out, a sweep's index reads. And the 200-waiter figure: reads per
//!    hand-out while another process holds the lease, with 200 waiters in one process (one shared poll) and in
//!    200 processes (each polling alone, as every waiter did before the single-flight poll).
//! 2. **A model of 1,000,000 chains' schedule** over a virtual day, second by second, with the slice's costs:
//!    a share of the chains in active use during a working day (refreshed ahead of expiry every 570 s, as
//!    `chain::schedule::next_due` says, by the sweep), the rest kept alive (once in 29 days), the sweep every
//!    `sweep_interval_s` handing batches to worker invocations, and each refresh's index writes landing on
//!    `due` (unsharded) or on `due#k` (k = the chain's shard). A second whose writes on one partition key value
//!    would pass the limit throttles the rest: they wait for the next second (counted), which is what makes the
//!    sweep fall behind. It prints the peak writes per partition key value, the sweep lag (oldest overdue), and
//!    the calls of each kind per chain per day.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chainkeeper::app::App;
use chainkeeper::chain::ChainEngine;
use chainkeeper::clock::{Clock, ManualClock};
use chainkeeper::config::Config;
use chainkeeper::ids::{Alias, ContainerRef, DbName, OrgId};
use chainkeeper::keys::local::LocalKeys;
use chainkeeper::keys::{CacheLimits, ContainerFields, Field, Keys, Vault};
use chainkeeper::provider::AppRegistration;
use chainkeeper::records::{ChainRecord, Lease, chain_key, decode, encode};
use chainkeeper::secrets::{LocalSecrets, Secrets, SigningKeys};
use chainkeeper::store::memory::MemoryStore;
use chainkeeper::store::{Condition, Index, Item, Key, Put, Store, StoreError, Version, WriteOp};
use exact_sim::{ExactSim, SimApp, SimClock, SimConfig};

use crate::exact::{CLIENT_ID, CLIENT_SECRET, T0, sim_app_toml, sim_profile_toml};

/// The template's bound on refresh workers (the sweep queue's event source, `ScalingConfig.MaximumConcurrency`).
pub const TEMPLATE_WORKERS: u32 = 20;

/// DynamoDB's documented per-partition throughput, which is also the most one partition key value gets.
pub const WCU_PER_PARTITION: u64 = 1_000;
pub const RCU_PER_PARTITION: u64 = 3_000;

/// Attributes besides the body (keys, version, index keys, TTL, write id), in bytes, for item sizes.
const OVERHEAD: usize = 150;

fn wcu(size: usize) -> u64 {
    size.div_ceil(1024).max(1) as u64
}
fn rcu(size: usize) -> u64 {
    size.div_ceil(4096).max(1) as u64
}

/// Capacity units per partition key value in the current virtual second, and what they add up to.
#[derive(Default, Debug, Clone)]
pub struct Meter {
    second: i64,
    wcu_now: HashMap<String, u64>,
    rcu_now: HashMap<String, u64>,
    /// Highest WCU one table partition key value took in one second.
    pub peak_table_wcu: u64,
    /// Highest WCU one `due` index partition key value took in one second.
    pub peak_due_wcu: u64,
    pub peak_rcu: u64,
    pub throttled_writes: u64,
    pub throttled_reads: u64,
    /// Requests and capacity units.
    pub reads: u64,
    pub writes: u64,
    pub read_units: u64,
    pub write_units: u64,
    /// Writes to the `due` index (two when an item moves in it), and their units.
    pub due_writes: u64,
    pub due_write_units: u64,
    pub index_queries: u64,
    pub index_read_units: u64,
}

impl Meter {
    fn at(&mut self, second: i64) {
        if second != self.second {
            self.second = second;
            self.wcu_now.clear();
            self.rcu_now.clear();
        }
    }
    fn write(&mut self, partition: &str, units: u64, index: bool) {
        let now = self.wcu_now.entry(partition.to_string()).or_default();
        *now += units;
        if *now > WCU_PER_PARTITION {
            self.throttled_writes += 1;
        }
        let peak = if index { &mut self.peak_due_wcu } else { &mut self.peak_table_wcu };
        *peak = (*peak).max(*now);
        self.write_units += units;
        if index {
            self.due_writes += 1;
            self.due_write_units += units;
        }
    }
    fn read(&mut self, partition: &str, units: u64) {
        let now = self.rcu_now.entry(partition.to_string()).or_default();
        *now += units;
        if *now > RCU_PER_PARTITION {
            self.throttled_reads += 1;
        }
        self.peak_rcu = self.peak_rcu.max(*now);
        self.reads += 1;
        self.read_units += units;
    }
}

/// The in-memory store, metered as DynamoDB would bill and throttle it (see the module comment). It never
/// refuses: throttles are counted.
pub struct MeteredStore {
    inner: MemoryStore,
    clock: Arc<dyn Clock>,
    pub meter: Mutex<Meter>,
}

impl MeteredStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { inner: MemoryStore::new(clock.clone()), clock, meter: Mutex::default() }
    }
    pub fn snapshot(&self) -> Meter {
        self.meter.lock().unwrap().clone()
    }
    fn second(&self) -> i64 {
        self.clock.now_ms().div_euclid(1000)
    }
    async fn meter_put(&self, p: &Put) {
        let old = self.inner.get(&p.key).await.ok().flatten();
        let units = wcu(p.body.len() + OVERHEAD);
        let mut m = self.meter.lock().unwrap();
        m.at(self.second());
        m.writes += 1;
        m.write(&p.key.pk, units, false);
        // The `due` index (projection ALL): an item entering, leaving or updated in it is one write there; one
        // whose index key changes is two (the old entry deleted, the new one put).
        let old_due = old.as_ref().and_then(|o| o.due.clone());
        match (&old_due, &p.due) {
            (Some(a), Some(b)) if a == b => m.write(&b.pk, units, true),
            (Some(a), Some(b)) => {
                m.write(&a.pk, units, true);
                m.write(&b.pk, units, true);
            }
            (Some(a), None) => m.write(&a.pk, units, true),
            (None, Some(b)) => m.write(&b.pk, units, true),
            (None, None) => {}
        }
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let item = self.inner.get(key).await?;
        let mut m = self.meter.lock().unwrap();
        m.at(self.second());
        m.read(&key.pk, rcu(item.as_ref().map_or(0, |i| i.body.len() + OVERHEAD)));
        Ok(item)
    }
    async fn put(&self, put: Put) -> Result<Version, StoreError> {
        self.meter_put(&put).await;
        self.inner.put(put).await
    }
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        {
            let mut m = self.meter.lock().unwrap();
            m.at(self.second());
            m.writes += 1;
            m.write(&key.pk, 1, false);
        }
        self.inner.delete(key, condition).await
    }
    async fn query(&self, pk: &str, sk_prefix: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        let items = self.inner.query(pk, sk_prefix, limit).await?;
        let size: usize = items.iter().map(|i| i.body.len() + OVERHEAD).sum();
        let mut m = self.meter.lock().unwrap();
        m.at(self.second());
        m.read(pk, rcu(size));
        Ok(items)
    }
    async fn query_back(&self, pk: &str, before: Option<&str>, limit: usize) -> Result<Vec<Item>, StoreError> {
        let items = self.inner.query_back(pk, before, limit).await?;
        let size: usize = items.iter().map(|i| i.body.len() + OVERHEAD).sum();
        let mut m = self.meter.lock().unwrap();
        m.at(self.second());
        m.read(pk, rcu(size));
        Ok(items)
    }
    async fn query_index(
        &self,
        index: Index,
        pk: &str,
        sk_max: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let items = self.inner.query_index(index, pk, sk_max, limit).await?;
        // Eventually consistent: half a unit per 4 KB.
        let size: usize = items.iter().map(|i| i.body.len() + OVERHEAD).sum();
        let mut m = self.meter.lock().unwrap();
        m.at(self.second());
        m.read(pk, rcu(size).div_ceil(2));
        m.index_queries += 1;
        m.index_read_units += rcu(size).div_ceil(2);
        Ok(items)
    }
    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        for op in &ops {
            // Transactions cost twice the units.
            if let WriteOp::Put(p) = op {
                self.meter_put(p).await;
                self.meter_put(p).await;
            }
        }
        self.inner.transact(ops).await
    }
}

/// The key port, counted as KMS calls.
pub struct CountedKeys {
    inner: Arc<dyn Keys>,
    pub calls: AtomicU64,
}

#[async_trait]
impl Keys for CountedKeys {
    async fn create_org_key(&self, org: &str) -> Result<(), chainkeeper::keys::KeyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.create_org_key(org).await
    }
    async fn delete_org_key(&self, org: &str) -> Result<(), chainkeeper::keys::KeyError> {
        self.inner.delete_org_key(org).await
    }
    async fn generate_data_key(
        &self,
        ctx: &chainkeeper::keys::Context<'_>,
    ) -> Result<(chainkeeper::keys::DataKey, Vec<u8>), chainkeeper::keys::KeyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.generate_data_key(ctx).await
    }
    async fn decrypt_data_key(
        &self,
        ctx: &chainkeeper::keys::Context<'_>,
        wrapped: &[u8],
    ) -> Result<chainkeeper::keys::DataKey, chainkeeper::keys::KeyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.decrypt_data_key(ctx, wrapped).await
    }
}

/// The secrets port, counted as Secrets Manager calls (the AWS adapter caches them for a minute; this counts
/// what reaches the port, so it is an upper bound).
pub struct CountedSecrets {
    inner: Arc<dyn Secrets>,
    pub calls: AtomicU64,
}

#[async_trait]
impl Secrets for CountedSecrets {
    async fn app(&self, provider: &str) -> anyhow::Result<Option<AppRegistration>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.app(provider).await
    }
    async fn signing_keys(&self) -> anyhow::Result<Arc<SigningKeys>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.signing_keys().await
    }
}

/// What one event costs, measured on the real code.
#[derive(Debug, Clone, Default)]
pub struct SliceCosts {
    pub chains: usize,
    /// Per refresh by the sweep (the lease write, the token write, the reads around them).
    pub reads_per_refresh: f64,
    pub writes_per_refresh: f64,
    pub write_units_per_refresh: f64,
    pub due_write_units_per_refresh: f64,
    pub kms_per_refresh: f64,
    pub secrets_per_refresh: f64,
    /// Per warm hand-out (a valid token, the chain record and the opened token cached).
    pub reads_per_warm_handout: f64,
    pub writes_per_warm_handout: f64,
    pub kms_per_warm_handout: f64,
    /// The first hand-out after a refresh, in the process that refreshed (the new token opened once).
    pub kms_per_first_handout: f64,
    /// The sweep's index queries (per sweep, per shard), and the units of one.
    pub index_queries_per_sweep: f64,
    pub read_units_per_index_query: f64,
    pub chain_item_bytes: usize,
    /// Reads per hand-out while another process refreshes, 200 waiters: all in one process (shared poll) and
    /// one in each of 200 processes (each polls alone: the cost of every waiter before the single-flight poll).
    pub waiters: usize,
    pub wait_ms: u64,
    pub reads_per_handout_shared: f64,
    pub reads_per_handout_alone: f64,
    /// The reads on the chain's partition key value during the wait: shared poll, each alone.
    pub waiter_peak_rcu: [u64; 2],
    pub meter: Meter,
}

/// The slice: `chains` chains (one organisation each: no data key is shared, the worst case for KMS), every one
/// in active use, through `rounds` refresh rounds of the sweep with `handouts` warm hand-outs per chain and round.
pub async fn measure_slice(chains: usize, rounds: usize, handouts: usize) -> anyhow::Result<SliceCosts> {
    let sim = ExactSim::start(
        SimConfig {
            apps: vec![SimApp {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uris: vec!["http://127.0.0.1:9/v1/callback".into()],
            }],
            ..SimConfig::default()
        },
        SimClock::new(T0),
    )
    .await?;
    let toml = format!(
        "[engine]\ntoken_timeout_s = 2\n{}\n{}",
        sim_profile_toml(&sim),
        sim_app_toml("http://127.0.0.1:9/v1/callback")
    );
    let config = Config::from_toml(&toml)?;
    let clock = ManualClock::new(T0);
    let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
    let store = Arc::new(MeteredStore::new(clock_dyn.clone()));
    let local: Arc<dyn Keys> = Arc::new(LocalKeys::new(store.clone(), [7; 32]));
    let keys = Arc::new(CountedKeys { inner: local, calls: AtomicU64::new(0) });
    let local_secrets: Arc<dyn Secrets> = Arc::new(LocalSecrets::new(config.apps.clone(), [9; 32]));
    let secrets = Arc::new(CountedSecrets { inner: local_secrets, calls: AtomicU64::new(0) });
    let app = App::new(store.clone(), keys.clone(), secrets.clone(), clock_dyn.clone(), Config::from_toml(&toml)?);
    let advance = |d: Duration| {
        clock.advance(d);
        sim.clock().advance(d);
    };
    let mut cs = Vec::with_capacity(chains);
    for i in 0..chains {
        let org = format!("o{i}");
        keys.create_org_key(&org).await?;
        let user = format!("scale-user-{i}");
        let (access, refresh) = sim.mint_tokens(CLIENT_ID, &user);
        // Distinct aliases too: the shards branch's sweep (e5f07b4) folds chains of different organisations with
        // the same database and alias into one (it deduplicates on `ContainerRef`'s Display, which has no org).
        let alias = Alias::parse(&format!("c{i}"))?;
        let c = ContainerRef { org: OrgId::parse(&org)?, db: DbName::parse("db")?, alias };
        let tokens = chainkeeper::provider::oauth::TokenSet {
            access_token: secrecy::SecretString::from(access),
            refresh_token: Some(secrecy::SecretString::from(refresh)),
            expires_in: Some(600.0),
            scope: None,
        };
        app.engine.install(&c, "exact-online-nl", &tokens).await?;
        cs.push(c);
    }
    let mut costs = SliceCosts { chains, ..Default::default() };
    let counts = || (store.snapshot(), keys.calls.load(Ordering::Relaxed), secrets.calls.load(Ordering::Relaxed));
    let (mut handed, mut refreshed, mut sweeps) = (0u64, 0u64, 0u64);
    let (mut h_reads, mut h_writes, mut h_kms, mut first_kms) = (0u64, 0u64, 0u64, 0u64);
    let (mut r_reads, mut r_writes, mut r_units, mut r_due, mut r_kms, mut r_secrets) = (0, 0, 0, 0, 0, 0);
    let (mut q_units, mut q_count) = (0u64, 0u64);
    // Every chain in use: its token has expired, so the first hand-out refreshes it (a caller's refresh, which
    // puts the chain in the `due` index as in use); then the measured rounds.
    advance(Duration::from_secs(601));
    for c in &cs {
        app.handout.access_token(c).await?;
    }
    for _ in 0..rounds {
        advance(Duration::from_secs(30));
        // The first hand-out after the refresh (the new token opened once in this process), then warm ones:
        // valid token, opened token cached, nothing to refresh.
        let (_, k0, _) = counts();
        for c in &cs {
            app.handout.access_token(c).await?;
        }
        first_kms += keys.calls.load(Ordering::Relaxed) - k0;
        let (m0, k0, _) = counts();
        for _ in 0..handouts {
            for c in &cs {
                app.handout.access_token(c).await?;
            }
        }
        // The usage records are written in the background at most once a minute per chain: let them land.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (m1, k1, _) = counts();
        handed += (handouts * chains) as u64;
        h_reads += m1.reads - m0.reads;
        h_writes += m1.writes - m0.writes;
        h_kms += k1 - k0;
        // The sweep when the chains are due (570 s after their last token request).
        advance(Duration::from_secs(545));
        let (m0, k0, s0) = counts();
        let report = app.sweep.run_once(100_000).await?;
        let (m1, k1, s1) = counts();
        anyhow::ensure!(report.refreshed == chains, "the sweep refreshed {} of {chains}: {report:?}", report.refreshed);
        refreshed += report.refreshed as u64;
        sweeps += 1;
        // The sweep's index queries (the due items, then what is left, for the backlog metric) apart.
        let index_queries = m1.index_queries - m0.index_queries;
        q_units += m1.index_read_units - m0.index_read_units;
        q_count += index_queries;
        r_reads += m1.reads - m0.reads - index_queries;
        r_writes += m1.writes - m0.writes;
        r_units += m1.write_units - m0.write_units;
        r_due += m1.due_write_units - m0.due_write_units;
        r_kms += k1 - k0;
        r_secrets += s1 - s0;
    }
    let per = |n: u64, d: u64| n as f64 / d.max(1) as f64;
    costs.reads_per_warm_handout = per(h_reads, handed);
    costs.writes_per_warm_handout = per(h_writes, handed);
    costs.kms_per_warm_handout = per(h_kms, handed);
    costs.kms_per_first_handout = per(first_kms, refreshed);
    costs.reads_per_refresh = per(r_reads, refreshed);
    costs.writes_per_refresh = per(r_writes, refreshed);
    costs.write_units_per_refresh = per(r_units, refreshed);
    costs.due_write_units_per_refresh = per(r_due, refreshed);
    costs.kms_per_refresh = per(r_kms, refreshed);
    costs.secrets_per_refresh = per(r_secrets, refreshed);
    costs.read_units_per_index_query = per(q_units, q_count);
    costs.index_queries_per_sweep = per(q_count, sweeps);
    costs.chain_item_bytes = store.inner.get(&chain_key(&cs[0])).await?.map_or(0, |i| i.body.len()) + OVERHEAD;

    // 200 waiters while another process refreshes, one chain.
    let c = cs[0].clone();
    advance(Duration::from_secs(700)); // the token has expired: nobody can be served before the refresh
    let waiters = 200;
    let wait = Duration::from_millis(300);
    let vault = Arc::new(Vault::new(keys.clone(), clock_dyn.clone(), CacheLimits::default()));
    let engine = |_: usize| {
        Arc::new(ChainEngine::new(
            store.clone(),
            vault.clone(),
            secrets.clone(),
            clock_dyn.clone(),
            Arc::new(config.clone()),
            chainkeeper::provider::oauth::http_client(),
            Arc::new(chainkeeper::chain::NoEvents),
        ))
    };
    costs.meter = store.snapshot();
    let mut shared_and_alone = [0.0; 2];
    for (run, processes) in [(0usize, 1usize), (1, waiters)] {
        let engines: Vec<_> = (0..processes).map(engine).collect();
        let item = store.get(&chain_key(&c)).await?.ok_or_else(|| anyhow::anyhow!("no chain"))?;
        let mut chain: ChainRecord = decode(&item)?;
        chain.lease = Some(Lease { owner: "another-process".into(), until_ms: clock.now_ms() + 30_000 });
        let leased = store.put(Put::new(chain_key(&c), encode(&chain), Condition::Version(item.version))).await?;
        let before = store.snapshot().reads;
        store.meter.lock().unwrap().peak_rcu = 0;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..waiters {
            let (engine, c) = (engines[i % processes].clone(), c.clone());
            tasks.spawn(async move { engine.access_token(&c).await.map(|_| ()) });
        }
        let started = std::time::Instant::now();
        tokio::time::sleep(wait).await;
        let fields = ContainerFields::of(&c);
        chain.sealed_access_token = Some(vault.seal(&fields.context(Field::AccessToken), b"at-other").await?);
        chain.access_expires_at_ms = Some(clock.now_ms() + 600_000);
        chain.lease = None;
        store.put(Put::new(chain_key(&c), encode(&chain), Condition::Version(leased))).await?;
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        costs.wait_ms = started.elapsed().as_millis() as u64;
        shared_and_alone[run] = (store.snapshot().reads - before) as f64 / waiters as f64;
        // The virtual clock stands still meanwhile: this is the read rate on the chain's one partition key
        // value per `wait_ms` of real time.
        costs.waiter_peak_rcu[run] = store.snapshot().peak_rcu;
        advance(Duration::from_secs(700));
    }
    costs.waiters = waiters;
    costs.reads_per_handout_shared = shared_and_alone[0];
    costs.reads_per_handout_alone = shared_and_alone[1];
    Ok(costs)
}

/// The model's knobs.
#[derive(Debug, Clone)]
pub struct Model {
    pub chains: u32,
    /// Share of the chains in active use on a working day (the rest are only kept alive).
    pub active_share: f64,
    /// Shards of the `due` index (1: the single value `due`).
    pub shards: u32,
    /// Active chains start using their token between these seconds of the day (uniformly) and keep using it
    /// for `use_hours`.
    pub use_start_s: (u32, u32),
    pub use_hours: f64,
    /// Hand-outs per active chain per hour of use (each an API Gateway request and a Lambda invocation).
    pub handouts_per_hour: f64,
    /// The sweep: how often it runs, and the batch each worker invocation gets.
    pub sweep_interval_s: u32,
    pub batch: u32,
    /// Worker invocations at once (the worker function's reserved concurrency), each with `concurrency`
    /// refreshes in flight taking `refresh_latency_ms` each (the provider's answer).
    pub workers: u32,
    pub concurrency: u32,
    pub refresh_latency_ms: u32,
    /// From `chain::schedule::next_due`: an active chain's cadence, an idle one's keep-alive period.
    pub active_period_s: u32,
    pub keep_alive_period_s: u32,
    /// The access token's lifetime (Exact: 600 s).
    pub access_token_s: u32,
    /// From the slice.
    pub due_write_units_per_refresh: f64,
    pub horizon_s: u32,
}

impl Model {
    /// A million chains, a fifth in use for 8 hours from between 07:00 and 10:00 (one time zone: Exact's
    /// customers are mostly Dutch), 60 hand-outs an hour each.
    /// `shards`: `None` for the engine's default (`engine.due_shards`).
    pub fn million(shards: Option<u32>, due_write_units_per_refresh: f64) -> Self {
        let config = Config::built_in();
        let exact = config.provider("exact-online-nl").expect("built-in profile");
        let (active, keep_alive) = schedule_periods(exact, &config.engine);
        Model {
            chains: 1_000_000,
            active_share: 0.2,
            shards: shards.unwrap_or(config.engine.due_shards),
            use_start_s: (7 * 3600, 10 * 3600),
            use_hours: 8.0,
            handouts_per_hour: 60.0,
            // The template's schedule of the `refresh` function: rate(1 minute); each worker invocation gets up
            // to two SQS messages (BatchSize 2) of `engine.sweep_batch` chains.
            sweep_interval_s: 60,
            batch: 2 * config.engine.sweep_batch as u32,
            workers: 1,
            concurrency: config.engine.sweep_concurrency as u32,
            refresh_latency_ms: 300,
            active_period_s: active,
            keep_alive_period_s: keep_alive,
            access_token_s: 600,
            due_write_units_per_refresh,
            horizon_s: 86_400,
        }
        .with_paced_workers(0.8)
    }

    /// Worker invocations at once sized so that all of them refreshing flat out fill no `due` partition key
    /// value past `share` of its write limit (with `self.shards`): the reserved concurrency the fan-out needs.
    pub fn with_paced_workers(mut self, share: f64) -> Self {
        let per_worker = self.concurrency as f64 * 1000.0 / self.refresh_latency_ms.max(1) as f64;
        let per_partition = share * WCU_PER_PARTITION as f64 / self.due_write_units_per_refresh.max(0.1);
        self.workers = ((self.shards.max(1) as f64 * per_partition / per_worker).floor() as u32).max(1);
        self
    }
}

/// An active chain's cadence and an idle chain's keep-alive period, from the engine's own schedule.
pub fn schedule_periods(
    p: &chainkeeper::provider::ProviderProfile,
    cfg: &chainkeeper::config::EngineConfig,
) -> (u32, u32) {
    use chainkeeper::chain::schedule::next_due;
    let chain = ChainRecord {
        sealed_refresh_token: Some("sealed".into()),
        sealed_access_token: Some("sealed".into()),
        access_expires_at_ms: Some(600_000),
        last_token_request_at_ms: Some(0),
        refresh_token_issued_at_ms: Some(0),
        last_refresh_at_ms: Some(0),
        ..ChainRecord::new("exact-online-nl", 1, None)
    };
    let active = next_due(&chain, p, cfg, true).unwrap_or(570_000) / 1000;
    let idle = next_due(&chain, p, cfg, false).unwrap_or(29 * 86_400_000) / 1000;
    (active as u32, idle as u32)
}

/// What the model saw over its horizon.
#[derive(Debug, Clone, Default)]
pub struct ModelReport {
    pub refreshes: u64,
    pub sweep_refreshes: u64,
    /// Chains the sweep found already refreshed (by a caller): a read, no write.
    pub not_due: u64,
    pub caller_refreshes: u64,
    pub handouts: u64,
    /// Highest WCU on one `due` partition key value in one second (the sweep's writes held to the limit; a
    /// caller's refresh may pass it and is throttled), and the highest demanded (each refresh counted once, in
    /// the second it was first tried).
    pub peak_due_wcu: u64,
    pub peak_due_demand: u64,
    /// Refreshes throttled at least once.
    pub throttled: u64,
    /// Oldest overdue chain at any moment (seconds past its due time when the sweep got to it).
    pub max_lag_s: u32,
    pub worker_invocations: u64,
    pub sweep_invocations: u64,
    pub index_queries: u64,
    /// Sweep refreshes of chains in use that came after their access token had expired (Exact leaves 30 s
    /// between the earliest refresh, 570 s, and expiry, 600 s): a caller in that gap refreshed it itself and
    /// waited one provider round trip.
    pub expired_before_refresh: u64,
}

/// Runs the model second by second over `m.horizon_s`.
pub fn simulate(m: &Model) -> ModelReport {
    let horizon = m.horizon_s as usize;
    let mut r = ModelReport::default();
    let mut rng = Lcg(0x5eed_u64 ^ m.chains as u64);
    let active_n = (m.chains as f64 * m.active_share) as u32;
    let use_len = (m.use_hours * 3600.0) as u32;
    let start_of = |id: u32| -> u32 {
        // Spread deterministically over the start window.
        let span = m.use_start_s.1 - m.use_start_s.0;
        m.use_start_s.0 + ((id as u64 * 2_654_435_761) % span.max(1) as u64) as u32
    };
    let shards = m.shards.max(1) as usize;
    // Each chain's shard as the engine assigns it (`store::shard_of` of its partition key; four databases per
    // organisation, one container each).
    let shard: Vec<u16> = (0..m.chains)
        .map(|id| chainkeeper::store::shard_of(&format!("chain#org{}#db{}#eol", id / 4, id % 4), shards as u32) as u16)
        .collect();
    // Due times: a wheel of seconds; an entry is a chain id (with `CALLER`: a caller's refresh).
    let mut wheel: Vec<Vec<u32>> = vec![Vec::new(); horizon + 1];
    for id in 0..m.chains {
        if id < active_n {
            // Its first refresh of the day is a caller's (the token expired overnight), at the start of use.
            let s = start_of(id) as usize;
            if s < horizon {
                wheel[s].push(id | CALLER);
            }
        } else {
            // Kept alive once per period: a uniform phase.
            let at = rng.next() % m.keep_alive_period_s as u64;
            if (at as usize) < horizon {
                wheel[at as usize].push(id);
            }
        }
    }
    // Due and not yet read by the sweep; then the batches handed to worker invocations, oldest first. An entry:
    // (chain, due second, throttled once already).
    let mut overdue: VecDeque<(u32, u32, bool)> = VecDeque::new();
    let mut batches: VecDeque<VecDeque<(u32, u32, bool)>> = VecDeque::new();
    let per_worker = (m.concurrency as u64 * 1000 / m.refresh_latency_ms.max(1) as u64).max(1);
    let units = m.due_write_units_per_refresh.max(0.0);
    let limit = WCU_PER_PARTITION as f64;
    let mut used = vec![0f64; shards];
    let mut demand = vec![0f64; shards];
    // When each chain was last refreshed today.
    let mut last = vec![NEVER; m.chains as usize];
    for now in 0..horizon as u32 {
        used.iter_mut().for_each(|u| *u = 0.0);
        demand.iter_mut().for_each(|u| *u = 0.0);
        for entry in std::mem::take(&mut wheel[now as usize]) {
            if entry & CALLER != 0 {
                // A caller's hand-out finding the token about to expire (`Want::Valid`: within the 60 s margin,
                // past the 570 s interval) and nobody refreshed it yet: the caller refreshes (the SDK retries a
                // throttled write within the same request; counted, not delayed).
                let id = entry & !CALLER;
                let in_use = now >= start_of(id) && now < start_of(id) + use_len;
                let last_at = last[id as usize];
                if !in_use || (last_at != NEVER && now < last_at + m.active_period_s) {
                    continue;
                }
                last[id as usize] = now;
                let k = shard[id as usize] as usize;
                demand[k] += units;
                if used[k] + units > limit {
                    r.throttled += 1;
                }
                used[k] += units;
                r.refreshes += 1;
                r.caller_refreshes += 1;
                schedule(&mut wheel, m, id, now, active_n, start_of(id) + use_len);
            } else {
                overdue.push_back((entry, now, false));
            }
        }
        if now % m.sweep_interval_s == 0 && !overdue.is_empty() {
            r.sweep_invocations += 1;
            r.index_queries += 2 * shards as u64;
            while !overdue.is_empty() {
                let n = overdue.len().min(m.batch as usize);
                batches.push_back(overdue.drain(..n).collect());
                r.worker_invocations += 1;
            }
        } else if now % m.sweep_interval_s == 0 {
            r.sweep_invocations += 1;
            r.index_queries += 2 * shards as u64;
        }
        // The first `workers` batches are being worked on, each at `concurrency / latency` refreshes a second; a
        // write its partition has no room for this second is throttled and retried the next.
        for batch in batches.iter_mut().take(m.workers as usize) {
            let mut budget = per_worker;
            while budget > 0 {
                let Some((id, due, was_throttled)) = batch.pop_front() else { break };
                budget -= 1;
                // Refreshed meanwhile (by a caller): the engine reads it and finds it not due; no write.
                let last_at = last[id as usize];
                if last_at != NEVER && last_at + m.active_period_s > due && last_at >= due {
                    r.not_due += 1;
                    continue;
                }
                let k = shard[id as usize] as usize;
                if !was_throttled {
                    demand[k] += units;
                }
                if used[k] + units > limit {
                    if !was_throttled {
                        r.throttled += 1;
                    }
                    batch.push_front((id, due, true));
                    break; // this worker's SDK backs off: its next try is the next second
                }
                used[k] += units;
                last[id as usize] = now;
                r.refreshes += 1;
                r.sweep_refreshes += 1;
                r.max_lag_s = r.max_lag_s.max(now - due);
                if id < active_n && now > due + m.access_token_s.saturating_sub(m.active_period_s) {
                    r.expired_before_refresh += 1;
                }
                schedule(&mut wheel, m, id, now, active_n, start_of(id) + use_len);
            }
        }
        // Only the batches being worked on can have emptied.
        let mut i = 0;
        while i < batches.len().min(m.workers as usize) {
            if batches[i].is_empty() {
                batches.remove(i);
            } else {
                i += 1;
            }
        }
        for k in 0..shards {
            r.peak_due_wcu = r.peak_due_wcu.max(used[k].ceil() as u64);
            r.peak_due_demand = r.peak_due_demand.max(demand[k].ceil() as u64);
        }
        // Batches go out in due order: the oldest waiting entry is in one being worked on (a throttled one) or
        // at the head of the first not yet started, or not yet read by the sweep.
        let started = (m.workers as usize).min(batches.len());
        let waiting =
            batches.iter().take(started + 1).filter_map(|b| b.front()).chain(overdue.front()).map(|e| e.1).min();
        if let Some(due) = waiting {
            r.max_lag_s = r.max_lag_s.max(now - due);
        }
    }
    // Hand-outs: every active chain for its hours of use.
    r.handouts = (active_n as f64 * m.use_hours * m.handouts_per_hour) as u64;
    r
}

const CALLER: u32 = 1 << 31;
const NEVER: u32 = u32::MAX;

/// After a refresh at `now`: the chain's next due second (every `active_period_s` while in use, else its
/// keep-alive, beyond a day's horizon) for the sweep, and while in use its first hand-out after that (hand-outs
/// come every `3600 / handouts_per_hour` s, at a phase of the chain's own), which refreshes if the sweep has not.
fn schedule(wheel: &mut [Vec<u32>], m: &Model, id: u32, now: u32, active_n: u32, use_end: u32) {
    let in_use = id < active_n && now < use_end;
    let next = if in_use { now + m.active_period_s } else { now + m.keep_alive_period_s };
    if (next as usize) < wheel.len() {
        wheel[next as usize].push(id);
    }
    if in_use && m.handouts_per_hour > 0.0 {
        let every = (3600.0 / m.handouts_per_hour).max(1.0) as u32;
        let caller = next + (id.wrapping_mul(2_246_822_519) >> 8) % every;
        if (caller as usize) < wheel.len() && caller < use_end {
            wheel[caller as usize].push(id | CALLER);
        }
    }
}

/// A small deterministic generator (the model must give the same figures every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Calls of each kind per chain per day, from the model's day and the slice's costs.
#[derive(Debug, Clone, Default)]
pub struct PerChainDay {
    pub refreshes: f64,
    pub handouts: f64,
    pub store_reads: f64,
    pub store_writes: f64,
    pub read_units: f64,
    pub write_units: f64,
    pub kms: f64,
    pub secrets: f64,
    pub lambda: f64,
    pub api_gateway: f64,
}

pub fn per_chain_day(m: &Model, r: &ModelReport, c: &SliceCosts) -> PerChainDay {
    let per = |x: f64| x / m.chains as f64 / (m.horizon_s as f64 / 86_400.0);
    let refreshes = r.refreshes as f64;
    let handouts = r.handouts as f64;
    let active = (m.chains as f64 * m.active_share).floor();
    // A hand-out through the API reads the chain and the caller's revocation together (two items, two units
    // below 4 KB); the engine records a chain's use at most once a minute per process (one write).
    let handout_reads = c.reads_per_warm_handout + 1.0;
    let usage_writes = active * m.use_hours * m.handouts_per_hour.min(60.0);
    // The first hand-out after a refresh opens the new token once: in Lambda the API sandbox that hands out a
    // token a worker refreshed asks KMS (its cache has not seen the worker's new data key); after a caller's
    // refresh in the same sandbox, as the slice measured.
    let kms_open_after_refresh = if m.handouts_per_hour > 0.0 {
        r.sweep_refreshes as f64 + r.caller_refreshes as f64 * c.kms_per_first_handout
    } else {
        0.0
    };
    let index_units = r.index_queries as f64 * c.read_units_per_index_query.max(0.5);
    PerChainDay {
        refreshes: per(refreshes),
        handouts: per(handouts),
        store_reads: per(refreshes * c.reads_per_refresh + handouts * handout_reads + r.index_queries as f64),
        store_writes: per(refreshes * c.writes_per_refresh + usage_writes),
        // Reads of items below 4 KB: one unit each (strongly consistent); writes: the slice's units per refresh
        // (the table and the `due` index), one unit per usage write.
        read_units: per(refreshes * c.reads_per_refresh + handouts * handout_reads + index_units),
        write_units: per(refreshes * c.write_units_per_refresh + usage_writes),
        kms: per(refreshes * c.kms_per_refresh + handouts * c.kms_per_warm_handout + kms_open_after_refresh),
        // The AWS adapter caches the app registration for a minute per sandbox: at most one call per worker
        // invocation and sweep (the API function's signing-key reads, one a minute per sandbox, do not grow
        // with chains; the README counts them apart).
        secrets: per((r.worker_invocations + r.sweep_invocations) as f64),
        lambda: per(handouts + (r.worker_invocations + r.sweep_invocations) as f64),
        api_gateway: per(handouts),
    }
}

/// Public on-demand prices, us-east-1, as read on 2026-12-06 (AWS pricing pages and the guides quoting them; the
/// README cites them). The region's prices elsewhere (eu-west-1) differ by a few per cent.
#[derive(Debug, Clone)]
pub struct Prices {
    /// DynamoDB on-demand (since the November 2024 cut): per million write / read request units.
    pub dynamo_wru_per_million: f64,
    pub dynamo_rru_per_million: f64,
    /// KMS: per 10,000 symmetric requests; per customer-managed key a month (one per organisation).
    pub kms_per_10k: f64,
    pub kms_key_month: f64,
    /// Lambda (x86_64): per million requests, per GB-second.
    pub lambda_per_million: f64,
    pub lambda_gb_s: f64,
    /// API Gateway HTTP API: per million requests (first 300 million a month).
    pub http_api_per_million: f64,
    /// Secrets Manager: per 10,000 API calls.
    pub secrets_per_10k: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            dynamo_wru_per_million: 0.625,
            dynamo_rru_per_million: 0.125,
            kms_per_10k: 0.03,
            kms_key_month: 1.0,
            lambda_per_million: 0.20,
            lambda_gb_s: 0.000_016_666_7,
            http_api_per_million: 1.00,
            secrets_per_10k: 0.05,
        }
    }
}

/// Dollars per 1,000 chains a month (30 days), by service, from the per-chain-day counts.
#[derive(Debug, Clone, Default)]
pub struct MonthlyCost {
    pub dynamodb: f64,
    pub kms_requests: f64,
    pub lambda: f64,
    pub api_gateway: f64,
    pub secrets_manager: f64,
    /// Lambda GB-seconds assumed (256 MB functions, as the template sets).
    pub lambda_gb_s: f64,
}

impl MonthlyCost {
    pub fn total(&self) -> f64 {
        self.dynamodb + self.kms_requests + self.lambda + self.api_gateway + self.secrets_manager
    }
}

/// The month of 1,000 chains. Lambda time: a warm hand-out 10 ms; a caller's refresh adds the provider's
/// latency; a worker spends `latency / concurrency` per refresh (its refreshes overlap); 256 MB.
pub fn monthly_cost(m: &Model, r: &ModelReport, d: &PerChainDay, p: &Prices) -> MonthlyCost {
    let chain_months = 1_000.0 * 30.0;
    let caller_refreshes = r.caller_refreshes as f64 / m.chains as f64 * (86_400.0 / m.horizon_s as f64);
    let sweep_refreshes = r.sweep_refreshes as f64 / m.chains as f64 * (86_400.0 / m.horizon_s as f64);
    let latency_s = m.refresh_latency_ms as f64 / 1000.0;
    let seconds_per_chain_day =
        d.handouts * 0.010 + caller_refreshes * latency_s + sweep_refreshes * latency_s / m.concurrency.max(1) as f64;
    let gb_s = seconds_per_chain_day * 0.25 * chain_months;
    MonthlyCost {
        dynamodb: (d.write_units * p.dynamo_wru_per_million + d.read_units * p.dynamo_rru_per_million) * chain_months
            / 1e6,
        kms_requests: d.kms * chain_months / 1e4 * p.kms_per_10k,
        lambda: d.lambda * chain_months / 1e6 * p.lambda_per_million + gb_s * p.lambda_gb_s,
        api_gateway: d.api_gateway * chain_months / 1e6 * p.http_api_per_million,
        secrets_manager: d.secrets * chain_months / 1e4 * p.secrets_per_10k,
        lambda_gb_s: gb_s,
    }
}
