//! chainkeeper: keeps OAuth2 and other credentials of data containers alive and safe.
//!
//! A newcomer's map, outside in (docs/ARCHITECTURE.md has the whole picture). Every arrow points inward: a module
//! imports only modules of its own layer or of a layer below it, and the import graph has no cycle
//! (`shared/tests/architecture.rs` checks both on the source).
//!
//! | layer | modules |
//! | --- | --- |
//! | wiring | [`wiring`] (adapters chosen, the application built: embedded, AWS, Lambda environment, `serve`'s schedule), [`telemetry`] |
//! | HTTP | [`api`] — routes from one table, auth middleware, handlers, problem documents |
//! | use cases | [`app`] — organisations, containers, authorization, token hand-out, query proxy, auto-recovery, API tokens, audit, webhooks, sweep |
//! | domain | [`chain`] (the chain engine, the heart), [`auth`] (API-token claims and scopes), [`records`] (every stored item and key), [`provider`] (profiles as data, the token endpoint, the login driver), [`config`], [`totp`] |
//! | ports and their embedded adapters | [`store`] (SQLite, in-memory), [`keys`] (envelope encryption, local key file), [`secrets`], [`clock`], [`handoff`] (the recovery queue) |
//! | AWS adapters | `aws` (feature `aws`: DynamoDB, KMS, Secrets Manager, the SQS recovery queue) |
//! | foundation | [`ids`] (validated names), [`clock`], [`metrics`] (the figures of [`metrics_names`]: EMF lines, Prometheus text) |

pub mod api;
pub mod app;
pub mod auth;
#[cfg(feature = "aws")]
pub mod aws;
pub mod chain;
pub mod clock;
pub mod config;
pub mod handoff;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod metrics_names;
pub mod provider;
pub mod records;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod totp;
pub mod wiring;

/// The property-based fuzz targets (`mod fuzz` in the modules they test; every test name holds `fuzz`) run
/// `PROPTEST_CASES` generated inputs each, 2,000 when it is not set (CI). The long run (README "Fuzzing"):
/// `PROPTEST_CASES=1000000 cargo nextest run -p chainkeeper --release -E 'test(/fuzz/)'`.
#[cfg(test)]
mod fuzz {
    pub(crate) fn config() -> proptest::test_runner::Config {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
        proptest::test_runner::Config { cases, ..proptest::test_runner::Config::default() }
    }
}
