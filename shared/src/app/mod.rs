//! The use cases: everything chainkeeper does, whoever asks (the HTTP API, the schedules, the CLI, tests).
//!
//! Each area is a small struct whose fields are the ports and services it uses (so its dependencies are in its
//! definition), with one method per use case. A use case validates what the domain requires, acts through the
//! ports, writes the audit entry, and returns its own `thiserror` enum; it knows nothing of HTTP (the API maps
//! those errors to problem documents in `api::errors`). Names arrive already parsed (`ids`).
//!
//! | area | use cases |
//! | --- | --- |
//! | [`orgs`] | organisations (with their keys) and databases |
//! | [`containers`] | containers, their credentials, their status, the repairs list |
//! | [`authorization`] | start, complete (code exchange, identity, single-instance identifier), hand-over |
//! | [`handout`] | an access token for the caller's own use |
//! | [`identifiers`] | the platform's single-instance identifier registry: find a holder, release |
//! | [`query`] | the query proxy's core (path checks, forwarding, one retry, cache), the OData feed |
//! | [`stored_answers`] | the query proxy's cache kept in the store (profiles with `cache_in_store`), sealed |
//! | [`governor`] | the rate-limit governor: the platform's call budget per app and company, in the store |
//! | [`recovery`] | auto-recovery credentials, runs on break, on request and on schedule |
//! | [`api_tokens`] | authenticate a caller, issue, list, revoke |
//! | [`audit`] | the audit log |
//! | [`console`] | the web console's sign-in links, OIDC sign-in and sessions (hashed ids, expiry, CSRF token) |
//! | [`webhooks`] | register, remove, deliver signed events |
//! | [`webhook_target`] | where a webhook may go: the address classifier, the check at registration and delivery |
//! | [`sweep`] | the scheduled keep-alive and ahead-of-expiry refreshes |
//! | [`backup`] | export an organisation to a file sealed under its key; import such a file |
//! | [`events`] | what follows a chain event (webhook, auto-recovery) |
//! | [`handoff`] | how a broken chain's recovery starts: in-process, or through the recovery queue (AWS) |
//! | [`lookup`] | reading the organisation tree with typed "not found" errors |

pub mod api_tokens;
pub mod audit;
pub mod authorization;
pub mod background;
pub mod backup;
pub mod console;
pub mod console_oidc;
pub mod containers;
pub mod events;
pub mod governor;
pub mod handoff;
pub mod handout;
pub mod identifiers;
pub mod lookup;
pub mod orgs;
pub mod query;
pub mod recovery;
pub mod stored_answers;
pub mod sweep;
pub mod verified_tokens;
pub mod webhook_target;
pub mod webhooks;

use std::sync::Arc;

use crate::chain::ChainEngine;
use crate::clock::Clock;
use crate::config::Config;
use crate::handoff::{RecoveryQueue, SweepQueue};
use crate::keys::{CacheLimits, Keys, Vault};
use crate::secrets::Secrets;
use crate::store::Store;

/// The ports and process-wide clients the use cases are built from, one of each per process. A use case's
/// constructor keeps the ones it uses: its fields say which.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn Store>,
    /// Seals and opens secrets over the `Keys` port.
    pub vault: Arc<Vault>,
    pub secrets: Arc<dyn Secrets>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    /// The one HTTP client of the process (redirects off).
    pub http: reqwest::Client,
    /// Where work nobody waits for runs (webhook deliveries, recovery hand-offs).
    pub background: Arc<background::Background>,
}

/// The queues that hand work to other Lambda functions (none in `serve`: the work runs in-process).
#[derive(Default, Clone)]
pub struct Queues {
    /// Broken chains, to the `recover` function.
    pub recovery: Option<Arc<dyn RecoveryQueue>>,
    /// The sweep's batches of chains due, to `refresh` workers.
    pub sweep: Option<Arc<dyn SweepQueue>>,
}

