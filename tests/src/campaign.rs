//! The provider fault campaign of issue 13: many chains refreshed round after round against the Exact Online
//! simulator with seeded transient faults, lost answers and crash points, through the chain engine of this
//! process or of several worker processes (`chainkeeper-bench faults-worker`) on one SQLite file.
//! `chainkeeper-bench faults` prints the full campaign; the e2e tests `provider_faults::a_short_fault_campaign_*`
//! run short ones.
//!
//! One round moves both clocks 601 s (every access token has expired, and Exact's 570 s since the last token
//! request has passed) and asks every chain once per process for a token, so every round needs one refresh per
//! chain and every caller needs that refresh: a fault the engine does not absorb is a failed caller request.
//!
//! A worker is driven over stdin/stdout, one JSON line each way per round: the parent sends the simulator's
//! time (the worker's engine runs on a manual clock set from it), the crash point for that worker's next
//! refresh (or none) and the live chains; the worker asks each once and answers with every call's outcome and
//! latency. Everything else (token calls, faults, old refresh tokens) is counted at the simulator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chainkeeper::chain::{ChainEngine, ChainError, CrashPoint, LOST_RETRYING};
use chainkeeper::clock::ManualClock;
use chainkeeper::ids::{Alias, ContainerRef, DbName, OrgId};
use chainkeeper::records::ChainStatus;
use exact_sim::{FaultRates, RefreshGrace, SimUser};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::exact::{CLIENT_ID, ExactHarness};
use crate::{PLANTED, container_path};

/// What to run.
#[derive(Clone, Debug)]
pub struct Campaign {
    pub chains: usize,
    pub rounds: usize,
    /// Share of token requests that get a transient fault (503, 502, 504, a reset before the request is read).
    pub transient: f64,
    /// Share of token requests processed and never answered (a close, a reset).
    pub lost: f64,
    /// Per round and engine, the chance that one refresh "dies" at a crash point (the points taken in turn).
    pub crash: f64,
    /// Exact's grace (the previous refresh token usable until the new pair is used) on for every app.
    pub grace: bool,
    /// `lost_response` of the profile (`retry_previous`, Exact's built-in, or `needs_repair`).
    pub lost_response: &'static str,
    /// OS processes whose chain engines share one SQLite file, every chain asked once by each per round: 1 is
    /// this process's engine; more are that many worker processes (`chainkeeper-bench faults-worker`).
    pub processes: usize,
    /// Auto-recovery credentials stored for every chain (each chain then starts with a real sign-in at the
    /// simulator): a broken chain is re-authorized without a person, as in production (at once when it breaks,
    /// and by the scheduled recovery run, which the campaign runs at the start of every round), and the campaign
    /// goes on with it. Without it a broken chain leaves the campaign.
    pub recovery: bool,
    /// Callers in flight at once (shared out among the worker processes).
    pub concurrency: usize,
    pub seed: u64,
}

