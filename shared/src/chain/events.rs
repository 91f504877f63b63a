//! The engine's outbound port for what happens to a chain. The engine only announces; the application decides
//! what follows (a webhook to the organisation, an auto-recovery run). Injected, so the engine builds no
//! notifier of its own and depends on nothing above it.

use super::RepairCode;
use crate::ids::ContainerRef;

pub trait ChainEvents: Send + Sync + 'static {
    /// The chain of `c` broke and needs a person (`code` says why). Called after the broken state is written.
    /// MUST return at once: anything slow (delivery, recovery) runs in the background.
    fn needs_repair(&self, c: &ContainerRef, code: RepairCode);
    /// A broken chain of `c` works again (a new authorization installed it). Same rules.
    fn recovered(&self, c: &ContainerRef);
}

/// Tells nobody (unit tests, tools).
pub struct NoEvents;

impl ChainEvents for NoEvents {
    fn needs_repair(&self, _: &ContainerRef, _: RepairCode) {}
    fn recovered(&self, _: &ContainerRef) {}
}
