//! The queues on SQS: the recovery queue (`handoff::RecoveryQueue`: `query`, `refresh` and `manage` send a
//! request per broken chain; it triggers the `recover` function) and the sweep queue (`handoff::SweepQueue`: the
//! `refresh` schedule sends the chains due in batches; it triggers `refresh` workers). Both with SQS event
//! sources and partial batch responses; a message that keeps failing ends in the queue's dead-letter queue
//! (`infra/template.yaml`, `RecoveryQueue`, `SweepQueue`).
//!
//! SQS rather than an asynchronous Lambda invoke: it keeps a failed message visible (redrive to a dead-letter
//! queue with an alarm on its depth) and runs for real on moto, where the tests prove the whole path.

use crate::handoff::{RecoveryQueue, RecoveryRequest, SweepBatch, SweepQueue};

/// One SQS queue; the message is the JSON of what is sent.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        Self { client, url }
    }

    async fn send_json(&self, message: &impl serde::Serialize) -> anyhow::Result<()> {
        let body = serde_json::to_string(message)?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("SQS SendMessage: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl RecoveryQueue for SqsQueue {
    async fn send(&self, request: &RecoveryRequest) -> anyhow::Result<()> {
        self.send_json(request).await
    }
}

#[async_trait::async_trait]
impl SweepQueue for SqsQueue {
    async fn send(&self, batch: &SweepBatch) -> anyhow::Result<()> {
        self.send_json(batch).await
    }
}
