//! The `Secrets` port: provider app registrations and the API-token signing keys.
//! Embedded: the config file's `[apps.*]` and 0600 key files in the data directory. AWS: Secrets Manager.
//!
//! Signing keys rotate: the current key signs every new token; after a rotation the previous key still verifies
//! the tokens it signed until its window ends (then they are refused). Tokens name their key (`kid`,
//! [`crate::auth::key_id`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::clock::Millis;
use crate::provider::AppRegistration;

#[async_trait]
pub trait Secrets: Send + Sync + 'static {
    /// The app registration for a provider profile, if one is configured.
    async fn app(&self, provider: &str) -> anyhow::Result<Option<AppRegistration>>;
    /// The keys that sign and verify API tokens (HS256). MUST be the same in every process of a deployment (a
    /// rotation MAY take a short while, at most a minute, to reach every process).
    async fn signing_keys(&self) -> anyhow::Result<Arc<SigningKeys>>;
}

/// A deployment's API-token signing keys.
pub struct SigningKeys {
    /// Signs new tokens, and verifies them.
    pub current: Zeroizing<Vec<u8>>,
    /// The key before the last rotation: verifies the tokens it signed until `accepted_until_ms`.
    pub previous: Option<PreviousKey>,
}

pub struct PreviousKey {
    pub key: Zeroizing<Vec<u8>>,
    pub accepted_until_ms: Millis,
}

impl SigningKeys {
    /// One key, no rotation.
    pub fn single(key: &[u8]) -> Self {
        Self { current: Zeroizing::new(key.to_vec()), previous: None }
    }

    /// The keys that verify a token at `now_ms`: the current one, and the previous one inside its window.
    pub fn accepted(&self, now_ms: Millis) -> Vec<&[u8]> {
        let mut keys = vec![self.current.as_slice()];
        if let Some(p) = self.previous.as_ref().filter(|p| now_ms < p.accepted_until_ms) {
            keys.push(p.key.as_slice());
        }
        keys
    }
}

/// Reads a deployment's signing keys again (the data directory's key files).
pub type LoadKeys = Box<dyn Fn() -> anyhow::Result<SigningKeys> + Send + Sync>;

/// How often a reloading [`LocalSecrets`] looks at its key files again.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

enum KeySource {
    Fixed(Arc<SigningKeys>),
    /// Re-read at most once a [`RELOAD_EVERY`], so that a rotation by another process (`chainkeeper signing-key
    /// rotate`) reaches a running `serve`.
    Reload {
        load: LoadKeys,
        cached: Mutex<(Instant, Arc<SigningKeys>)>,
    },
}

/// Secrets from the config file and local keys.
pub struct LocalSecrets {
    apps: BTreeMap<String, AppRegistration>,
    keys: KeySource,
}

impl LocalSecrets {
    /// One fixed signing key (tests, tools).
    pub fn new(apps: BTreeMap<String, AppRegistration>, signing_key: [u8; 32]) -> Self {
        Self { apps, keys: KeySource::Fixed(Arc::new(SigningKeys::single(&signing_key))) }
    }

    /// Signing keys read by `load`, now (an error here stops the start) and again at most once a second.
    pub fn reloading(apps: BTreeMap<String, AppRegistration>, load: LoadKeys) -> anyhow::Result<Self> {
        let first = Arc::new(load()?);
        Ok(Self { apps, keys: KeySource::Reload { load, cached: Mutex::new((Instant::now(), first)) } })
    }
}

#[async_trait]
impl Secrets for LocalSecrets {
    async fn app(&self, provider: &str) -> anyhow::Result<Option<AppRegistration>> {
        Ok(self.apps.get(provider).cloned())
    }
    async fn signing_keys(&self) -> anyhow::Result<Arc<SigningKeys>> {
        match &self.keys {
            KeySource::Fixed(k) => Ok(k.clone()),
            KeySource::Reload { load, cached } => {
                let mut c = cached.lock().unwrap_or_else(|e| e.into_inner());
                if c.0.elapsed() >= RELOAD_EVERY {
                    match load() {
                        Ok(keys) => *c = (Instant::now(), Arc::new(keys)),
                        // Keep the keys we have (a rotation half-written, a file briefly missing): try again later.
                        Err(e) => {
                            tracing::warn!(error = %e, "could not re-read the signing keys; keeping the last ones")
                        }
                    }
                }
                Ok(c.1.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_key_is_accepted_only_inside_its_window() {
        let keys = SigningKeys {
            current: Zeroizing::new(b"new".to_vec()),
            previous: Some(PreviousKey { key: Zeroizing::new(b"old".to_vec()), accepted_until_ms: 1_000 }),
        };
        assert_eq!(keys.accepted(999), vec![b"new".as_slice(), b"old".as_slice()]);
        assert_eq!(keys.accepted(1_000), vec![b"new".as_slice()]);
        assert_eq!(SigningKeys::single(b"k").accepted(0), vec![b"k".as_slice()]);
    }
}
