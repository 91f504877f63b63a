//! The lease holder's work: refresh (try the rescued tokens first, then the chain's own), persist the answer
//! before anything uses it, keep it in the rescue slot when that write loses, activate it, release the lease with
//! what happened, or mark the chain broken with a [`RepairCode`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use super::{AccessToken, ChainEngine, ChainError, LOST_RETRYING, RepairCode, ms, push_transition, secs_until};
use crate::clock::Millis;
use crate::ids::{ContainerRef, random_id};
use crate::keys::{ContainerFields, Field};
use crate::metrics;
use crate::metrics_names as names;
use crate::provider::oauth::{self, Grant, TokenError, TokenSet};
use crate::provider::{LostResponse, ProviderProfile, Rotation};
use crate::records::*;
use crate::store::{Condition, Put, StoreError, WriteOp};

use super::hooks::CrashPoint;

/// What the chain said before we took the lease, restored when the provider issued nothing.
pub(super) struct Before {
    pub(super) pending: Option<Millis>,
    pub(super) requested: Option<Millis>,
}

/// The lease holder's retries of transient failures within a caller's budget (real time: the provider's answers
/// take real time whatever the engine's clock says).
struct Retries {
    started: std::time::Instant,
    budget: Duration,
    done: u32,
}

impl Retries {
    fn new(budget_s: f64) -> Self {
        Self { started: std::time::Instant::now(), budget: Duration::from_secs_f64(budget_s.max(0.0)), done: 0 }
    }

    /// The pause before the next try, or `None` when it would not fit in the budget (a provider's `Retry-After`
    /// longer than what is left ends the retries at once). The pause doubles per retry; its jitter (half to
    /// one and a half of it) keeps many chains' retries from arriving together.
    fn next_pause(&mut self, cfg: &crate::config::EngineConfig, retry_after_s: Option<u64>) -> Option<Duration> {
        let base = cfg.retry_first_s * f64::from(1u32 << self.done.min(16));
        let jittered = base * rand::thread_rng().gen_range(0.5..1.5);
        let pause = Duration::from_secs_f64(jittered).max(Duration::from_secs(retry_after_s.unwrap_or(0)));
        if self.started.elapsed() + pause > self.budget {
            return None;
        }
        self.done += 1;
        Some(pause)
    }
}

/// A refresh token to try, and where it came from.
struct Candidate {
    token: SecretString,
    rescue_sk: Option<String>,
    seen: String,
}

impl ChainEngine {
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

