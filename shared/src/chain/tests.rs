//! Unit tests of the engine: the in-memory store, local keys, a clock the test moves, and a fake token endpoint
//! on loopback that rotates refresh tokens as Exact Online does (one active refresh token; every refresh kills the
//! previous one) and fails on demand. The same rules against the Exact Online simulator, through the API, are in
//! `tests/tests/e2e/exact_engine.rs`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::clock::ManualClock;
use crate::ids::{Alias, ContainerRef, DbName, OrgId};
use crate::keys::local::LocalKeys;
use crate::keys::{CacheLimits, ContainerFields, Field, Keys};
use crate::provider::oauth::TokenSet;
use crate::records::{ChainStatus, RESCUE_PREFIX, chain_key, chain_pk, decode, encode};
use crate::secrets::LocalSecrets;
use crate::store::memory::MemoryStore;
use crate::store::{Condition, Index, Item, Key, Put, StoreError, WriteOp};

const T0: Millis = 1_800_000_000_000;

/// How the fake endpoint answers the next token request.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// 503: nothing changed at the provider.
    Unavailable,
    /// Exact's minimum-interval refusal (400 with `Reason: TooEarlyToRefreshTokens`).
    TooEarly,
    /// 401 `invalid_client`: the app registration is wrong.
    InvalidClient,
    /// The provider rotates the token, then the answer never arrives (longer than the engine's timeout).
    LoseAnswer,
    /// Answer normally after a delay.
    Slow(Duration),
    /// The connection breaks before the request is read: nothing changes at the provider.
    Unread,
}

#[derive(Default)]
struct Provider {
    /// The one refresh token the provider accepts.
    current: String,
    issued: u32,
    faults: VecDeque<Fault>,
    /// Every refresh token presented, in order.
    presented: Vec<String>,
    activations: u32,
    /// Earlier refresh tokens stay usable (Exact's grace on some apps; here without an end).
    grace: bool,
    earlier: Vec<String>,
}

#[derive(Clone)]
struct FakeEndpoint {
    state: Arc<Mutex<Provider>>,
    base: String,
}

impl FakeEndpoint {
    async fn start(first_refresh_token: &str) -> Self {
        let state = Arc::new(Mutex::new(Provider { current: first_refresh_token.into(), ..Default::default() }));
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .route("/api/v1/current/Me", axum::routing::get(activate))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, base }
    }
    fn fail_next(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }
    fn requests(&self) -> usize {
        self.state.lock().unwrap().presented.len()
    }
    fn presented(&self) -> Vec<String> {
        self.state.lock().unwrap().presented.clone()
    }
    fn current(&self) -> String {
        self.state.lock().unwrap().current.clone()
    }
}

async fn activate(State(state): State<Arc<Mutex<Provider>>>) -> &'static str {
    state.lock().unwrap().activations += 1;
    "{}"
}

async fn token(
    State(state): State<Arc<Mutex<Provider>>>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let fault = {
        let mut p = state.lock().unwrap();
        p.presented.push(presented.clone());
        p.faults.pop_front()
    };
    let json = |status: StatusCode, body: serde_json::Value| (status, axum::Json(body)).into_response();
    match fault {
        Some(Fault::Unavailable) => return json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({})),
        Some(Fault::InvalidClient) => {
            return json(StatusCode::UNAUTHORIZED, serde_json::json!({"error": "invalid_client"}));
        }
        Some(Fault::TooEarly) => {
            let mut r = json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "access_denied", "error_description": "Rate limit exceeded"}),
            );
            r.headers_mut().insert("reason", "TooEarlyToRefreshTokens".parse().unwrap());
            return r;
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        // The body is cut short: the engine reads "the connection broke before an answer".
        Some(Fault::Unread) => {
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-length", "100")
                .body(axum::body::Body::from("{"))
                .unwrap();
        }
        Some(Fault::LoseAnswer) | None => {}
    }
    let issued = {
        let mut p = state.lock().unwrap();
        if presented != p.current && !(p.grace && p.earlier.contains(&presented)) {
            None
        } else {
            let old = std::mem::take(&mut p.current);
            p.earlier.push(old);
            p.issued += 1;
            p.current = format!("rt-{}", p.issued);
            Some(p.issued)
        }
    };
    let Some(n) = issued else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid_grant", "error_description": "Old refresh token used."}),
        );
    };
    if matches!(fault, Some(Fault::LoseAnswer)) {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    json(
        StatusCode::OK,
        serde_json::json!({"access_token": format!("at-{n}"), "refresh_token": format!("rt-{n}"), "expires_in": "600", "token_type": "bearer"}),
    )
}

