//! Lambda `recover`: on its EventBridge schedule (and when a chain breaks) it looks at the chains that need
//! repair. Auto-recovery itself (signing in with stored credentials) is not built yet: this reports them.

use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    chainkeeper::telemetry::init();
    let services = chainkeeper::lambda::services_from_env()?;
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<serde_json::Value>| {
        let services = services.clone();
        async move {
            let report = chainkeeper::sweep::needs_repair_report(&services).await?;
            Ok::<_, lambda_runtime::Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}
