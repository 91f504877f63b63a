//! The rate-limit governor: every call the query proxy makes to a platform's API for a company takes one call
//! from that company's budget first (the profile's `rate_limit`, per app registration and company: Exact's 60 a
//! minute and 5,000 a day per division). The budget is one store item (`records::budget_key`), taken with a
//! conditional write, so every process and Lambda instance shares it. A reader whose minute is used up queues
//! (polling the store) until the next minute, at most the profile's `max_wait_s`; a used-up day is refused at once
//! with the time it resets. The platform's own rate-limit headers correct the budget when others (another app
//! instance, a clock that differs) used calls it did not see.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::clock::{Clock, Millis};
use crate::provider::RateLimit;
use crate::records::{self, BudgetRecord};
use crate::store::{Condition, Put, Store, StoreError};

const MINUTE_MS: Millis = 60_000;
const DAY_MS: Millis = 86_400_000;
/// A queued reader looks at the budget again at least this often (another process may have freed nothing, but
/// the minute may have turned on a clock the test moves).
const POLL_MS: u64 = 100;

/// Why a call may not go now.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The minute's calls stay used up for longer than a reader may queue.
    #[error("the minute's calls are used up for {wait_s} s")]
    Minute { wait_s: u64, free_at_ms: Millis },
    /// The day's calls are used up until `reset_at_ms`.
    #[error("the day's calls are used up")]
    Day { limit: u32, reset_at_ms: Millis },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Governor {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

/// The windows of `b` at `now`: a new minute or day starts from zero.
fn roll(mut b: BudgetRecord, now: Millis) -> BudgetRecord {
    let (minute, day) = (now - now.rem_euclid(MINUTE_MS), now - now.rem_euclid(DAY_MS));
    if b.minute_start_ms != minute {
        b.minute_start_ms = minute;
        b.minute_calls = 0;
    }
    if b.day_start_ms != day {
        b.day_start_ms = day;
        b.day_calls = 0;
    }
    b
}

impl Governor {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    async fn read(&self, provider: &str, company: &str) -> Result<(BudgetRecord, Condition), StoreError> {
        Ok(match self.store.get(&records::budget_key(provider, company)).await? {
            Some(item) => (records::decode(&item)?, Condition::Version(item.version)),
            None => (BudgetRecord::default(), Condition::Absent),
        })
    }

    /// Writes `b` if the budget is still as read; `false` when someone else wrote first.
    async fn write(
        &self,
        provider: &str,
        company: &str,
        b: &BudgetRecord,
        cond: Condition,
    ) -> Result<bool, StoreError> {
        let put = Put::new(records::budget_key(provider, company), records::encode(b), cond)
            .expires_at(Some(b.day_start_ms + 2 * DAY_MS));
        match self.store.put(put).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes one call from the budget of (`provider`, `company`), queueing for the next minute when this one's
    /// calls are used up.
    pub async fn take(&self, provider: &str, company: &str, limit: &RateLimit) -> Result<(), Refusal> {
        let deadline = self.clock.now_ms() + (limit.max_wait_s * 1000.0) as Millis;
        let mut waited = false;
        loop {
            let now = self.clock.now_ms();
            let (b, cond) = self.read(provider, company).await?;
            let mut b = roll(b, now);
            if b.day_calls >= limit.per_day {
                return Err(Refusal::Day { limit: limit.per_day, reset_at_ms: b.day_start_ms + DAY_MS });
            }
            if b.minute_calls >= limit.per_minute || now < b.blocked_until_ms {
                let free_at = if now < b.blocked_until_ms { b.blocked_until_ms } else { b.minute_start_ms + MINUTE_MS };
                if free_at > deadline {
                    let wait_s = ((free_at - now + 999) / 1000).max(1) as u64;
                    return Err(Refusal::Minute { wait_s, free_at_ms: free_at });
                }
                if !waited {
                    waited = true;
                    crate::metrics::rate_limit_wait(provider);
                }
                let jitter = rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(((free_at - now).max(0) as u64).min(POLL_MS) + jitter)).await;
                continue;
            }
            b.minute_calls += 1;
            b.day_calls += 1;
            if self.write(provider, company, &b, cond).await? {
                return Ok(());
            }
            // Another reader took a call meanwhile: read again.
            tokio::task::yield_now().await;
        }
    }

    /// What the platform said about the budget in its answer (Exact: `X-RateLimit-Minutely-Remaining` and
    /// `-Reset`, epoch milliseconds; `X-RateLimit-Remaining` for the day): when it counts more calls than the
    /// budget does, the budget takes its word; a `429` blocks the minute until its reset.
    pub async fn observe(
        &self,
        provider: &str,
        company: &str,
        limit: &RateLimit,
        headers: &HeaderMap,
        refused: bool,
    ) -> Result<(), StoreError> {
        let number =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
        let minute_left = number("x-ratelimit-minutely-remaining");
        let minute_reset = number("x-ratelimit-minutely-reset");
        let day_left = number("x-ratelimit-remaining");
        if minute_left.is_none() && day_left.is_none() && !refused {
            return Ok(());
        }
        for _ in 0..5 {
            let now = self.clock.now_ms();
            let (read, cond) = self.read(provider, company).await?;
            let mut b = roll(read.clone(), now);
            if let Some(left) = minute_left {
                let used = (i64::from(limit.per_minute) - left).clamp(0, i64::from(limit.per_minute)) as u32;
                b.minute_calls = b.minute_calls.max(used);
            }
            if let Some(left) = day_left {
                let used = (i64::from(limit.per_day) - left).clamp(0, i64::from(limit.per_day)) as u32;
                b.day_calls = b.day_calls.max(used);
            }
            if refused || minute_left == Some(0) {
                let reset = minute_reset.filter(|r| *r > now && *r <= now + 2 * MINUTE_MS);
                b.blocked_until_ms = b.blocked_until_ms.max(reset.unwrap_or(b.minute_start_ms + MINUTE_MS));
            }
            if b == read || self.write(provider, company, &b, cond).await? {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::memory::MemoryStore;

    fn limit(per_minute: u32, per_day: u32, max_wait_s: f64) -> RateLimit {
        RateLimit { per_minute, per_day, company_segment: 1, max_wait_s }
    }

    #[test]
    fn the_company_is_a_numeric_path_segment() {
        let l = limit(1, 1, 1.0);
        assert_eq!(l.company("v1/123/crm/Accounts"), Some("123"));
        assert_eq!(l.company("v1/current/Me"), None);
        assert_eq!(l.company("v1"), None);
    }

    #[tokio::test]
    async fn two_processes_share_one_budget_and_the_day_is_refused_with_its_reset() {
        let clock = ManualClock::new(1_800_000_000_000 - 1_800_000_000_000 % DAY_MS + 5_000);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let (a, b) =
            (Governor::new(store.clone(), Arc::new(clock.clone())), Governor::new(store, Arc::new(clock.clone())));
        let l = limit(3, 5, 0.0);
        a.take("p", "1", &l).await.unwrap();
        b.take("p", "1", &l).await.unwrap();
        a.take("p", "1", &l).await.unwrap();
        assert!(matches!(b.take("p", "1", &l).await, Err(Refusal::Minute { wait_s: 55, .. })), "the minute is shared");
        b.take("p", "2", &l).await.unwrap();
        clock.advance(Duration::from_secs(60));
        a.take("p", "1", &l).await.unwrap();
        b.take("p", "1", &l).await.unwrap();
        match a.take("p", "1", &l).await {
            Err(Refusal::Day { limit: 5, reset_at_ms }) => assert_eq!(reset_at_ms % DAY_MS, 0),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_platforms_count_wins_when_it_is_higher() {
        let clock = ManualClock::new(1_800_000_000_000 - 1_800_000_000_000 % MINUTE_MS);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let g = Governor::new(store, Arc::new(clock.clone()));
        let l = limit(60, 5000, 0.0);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-minutely-remaining", "0".parse().unwrap());
        g.observe("p", "1", &l, &h, false).await.unwrap();
        assert!(matches!(g.take("p", "1", &l).await, Err(Refusal::Minute { .. })));
        clock.advance(Duration::from_secs(60));
        g.take("p", "1", &l).await.unwrap();
    }
}
