//! The recovery queue on SQS (`handoff::RecoveryQueue`): `query`, `refresh` and `manage` send a request per
//! broken chain; the queue triggers the `recover` function (SQS event source, partial batch responses), and a
//! request that keeps failing ends in the dead-letter queue (`infra/template.yaml`, `RecoveryQueue`).
//!
//! SQS rather than an asynchronous Lambda invoke: it keeps a failed request visible (redrive to a dead-letter
//! queue with an alarm on its depth) and runs for real on moto, where the tests prove the whole path.

use crate::handoff::{RecoveryQueue, RecoveryRequest};

pub struct SqsRecoveryQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsRecoveryQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        Self { client, url }
    }
}

#[async_trait::async_trait]
impl RecoveryQueue for SqsRecoveryQueue {
    async fn send(&self, request: &RecoveryRequest) -> anyhow::Result<()> {
        let body = serde_json::to_string(request)?;
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
