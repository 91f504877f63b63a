//! Lambda `recover`: on its EventBridge schedule, auto-recovery of every broken chain that has recovery
//! credentials, the expiry warnings, and the purge of expired items.

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chainkeeper::telemetry::init();
    let app = chainkeeper::wiring::from_env().await?;
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<serde_json::Value>| {
        let app = app.clone();
        async move {
            let report = app.recovery.run_once().await?;
            Ok::<_, lambda_runtime::Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}
