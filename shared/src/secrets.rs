//! The `Secrets` port: provider app registrations and the API-token signing key.
//! Embedded: the config file's `[apps.*]` and a 0600 key file in the data directory. AWS: Secrets Manager.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::provider::AppRegistration;

#[async_trait]
pub trait Secrets: Send + Sync + 'static {
    /// The app registration for a provider profile, if one is configured.
    async fn app(&self, provider: &str) -> anyhow::Result<Option<AppRegistration>>;
    /// The key that signs and verifies API tokens (HS256). MUST be the same in every process of a deployment.
    async fn signing_key(&self) -> anyhow::Result<Arc<Zeroizing<Vec<u8>>>>;
}

/// Secrets from the config file and a local key.
pub struct LocalSecrets {
    apps: BTreeMap<String, AppRegistration>,
    signing_key: Arc<Zeroizing<Vec<u8>>>,
}

impl LocalSecrets {
    pub fn new(apps: BTreeMap<String, AppRegistration>, signing_key: [u8; 32]) -> Self {
        Self { apps, signing_key: Arc::new(Zeroizing::new(signing_key.to_vec())) }
    }
}

#[async_trait]
impl Secrets for LocalSecrets {
    async fn app(&self, provider: &str) -> anyhow::Result<Option<AppRegistration>> {
        Ok(self.apps.get(provider).cloned())
    }
    async fn signing_key(&self) -> anyhow::Result<Arc<Zeroizing<Vec<u8>>>> {
        Ok(self.signing_key.clone())
    }
}
