//! The token endpoint's faults (issue 13), the refresh-token grace, the fast clock and the counters a fault
//! campaign reads. Chains are minted (`ExactSim::mint_tokens`, as a completed authorization) so that these
//! rules do not depend on the sign-in pages.

mod common;

use std::time::Duration;

use common::*;
use exact_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_USER_ID, ExactSim, Fault, FaultRates, FaultUntil, RefreshGrace,
    SimClock, SimConfig,
};

const GRACE: RefreshGrace = RefreshGrace::UntilNewPairUsed { max: None };

/// A refresh whose transport error is returned instead of panicking (lost answers, resets, timeouts).
async fn try_refresh(sim: &ExactSim, rt: &str, timeout: Duration) -> Result<TokenResp, reqwest::Error> {
    let c = reqwest::Client::builder().timeout(timeout).pool_max_idle_per_host(0).build().unwrap();
    token_with(
        &c,
        sim,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        false,
    )
    .await
}

fn active(sim: &ExactSim) -> String {
    sim.active_refresh_token(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).expect("an active refresh token")
}

fn is_old(r: &TokenResp) -> bool {
    (r.status, r.error(), r.description()) == (400, "invalid_grant", "Old refresh token used.")
}

// ------------------------------------------------------------------ grace off: today's behaviour

#[tokio::test]
async fn without_grace_a_lost_answer_kills_the_previous_token_at_once() {
    let sim = start(SimConfig::default()).await;
    let (_, rt1) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(1, Fault::LoseResponse);
    assert!(try_refresh(&sim, &rt1, secs(5)).await.is_err(), "the answer is lost");
    assert!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).is_empty());
    sim.clock().advance(secs(570));
    assert!(is_old(&refresh(&sim, &rt1).await));
    let st = sim.stats();
    assert_eq!((st.old_refresh_token_used, st.grace_refreshes, st.lost_responses), (1, 0, 1));
    assert_eq!(st.per_chain[&format!("{DEFAULT_CLIENT_ID}#{DEFAULT_USER_ID}")].old_refresh_token_used, 1);
    // The chain is broken: only the token nobody received works.
    assert_eq!(refresh(&sim, &active(&sim)).await.status, 200);
}

// ------------------------------------------------------------------ grace on

#[tokio::test]
async fn grace_heals_a_lost_answer_until_the_new_pair_is_used() {
    let sim = start(SimConfig { refresh_grace: GRACE, ..SimConfig::default() }).await;
    let (_, rt1) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(1, Fault::LoseResponse);
    assert!(try_refresh(&sim, &rt1, secs(5)).await.is_err());
    let rt2 = active(&sim);
    assert_ne!(rt2, rt1, "the lost request rotated");
    assert_eq!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), vec![rt1.clone()]);

    // At once: the 570 s rule answers, nothing rotates, the grace holds.
    let early = refresh(&sim, &rt1).await;
    assert_eq!((early.status, early.error()), (400, "access_denied"));
    assert_eq!(early.headers["reason"], "TooEarlyToRefreshTokens");
    assert_eq!(active(&sim), rt2);

    // After the interval the previous token works and issues a third pair.
    sim.clock().advance(secs(570));
    let healed = refresh(&sim, &rt1).await;
    assert_eq!(healed.status, 200, "{:?}", healed.json);
    let rt3 = healed.refresh_token();
    assert_eq!(active(&sim), rt3);
    assert_eq!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), vec![rt1.clone(), rt2.clone()]);

    // The first API call with the new access token ends the grace of both earlier tokens.
    assert_eq!(me(&sim, &healed.access_token()).await.0, 200);
    assert!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).is_empty());
    sim.clock().advance(secs(570));
    assert!(is_old(&refresh(&sim, &rt1).await));
    assert!(is_old(&refresh(&sim, &rt2).await));
    assert_eq!(refresh(&sim, &rt3).await.status, 200);
    let st = sim.stats();
    assert_eq!((st.grace_refreshes, st.graces_closed, st.old_refresh_token_used), (1, 1, 2));
    assert_eq!(st.refreshes_succeeded, 3, "lost + healed + normal");
    assert_eq!(sim.active_refresh_token_count(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), 1);
}

#[tokio::test]
async fn grace_ends_when_the_new_refresh_token_retrieves_an_access_token() {
    let sim = start(SimConfig { refresh_grace: GRACE, ..SimConfig::default() }).await;
    let (_, rt1) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    sim.clock().advance(secs(570));
    let b = refresh(&sim, &rt1).await;
    let rt2 = b.refresh_token();
    // A TooEarly answer to the new token is no retrieval: rt1 keeps its grace.
    assert_eq!(refresh(&sim, &rt2).await.error(), "access_denied");
    assert_eq!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), vec![rt1.clone()]);
    sim.clock().advance(secs(570));
    let c = refresh(&sim, &rt2).await;
    assert_eq!(c.status, 200);
    assert_eq!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), vec![rt2.clone()], "only rt2 now");
    sim.clock().advance(secs(570));
    assert!(is_old(&refresh(&sim, &rt1).await));
}