impl Campaign {
    /// Issue 13's campaign: 5 % transient faults, 2 % lost answers, a crash point half the rounds, Exact's grace
    /// and profile (`retry_previous`), one process, no auto-recovery, seed 13. Variants change fields from here.
    pub fn issue_13(chains: usize, rounds: usize, concurrency: usize) -> Self {
        Self {
            chains,
            rounds,
            transient: 0.05,
            lost: 0.02,
            crash: 0.5,
            grace: true,
            lost_response: "retry_previous",
            processes: 1,
            recovery: false,
            concurrency,
            seed: 13,
        }
    }
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    pub refreshes_needed: u64,
    pub caller_requests: u64,
    pub ok: u64,
    /// Failed caller requests by problem code.
    pub failed: BTreeMap<String, u64>,
    /// Of them, the requests that met their chain broken (the `409` of the break itself).
    pub failed_broken: u64,
    /// Requests whose engine "died" at a crash point (their callers lost the connection with the process).
    pub crashed: u64,
    /// Chains that ended `needs_repair`, by repair code (with auto-recovery, a chain may break again later).
    pub broken: BTreeMap<String, u64>,
    /// Auto-recovery on: broken chains healthy again with a new authorization, and those still broken at the end.
    pub recovery: bool,
    pub recovered: u64,
    /// Of them, recovered by a later scheduled run (the attempt when the chain broke failed, e.g. a fault at the
    /// code exchange: `recovery_provider_unreachable`, tried again after its backoff).
    pub recovered_by_schedule: u64,
    /// Broken chains still not recovered after the rounds and up to six more scheduled runs, by repair code.
    pub not_recovered: BTreeMap<String, u64>,
    /// Audit entries during the rounds by anyone but chainkeeper itself (a person's sign-in, recovery run, …).
    pub person_actions: u64,
    /// Worker processes' log lines holding a planted secret (must be 0).
    pub leaked_log_lines: u64,
    pub token_calls: u64,
    pub faults_injected: u64,
    pub faults_by_kind: BTreeMap<String, u64>,
    pub old_refresh_token_used: u64,
    pub grace_refreshes: u64,
    /// Latency (ms) of the caller requests that got a token after their chain needed more than one token call
    /// (or met a fault) in that round.
    pub retried_ms: Vec<f64>,
    /// Latency (ms) of the other callers that got a token: what the machine costs without a fault.
    pub plain_ms: Vec<f64>,
    pub elapsed: Duration,
}

impl Report {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Failed requests other than those told to wait out the provider's interval after a lost answer and those
    /// that met their chain broken.
    pub fn failed_transient(&self) -> u64 {
        let waits: u64 = self.failed.get(LOST_RETRYING).copied().unwrap_or(0);
        self.failed_total() - waits - self.failed_broken
    }

    pub fn broken_total(&self) -> u64 {
        self.broken.values().sum()
    }

    pub fn not_recovered_total(&self) -> u64 {
        self.not_recovered.values().sum()
    }

    pub fn share(&self, n: u64) -> f64 {
        n as f64 * 100.0 / self.caller_requests.max(1) as f64
    }

    pub fn p99_retried_ms(&self) -> f64 {
        p99(&self.retried_ms)
    }

    pub fn print(&self, title: &str) {
        println!("{title}");
        println!(
            "  refreshes needed {}, caller requests {} in {:.1} s; faults injected {} {:?}",
            self.refreshes_needed,
            self.caller_requests,
            self.elapsed.as_secs_f64(),
            self.faults_injected,
            self.faults_by_kind
        );
        println!("  chains broken: {} {:?}", self.broken_total(), self.broken);
        println!(
            "  failed caller requests: {:.3} % ({}: {:?}); without the waits after a lost answer and the breaks: {:.3} %; crashed with their engine: {}",
            self.share(self.failed_total()),
            self.failed_total(),
            self.failed,
            self.share(self.failed_transient()),
            self.crashed
        );
        println!(
            "  token calls per needed refresh: {:.3} (bound 1 + faults per refresh = {:.3}); `Old refresh token used`: {}; refreshes healed by the grace: {}",
            self.token_calls as f64 / self.refreshes_needed.max(1) as f64,
            1.0 + self.faults_injected as f64 / self.refreshes_needed.max(1) as f64,
            self.old_refresh_token_used,
            self.grace_refreshes
        );
        if self.recovery {
            println!(
                "  auto-recovery: lost answers {}, chains broken {}, recovered without a person {} ({} of them by a later scheduled run), not recovered {} {:?}, person actions {}",
                self.faults_by_kind.get("lose").copied().unwrap_or(0)
                    + self.faults_by_kind.get("reset_after_processing").copied().unwrap_or(0),
                self.broken_total(),
                self.recovered,
                self.recovered_by_schedule,
                self.not_recovered_total(),
                self.not_recovered,
                self.person_actions
            );
        }
        println!(
            "  p99 latency of a caller whose refresh was retried: {:.0} ms ({} such callers); of the others: {:.0} ms",
            self.p99_retried_ms(),
            self.retried_ms.len(),
            p99(&self.plain_ms)
        );
    }
}

fn p99(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(((v.len().max(1) - 1) as f64 * 0.99) as usize).copied().unwrap_or(0.0)
}

