//! Lambda `recover`: on its EventBridge schedule, auto-recovery of every broken chain that has recovery
//! credentials, the expiry warnings, and the purge of expired items.

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chainkeeper::telemetry::init();
    let services = chainkeeper::lambda::services_from_env().await?;
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<serde_json::Value>| {
        let services = services.clone();
        async move {
            let report = chainkeeper::recover::run_once(&services).await?;
            Ok::<_, lambda_runtime::Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}
