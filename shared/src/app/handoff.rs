//! How a broken chain gets its auto-recovery run started, chosen by the wiring:
//! - in-process (`serve`, the CLI, tests): a background task runs `Recovery::recover_container` at once;
//! - a queue (the Lambda functions in AWS, `handoff::RecoveryQueue`, SQS): the request is sent, and the send is
//!   finished before the function's handler returns ([`HandOff::settle`], awaited by the HTTP layer and by the
//!   scheduled functions), because a Lambda sandbox may be frozen as soon as it returns. The `recover` function
//!   runs the requests it receives ([`HandOff::run_batch`]). A failed send is logged and counted
//!   (`RecoveryHandOffFailures`), never the caller's failure: the `recover` schedule still finds the chain.
//!
//! Duplicates are accepted, not deduplicated: a recovery run is idempotent (see `handoff`).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};

use crate::handoff::{RecoveryQueue, RecoveryRequest};
use crate::ids::ContainerRef;

use super::background::Background;
use super::recovery::{Outcome, Recovery, RecoveryError};

/// At most this long for one send (the SDK retries within it); the handler's answer waits for it.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HandOff {
    queue: Option<Arc<dyn RecoveryQueue>>,
    /// Set once the application is built (a weak link: recovery holds the engine that holds this).
    recovery: OnceLock<Weak<Recovery>>,
    /// Where the sends run: tracked, and settled before a function answers, wherever there is a queue.
    background: Arc<Background>,
}

/// What `POST …/recover` did.
pub enum Requested {
    /// Run here and now (no queue): its outcome.
    Ran(Outcome),
    /// Sent to the queue: the `recover` function runs it.
    Queued,
}

impl HandOff {
    pub fn new(queue: Option<Arc<dyn RecoveryQueue>>, background: Arc<Background>) -> Self {
        Self { queue, recovery: OnceLock::new(), background }
    }

    pub(super) fn recover_with(&self, recovery: Weak<Recovery>) {
        let _ = self.recovery.set(recovery);
    }

    fn recovery(&self) -> Option<Arc<Recovery>> {
        self.recovery.get().and_then(Weak::upgrade)
    }

    /// A chain broke: start its recovery (returns at once; see [`HandOff::settle`]).
    pub fn chain_broke(&self, c: &ContainerRef, reason: String) {
        match &self.queue {
            None => {
                let Some(recovery) = self.recovery() else { return };
                let c = c.clone();
                self.background.spawn(async move {
                    if let Err(e) = recovery.recover_container(&c, &reason).await {
                        tracing::warn!(error = %e, container = %c, "auto-recovery failed to run");
                    }
                });
            }
            Some(queue) => {
                let (queue, request) = (queue.clone(), RecoveryRequest::new(c, reason, None));
                self.background.spawn(async move {
                    let c = request.container_ref();
                    let failed = match tokio::time::timeout(SEND_TIMEOUT, queue.send(&request)).await {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {} s", SEND_TIMEOUT.as_secs()),
                    };
                    crate::metrics::recovery_handoff_failed();
                    tracing::warn!(
                        error = %failed,
                        container = %c.map(|c| c.to_string()).unwrap_or_default(),
                        "could not hand the broken chain to the recover function; its schedule will find it"
                    );
                });
            }
        }
    }

    /// Waits until every hand-off started so far has been sent (or has failed, bounded by the send timeout).
    /// Awaited before a Lambda function returns its answer; returns at once when nothing is under way.
    pub async fn settle(&self) {
        self.background.settle().await;
    }

    /// A person asks for a recovery (`POST …/recover`). Without a queue it runs here and now (`serve`: no time
    /// limit but the request timeout). With one (AWS) it is checked (the container exists, its chain is broken,
    /// credentials are stored) and queued: the `manage` function has 15 s and API Gateway 29 s, while a sign-in
    /// is several round trips of up to 15 s each, so it runs in the `recover` function (240 s) instead.
    pub async fn request(&self, actor: &str, c: &ContainerRef) -> Result<Requested, RecoveryError> {
        let recovery = self.recovery().ok_or_else(|| anyhow::anyhow!("the application is shutting down"))?;
        let Some(queue) = &self.queue else { return Ok(Requested::Ran(recovery.run_now(actor, c).await?)) };
        recovery.check_runnable(c).await?;
        let request = RecoveryRequest::new(c, format!("requested by {actor}"), Some(actor));
        match tokio::time::timeout(SEND_TIMEOUT, queue.send(&request)).await {
            Ok(Ok(())) => Ok(Requested::Queued),
            Ok(Err(e)) => Err(RecoveryError::QueueUnavailable(e.to_string())),
            Err(_) => Err(RecoveryError::QueueUnavailable("no answer".into())),
        }
    }

