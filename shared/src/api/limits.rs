//! What keeps one client from taking the service down (`[limits]` in the config, [`crate::config::LimitsConfig`]):
//! a cap on requests served at once, a request timeout, per-token rate limits, and body limits per route (set in
//! [`super::routes_of`], answered in [`super::extract`]). The header read timeout against slow clients is the
//! connection's, in [`super::server`]. Each refusal is a problem document with `Retry-After` where waiting helps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::errors;
use crate::auth::Claims;
use crate::config::LimitsConfig;

/// At most `limits.max_concurrent_requests` requests at once; the next one gets `503 overloaded` at once
/// (queueing it would only make every caller wait).
/// What every request passes first, 404 and 405 answers included (one middleware: each one more costs the warm
/// path a boxed service and future): the cap on concurrent requests — over it, `503 overloaded` at once — and the
/// request timeout: an answer that has not begun within `limits.request_timeout_s` becomes `503 request_timeout`.
pub async fn admit(State(limits): State<Admission>, req: Request, next: Next) -> Response {
    let _permit = match &limits.permits {
        Some(permits) => match permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return errors::overloaded().into_response(),
        },
        None => None,
    };
    match tokio::time::timeout(limits.timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => errors::request_timeout(limits.timeout.as_secs_f64()).into_response(),
    }
}

/// The limits [`admit`] applies.
#[derive(Clone)]
pub struct Admission {
    /// `None`: no cap (`limits.max_concurrent_requests = 0`).
    pub permits: Option<Arc<Semaphore>>,
    pub timeout: Duration,
}

/// Per-token rate limits, on the caller's verified token id (`jti`): checked by the auth middleware once the
/// token is verified: the `429` answer when the token is over its rate.
pub fn per_token(limiter: &RateLimiter, claims: &Claims) -> Option<Response> {
    let wait = limiter.check(&claims.jti, Instant::now()).err()?;
    Some(errors::rate_limited(wait.as_secs_f64().ceil() as u64).into_response())
}

/// Token buckets keyed by API token id, in this process: `rate` tokens a second up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before full ones (the same as none) are dropped.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `None` when the config turns per-token limits off (`token_requests_per_s = 0`).
    pub fn from_config(limits: &LimitsConfig) -> Option<Self> {
        (limits.token_requests_per_s > 0.0).then(|| Self::new(limits.token_requests_per_s, limits.token_burst))
    }

    pub fn new(rate: f64, burst: u32) -> Self {
        Self { rate, burst: f64::from(burst.max(1)), buckets: Mutex::default() }
    }

    /// Takes one request from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = match buckets.get_mut(key) {
            Some(b) => b,
            None => {
                if buckets.len() >= MAX_BUCKETS {
                    let (rate, burst) = (self.rate, self.burst);
                    buckets.retain(|_, b| b.refilled(now, rate, burst) < burst);
                }
                buckets.entry(key.to_string()).or_insert(Bucket { tokens: self.burst, at: now })
            }
        };
        bucket.tokens = bucket.refilled(now, self.rate, self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate_and_says_how_long_to_wait() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limiter.check("b", t0).is_ok(), "another token has its own bucket");
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check("a", t1).is_ok(), "one request back after 1/rate");
        assert!(limiter.check("a", t1).is_err());
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check("a", later).is_ok(), "refilled to the burst, no more");
        }
        assert!(limiter.check("a", later).is_err());
    }

    #[test]
    fn idle_buckets_are_dropped_when_there_are_too_many() {
        let limiter = RateLimiter::new(1000.0, 10);
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS {
            limiter.check(&i.to_string(), t0).unwrap();
        }
        limiter.check("new", t0 + Duration::from_secs(1)).unwrap();
        assert!(limiter.buckets.lock().unwrap().len() <= 2, "every refilled bucket went");
    }
}
