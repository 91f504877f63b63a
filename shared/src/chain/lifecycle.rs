//! A chain's life outside the refresh path: installed by a completed authorization (or a hand-over), created on
//! first use for client-credentials and password grants, marked broken by auto-recovery's verdicts, revoked at the
//! provider and removed with its container.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::{AccessToken, ChainEngine, ChainError, RepairCode, ms, push_transition};
use crate::ids::ContainerRef;
use crate::keys::{ContainerFields, Field};
use crate::provider::oauth::{self, TokenSet};
use crate::records::*;
use crate::store::{Condition, Item, StoreError, WriteOp};

impl ChainEngine {
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
        let mut chain = ChainRecord {
            sealed_refresh_token,
            sealed_access_token: Some(sealed_at),
            access_expires_at_ms: Some(now + ms(tokens.expires_in.unwrap_or(profile.access_token_lifetime_s))),
            last_token_request_at_ms: Some(now),
            refresh_token_issued_at_ms: Some(now),
            last_refresh_at_ms: Some(now),
            history: previous.map(|(p, _)| p.history).unwrap_or_default(),
            ..ChainRecord::new(&profile.name, generation, None)
        };
        push_transition(&mut chain, now, ChainStatus::Healthy, "authorized");
        self.write_chain(c, &chain, Condition::None, true).await?;
        self.clear_rescues(c).await;
        if was_broken {
            self.events.recovered(c);
        }
        Ok(chain)
    }

    /// Marks a chain `needs_repair` with `code` from outside the refresh path (auto-recovery's verdicts).
    /// (One attempt: `mark_broken` logs a write that lost to a concurrent one; it never reports it.)
    pub async fn set_repair_code(&self, c: &ContainerRef, code: RepairCode, detail: &str) -> Result<(), ChainError> {
        let Some((chain, version)) = self.chain(c).await? else { return Ok(()) };
        match self.mark_broken(c, chain, version, code, detail).await {
            Err(ChainError::NeedsRepair { .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
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
                history: vec![Transition { at_ms: now, status: ChainStatus::Healthy, code: "credentials_set".into() }],
                ..ChainRecord::new(provider, 1, Some(kind))
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
