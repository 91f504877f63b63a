//! Lambda `refresh`: one sweep per EventBridge event (keep-alive and ahead-of-expiry refreshes). An event
//! delivered twice or late is harmless: the engine refreshes only what is due.

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chainkeeper::telemetry::init();
    let services = chainkeeper::lambda::services_from_env().await?;
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<serde_json::Value>| {
        let services = services.clone();
        async move {
            let report = chainkeeper::sweep::run_once(&services, 10_000).await?;
            Ok::<_, lambda_runtime::Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}
