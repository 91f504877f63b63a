//! Secrets Manager `Secrets`: app registrations (`<prefix><provider>`, JSON `{client_id, client_secret,
//! redirect_uri}`) and the API-token signing key, cached for a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use zeroize::Zeroizing;

use crate::clock::{Clock, Millis};
use crate::provider::AppRegistration;
use crate::secrets::Secrets;

const TTL_MS: Millis = 60_000;

/// The signing key as read, and when.
type CachedKey = Option<(Millis, Arc<Zeroizing<Vec<u8>>>)>;

pub struct SecretsManager {
    client: Client,
    apps_prefix: String,
    signing_key_secret: Option<String>,
    clock: Arc<dyn Clock>,
    apps: Mutex<HashMap<String, (Millis, Option<AppRegistration>)>>,
    signing: Mutex<CachedKey>,
}

impl SecretsManager {
    /// `signing_key_secret`: `None` in functions that check no API tokens (their role may not read it).
    pub fn new(client: Client, apps_prefix: String, signing_key_secret: Option<String>, clock: Arc<dyn Clock>) -> Self {
        Self { client, apps_prefix, signing_key_secret, clock, apps: Mutex::default(), signing: Mutex::default() }
    }

    async fn read(&self, id: &str) -> anyhow::Result<Option<String>> {
        match self.client.get_secret_value().secret_id(id).send().await {
            Ok(out) => Ok(out.secret_string),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_resource_not_found_exception() {
                    Ok(None)
                } else {
                    Err(anyhow::anyhow!("secrets manager: {e}"))
                }
            }
        }
    }
}

#[async_trait]
impl Secrets for SecretsManager {
    async fn app(&self, provider: &str) -> anyhow::Result<Option<AppRegistration>> {
        let now = self.clock.now_ms();
        if let Some((at, app)) = self.apps.lock().unwrap().get(provider)
            && now - at < TTL_MS
        {
            return Ok(app.clone());
        }
        let app = match self.read(&format!("{}{provider}", self.apps_prefix)).await? {
            Some(text) => Some(serde_json::from_str::<AppRegistration>(&text).map_err(|_| {
                anyhow::anyhow!("app secret for {provider} is not JSON {{client_id, client_secret, redirect_uri}}")
            })?),
            None => None,
        };
        self.apps.lock().unwrap().insert(provider.to_string(), (now, app.clone()));
        Ok(app)
    }

    async fn signing_key(&self) -> anyhow::Result<Arc<Zeroizing<Vec<u8>>>> {
        let now = self.clock.now_ms();
        if let Some((at, key)) = self.signing.lock().unwrap().as_ref()
            && now - at < TTL_MS
        {
            return Ok(key.clone());
        }
        let id = self
            .signing_key_secret
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("CHAINKEEPER_SIGNING_KEY_SECRET is not set for this function"))?;
        let text = self.read(id).await?.ok_or_else(|| anyhow::anyhow!("signing key secret {id} not found"))?;
        anyhow::ensure!(text.len() >= 32, "the signing key secret must hold at least 32 characters");
        let key = Arc::new(Zeroizing::new(text.into_bytes()));
        *self.signing.lock().unwrap() = Some((now, key.clone()));
        Ok(key)
    }
}
