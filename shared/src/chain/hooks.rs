//! Test hooks: make the engine behave as if its process died at a given step. Only built with the cargo feature
//! `test-hooks` (which only the tests crate turns on) or in this crate's own tests; otherwise a crash point
//! compiles to nothing.

use super::ChainError;

/// A step of a refresh at which a test may stop the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// After taking the lease, before calling the provider.
    BeforeRequest,
    /// After the provider answered, before the new tokens are written.
    AfterAnswer,
    /// After writing the new tokens, before the activation call.
    AfterWrite,
}

/// Pretend the process died here.
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Debug, thiserror::Error)]
#[error("simulated crash at {0:?}")]
pub struct SimulatedCrash(pub CrashPoint);

/// The armed crash point, if any.
#[derive(Default)]
pub(super) struct Hooks {
    #[cfg(any(test, feature = "test-hooks"))]
    crash_at: std::sync::Mutex<Option<CrashPoint>>,
}

impl Hooks {
    #[cfg(any(test, feature = "test-hooks"))]
    pub(super) fn arm(&self, point: CrashPoint) {
        *self.crash_at.lock().unwrap() = Some(point);
    }

    /// Fails (once) when the armed point is reached.
    #[inline]
    pub(super) fn crash_here(&self, point: CrashPoint) -> Result<(), ChainError> {
        #[cfg(any(test, feature = "test-hooks"))]
        {
            let mut at = self.crash_at.lock().unwrap();
            if *at == Some(point) {
                *at = None;
                return Err(ChainError::Unexpected(SimulatedCrash(point).into()));
            }
        }
        let _ = point;
        Ok(())
    }
}
