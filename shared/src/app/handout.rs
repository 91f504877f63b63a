//! Token hand-out (`POST …/token`): a valid access token for the caller's own use, through the chain engine.
//! Client-credentials and password containers get their token cache created on first use.

use std::sync::Arc;

use crate::chain::{AccessToken, ChainEngine, ChainError};
use crate::ids::ContainerRef;
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
    engine: Arc<ChainEngine>,
}

impl HandOut {
    pub fn new(p: &Ports, engine: Arc<ChainEngine>) -> Self {
        Self { store: p.store.clone(), engine }
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
                let needs = match rec.kind {
                    CredentialKind::Oauth2Code => return Err(HandOutError::NotAuthorized(c.clone())),
                    CredentialKind::Oauth2ClientCredentials => "client_id and client_secret",
                    CredentialKind::Oauth2Password => "username and password",
                    kind => return Err(HandOutError::NoAccessToken { c: c.clone(), kind }),
                };
                let complete = match rec.kind {
                    CredentialKind::Oauth2ClientCredentials => {
                        rec.client_id.is_some() && rec.sealed_client_secret.is_some()
                    }
                    _ => rec.username.is_some() && rec.sealed_password.is_some(),
                };
                if !complete {
                    return Err(HandOutError::CredentialsMissing { c: c.clone(), needs });
                }
                let provider = rec.provider.clone().unwrap_or_default();
                self.engine.grant_token(c, &provider, rec.kind).await.map_err(chain_error)
            }
            Err(e) => Err(chain_error(e)),
        }
    }
}
