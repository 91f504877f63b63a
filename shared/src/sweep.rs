//! The scheduled sweep (the `refresh` Lambda on EventBridge; an in-process ticker in `serve`): keeps alive every
//! chain whose refresh token would expire unused, and refreshes chains in active use shortly before their access
//! token expires. It reads the `Due` index (never a scan), goes through the same engine path as every caller,
//! with bounded concurrency. Running it twice, or late, is harmless: the engine only refreshes what is due.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::app::Services;
use crate::chain::{ChainError, Want};
use crate::records::{DUE_PK, container_of_chain_pk, time_sk};
use crate::store::Index;

#[derive(Debug, Default, Serialize, Clone)]
pub struct SweepReport {
    pub due: usize,
    pub refreshed: usize,
    pub not_due: usize,
    pub broken: usize,
    pub transient_failures: usize,
}

/// One sweep over every chain due now, at most `limit` of them.
pub async fn run_once(s: &Arc<Services>, limit: usize) -> anyhow::Result<SweepReport> {
    let now = s.clock.now_ms();
    let due = s.store.query_index(Index::Due, DUE_PK, Some(&time_sk(now)), limit).await?;
    let mut report = SweepReport { due: due.len(), ..Default::default() };
    let permits = Arc::new(Semaphore::new(s.config.engine.sweep_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for item in due {
        let Some(c) = container_of_chain_pk(&item.key.pk) else { continue };
        let s = s.clone();
        let permit = permits.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            s.engine.obtain(&c, Want::IfDue).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(Some(_)) => report.refreshed += 1,
            Ok(None) => report.not_due += 1,
            Err(ChainError::NeedsRepair { .. }) => report.broken += 1,
            Err(e) => {
                tracing::warn!(code = e.code(), "sweep could not refresh a chain");
                report.transient_failures += 1;
            }
        }
    }
    Ok(report)
}

/// `serve`'s in-process schedule: a sweep every `engine.sweep_interval_s`.
pub fn spawn_ticker(s: Arc<Services>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = std::time::Duration::from_secs_f64(s.config.engine.sweep_interval_s.max(0.05));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match run_once(&s, 10_000).await {
                Ok(r) if r.due > 0 => tracing::info!(due = r.due, refreshed = r.refreshed, broken = r.broken, "sweep"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
            match crate::recover::run_once(&s).await {
                Ok(r) if r.needs_repair > 0 || r.expiry_warnings > 0 => {
                    tracing::info!(
                        needs_repair = r.needs_repair,
                        recovered = r.recovered,
                        warnings = r.expiry_warnings,
                        "recovery run"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "recovery run failed"),
            }
        }
    })
}
