//! Faults the simulator's token endpoint can be told to show, and how it picks one for a request.
//!
//! Three sources, tried in this order for every request to `POST /api/oauth2/token`:
//!
//! 1. the **queue** — "the next N requests get this fault" ([`crate::ExactSim::fail_next_token_requests`]);
//! 2. a **span** — "every request until this moment gets this fault", the moment on the simulator's clock or
//!    on the real clock ([`crate::ExactSim::fail_token_requests_until`]): a 503 outage, for example;
//! 3. **rates** — a seeded draw per request with a probability per fault ([`FaultRates`]), for campaigns.
//!
//! The draw is a pure function of (seed, chain, how many token requests that chain has made so far), not of a
//! shared random stream: with 1,000 chains refreshing concurrently, the same seed injects the same faults into
//! the same chain's same request however the requests interleave. That is what makes a 100,000-refresh
//! campaign reproducible.
//!
//! What the faults model, and the evidence:
//! * 502/503/504 and resets before the request is read: nothing was processed, the refresh token is unchanged.
//!   Exact publishes no text on its 503s (none found in its knowledge base; see the research notes quoted in
//!   `server.rs`), so the body is a load balancer's HTML page.
//! * Lost answers (`LoseResponse*`, `ResetAfterProcessing`, and `SlowAnswer`/`Hang` past the client's
//!   timeout): the request WAS processed, so a refresh rotated the token and the client never saw the new one.
//!   Whether the previous refresh token still works then depends on the app's grace setting
//!   ([`crate::RefreshGrace`]), not on the fault.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A fault for one token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `503 Service Unavailable` (an HTML body, as a load balancer sends); not processed.
    ServiceUnavailable,
    /// `502 Bad Gateway` (HTML); not processed.
    BadGateway,
    /// `504 Gateway Timeout` (HTML); not processed.
    GatewayTimeout,
    /// `429 Too Many Requests` with `Retry-After: retry_after_s`; not processed.
    TooManyRequests { retry_after_s: u64 },
    /// Processed (a refresh rotates!) but no response is ever sent: the connection is closed at once
    /// without a response.
    LoseResponse,
    /// Processed, then the connection is held for the duration and closed without a response
    /// (a client with a shorter timeout sees a timeout).
    LoseResponseAfter(Duration),
    /// The request waits this long (real time) before it is processed; it is then processed even if the
    /// client gave up meanwhile, and answered if the connection is still open.
    Hang(Duration),
    /// Processed at once; the answer is sent after this long (real time) if the client still waits. A client
    /// whose timeout is shorter gives up on a refresh that already rotated the token.
    SlowAnswer(Duration),
    /// The connection is reset (TCP RST) before the request is processed: nothing changed at the provider.
    ResetBeforeRead,
    /// The request is processed (a refresh rotates), then the connection is reset (TCP RST) instead of answered.
    ResetAfterProcessing,
}

impl Fault {
    /// A stable name per kind: the key in [`crate::SimStats::faults_by_kind`] and the `kind` of `/_sim/fault`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::ServiceUnavailable => "unavailable",
            Fault::BadGateway => "bad_gateway",
            Fault::GatewayTimeout => "gateway_timeout",
            Fault::TooManyRequests { .. } => "too_many",
            Fault::LoseResponse => "lose",
            Fault::LoseResponseAfter(_) => "lose_after",
            Fault::Hang(_) => "hang",
            Fault::SlowAnswer(_) => "slow",
            Fault::ResetBeforeRead => "reset_before_read",
            Fault::ResetAfterProcessing => "reset_after_processing",
        }
    }

    /// True when the provider processes the request although the client gets no (timely) answer: a refresh
    /// rotates the token. (`Hang` and `SlowAnswer` are lost only if the client's timeout is shorter.)
    pub fn processes_without_answer(&self) -> bool {
        matches!(self, Fault::LoseResponse | Fault::LoseResponseAfter(_) | Fault::ResetAfterProcessing)
    }
}

/// Until when a span fault lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultUntil {
    /// Until the simulator's clock reaches this unix-millisecond time (moves with a fast or manual clock).
    SimMs(i64),
    /// Until this real moment.
    Real(Instant),
}