/// The in-memory store, counting item reads (`get`).
struct CountedStore {
    inner: MemoryStore,
    reads: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl Store for CountedStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key).await
    }
    async fn put(&self, put: Put) -> Result<u64, StoreError> {
        self.inner.put(put).await
    }
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.inner.delete(key, condition).await
    }
    async fn query(&self, pk: &str, sk_prefix: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        self.inner.query(pk, sk_prefix, limit).await
    }
    async fn query_back(&self, pk: &str, before: Option<&str>, limit: usize) -> Result<Vec<Item>, StoreError> {
        self.inner.query_back(pk, before, limit).await
    }
    async fn query_index(
        &self,
        index: Index,
        pk: &str,
        sk_max: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.inner.query_index(index, pk, sk_max, limit).await
    }
    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.inner.transact(ops).await
    }
}

#[derive(Default)]
struct RecordedEvents {
    broken: Mutex<Vec<RepairCode>>,
    recovered: Mutex<u32>,
}

impl ChainEvents for RecordedEvents {
    fn needs_repair(&self, _: &ContainerRef, code: RepairCode) {
        self.broken.lock().unwrap().push(code);
    }
    fn recovered(&self, _: &ContainerRef) {
        *self.recovered.lock().unwrap() += 1;
    }
}

struct Rig {
    engine: Arc<ChainEngine>,
    store: Arc<CountedStore>,
    vault: Arc<Vault>,
    clock: ManualClock,
    provider: FakeEndpoint,
    events: Arc<RecordedEvents>,
    c: ContainerRef,
}

/// An engine with one authorized chain (`at-0` / `rt-0`, Exact's rules: 600 s tokens, 570 s between requests).
async fn rig() -> Rig {
    rig_with("").await
}

/// [`rig`] with more `[engine]` keys.
async fn rig_with(engine: &str) -> Rig {
    rig_full(engine, "").await
}

/// [`rig`] with more `[engine]` keys and more keys of the provider profile.
async fn rig_full(engine: &str, profile: &str) -> Rig {
    let provider = FakeEndpoint::start("rt-0").await;
    let config = Config::from_toml(&format!(
        "[engine]\ntoken_timeout_s = 0.5\n{engine}\n\
         [providers.exact-online-nl]\ntoken_url = \"{b}/token\"\napi_base_url = \"{b}/api\"\n{profile}\n\
         [apps.exact-online-nl]\nclient_id = \"app\"\nclient_secret = \"app-secret\"\nredirect_uri = \"http://127.0.0.1/cb\"\n",
        b = provider.base
    ))
    .unwrap();
    let clock = ManualClock::new(T0);
    let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
    let store = Arc::new(CountedStore { inner: MemoryStore::new(clock_dyn.clone()), reads: Default::default() });
    let keys: Arc<dyn Keys> = Arc::new(LocalKeys::new(store.clone(), [7; 32]));
    keys.create_org_key("acme").await.unwrap();
    let vault = Arc::new(Vault::new(keys, clock_dyn.clone(), CacheLimits::default()));
    let secrets = Arc::new(LocalSecrets::new(config.apps.clone(), [9; 32]));
    let events = Arc::new(RecordedEvents::default());
    let engine = Arc::new(ChainEngine::new(
        store.clone(),
        vault.clone(),
        secrets,
        clock_dyn,
        Arc::new(config),
        crate::provider::oauth::http_client(),
        events.clone(),
    ));
    let c = ContainerRef {
        org: OrgId::parse("acme").unwrap(),
        db: DbName::parse("finance").unwrap(),
        alias: Alias::parse("eol").unwrap(),
    };
    let first = TokenSet {
        access_token: SecretString::from("at-0".to_string()),
        refresh_token: Some(SecretString::from("rt-0".to_string())),
        expires_in: Some(600.0),
        scope: None,
    };
    engine.install(&c, "exact-online-nl", &first).await.unwrap();
    Rig { engine, store, vault, clock, provider, events, c }
}

