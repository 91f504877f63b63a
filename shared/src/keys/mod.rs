//! The `Keys` port (one key per organisation, wrapping data keys) and the [`Vault`] that seals and opens
//! secrets with them (envelope encryption).
//!
//! Every ciphertext is bound to its organisation, container and field: the [`Context`] is the KMS encryption
//! context of the data key AND the AES-GCM associated data of the secret, so a ciphertext copied to another
//! organisation, container or field does not open. Plaintext data keys are cached in memory, bounded in
//! number and age, so a warm `access_token` call does no key-file or KMS work.

pub mod conformance;
pub mod local;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::clock::{Clock, Millis};
use crate::ids::{ContainerRef, OrgId};

/// A plaintext 256-bit data key, wiped from memory when dropped.
pub type DataKey = Zeroizing<[u8; 32]>;

/// What a ciphertext is bound to.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub org: &'a str,
    pub container: &'a str,
    pub field: &'a str,
}

impl Context<'_> {
    /// Canonical bytes of the context, used as AES-GCM associated data.
    pub fn aad(&self) -> Vec<u8> {
        format!("chainkeeper/v1\0org={}\0container={}\0field={}", self.org, self.container, self.field).into_bytes()
    }
}

/// The secrets chainkeeper seals, each bound to its own field name in the encryption context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    RefreshToken,
    AccessToken,
    Password,
    ApiToken,
    ClientSecret,
    PkceVerifier,
    RecoveryUsername,
    RecoveryPassword,
    RecoveryTotp,
    WebhookSecret,
    WebhookUrl,
    /// The sealed body of an organisation export (`app::backup`).
    OrgExport,
    /// A provider answer the query proxy's cache keeps in the store (`app::stored_answers`).
    CachedAnswer,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RefreshToken => "refresh_token",
            Self::AccessToken => "access_token",
            Self::Password => "password",
            Self::ApiToken => "api_token",
            Self::ClientSecret => "client_secret",
            Self::PkceVerifier => "pkce_verifier",
            Self::RecoveryUsername => "recovery_username",
            Self::RecoveryPassword => "recovery_password",
            Self::RecoveryTotp => "recovery_totp",
            Self::WebhookSecret => "webhook_secret",
            Self::WebhookUrl => "webhook_url",
            Self::OrgExport => "org_export",
            Self::CachedAnswer => "cached_answer",
        }
    }
}

/// The encryption contexts of one container's sealed fields: its organisation, `db/alias`, and the field. The one
/// place a context is made for a container (the chain engine, credentials, authorizations and auto-recovery all
/// use it), so a secret sealed by one part opens in another.
pub struct ContainerFields<'a> {
    org: &'a str,
    local: String,
}

impl<'a> ContainerFields<'a> {
    pub fn of(c: &'a ContainerRef) -> Self {
        Self { org: c.org.as_str(), local: c.local_name() }
    }
    pub fn context(&self, field: Field) -> Context<'_> {
        Context { org: self.org, container: &self.local, field: field.as_str() }
    }
}

/// The encryption context of an organisation's own secret (its webhook signing secret): no container.
pub fn org_context(org: &OrgId, field: Field) -> Context<'_> {
    Context { org: org.as_str(), container: "-", field: field.as_str() }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("organisation {0:?} has no encryption key")]
    NoOrgKey(String),
    #[error("ciphertext does not open under this organisation, container and field")]
    Decrypt,
    #[error("key service unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
}

