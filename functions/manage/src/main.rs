//! Lambda `manage`: wiring only. The application is built once per cold start; every request goes through the same
//! axum router that `chainkeeper serve` uses.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    chainkeeper::telemetry::init();
    let app = chainkeeper::wiring::from_env().await?;
    lambda_http::run(chainkeeper::api::manage_router(app)).await
}