impl Rig {
    fn advance_s(&self, s: u64) {
        self.clock.advance(Duration::from_secs(s));
    }
    /// The refresh token the store holds for the chain, opened.
    async fn stored_refresh_token(&self) -> String {
        let (chain, _) = self.engine.chain(&self.c).await.unwrap().unwrap();
        let fields = ContainerFields::of(&self.c);
        let sealed = chain.sealed_refresh_token.unwrap();
        self.vault.open_string(&fields.context(Field::RefreshToken), &sealed).await.unwrap().expose_secret().to_string()
    }
    async fn status(&self) -> ChainStatus {
        self.engine.chain(&self.c).await.unwrap().unwrap().0.status
    }
}

fn text(t: &AccessToken) -> &str {
    t.token.expose_secret()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_is_handed_out_without_asking_the_provider() {
    let r = rig().await;
    r.advance_s(500);
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-0");
    assert_eq!(r.provider.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_taken_once_under_concurrency() {
    let r = rig().await;
    r.advance_s(601);
    r.provider.fail_next(Fault::Slow(Duration::from_millis(200)));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (engine, c) = (r.engine.clone(), r.c.clone());
        callers.spawn(async move { engine.access_token(&c).await.map(|t| text(&t).to_string()) });
    }
    while let Some(got) = callers.join_next().await {
        assert_eq!(got.unwrap().unwrap(), "at-1", "every caller gets the one new token");
    }
    assert_eq!(r.provider.requests(), 1, "one token request for fifty callers");
    assert_eq!(r.engine.stats.refreshes.load(Ordering::SeqCst), 1);
    assert!(r.engine.stats.waits.load(Ordering::SeqCst) >= 1, "the others waited for the lease holder");
    assert_eq!(r.stored_refresh_token().await, "rt-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_refresh_token_is_written_before_it_is_used() {
    let r = rig().await;
    r.advance_s(601);
    // The process "dies" after writing, before anything used the new token (activation included).
    r.engine.crash_next_refresh_at(CrashPoint::AfterWrite);
    let crashed = r.engine.access_token(&r.c).await.unwrap_err();
    assert!(format!("{crashed}").contains("simulated crash"), "{crashed}");
    assert_eq!(r.provider.state.lock().unwrap().activations, 0, "nothing used the new token yet");
    assert_eq!(r.stored_refresh_token().await, "rt-1", "the new refresh token is in the store");
    assert_eq!(r.provider.current(), "rt-1");
    // The next caller finds the new token without a request.
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-1");
    assert_eq!(r.provider.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_loses_its_lease_goes_to_the_rescue_slot_which_is_tried_first() {
    let r = rig().await;
    r.advance_s(601);
    r.provider.fail_next(Fault::Slow(Duration::from_millis(300)));
    let (engine, c) = (r.engine.clone(), r.c.clone());
    let caller = tokio::spawn(async move { engine.access_token(&c).await.map(|t| text(&t).to_string()) });
    // While the lease holder waits for the provider, someone else writes the chain (as a holder whose lease ran
    // out would find): the holder's conditional write of the new tokens loses.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let item = r.store.get(&chain_key(&r.c)).await.unwrap().unwrap();
    let mut chain: ChainRecord = decode(&item).unwrap();
    chain.lease = None;
    r.store.put(Put::new(chain_key(&r.c), encode(&chain), Condition::Version(item.version))).await.unwrap();
    assert_eq!(caller.await.unwrap().unwrap(), "at-1", "the caller still gets the new token");
    assert_eq!(r.engine.stats.rescues_written.load(Ordering::SeqCst), 1);
    assert_eq!(r.store.query(&chain_pk(&r.c), RESCUE_PREFIX, 10).await.unwrap().len(), 1);
    assert_eq!(r.stored_refresh_token().await, "rt-0", "the chain itself still holds the dead token");

    // The next refresh tries the rescued token before the chain's own: the dead one is never presented.
    r.advance_s(601);
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-2");
    assert_eq!(r.provider.presented(), ["rt-0", "rt-1"]);
    assert_eq!(r.engine.stats.rescues_used.load(Ordering::SeqCst), 1);
    assert_eq!(r.stored_refresh_token().await, "rt-2");
    assert!(r.store.query(&chain_pk(&r.c), RESCUE_PREFIX, 10).await.unwrap().is_empty(), "rescue slot cleared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_refresh_token_breaks_the_chain_with_a_precise_code_once() {
    let r = rig().await;
    r.provider.state.lock().unwrap().current = "rt-elsewhere".into(); // authorized again elsewhere
    r.advance_s(601);
    match r.engine.access_token(&r.c).await {
        Err(ChainError::NeedsRepair { code, .. }) => assert_eq!(code, RepairCode::RefreshTokenSuperseded),
        other => panic!("expected needs_repair: {other:?}"),
    }
    assert_eq!(r.status().await, ChainStatus::NeedsRepair);
    assert_eq!(*r.events.broken.lock().unwrap(), [RepairCode::RefreshTokenSuperseded], "announced once");
    // A broken chain is never sent to the provider again.
    assert!(matches!(r.engine.access_token(&r.c).await, Err(ChainError::NeedsRepair { .. })));
    assert_eq!(r.provider.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_by_the_lease_holder_and_its_waiters_share_the_answer() {
    let r = rig().await;
    r.advance_s(601);
    r.provider.fail_next(Fault::Unavailable);
    r.provider.fail_next(Fault::Unavailable);
    let started = std::time::Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (engine, c) = (r.engine.clone(), r.c.clone());
        callers.spawn(async move { engine.access_token(&c).await.map(|t| text(&t).to_string()) });
    }
    while let Some(got) = callers.join_next().await {
        assert_eq!(got.unwrap().unwrap(), "at-1", "every caller gets the token of the third try");
    }
    assert_eq!(r.provider.presented(), ["rt-0", "rt-0", "rt-0"], "one lease holder, the same token, three tries");
    assert_eq!(r.engine.stats.retries.load(Ordering::SeqCst), 2);
    // Pauses of 0.05–0.15 s, then 0.1–0.3 s: well inside the default budget of 3 s.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(2), "{took:?}");
    let (chain, _) = r.engine.chain(&r.c).await.unwrap().unwrap();
    assert_eq!((chain.failures, chain.last_error.is_none()), (0, true), "nothing of the faults is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_longer_than_the_budget_keeps_the_chain_and_backs_off() {
    let r = rig_with("retry_budget_s = 0.5").await;
    r.advance_s(601);
    for _ in 0..20 {
        r.provider.fail_next(Fault::Unavailable);
    }
    let started = std::time::Instant::now();
    match r.engine.access_token(&r.c).await {
        Err(ChainError::ProviderUnavailable { retry_after_s, .. }) => assert!(retry_after_s >= 5, "{retry_after_s}"),
        other => panic!("expected provider_unavailable: {other:?}"),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150) && took <= Duration::from_millis(900), "inside the budget: {took:?}");
    let tries = r.provider.requests();
    assert!((2..=5).contains(&tries), "retried within 0.5 s: {tries}");
    assert!(matches!(r.engine.access_token(&r.c).await, Err(ChainError::ProviderUnavailable { .. })));
    assert_eq!(r.provider.requests(), tries, "no request inside the backoff");
    assert_eq!(r.status().await, ChainStatus::Healthy);
    r.provider.state.lock().unwrap().faults.clear();
    r.advance_s(7);
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-1", "after the backoff the same token works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_a_valid_token_gets_it_at_once_while_the_provider_fails() {
    let r = rig().await;
    r.advance_s(571); // inside the refresh margin: 29 s left
    r.provider.fail_next(Fault::Unavailable);
    let started = std::time::Instant::now();
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-0");
    assert!(started.elapsed() < Duration::from_millis(500), "no retries on a caller who has a token");
    assert_eq!(r.provider.requests(), 1);
    r.advance_s(2);
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-0", "still valid, still handed out");
    assert_eq!(r.provider.requests(), 1, "inside the backoff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_early_is_a_wait_and_a_wrong_app_registration_is_not_a_broken_chain() {
    let r = rig().await;
    r.advance_s(601);
    r.provider.fail_next(Fault::TooEarly);
    match r.engine.access_token(&r.c).await {
        Err(ChainError::RateLimited { wait_s }) => assert!(wait_s >= 60, "{wait_s}"),
        other => panic!("expected token_rate_limited: {other:?}"),
    }
    r.advance_s(601);
    r.provider.fail_next(Fault::InvalidClient);
    assert!(matches!(r.engine.access_token(&r.c).await, Err(ChainError::InvalidClient(_))));
    let (chain, _) = r.engine.chain(&r.c).await.unwrap().unwrap();
    assert_eq!(chain.status, ChainStatus::Healthy);
    assert_eq!(chain.last_error.unwrap().code, "invalid_client");
    assert!(r.events.broken.lock().unwrap().is_empty());
    assert_eq!(r.provider.current(), "rt-0", "the chain's token is still the live one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_probed_once_with_the_previous_token_and_a_dead_one_says_so_at_once() {
    let r = rig().await;
    r.advance_s(601);
    r.provider.fail_next(Fault::LoseAnswer);
    match r.engine.access_token(&r.c).await {
        Err(ChainError::NeedsRepair { code, .. }) => assert_eq!(code, RepairCode::RefreshResponseLost),
        other => panic!("expected refresh_response_lost: {other:?}"),
    }
    assert_eq!(r.provider.presented(), ["rt-0", "rt-0"], "the old token was tried exactly once more");
    assert_eq!(*r.events.broken.lock().unwrap(), [RepairCode::RefreshResponseLost], "auto-recovery is told at once");
    r.advance_s(601);
    assert!(matches!(r.engine.access_token(&r.c).await, Err(ChainError::NeedsRepair { .. })));
    assert_eq!(r.provider.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_that_was_never_processed_is_healed_by_the_probe() {
    let r = rig().await;
    r.advance_s(601);
    // The connection broke before the provider read the request: nothing rotated.
    r.provider.state.lock().unwrap().faults.push_back(Fault::Unread);
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-1");
    assert_eq!(r.provider.presented(), ["rt-0", "rt-0"]);
    assert_eq!(r.status().await, ChainStatus::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_healed_with_the_previous_token_after_the_interval_where_the_provider_forgives() {
    let r = rig().await;
    r.provider.state.lock().unwrap().grace = true;
    r.advance_s(601);
    r.provider.fail_next(Fault::LoseAnswer);
    r.provider.fail_next(Fault::TooEarly); // the probe: the lost refresh was processed, the interval runs
    match r.engine.access_token(&r.c).await {
        Err(ChainError::ResponseLostRetrying { retry_after_s }) => assert_eq!(retry_after_s, 570),
        other => panic!("expected refresh_response_lost_retrying: {other:?}"),
    }
    assert_eq!(r.status().await, ChainStatus::Healthy, "a lost answer alone does not break the chain");
    r.advance_s(300);
    match r.engine.access_token(&r.c).await {
        Err(ChainError::ResponseLostRetrying { retry_after_s }) => assert_eq!(retry_after_s, 270, "the seconds left"),
        other => panic!("expected refresh_response_lost_retrying: {other:?}"),
    }
    assert_eq!(r.provider.requests(), 2, "nothing is sent inside the provider's interval");
    r.advance_s(270);
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-2", "healed with the previous token");
    assert_eq!(r.stored_refresh_token().await, "rt-2");
    r.advance_s(571);
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-3", "and the chain goes on");
    assert_eq!(r.provider.presented(), ["rt-0", "rt-0", "rt-0", "rt-2"]);
    assert!(r.events.broken.lock().unwrap().is_empty());
    let (chain, _) = r.engine.chain(&r.c).await.unwrap().unwrap();
    assert_eq!((chain.pending_request_at_ms, chain.last_error.is_none()), (None, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_at_a_provider_that_never_forgives_needs_repair_at_once_without_the_old_token() {
    let r = rig_full("", "lost_response = \"needs_repair\"").await;
    r.advance_s(601);
    r.provider.fail_next(Fault::LoseAnswer);
    match r.engine.access_token(&r.c).await {
        Err(ChainError::NeedsRepair { code, .. }) => assert_eq!(code, RepairCode::RefreshResponseLost),
        other => panic!("expected refresh_response_lost: {other:?}"),
    }
    assert_eq!(*r.events.broken.lock().unwrap(), [RepairCode::RefreshResponseLost], "auto-recovery is told at once");
    r.advance_s(601);
    assert!(matches!(r.engine.access_token(&r.c).await, Err(ChainError::NeedsRepair { .. })));
    assert_eq!(r.provider.presented(), ["rt-0"], "the possibly dead token is never presented again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_authorization_of_a_broken_chain_is_announced_as_recovered() {
    let r = rig().await;
    r.engine.set_repair_code(&r.c, RepairCode::RefreshTokenExpired, "test").await.unwrap();
    assert_eq!(r.status().await, ChainStatus::NeedsRepair);
    let fresh = TokenSet {
        access_token: SecretString::from("at-new".to_string()),
        refresh_token: Some(SecretString::from("rt-new".to_string())),
        expires_in: None,
        scope: None,
    };
    let chain = r.engine.install(&r.c, "exact-online-nl", &fresh).await.unwrap();
    assert_eq!(chain.generation, 2);
    assert_eq!(*r.events.recovered.lock().unwrap(), 1);
    assert_eq!(text(&r.engine.access_token(&r.c).await.unwrap()), "at-new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_for_another_process_share_one_poll_of_the_store() {
    let r = rig().await;
    r.advance_s(700); // the access token has expired: every caller needs the other process's new one
    // Another process holds the lease.
    let key = chain_key(&r.c);
    let item = r.store.get(&key).await.unwrap().unwrap();
    let mut chain: ChainRecord = decode(&item).unwrap();
    chain.lease = Some(crate::records::Lease { owner: "other-process".into(), until_ms: r.clock.now_ms() + 30_000 });
    let leased = r.store.put(Put::new(key.clone(), encode(&chain), Condition::Version(item.version))).await.unwrap();
    let reads_before = r.store.reads.load(Ordering::SeqCst);
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (engine, c) = (r.engine.clone(), r.c.clone());
        callers.spawn(async move { engine.access_token(&c).await.map(|t| text(&t).to_string()) });
    }
    // A cancelled waiter leaves the others with their poller.
    let (engine, c) = (r.engine.clone(), r.c.clone());
    let cancelled = tokio::spawn(async move { engine.access_token(&c).await.map(|_| ()) });
    let waited = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancelled.abort();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(r.engine.polls.active(), 1, "one poller for the chain");
    // The other process writes its token and lets go of the lease (this process is not told).
    let fields = ContainerFields::of(&r.c);
    chain.sealed_access_token = Some(r.vault.seal(&fields.context(Field::AccessToken), b"at-other").await.unwrap());
    chain.access_expires_at_ms = Some(r.clock.now_ms() + 600_000);
    chain.lease = None;
    r.store.put(Put::new(key.clone(), encode(&chain), Condition::Version(leased))).await.unwrap();
    while let Some(got) = callers.join_next().await {
        assert_eq!(got.unwrap().unwrap(), "at-other", "every waiter gets the other process's token");
    }
    let wait_ms = waited.elapsed().as_millis() as u64;
    let reads = r.store.reads.load(Ordering::SeqCst) - reads_before;
    let polls = r.engine.poll_reads();
    // Each caller's first read (201), then one poll every 5-15 ms for everyone: about wait/10 ms, not 200x that.
    assert!(reads <= 201 + polls, "reads {reads}, polls {polls}");
    assert!(polls >= wait_ms / 20 && polls <= wait_ms / 4 + 2, "polls {polls} in {wait_ms} ms");
    assert!(reads < 201 + 200, "200 waiters polling alone would have made >= 200 reads per round: {reads}");
    assert_eq!(r.provider.requests(), 0, "nobody here called the provider");
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(r.engine.polls.active(), 0, "the poller went with its last waiter");
}

/// A session login (a password or API-token container whose profile's `credential_use` is `session_login`) is a
/// token cache with the chain protocol: one login for many callers, kept until `refresh_margin_s` before its
/// lifetime ends, then one login again. The HTTP side (the body template, the JSON pointer, the proxy applying
/// the session) is tested end to end in `tests/tests/e2e/credentials.rs` against a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_login_is_shared_by_concurrent_callers_and_renewed_before_its_lifetime_ends() {
    use crate::records::{ContainerRecord, CredentialKind, container_key};
    // The login endpoint: counts logins, answers session `s-N` for the right password only.
    let logins = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = logins.clone();
    let app = axum::Router::new().route(
        "/session/login",
        axum::routing::post(move |body: String| {
            let counter = counter.clone();
            async move {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if v["user"] != "ann" || v["password"] != "pw-PLANTED" {
                    return (StatusCode::UNAUTHORIZED, "{}".to_string());
                }
                tokio::time::sleep(Duration::from_millis(50)).await; // callers pile up behind the lease
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::OK, format!(r#"{{"result":{{"sessionId":"s-{n}"}}}}"#))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // One more provider table, after the engine's keys.
    let r = rig_with(&format!(
        "refresh_margin_s = 60\n[providers.peer-session]\napi_base_url = \"{base}/session\"\n\
         credential_use = {{ kind = \"session_login\", url = \"/login\", \
         body = '{{\"user\":\"{{username}}\",\"password\":\"{{password}}\"}}', \
         token = {{ json_pointer = \"/result/sessionId\" }}, lifetime_s = 600, \
         apply = {{ kind = \"header\", name = \"X-Session\" }} }}\n"
    ))
    .await;
    let c = ContainerRef { alias: Alias::parse("yuki").unwrap(), ..r.c.clone() };
    let fields = ContainerFields::of(&c);
    let sealed = r.vault.seal(&fields.context(Field::Password), b"pw-PLANTED").await.unwrap();
    let rec = ContainerRecord {
        container: c.clone(),
        kind: CredentialKind::Password,
        provider: Some("peer-session".into()),
        created_at_ms: T0,
        updated_at_ms: T0,
        username: Some("ann".into()),
        sealed_password: Some(sealed),
        sealed_api_token: None,
        client_id: None,
        sealed_client_secret: None,
        scopes: vec![],
        identity: None,
    };
    r.store.put(Put::new(container_key(&c), encode(&rec), Condition::Absent)).await.unwrap();

    let callers = |n: usize| {
        let (engine, c) = (r.engine.clone(), c.clone());
        async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (engine, c) = (engine.clone(), c.clone());
                set.spawn(async move { engine.grant_token(&c, "peer-session", CredentialKind::Password).await });
            }
            let mut got = Vec::new();
            while let Some(t) = set.join_next().await {
                got.push(text(&t.unwrap().unwrap()).to_string());
            }
            got
        }
    };
    assert!(callers(50).await.iter().all(|t| t == "s-1"), "the first callers share one login");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
    r.advance_s(500);
    assert!(callers(20).await.iter().all(|t| t == "s-1"), "kept while more than the margin is left");
    assert_eq!(logins.load(Ordering::SeqCst), 1);
    r.advance_s(60); // 40 s left, under the 60 s margin
    assert!(callers(50).await.iter().all(|t| t == "s-2"), "renewed once, before the end, for everybody");
    assert_eq!(logins.load(Ordering::SeqCst), 2);
    let chain = r.engine.chain(&c).await.unwrap().unwrap().0;
    assert_eq!(chain.status, ChainStatus::Healthy);
    let sealed = chain.sealed_access_token.expect("the session is stored");
    assert_ne!(sealed, "s-2", "sealed, not in the clear");
    let opened = r.vault.open_string(&fields.context(Field::AccessToken), &sealed).await.unwrap();
    assert_eq!(opened.expose_secret(), "s-2");
}
