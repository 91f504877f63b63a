//! Lambda `refresh`: the keep-alive and ahead-of-expiry refreshes, started two ways (`wiring::refresh_event` tells
//! them apart): its EventBridge schedule reads the chains due from every shard of the due index and hands them
//! in batches to the sweep queue; SQS batches from that queue are refreshed (failed messages reported back). An
//! event delivered twice or late is harmless: the engine refreshes only what is due. Chains found broken are
//! handed to the `recover` function (the recovery queue) before it returns.

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chainkeeper::telemetry::init();
    let app = chainkeeper::wiring::from_env().await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let app = app.clone();
        async move { Ok::<_, lambda_runtime::Error>(chainkeeper::wiring::refresh_event(&app, event.payload).await?) }
    }))
    .await
}
