//! What the Lambda functions share: building the services from the environment, once per cold start.
//!
//! With the `aws` feature the adapters are DynamoDB, KMS and Secrets Manager (see the AWS issue; until they
//! land, the functions run on the embedded adapters). Without it they use embedded storage under
//! `CHAINKEEPER_DATA_DIR` (default `/tmp/chainkeeper`), which is how a function is invoked locally.

use std::path::PathBuf;
use std::sync::Arc;

use crate::app::{DataDir, Services, embedded_system};
use crate::config::Config;

pub fn services_from_env() -> anyhow::Result<Arc<Services>> {
    let config = Config::load(std::env::var_os("CHAINKEEPER_CONFIG").map(PathBuf::from).as_deref())?;
    let dir = std::env::var_os("CHAINKEEPER_DATA_DIR").map_or_else(|| PathBuf::from("/tmp/chainkeeper"), PathBuf::from);
    embedded_system(&DataDir::open(&dir)?, config)
}