    /// The `recover` function's SQS batch: one run per request. A request that names no existing container, or
    /// whose run could not be carried out (store, keys), is reported as a failed item: SQS delivers it again
    /// and, after the redrive policy's receive count, moves it to the dead-letter queue. A run that ended with
    /// any outcome (recovered, rejected, backing off…) is done: its outcome is on the chain and in the audit.
    pub async fn run_batch(&self, event: SqsEvent) -> SqsBatchResponse {
        let Some(recovery) = self.recovery() else { return SqsBatchResponse::default() };
        each_message(event, |id, body| {
            let recovery = recovery.clone();
            async move {
                match body.as_deref().map(serde_json::from_str::<RecoveryRequest>) {
                    Some(Ok(request)) => match self.run_one(&recovery, &request).await {
                        Ok(outcome) => {
                            tracing::info!(message = %id, outcome = ?outcome, "recovery request run");
                            true
                        }
                        Err(e) => {
                            tracing::warn!(message = %id, error = %e, "recovery request failed");
                            false
                        }
                    },
                    _ => {
                        tracing::warn!(message = %id, "not a recovery request");
                        false
                    }
                }
            }
        })
        .await
    }

    async fn run_one(&self, recovery: &Recovery, r: &RecoveryRequest) -> Result<Outcome, RecoveryError> {
        let c = r.container_ref().ok_or_else(|| anyhow::anyhow!("the request names no valid container"))?;
        match &r.requested_by {
            Some(actor) => match recovery.run_now(actor, &c).await {
                // Healthy again, or not configured any more: nothing left to do for this request.
                Err(RecoveryError::ChainHealthy(_)) => Ok(Outcome::NotNeeded),
                Err(RecoveryError::NotConfigured(_)) => Ok(Outcome::NotConfigured),
                Err(RecoveryError::RateLimited(_)) => Ok(Outcome::RateLimited),
                other => other,
            },
            None => {
                recovery.check_exists(&c).await?;
                recovery.recover_container(&c, &r.reason).await
            }
        }
    }
}

/// An SQS event source's batch, one message at a time (the `recover` function's recovery requests, the
/// `refresh` workers' sweep batches): `run(message id, body)` says whether the message is done; those that are
/// not go back as `batchItemFailures` (the event source has `ReportBatchItemFailures`), so SQS delivers them
/// again and, after the redrive policy's receive count, moves them to the dead-letter queue.
pub async fn each_message<F, Fut>(event: SqsEvent, run: F) -> SqsBatchResponse
where
    F: Fn(String, Option<String>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut response = SqsBatchResponse::default();
    for message in event.records {
        let id = message.message_id.clone().unwrap_or_default();
        if !run(id.clone(), message.body).await {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::MemoryQueue;
    use crate::ids::{Alias, DbName, OrgId};

    /// A queue that takes its time, as SQS over the network does.
    struct SlowQueue(Arc<MemoryQueue>, Duration);

    #[async_trait::async_trait]
    impl RecoveryQueue for SlowQueue {
        async fn send(&self, r: &RecoveryRequest) -> anyhow::Result<()> {
            tokio::time::sleep(self.1).await;
            self.0.send(r).await
        }
    }

    fn container() -> ContainerRef {
        ContainerRef {
            org: OrgId::parse("acme").unwrap(),
            db: DbName::parse("finance").unwrap(),
            alias: Alias::parse("eol").unwrap(),
        }
    }

    #[tokio::test]
    async fn a_break_returns_at_once_and_settle_waits_until_the_queue_holds_the_request() {
        let memory = Arc::new(MemoryQueue::default());
        let handoff = HandOff::new(
            Some(Arc::new(SlowQueue(memory.clone(), Duration::from_millis(200)))),
            Arc::new(Background::tracked()),
        );
        let started = std::time::Instant::now();
        handoff.chain_broke(&container(), "the chain broke (refresh_token_superseded)".into());
        assert!(started.elapsed() < Duration::from_millis(100), "the engine's event returns at once");
        assert!(memory.sent.lock().unwrap().is_empty(), "not sent yet");
        handoff.settle().await;
        let sent = memory.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "settled: the queue holds it");
        assert_eq!(sent[0].container_ref(), Some(container()));
        assert_eq!(sent[0].requested_by, None);
        let again = std::time::Instant::now();
        handoff.settle().await;
        assert!(again.elapsed() < Duration::from_millis(50), "nothing under way: settle returns at once");
    }

    #[tokio::test]
    async fn a_queue_that_fails_or_hangs_is_bounded_and_never_the_callers_error() {
        let failing = Arc::new(MemoryQueue::default());
        failing.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let handoff = HandOff::new(Some(failing.clone()), Arc::new(Background::tracked()));
        handoff.chain_broke(&container(), "the chain broke".into());
        handoff.settle().await;
        assert!(failing.sent.lock().unwrap().is_empty());
        // A queue that never answers: settle gives up after the send timeout (5 s, real time).
        let hanging = Arc::new(MemoryQueue::default());
        let handoff = HandOff::new(
            Some(Arc::new(SlowQueue(hanging.clone(), Duration::from_secs(3600)))),
            Arc::new(Background::tracked()),
        );
        handoff.chain_broke(&container(), "the chain broke".into());
        let settled = tokio::time::timeout(SEND_TIMEOUT + Duration::from_secs(1), handoff.settle()).await;
        assert!(settled.is_ok(), "settle is bounded by the send timeout");
        assert!(hanging.sent.lock().unwrap().is_empty());
    }
}
