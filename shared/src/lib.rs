//! chainkeeper: keeps OAuth2 and other credentials of data containers alive and safe.
//!
//! A newcomer's map:
//! - [`chain`] — the chain engine, the heart: never two refreshes, never a lost refresh token.
//! - [`api`] — the HTTP routes (one router per Lambda function; `serve` merges them); [`auth`] checks API tokens.
//! - Ports and their adapters: [`store`] (SQLite, in-memory; DynamoDB with `aws`), [`keys`] (local key file;
//!   KMS with `aws`), [`secrets`], [`clock`].
//! - [`config`] and [`provider`] — provider profiles as data; [`oauth`] — the token endpoint.
//! - [`records`] — everything stored and under which key; [`app`] — the services wired together.

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
#[cfg(feature = "aws")]
pub mod aws;
pub mod chain;
pub mod clock;
pub mod config;
pub mod ids;
pub mod keys;
pub mod lambda;
pub mod login;
pub mod metrics_names;
pub mod notify;
pub mod oauth;
pub mod problem;
pub mod provider;
pub mod records;
pub mod recover;
pub mod secrets;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod totp;
