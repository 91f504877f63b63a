//! chainkeeper's end-to-end tests: one binary, real peers started on free loopback ports.
//! Needs `cargo build -p chainkeeper-cli` (the `serve` process) and `npm ci --prefix tests/peers/oidc`.

mod api_errors;
mod auto_recovery;
#[cfg(feature = "aws")]
mod aws;
#[cfg(feature = "aws")]
mod aws_iam;
#[cfg(feature = "aws")]
mod aws_recovery_queue;
#[cfg(feature = "aws")]
mod aws_sweep_queue;
mod bi;
mod cli;
mod console;
mod console_browser;
mod console_pages;
mod credentials;
mod exact_engine;
mod lambda_functions;
mod limits;
mod metrics;
mod oidc_flow;
mod org_backup;
mod processes;
mod provider_faults;
mod query_proxy;
mod races;
mod routes_cli;
mod scale;
mod scopes;
mod security;
mod signing_keys;
mod single_instance;
mod store_outages;
mod webhooks;
