//! Wiring: which adapters serve the ports, and the application built over them, once per process. The only
//! module that names adapters (`store::sqlite`, `keys::local`, `secrets::LocalSecrets`, `aws`):
//! - embedded mode (`chainkeeper serve`, the CLI): SQLite, a local key file, secrets from the config file;
//! - AWS (the Lambda functions with the `aws` feature and `CHAINKEEPER_TABLE`): DynamoDB, KMS, Secrets Manager;
//! - [`from_env`]: what every function's `main.rs` calls (AWS, or embedded storage under `CHAINKEEPER_DATA_DIR`);
//! - [`spawn_schedule`]: `serve`'s in-process stand-in for the EventBridge schedules;
//! - [`refresh_event`], [`recover_event`]: what the `refresh` and `recover` functions do with an event.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::app::App;
#[cfg(feature = "aws")]
use crate::app::background::Background;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::keys::Keys;
use crate::keys::local::{LocalKeys, load_or_create_key_file};
use crate::secrets::{LocalSecrets, PreviousKey, Secrets, SigningKeys};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

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
    /// The key before the last rotation, and until when it is accepted (JSON, 0600).
    pub fn previous_signing_key_path(&self) -> PathBuf {
        self.root.join("signing.previous")
    }
    /// The current API-token signing key (`CHAINKEEPER_SIGNING_KEY`, or a 0600 file created on first use).
    pub fn signing_key(&self) -> anyhow::Result<[u8; 32]> {
        load_or_create_key_file(&self.signing_key_path(), "CHAINKEEPER_SIGNING_KEY")
    }
    /// The current signing key and, after a rotation, the previous one with the end of its window.
    pub fn signing_keys(&self) -> anyhow::Result<SigningKeys> {
        let mut keys = SigningKeys::single(&self.signing_key()?);
        let path = self.previous_signing_key_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let p: PreviousFile = serde_json::from_slice(&bytes)
                    .map_err(|_| anyhow::anyhow!("{} is not a previous signing key file", path.display()))?;
                let key = zeroize::Zeroizing::new(
                    B64.decode(p.key.trim()).map_err(|_| anyhow::anyhow!("{}: key is not base64", path.display()))?,
                );
                keys.previous = Some(PreviousKey { key, accepted_until_ms: p.accepted_until_ms });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
        Ok(keys)
    }
    /// Rotates the API-token signing key: the current key becomes the previous one, accepted until `now_ms +
    /// window_ms` (and no longer after the next rotation); a new random key becomes the current one. Every
    /// `serve` on this directory picks it up within a second. Not with `CHAINKEEPER_SIGNING_KEY` set (the key
    /// then lives wherever that variable is set).
    pub fn rotate_signing_key(&self, now_ms: i64, window_ms: i64) -> anyhow::Result<Rotated> {
        anyhow::ensure!(
            std::env::var_os("CHAINKEEPER_SIGNING_KEY").is_none(),
            "CHAINKEEPER_SIGNING_KEY is set: the signing key comes from the environment, rotate it there"
        );
        let old = self.signing_key()?;
        let accepted_until_ms = now_ms.saturating_add(window_ms.max(0));
        let previous = PreviousFile { key: B64.encode(old), accepted_until_ms };
        // The previous key first: a crash in between leaves the current key as both, which loses nothing.
        write_private(&self.previous_signing_key_path(), &serde_json::to_vec(&previous)?)?;
        let new: [u8; 32] = rand::random();
        write_private(&self.signing_key_path(), B64.encode(new).as_bytes())?;
        Ok(Rotated {
            key_id: crate::auth::key_id(&new),
            previous_key_id: crate::auth::key_id(&old),
            previous_accepted_until_ms: accepted_until_ms,
        })
    }
    /// The master key that wraps every organisation's key (`CHAINKEEPER_MASTER_KEY`, or a 0600 file).
    pub fn master_key(&self) -> anyhow::Result<[u8; 32]> {
        load_or_create_key_file(&self.master_key_path(), "CHAINKEEPER_MASTER_KEY")
    }
}

/// What a rotation did (key ids only: never a key).
#[derive(Debug, serde::Serialize)]
pub struct Rotated {
    pub key_id: String,
    pub previous_key_id: String,
    pub previous_accepted_until_ms: i64,
}

/// `signing.previous`.
#[derive(serde::Serialize, serde::Deserialize)]
struct PreviousFile {
    /// base64
    key: String,
    accepted_until_ms: i64,
}

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Writes a 0600 file whole (a temporary file renamed over it): a reader sees the old or the new content.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| anyhow::anyhow!("creating {}: {e}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("replacing {}: {e}", path.display()))?;
    Ok(())
}

/// Embedded mode: SQLite, a local key file, secrets from the config file.
pub fn embedded(data: &DataDir, config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<App>> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data.store_path(), clock.clone())?);
    let keys: Arc<dyn Keys> = Arc::new(LocalKeys::new(store.clone(), data.master_key()?));
    let dir = data.clone();
    let secrets: Arc<dyn Secrets> =
        Arc::new(LocalSecrets::reloading(config.apps.clone(), Box::new(move || dir.signing_keys()))?);
    Ok(App::new(store, keys, secrets, clock, config))
}

/// Embedded mode on the system clock.
pub fn embedded_system(data: &DataDir, config: Config) -> anyhow::Result<Arc<App>> {
    embedded(data, config, Arc::new(SystemClock))
}

