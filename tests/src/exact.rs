//! chainkeeper in-process against the Exact Online simulator, both on clocks the test moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chainkeeper::app::App;
use chainkeeper::clock::{Clock, ManualClock};
use chainkeeper::config::Config;
use chainkeeper::ids::{Alias, ContainerRef, DbName, OrgId};
use chainkeeper::keys::Keys;
use chainkeeper::keys::local::LocalKeys;
use chainkeeper::secrets::{LocalSecrets, Secrets};
use chainkeeper::store::sqlite::SqliteStore;
use chainkeeper::store::{Condition, Index, Item, Key, Put, Store, StoreError, Version, WriteOp};
use chainkeeper::wiring::DataDir;
use exact_sim::{ExactSim, SimApp, SimClock, SimConfig, SimUser};
use serde_json::json;

use crate::{Api, container_path};

pub const T0: i64 = 1_800_000_000_000;
pub const CLIENT_ID: &str = "ck-exact-app";
pub const CLIENT_SECRET: &str = "ck-exact-secret-PLANTED";

/// Config lines that point the built-in `exact-online-nl` profile at a simulator (its login hosts too: the start
/// host and the B2C host).
pub fn sim_profile_toml(sim: &ExactSim) -> String {
    let (base_url, start, b2c) = (&sim.base_url, sim.addr, sim.b2c_addr);
    format!(
        "[providers.exact-online-nl]\nauthorize_url = \"{base_url}/api/oauth2/auth\"\ntoken_url = \"{base_url}/api/oauth2/token\"\napi_base_url = \"{base_url}/api\"\nlogin.hosts = [\"{start}\", \"{b2c}\"]\n"
    )
}

/// The `[apps.exact-online-nl]` registration of the test app, with `redirect_uri`.
pub fn sim_app_toml(redirect_uri: &str) -> String {
    format!(
        "[apps.exact-online-nl]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nredirect_uri = \"{redirect_uri}\"\n"
    )
}

/// A store whose writes (or reads) can be made to fail (fault injection).
pub struct FlakyStore {
    pub inner: Arc<dyn Store>,
    skip: AtomicU32,
    fail_writes: AtomicU32,
    skip_reads: AtomicU32,
    fail_reads: AtomicU32,
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            skip: AtomicU32::new(0),
            fail_writes: AtomicU32::new(0),
            skip_reads: AtomicU32::new(0),
            fail_reads: AtomicU32::new(0),
        }
    }

    /// Lets the next `skip` reads (`get`, `query`, `query_index`) through, then fails the `fail` after them.
    pub fn skip_reads_then_fail(&self, skip: u32, fail: u32) {
        self.skip_reads.store(skip, Ordering::SeqCst);
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    fn fail_read(&self) -> Result<(), StoreError> {
        if self.skip_reads.load(Ordering::SeqCst) > 0 {
            self.skip_reads.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        let left = self.fail_reads.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_reads.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Unavailable(anyhow::anyhow!("injected store failure")));
        }
        Ok(())
    }

    /// Lets the next `skip` writes through, then fails the `fail` after them.
    pub fn skip_then_fail(&self, skip: u32, fail: u32) {
        self.skip.store(skip, Ordering::SeqCst);
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    fn fail(&self) -> Result<(), StoreError> {
        if self.skip.load(Ordering::SeqCst) > 0 {
            self.skip.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        let left = self.fail_writes.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_writes.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::Unavailable(anyhow::anyhow!("injected store failure")));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FlakyStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.fail_read()?;
        self.inner.get(key).await
    }
    async fn put(&self, put: Put) -> Result<Version, StoreError> {
        self.fail()?;
        self.inner.put(put).await
    }
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.fail()?;
        self.inner.delete(key, condition).await
    }
    async fn query(&self, pk: &str, sk_prefix: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        self.fail_read()?;
        self.inner.query(pk, sk_prefix, limit).await
    }
    async fn query_back(&self, pk: &str, before: Option<&str>, limit: usize) -> Result<Vec<Item>, StoreError> {
        self.fail_read()?;
        self.inner.query_back(pk, before, limit).await
    }
    async fn query_index(
        &self,
        index: Index,
        pk: &str,
        sk_max: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.fail_read()?;
        self.inner.query_index(index, pk, sk_max, limit).await
    }
    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.fail()?;
        self.inner.transact(ops).await
    }
    async fn purge_expired(&self) -> Result<usize, StoreError> {
        self.inner.purge_expired().await
    }
}

