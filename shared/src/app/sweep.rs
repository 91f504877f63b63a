//! The scheduled sweep (the `refresh` Lambda on EventBridge; an in-process ticker in `serve`): keeps alive every
//! chain whose refresh token would expire unused, and refreshes chains in active use shortly before their access
//! token expires. It reads the `Due` index (never a scan) and goes through the same engine path as every caller,
//! with bounded concurrency. Running it twice, or late, is harmless: the engine only refreshes what is due.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::chain::{ChainEngine, ChainError, Want};
use crate::clock::Clock;
use crate::records::{DUE_PK, container_of_chain_pk, time_sk};
use crate::store::{Index, Store, StoreError};

use super::Ports;

#[derive(Debug, Default, Serialize, Clone)]
pub struct SweepReport {
    pub due: usize,
    pub refreshed: usize,
    pub not_due: usize,
    pub broken: usize,
    pub transient_failures: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[derive(Clone)]
pub struct Sweep {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    engine: Arc<ChainEngine>,
    /// `engine.sweep_concurrency`: refreshes in flight at once.
    concurrency: usize,
}

impl Sweep {
    pub fn new(p: &Ports, engine: Arc<ChainEngine>) -> Self {
        let concurrency = p.config.engine.sweep_concurrency.max(1);
        Self { store: p.store.clone(), clock: p.clock.clone(), engine, concurrency }
    }

    /// One sweep over every chain due now, at most `limit` of them.
    #[tracing::instrument(skip_all)]
    pub async fn run_once(&self, limit: usize) -> Result<SweepReport, SweepError> {
        let now = self.clock.now_ms();
        let due = self.store.query_index(Index::Due, DUE_PK, Some(&time_sk(now)), limit).await?;
        let mut report = SweepReport { due: due.len(), ..Default::default() };
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for item in due {
            let Some(c) = container_of_chain_pk(&item.key.pk) else { continue };
            let engine = self.engine.clone();
            let permit = permits.clone().acquire_owned().await.map_err(anyhow::Error::from)?;
            tasks.spawn(async move {
                let _permit = permit;
                engine.obtain(&c, Want::IfDue).await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined.map_err(anyhow::Error::from)? {
                Ok(Some(_)) => report.refreshed += 1,
                Ok(None) => report.not_due += 1,
                Err(ChainError::NeedsRepair { .. }) => report.broken += 1,
                Err(e) => {
                    tracing::warn!(code = e.code(), "sweep could not refresh a chain");
                    report.transient_failures += 1;
                }
            }
        }
        // What is still due now is left for the next sweep (backoff, a rate limit, more than `limit`).
        let left = self.store.query_index(Index::Due, DUE_PK, Some(&time_sk(now)), limit).await?;
        let oldest = left.iter().filter_map(|i| i.due.as_ref()?.sk.parse::<i64>().ok()).min();
        crate::metrics::sweep_backlog(left.len(), oldest.map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0));
        Ok(report)
    }
}