/// One key per organisation that wraps and unwraps data keys (KMS in AWS, a local key file otherwise).
#[async_trait]
pub trait Keys: Send + Sync + 'static {
    /// Creates the organisation's key. MUST be idempotent: a second call for the same organisation succeeds
    /// and keeps the first key.
    async fn create_org_key(&self, org: &str) -> Result<(), KeyError>;
    /// Destroys (or schedules destruction of) the organisation's key: its secrets become unreadable.
    async fn delete_org_key(&self, org: &str) -> Result<(), KeyError>;
    /// A fresh data key and the same key wrapped under the organisation's key, bound to `ctx`.
    async fn generate_data_key(&self, ctx: &Context<'_>) -> Result<(DataKey, Vec<u8>), KeyError>;
    /// Unwraps a data key. MUST fail with `Decrypt` when `ctx` differs from the one it was generated with.
    async fn decrypt_data_key(&self, ctx: &Context<'_>, wrapped: &[u8]) -> Result<DataKey, KeyError>;
}

/// Bounds of the in-memory data-key caches.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    pub max_entries: usize,
    pub max_age_ms: Millis,
    /// How many secrets one cached encryption data key may seal before a fresh one is generated.
    pub max_encryptions: u32,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self { max_entries: 10_000, max_age_ms: 5 * 60_000, max_encryptions: 1_000 }
    }
}

struct Cached {
    key: DataKey,
    wrapped: Vec<u8>,
    at: Millis,
    uses: u32,
}

/// Seals and opens secrets: envelope encryption over a [`Keys`] adapter, with bounded data-key caches.
pub struct Vault {
    keys: Arc<dyn Keys>,
    clock: Arc<dyn Clock>,
    limits: CacheLimits,
    /// Keys used to open: by sha256(context || wrapped key).
    open_cache: RwLock<HashMap<[u8; 32], Cached>>,
    /// Keys used to seal: by context.
    seal_cache: RwLock<HashMap<Vec<u8>, Cached>>,
}

const BLOB_PREFIX: &str = "ck1.";

impl Vault {
    pub fn new(keys: Arc<dyn Keys>, clock: Arc<dyn Clock>, limits: CacheLimits) -> Self {
        Self { keys, clock, limits, open_cache: RwLock::default(), seal_cache: RwLock::default() }
    }

    pub fn keys(&self) -> &Arc<dyn Keys> {
        &self.keys
    }

    /// Encrypts `plaintext` for `ctx`; the result is printable text safe to store.
    pub async fn seal(&self, ctx: &Context<'_>, plaintext: &[u8]) -> Result<String, KeyError> {
        let aad = ctx.aad();
        let now = self.clock.now_ms();
        let reuse = {
            let mut cache = self.seal_cache.write().unwrap_or_else(|e| e.into_inner());
            match cache.get_mut(&aad) {
                Some(c) if now - c.at < self.limits.max_age_ms && c.uses < self.limits.max_encryptions => {
                    c.uses += 1;
                    Some((c.key.clone(), c.wrapped.clone()))
                }
                _ => None,
            }
        };
        let (key, wrapped) = match reuse {
            Some(kw) => kw,
            None => {
                let (key, wrapped) = self.keys.generate_data_key(ctx).await?;
                let mut cache = self.seal_cache.write().unwrap_or_else(|e| e.into_inner());
                evict(&mut cache, now, self.limits);
                cache.insert(aad.clone(), Cached { key: key.clone(), wrapped: wrapped.clone(), at: now, uses: 1 });
                (key, wrapped)
            }
        };
        let nonce: [u8; 12] = rand::random();
        let cipher = Aes256Gcm::new_from_slice(&key[..]).map_err(|_| KeyError::Decrypt)?;
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .map_err(|_| KeyError::Decrypt)?;
        let mut blob = Vec::with_capacity(2 + wrapped.len() + 12 + ct.len());
        blob.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
        blob.extend_from_slice(&wrapped);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(format!("{BLOB_PREFIX}{}", B64.encode(blob)))
    }