/// Counts the calls that reach the key adapter (KMS in AWS): the warm path must make none.
pub struct CountingKeys {
    inner: Arc<dyn Keys>,
    calls: AtomicU32,
}

impl CountingKeys {
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Keys for CountingKeys {
    async fn create_org_key(&self, org: &str) -> Result<(), chainkeeper::keys::KeyError> {
        self.inner.create_org_key(org).await
    }
    async fn delete_org_key(&self, org: &str) -> Result<(), chainkeeper::keys::KeyError> {
        self.inner.delete_org_key(org).await
    }
    async fn generate_data_key(
        &self,
        ctx: &chainkeeper::keys::Context<'_>,
    ) -> Result<(chainkeeper::keys::DataKey, Vec<u8>), chainkeeper::keys::KeyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.generate_data_key(ctx).await
    }
    async fn decrypt_data_key(
        &self,
        ctx: &chainkeeper::keys::Context<'_>,
        wrapped: &[u8],
    ) -> Result<chainkeeper::keys::DataKey, chainkeeper::keys::KeyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.decrypt_data_key(ctx, wrapped).await
    }
}

pub struct ExactHarness {
    pub sim: ExactSim,
    pub clock: ManualClock,
    pub services: Arc<App>,
    pub store: Arc<FlakyStore>,
    pub keys: Arc<CountingKeys>,
    pub api: Api,
    pub container: ContainerRef,
    pub user: SimUser,
    pub dir: tempfile::TempDir,
    /// The configuration the harness's chainkeeper runs with, as TOML (for other processes on its data dir).
    pub config_toml: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ExactHarness {
    fn drop(&mut self) {
        self.server.abort();
        if !std::thread::panicking() {
            crate::assert_no_planted_secret("chainkeeper's log lines", &captured_log());
        }
    }
}

static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything chainkeeper logged in this test process (debug level), for the planted-secret check.
pub fn captured_log() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).to_string()
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,hyper=info,reqwest=info,h2=info,rustls=info,hyper_util=info")
            .with_writer(|| LogSink)
            .json()
            .try_init();
    });
}

/// The default simulated user.
pub fn sim_user(n: u32) -> SimUser {
    SimUser {
        user_id: format!("5a9c1a5e-0000-4000-8000-00000000000{n}"),
        username: format!("user{n}@example.nl"),
        password: format!("pw-{n}-PLANTED"),
        totp_secret_base32: Some("JBSWY3DPEHPK3PXP".into()),
        full_name: format!("User {n}"),
        division: 100 + n as i64,
    }
}

/// A simulator for the Lambda deployments' tests: our app with `redirect`, users `sim_user(1..=users)`, and short
/// tokens without a minimum interval, so that a chain in use is due (and a break found) within seconds.
pub async fn quick_sim(users: u32, redirect: &str) -> ExactSim {
    let config = SimConfig {
        apps: vec![SimApp {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uris: vec![redirect.into()],
        }],
        users: (1..=users).map(sim_user).collect(),
        access_token_lifetime: Duration::from_secs(2),
        min_token_interval: Duration::ZERO,
        ..SimConfig::default()
    };
    ExactSim::start(config, SimClock::system()).await.unwrap()
}

impl ExactHarness {
    /// Container `c{i}` of database `db` in `org` (whose key must exist), with a chain the simulator minted for
    /// `user` installed directly (no sign-in): how the campaign and the sweep benchmark set up many chains.
    pub async fn install_minted_chain(&self, org: &str, i: usize, user: &str) -> anyhow::Result<ContainerRef> {
        let (access, refresh) = self.sim.mint_tokens(CLIENT_ID, user);
        let c =
            ContainerRef { org: OrgId::parse(org)?, db: DbName::parse("db")?, alias: Alias::parse(&format!("c{i}"))? };
        let tokens = chainkeeper::provider::oauth::TokenSet {
            access_token: secrecy::SecretString::from(access),
            refresh_token: Some(secrecy::SecretString::from(refresh)),
            expires_in: Some(600.0),
            scope: None,
        };
        self.services.engine.install(&c, "exact-online-nl", &tokens).await?;
        Ok(c)
    }

    /// Simulator + chainkeeper (in-process, SQLite in a temp dir) + one authorized `eol` container.
    pub async fn start(tune: impl FnOnce(&mut SimConfig)) -> ExactHarness {
        Self::start_with(tune, "").await
    }

