//! The chain engine: hands out access tokens and keeps every refresh-token chain intact. Its promise: it never
//! breaks a chain itself — never two refreshes of one chain, never a received refresh token lost.
//!
//! The protocol, step by step, is in docs/ARCHITECTURE.md ("The chain protocol"); in short:
//! 1. A valid access token is decrypted and returned: one store read, no key service call when warm.
//! 2. Otherwise one caller takes the chain's **lease** with a conditional write on its version; everyone else
//!    waits for that caller's token (or keeps using the current one while it is still valid). Nobody but the
//!    lease holder ever calls the provider.
//! 3. The lease holder respects the provider's minimum interval between token requests.
//! 4. A refresh token received is **written before it is used**. If that write loses (our lease ran out and
//!    another caller took over), the token goes to the chain's rescue slot, which the next holder tries first.
//! 5. Failures are classified: the provider killed the chain (`needs_repair`, with a [`RepairCode`]), the app
//!    registration is wrong, the provider is down (keep the chain, back off), the answer was lost (try the old
//!    token once, then the rescue slot, then `needs_repair`).
//!
//! The parts: [`engine`](self) `engine.rs` — obtain, wait, lease (the loop every caller goes through);
//! `polls.rs` — one store poll per chain per process while another process refreshes;
//! `refresh.rs` — the lease holder's work: refresh, persist, rescue, release, activate, mark broken;
//! [`schedule`] — when the sweep wants a chain refreshed; `lifecycle.rs` — install, grant chains, revoke,
//! remove, set a repair code; [`error`](ChainError) — errors and repair codes; [`ChainEvents`] — the port
//! through which the engine announces a broken or recovered chain; `hooks.rs` — crash points for tests.

mod engine;
mod error;
mod events;
mod hooks;
mod lifecycle;
mod polls;
mod refresh;
pub mod schedule;
#[cfg(test)]
mod tests;
mod warm;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretString};

use crate::clock::{Clock, Millis};
use crate::config::{Config, EngineConfig};
use crate::keys::Vault;
use crate::provider::ProviderProfile;
use crate::records::{ChainRecord, ChainStatus, Transition};
use crate::secrets::Secrets;
use crate::store::Store;

pub use error::{ChainError, LOST_RETRYING, RepairCode};
pub use events::{ChainEvents, NoEvents};
pub use hooks::CrashPoint;
#[cfg(any(test, feature = "test-hooks"))]
pub use hooks::SimulatedCrash;

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
    /// Token requests repeated after a transient failure within the caller's retry budget.
    pub retries: AtomicU64,
    pub refreshes: AtomicU64,
    pub waits: AtomicU64,
    pub rescues_written: AtomicU64,
    pub rescues_used: AtomicU64,
    pub store_writes: AtomicU64,
}

impl ChainEngine {
    /// Store reads made by this process's pollers while other processes refreshed (one per chain and poll,
    /// however many waiters share it).
    pub fn poll_reads(&self) -> u64 {
        self.polls.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The chain engine of one process. Its ports are given, never built here: the store, the vault (over the
/// `Keys` port), the app registrations (`Secrets`), the clock, and where chain events go.
pub struct ChainEngine {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    secrets: Arc<dyn Secrets>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    http: reqwest::Client,
    events: Arc<dyn ChainEvents>,
    /// Refresh tokens received whose writes all failed (store down): tried first by this process.
    rescued_in_memory: Mutex<HashMap<String, Vec<(u64, SecretString)>>>,
    /// When this process last recorded a chain's use (at most one usage write per chain per minute).
    usage_noted: Mutex<HashMap<String, Millis>>,
    /// Wakes this process's waiters the moment a refresh of their chain is written (other processes poll).
    written: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// One store poll per chain while another process refreshes it, shared by this process's waiters.
    polls: polls::Polls,
    /// The warm path's decoded records and opened tokens (see [`warm`]).
    warm: warm::WarmChains,
    hooks: hooks::Hooks,
    pub stats: EngineStats,
}

impl ChainEngine {
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        secrets: Arc<dyn Secrets>,
        clock: Arc<dyn Clock>,
        config: Arc<Config>,
        http: reqwest::Client,
        events: Arc<dyn ChainEvents>,
    ) -> Self {
        Self {
            store,
            vault,
            secrets,
            clock,
            config,
            http,
            events,
            rescued_in_memory: Mutex::default(),
            usage_noted: Mutex::default(),
            written: Mutex::default(),
            polls: polls::Polls::default(),
            warm: Default::default(),
            hooks: hooks::Hooks::default(),
            stats: EngineStats::default(),
        }
    }

    /// Tests: make the next refresh stop at `point` as if the process had died there.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn crash_next_refresh_at(&self, point: CrashPoint) {
        self.hooks.arm(point);
    }

    fn engine_config(&self) -> &EngineConfig {
        &self.config.engine
    }

    fn profile(&self, name: &str) -> Result<&ProviderProfile, ChainError> {
        self.config.provider(name).ok_or_else(|| ChainError::UnknownProvider(name.to_string()))
    }
}

/// Seconds (as the config writes them) in milliseconds.
fn ms(s: f64) -> Millis {
    (s * 1000.0) as Millis
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