/// Per-request probabilities (each 0.0–1.0, summed at most 1.0) of each fault, drawn from `seed`.
///
/// `FaultRates::campaign(seed, 0.05, 0.02)` is issue 13's campaign: 5 % transient faults (spread over 503,
/// 502, 504 and connection resets before the request is read) and 2 % lost answers (processed, never
/// answered: a plain close, a reset, half each).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRates {
    pub seed: u64,
    pub unavailable: f64,
    pub bad_gateway: f64,
    pub gateway_timeout: f64,
    pub too_many: f64,
    /// `Retry-After` of the drawn 429s (default 1 when 0).
    pub too_many_retry_after_s: u64,
    pub reset_before_read: f64,
    pub lose: f64,
    pub reset_after_processing: f64,
    pub slow: f64,
    /// How long a drawn slow answer is held (real milliseconds).
    pub slow_ms: u64,
    pub hang: f64,
    /// How long a drawn hang waits before processing (real milliseconds).
    pub hang_ms: u64,
}

impl FaultRates {
    /// `transient` spread evenly over 503, 502, 504 and resets before the request is read; `lost` over plain
    /// lost answers and resets after processing.
    pub fn campaign(seed: u64, transient: f64, lost: f64) -> FaultRates {
        FaultRates {
            seed,
            unavailable: transient / 4.0,
            bad_gateway: transient / 4.0,
            gateway_timeout: transient / 4.0,
            reset_before_read: transient / 4.0,
            lose: lost / 2.0,
            reset_after_processing: lost / 2.0,
            ..FaultRates::default()
        }
    }

    /// The sum of the probabilities must lie in 0..=1 and each be a finite non-negative number.
    pub fn validate(&self) -> Result<(), String> {
        let all = self.table();
        if all.iter().any(|(p, _)| !p.is_finite() || *p < 0.0) {
            return Err("every rate must be a number between 0 and 1".into());
        }
        let sum: f64 = all.iter().map(|(p, _)| p).sum();
        if sum > 1.0 + 1e-9 {
            return Err(format!("the rates add up to {sum}, more than 1"));
        }
        Ok(())
    }

    fn table(&self) -> [(f64, Fault); 9] {
        [
            (self.unavailable, Fault::ServiceUnavailable),
            (self.bad_gateway, Fault::BadGateway),
            (self.gateway_timeout, Fault::GatewayTimeout),
            (self.too_many, Fault::TooManyRequests { retry_after_s: self.too_many_retry_after_s.max(1) }),
            (self.reset_before_read, Fault::ResetBeforeRead),
            (self.lose, Fault::LoseResponse),
            (self.reset_after_processing, Fault::ResetAfterProcessing),
            (self.slow, Fault::SlowAnswer(Duration::from_millis(self.slow_ms))),
            (self.hang, Fault::Hang(Duration::from_millis(self.hang_ms))),
        ]
    }

    /// The fault for request number `n` (0-based) of the chain named `key`, or none.
    pub fn draw(&self, key: &str, n: u64) -> Option<Fault> {
        let u = unit(self.seed, key, n);
        let mut acc = 0.0;
        for (p, f) in self.table() {
            acc += p;
            if p > 0.0 && u < acc {
                return Some(f);
            }
        }
        None
    }
}

/// FNV-1a over the key, mixed with the seed and counter by splitmix64: a uniform number in [0, 1) that
/// depends on nothing else (stable across runs, platforms and Rust versions).
fn unit(seed: u64, key: &str, n: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = seed ^ h.rotate_left(17) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_reproducible_and_follow_the_rates() {
        let r = FaultRates::campaign(42, 0.05, 0.02);
        r.validate().unwrap();
        let mut transient = 0;
        let mut lost = 0;
        for chain in 0..1000 {
            for n in 0..100 {
                let key = format!("c#{chain}");
                let f = r.draw(&key, n);
                assert_eq!(f, r.draw(&key, n), "same inputs, same fault");
                match f {
                    Some(f) if f.processes_without_answer() => lost += 1,
                    Some(_) => transient += 1,
                    None => {}
                }
            }
        }
        // 100,000 draws: 5,000 ± 4 sigma (≈ 280) and 2,000 ± 4 sigma (≈ 180).
        assert!((4720..=5280).contains(&transient), "{transient}");
        assert!((1820..=2180).contains(&lost), "{lost}");
        let other = FaultRates { seed: 43, ..r.clone() };
        assert!((0..200).any(|n| r.draw("c#1", n) != other.draw("c#1", n)), "the seed matters");
    }

    #[test]
    fn rates_are_validated() {
        assert!(FaultRates { lose: 0.7, unavailable: 0.4, ..FaultRates::default() }.validate().is_err());
        assert!(FaultRates { lose: -0.1, ..FaultRates::default() }.validate().is_err());
        assert!(FaultRates { lose: f64::NAN, ..FaultRates::default() }.validate().is_err());
        assert_eq!(FaultRates::default().draw("x", 0), None);
        let always = FaultRates { lose: 1.0, ..FaultRates::default() };
        assert_eq!(always.draw("x", 7), Some(Fault::LoseResponse));
    }
}
