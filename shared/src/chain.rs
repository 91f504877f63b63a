//! The chain engine: hands out access tokens and keeps every refresh-token chain intact.
//!
//! The protocol (DESIGN.md, "The chain protocol"), in short:
//! 1. A valid access token is decrypted and returned: one store read, no key service call when warm.
//! 2. Otherwise one caller takes the chain's **lease** with a conditional write on its version; everyone
//!    else waits for that caller's token (or keeps using the current one while it is still valid). Nobody
//!    but the lease holder ever calls the provider.
//! 3. The lease holder respects the provider's minimum interval between token requests.
//! 4. A refresh token received is **written before it is used**. If that write loses (our lease ran out and
//!    another caller took over), the token goes to the chain's rescue slot, which the next holder tries first.
//! 5. Failures are classified: the provider killed the chain (`needs_repair`, with a precise code), the app
//!    registration is wrong, the provider is down (keep the chain, back off), the answer was lost (try the
//!    old token once, then the rescue slot, then `needs_repair`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::clock::{Clock, Millis};
use crate::config::{Config, EngineConfig};
use crate::ids::{ContainerRef, random_id};
use crate::keys::{ContainerFields, Field, KeyError, Vault};
use crate::oauth::{self, Grant, TokenError, TokenSet};
use crate::provider::{ProviderProfile, Rotation};
use crate::records::*;
use crate::secrets::Secrets;
use crate::store::{Condition, Item, Put, Store, StoreError, WriteOp};

/// An access token handed out to a caller.
pub struct AccessToken {
    pub token: SecretString,
    pub expires_at_ms: Millis,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken").field("expires_at_ms", &self.expires_at_ms).finish_non_exhaustive()
    }
}

/// Why no access token could be handed out. Every variant has a stable code (see `code()`).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("the container has no authorization yet")]
    NotAuthorized,
    #[error("the chain is broken ({code}) and needs a new authorization")]
    NeedsRepair { code: String, since_ms: Millis, provider_said: String },
    #[error("the provider allows a new token in {wait_s} s")]
    RateLimited { wait_s: u64 },
    #[error("the provider is unavailable; retry in {retry_after_s} s")]
    ProviderUnavailable { retry_after_s: u64, reason: String },
    #[error("another refresh of this chain is still running")]
    RefreshInProgress,
    #[error("the provider refused chainkeeper's app registration: {0}")]
    InvalidClient(String),
    #[error("no app registration for provider {0}")]
    NoApp(String),
    #[error("unknown provider profile {0}")]
    UnknownProvider(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ChainError {
    pub fn code(&self) -> &str {
        match self {
            Self::NotAuthorized => "not_authorized",
            Self::NeedsRepair { code, .. } => code,
            Self::RateLimited { .. } => "token_rate_limited",
            Self::ProviderUnavailable { .. } => "provider_unavailable",
            Self::RefreshInProgress => "refresh_in_progress",
            Self::InvalidClient(_) => "invalid_client",
            Self::NoApp(_) => "app_not_configured",
            Self::UnknownProvider(_) => "unknown_provider",
            Self::Store(_) => "store_unavailable",
            Self::Keys(_) | Self::Unexpected(_) => "internal_error",
        }
    }
}

/// Codes of a broken chain, with what a person should do about each.
pub fn repair_remediation(code: &str) -> &'static str {
    match code {
        "refresh_token_superseded" => {
            "The provider no longer accepts this chain's refresh token: the same app and user were authorized again elsewhere, or the provider revoked it. Renew the authorization of this container, and authorize each app and user in one container only."
        }
        "refresh_token_expired" => {
            "The refresh token expired unused. Renew the authorization of this container; chainkeeper keeps it alive from then on."
        }
        "refresh_response_lost" => {
            "A token request was sent but its answer never arrived, and the provider no longer accepts the previous refresh token. Renew the authorization of this container."
        }
        "refresh_token_missing" => {
            "The provider never gave this container a refresh token. Renew the authorization (ask for offline access)."
        }
        "credentials_rejected" => {
            "The provider refused the container's stored credentials (client id and secret, or username and password). Set correct ones with PUT …/credentials."
        }
        "recovery_credentials_invalid" => {
            "Auto-recovery could not sign in with the stored username, password or TOTP secret. Store correct auto-recovery credentials, or renew the authorization by hand."
        }
        _ => "The provider refused this chain's refresh token. Renew the authorization of this container.",
    }
}

/// What the caller wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// A token valid for longer than the refresh margin (the hand-out and the query proxy).
    Valid,
    /// Refresh only if the chain is due: its refresh token would expire unused, or it is in active use and its
    /// access token is about to expire (the scheduled sweep).
    IfDue,
    /// The platform refused the access token with this SHA-256: a valid token other than that one.
    Replace([u8; 32]),
}

/// Counters, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub token_requests: AtomicU64,
    pub refreshes: AtomicU64,
    pub waits: AtomicU64,
    pub rescues_written: AtomicU64,
    pub rescues_used: AtomicU64,
    pub store_writes: AtomicU64,
}

/// A fault to inject in tests: the engine behaves as if the process died at that step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// After taking the lease, before calling the provider.
    BeforeRequest,
    /// After the provider answered, before the new tokens are written.
    AfterAnswer,
    /// After writing the new tokens, before the activation call.
    AfterWrite,
}