fn unit(seed: u64, a: u64, b: u64) -> f64 {
    let mut z = seed ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// The simulator's user behind chain `i` (its refresh chain is `CLIENT_ID#camp-user-{i}`).
fn camp_user(i: usize) -> SimUser {
    SimUser {
        user_id: format!("camp-user-{i}"),
        username: format!("camp-user-{i}@example.nl"),
        password: format!("pw-camp-{i}-{PLANTED}"),
        totp_secret_base32: Some("JBSWY3DPEHPK3PXP".into()),
        full_name: format!("Campaign user {i}"),
        division: 1000 + i as i64,
    }
}

/// Chain `i`'s container.
fn container(i: usize) -> ContainerRef {
    ContainerRef {
        org: OrgId::parse("camp").unwrap(),
        db: DbName::parse("db").unwrap(),
        alias: Alias::parse(&format!("c{i}")).unwrap(),
    }
}

const POINTS: [(CrashPoint, &str); 3] = [
    (CrashPoint::BeforeRequest, "before_request"),
    (CrashPoint::AfterAnswer, "after_answer"),
    (CrashPoint::AfterWrite, "after_write"),
];

/// How one caller's request ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Ok,
    /// Its engine "died" at a crash point.
    Crashed,
    /// The chain needs repair (the repair code).
    Broken(String),
    /// Any other problem (its code).
    Failed(String),
}

impl Outcome {
    fn of(got: Result<(), ChainError>) -> Outcome {
        match got {
            Ok(()) => Outcome::Ok,
            Err(ChainError::Unexpected(e)) if e.to_string().contains("simulated crash") => Outcome::Crashed,
            Err(ChainError::NeedsRepair { code, .. }) => Outcome::Broken(code.code().to_string()),
            Err(e) => Outcome::Failed(e.code().to_string()),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Outcome::Ok => json!(["ok"]),
            Outcome::Crashed => json!(["crashed"]),
            Outcome::Broken(code) => json!(["broken", code]),
            Outcome::Failed(code) => json!(["failed", code]),
        }
    }

    fn from_json(v: &Value) -> anyhow::Result<Outcome> {
        let code = || v[1].as_str().unwrap_or_default().to_string();
        Ok(match v[0].as_str() {
            Some("ok") => Outcome::Ok,
            Some("crashed") => Outcome::Crashed,
            Some("broken") => Outcome::Broken(code()),
            Some("failed") => Outcome::Failed(code()),
            _ => anyhow::bail!("a worker's outcome is not one of ok, crashed, broken, failed: {v}"),
        })
    }
}

/// One caller's request: the chain, how it ended, its latency (ms).
type Call = (usize, Outcome, f64);

/// Asks every chain in `chains` once through `engine`, `concurrency` callers at a time.
async fn ask(engine: &Arc<ChainEngine>, chains: &[usize], concurrency: usize) -> Vec<Call> {
    let calls = chains.iter().map(|&i| {
        let engine = engine.clone();
        async move {
            let t = Instant::now();
            let got = engine.access_token(&container(i)).await.map(|_| ());
            (i, Outcome::of(got), t.elapsed().as_secs_f64() * 1000.0)
        }
    });
    futures::stream::iter(calls).buffer_unordered(concurrency.max(1)).collect().await
}

