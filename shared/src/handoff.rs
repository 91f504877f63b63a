//! The `RecoveryQueue` port: where a container whose chain broke is handed to auto-recovery when the process that
//! found it must not run the recovery itself. A Lambda function may be frozen the moment its handler returns, so a
//! background task there is no way to start a recovery: the `query`, `refresh` and `manage` functions send a
//! [`RecoveryRequest`] to a queue (AWS: SQS, `aws::sqs`) that triggers the `recover` function instead. `serve`
//! has no queue: it runs the recovery in-process (`app::handoff`).
//!
//! The same way, the `refresh` function's schedule hands the chains due to worker invocations of itself: a
//! [`SweepBatch`] per message on the sweep queue ([`SweepQueue`], SQS), each refreshed by one invocation (`app::sweep`).
//!
//! Delivery is at least once: a request may arrive twice (SQS standard queues, a retried send). That is harmless
//! on purpose, not deduplicated: a recovery run is idempotent (a healthy chain is never recovered again, a run
//! already under way makes the second one `Busy`, a stopped one stays stopped, at most three attempts an hour).

use serde::{Deserialize, Serialize};

use crate::ids::ContainerRef;

/// One container to recover: the message body (JSON) on the queue. No secret: names and a reason only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRequest {
    pub org: String,
    pub database: String,
    pub container: String,
    /// Why (`the chain broke: refresh_token_superseded`, `requested by ops`): it goes to the audit entry.
    pub reason: String,
    /// Set when a person asked (`POST …/recover`): that run does not wait for the backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl RecoveryRequest {
    pub fn new(c: &ContainerRef, reason: impl Into<String>, requested_by: Option<&str>) -> Self {
        Self {
            org: c.org.to_string(),
            database: c.db.to_string(),
            container: c.alias.to_string(),
            reason: reason.into(),
            requested_by: requested_by.map(str::to_string),
        }
    }

    /// The container it names, if the names are valid.
    pub fn container_ref(&self) -> Option<ContainerRef> {
        ContainerRef::parse(&self.org, &self.database, &self.container)
    }
}

/// A durable queue of recovery requests (SQS in AWS).
#[async_trait::async_trait]
pub trait RecoveryQueue: Send + Sync + 'static {
    /// Sends one request; `Ok` once the queue holds it.
    async fn send(&self, request: &RecoveryRequest) -> anyhow::Result<()>;
}

/// The chains one sweep worker refreshes: the message body (JSON) on the sweep queue. Names only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepBatch {
    pub chains: Vec<ChainName>,
}

/// One chain of a [`SweepBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainName {
    pub org: String,
    pub database: String,
    pub container: String,
}

impl ChainName {
    pub fn of(c: &ContainerRef) -> Self {
        Self { org: c.org.to_string(), database: c.db.to_string(), container: c.alias.to_string() }
    }

    /// The container it names, if the names are valid.
    pub fn container_ref(&self) -> Option<ContainerRef> {
        ContainerRef::parse(&self.org, &self.database, &self.container)
    }
}

/// A durable queue of sweep batches (SQS in AWS) that triggers the sweep's workers.
#[async_trait::async_trait]
pub trait SweepQueue: Send + Sync + 'static {
    /// Sends one batch; `Ok` once the queue holds it.
    async fn send(&self, batch: &SweepBatch) -> anyhow::Result<()>;
}

/// A queue in memory (unit tests, tools): every message sent, in order.
pub struct MemoryQueue<T = RecoveryRequest> {
    pub sent: std::sync::Mutex<Vec<T>>,
    /// When set, every send fails (tests of a queue outage).
    pub failing: std::sync::atomic::AtomicBool,
}

impl<T> Default for MemoryQueue<T> {
    fn default() -> Self {
        Self { sent: std::sync::Mutex::new(Vec::new()), failing: Default::default() }
    }
}

impl<T: Clone> MemoryQueue<T> {
    fn push(&self, message: &T) -> anyhow::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("the queue is unavailable");
        }
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).push(message.clone());
        Ok(())
    }
}

#[async_trait::async_trait]
impl RecoveryQueue for MemoryQueue<RecoveryRequest> {
    async fn send(&self, request: &RecoveryRequest) -> anyhow::Result<()> {
        self.push(request)
    }
}

#[async_trait::async_trait]
impl SweepQueue for MemoryQueue<SweepBatch> {
    async fn send(&self, batch: &SweepBatch) -> anyhow::Result<()> {
        self.push(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_names_its_container() {
        let c = ContainerRef::parse("acme", "finance", "eol").unwrap();
        let r = RecoveryRequest::new(&c, "the chain broke", None);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"org":"acme","database":"finance","container":"eol","reason":"the chain broke"}"#);
        let back: RecoveryRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.container_ref(), Some(c));
        let bad = RecoveryRequest { org: "../x".into(), ..back };
        assert_eq!(bad.container_ref(), None, "invalid names name no container");
        assert!(
            serde_json::from_str::<RecoveryRequest>(r#"{"org":"a","database":"b","container":"c","reason":"r","x":1}"#)
                .is_err()
        );
    }
}