    pub(super) async fn refresh_holding(
        &self,
        c: &ContainerRef,
        mut chain: ChainRecord,
        mut version: u64,
        before: Before,
        usable: bool,
        in_use: bool,
    ) -> Result<AccessToken, ChainError> {
        let mut previous_pending = before.pending;
        // This lease's own request was sent and its answer lost; the same token is then tried once more at once.
        let mut lost_here = false;
        let profile = self.profile(&chain.provider)?.clone();
        // The refresh and password grants use the provider's app registration; the client-credentials grant uses
        // the container's own client id and secret.
        let app = match chain.grant {
            // Client credentials use the container's own client; session logins (password and API-token
            // containers) need no app at all.
            Some(CredentialKind::Oauth2ClientCredentials | CredentialKind::Password | CredentialKind::ApiToken) => None,
            _ => match self.secrets.app(&profile.name).await? {
                Some(app) => Some(app),
                None => {
                    self.release(c, &mut chain, &mut version, None).await;
                    return Err(ChainError::NoApp(profile.name.clone()));
                }
            },
        };
        self.hooks.crash_here(CrashPoint::BeforeRequest)?;
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
        if previous_pending.is_some() && profile.lost_response == LostResponse::NeedsRepair {
            // An earlier request's outcome is unknown (its holder died): this provider's previous token may be
            // dead, and is not presented again. Rescued tokens still are.
            candidates.retain(|k| k.seen != "chain");
            if candidates.is_empty() {
                return self.mark_broken(c, chain, version, RepairCode::RefreshResponseLost, "").await;
            }
        }
        if candidates.is_empty() {
            return self.mark_broken(c, chain, version, RepairCode::RefreshTokenMissing, "no refresh token").await;
        }
        let timeout = Duration::from_secs_f64(self.engine_config().token_timeout_s);
        // A caller with a valid token gets it at once; retries inline are for callers that have nothing else.
        let mut retries = Retries::new(if usable { 0.0 } else { self.engine_config().retry_budget_s });
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
                    RepairCode::CredentialsRejected
                } else if previous_pending.is_some() {
                    RepairCode::RefreshResponseLost
                } else {
                    RepairCode::from_invalid_grant(&last_invalid)
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
                    self.hooks.crash_here(CrashPoint::AfterAnswer)?;
                    if candidate.rescue_sk.is_some() {
                        self.stats.rescues_used.fetch_add(1, Ordering::Relaxed);
                    }
                    metrics::refresh_outcome(&profile.name, names::OUTCOME_OK);
                    return self.persist(c, chain, version, &profile, tokens, candidate.token, in_use).await;
                }
                Err(TokenError::InvalidGrant(d)) => {
                    last_invalid = d;
                }
                Err(TokenError::TooEarly(_)) if lost_here => {
                    // The answer to the probe: the lost request was processed (the provider's interval runs from
                    // it) and the previous token is still accepted. Retry with it when the interval has passed.
                    let reason = "the provider processed the refresh whose answer was lost".to_string();
                    return self.wait_after_lost(c, chain, version, &profile, usable, reason).await;
                }
                Err(TokenError::TooEarly(d)) => {
                    // The provider counts from its own last token: wait a full interval (at least a minute) from
                    // now, even when the profile's interval is set too short.
                    let wait = profile.min_token_interval_ms().max(60_000);
                    metrics::refresh_outcome(&profile.name, names::OUTCOME_RATE_LIMITED);
                    metrics::rate_limit_wait(&profile.name);
                    chain.backoff_until_ms = Some(self.clock.now_ms() + wait);
                    chain.pending_request_at_ms = previous_pending;
                    self.release(c, &mut chain, &mut version, Some(("token_rate_limited", d))).await;
                    if usable {
                        return self.open_access(c, &chain).await;
                    }
                    return Err(ChainError::RateLimited { wait_s: (wait / 1000) as u64 });
                }
                Err(TokenError::Transient { retry_after_s, reason, status }) => {
                    // Nothing changed at the provider: the same token again, after a jittered pause, while the
                    // caller's budget lasts. Waiters keep waiting for this lease holder meanwhile.
                    if let Some(pause) = retries.next_pause(self.engine_config(), retry_after_s) {
                        tracing::debug!(container = %c, status = ?status, pause_ms = pause.as_millis() as u64, "transient provider failure; retrying");
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                        candidates.push_front(candidate);
                        continue;
                    }
                    metrics::refresh_outcome(&profile.name, names::OUTCOME_TRANSIENT);
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
                Err(TokenError::Lost(reason)) if chain.grant.is_some() => {
                    // A grant is simply run again: nothing of the chain depends on the lost answer.
                    metrics::refresh_outcome(&profile.name, names::OUTCOME_LOST);
                    let backoff = self.backoff_ms(chain.failures, None);
                    chain.failures += 1;
                    chain.pending_request_at_ms = None;
                    chain.backoff_until_ms = Some(self.clock.now_ms() + backoff);
                    self.release(c, &mut chain, &mut version, Some(("token_response_lost", reason.clone()))).await;
                    return Err(ChainError::ProviderUnavailable {
                        retry_after_s: (backoff / 1000).max(1) as u64,
                        reason,
                    });
                }
                Err(TokenError::Lost(reason)) => {
                    // The provider may have rotated the token and we never saw the new one.
                    metrics::refresh_outcome(&profile.name, names::OUTCOME_LOST);
                    if profile.lost_response == LostResponse::NeedsRepair {
                        // The previous token is dead if the request was processed, and presenting it again may
                        // cost the grant: a new authorization (auto-recovery where it is set) repairs it.
                        return self.mark_broken(c, chain, version, RepairCode::RefreshResponseLost, &reason).await;
                    }
                    if !lost_here {
                        // Probe at once with the same token. A request that was never processed (a reset before
                        // the provider read it looks the same to us) is answered now; one that was processed is
                        // answered `invalid_grant` where the previous token died with it (the chain is then
                        // marked `refresh_response_lost` at once, instead of after the interval) or, where the
                        // provider keeps it usable, with its minimum-interval refusal. Never worse than waiting.
                        lost_here = true;
                        previous_pending = previous_pending.or(chain.pending_request_at_ms);
                        candidates.push_front(candidate);
                        continue;
                    }
                    return self.wait_after_lost(c, chain, version, &profile, usable, reason).await;
                }
                Err(TokenError::InvalidClient(d)) if chain.grant == Some(CredentialKind::Oauth2ClientCredentials) => {
                    // The container's own client id or secret is wrong: a person must replace it.
                    return self.mark_broken(c, chain, version, RepairCode::CredentialsRejected, &d).await;
                }
                Err(TokenError::InvalidClient(d)) => {
                    // The app registration is wrong: the chain is kept and tried again once it is fixed.
                    metrics::refresh_outcome(&profile.name, names::OUTCOME_TRANSIENT);
                    chain.last_token_request_at_ms = before.requested;
                    chain.pending_request_at_ms = previous_pending;
                    let backoff = ms(self.engine_config().max_backoff_s);
                    chain.backoff_until_ms = Some(self.clock.now_ms() + backoff);
                    self.release(c, &mut chain, &mut version, Some(("invalid_client", d.clone()))).await;
                    return Err(ChainError::InvalidClient(d));
                }
                Err(TokenError::Refused(d)) => {
                    metrics::refresh_outcome(&profile.name, names::OUTCOME_TRANSIENT);
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

    /// A lost answer that the provider may forgive: keep `pending` (so the next holder knows) and the previous
    /// token, release, and retry with it (rescues first) once the provider's minimum interval since the lost
    /// request has passed. Callers meanwhile get their still-valid token or `refresh_response_lost_retrying`.
    async fn wait_after_lost(
        &self,
        c: &ContainerRef,
        mut chain: ChainRecord,
        mut version: u64,
        profile: &ProviderProfile,
        usable: bool,
        reason: String,
    ) -> Result<AccessToken, ChainError> {
        let now = self.clock.now_ms();
        let requested = chain.last_token_request_at_ms.unwrap_or(now);
        let backoff = self.backoff_ms(chain.failures, None);
        chain.failures += 1;
        let until = (requested + profile.min_token_interval_ms()).max(now + backoff);
        chain.backoff_until_ms = Some(until);
        self.release(c, &mut chain, &mut version, Some((LOST_RETRYING, reason))).await;
        if usable {
            return self.open_access(c, &chain).await;
        }
        Err(ChainError::ResponseLostRetrying { retry_after_s: secs_until(now, until) })
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
        self.hooks.crash_here(CrashPoint::AfterWrite)?;
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

    pub(super) async fn clear_rescues(&self, c: &ContainerRef) {
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

    pub(super) async fn mark_broken(
        &self,
        c: &ContainerRef,
        mut chain: ChainRecord,
        version: u64,
        code: RepairCode,
        provider_said: &str,
    ) -> Result<AccessToken, ChainError> {
        let now = self.clock.now_ms();
        chain.lease = None;
        chain.pending_request_at_ms = None;
        chain.status = ChainStatus::NeedsRepair;
        chain.last_error =
            Some(ChainErrorInfo { code: code.code().to_string(), at_ms: now, detail: provider_said.to_string() });
        push_transition(&mut chain, now, ChainStatus::NeedsRepair, code.code());
        tracing::warn!(container = %c, code = code.code(), "chain needs repair");
        metrics::refresh_outcome(&chain.provider, names::OUTCOME_NEEDS_REPAIR);
        match self.write_chain(c, &chain, Condition::Version(version), false).await {
            Ok(_) => {
                self.wake_waiters(c);
                self.events.needs_repair(c, code);
            }
            Err(e) => tracing::warn!(error = %e, container = %c, "could not record the broken chain"),
        }
        Err(ChainError::NeedsRepair { code, since_ms: now, provider_said: provider_said.to_string() })
    }

    /// Runs a container's client-credentials or password grant with its stored credentials.
    pub(super) async fn run_grant(
        &self,
        c: &ContainerRef,
        profile: &ProviderProfile,
        app: Option<&crate::provider::AppRegistration>,
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
                    crate::provider::AppRegistration { client_id, client_secret: secret, redirect_uri: String::new() };
                oauth::request_token(
                    &self.http,
                    profile,
                    &own,
                    Grant::ClientCredentials { scopes: &rec.scopes },
                    timeout,
                )
                .await
            }
            CredentialKind::Password | CredentialKind::ApiToken => {
                let Some(crate::provider::CredentialUse::SessionLogin(login)) = &profile.credential_use else {
                    return Ok(Err(TokenError::Refused("the profile has no session login".into())));
                };
                let mut password = None;
                if let Some(sealed) = rec.sealed_password.as_deref() {
                    password = Some(self.vault.open_string(&fields.context(Field::Password), sealed).await?);
                }
                let mut api_token = None;
                if let Some(sealed) = rec.sealed_api_token.as_deref() {
                    api_token = Some(self.vault.open_string(&fields.context(Field::ApiToken), sealed).await?);
                }
                if password.is_none() && api_token.is_none() {
                    return Ok(Err(missing()));
                }
                let values = crate::provider::credential_use::LoginValues {
                    username: rec.username.as_deref(),
                    password: password.as_ref(),
                    api_token: api_token.as_ref(),
                };
                let url = match profile.endpoint(&login.url) {
                    Ok(u) => u,
                    Err(e) => return Ok(Err(TokenError::Refused(e.to_string()))),
                };
                login.login(&self.http, &url, &values, timeout).await
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
}