/// The application: every use case, built once per process over the ports the wiring chose.
pub struct App {
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub engine: Arc<ChainEngine>,
    pub audit: audit::AuditLog,
    pub api_tokens: api_tokens::ApiTokens,
    pub console: console::ConsoleSessions,
    pub console_oidc: console_oidc::ConsoleOidc,
    pub orgs: orgs::Orgs,
    pub webhooks: webhooks::Webhooks,
    pub containers: containers::Containers,
    pub authorization: authorization::Authorization,
    pub handout: handout::HandOut,
    pub identifiers: identifiers::Identifiers,
    pub query: query::QueryProxy,
    pub recovery: Arc<recovery::Recovery>,
    /// How a recovery starts (in-process, or the recovery queue); [`handoff::HandOff::settle`] before a Lambda
    /// function answers.
    pub handoff: Arc<handoff::HandOff>,
    /// Work nobody waits for; [`background::Background::settle`] before a Lambda function answers.
    pub background: Arc<background::Background>,
    pub sweep: sweep::Sweep,
    pub backup: backup::Backup,
}

impl App {
    /// Builds every use case over the given ports: the data-key vault over `keys`, one HTTP client for the
    /// process, the chain engine with this application's chain-event handling.
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<dyn Keys>,
        secrets: Arc<dyn Secrets>,
        clock: Arc<dyn Clock>,
        config: Config,
    ) -> Arc<Self> {
        Self::with_queues(store, keys, secrets, clock, config, Queues::default(), background::Background::detached())
    }

    /// [`App::new`] whose broken chains are handed to the recovery queue and whose sweep hands its batches to the
    /// sweep queue (the Lambda functions in AWS) instead of doing both in-process, and whose background work runs
    /// in `background` (tracked in a Lambda function).
    pub fn with_queues(
        store: Arc<dyn Store>,
        keys: Arc<dyn Keys>,
        secrets: Arc<dyn Secrets>,
        clock: Arc<dyn Clock>,
        config: Config,
        queues: Queues,
        background: background::Background,
    ) -> Arc<Self> {
        let vault = Arc::new(Vault::new(keys, clock.clone(), CacheLimits::default()));
        let http = crate::provider::oauth::http_client();
        let background = Arc::new(background);
        let p = Ports { store, vault, secrets, clock, config: Arc::new(config), http, background };
        let audit = audit::AuditLog::new(&p);
        let webhooks = webhooks::Webhooks::new(&p, audit.clone());
        let handoff = Arc::new(handoff::HandOff::new(queues.recovery, p.background.clone()));
        let on_event = Arc::new(events::OnChainEvent::new(webhooks.clone(), handoff.clone()));
        let engine = Arc::new(ChainEngine::new(
            p.store.clone(),
            p.vault.clone(),
            p.secrets.clone(),
            p.clock.clone(),
            p.config.clone(),
            p.http.clone(),
            on_event.clone(),
        ));
        let api_tokens = api_tokens::ApiTokens::new(&p, audit.clone());
        let containers = containers::Containers::new(&p, engine.clone(), audit.clone());
        let authorization = authorization::Authorization::new(&p, engine.clone(), audit.clone(), containers.clone());
        let recovery = Arc::new(recovery::Recovery::new(
            &p,
            engine.clone(),
            audit.clone(),
            authorization.clone(),
            webhooks.clone(),
        ));
        handoff.recover_with(Arc::downgrade(&recovery));
        let console = console::ConsoleSessions::new(&p, audit.clone());
        Arc::new(Self {
            orgs: orgs::Orgs::new(&p, audit.clone(), api_tokens.clone()),
            handout: handout::HandOut::new(&p, engine.clone()),
            identifiers: identifiers::Identifiers::new(&p, audit.clone()),
            query: query::QueryProxy::new(&p, engine.clone()),
            sweep: sweep::Sweep::new(&p, engine.clone(), queues.sweep),
            backup: backup::Backup::new(&p, audit.clone()),
            console: console.clone(),
            console_oidc: console_oidc::ConsoleOidc::new(&p, console),
            background: p.background.clone(),
            config: p.config,
            clock: p.clock,
            store: p.store,
            vault: p.vault,
            engine,
            audit,
            api_tokens,
            webhooks,
            containers,
            authorization,
            recovery,
            handoff,
        })
    }
}
