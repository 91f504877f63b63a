//! Obtain, wait, lease: the loop every caller goes through. A valid token is returned from one store read; a
//! refresh is done by exactly one lease holder while the others wait for its token.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;

use super::refresh::Before;
use super::schedule::{is_due, next_due};
use super::{AccessToken, ChainEngine, ChainError, RepairCode, Want, ms, secs_until, token_digest};
use crate::clock::Millis;
use crate::ids::{ContainerRef, random_id};
use crate::keys::{ContainerFields, Field};
use crate::records::*;
use crate::store::{Condition, Item, Put, StoreError};

impl ChainEngine {
    /// A valid access token for the container, refreshing through the protocol when needed.
    pub async fn access_token(&self, c: &ContainerRef) -> Result<AccessToken, ChainError> {
        let t = self.obtain(c, Want::Valid).await?;
        self.note_usage(c);
        t.ok_or(ChainError::RefreshInProgress)
    }

    /// As [`Self::access_token`], starting from the chain item the caller has just read (`None`: absent) at
    /// `records::chain_key(c)` — read together with something else in one store read (the token hand-out reads
    /// the caller's revocation with it). Any further read the protocol needs goes to the store as usual.
    pub async fn access_token_from(&self, c: &ContainerRef, read: Option<Item>) -> Result<AccessToken, ChainError> {
        let t = self.obtain_from(c, Want::Valid, Some(read)).await?;
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

    /// A token as `want` asks, through the core loop. Returns `Ok(None)` only for `Want::IfDue` when nothing was
    /// due.
    pub async fn obtain(&self, c: &ContainerRef, want: Want) -> Result<Option<AccessToken>, ChainError> {
        self.obtain_from(c, want, None).await
    }

    /// The core loop; its first read of the chain is `first_read` when the caller has made it.
    async fn obtain_from(
        &self,
        c: &ContainerRef,
        want: Want,
        mut first_read: Option<Option<Item>>,
    ) -> Result<Option<AccessToken>, ChainError> {
        let cfg = self.engine_config();
        let key = chain_key(c);
        let started = self.clock.now_ms();
        let deadline = started + ms(cfg.wait_s);
        // Tests run on a clock that may stand still: bound the wait in real time too.
        let wall_deadline = tokio::time::Instant::now() + Duration::from_secs_f64(cfg.wait_s);
        let mut waited = false;
        // This waiter's subscription to the chain's shared poll, once it waits for another process.
        let mut poll = None;
        loop {
            let now = self.clock.now_ms();
            let read = match first_read.take() {
                Some(read) => read,
                None => self.store.get(&key).await?,
            };
            let Some(item) = read else { return Err(ChainError::NotAuthorized) };
            let version = item.version;
            let due = item.due.clone();
            let chain = self.warm.decode(item)?;
            if chain.status == ChainStatus::NeedsRepair {
                let e = chain.last_error.clone();
                return Err(ChainError::NeedsRepair {
                    code: e.as_ref().map_or(RepairCode::RefreshTokenInvalid, |e| RepairCode::parse(&e.code)),
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
                Want::IfDue => is_due(&chain, profile, cfg, now, in_use),
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
                let desired = next_due(&chain, profile, cfg, in_use).map(time_sk);
                if due.as_ref().map(|d| &d.sk) != desired.as_ref() {
                    let _ = self.write_chain(c, &chain, Condition::Version(version), in_use).await;
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
                // Woken at once by a refresh in this process; a refresh in another process is seen by the
                // process's one poller of this chain, whose reads all its waiters share (`polls.rs`).
                let pk = chain_pk(c);
                let notify = self.written.lock().unwrap().entry(pk.clone()).or_default().clone();
                let notified = notify.notified();
                let rx = poll.get_or_insert_with(|| self.polls.subscribe(&self.store, &pk, &key));
                tokio::select! {
                    _ = notified => {}
                    changed = rx.changed() => match changed {
                        // What the poller saw is this waiter's next read (a failed poll: read for itself).
                        Ok(()) => first_read = rx.borrow_and_update().clone(),
                        // The poller is gone (it never stops while subscribed): poll alone this once.
                        Err(_) => {
                            poll = None;
                            let pause = rand::thread_rng().gen_range(5..15);
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                    },
                }
                continue;
            }
            if let Some(until) = chain.backoff_until_ms.filter(|u| *u > now) {
                if usable {
                    return self.open_access(c, &chain).await.map(Some);
                }
                let retry_after_s = secs_until(now, until);
                if chain.last_error.as_ref().is_some_and(|e| e.code == super::LOST_RETRYING) {
                    return Err(ChainError::ResponseLostRetrying { retry_after_s });
                }
                let reason = chain.last_error.as_ref().map(|e| e.detail.clone()).unwrap_or_default();
                return Err(ChainError::ProviderUnavailable { retry_after_s, reason });
            }
            let earliest = chain.last_token_request_at_ms.map_or(i64::MIN, |t| t + profile.min_token_interval_ms());
            if now < earliest {
                // The provider's minimum interval: nothing is sent. A caller with a valid token keeps it (no
                // refresh was attempted, nothing is counted); otherwise the caller or the sweep has to wait.
                if usable {
                    return self.open_access(c, &chain).await.map(Some);
                }
                crate::metrics::rate_limit_wait(&profile.name);
                crate::metrics::refresh_outcome(&profile.name, crate::metrics_names::OUTCOME_RATE_LIMITED);
                if want == Want::IfDue {
                    return Ok(None);
                }
                return Err(ChainError::RateLimited { wait_s: secs_until(now, earliest) });
            }
            // Take the lease: one conditional write on the version we read. (No more waiting: this caller's
            // subscription to the chain's poll goes.)
            poll = None;
            let owner = random_id();
            let mut leased = ChainRecord::clone(&chain);
            leased.lease = Some(Lease { owner: owner.clone(), until_ms: now + ms(cfg.lease_s) });
            leased.last_token_request_at_ms = Some(now);
            let before = Before { pending: chain.pending_request_at_ms, requested: chain.last_token_request_at_ms };
            leased.pending_request_at_ms = Some(now);
            match self.write_chain(c, &leased, Condition::Version(version), true).await {
                Ok(version) => {
                    return self.refresh_holding(c, leased, version, before, usable, in_use).await.map(Some);
                }
                Err(StoreError::Conflict) => continue, // someone else moved first: look again
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) async fn in_active_use(&self, c: &ContainerRef, now: Millis) -> Result<bool, StoreError> {
        let used = match self.store.get(&usage_key(c)).await? {
            Some(item) => decode::<UsageRecord>(&item)?.last_used_at_ms,
            None => return Ok(false),
        };
        Ok(now - used <= ms(self.engine_config().active_use_window_s))
    }

    pub(super) async fn write_chain(
        &self,
        c: &ContainerRef,
        chain: &ChainRecord,
        condition: Condition,
        in_use: bool,
    ) -> Result<u64, StoreError> {
        let profile = self.config.provider(&chain.provider);
        let mut put = Put::new(chain_key(c), encode(chain), condition);
        let shards = self.engine_config().due_shards;
        put.due = profile
            .and_then(|p| next_due(chain, p, self.engine_config(), in_use))
            .map(|at| due_index_key(c, at, shards));
        if chain.status == ChainStatus::NeedsRepair {
            put.repair = Some(repair_index_key(c));
        }
        self.stats.store_writes.fetch_add(1, Ordering::Relaxed);
        self.store.put(put).await
    }

    pub(super) async fn open_access(&self, c: &ContainerRef, chain: &ChainRecord) -> Result<AccessToken, ChainError> {
        let sealed = chain.sealed_access_token.as_deref().ok_or(ChainError::NotAuthorized)?;
        let pk = chain_pk(c);
        let token = match self.warm.opened(&pk, sealed) {
            Some(token) => token,
            None => {
                let fields = ContainerFields::of(c);
                let token = self.vault.open_string(&fields.context(Field::AccessToken), sealed).await?;
                self.warm.remember_opened(&pk, sealed, &token);
                token
            }
        };
        Ok(AccessToken { token, expires_at_ms: chain.access_expires_at_ms.unwrap_or(0) })
    }

    pub(super) fn wake_waiters(&self, c: &ContainerRef) {
        if let Some(n) = self.written.lock().unwrap().remove(&chain_pk(c)) {
            n.notify_waiters();
        }
    }

    /// Records (at most once a minute per chain and process) that the chain's token was used.
    pub(super) fn note_usage(&self, c: &ContainerRef) {
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
}
