//! Lambda `recover`: auto-recovery, started two ways (`wiring::recover_event` tells them apart): batches from the
//! recovery queue (SQS: one run per broken chain that `query`, `refresh` or `manage` handed over, failed items
//! reported back), and its EventBridge schedule (every broken chain with recovery credentials, the expiry
//! warnings, the purge of expired items).

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chainkeeper::telemetry::init();
    let app = chainkeeper::wiring::from_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let app = app.clone();
        async move { Ok::<_, lambda_runtime::Error>(chainkeeper::wiring::recover_event(&app, event.payload).await?) }
    }))
    .await
}
