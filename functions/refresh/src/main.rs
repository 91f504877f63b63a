//! Lambda `refresh`: one sweep per EventBridge event (keep-alive and ahead-of-expiry refreshes). An event
//! delivered twice or late is harmless: the engine refreshes only what is due. Chains the sweep finds broken are
//! handed to the `recover` function (the recovery queue) before it returns.

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chainkeeper::telemetry::init();
    let app = chainkeeper::wiring::from_env().await?;
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<serde_json::Value>| {
        let app = app.clone();
        async move { Ok::<_, lambda_runtime::Error>(chainkeeper::wiring::refresh_event(&app).await?) }
    }))
    .await
}
