//! Work a use case starts and does not wait for: a webhook delivery, a recovery hand-off to the queue. In `serve`
//! it simply runs on. In a Lambda function the sandbox may be frozen the moment the handler answers, and work
//! left running then is lost or finishes at some later, unrelated invocation: there the work is tracked, and the
//! function settles it before it answers (`api::settle_background`, `wiring::refresh_event`, `wiring::recover_event`).

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;

/// At most this long for everything under way when a function settles. A webhook receiver that takes longer
/// (deliveries try three times, 10 s each) is left running: it may finish while the instance is warm.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

pub struct Background {
    /// Whether started work is tracked for [`Background::settle`] (a Lambda function), or left to run (`serve`).
    tracked: bool,
    pending: Mutex<Vec<JoinHandle<()>>>,
}

impl Background {
    /// `serve`: work runs on by itself.
    pub fn detached() -> Self {
        Self { tracked: false, pending: Mutex::new(Vec::new()) }
    }

    /// A Lambda function: work is kept until [`Background::settle`].
    pub fn tracked() -> Self {
        Self { tracked: true, pending: Mutex::new(Vec::new()) }
    }

    /// Whether the answer must wait for [`Background::settle`].
    pub fn is_tracked(&self) -> bool {
        self.tracked
    }

    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(work);
        if self.tracked {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|t| !t.is_finished());
            pending.push(task);
        }
    }

    /// Waits until the work started so far (and whatever it starts meanwhile) has finished, for at most
    /// [`SETTLE_WITHIN`]; returns at once when nothing is under way.
    pub async fn settle(&self) {
        self.settle_within(SETTLE_WITHIN).await;
    }

    async fn settle_within(&self, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let tasks: Vec<_> = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
            if tasks.is_empty() {
                return;
            }
            for mut task in tasks {
                if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                    tracing::warn!(
                        after_s = bound.as_secs_f64(),
                        "background work still under way when the function answers: left running"
                    );
                    self.pending.lock().unwrap_or_else(|p| p.into_inner()).push(task);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn tracked_work_is_settled_and_detached_work_is_not_waited_for() {
        let done = Arc::new(AtomicUsize::new(0));
        let tracked = Background::tracked();
        for _ in 0..3 {
            let done = done.clone();
            tracked.spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        tracked.settle().await;
        assert_eq!(done.load(Ordering::SeqCst), 3, "settled: every piece of work finished");

        let detached = Background::detached();
        let started = tokio::time::Instant::now();
        detached.spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        detached.settle().await;
        assert!(started.elapsed() < Duration::from_millis(50), "serve never waits");
    }

    #[tokio::test]
    async fn settling_gives_up_after_its_bound_and_leaves_the_work_running() {
        let tracked = Background::tracked();
        tracked.spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        let started = tokio::time::Instant::now();
        tracked.settle_within(Duration::from_millis(100)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2), "{took:?}");
        assert_eq!(tracked.pending.lock().unwrap().len(), 1, "still tracked, not aborted");
    }
}
