//! Structured logs with `tracing`: JSON in Lambda (or when `CHAINKEEPER_LOG_FORMAT=json`), human text otherwise.
//! Nothing that logs here is given a token, password or secret: they live in `SecretString`s whose `Debug`
//! prints `[REDACTED]`, and a test scans the whole suite's logs for planted secrets.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("CHAINKEEPER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AWS_LAMBDA_FUNCTION_NAME").is_ok()
        || std::env::var("CHAINKEEPER_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}

/// `serve --metrics-listen`: `GET /metrics` with every figure of this process as Prometheus text. It is served on
/// its own address (loopback or an internal network for the scraper), never on the API's, and shows counts per
/// outcome and provider profile only: no organisation, container or token.
pub fn metrics_router() -> axum::Router {
    use axum::http::header::CONTENT_TYPE;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::prometheus_text())
        }),
    )
}