    /// `extra_provider`: more keys for the `exact-online-nl` profile. `{start_host}` and `{b2c_host}` in it
    /// stand for the simulator's two hosts (`127.0.0.1:PORT`); without a `login.hosts` key there, the profile's
    /// login hosts are those two (as `start.exactonline.nl` and `login.exact.com` are in production).
    pub async fn start_with(tune: impl FnOnce(&mut SimConfig), extra_provider: &str) -> ExactHarness {
        Self::start_full(tune, "", extra_provider).await
    }

    /// `extra_server`: more `[server]` keys.
    pub async fn start_server_config(tune: impl FnOnce(&mut SimConfig), extra_server: &str) -> ExactHarness {
        Self::start_all(tune, extra_server, "", "").await
    }

    /// `extra_engine`: more `[engine]` keys; `extra_provider`: more keys for the `exact-online-nl` profile.
    pub async fn start_full(
        tune: impl FnOnce(&mut SimConfig),
        extra_engine: &str,
        extra_provider: &str,
    ) -> ExactHarness {
        Self::start_all(tune, "", extra_engine, extra_provider).await
    }

    /// Every knob: more `[server]` keys (or whole tables after them), `[engine]` keys, profile keys.
    pub async fn start_all(
        tune: impl FnOnce(&mut SimConfig),
        extra_server: &str,
        extra_engine: &str,
        extra_provider: &str,
    ) -> ExactHarness {
        capture_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let redirect = format!("http://127.0.0.1:{port}/v1/callback");
        let user = sim_user(1);
        let mut sim_config = SimConfig {
            apps: vec![SimApp {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uris: vec![redirect.clone()],
            }],
            users: vec![user.clone(), sim_user(2)],
            ..SimConfig::default()
        };
        tune(&mut sim_config);
        let sim = ExactSim::start(sim_config, SimClock::new(T0)).await.unwrap();
        let (start_host, b2c_host) = (sim.addr.to_string(), sim.b2c_addr.to_string());
        let mut extra_provider = extra_provider.replace("{start_host}", &start_host).replace("{b2c_host}", &b2c_host);
        if !extra_provider.contains("login.hosts") {
            extra_provider.push_str(&format!("\nlogin.hosts = [\"{start_host}\", \"{b2c_host}\"]\n"));
        }
        let config_toml = format!(
            r#"
[server]
public_url = "http://127.0.0.1:{port}"
{extra_server}
[engine]
token_timeout_s = 1
sweep_interval_s = 3600
{extra_engine}
[providers.exact-online-nl]
{extra_provider}
authorize_url = "{base}/api/oauth2/auth"
token_url = "{base}/api/oauth2/token"
api_base_url = "{base}/api"
[apps.exact-online-nl]
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uri = "{redirect}"
"#,
            base = sim.base_url
        );
        let config = Config::from_toml(&config_toml).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let clock = ManualClock::new(T0);
        let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&data.store_path(), clock_dyn.clone()).unwrap());
        let store = Arc::new(FlakyStore::new(sqlite));
        let local: Arc<dyn Keys> = Arc::new(LocalKeys::new(store.clone(), data.master_key().unwrap()));
        let keys = Arc::new(CountingKeys { inner: local, calls: AtomicU32::new(0) });
        let signing = data.signing_key().unwrap();
        let secrets: Arc<dyn Secrets> = Arc::new(LocalSecrets::new(config.apps.clone(), signing));
        let services = App::new(store.clone(), keys.clone(), secrets, clock_dyn, config);
        let app = chainkeeper::api::router(services.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let token = chainkeeper::auth::issue(
            &signing,
            &chainkeeper::auth::Claims {
                sub: "test-admin".into(),
                org: None,
                scopes: vec!["admin".into()],
                exp: T0 / 1000 + 10 * 365 * 86_400,
                iat: T0 / 1000,
                jti: "t".into(),
            },
        )
        .unwrap();
        let api = Api::new(&format!("http://127.0.0.1:{port}"), &token);
        let container = ContainerRef {
            org: OrgId::parse("acme").unwrap(),
            db: DbName::parse("finance").unwrap(),
            alias: Alias::parse("eol").unwrap(),
        };
        let h = ExactHarness { sim, clock, services, store, keys, api, container, user, dir, config_toml, server };
        h.api.create_container("acme", "finance", "eol", "oauth2_code", Some("exact-online-nl")).await;
        let done = h.authorize("acme", "finance", "eol", &h.user.clone()).await;
        assert_eq!(done.status, 200, "authorization: {}", done.body);
        h
    }

    /// POST …/authorize, sign in at the simulator with the user's password and TOTP, follow the callback.
    pub async fn authorize(&self, org: &str, db: &str, alias: &str, user: &SimUser) -> crate::Reply {
        self.authorize_with(org, db, alias, user, json!({})).await
    }

    /// [`Self::authorize`] with a start request body (`{"replace_user": true}`).
    pub async fn authorize_with(
        &self,
        org: &str,
        db: &str,
        alias: &str,
        user: &SimUser,
        start: serde_json::Value,
    ) -> crate::Reply {
        let r = self.api.post(&format!("{}/authorize", container_path(org, db, alias)), start).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let url = r.body["authorize_url"].as_str().unwrap();
        let totp = self.sim.totp_now(&user.username);
        let back = exact_sim::browser::login(url, &user.username, &user.password, totp.as_deref())
            .await
            .expect("sign in at the simulator");
        self.api.with_token("").get(&back).await
    }

    /// A second chainkeeper process in all but the OS's sense: its own `App` (engine, caches, call governor in
    /// memory) over the same store, keys and configuration, on its own port, called with the harness's token.
    pub async fn another_process(&self) -> (Api, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = (*self.services.config).clone();
        let signing = DataDir::open(self.dir.path()).unwrap().signing_key().unwrap();
        let secrets: Arc<dyn Secrets> = Arc::new(LocalSecrets::new(config.apps.clone(), signing));
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        let services = App::new(self.store.clone(), self.keys.clone(), secrets, clock, config);
        let app = chainkeeper::api::router(services);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (Api::new(&format!("http://127.0.0.1:{port}"), &self.api.token), server)
    }

    /// Moves both clocks.
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
        self.sim.clock().advance(d);
    }

    pub fn token_path(&self) -> String {
        format!("{}/token", container_path("acme", "finance", "eol"))
    }

    pub async fn status(&self) -> serde_json::Value {
        self.api.get(&container_path("acme", "finance", "eol")).await.body
    }
}

