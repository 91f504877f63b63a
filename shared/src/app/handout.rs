//! Token hand-out (`POST …/token`): a valid access token for the caller's own use, through the chain engine.
//! Client-credentials and password containers get their token cache created on first use.

use std::sync::Arc;

use crate::chain::{AccessToken, ChainEngine, ChainError};
use crate::config::Config;
use crate::ids::ContainerRef;
use crate::provider::CredentialUse;
use crate::records::{CredentialKind, chain_key};
use crate::store::Store;

use super::Ports;
use super::api_tokens::{AuthError, RevocationCheck};
use super::lookup::{self, LookupError};

#[derive(Debug, thiserror::Error)]
pub enum HandOutError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{c}: {source}")]
    Chain { c: ContainerRef, source: ChainError },
    #[error("{0} has no authorization yet")]
    NotAuthorized(ContainerRef),
    #[error("{c} has no {needs} yet")]
    CredentialsMissing { c: ContainerRef, needs: &'static str },
    #[error("{c} uses {kind:?} credentials, which have no access token")]
    NoAccessToken { c: ContainerRef, kind: CredentialKind },
    /// The caller's API token, whose revocation was read with the chain.
    #[error(transparent)]
    Caller(#[from] AuthError),
}

#[derive(Clone)]
pub struct HandOut {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    engine: Arc<ChainEngine>,
}

impl HandOut {
    pub fn new(p: &Ports, engine: Arc<ChainEngine>) -> Self {
        Self { store: p.store.clone(), config: p.config.clone(), engine }
    }

    /// A valid access token for `c`. The warm path is one chain read; only a container without a chain is looked
    /// up further, to say why.
    // A debug span: this is the warm path, where an info-level span would cost every request an allocation.
    #[tracing::instrument(level = "debug", skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn access_token(&self, c: &ContainerRef) -> Result<AccessToken, HandOutError> {
        let got = self.engine.access_token(c).await;
        self.after_first_read(c, got).await
    }

    /// As [`Self::access_token`] for a caller whose token's revocation is still to be looked up: the chain and
    /// the revocation come from one store read, and a revoked caller gets nothing (before any refresh).
    #[tracing::instrument(level = "debug", skip_all, fields(org = %c.org, container = %c.local_name()))]
    pub async fn access_token_for(
        &self,
        c: &ContainerRef,
        caller: &RevocationCheck,
    ) -> Result<AccessToken, HandOutError> {
        let chain_key = chain_key(c);
        let mut read = self.store.get_many(&[caller.key(), &chain_key]).await.map_err(AuthError::Store)?;
        let chain = read.pop().flatten();
        caller.settle(read.pop().flatten())?;
        let got = self.engine.access_token_from(c, chain).await;
        self.after_first_read(c, got).await
    }

    /// The answer, given the engine's: a container without a chain is looked up further, to say why (or to get
    /// the first token of a client-credentials or password container).
    async fn after_first_read(
        &self,
        c: &ContainerRef,
        got: Result<AccessToken, ChainError>,
    ) -> Result<AccessToken, HandOutError> {
        let chain_error = |source| HandOutError::Chain { c: c.clone(), source };
        match got {
            Ok(t) => Ok(t),
            Err(ChainError::NotAuthorized) => {
                let (rec, _) = lookup::container(&*self.store, c).await?;
                let profile = rec.provider.as_deref().and_then(|p| self.config.provider(p));
                let credential_use = profile.and_then(|p| p.credential_use.as_ref());
                let needs = match (rec.kind, credential_use) {
                    (CredentialKind::Oauth2Code, _) => return Err(HandOutError::NotAuthorized(c.clone())),
                    (CredentialKind::Oauth2ClientCredentials, _) => "client_id and client_secret",
                    (CredentialKind::Oauth2Password, _) => "username and password",
                    // A session login's token is handed out like an access token.
                    (CredentialKind::Password | CredentialKind::ApiToken, Some(CredentialUse::SessionLogin(_))) => {
                        "the credentials its login takes"
                    }
                    (kind, _) => return Err(HandOutError::NoAccessToken { c: c.clone(), kind }),
                };
                if !super::containers::missing_credentials(&rec, credential_use).is_empty() {
                    return Err(HandOutError::CredentialsMissing { c: c.clone(), needs });
                }
                let provider = rec.provider.clone().unwrap_or_default();
                self.engine.grant_token(c, &provider, rec.kind).await.map_err(chain_error)
            }
            Err(e) => Err(chain_error(e)),
        }
    }
}