/// The `chainkeeper-bench` binary that runs the workers: `CHAINKEEPER_BENCH_BIN`, this very program when it is
/// the benchmark, else the one `cargo build` put beside the test binaries (debug for tests).
pub fn bench_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAINKEEPER_BENCH_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(me) = std::env::current_exe()
        && me.file_stem().is_some_and(|n| n == "chainkeeper-bench")
    {
        return me;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace().join("target"), PathBuf::from);
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let bin = target.join(profile).join("chainkeeper-bench");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p chainkeeper-e2e --bin chainkeeper-bench` first (bash .ci/run does)",
        bin.display()
    );
    bin
}

/// A worker process and its pipes.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    /// `chainkeeper-bench faults-worker DIR` on the campaign's data directory; its log lines (stderr) are checked
    /// for planted secrets as they come.
    fn start(dir: &Path, leaks: Arc<AtomicU64>) -> anyhow::Result<Worker> {
        let mut child = tokio::process::Command::new(bench_bin())
            .arg("faults-worker")
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting chainkeeper-bench faults-worker")?;
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(PLANTED) {
                    leaks.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Ok(Worker { child, stdin, stdout })
    }

    async fn send(&mut self, msg: &Value) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{msg}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn answer(&mut self) -> anyhow::Result<Vec<Call>> {
        let line = self.stdout.next_line().await?.context("a worker ended before it answered")?;
        let v: Value = serde_json::from_str(&line).with_context(|| format!("a worker's answer: {line}"))?;
        v["calls"]
            .as_array()
            .context("a worker's answer has no calls")?
            .iter()
            .map(|c| {
                Ok((c[0].as_u64().context("chain")? as usize, Outcome::from_json(&c[1])?, c[2].as_f64().unwrap_or(0.0)))
            })
            .collect()
    }
}

/// The configuration file the workers read, in the campaign's data directory.
const WORKER_CONFIG: &str = "campaign.toml";

/// A worker process (`chainkeeper-bench faults-worker DIR`): chainkeeper embedded on `DIR` (the campaign's data
/// directory and configuration), on a clock the parent sets. One JSON line in per round —
/// `{"now_ms": T, "crash": "after_answer" | null, "chains": [i…], "concurrency": n}` — and one out:
/// `{"calls": [[i, ["ok"] | ["crashed"] | ["broken", code] | ["failed", code], ms]…]}`. Ends at end of input.
pub async fn worker(dir: &Path) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug,hyper=info,reqwest=info,h2=info,rustls=info,hyper_util=info")
        .with_writer(std::io::stderr)
        .json()
        .try_init();
    let config = chainkeeper::config::Config::from_toml(&std::fs::read_to_string(dir.join(WORKER_CONFIG))?)?;
    let clock = ManualClock::new(0);
    let app =
        chainkeeper::wiring::embedded(&chainkeeper::wiring::DataDir::open(dir)?, config, Arc::new(clock.clone()))?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let msg: Value = serde_json::from_str(&line)?;
        clock.set_ms(msg["now_ms"].as_i64().context("now_ms")?);
        if let Some(name) = msg["crash"].as_str() {
            let (point, _) = POINTS.iter().find(|(_, n)| *n == name).context("unknown crash point")?;
            app.engine.crash_next_refresh_at(*point);
        }
        let chains: Vec<usize> =
            msg["chains"].as_array().context("chains")?.iter().filter_map(|i| i.as_u64()).map(|i| i as usize).collect();
        let calls = ask(&app.engine, &chains, msg["concurrency"].as_u64().unwrap_or(32) as usize).await;
        let calls: Vec<Value> = calls.iter().map(|(i, o, ms)| json!([i, o.to_json(), ms])).collect();
        out.write_all(format!("{}\n", json!({ "calls": calls })).as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

/// Sets up the chains: minted by the simulator and installed directly, or, for auto-recovery, each container
/// created, authorized by a real sign-in of its own user and given that user's auto-recovery credentials.
async fn set_up(h: &ExactHarness, cfg: &Campaign) -> anyhow::Result<()> {
    if !cfg.recovery {
        h.services.vault.keys().create_org_key("camp").await?;
        for i in 0..cfg.chains {
            h.install_minted_chain("camp", i, &camp_user(i).user_id).await?;
        }
        return Ok(());
    }
    for i in 0..cfg.chains {
        let (user, alias) = (camp_user(i), format!("c{i}"));
        h.api.create_container("camp", "db", &alias, "oauth2_code", Some("exact-online-nl")).await;
        let r = h.authorize("camp", "db", &alias, &user).await;
        anyhow::ensure!(r.status == 200, "authorizing chain {i}: {}", r.body);
        let body = json!({"username": user.username, "password": user.password, "totp_secret": user.totp_secret_base32, "retention_days": 90});
        let r = h.api.put(&format!("{}/auto-recovery", container_path("camp", "db", &alias)), body).await;
        anyhow::ensure!(r.status == 200, "auto-recovery credentials of chain {i}: {}", r.body);
    }
    Ok(())
}

/// Whether chain `i` is healthy again; `None` while an auto-recovery may still be under way (no attempt has
/// ended in a `recovery_*` repair code yet).
async fn recovered(h: &ExactHarness, i: usize) -> anyhow::Result<Option<bool>> {
    let Some((chain, _)) = h.services.engine.chain(&container(i)).await? else { return Ok(Some(false)) };
    if chain.status == ChainStatus::Healthy {
        return Ok(Some(true));
    }
    let failed = chain.last_error.as_ref().is_some_and(|e| e.code.starts_with("recovery_"));
    Ok(failed.then_some(false))
}

/// Waits (at most 30 s) for the auto-recoveries the engine started for `broken`; moves the recovered ones out
/// of `pending`.
async fn await_recoveries(
    h: &ExactHarness,
    broken: &[usize],
    pending: &mut BTreeSet<usize>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut waiting: Vec<usize> = broken.to_vec();
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for i in waiting {
            match recovered(h, i).await? {
                Some(true) => {
                    pending.remove(&i);
                    report.recovered += 1;
                }
                Some(false) => {}
                None => still.push(i),
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The scheduled recovery run (`serve`'s ticker, the `recover` function), which tries again what failed when the
/// chain broke; moves the recovered chains out of `pending`.
async fn scheduled_recovery(
    h: &ExactHarness,
    pending: &mut BTreeSet<usize>,
    report: &mut Report,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    h.services.recovery.run_once().await?;
    for i in pending.clone() {
        if recovered(h, i).await? == Some(true) {
            pending.remove(&i);
            report.recovered += 1;
            report.recovered_by_schedule += 1;
        }
    }
    Ok(())
}

/// Audit entries of the campaign's organisation after `since_ms` whose actor is not chainkeeper itself.
async fn person_actions(h: &ExactHarness, since_ms: i64) -> anyhow::Result<u64> {
    let org = OrgId::parse("camp")?;
    let (mut n, mut cursor) = (0, None);
    loop {
        let page = h.services.audit.page(&org, 1000, cursor.as_deref()).await?;
        let newer: Vec<_> = page.entries.iter().filter(|e| e.at_ms > since_ms).collect();
        n += newer.iter().filter(|e| !e.actor.starts_with("chainkeeper")).count() as u64;
        match page.next_cursor {
            Some(c) if newer.len() == page.entries.len() => cursor = Some(c),
            _ => return Ok(n),
        }
    }
}

/// Runs the campaign and returns its figures.
pub async fn run(cfg: &Campaign) -> anyhow::Result<Report> {
    let grace = if cfg.grace { RefreshGrace::UntilNewPairUsed { max: None } } else { RefreshGrace::Off };
    let chains = cfg.chains;
    // The set-up drives the API with one token, faster than its default rate allows.
    let limits = "[limits]\ntoken_requests_per_s = 1000000.0\ntoken_burst = 1000000\n";
    let h = ExactHarness::start_all(
        |c| {
            c.refresh_grace = grace;
            c.users.extend((0..chains).map(camp_user));
        },
        limits,
        "wait_s = 5",
        &format!("lost_response = \"{}\"", cfg.lost_response),
    )
    .await;
    set_up(&h, cfg).await?;
    let leaks = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    if cfg.processes > 1 {
        std::fs::write(h.dir.path().join(WORKER_CONFIG), &h.config_toml)?;
        for _ in 0..cfg.processes {
            workers.push(Worker::start(h.dir.path(), leaks.clone())?);
        }
    }
    h.sim.set_fault_rates(FaultRates::campaign(cfg.seed, cfg.transient, cfg.lost)).map_err(anyhow::Error::msg)?;
    h.sim.reset_stats();
    let mut report = Report { recovery: cfg.recovery, ..Report::default() };
    let mut live = vec![true; chains];
    // Broken chains waiting for auto-recovery.
    let mut pending = BTreeSet::new();
    let since_ms = h.sim.clock().now_ms();
    let started = Instant::now();
    for round in 0..cfg.rounds {
        if round > 0 && round % 10 == 0 {
            eprintln!("  round {round} of {} ({:.0} s)", cfg.rounds, started.elapsed().as_secs_f64());
        }
        h.advance(Duration::from_secs(601));
        if cfg.recovery {
            scheduled_recovery(&h, &mut pending, &mut report).await?;
        }
        let asked: Vec<usize> = (0..chains).filter(|i| live[*i] && !pending.contains(i)).collect();
        let crash_at =
            |e: usize| (unit(cfg.seed, round as u64, e as u64) < cfg.crash).then(|| POINTS[(round + e) % POINTS.len()]);
        let before = h.sim.stats().per_chain;
        let results: Vec<Call> = if workers.is_empty() {
            if let Some((point, _)) = crash_at(0) {
                h.services.engine.crash_next_refresh_at(point);
            }
            ask(&h.services.engine, &asked, cfg.concurrency).await
        } else {
            let now_ms = h.sim.clock().now_ms();
            let share = cfg.concurrency.div_ceil(workers.len());
            for (e, w) in workers.iter_mut().enumerate() {
                let crash = crash_at(e).map(|(_, name)| name);
                w.send(&json!({"now_ms": now_ms, "crash": crash, "chains": asked, "concurrency": share})).await?;
            }
            let answers = futures::future::join_all(workers.iter_mut().map(Worker::answer)).await;
            answers.into_iter().collect::<anyhow::Result<Vec<_>>>()?.into_iter().flatten().collect()
        };
        let after = h.sim.stats().per_chain;
        report.refreshes_needed += asked.len() as u64;
        let mut broke = Vec::new();
        for (i, got, ms) in results {
            report.caller_requests += 1;
            let key = format!("{CLIENT_ID}#{}", camp_user(i).user_id);
            // The simulator counts a chain's processed refreshes and, apart, the faults injected into its requests.
            let delta =
                |f: fn(&exact_sim::ChainStats) -> u64| after.get(&key).map_or(0, f) - before.get(&key).map_or(0, f);
            let retried = delta(|s| s.faults_injected) > 0 || delta(|s| s.refresh_requests) > 1;
            match got {
                Outcome::Ok => {
                    report.ok += 1;
                    if retried {
                        report.retried_ms.push(ms);
                    } else {
                        report.plain_ms.push(ms);
                    }
                }
                Outcome::Crashed => report.crashed += 1,
                Outcome::Broken(code) => {
                    *report.failed.entry(code.clone()).or_default() += 1;
                    report.failed_broken += 1;
                    if live[i] && !broke.contains(&i) {
                        broke.push(i);
                        *report.broken.entry(code).or_default() += 1;
                    }
                }
                Outcome::Failed(code) => *report.failed.entry(code).or_default() += 1,
            }
        }
        if cfg.recovery {
            pending.extend(broke.iter().copied());
            await_recoveries(&h, &broke, &mut pending, &mut report).await?;
        } else {
            for i in broke {
                live[i] = false;
            }
        }
    }
    // Production keeps running the scheduled recovery after the last round: so does the campaign, a few times.
    for _ in 0..6 {
        if pending.is_empty() {
            break;
        }
        h.advance(Duration::from_secs(601));
        scheduled_recovery(&h, &mut pending, &mut report).await?;
    }
    report.elapsed = started.elapsed();
    let stats = h.sim.stats();
    report.token_calls = stats.refresh_requests;
    report.faults_injected = stats.faults_injected;
    report.faults_by_kind = stats.faults_by_kind;
    report.old_refresh_token_used = stats.old_refresh_token_used;
    report.grace_refreshes = stats.grace_refreshes;
    for i in &pending {
        let code = match h.services.engine.chain(&container(*i)).await? {
            Some((chain, _)) => chain.last_error.map_or_else(|| "none".to_string(), |e| e.code),
            None => "no_chain".to_string(),
        };
        *report.not_recovered.entry(code).or_default() += 1;
    }
    if cfg.recovery {
        report.person_actions = person_actions(&h, since_ms).await?;
    }
    for mut w in workers {
        drop(w.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
    }
    report.leaked_log_lines = leaks.load(Ordering::SeqCst);
    Ok(report)
}
