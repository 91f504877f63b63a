//! What follows a chain event (the application's side of the engine's `ChainEvents` port): the organisation's
//! webhook hears of it, and a broken chain gets an auto-recovery attempt right away (where credentials are stored).

use std::sync::Arc;

use crate::chain::{ChainEvents, RepairCode};
use crate::ids::ContainerRef;

use super::handoff::HandOff;
use super::webhooks::Webhooks;

pub struct OnChainEvent {
    webhooks: Webhooks,
    /// Starts the recovery: in-process, or through the recovery queue (`app::handoff`).
    handoff: Arc<HandOff>,
}

impl OnChainEvent {
    pub fn new(webhooks: Webhooks, handoff: Arc<HandOff>) -> Self {
        Self { webhooks, handoff }
    }
}

impl ChainEvents for OnChainEvent {
    fn needs_repair(&self, c: &ContainerRef, code: RepairCode) {
        self.webhooks.chain_event("chain.needs_repair", c, Some(code));
        self.handoff.chain_broke(c, format!("the chain broke ({})", code.code()));
    }

    fn recovered(&self, c: &ContainerRef) {
        self.webhooks.chain_event("chain.recovered", c, None);
    }
}
