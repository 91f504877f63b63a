//! Provider faults at the token endpoint, on the Exact Online simulator (issue 13): transient faults are absorbed
//! by the lease holder's retries inside the caller's budget; a lost answer is healed with the previous refresh
//! token where the provider forgives it, and otherwise ends in `refresh_response_lost` and auto-recovery.

use std::time::{Duration, Instant};

use chainkeeper_e2e::container_path;
use chainkeeper_e2e::exact::ExactHarness;
use exact_sim::{Fault, RefreshGrace};
use serde_json::{Value, json};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

async fn callers(h: &ExactHarness, n: usize) -> Vec<chainkeeper_e2e::Reply> {
    let path = h.token_path();
    futures::future::join_all((0..n).map(|_| h.api.post(&path, json!({})))).await
}

async fn store_recovery(h: &ExactHarness) {
    let u = h.user.clone();
    let body = json!({"username": u.username, "password": u.password, "totp_secret": u.totp_secret_base32, "retention_days": 30});
    let r = h.api.put(&format!("{}/auto-recovery", container_path("acme", "finance", "eol")), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn wait_for_status(h: &ExactHarness, want: &str) -> Value {
    let mut view = h.status().await;
    for _ in 0..100 {
        if view["status"] == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = h.status().await;
    }
    view
}

fn retry_after(r: &chainkeeper_e2e::Reply) -> u64 {
    let header: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(r.body["retry_after"].as_u64(), Some(header), "{}", r.body);
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_503_from_the_token_endpoint_is_absorbed_for_two_hundred_callers() {
    let h = ExactHarness::start(|_| {}).await;
    h.advance(secs(601));
    h.sim.fail_next_token_requests(1, Fault::ServiceUnavailable);
    let replies = callers(&h, 200).await;
    let tokens: std::collections::HashSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "every caller gets a token: {}", r.body);
            r.body["access_token"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "one refresh, shared by every caller");
    let stats = h.sim.stats();
    assert_eq!((stats.faults_injected, stats.refresh_requests, stats.refreshes_succeeded), (1, 2, 1), "{stats:?}");
    assert_eq!(h.services.engine.stats.retries.load(std::sync::atomic::Ordering::SeqCst), 1);
    let view = h.status().await;
    assert_eq!(view["status"], "healthy");
    assert!(view["chain"]["last_error"].is_null(), "nothing of the fault is left: {view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_a_short_retry_after_is_waited_out_inside_the_budget() {
    let h = ExactHarness::start(|_| {}).await;
    h.advance(secs(601));
    h.sim.fail_next_token_requests(1, Fault::TooManyRequests { retry_after_s: 1 });
    let started = Instant::now();
    let r = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(started.elapsed() >= Duration::from_secs(1), "the provider's Retry-After was respected");
    assert_eq!(h.sim.stats().refresh_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_burst_longer_than_the_budget_gives_503_with_retry_after_and_keeps_the_chain() {
    let h = ExactHarness::start(|_| {}).await;
    h.advance(secs(601));
    h.sim.unavailable_for_real(secs(6));
    let started = Instant::now();
    let replies = callers(&h, 20).await;
    let took = started.elapsed();
    for r in &replies {
        r.assert_problem(503, "provider_unavailable");
        assert!(retry_after(r) >= 1, "{}", r.body);
    }
    // The default budget is 3 s: the callers waited for the lease holder's retries, no longer.
    assert!(took >= Duration::from_millis(1500) && took < secs(5), "{took:?}");
    let requests = h.sim.stats().refresh_requests;
    assert!((3..=8).contains(&requests), "only the lease holder retried, with backoff: {requests}");
    assert_eq!(h.status().await["status"], "healthy");
    // Callers inside the backoff get the 503 at once; nothing reaches the provider.
    let r = h.api.post(&h.token_path(), json!({})).await;
    r.assert_problem(503, "provider_unavailable");
    assert_eq!(h.sim.stats().refresh_requests, requests);
    h.sim.clear_faults();
    h.advance(secs(retry_after(&r)));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200, "the chain was kept");
    assert_eq!(h.sim.stats().invalid_grant, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_are_healed_with_the_previous_token_where_exact_keeps_it_usable() {
    let h = ExactHarness::start(|c| c.refresh_grace = RefreshGrace::UntilNewPairUsed { max: None }).await;
    // Processed and never answered: closed at once, reset, answered after the client's 1 s timeout. The probe
    // with the previous token is answered "too early": Exact processed the lost refresh.
    for fault in [Fault::LoseResponse, Fault::ResetAfterProcessing, Fault::SlowAnswer(Duration::from_millis(1500))] {
        h.advance(secs(601));
        h.sim.fail_next_token_requests(1, fault.clone());
        let r = h.api.post(&h.token_path(), json!({})).await;
        r.assert_problem(503, "refresh_response_lost_retrying");
        assert!((569..=570).contains(&retry_after(&r)), "{fault:?}: Exact's interval since the lost request");
        assert!(r.body["detail"].as_str().unwrap().contains("eol"), "{}", r.body);
        assert_eq!(h.status().await["status"], "healthy");
        h.advance(secs(300));
        let r = h.api.post(&h.token_path(), json!({})).await;
        r.assert_problem(503, "refresh_response_lost_retrying");
        assert!((269..=270).contains(&retry_after(&r)), "{fault:?}: the seconds left: {}", r.body);
        h.advance(secs(270));
        let r = h.api.post(&h.token_path(), json!({})).await;
        assert_eq!(r.status, 200, "{fault:?}: healed with the previous refresh token: {}", r.body);
        let view = h.status().await;
        assert_eq!((view["status"].as_str(), view["chain"]["generation"].as_u64()), (Some("healthy"), Some(1)));
    }
    // The chain goes on with the healed pair.
    h.advance(secs(571));
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200);
    let stats = h.sim.stats();
    assert_eq!((stats.grace_refreshes, stats.old_refresh_token_used, stats.invalid_grant), (3, 0, 0), "{stats:?}");
    assert_eq!(stats.rate_limited, 3, "one probe per lost answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_request_was_read_is_healed_by_the_probe_at_once() {
    let h = ExactHarness::start(|_| {}).await;
    h.advance(secs(601));
    h.sim.fail_next_token_requests(1, Fault::ResetBeforeRead);
    let r = h.api.post(&h.token_path(), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let stats = h.sim.stats();
    assert_eq!((stats.refresh_requests, stats.refreshes_succeeded, stats.invalid_grant), (2, 1, 0), "{stats:?}");
}

/// Without Exact's grace a lost answer breaks the chain, and auto-recovery starts at once. `profile`: extra lines of
/// the Exact profile; `old_token_uses`: how often the provider then saw the previous refresh token.
async fn a_lost_answer_without_the_grace_is_recovered_without_a_person(profile: &str, old_token_uses: u64) {
    let h = ExactHarness::start_with(|_| {}, profile).await;
    store_recovery(&h).await;
    h.advance(secs(601));
    h.sim.fail_next_token_requests(1, Fault::LoseResponse);
    h.api.post(&h.token_path(), json!({})).await.assert_problem(409, "refresh_response_lost");
    let view = wait_for_status(&h, "healthy").await;
    assert_eq!((view["status"].as_str(), view["chain"]["generation"].as_u64()), (Some("healthy"), Some(2)), "{view}");
    assert_eq!(h.api.post(&h.token_path(), json!({})).await.status, 200);
    assert_eq!(h.sim.stats().old_refresh_token_used, old_token_uses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_without_the_grace_is_tried_once_then_recovered_without_a_person() {
    // Exact killed the previous token with the lost refresh: the one probe with it says so (one old-token use).
    a_lost_answer_without_the_grace_is_recovered_without_a_person("", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_that_says_needs_repair_recovers_at_once_without_presenting_the_old_token() {
    a_lost_answer_without_the_grace_is_recovered_without_a_person("lost_response = \"needs_repair\"", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fault_campaign_breaks_no_chain() {
    use chainkeeper_e2e::campaign::{Campaign, run};
    // 1,000 refreshes over 100 chains: 5 % transient faults, 2 % lost answers, crash points, Exact's grace on.
    let cfg = Campaign::issue_13(100, 10, 32);
    let r = run(&cfg).await.unwrap();
    r.print("short fault campaign");
    assert_eq!(r.refreshes_needed, 1000);
    assert!(r.faults_injected >= 40, "the faults were injected: {r:?}");
    assert!(r.crashed >= 2, "crash points were hit: {r:?}");
    assert_eq!(r.broken_total(), 0, "no chain broken: {r:?}");
    assert_eq!(r.old_refresh_token_used, 0, "the provider never saw an old refresh token");
    assert!(r.share(r.failed_transient()) <= 0.1, "transient faults absorbed: {:?}", r.failed);
    // The rest waited out Exact's interval after a lost answer: at most one failed request per lost answer.
    let lost = r.faults_by_kind.get("lose").copied().unwrap_or(0)
        + r.faults_by_kind.get("reset_after_processing").copied().unwrap_or(0);
    assert!(r.failed_total() - r.failed_transient() <= lost, "{r:?}");
    assert!(r.token_calls <= r.refreshes_needed + r.faults_injected + r.crashed, "{r:?}");
    assert!(r.grace_refreshes >= 1, "lost answers were healed by the grace: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fault_campaign_in_two_processes_breaks_no_chain() {
    use chainkeeper_e2e::campaign::{Campaign, run};
    // Two `chainkeeper-bench faults-worker` processes on one SQLite file, each asking every chain every round.
    let cfg = Campaign { processes: 2, ..Campaign::issue_13(30, 4, 16) };
    let r = run(&cfg).await.unwrap();
    r.print("short fault campaign, two processes");
    assert_eq!((r.refreshes_needed, r.caller_requests), (120, 240), "each process asked every chain: {r:?}");
    assert!(r.faults_injected >= 5 && r.crashed >= 1, "faults and crash points were hit: {r:?}");
    assert_eq!(r.broken_total(), 0, "no chain broken: {r:?}");
    assert_eq!(r.old_refresh_token_used, 0, "the provider never saw an old refresh token");
    // One refresh per chain and round across both processes, plus the faults and the crashed refreshes.
    assert!(r.token_calls <= r.refreshes_needed + r.faults_injected + r.crashed, "{r:?}");
    // Besides the waits after a lost answer, only the other process's callers of a refresh whose process died
    // holding the lease are refused (`refresh_in_progress`), at most one per crash.
    let others: u64 = r
        .failed
        .iter()
        .filter(|(code, _)| code.as_str() != "refresh_response_lost_retrying" && code.as_str() != "refresh_in_progress")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(others, 0, "transient faults absorbed: {:?}", r.failed);
    assert!(r.failed.get("refresh_in_progress").copied().unwrap_or(0) <= r.crashed, "{r:?}");
    assert_eq!(r.leaked_log_lines, 0, "no planted secret in the workers' logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fault_campaign_without_the_grace_ends_every_break_in_auto_recovery() {
    use chainkeeper_e2e::campaign::{Campaign, run};
    // Grace off: every lost answer breaks its chain (`refresh_response_lost`); each chain has auto-recovery
    // credentials (a real sign-in at the simulator's B2C flow), and the campaign goes on with the new chains.
    let cfg = Campaign { grace: false, recovery: true, ..Campaign::issue_13(30, 12, 16) };
    let r = run(&cfg).await.unwrap();
    r.print("short fault campaign, grace off, auto-recovery");
    let lost = r.faults_by_kind.get("lose").copied().unwrap_or(0)
        + r.faults_by_kind.get("reset_after_processing").copied().unwrap_or(0);
    assert!(lost >= 2, "answers were lost: {r:?}");
    assert!(r.broken_total() >= 2, "lost answers broke chains without the grace: {r:?}");
    assert_eq!(r.recovered, r.broken_total(), "every broken chain recovered without a person: {r:?}");
    assert_eq!((r.not_recovered_total(), r.person_actions), (0, 0), "{r:?}");
    assert!(r.share(r.failed_transient()) <= 0.1, "transient faults absorbed: {:?}", r.failed);
    assert_eq!(r.failed_broken, r.broken_total(), "one failed request per break: the chain was back next round");
    // After each recovery the chain goes on: every round asked every chain that was not waiting for one.
    assert!(r.refreshes_needed >= 12 * 30 - r.broken_total(), "{r:?}");
}