/// Exact's rules scaled down 200x (3 s tokens, 2.85 s between token requests) and four `chainkeeper serve`
/// processes on one SQLite file, with one authorized `acme/finance/eol` container.
pub async fn four_processes(
    latency: Duration,
) -> anyhow::Result<(ExactSim, Vec<Api>, Vec<crate::Serve>, tempfile::TempDir)> {
    serve_processes(4, latency, &[]).await
}

/// [`four_processes`] with `n` processes, each started with `extra` arguments.
pub async fn serve_processes(
    n: usize,
    latency: Duration,
    extra: &[&str],
) -> anyhow::Result<(ExactSim, Vec<Api>, Vec<crate::Serve>, tempfile::TempDir)> {
    let ports: Vec<u16> = (0..n).map(|_| crate::free_port()).collect();
    let redirect = format!("http://127.0.0.1:{}/v1/callback", ports[0]);
    let user = sim_user(1);
    let sim = ExactSim::start(
        SimConfig {
            apps: vec![SimApp {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uris: vec![redirect.clone()],
            }],
            users: vec![user.clone()],
            access_token_lifetime: Duration::from_secs(3),
            min_token_interval: Duration::from_millis(2_850),
            token_latency: latency,
            ..SimConfig::default()
        },
        SimClock::system(),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("chainkeeper.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nrefresh_margin_s = 1\nsweep_interval_s = 3600\n{}min_token_interval_s = 2.85\n{}",
            sim_profile_toml(&sim),
            sim_app_toml(&redirect)
        ),
    )?;
    let mut serves = Vec::new();
    for port in &ports {
        serves.push(crate::Serve::start_with_args(dir.path(), Some(&config), *port, extra).await?);
    }
    let token = crate::issue_token(dir.path(), &["--platform"], &["admin"]);
    let apis: Vec<Api> = serves.iter().map(|s| Api::new(&s.base, &token)).collect();
    apis[0].create_container("acme", "finance", "eol", "oauth2_code", Some("exact-online-nl")).await;
    let r = apis[0].post(&format!("{}/authorize", container_path("acme", "finance", "eol")), json!({})).await;
    let url = r.body["authorize_url"].as_str().unwrap().to_string();
    let back = exact_sim::browser::login(&url, &user.username, &user.password, sim.totp_now(&user.username).as_deref())
        .await?;
    anyhow::ensure!(apis[0].with_token("").get(&back).await.status == 200, "authorization failed");
    Ok((sim, apis, serves, dir))
}