/// On AWS: DynamoDB, KMS (one key per organisation), Secrets Manager.
#[cfg(feature = "aws")]
pub async fn aws(env: crate::aws::AwsEnv, config: Config) -> anyhow::Result<Arc<App>> {
    aws_with(env, config, Background::detached()).await
}

/// [`aws`] for a Lambda function: the work it starts in the background (recovery hand-offs, webhook deliveries)
/// is tracked and settled before each answer.
#[cfg(feature = "aws")]
pub async fn aws_function(env: crate::aws::AwsEnv, config: Config) -> anyhow::Result<Arc<App>> {
    aws_with(env, config, Background::tracked()).await
}

#[cfg(feature = "aws")]
async fn aws_with(env: crate::aws::AwsEnv, config: Config, background: Background) -> anyhow::Result<Arc<App>> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let a = crate::aws::adapters(&env, clock.clone()).await;
    let queues = crate::app::Queues { recovery: a.recovery_queue, sweep: a.sweep_queue };
    Ok(App::with_queues(a.store, a.keys, a.secrets, clock, config, queues, background))
}

/// What every Lambda function's `main.rs` calls, once per cold start. Built with the `aws` feature and given
/// `CHAINKEEPER_TABLE`, the adapters are DynamoDB, KMS and Secrets Manager. Otherwise they use embedded storage
/// under `CHAINKEEPER_DATA_DIR` (default `/tmp/chainkeeper`), which is how a function is tried locally without AWS.
pub async fn from_env() -> anyhow::Result<Arc<App>> {
    // EMF lines on stdout in Lambda (`CHAINKEEPER_STAGE` names the deployment); the registry only elsewhere.
    crate::metrics::install_from_env();
    let mut config = Config::load(std::env::var_os("CHAINKEEPER_CONFIG").map(PathBuf::from).as_deref())?;
    // The SAM template passes the public address as a parameter; a config file may still set it.
    if let Some(url) = std::env::var("CHAINKEEPER_PUBLIC_URL").ok().filter(|u| !u.trim().is_empty()) {
        config.server.public_url.get_or_insert(url.trim().trim_end_matches('/').to_string());
    }
    if std::env::var_os("CHAINKEEPER_TABLE").is_some() {
        #[cfg(feature = "aws")]
        return aws_function(crate::aws::AwsEnv::from_env()?, config).await;
        #[cfg(not(feature = "aws"))]
        anyhow::bail!(
            "CHAINKEEPER_TABLE is set but this binary was built without the `aws` feature: \
             build it with `cargo lambda build --release --features aws`"
        );
    }
    let dir = std::env::var_os("CHAINKEEPER_DATA_DIR").map_or_else(|| PathBuf::from("/tmp/chainkeeper"), PathBuf::from);
    embedded_system(&DataDir::open(&dir)?, config)
}

/// The `refresh` function's event: an SQS batch from the sweep queue (a worker: refreshes the chains of each
/// message, failed messages reported as `batchItemFailures`), or anything else, which is its EventBridge schedule:
/// with a sweep queue it reads the chains due and hands them to workers in batches, without one it refreshes them
/// itself. The chains it found broken are handed to the `recover` function before it returns.
pub async fn refresh_event(app: &App, event: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    if from_sqs(&event) {
        let batch: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(event)?;
        let answer = app.sweep.run_batch(batch).await;
        app.background.settle().await;
        return Ok(serde_json::to_value(answer)?);
    }
    let report = app.sweep.run_scheduled(app.config.engine.sweep_limit).await;
    app.background.settle().await;
    Ok(serde_json::to_value(report?)?)
}

/// An event of an SQS event source (every record from `aws:sqs`), as opposed to a schedule's.
fn from_sqs(event: &serde_json::Value) -> bool {
    event["Records"].as_array().is_some_and(|r| !r.is_empty() && r.iter().all(|m| m["eventSource"] == "aws:sqs"))
}

/// The `recover` function's event: an SQS batch of recovery requests (from the recovery queue: one run per
/// container, the failed ones reported as `batchItemFailures`), or anything else, which is its EventBridge
/// schedule (the run over every broken chain, the expiry warnings, the purge).
pub async fn recover_event(app: &App, event: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    // Either way the webhook events of the runs (`chain.recovered`, …) are delivered before it returns.
    if from_sqs(&event) {
        let batch: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(event)?;
        let answer = app.handoff.run_batch(batch).await;
        app.background.settle().await;
        return Ok(serde_json::to_value(answer)?);
    }
    let report = app.recovery.run_once().await;
    app.background.settle().await;
    Ok(serde_json::to_value(report?)?)
}

/// `serve`'s in-process schedule: a sweep and a recovery run every `engine.sweep_interval_s` (in AWS, EventBridge
/// invokes the `refresh` and `recover` functions instead).
pub fn spawn_schedule(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = std::time::Duration::from_secs_f64(app.config.engine.sweep_interval_s.max(0.05));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match app.sweep.run_scheduled(app.config.engine.sweep_limit).await {
                Ok(r) if r.due > 0 => tracing::info!(due = r.due, refreshed = r.refreshed, broken = r.broken, "sweep"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
            match app.recovery.run_once().await {
                Ok(r) if r.needs_repair > 0 || r.expiry_warnings > 0 => {
                    tracing::info!(
                        needs_repair = r.needs_repair,
                        recovered = r.recovered,
                        warnings = r.expiry_warnings,
                        "recovery run"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "recovery run failed"),
            }
        }
    })
}