    /// Decrypts what [`Vault::seal`] produced for the same `ctx`.
    pub async fn open(&self, ctx: &Context<'_>, sealed: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let raw = sealed.strip_prefix(BLOB_PREFIX).ok_or(KeyError::Decrypt)?;
        let blob = B64.decode(raw).map_err(|_| KeyError::Decrypt)?;
        if blob.len() < 2 {
            return Err(KeyError::Decrypt);
        }
        let wlen = u16::from_be_bytes([blob[0], blob[1]]) as usize;
        if blob.len() < 2 + wlen + 12 + 16 {
            return Err(KeyError::Decrypt);
        }
        let wrapped = &blob[2..2 + wlen];
        let nonce = &blob[2 + wlen..2 + wlen + 12];
        let ct = &blob[2 + wlen + 12..];
        let aad = ctx.aad();
        let id: [u8; 32] = {
            let mut h = Sha256::new();
            h.update((aad.len() as u64).to_be_bytes());
            h.update(&aad);
            h.update(wrapped);
            h.finalize().into()
        };
        let now = self.clock.now_ms();
        let cached = {
            let cache = self.open_cache.read().unwrap_or_else(|e| e.into_inner());
            cache.get(&id).filter(|c| now - c.at < self.limits.max_age_ms).map(|c| c.key.clone())
        };
        let key = match cached {
            Some(k) => k,
            None => {
                let k = self.keys.decrypt_data_key(ctx, wrapped).await?;
                let mut cache = self.open_cache.write().unwrap_or_else(|e| e.into_inner());
                evict(&mut cache, now, self.limits);
                cache.insert(id, Cached { key: k.clone(), wrapped: Vec::new(), at: now, uses: 0 });
                k
            }
        };
        let cipher = Aes256Gcm::new_from_slice(&key[..]).map_err(|_| KeyError::Decrypt)?;
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Decrypt)
    }

    /// Opens a sealed UTF-8 secret.
    pub async fn open_string(&self, ctx: &Context<'_>, sealed: &str) -> Result<secrecy::SecretString, KeyError> {
        let bytes = self.open(ctx, sealed).await?;
        let s = std::str::from_utf8(&bytes).map_err(|_| KeyError::Decrypt)?;
        Ok(secrecy::SecretString::from(s.to_string()))
    }

    /// Forgets every cached data key of an organisation (after its key is deleted).
    pub fn forget_all(&self) {
        self.open_cache.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.seal_cache.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Number of cached data keys (open, seal) — for tests of the bounds.
    pub fn cache_sizes(&self) -> (usize, usize) {
        (
            self.open_cache.read().unwrap_or_else(|e| e.into_inner()).len(),
            self.seal_cache.read().unwrap_or_else(|e| e.into_inner()).len(),
        )
    }
}

fn evict<K: std::hash::Hash + Eq>(cache: &mut HashMap<K, Cached>, now: Millis, limits: CacheLimits) {
    if cache.len() < limits.max_entries {
        return;
    }
    cache.retain(|_, c| now - c.at < limits.max_age_ms);
    if cache.len() >= limits.max_entries {
        // Still full of fresh keys: drop the older half.
        let mut ages: Vec<Millis> = cache.values().map(|c| c.at).collect();
        ages.sort_unstable();
        let cut = ages[ages.len() / 2];
        cache.retain(|_, c| c.at > cut);
    }
}

/// AES-256-GCM with a random nonce: `nonce || ciphertext`. Used by the local key adapter to wrap keys.
pub(crate) fn wrap(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let nonce: [u8; 12] = rand::random();
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let mut out = nonce.to_vec();
    out.extend(cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad }).expect("encrypt"));
    out
}

