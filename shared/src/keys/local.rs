//! Local envelope encryption: one random AES-256 key per organisation, stored in the `Store` wrapped by a
//! master key. The master key is 32 bytes from `CHAINKEEPER_MASTER_KEY` (base64) or from a file created with
//! mode 0600. Deleting an organisation's key item shreds its secrets.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::{Context, DataKey, KeyError, Keys, unwrap, wrap};
use crate::records::org_wrapped_key_key;
use crate::store::{Condition, Put, Store, StoreError};

pub struct LocalKeys {
    store: Arc<dyn Store>,
    master: Zeroizing<[u8; 32]>,
    org_keys: RwLock<HashMap<String, DataKey>>,
}

fn org_aad(org: &str) -> Vec<u8> {
    format!("chainkeeper/v1\0orgkey\0org={org}").into_bytes()
}

fn store_err(e: StoreError) -> KeyError {
    KeyError::Unavailable(e.into())
}

impl LocalKeys {
    pub fn new(store: Arc<dyn Store>, master: [u8; 32]) -> Self {
        Self { store, master: Zeroizing::new(master), org_keys: RwLock::default() }
    }

    async fn org_key(&self, org: &str) -> Result<DataKey, KeyError> {
        if let Some(k) = self.org_keys.read().unwrap_or_else(|e| e.into_inner()).get(org) {
            return Ok(k.clone());
        }
        let item = self.store.get(&org_wrapped_key_key(org)).await.map_err(store_err)?;
        let item = item.ok_or_else(|| KeyError::NoOrgKey(org.to_string()))?;
        let plain = unwrap(&self.master, &item.body, &org_aad(org))?;
        let key: [u8; 32] = plain[..].try_into().map_err(|_| KeyError::Decrypt)?;
        let key = Zeroizing::new(key);
        self.org_keys.write().unwrap_or_else(|e| e.into_inner()).insert(org.to_string(), key.clone());
        Ok(key)
    }
}

#[async_trait]
impl Keys for LocalKeys {
    async fn create_org_key(&self, org: &str) -> Result<(), KeyError> {
        let key: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
        let put = Put::new(org_wrapped_key_key(org), wrap(&self.master, &key[..], &org_aad(org)), Condition::Absent);
        match self.store.put(put).await {
            Ok(_) | Err(StoreError::Conflict) => Ok(()), // idempotent: the first key stays
            Err(e) => Err(store_err(e)),
        }
    }

    async fn delete_org_key(&self, org: &str) -> Result<(), KeyError> {
        self.org_keys.write().unwrap_or_else(|e| e.into_inner()).remove(org);
        self.store.delete(&org_wrapped_key_key(org), Condition::None).await.map_err(store_err)
    }

    async fn generate_data_key(&self, ctx: &Context<'_>) -> Result<(DataKey, Vec<u8>), KeyError> {
        let org_key = self.org_key(ctx.org).await?;
        let dek: DataKey = Zeroizing::new(rand::random());
        let wrapped = wrap(&org_key, &dek[..], &ctx.aad());
        Ok((dek, wrapped))
    }

    async fn decrypt_data_key(&self, ctx: &Context<'_>, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let org_key = self.org_key(ctx.org).await?;
        let plain = unwrap(&org_key, wrapped, &ctx.aad())?;
        let key: [u8; 32] = plain[..].try_into().map_err(|_| KeyError::Decrypt)?;
        Ok(Zeroizing::new(key))
    }
}

/// Reads a 32-byte key from the environment variable `env` (base64) if set, else from `path`, creating the file
/// (mode 0600, atomically: concurrent first starts agree on one key) when it does not exist.
pub fn load_or_create_key_file(path: &Path, env: &str) -> anyhow::Result<[u8; 32]> {
    use anyhow::Context as _;
    if let Ok(v) = std::env::var(env) {
        let bytes = B64.decode(v.trim()).with_context(|| format!("{env} is not valid base64"))?;
        return bytes.as_slice().try_into().map_err(|_| anyhow::anyhow!("{env} must be 32 bytes, base64-encoded"));
    }
    if !path.exists() {
        let key: [u8; 32] = rand::random();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(B64.encode(key).as_bytes())?;
            f.sync_all()?;
        }
        // hard_link fails if another process created the file first; then we use theirs.
        let _ = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = B64.decode(text.trim()).with_context(|| format!("{} is not valid base64", path.display()))?;
    bytes.as_slice().try_into().map_err(|_| anyhow::anyhow!("{} must hold 32 bytes", path.display()))
}
