//! Secrets Manager `Secrets`: app registrations (`<prefix><provider>`, JSON `{client_id, client_secret,
//! redirect_uri}`) and the API-token signing keys, cached for a minute.
//!
//! Signing-key rotation uses the secret's own version stages: `AWSCURRENT` signs, and `AWSPREVIOUS` (the version
//! that `PutSecretValue` moved aside) is still accepted until the rotation window (`CHAINKEEPER_SIGNING_KEY_
//! ROTATION_WINDOW_S`, default 7 days) has passed since the current version was created. A second rotation moves
//! the first key out of both stages: its tokens are refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use zeroize::Zeroizing;

use crate::clock::{Clock, Millis};
use crate::provider::AppRegistration;
use crate::secrets::{PreviousKey, Secrets, SigningKeys};

const TTL_MS: Millis = 60_000;

/// The signing keys as read, and when.
type CachedKeys = Option<(Millis, Arc<SigningKeys>)>;

/// Default rotation window: a week.
pub const DEFAULT_ROTATION_WINDOW_MS: Millis = 7 * 86_400_000;

pub struct SecretsManager {
    client: Client,
    apps_prefix: String,
    signing_key_secret: Option<String>,
    clock: Arc<dyn Clock>,
    apps: Mutex<HashMap<String, (Millis, Option<AppRegistration>)>>,
    signing: Mutex<CachedKeys>,
    rotation_window_ms: Millis,
}

impl SecretsManager {
    /// `signing_key_secret`: `None` in functions that check no API tokens (their role may not read it).
    pub fn new(client: Client, apps_prefix: String, signing_key_secret: Option<String>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            apps_prefix,
            signing_key_secret,
            clock,
            apps: Mutex::default(),
            signing: Mutex::default(),
            rotation_window_ms: DEFAULT_ROTATION_WINDOW_MS,
        }
    }

    /// How long the previous signing key is accepted after a rotation.
    pub fn with_rotation_window_ms(mut self, window_ms: Millis) -> Self {
        self.rotation_window_ms = window_ms.max(0);
        self
    }

    async fn read(&self, id: &str) -> anyhow::Result<Option<String>> {
        Ok(self.read_stage(id, None).await?.map(|(text, _)| text))
    }

    /// One version of a secret (`stage`, or `AWSCURRENT`): its text and when the version was created.
    async fn read_stage(&self, id: &str, stage: Option<&str>) -> anyhow::Result<Option<(String, Option<Millis>)>> {
        match self.client.get_secret_value().secret_id(id).set_version_stage(stage.map(str::to_string)).send().await {
            Ok(out) => {
                let created = out.created_date.and_then(|d| d.to_millis().ok());
                Ok(out.secret_string.map(|s| (s, created)))
            }
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

    async fn signing_keys(&self) -> anyhow::Result<Arc<SigningKeys>> {
        let now = self.clock.now_ms();
        if let Some((at, keys)) = self.signing.lock().unwrap().as_ref()
            && now - at < TTL_MS
        {
            return Ok(keys.clone());
        }
        let id = self
            .signing_key_secret
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("CHAINKEEPER_SIGNING_KEY_SECRET is not set for this function"))?;
        let (text, created) =
            self.read_stage(id, None).await?.ok_or_else(|| anyhow::anyhow!("signing key secret {id} not found"))?;
        anyhow::ensure!(text.len() >= 32, "the signing key secret must hold at least 32 characters");
        let mut keys = SigningKeys { current: Zeroizing::new(text.into_bytes()), previous: None };
        // The previous version, if a rotation left one: accepted for the window after the current one was made.
        // (Without a creation date the window cannot be placed, so the previous key is not accepted.)
        if let (Some(created), Some((old, _))) = (created, self.read_stage(id, Some("AWSPREVIOUS")).await?)
            && old.len() >= 32
        {
            let accepted_until_ms = created.saturating_add(self.rotation_window_ms);
            keys.previous = Some(PreviousKey { key: Zeroizing::new(old.into_bytes()), accepted_until_ms });
        }
        let keys = Arc::new(keys);
        *self.signing.lock().unwrap() = Some((now, keys.clone()));
        Ok(keys)
    }
}