pub(crate) fn unwrap(key: &[u8; 32], wrapped: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if wrapped.len() < 12 + 16 {
        return Err(KeyError::Decrypt);
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| KeyError::Decrypt)?;
    cipher
        .decrypt(Nonce::from_slice(&wrapped[..12]), Payload { msg: &wrapped[12..], aad })
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::memory::MemoryStore;

    fn vault(limits: CacheLimits) -> (Vault, ManualClock) {
        let clock = ManualClock::new(1_700_000_000_000);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let keys = local::LocalKeys::new(store, [7u8; 32]);
        (Vault::new(Arc::new(keys), Arc::new(clock.clone()), limits), clock)
    }

    #[tokio::test]
    async fn local_keys_conform() {
        let clock = ManualClock::new(1_700_000_000_000);
        let store = Arc::new(MemoryStore::new(Arc::new(clock)));
        conformance::run(Arc::new(local::LocalKeys::new(store, [5u8; 32])), "t").await;
    }

    #[tokio::test]
    async fn ciphertexts_are_bound_to_org_container_and_field() {
        let (v, _) = vault(CacheLimits::default());
        v.keys().create_org_key("acme").await.unwrap();
        v.keys().create_org_key("other").await.unwrap();
        let ctx = Context { org: "acme", container: "db/eol", field: "refresh_token" };
        let sealed = v.seal(&ctx, b"rt-secret").await.unwrap();
        assert!(!sealed.contains("rt-secret"));
        assert_eq!(&v.open(&ctx, &sealed).await.unwrap()[..], b"rt-secret");
        for wrong in [
            Context { org: "other", ..ctx },
            Context { container: "db/yuki", ..ctx },
            Context { field: "access_token", ..ctx },
        ] {
            assert!(matches!(v.open(&wrong, &sealed).await, Err(KeyError::Decrypt)), "{wrong:?} must not open");
        }
        // Tampering is detected.
        let mut bad = sealed.clone().into_bytes();
        let last = bad.len() - 3;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(v.open(&ctx, std::str::from_utf8(&bad).unwrap()).await.is_err());
        assert!(v.open(&ctx, "garbage").await.is_err());
    }

    #[tokio::test]
    async fn a_fresh_vault_opens_with_an_empty_cache_and_deleted_org_keys_shred() {
        let clock = ManualClock::new(1_700_000_000_000);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let keys: Arc<dyn Keys> = Arc::new(local::LocalKeys::new(store.clone(), [9u8; 32]));
        keys.create_org_key("acme").await.unwrap();
        let a = Vault::new(keys.clone(), Arc::new(clock.clone()), CacheLimits::default());
        let ctx = Context { org: "acme", container: "db/eol", field: "password" };
        let sealed = a.seal(&ctx, b"pw").await.unwrap();
        // Another process (fresh keys adapter, same store and master key) opens it.
        let keys2: Arc<dyn Keys> = Arc::new(local::LocalKeys::new(store.clone(), [9u8; 32]));
        let b = Vault::new(keys2.clone(), Arc::new(clock.clone()), CacheLimits::default());
        assert_eq!(&b.open(&ctx, &sealed).await.unwrap()[..], b"pw");
        // A different master key cannot.
        let keys3: Arc<dyn Keys> = Arc::new(local::LocalKeys::new(store.clone(), [1u8; 32]));
        let c = Vault::new(keys3, Arc::new(clock.clone()), CacheLimits::default());
        assert!(c.open(&ctx, &sealed).await.is_err());
        // Deleting the organisation's key makes its secrets unreadable.
        keys2.delete_org_key("acme").await.unwrap();
        let d = Vault::new(Arc::new(local::LocalKeys::new(store, [9u8; 32])), Arc::new(clock), CacheLimits::default());
        assert!(d.open(&ctx, &sealed).await.is_err());
    }

    #[tokio::test]
    async fn caches_are_bounded() {
        let (v, clock) = vault(CacheLimits { max_entries: 8, max_age_ms: 1_000, max_encryptions: 2 });
        v.keys().create_org_key("acme").await.unwrap();
        let mut sealed = Vec::new();
        for i in 0..50 {
            let c = format!("db/c{i}");
            let ctx = Context { org: "acme", container: &c, field: "f" };
            sealed.push((c.clone(), v.seal(&ctx, b"x").await.unwrap()));
        }
        for (c, s) in &sealed {
            let ctx = Context { org: "acme", container: c, field: "f" };
            assert_eq!(&v.open(&ctx, s).await.unwrap()[..], b"x");
        }
        let (o, s) = v.cache_sizes();
        assert!(o <= 8 && s <= 8, "caches stay within bounds: {o} {s}");
        clock.advance(std::time::Duration::from_secs(2));
        let ctx = Context { org: "acme", container: "db/c0", field: "f" };
        assert_eq!(&v.open(&ctx, &sealed[0].1).await.unwrap()[..], b"x", "an aged-out key is fetched again");
    }
}