pub struct ChainEngine {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    secrets: Arc<dyn Secrets>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    http: reqwest::Client,
    /// Refresh tokens received whose writes all failed (store down): tried first by this process.
    rescued_in_memory: Mutex<HashMap<String, Vec<(u64, SecretString)>>>,
    /// When this process last recorded a chain's use (at most one usage write per chain per minute).
    usage_noted: Mutex<HashMap<String, Millis>>,
    pub stats: EngineStats,
    crash_at: Mutex<Option<CrashPoint>>,
    /// Wakes this process's waiters the moment a refresh of their chain is written (other processes poll).
    written: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Tells the organisation (webhook) when a chain breaks or recovers.
    notifier: Arc<crate::notify::Notifier>,
    /// Called when a chain breaks (auto-recovery starts from here).
    on_broken: std::sync::OnceLock<Box<dyn Fn(ContainerRef) + Send + Sync>>,
}

/// Pretend the process died here (tests only).
#[derive(Debug, thiserror::Error)]
#[error("simulated crash at {0:?}")]
pub struct SimulatedCrash(pub CrashPoint);

fn ms(s: f64) -> Millis {
    (s * 1000.0) as Millis
}

impl ChainEngine {
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        secrets: Arc<dyn Secrets>,
        clock: Arc<dyn Clock>,
        config: Arc<Config>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            store: store.clone(),
            vault: vault.clone(),
            secrets,
            clock: clock.clone(),
            config: config.clone(),
            http: http.clone(),
            rescued_in_memory: Mutex::default(),
            usage_noted: Mutex::default(),
            stats: EngineStats::default(),
            crash_at: Mutex::new(None),
            written: Mutex::default(),
            notifier: Arc::new(crate::notify::Notifier::new(store, vault, clock, http)),
            on_broken: std::sync::OnceLock::new(),
        }
    }

    fn engine_config(&self) -> &EngineConfig {
        &self.config.engine
    }

    /// Tests: make the next refresh stop at `point` as if the process had died there.
    pub fn crash_next_refresh_at(&self, point: CrashPoint) {
        *self.crash_at.lock().unwrap() = Some(point);
    }

    fn crash_here(&self, point: CrashPoint) -> Result<(), ChainError> {
        let mut at = self.crash_at.lock().unwrap();
        if *at == Some(point) {
            *at = None;
            return Err(ChainError::Unexpected(SimulatedCrash(point).into()));
        }
        Ok(())
    }

    fn profile(&self, name: &str) -> Result<&ProviderProfile, ChainError> {
        self.config.provider(name).ok_or_else(|| ChainError::UnknownProvider(name.to_string()))
    }

    /// A valid access token for the container, refreshing through the protocol when needed.
    pub async fn access_token(&self, c: &ContainerRef) -> Result<AccessToken, ChainError> {
        let t = self.obtain(c, Want::Valid).await?;
        self.note_usage(c);
        t.ok_or(ChainError::RefreshInProgress)
    }

    /// The platform refused `rejected` although it looked valid: a different valid token (refreshing once,
    /// through the same protocol, when the chain still holds the rejected one).
    pub async fn replace_rejected(&self, c: &ContainerRef, rejected: &AccessToken) -> Result<AccessToken, ChainError> {
        self.obtain(c, Want::Replace(token_digest(&rejected.token))).await?.ok_or(ChainError::RefreshInProgress)
    }

    /// The chain record as stored (no secrets in it; the tokens are sealed).
    pub async fn chain(&self, c: &ContainerRef) -> Result<Option<(ChainRecord, u64)>, ChainError> {
        match self.store.get(&chain_key(c)).await? {
            None => Ok(None),
            Some(item) => Ok(Some((decode(&item)?, item.version))),
        }
    }

    /// The core loop. Returns `Ok(None)` only for `Want::IfDue` when nothing was due.
    pub async fn obtain(&self, c: &ContainerRef, want: Want) -> Result<Option<AccessToken>, ChainError> {
        let cfg = self.engine_config();
        let key = chain_key(c);
        let started = self.clock.now_ms();
        let deadline = started + ms(cfg.wait_s);
        // Tests run on a clock that may stand still: bound the wait in real time too.
        let wall_deadline = tokio::time::Instant::now() + Duration::from_secs_f64(cfg.wait_s);
        let mut waited = false;
        loop {
            let now = self.clock.now_ms();
            let Some(item) = self.store.get(&key).await? else { return Err(ChainError::NotAuthorized) };
            let chain: ChainRecord = decode(&item)?;
            if chain.status == ChainStatus::NeedsRepair {
                let e = chain.last_error.clone();
                return Err(ChainError::NeedsRepair {
                    code: e.as_ref().map_or("refresh_token_invalid".into(), |e| e.code.clone()),
                    since_ms: e.as_ref().map_or(now, |e| e.at_ms),
                    provider_said: e.map(|e| e.detail).unwrap_or_default(),
                });
            }
            let profile = self.profile(&chain.provider)?;
            let remaining = chain.access_expires_at_ms.map_or(-1, |e| e - now);
            let usable = remaining > 0 && chain.sealed_access_token.is_some();
            let in_use = match want {
                Want::Valid | Want::Replace(_) => true,
                Want::IfDue => self.in_active_use(c, now).await?,
            };
            let needed = match want {
                Want::Valid => remaining <= ms(cfg.refresh_margin_s),
                Want::IfDue => self.is_due(&chain, profile, now, in_use),
                Want::Replace(rejected) => {
                    remaining <= ms(cfg.refresh_margin_s)
                        || self.open_access(c, &chain).await.map_or(true, |t| token_digest(&t.token) == rejected)
                }
            };
            if usable && !needed {
                return self.open_access(c, &chain).await.map(Some);
            }
            if want == Want::IfDue && !needed {
                // Not due after all (say, no longer in active use): move it in the index so the sweep does not
                // look at it again before it is.
                let desired = self.next_due(&chain, profile, in_use).map(time_sk);
                if item.due.as_ref().map(|d| &d.sk) != desired.as_ref() {
                    let _ = self.write_chain(c, &chain, Condition::Version(item.version), in_use).await;
                }
                return Ok(None);
            }
            // A refresh is wanted. Is someone else doing it?
            if chain.lease.as_ref().is_some_and(|l| l.until_ms > now) {
                // Someone else is refreshing: wait for their token (it is due any moment), never call the
                // provider ourselves. Only if that takes too long, fall back to the current token while valid.
                if want == Want::IfDue {
                    return Ok(None);
                }
                if now >= deadline || tokio::time::Instant::now() >= wall_deadline {
                    if usable {
                        return self.open_access(c, &chain).await.map(Some);
                    }
                    return Err(ChainError::RefreshInProgress);
                }
                if !waited {
                    waited = true;
                    self.stats.waits.fetch_add(1, Ordering::Relaxed);
                }
                // Woken at once by a refresh in this process; a refresh in another process is seen by polling.
                let notify = self.written.lock().unwrap().entry(chain_pk(c)).or_default().clone();
                let notified = notify.notified();
                let pause = rand::thread_rng().gen_range(5..15);
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                }
                continue;
            }
            if let Some(until) = chain.backoff_until_ms.filter(|u| *u > now) {
                if usable {
                    return self.open_access(c, &chain).await.map(Some);
                }
                let reason = chain.last_error.as_ref().map(|e| e.detail.clone()).unwrap_or_default();
                return Err(ChainError::ProviderUnavailable { retry_after_s: secs_until(now, until), reason });
            }
            let earliest = chain.last_token_request_at_ms.map_or(i64::MIN, |t| t + profile.min_token_interval_ms());
            if now < earliest {
                if usable {
                    return self.open_access(c, &chain).await.map(Some);
                }
                if want == Want::IfDue {
                    return Ok(None);
                }
                return Err(ChainError::RateLimited { wait_s: secs_until(now, earliest) });
            }
            // Take the lease: one conditional write on the version we read.
            let owner = random_id();
            let mut leased = chain.clone();
            leased.lease = Some(Lease { owner: owner.clone(), until_ms: now + ms(cfg.lease_s) });
            leased.last_token_request_at_ms = Some(now);
            let before = Before { pending: chain.pending_request_at_ms, requested: chain.last_token_request_at_ms };
            leased.pending_request_at_ms = Some(now);
            match self.write_chain(c, &leased, Condition::Version(item.version), true).await {
                Ok(version) => {
                    return self.refresh_holding(c, leased, version, before, usable, in_use).await.map(Some);
                }
                Err(StoreError::Conflict) => continue, // someone else moved first: look again
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sweep rule: due when the refresh token would expire unused, or the chain is in active use and its
    /// access token is about to expire.
    fn is_due(&self, chain: &ChainRecord, p: &ProviderProfile, now: Millis, in_use: bool) -> bool {
        let cfg = self.engine_config();
        if let (Some(idle), Some(issued)) = (p.refresh_token_idle_expiry_s, chain.refresh_token_issued_at_ms)
            && now >= issued + ms(idle) - ms(cfg.keep_alive_margin_s.min(idle / 2.0))
        {
            return true;
        }
        let remaining = chain.access_expires_at_ms.map_or(-1, |e| e - now);
        in_use && remaining <= ms(cfg.refresh_margin_s) && chain.sealed_refresh_token.is_some()
    }

    /// When the sweep should look at this chain next: shortly before its access token expires while it is in
    /// active use, and in any case before its refresh token would expire unused.
    fn next_due(&self, chain: &ChainRecord, p: &ProviderProfile, in_use: bool) -> Option<Millis> {
        if chain.status != ChainStatus::Healthy || chain.sealed_refresh_token.is_none() {
            return None;
        }
        let cfg = self.engine_config();
        let mut due = None;
        if in_use {
            due = chain.access_expires_at_ms.map(|e| e - ms(cfg.refresh_margin_s));
            if let Some(t) = chain.last_token_request_at_ms {
                due = due.map(|d| d.max(t + p.min_token_interval_ms()));
            }
        }
        if let (Some(idle), Some(issued)) = (p.refresh_token_idle_expiry_s, chain.refresh_token_issued_at_ms) {
            let keep_alive = issued + ms(idle) - ms(cfg.keep_alive_margin_s.min(idle / 2.0));
            due = Some(due.map_or(keep_alive, |d: Millis| d.min(keep_alive)));
        }
        due
    }

    async fn in_active_use(&self, c: &ContainerRef, now: Millis) -> Result<bool, StoreError> {
        let used = match self.store.get(&usage_key(c)).await? {
            Some(item) => decode::<UsageRecord>(&item)?.last_used_at_ms,
            None => return Ok(false),
        };
        Ok(now - used <= ms(self.engine_config().active_use_window_s))
    }

    async fn write_chain(
        &self,
        c: &ContainerRef,
        chain: &ChainRecord,
        condition: Condition,
        in_use: bool,
    ) -> Result<u64, StoreError> {
        let profile = self.config.provider(&chain.provider);
        let mut put = Put::new(chain_key(c), encode(chain), condition);
        put.due = profile.and_then(|p| self.next_due(chain, p, in_use)).map(due_index_key);
        if chain.status == ChainStatus::NeedsRepair {
            put.repair = Some(repair_index_key(c));
        }
        self.stats.store_writes.fetch_add(1, Ordering::Relaxed);
        self.store.put(put).await
    }

    async fn open_access(&self, c: &ContainerRef, chain: &ChainRecord) -> Result<AccessToken, ChainError> {
        let fields = ContainerFields::of(c);
        let sealed = chain.sealed_access_token.as_deref().ok_or(ChainError::NotAuthorized)?;
        let token = self.vault.open_string(&fields.context(Field::AccessToken), sealed).await?;
        Ok(AccessToken { token, expires_at_ms: chain.access_expires_at_ms.unwrap_or(0) })
    }

    /// Registers what happens when a chain breaks (set once, by the services wiring).
    pub fn set_on_broken(&self, f: Box<dyn Fn(ContainerRef) + Send + Sync>) {
        let _ = self.on_broken.set(f);
    }

    pub fn notifier(&self) -> &Arc<crate::notify::Notifier> {
        &self.notifier
    }

    /// Marks a chain `needs_repair` with `code` from outside the refresh path (auto-recovery's verdicts).
    /// (One attempt: `mark_broken` logs a write that lost to a concurrent one; it never reports it.)
    pub async fn set_repair_code(&self, c: &ContainerRef, code: &str, detail: &str) -> Result<(), ChainError> {
        let Some((chain, version)) = self.chain(c).await? else { return Ok(()) };
        match self.mark_broken(c, chain, version, code, detail).await {
            Err(ChainError::NeedsRepair { .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn wake_waiters(&self, c: &ContainerRef) {
        if let Some(n) = self.written.lock().unwrap().remove(&chain_pk(c)) {
            n.notify_waiters();
        }
    }

    /// Records (at most once a minute per chain and process) that the chain's token was used.
    fn note_usage(&self, c: &ContainerRef) {
        let now = self.clock.now_ms();
        let pk = chain_pk(c);
        {
            let mut noted = self.usage_noted.lock().unwrap();
            if noted.get(&pk).is_some_and(|t| now - t < 60_000) {
                return;
            }
            if noted.len() > 100_000 {
                noted.clear();
            }
            noted.insert(pk, now);
        }
        let store = self.store.clone();
        let put = Put::new(usage_key(c), encode(&UsageRecord { last_used_at_ms: now }), Condition::None);
        tokio::spawn(async move {
            if let Err(e) = store.put(put).await {
                tracing::warn!(error = %e, "could not record chain usage");
            }
        });
    }

    /// The refresh tokens to try, best first: rescued ones (newer than the chain's), then the chain's own.
    async fn candidates(&self, c: &ContainerRef, chain: &ChainRecord) -> Result<Vec<Candidate>, ChainError> {
        if chain.grant.is_some() {
            return Ok(vec![Candidate {
                token: SecretString::from(String::new()),
                rescue_sk: None,
                seen: "grant".into(),
            }]);
        }
        let fields = ContainerFields::of(c);
        let mut out = Vec::new();
        if let Some(list) = self.rescued_in_memory.lock().unwrap().get(&chain_pk(c)) {
            for (generation, rt) in list.iter().rev() {
                if *generation == chain.generation {
                    out.push(Candidate { token: rt.clone(), rescue_sk: None, seen: String::new() });
                }
            }
        }
        let mut rescued = self.store.query(&chain_pk(c), RESCUE_PREFIX, 50).await?;
        rescued.reverse(); // newest first
        for item in rescued {
            let r: RescueRecord = decode(&item)?;
            if r.generation != chain.generation {
                continue;
            }
            let token = self.vault.open_string(&fields.context(Field::RefreshToken), &r.sealed_refresh_token).await?;
            out.push(Candidate { token, rescue_sk: Some(item.key.sk.clone()), seen: item.key.sk });
        }
        if let Some(sealed) = &chain.sealed_refresh_token {
            let token = self.vault.open_string(&fields.context(Field::RefreshToken), sealed).await?;
            out.push(Candidate { token, rescue_sk: None, seen: "chain".into() });
        }
        Ok(out)
    }

    async fn refresh_holding(
        &self,
        c: &ContainerRef,
        mut chain: ChainRecord,
        mut version: u64,
        before: Before,
        usable: bool,
        in_use: bool,
    ) -> Result<AccessToken, ChainError> {
        let previous_pending = before.pending;
        let profile = self.profile(&chain.provider)?.clone();
        // The refresh and password grants use the provider's app registration; the client-credentials grant uses
        // the container's own client id and secret.
        let app = match chain.grant {
            Some(CredentialKind::Oauth2ClientCredentials) => None,
            _ => match self.secrets.app(&profile.name).await? {
                Some(app) => Some(app),
                None => {
                    self.release(c, &mut chain, &mut version, None).await;
                    return Err(ChainError::NoApp(profile.name.clone()));
                }
            },
        };
        self.crash_here(CrashPoint::BeforeRequest)?;
        // A refresh token may only become usable once its access token was used (Exact's activation). The
        // previous refresh activated it right after writing; if that process died in between, do it now.
        if let (Some(url), true) = (&profile.activation_url, usable)
            && let Ok(current) = self.open_access(c, &chain).await
        {
            self.activate(&profile, url, &current.token).await;
        }
        let mut tried: Vec<String> = Vec::new();
        let mut last_invalid = String::new();
        let mut candidates: VecDeque<Candidate> = self.candidates(c, &chain).await?.into();
        if candidates.is_empty() {
            return self.mark_broken(c, chain, version, "refresh_token_missing", "no refresh token").await;
        }
        let timeout = Duration::from_secs_f64(self.engine_config().token_timeout_s);
        loop {
            let Some(candidate) = candidates.pop_front() else {
                // Every known token was refused. A rescue written meanwhile may still save the chain.
                let fresh: Vec<Candidate> = self
                    .candidates(c, &chain)
                    .await?
                    .into_iter()
                    .filter(|k| k.rescue_sk.is_some() && !tried.contains(&k.seen))
                    .collect();
                if !fresh.is_empty() {
                    candidates = fresh.into();
                    continue;
                }
                let code = if chain.grant.is_some() {
                    "credentials_rejected"
                } else if previous_pending.is_some() {
                    "refresh_response_lost"
                } else {
                    classify_invalid_grant(&last_invalid)
                };
                return self.mark_broken(c, chain, version, code, &last_invalid).await;
            };
            tried.push(candidate.seen.clone());
            self.stats.token_requests.fetch_add(1, Ordering::Relaxed);
            let result = match (chain.grant, &app) {
                (Some(kind), _) => self.run_grant(c, &profile, app.as_ref(), kind, timeout).await?,
                (None, Some(app)) => {
                    oauth::request_token(&self.http, &profile, app, Grant::RefreshToken(&candidate.token), timeout)
                        .await
                }
                (None, None) => return Err(ChainError::NoApp(profile.name.clone())),
            };
            match result {
                Ok(tokens) => {
                    self.crash_here(CrashPoint::AfterAnswer)?;
                    if candidate.rescue_sk.is_some() {
                        self.stats.rescues_used.fetch_add(1, Ordering::Relaxed);
                    }
                    return self.persist(c, chain, version, &profile, tokens, candidate.token, in_use).await;
                }
                Err(TokenError::InvalidGrant(d)) => {
                    last_invalid = d;
                }
                Err(TokenError::TooEarly(d)) => {
                    // The provider counts from its own last token: wait a full interval (at least a minute) from
                    // now, even when the profile's interval is set too short.
                    let wait = profile.min_token_interval_ms().max(60_000);
                    chain.backoff_until_ms = Some(self.clock.now_ms() + wait);
                    chain.pending_request_at_ms = previous_pending;
                    self.release(c, &mut chain, &mut version, Some(("token_rate_limited", d))).await;
                    if usable {
                        return self.open_access(c, &chain).await;
                    }
                    return Err(ChainError::RateLimited { wait_s: (wait / 1000) as u64 });
                }
                Err(TokenError::Transient { retry_after_s, reason, status }) => {
                    chain.last_token_request_at_ms = before.requested;
                    chain.pending_request_at_ms = previous_pending;
                    let backoff = self.backoff_ms(chain.failures, retry_after_s);
                    chain.failures += 1;
                    chain.backoff_until_ms = Some(self.clock.now_ms() + backoff);
                    let detail = format!("{}{reason}", status.map(|s| format!("HTTP {s}: ")).unwrap_or_default());
                    self.release(c, &mut chain, &mut version, Some(("provider_unavailable", detail.clone()))).await;
                    if usable {
                        return self.open_access(c, &chain).await;
                    }
                    return Err(ChainError::ProviderUnavailable {
                        retry_after_s: (backoff / 1000).max(1) as u64,
                        reason: detail,
                    });
                }
                Err(TokenError::Lost(reason)) => {
                    // The provider may have rotated the token. Keep `pending` so the next holder knows; tokens
                    // are tried again (rescue first, then the old one) after a short backoff.
                    let backoff = self.backoff_ms(chain.failures, None);
                    chain.failures += 1;
                    chain.backoff_until_ms = Some(self.clock.now_ms() + backoff);
                    self.release(c, &mut chain, &mut version, Some(("token_response_lost", reason.clone()))).await;
                    if usable {
                        return self.open_access(c, &chain).await;
                    }
                    return Err(ChainError::ProviderUnavailable {
                        retry_after_s: (backoff / 1000).max(1) as u64,
                        reason,
                    });
                }
                Err(TokenError::InvalidClient(d)) if chain.grant == Some(CredentialKind::Oauth2ClientCredentials) => {
                    // The container's own client id or secret is wrong: a person must replace it.
                    return self.mark_broken(c, chain, version, "credentials_rejected", &d).await;
                }
                Err(TokenError::InvalidClient(d)) => {
                    chain.last_token_request_at_ms = before.requested;
                    chain.pending_request_at_ms = previous_pending;
                    let backoff = ms(self.engine_config().max_backoff_s);
                    chain.backoff_until_ms = Some(self.clock.now_ms() + backoff);
                    self.release(c, &mut chain, &mut version, Some(("invalid_client", d.clone()))).await;
                    return Err(ChainError::InvalidClient(d));
                }
                Err(TokenError::Refused(d)) => {
                    chain.last_token_request_at_ms = before.requested;
                    chain.pending_request_at_ms = previous_pending;
                    let backoff = self.backoff_ms(chain.failures, None);
                    chain.failures += 1;
                    chain.backoff_until_ms = Some(self.clock.now_ms() + backoff);
                    self.release(c, &mut chain, &mut version, Some(("token_request_refused", d.clone()))).await;
                    return Err(ChainError::ProviderUnavailable {
                        retry_after_s: (backoff / 1000).max(1) as u64,
                        reason: d,
                    });
                }
            }
        }
    }

    fn backoff_ms(&self, failures: u32, retry_after_s: Option<u64>) -> Millis {
        let cfg = self.engine_config();
        let base = ms(cfg.backoff_s) * (1i64 << failures.min(10));
        let jitter = rand::thread_rng().gen_range(0..=base / 5 + 1);
        let wanted = (base + jitter).min(ms(cfg.max_backoff_s));
        wanted.max(retry_after_s.map_or(0, |s| s as Millis * 1000))
    }

    /// Writes the new tokens (before anything uses them), then activates them.
    #[allow(clippy::too_many_arguments)] // split up with the chain engine (docs/ARCHITECTURE.md)
    async fn persist(
        &self,
        c: &ContainerRef,
        mut chain: ChainRecord,
        version: u64,
        profile: &ProviderProfile,
        tokens: TokenSet,
        used_refresh_token: SecretString,
        in_use: bool,
    ) -> Result<AccessToken, ChainError> {
        let now = self.clock.now_ms();
        let fields = ContainerFields::of(c);
        let rotated = tokens.refresh_token.is_some();
        let refresh_token = tokens.refresh_token.clone().unwrap_or(used_refresh_token);
        let sealed_rt = if chain.grant.is_some() {
            String::new() // grants are simply run again: no refresh token to keep
        } else {
            self.vault.seal(&fields.context(Field::RefreshToken), refresh_token.expose_secret().as_bytes()).await?
        };
        let sealed_at = self
            .vault
            .seal(&fields.context(Field::AccessToken), tokens.access_token.expose_secret().as_bytes())
            .await?;
        let expires_at = now + ms(tokens.expires_in.unwrap_or(profile.access_token_lifetime_s));
        chain.sealed_refresh_token = (!sealed_rt.is_empty()).then(|| sealed_rt.clone());
        chain.sealed_access_token = Some(sealed_at.clone());
        chain.access_expires_at_ms = Some(expires_at);
        if rotated || chain.refresh_token_issued_at_ms.is_none() || profile.refresh_rotation != Rotation::Static {
            chain.refresh_token_issued_at_ms = Some(now);
        }
        chain.pending_request_at_ms = None;
        chain.lease = None;
        chain.backoff_until_ms = None;
        chain.failures = 0;
        chain.last_error = None;
        chain.last_refresh_at_ms = Some(now);
        chain.refresh_count += 1;
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);

        let mut attempt = 0u32;
        loop {
            match self.write_chain(c, &chain, Condition::Version(version), in_use).await {
                Ok(_) => {
                    self.wake_waiters(c);
                    self.rescued_in_memory.lock().unwrap().remove(&chain_pk(c));
                    self.clear_rescues(c).await;
                    break;
                }
                Err(StoreError::Conflict) => {
                    // Our lease ran out and someone else holds the chain now. Our refresh token may be the only
                    // valid one: keep it in the rescue slot for the next holder.
                    self.rescue(c, &chain, sealed_rt, sealed_at, expires_at, &refresh_token).await;
                    break;
                }
                Err(StoreError::Unavailable(e)) => {
                    attempt += 1;
                    if attempt >= 6 {
                        tracing::error!(error = %e, container = %c, "cannot write new tokens; keeping them in the rescue slot");
                        self.rescue(c, &chain, sealed_rt, sealed_at, expires_at, &refresh_token).await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
            }
        }
        self.crash_here(CrashPoint::AfterWrite)?;
        if let Some(url) = &profile.activation_url {
            self.activate(profile, url, &tokens.access_token).await;
        }
        Ok(AccessToken { token: tokens.access_token, expires_at_ms: expires_at })
    }

    async fn rescue(
        &self,
        c: &ContainerRef,
        chain: &ChainRecord,
        sealed_rt: String,
        sealed_at: String,
        expires_at: Millis,
        refresh_token: &SecretString,
    ) {
        let now = self.clock.now_ms();
        let record = RescueRecord {
            generation: chain.generation,
            sealed_refresh_token: sealed_rt,
            sealed_access_token: sealed_at,
            access_expires_at_ms: expires_at,
            received_at_ms: now,
        };
        let key = rescue_key(c, now, &random_id());
        self.stats.rescues_written.fetch_add(1, Ordering::Relaxed);
        self.stats.store_writes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.store.put(Put::new(key, encode(&record), Condition::Absent)).await {
            tracing::error!(error = %e, container = %c, "rescue slot unwritable; keeping the refresh token in memory");
            self.rescued_in_memory
                .lock()
                .unwrap()
                .entry(chain_pk(c))
                .or_default()
                .push((chain.generation, refresh_token.clone()));
        }
    }

    async fn clear_rescues(&self, c: &ContainerRef) {
        if let Ok(items) = self.store.query(&chain_pk(c), RESCUE_PREFIX, 50).await
            && !items.is_empty()
        {
            let ops = items.into_iter().map(|i| WriteOp::Delete { key: i.key, condition: Condition::None }).collect();
            let _ = self.store.transact(ops).await;
        }
    }

    async fn activate(&self, profile: &ProviderProfile, url: &str, access: &SecretString) {
        let Ok(url) = profile.endpoint(url) else { return };
        let res = self
            .http
            .get(url)
            .bearer_auth(access.expose_secret())
            .header("Accept", "application/json")
            .timeout(Duration::from_secs_f64(self.engine_config().token_timeout_s))
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = r.status().as_u16(), provider = %profile.name, "activation call refused"),
            Err(e) => tracing::warn!(error = %e, provider = %profile.name, "activation call failed"),
        }
    }

    /// Gives the lease back, recording an error if any. Best effort: a lease that is not released runs out.
    async fn release(
        &self,
        c: &ContainerRef,
        chain: &mut ChainRecord,
        version: &mut u64,
        error: Option<(&str, String)>,
    ) {
        let now = self.clock.now_ms();
        chain.lease = None;
        if let Some((code, detail)) = error {
            chain.last_error = Some(ChainErrorInfo { code: code.to_string(), at_ms: now, detail });
        }
        match self.write_chain(c, chain, Condition::Version(*version), true).await {
            Ok(v) => {
                *version = v;
                self.wake_waiters(c);
            }
            Err(e) => tracing::warn!(error = %e, container = %c, "could not release the lease; it will run out"),
        }
    }

    async fn mark_broken(
        &self,
        c: &ContainerRef,
        mut chain: ChainRecord,
        version: u64,
        code: &str,
        provider_said: &str,
    ) -> Result<AccessToken, ChainError> {
        let now = self.clock.now_ms();
        chain.lease = None;
        chain.pending_request_at_ms = None;
        chain.status = ChainStatus::NeedsRepair;
        chain.last_error =
            Some(ChainErrorInfo { code: code.to_string(), at_ms: now, detail: provider_said.to_string() });
        push_transition(&mut chain, now, ChainStatus::NeedsRepair, code);
        tracing::warn!(container = %c, code, "chain needs repair");
        match self.write_chain(c, &chain, Condition::Version(version), false).await {
            Ok(_) => {
                self.wake_waiters(c);
                self.notifier.container_event("chain.needs_repair", c, Some(code));
                if let Some(f) = self.on_broken.get() {
                    f(c.clone());
                }
            }
            Err(e) => tracing::warn!(error = %e, container = %c, "could not record the broken chain"),
        }
        Err(ChainError::NeedsRepair { code: code.to_string(), since_ms: now, provider_said: provider_said.to_string() })
    }

    /// Starts a new chain from a fresh token set (a completed authorization). Replaces any earlier chain of the
    /// container; callers of the old chain keep their still-valid token until they ask again.
    pub async fn install(
        &self,
        c: &ContainerRef,
        provider: &str,
        tokens: &TokenSet,
    ) -> Result<ChainRecord, ChainError> {
        let profile = self.profile(provider)?.clone();
        let now = self.clock.now_ms();
        let fields = ContainerFields::of(c);
        let previous = self.chain(c).await?;
        let generation = previous.as_ref().map_or(1, |(p, _)| p.generation + 1);
        let sealed_refresh_token = match &tokens.refresh_token {
            Some(rt) => {
                Some(self.vault.seal(&fields.context(Field::RefreshToken), rt.expose_secret().as_bytes()).await?)
            }
            None => None,
        };
        let sealed_at = self
            .vault
            .seal(&fields.context(Field::AccessToken), tokens.access_token.expose_secret().as_bytes())
            .await?;
        let was_broken = previous.as_ref().is_some_and(|(p, _)| p.status == ChainStatus::NeedsRepair);
        let mut history = previous.map(|(p, _)| p.history).unwrap_or_default();
        let mut chain = ChainRecord {
            provider: profile.name.clone(),
            status: ChainStatus::Healthy,
            generation,
            grant: None,
            sealed_refresh_token,
            sealed_access_token: Some(sealed_at),
            access_expires_at_ms: Some(now + ms(tokens.expires_in.unwrap_or(profile.access_token_lifetime_s))),
            last_token_request_at_ms: Some(now),
            refresh_token_issued_at_ms: Some(now),
            pending_request_at_ms: None,
            lease: None,
            backoff_until_ms: None,
            failures: 0,
            last_error: None,
            history: Vec::new(),
            last_refresh_at_ms: Some(now),
            refresh_count: 0,
        };
        std::mem::swap(&mut chain.history, &mut history);
        push_transition(&mut chain, now, ChainStatus::Healthy, "authorized");
        self.write_chain(c, &chain, Condition::None, true).await?;
        self.clear_rescues(c).await;
        if was_broken {
            self.notifier.container_event("chain.recovered", c, None);
        }
        Ok(chain)
    }

    /// Runs a container's client-credentials or password grant with its stored credentials.
    async fn run_grant(
        &self,
        c: &ContainerRef,
        profile: &ProviderProfile,
        app: Option<&crate::config::AppRegistration>,
        kind: CredentialKind,
        timeout: Duration,
    ) -> Result<Result<TokenSet, TokenError>, ChainError> {
        let item = self.store.get(&container_key(c)).await?.ok_or(ChainError::NotAuthorized)?;
        let rec: ContainerRecord = decode(&item)?;
        let fields = ContainerFields::of(c);
        let missing = || TokenError::InvalidGrant("the container has no complete credentials".into());
        Ok(match kind {
            CredentialKind::Oauth2ClientCredentials => {
                let (Some(client_id), Some(sealed)) = (rec.client_id.clone(), rec.sealed_client_secret.as_deref())
                else {
                    return Ok(Err(missing()));
                };
                let secret = self.vault.open_string(&fields.context(Field::ClientSecret), sealed).await?;
                let own =
                    crate::config::AppRegistration { client_id, client_secret: secret, redirect_uri: String::new() };
                oauth::request_token(
                    &self.http,
                    profile,
                    &own,
                    Grant::ClientCredentials { scopes: &rec.scopes },
                    timeout,
                )
                .await
            }
            _ => {
                let (Some(username), Some(sealed), Some(app)) =
                    (rec.username.as_deref(), rec.sealed_password.as_deref(), app)
                else {
                    return Ok(Err(missing()));
                };
                let password = self.vault.open_string(&fields.context(Field::Password), sealed).await?;
                let grant = Grant::Password { username, password: &password, scopes: &rec.scopes };
                oauth::request_token(&self.http, profile, app, grant, timeout).await
            }
        })
    }

    /// The token cache of a client-credentials or password container: created on first use, then the same
    /// protocol as a refresh-token chain (one request at a time, the provider's interval, backoff).
    pub async fn grant_token(
        &self,
        c: &ContainerRef,
        provider: &str,
        kind: CredentialKind,
    ) -> Result<AccessToken, ChainError> {
        if self.chain(c).await?.is_none() {
            let now = self.clock.now_ms();
            let chain = ChainRecord {
                provider: provider.to_string(),
                status: ChainStatus::Healthy,
                generation: 1,
                grant: Some(kind),
                sealed_refresh_token: None,
                sealed_access_token: None,
                access_expires_at_ms: None,
                last_token_request_at_ms: None,
                refresh_token_issued_at_ms: None,
                pending_request_at_ms: None,
                lease: None,
                backoff_until_ms: None,
                failures: 0,
                last_error: None,
                history: vec![Transition { at_ms: now, status: ChainStatus::Healthy, code: "credentials_set".into() }],
                last_refresh_at_ms: None,
                refresh_count: 0,
            };
            match self.write_chain(c, &chain, Condition::Absent, false).await {
                Ok(_) | Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.access_token(c).await
    }

    /// Revokes the chain's refresh token (else its access token) at the provider, where the profile has a
    /// revocation endpoint. `Ok(None)` when there was nothing to revoke or no endpoint.
    pub async fn revoke_at_provider(&self, c: &ContainerRef) -> Result<Option<bool>, ChainError> {
        let Some((chain, _)) = self.chain(c).await? else { return Ok(None) };
        let profile = self.profile(&chain.provider)?.clone();
        if profile.revocation_url.is_none() || chain.grant == Some(CredentialKind::Oauth2ClientCredentials) {
            return Ok(None);
        }
        let Some(app) = self.secrets.app(&profile.name).await? else { return Ok(None) };
        let fields = ContainerFields::of(c);
        let (sealed, field, hint) = match (&chain.sealed_refresh_token, &chain.sealed_access_token) {
            (Some(rt), _) => (rt, Field::RefreshToken, "refresh_token"),
            (None, Some(at)) => (at, Field::AccessToken, "access_token"),
            (None, None) => return Ok(None),
        };
        let token = self.vault.open_string(&fields.context(field), sealed).await?;
        let timeout = Duration::from_secs_f64(self.engine_config().token_timeout_s);
        match oauth::revoke_token(&self.http, &profile, &app, &token, hint, timeout).await {
            Ok(()) => Ok(Some(true)),
            Err(e) => {
                tracing::warn!(error = %e, container = %c, "revocation at the provider failed");
                Ok(Some(false))
            }
        }
    }

    /// Removes a container's chain and everything kept beside it.
    pub async fn remove(&self, c: &ContainerRef) -> Result<(), ChainError> {
        let items: Vec<Item> = self.store.query(&chain_pk(c), "", 100).await?;
        let ops: Vec<WriteOp> =
            items.into_iter().map(|i| WriteOp::Delete { key: i.key, condition: Condition::None }).collect();
        if !ops.is_empty() {
            self.store.transact(ops).await?;
        }
        self.rescued_in_memory.lock().unwrap().remove(&chain_pk(c));
        Ok(())
    }
}

/// What the chain said before we took the lease, restored when the provider issued nothing.
struct Before {
    pending: Option<Millis>,
    requested: Option<Millis>,
}

struct Candidate {
    token: SecretString,
    rescue_sk: Option<String>,
    seen: String,
}

fn push_transition(chain: &mut ChainRecord, at_ms: Millis, status: ChainStatus, code: &str) {
    chain.history.push(Transition { at_ms, status, code: code.to_string() });
    if chain.history.len() > 20 {
        let extra = chain.history.len() - 20;
        chain.history.drain(..extra);
    }
}

fn secs_until(now: Millis, at: Millis) -> u64 {
    (((at - now).max(0) + 999) / 1000).max(1) as u64
}

fn token_digest(t: &SecretString) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(t.expose_secret().as_bytes()).into()
}

/// The provider's words for a dead refresh token, turned into a stable code.
pub fn classify_invalid_grant(description: &str) -> &'static str {
    let d = description.to_ascii_lowercase();
    if d.contains("expired") {
        "refresh_token_expired"
    } else if d.contains("old refresh token")
        || d.contains("revoked")
        || d.contains("obsolete")
        || d.contains("superseded")
    {
        "refresh_token_superseded"
    } else {
        "refresh_token_invalid"
    }
}