#[tokio::test]
async fn an_older_access_token_does_not_end_the_grace_and_a_new_authorization_does() {
    let sim = start(SimConfig { refresh_grace: GRACE, ..SimConfig::default() }).await;
    let (at1, rt1) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    sim.clock().advance(secs(570));
    assert_eq!(refresh(&sim, &rt1).await.status, 200);
    // at1 still lives (600 s from issue) and works, but it belongs to the previous pair.
    assert_eq!(me(&sim, &at1).await.0, 200);
    assert_eq!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), vec![rt1.clone()]);
    // A new authorization invalidates every earlier refresh token at once.
    let (_, rt_new) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    assert!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).is_empty());
    sim.clock().advance(secs(570));
    assert!(is_old(&refresh(&sim, &rt1).await));
    assert_eq!(refresh(&sim, &rt_new).await.status, 200);
}

#[tokio::test]
async fn a_grace_time_cap_ends_it_and_grace_is_set_per_app() {
    let sim = start(SimConfig::default()).await;
    // Another app's grace does not touch this one.
    sim.set_refresh_grace(Some("other-app"), GRACE);
    let (_, rt1) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    sim.clock().advance(secs(570));
    assert_eq!(refresh(&sim, &rt1).await.status, 200);
    assert!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).is_empty());

    sim.set_refresh_grace(Some(DEFAULT_CLIENT_ID), RefreshGrace::UntilNewPairUsed { max: Some(secs(600)) });
    let rt2 = active(&sim);
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(1, Fault::LoseResponse);
    assert!(try_refresh(&sim, &rt2, secs(5)).await.is_err());
    assert_eq!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), vec![rt2.clone()]);
    sim.clock().advance(secs(601));
    assert!(sim.grace_refresh_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).is_empty(), "past the cap");
    assert!(is_old(&refresh(&sim, &rt2).await));
}

// ------------------------------------------------------------------ transport faults

#[tokio::test]
async fn resets_before_the_request_is_read_change_nothing_and_after_processing_rotate() {
    let sim = start(SimConfig::default()).await;
    let (_, rt1) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(1, Fault::ResetBeforeRead);
    let e = try_refresh(&sim, &rt1, secs(5)).await.expect_err("reset");
    assert!(!e.is_timeout(), "{e:?}");
    assert!(format!("{e:?}").contains("ConnectionReset"), "a TCP reset, not a close: {e:?}");
    assert_eq!(active(&sim), rt1, "not processed");

    sim.fail_next_token_requests(1, Fault::ResetAfterProcessing);
    let e = try_refresh(&sim, &rt1, secs(5)).await.expect_err("reset");
    assert!(format!("{e:?}").contains("ConnectionReset"), "{e:?}");
    assert_ne!(active(&sim), rt1, "processed: rotated");
    let st = sim.stats();
    assert_eq!(st.faults_by_kind["reset_before_read"], 1);
    assert_eq!(st.faults_by_kind["reset_after_processing"], 1);
    assert_eq!((st.faults_injected, st.lost_responses, st.refreshes_succeeded), (2, 1, 1));
}

