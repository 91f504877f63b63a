//! The services every entry point shares (the `serve` process and each Lambda function), built once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chain::{ChainEngine, ChainEvents, RepairCode};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::ids::ContainerRef;
use crate::keys::local::{LocalKeys, load_or_create_key_file};
use crate::keys::{CacheLimits, Keys, Vault};
use crate::secrets::{LocalSecrets, Secrets};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

pub struct Services {
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub secrets: Arc<dyn Secrets>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    pub http: reqwest::Client,
    pub engine: Arc<ChainEngine>,
    pub notifier: Arc<crate::notify::Notifier>,
    pub query_cache: crate::api::query::ResponseCache,
}

/// Where the engine's chain events go: the organisation's webhook, and an auto-recovery run for a broken chain.
struct Events {
    notifier: Arc<crate::notify::Notifier>,
    services: std::sync::OnceLock<std::sync::Weak<Services>>,
}

impl ChainEvents for Events {
    fn needs_repair(&self, c: &ContainerRef, code: RepairCode) {
        self.notifier.container_event("chain.needs_repair", c, Some(code));
        // A chain that breaks gets an auto-recovery attempt right away (where the organisation stored credentials).
        if let Some(s) = self.services.get().and_then(|w| w.upgrade()) {
            let c = c.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::recover::recover_container(&s, &c, "the chain broke").await {
                    tracing::warn!(error = %e, container = %c, "auto-recovery failed to run");
                }
            });
        }
    }
    fn recovered(&self, c: &ContainerRef) {
        self.notifier.container_event("chain.recovered", c, None);
    }
}

impl Services {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<dyn Keys>,
        secrets: Arc<dyn Secrets>,
        clock: Arc<dyn Clock>,
        config: Config,
    ) -> Arc<Self> {
        let config = Arc::new(config);
        let http = crate::provider::oauth::http_client();
        let vault = Arc::new(Vault::new(keys, clock.clone(), CacheLimits::default()));
        let notifier =
            Arc::new(crate::notify::Notifier::new(store.clone(), vault.clone(), clock.clone(), http.clone()));
        let events = Arc::new(Events { notifier: notifier.clone(), services: Default::default() });
        let engine = Arc::new(ChainEngine::new(
            store.clone(),
            vault.clone(),
            secrets.clone(),
            clock.clone(),
            config.clone(),
            http.clone(),
            events.clone(),
        ));
        let services = Arc::new(Self {
            store,
            vault,
            secrets,
            clock,
            config,
            http,
            engine,
            notifier,
            query_cache: Default::default(),
        });
        let _ = events.services.set(Arc::downgrade(&services));
        services
    }
}

/// Where the embedded mode keeps its files.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    /// Creates the directory (mode 0700) if needed.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
        }
        Ok(Self { root: root.to_path_buf() })
    }
    pub fn store_path(&self) -> PathBuf {
        self.root.join("chainkeeper.sqlite")
    }
    pub fn master_key_path(&self) -> PathBuf {
        self.root.join("master.key")
    }
    pub fn signing_key_path(&self) -> PathBuf {
        self.root.join("signing.key")
    }
    /// The API-token signing key (`CHAINKEEPER_SIGNING_KEY`, or a 0600 file created on first use).
    pub fn signing_key(&self) -> anyhow::Result<[u8; 32]> {
        load_or_create_key_file(&self.signing_key_path(), "CHAINKEEPER_SIGNING_KEY")
    }
    /// The master key that wraps every organisation's key (`CHAINKEEPER_MASTER_KEY`, or a 0600 file).
    pub fn master_key(&self) -> anyhow::Result<[u8; 32]> {
        load_or_create_key_file(&self.master_key_path(), "CHAINKEEPER_MASTER_KEY")
    }
}

/// Embedded mode: SQLite, a local key file, secrets from the config file.
pub fn embedded(data: &DataDir, config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<Services>> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data.store_path(), clock.clone())?);
    let keys: Arc<dyn Keys> = Arc::new(LocalKeys::new(store.clone(), data.master_key()?));
    let secrets: Arc<dyn Secrets> = Arc::new(LocalSecrets::new(config.apps.clone(), data.signing_key()?));
    Ok(Services::new(store, keys, secrets, clock, config))
}

/// Embedded mode on the system clock.
pub fn embedded_system(data: &DataDir, config: Config) -> anyhow::Result<Arc<Services>> {
    embedded(data, config, Arc::new(SystemClock))
}
