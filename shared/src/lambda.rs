//! What the Lambda functions share: building the services from the environment, once per cold start.
//!
//! Built with the `aws` feature and given `CHAINKEEPER_TABLE`, the adapters are DynamoDB, KMS and Secrets
//! Manager (see [`crate::aws`]). Otherwise they use embedded storage under `CHAINKEEPER_DATA_DIR` (default
//! `/tmp/chainkeeper`), which is how a function is tried locally without AWS.

use std::path::PathBuf;
use std::sync::Arc;

use crate::app::{DataDir, Services, embedded_system};
use crate::config::Config;

pub async fn services_from_env() -> anyhow::Result<Arc<Services>> {
    let mut config = Config::load(std::env::var_os("CHAINKEEPER_CONFIG").map(PathBuf::from).as_deref())?;
    // The SAM template passes the public address as a parameter; a config file may still set it.
    if let Some(url) = std::env::var("CHAINKEEPER_PUBLIC_URL").ok().filter(|u| !u.trim().is_empty()) {
        config.server.public_url.get_or_insert(url.trim().trim_end_matches('/').to_string());
    }
    if std::env::var_os("CHAINKEEPER_TABLE").is_some() {
        #[cfg(feature = "aws")]
        return crate::aws::services(crate::aws::AwsEnv::from_env()?, config).await;
        #[cfg(not(feature = "aws"))]
        anyhow::bail!(
            "CHAINKEEPER_TABLE is set but this binary was built without the `aws` feature: \
             build it with `cargo lambda build --release --features aws`"
        );
    }
    let dir = std::env::var_os("CHAINKEEPER_DATA_DIR").map_or_else(|| PathBuf::from("/tmp/chainkeeper"), PathBuf::from);
    embedded_system(&DataDir::open(&dir)?, config)
}