#[tokio::test]
async fn a_slow_answer_past_the_clients_timeout_has_rotated_and_reaches_a_patient_client() {
    let sim = start(SimConfig::default()).await;
    let (_, rt1) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(1, Fault::SlowAnswer(Duration::from_millis(1500)));
    let e = try_refresh(&sim, &rt1, Duration::from_millis(300)).await.expect_err("timeout");
    assert!(e.is_timeout(), "{e:?}");
    assert_ne!(active(&sim), rt1, "processed before the answer was held");

    let rt2 = active(&sim);
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(1, Fault::SlowAnswer(Duration::from_millis(300)));
    let t = std::time::Instant::now();
    let r = try_refresh(&sim, &rt2, secs(5)).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn gateway_errors_and_outages_over_simulated_and_real_time() {
    let sim = start(SimConfig::default()).await;
    let (_, rt) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(1, Fault::BadGateway);
    sim.fail_next_token_requests(1, Fault::GatewayTimeout);
    assert_eq!(refresh(&sim, &rt).await.status, 502);
    assert_eq!(refresh(&sim, &rt).await.status, 504);

    sim.unavailable_for(secs(60));
    for _ in 0..3 {
        let r = refresh(&sim, &rt).await;
        assert_eq!(r.status, 503);
        assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    }
    sim.clock().advance(secs(61));
    sim.unavailable_for_real(Duration::from_millis(300));
    assert_eq!(refresh(&sim, &rt).await.status, 503);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(active(&sim), rt, "no failed request was processed");
    assert_eq!(refresh(&sim, &rt).await.status, 200);
    let st = sim.stats();
    assert_eq!(st.faults_by_kind["unavailable"], 4);
    assert_eq!((st.faults_injected, st.refresh_requests), (6, 7));

    // A span on the simulated clock with another fault.
    sim.fail_token_requests_until(FaultUntil::SimMs(sim.clock().now_ms() + 1000), Fault::GatewayTimeout);
    assert_eq!(refresh(&sim, &active(&sim)).await.status, 504);
    sim.clear_faults();
    assert_eq!(refresh(&sim, &active(&sim)).await.error(), "access_denied", "no fault after clear: the 570 s rule");
}

// ------------------------------------------------------------------ campaigns: seeded rates, fast clock

/// Refreshes `chains` chains `rounds` times (concurrently within a round) and returns each chain's outcomes.
async fn campaign(seed: u64, chains: usize, rounds: usize) -> (Vec<Vec<String>>, exact_sim::SimStats) {
    let sim = start(SimConfig { refresh_grace: GRACE, ..SimConfig::default() }).await;
    sim.set_fault_rates(FaultRates::campaign(seed, 0.2, 0.1)).unwrap();
    let users: Vec<String> = (0..chains).map(|i| format!("user-{i}")).collect();
    for u in &users {
        sim.mint_tokens(DEFAULT_CLIENT_ID, u);
    }
    let mut out = vec![Vec::new(); chains];
    for _ in 0..rounds {
        sim.clock().advance(secs(570));
        let mut tasks = Vec::new();
        for u in &users {
            let rt = sim.active_refresh_token(DEFAULT_CLIENT_ID, u).unwrap();
            let url = sim.token_url();
            tasks.push(tokio::spawn(async move {
                let c = reqwest::Client::builder().timeout(secs(5)).build().unwrap();
                let r = c
                    .post(url)
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", rt.as_str()),
                        ("client_id", DEFAULT_CLIENT_ID),
                        ("client_secret", DEFAULT_CLIENT_SECRET),
                    ])
                    .send()
                    .await;
                match r {
                    Ok(r) => r.status().as_u16().to_string(),
                    Err(_) => "no answer".to_string(),
                }
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            out[i].push(t.await.unwrap());
        }
    }
    (out, sim.stats())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_rates_inject_the_same_faults_into_the_same_requests_however_they_interleave() {
    let (a, sa) = campaign(7, 20, 10).await;
    let (b, sb) = campaign(7, 20, 10).await;
    assert_eq!(a, b, "same seed, same outcome per chain and request");
    assert_eq!(sa.faults_by_kind, sb.faults_by_kind);
    let (c, _) = campaign(8, 20, 10).await;
    assert_ne!(a, c, "another seed, other faults");
    // 200 requests at 30 %: between 35 and 85 faults; every fault counted once by kind.
    assert!((35..=85).contains(&sa.faults_injected), "{}", sa.faults_injected);
    assert_eq!(sa.faults_by_kind.values().sum::<u64>(), sa.faults_injected);
    let answered_ok = a.iter().flatten().filter(|s| *s == "200").count() as u64;
    assert_eq!(
        answered_ok + sa.lost_responses,
        sa.refreshes_succeeded,
        "every processed refresh is either answered or lost"
    );
    assert_eq!(sa.old_refresh_token_used, 0, "the active token was always used");
    assert_eq!(sa.refresh_requests, 200);
}

#[tokio::test]
async fn fast_clock_runs_n_times_real_time_and_can_still_be_moved() {
    let clock = SimClock::scaled(T0, 1000.0);
    assert_eq!(clock.factor(), 1000.0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let moved = clock.now_ms() - T0;
    assert!((190_000..=400_000).contains(&moved), "≈ 200 s in 0.2 s: {moved}");
    clock.advance(secs(3600));
    assert!(clock.now_ms() - T0 >= 3_790_000);
    clock.set_ms(T0);
    assert!(clock.now_ms() - T0 < 100_000);
    assert_eq!(clock.real_duration_of(secs(570)), Duration::from_millis(570));
    assert_eq!(SimClock::new(T0).factor(), 0.0);
    assert_eq!(SimClock::system().factor(), 1.0);

    // The 570 s rule passes in about 0.6 s of real time.
    let sim = ExactSim::start(SimConfig::default(), SimClock::scaled(T0, 1000.0)).await.unwrap();
    let (_, rt) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    assert_eq!(refresh(&sim, &rt).await.error(), "access_denied");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(refresh(&sim, &rt).await.status, 200);
}

// ------------------------------------------------------------------ over HTTP

#[tokio::test]
async fn faults_rates_grace_and_stats_over_http() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let base = &sim.base_url;
    let (_, rt1) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    sim.clock().advance(secs(570));

    // grace on for this app, then a lost answer: healed by the previous token.
    let r = c.post(format!("{base}/_sim/grace?mode=on&client_id={DEFAULT_CLIENT_ID}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(format!("{base}/_sim/fault?kind=lose")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(try_refresh(&sim, &rt1, secs(5)).await.is_err());
    let g: serde_json::Value = c
        .get(format!("{base}/_sim/grace_tokens?client_id={DEFAULT_CLIENT_ID}&user_id={DEFAULT_USER_ID}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(g["refresh_tokens"], serde_json::json!([rt1]));
    sim.clock().advance(secs(570));
    assert_eq!(refresh(&sim, &rt1).await.status, 200);

    // every kind is accepted; spans; a wrong kind or parameter is a 400
    for kind in [
        "unavailable",
        "bad_gateway",
        "gateway_timeout",
        "too_many",
        "lose_after&ms=10",
        "hang&ms=1",
        "slow&ms=1",
        "reset_before_read",
        "reset_after_processing",
    ] {
        let r = c.post(format!("{base}/_sim/fault?kind={kind}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{kind}");
    }
    let r: serde_json::Value =
        c.post(format!("{base}/_sim/fault?kind=clear")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["pending"], 0);
    let r = c.post(format!("{base}/_sim/fault?kind=unavailable&for_sim_ms=60000")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(refresh(&sim, &active(&sim)).await.status, 503);
    c.post(format!("{base}/_sim/fault?kind=clear")).send().await.unwrap();
    assert_eq!(c.post(format!("{base}/_sim/fault?kind=unavailable&for_real_ms=x")).send().await.unwrap().status(), 400);
    assert_eq!(c.post(format!("{base}/_sim/grace?mode=maybe")).send().await.unwrap().status(), 400);

    // rates: set, read back, refuse nonsense, clear with {}
    let rates = FaultRates::campaign(42, 0.05, 0.02);
    let r = c.post(format!("{base}/_sim/fault/rates")).json(&rates).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let back: FaultRates = c.get(format!("{base}/_sim/fault/rates")).send().await.unwrap().json().await.unwrap();
    assert_eq!(back, rates);
    let r = c.post(format!("{base}/_sim/fault/rates")).body(r#"{"lose": 2}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c.post(format!("{base}/_sim/fault/rates")).body(r#"{"typo": 0.1}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    c.post(format!("{base}/_sim/fault/rates")).body("{}").send().await.unwrap();
    let none: serde_json::Value = c.get(format!("{base}/_sim/fault/rates")).send().await.unwrap().json().await.unwrap();
    assert!(none.is_null());

    let st: exact_sim::SimStats = c.get(format!("{base}/_sim/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!((st.grace_refreshes, st.lost_responses, st.faults_by_kind["lose"]), (1, 1, 1));
    let clock: serde_json::Value = c.get(format!("{base}/_sim/clock")).send().await.unwrap().json().await.unwrap();
    assert_eq!(clock["factor"], 0.0);
    c.post(format!("{base}/_sim/stats/reset")).send().await.unwrap();
    assert_eq!(sim.stats(), exact_sim::SimStats::default());
}

#[test]
fn config_json_sets_grace_daily_limit_and_dataset() {
    let c = SimConfig::from_json(
        r#"{"daily_limit": 100, "refresh_grace": {"mode": "until_new_pair_used", "max": 600000},
            "dataset": {"accounts": 10000, "transaction_lines": 5}}"#,
    )
    .unwrap();
    assert_eq!(c.daily_limit, 100);
    assert_eq!(c.refresh_grace, RefreshGrace::UntilNewPairUsed { max: Some(secs(600)) });
    assert_eq!((c.dataset.accounts, c.dataset.transaction_lines, c.dataset.seed), (10_000, 5, 1));
    let d = SimConfig::default();
    assert_eq!((d.daily_limit, d.refresh_grace), (5000, RefreshGrace::Off));
    assert!(SimConfig::from_json(r#"{"refresh_grace": {"mode": "sometimes"}}"#).is_err());
    assert!(SimConfig::from_json(r#"{"dataset": {"acounts": 1}}"#).is_err());
}
