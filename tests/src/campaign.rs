//! The provider fault campaign of issue 13: many chains refreshed round after round against the Exact Online
//! simulator with seeded transient faults, lost answers and crash points, through one or more chain engines on
//! one SQLite file. `chainkeeper-bench faults` prints the full campaign; the e2e test
//! `provider_faults::a_short_fault_campaign_breaks_no_chain` runs a short one.
//!
//! One round moves both clocks 601 s (every access token has expired, and Exact's 570 s since the last token
//! request has passed) and asks every chain once per engine for a token, so every round needs one refresh per
//! chain and every caller needs that refresh: a fault the engine does not absorb is a failed caller request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainkeeper::chain::{ChainEngine, ChainError, CrashPoint, LOST_RETRYING};
use exact_sim::{FaultRates, RefreshGrace};
use futures::StreamExt;

use crate::exact::{CLIENT_ID, ExactHarness};

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
    /// Chain engines over one SQLite file (each one process's engine), every chain asked once by each per round.
    pub engines: usize,
    /// Callers in flight at once.
    pub concurrency: usize,
    pub seed: u64,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    pub refreshes_needed: u64,
    pub caller_requests: u64,
    pub ok: u64,
    /// Failed caller requests by problem code.
    pub failed: BTreeMap<String, u64>,
    /// Requests whose engine "died" at a crash point (their callers lost the connection with the process).
    pub crashed: u64,
    /// Chains that ended `needs_repair`, by repair code.
    pub broken: BTreeMap<String, u64>,
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

    /// Failed requests other than those told to wait out the provider's interval after a lost answer.
    pub fn failed_transient(&self) -> u64 {
        self.failed.iter().filter(|(code, _)| code.as_str() != LOST_RETRYING).map(|(_, n)| n).sum()
    }

    pub fn broken_total(&self) -> u64 {
        self.broken.values().sum()
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
            "  failed caller requests: {:.3} % ({}: {:?}); without the waits after a lost answer: {:.3} %; crashed with their engine: {}",
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

/// Runs the campaign and returns its figures.
pub async fn run(cfg: &Campaign) -> anyhow::Result<Report> {
    let grace = if cfg.grace { RefreshGrace::UntilNewPairUsed { max: None } } else { RefreshGrace::Off };
    let h = ExactHarness::start_full(
        |c| c.refresh_grace = grace,
        "wait_s = 5",
        &format!("lost_response = \"{}\"", cfg.lost_response),
    )
    .await;
    h.services.vault.keys().create_org_key("camp").await?;
    let mut chains = Vec::new();
    for i in 0..cfg.chains {
        let user = format!("camp-user-{i}");
        let c = h.install_minted_chain("camp", i, &user).await?;
        chains.push((c, format!("{CLIENT_ID}#{user}")));
    }
    let mut engines: Vec<Arc<ChainEngine>> = vec![h.services.engine.clone()];
    let mut others = Vec::new();
    for _ in 1..cfg.engines {
        let other = chainkeeper::wiring::embedded(
            &chainkeeper::wiring::DataDir::open(h.dir.path())?,
            (*h.services.config).clone(),
            Arc::new(h.clock.clone()),
        )?;
        engines.push(other.engine.clone());
        others.push(other);
    }
    h.sim.set_fault_rates(FaultRates::campaign(cfg.seed, cfg.transient, cfg.lost)).map_err(anyhow::Error::msg)?;
    h.sim.reset_stats();
    let mut report = Report::default();
    let mut live = vec![true; chains.len()];
    let points = [CrashPoint::BeforeRequest, CrashPoint::AfterAnswer, CrashPoint::AfterWrite];
    let started = Instant::now();
    for round in 0..cfg.rounds {
        if round > 0 && round % 10 == 0 {
            eprintln!("  round {round} of {} ({:.0} s)", cfg.rounds, started.elapsed().as_secs_f64());
        }
        h.advance(Duration::from_secs(601));
        for (e, engine) in engines.iter().enumerate() {
            if unit(cfg.seed, round as u64, e as u64) < cfg.crash {
                engine.crash_next_refresh_at(points[(round + e) % points.len()]);
            }
        }
        let before = h.sim.stats().per_chain;
        let calls = chains.iter().enumerate().filter(|(i, _)| live[*i]).flat_map(|(i, (c, _))| {
            engines.iter().map(move |engine| {
                let (engine, c) = (engine.clone(), c.clone());
                async move {
                    let t = Instant::now();
                    let got = engine.access_token(&c).await.map(|_| ());
                    (i, got, t.elapsed().as_secs_f64() * 1000.0)
                }
            })
        });
        let results: Vec<(usize, Result<(), ChainError>, f64)> =
            futures::stream::iter(calls).buffer_unordered(cfg.concurrency).collect().await;
        let after = h.sim.stats().per_chain;
        report.refreshes_needed += live.iter().filter(|l| **l).count() as u64;
        for (i, got, ms) in results {
            report.caller_requests += 1;
            let key = &chains[i].1;
            // The simulator counts a chain's processed refreshes and, apart, the faults injected into its requests.
            let delta =
                |f: fn(&exact_sim::ChainStats) -> u64| after.get(key).map_or(0, f) - before.get(key).map_or(0, f);
            let retried = delta(|s| s.faults_injected) > 0 || delta(|s| s.refresh_requests) > 1;
            match got {
                Ok(()) => {
                    report.ok += 1;
                    if retried {
                        report.retried_ms.push(ms);
                    } else {
                        report.plain_ms.push(ms);
                    }
                }
                Err(ChainError::Unexpected(e)) if e.to_string().contains("simulated crash") => report.crashed += 1,
                Err(ChainError::NeedsRepair { code, .. }) => {
                    *report.failed.entry(code.code().to_string()).or_default() += 1;
                    if live[i] {
                        live[i] = false;
                        *report.broken.entry(code.code().to_string()).or_default() += 1;
                    }
                }
                Err(e) => *report.failed.entry(e.code().to_string()).or_default() += 1,
            }
        }
    }
    report.elapsed = started.elapsed();
    let stats = h.sim.stats();
    report.token_calls = stats.refresh_requests;
    report.faults_injected = stats.faults_injected;
    report.faults_by_kind = stats.faults_by_kind;
    report.old_refresh_token_used = stats.old_refresh_token_used;
    report.grace_refreshes = stats.grace_refreshes;
    drop(others);
    Ok(report)
}
