//! What follows a chain event (the application's side of the engine's `ChainEvents` port): the organisation's
//! webhook hears of it, and a broken chain gets an auto-recovery attempt right away (where credentials are stored).

use std::sync::{OnceLock, Weak};

use crate::chain::{ChainEvents, RepairCode};
use crate::ids::ContainerRef;

use super::recovery::Recovery;
use super::webhooks::Webhooks;

pub struct OnChainEvent {
    webhooks: Webhooks,
    /// Set once the application is built (recovery needs the engine that holds this handler: a weak link, so
    /// the two do not keep each other alive).
    recovery: OnceLock<Weak<Recovery>>,
}

impl OnChainEvent {
    pub fn new(webhooks: Webhooks) -> Self {
        Self { webhooks, recovery: OnceLock::new() }
    }
    pub(super) fn recover_with(&self, recovery: Weak<Recovery>) {
        let _ = self.recovery.set(recovery);
    }
}

impl ChainEvents for OnChainEvent {
    fn needs_repair(&self, c: &ContainerRef, code: RepairCode) {
        self.webhooks.chain_event("chain.needs_repair", c, Some(code));
        if let Some(recovery) = self.recovery.get().and_then(Weak::upgrade) {
            let c = c.clone();
            tokio::spawn(async move {
                if let Err(e) = recovery.recover_container(&c, "the chain broke").await {
                    tracing::warn!(error = %e, container = %c, "auto-recovery failed to run");
                }
            });
        }
    }

    fn recovered(&self, c: &ContainerRef) {
        self.webhooks.chain_event("chain.recovered", c, None);
    }
}
