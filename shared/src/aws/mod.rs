//! The AWS adapters (feature `aws`): DynamoDB [`Store`](crate::store::Store), KMS [`Keys`](crate::keys::Keys),
//! Secrets Manager [`Secrets`](crate::secrets::Secrets), the SQS [`RecoveryQueue`](crate::handoff::RecoveryQueue)
//! and [`SweepQueue`](crate::handoff::SweepQueue). Only this module imports `aws_sdk_*`; `wiring` builds the
//! application over [`adapters`].

pub mod dynamo;
pub mod kms;
pub mod secrets;
pub mod sqs;

use std::sync::Arc;

use crate::clock::Clock;
use crate::handoff::{RecoveryQueue, SweepQueue};
use crate::keys::Keys;
use crate::secrets::Secrets;
use crate::store::Store;

/// Environment of the Lambda functions (and of anything else that runs on AWS).
pub struct AwsEnv {
    /// `CHAINKEEPER_TABLE`: the DynamoDB table.
    pub table: String,
    /// `CHAINKEEPER_SIGNING_KEY_SECRET`: the Secrets Manager secret holding the API-token signing key. Only the
    /// HTTP functions have it (and may read it); `refresh` and `recover` check no API tokens.
    pub signing_key_secret: Option<String>,
    /// `CHAINKEEPER_APPS_SECRET_PREFIX` (default `chainkeeper/apps/`): app registrations are `<prefix><provider>`.
    pub apps_secret_prefix: String,
    /// `CHAINKEEPER_STAGE` (default `prod`): tags the organisation keys, so stages never share keys.
    pub stage: String,
    /// `CHAINKEEPER_KMS_ALIAS_PREFIX` (default `alias/chainkeeper/`): organisation keys are `<prefix><org>`.
    pub kms_alias_prefix: String,
    /// `CHAINKEEPER_KMS_DELETION_WINDOW_DAYS` (7-30, default 30, the template's `KmsKeyDeletionWindowDays`): how
    /// long a deleted organisation's key waits before KMS destroys it. The manage role may not ask for less.
    pub kms_deletion_window_days: i32,
    /// `CHAINKEEPER_SIGNING_KEY_ROTATION_WINDOW_S` (default 7 days): after a rotation of the signing-key secret,
    /// how long tokens signed with the previous version (`AWSPREVIOUS`) are still accepted.
    pub signing_key_rotation_window_ms: i64,
    /// `CHAINKEEPER_RECOVERY_QUEUE_URL`: the SQS queue that triggers the `recover` function. Only the functions
    /// that find broken chains (`query`, `refresh`, `manage`) have it; without it recovery runs in-process.
    pub recovery_queue_url: Option<String>,
    /// `CHAINKEEPER_SWEEP_QUEUE_URL`: the SQS queue of sweep batches that triggers `refresh` workers. Only the
    /// `refresh` function has it; without it the sweep refreshes in-process.
    pub sweep_queue_url: Option<String>,
}

impl AwsEnv {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |k: &str| std::env::var(k).map_err(|_| anyhow::anyhow!("{k} is not set"));
        Ok(Self {
            table: var("CHAINKEEPER_TABLE")?,
            signing_key_secret: std::env::var("CHAINKEEPER_SIGNING_KEY_SECRET").ok().filter(|v| !v.is_empty()),
            apps_secret_prefix: std::env::var("CHAINKEEPER_APPS_SECRET_PREFIX")
                .unwrap_or_else(|_| "chainkeeper/apps/".into()),
            stage: std::env::var("CHAINKEEPER_STAGE").unwrap_or_else(|_| "prod".into()),
            kms_alias_prefix: std::env::var("CHAINKEEPER_KMS_ALIAS_PREFIX")
                .unwrap_or_else(|_| "alias/chainkeeper/".into()),
            kms_deletion_window_days: match std::env::var("CHAINKEEPER_KMS_DELETION_WINDOW_DAYS") {
                Err(_) => 30,
                Ok(v) => v.trim().parse().ok().filter(|d| (7..=30).contains(d)).ok_or_else(|| {
                    anyhow::anyhow!("CHAINKEEPER_KMS_DELETION_WINDOW_DAYS must be 7 to 30, not {v:?}")
                })?,
            },
            recovery_queue_url: std::env::var("CHAINKEEPER_RECOVERY_QUEUE_URL").ok().filter(|v| !v.trim().is_empty()),
            sweep_queue_url: std::env::var("CHAINKEEPER_SWEEP_QUEUE_URL").ok().filter(|v| !v.trim().is_empty()),
            signing_key_rotation_window_ms: match std::env::var("CHAINKEEPER_SIGNING_KEY_ROTATION_WINDOW_S") {
                Err(_) => secrets::DEFAULT_ROTATION_WINDOW_MS,
                Ok(v) => v.trim().parse::<i64>().ok().filter(|s| *s >= 0).map(|s| s.saturating_mul(1000)).ok_or_else(
                    || {
                        anyhow::anyhow!(
                            "CHAINKEEPER_SIGNING_KEY_ROTATION_WINDOW_S must be a number of seconds, not {v:?}"
                        )
                    },
                )?,
            },
        })
    }
}

/// The SDK configuration for a local AWS stand-in (moto): its endpoint, a region, static test credentials.
pub async fn local_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("eu-west-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "local"))
        .load()
        .await
}

/// The AWS adapters, over one SDK configuration loaded once (region, credentials, `AWS_ENDPOINT_URL`).
pub struct Adapters {
    pub store: Arc<dyn Store>,
    pub keys: Arc<dyn Keys>,
    pub secrets: Arc<dyn Secrets>,
    /// Where broken chains are handed to the `recover` function, when `CHAINKEEPER_RECOVERY_QUEUE_URL` is set.
    pub recovery_queue: Option<Arc<dyn RecoveryQueue>>,
    /// Where the sweep hands its batches to workers, when `CHAINKEEPER_SWEEP_QUEUE_URL` is set.
    pub sweep_queue: Option<Arc<dyn SweepQueue>>,
}

/// The AWS adapters, over one SDK configuration loaded once (region, credentials, `AWS_ENDPOINT_URL`).
pub async fn adapters(env: &AwsEnv, clock: Arc<dyn Clock>) -> Adapters {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store =
        Arc::new(dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), env.table.clone(), clock.clone()));
    let keys = Arc::new(
        kms::KmsKeys::new(aws_sdk_kms::Client::new(&sdk), env.stage.clone(), env.kms_alias_prefix.clone())
            .with_deletion_window_days(env.kms_deletion_window_days),
    );
    let secrets = Arc::new(
        secrets::SecretsManager::new(
            aws_sdk_secretsmanager::Client::new(&sdk),
            env.apps_secret_prefix.clone(),
            env.signing_key_secret.clone(),
            clock,
        )
        .with_rotation_window_ms(env.signing_key_rotation_window_ms),
    );
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let recovery_queue = env
        .recovery_queue_url
        .clone()
        .map(|url| Arc::new(sqs::SqsQueue::new(sqs.clone(), url)) as Arc<dyn RecoveryQueue>);
    let sweep_queue =
        env.sweep_queue_url.clone().map(|url| Arc::new(sqs::SqsQueue::new(sqs, url)) as Arc<dyn SweepQueue>);
    Adapters { store, keys, secrets, recovery_queue, sweep_queue }
}
