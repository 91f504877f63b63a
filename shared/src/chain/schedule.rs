//! When a chain wants a refresh without anyone asking for a token: the sweep's rules. Pure functions of the chain,
//! its provider's profile and the engine settings.
//!
//! - **Keep-alive**: a refresh token that would expire unused (`refresh_token_idle_expiry_s`, Exact: 30 days) is
//!   refreshed `keep_alive_margin_s` before (at most half the idle time before).
//! - **Ahead of use**: a chain whose token was handed out within `active_use_window_s` is refreshed
//!   `refresh_margin_s` before its access token expires, but never before the provider's minimum interval.

use crate::clock::Millis;
use crate::config::EngineConfig;
use crate::provider::ProviderProfile;
use crate::records::{ChainRecord, ChainStatus};

use super::ms;

/// Due now: the refresh token would expire unused, or the chain is in active use and its access token is about to
/// expire.
pub fn is_due(chain: &ChainRecord, p: &ProviderProfile, cfg: &EngineConfig, now: Millis, in_use: bool) -> bool {
    if keep_alive_at(chain, p, cfg).is_some_and(|at| now >= at) {
        return true;
    }
    let remaining = chain.access_expires_at_ms.map_or(-1, |e| e - now);
    in_use && remaining <= ms(cfg.refresh_margin_s) && chain.sealed_refresh_token.is_some()
}

/// When the sweep should look at this chain next (its place in the `Due` index): shortly before its access token
/// expires while it is in active use, and in any case before its refresh token would expire unused. `None`: never
/// (broken, or nothing to refresh).
pub fn next_due(chain: &ChainRecord, p: &ProviderProfile, cfg: &EngineConfig, in_use: bool) -> Option<Millis> {
    if chain.status != ChainStatus::Healthy || chain.sealed_refresh_token.is_none() {
        return None;
    }
    let mut due = None;
    if in_use {
        due = chain.access_expires_at_ms.map(|e| e - ms(cfg.refresh_margin_s));
        if let Some(t) = chain.last_token_request_at_ms {
            due = due.map(|d| d.max(t + p.min_token_interval_ms()));
        }
    }
    if let Some(keep_alive) = keep_alive_at(chain, p, cfg) {
        due = Some(due.map_or(keep_alive, |d: Millis| d.min(keep_alive)));
    }
    due
}

/// When the refresh token must be used to stay alive, where the provider expires idle ones.
fn keep_alive_at(chain: &ChainRecord, p: &ProviderProfile, cfg: &EngineConfig) -> Option<Millis> {
    let (idle, issued) = (p.refresh_token_idle_expiry_s?, chain.refresh_token_issued_at_ms?);
    Some(issued + ms(idle) - ms(cfg.keep_alive_margin_s.min(idle / 2.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const DAY: Millis = 86_400_000;

    fn chain(issued: Millis, expires: Millis, requested: Millis) -> ChainRecord {
        ChainRecord {
            sealed_refresh_token: Some("sealed".into()),
            sealed_access_token: Some("sealed".into()),
            access_expires_at_ms: Some(expires),
            last_token_request_at_ms: Some(requested),
            refresh_token_issued_at_ms: Some(issued),
            last_refresh_at_ms: Some(requested),
            ..ChainRecord::new("exact-online-nl", 1, None)
        }
    }

    #[test]
    fn an_idle_chain_is_due_a_day_before_its_refresh_token_would_expire() {
        let config = Config::built_in();
        let exact = config.provider("exact-online-nl").unwrap(); // 30 days idle expiry, 570 s interval
        let c = chain(0, 600_000, 0);
        assert_eq!(next_due(&c, exact, &config.engine, false), Some(29 * DAY));
        assert!(!is_due(&c, exact, &config.engine, 29 * DAY - 1, false));
        assert!(is_due(&c, exact, &config.engine, 29 * DAY, false));
    }

    #[test]
    fn a_chain_in_use_is_due_before_its_access_token_expires_but_not_before_the_interval() {
        let config = Config::built_in();
        let exact = config.provider("exact-online-nl").unwrap();
        // A one-hour token: due 60 s (the margin) before it expires.
        let long = chain(0, 3_600_000, 0);
        assert_eq!(next_due(&long, exact, &config.engine, true), Some(3_540_000));
        assert!(is_due(&long, exact, &config.engine, 3_540_000, true));
        assert!(!is_due(&long, exact, &config.engine, 3_540_000, false), "not in use: keep-alive only");
        // Exact's 600 s token: 60 s before expiry is inside the 570 s interval, so the interval wins.
        let exact_token = chain(0, 600_000, 0);
        assert_eq!(next_due(&exact_token, exact, &config.engine, true), Some(570_000));
    }

    #[test]
    fn broken_chains_and_grants_are_never_due() {
        let config = Config::built_in();
        let exact = config.provider("exact-online-nl").unwrap();
        let mut broken = chain(0, 600_000, 0);
        broken.status = ChainStatus::NeedsRepair;
        assert_eq!(next_due(&broken, exact, &config.engine, true), None);
        let mut grant = chain(0, 600_000, 0);
        grant.sealed_refresh_token = None;
        assert_eq!(next_due(&grant, exact, &config.engine, true), None);
    }
}
