//! Single-flight store reads while another process refreshes a chain: one poll per chain per process, shared
//! by all of that process's waiters.
//!
//! The first waiter of a chain starts its poller (a task of its own, so a waiter that is cancelled never
//! leaves the others without one); later waiters subscribe to what it sees. The poller reads the chain every
//! 5–15 ms and publishes each read on a `watch` channel; it stops, and its entry goes, once the last waiter has
//! dropped its subscription. A refresh in this process still wakes the waiters at once (the engine's
//! `written` notifications); polling is only how a refresh in another process is seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::store::{Item, Key, Store};

/// What one poll saw: `Some(read)` (the item, or `None` if absent); `None` if the read failed (a waiter then
/// reads for itself and meets the error).
pub(super) type Seen = Option<Option<Item>>;

type Pollers = Arc<Mutex<HashMap<String, Arc<watch::Sender<Seen>>>>>;

#[derive(Default)]
pub(super) struct Polls {
    pollers: Pollers,
    /// Store reads made by pollers (for tests and benchmarks).
    pub(super) reads: Arc<AtomicU64>,
}

impl Polls {
    /// A subscription to the chain's poll (started now if this is its first waiter). The receiver's current
    /// value counts as seen: `changed()` answers with the next poll.
    pub(super) fn subscribe(&self, store: &Arc<dyn Store>, pk: &str, key: &Key) -> watch::Receiver<Seen> {
        let mut pollers = self.pollers.lock().unwrap();
        if let Some(tx) = pollers.get(pk) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        pollers.insert(pk.to_string(), tx.clone());
        let (store, pollers_ref, reads) = (store.clone(), self.pollers.clone(), self.reads.clone());
        let (pk, key) = (pk.to_string(), key.clone());
        tokio::spawn(async move {
            loop {
                let pause = rand::thread_rng().gen_range(5..15);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                {
                    // Under the map's lock, so no waiter subscribes to a poller that is about to stop.
                    let mut pollers = pollers_ref.lock().unwrap();
                    if tx.receiver_count() == 0 {
                        if pollers.get(&pk).is_some_and(|p| Arc::ptr_eq(p, &tx)) {
                            pollers.remove(&pk);
                        }
                        return;
                    }
                }
                reads.fetch_add(1, Ordering::Relaxed);
                let seen = store.get(&key).await.ok();
                tx.send_replace(seen);
            }
        });
        rx
    }

    /// Chains with a poller right now (tests).
    #[cfg(test)]
    pub(super) fn active(&self) -> usize {
        self.pollers.lock().unwrap().len()
    }
}
