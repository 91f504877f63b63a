//! The short version of the simulation at scale (`chainkeeper-bench scale` runs the full one; see
//! `tests/src/scale.rs`): a slice on the real engine and sweep, then a day of 200,000 chains, half in use.

use chainkeeper_e2e::scale::{Model, WCU_PER_PARTITION, measure_slice, simulate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_scale_the_sharded_due_index_stays_under_its_partition_limits_and_waiters_share_their_polls() {
    let c = measure_slice(20, 2, 3).await.unwrap();
    // What each event costs on the real code.
    // (A usage record written in the background may land in the sweep's count.)
    assert!((2.0..2.1).contains(&c.writes_per_refresh), "a refresh writes the chain twice (lease, tokens): {c:?}");
    assert!(c.due_write_units_per_refresh > 0.0 && c.due_write_units_per_refresh <= 8.0, "{c:?}");
    assert_eq!(c.kms_per_warm_handout, 0.0, "the data-key cache: no KMS call for a warm hand-out");
    // The first hand-out after a refresh opens the new token once: one data-key decrypt (its data key was
    // generated for sealing; the open cache is keyed apart).
    assert!(c.kms_per_first_handout <= 1.0, "{c:?}");
    assert!(c.reads_per_warm_handout <= 1.0, "one store read per warm hand-out: {c:?}");
    // 200 waiters while another process refreshes: one shared poll per process, not one per waiter.
    assert!(c.reads_per_handout_shared < 2.0, "shared poll: {c:?}");
    assert!(c.reads_per_handout_alone > 5.0 * c.reads_per_handout_shared, "each alone: {c:?}");
    assert!(c.waiter_peak_rcu[0] < 3_000 / 2, "the shared poll stays far below a partition's read limit");

    // A day of 200,000 chains, half in use: the single `due` value throttles and falls behind; the shards don't.
    let mut m = Model::million(None, c.due_write_units_per_refresh).with_paced_workers(0.6);
    m.chains = 200_000;
    m.active_share = 0.5;
    let sharded = simulate(&m);
    assert!(m.shards > 1);
    assert_eq!(sharded.throttled, 0, "{sharded:?}");
    assert!(sharded.peak_due_demand <= WCU_PER_PARTITION, "{sharded:?}");
    assert!(sharded.max_lag_s <= m.sweep_interval_s + 5, "the sweep keeps up: {sharded:?}");
    assert!(sharded.refreshes > 4_000_000, "the chains in use refresh every ~10 minutes: {sharded:?}");
    let unsharded = simulate(&Model { shards: 1, ..m.clone() });
    assert!(unsharded.peak_due_demand > WCU_PER_PARTITION, "{unsharded:?}");
    assert!(unsharded.throttled > 10_000, "{unsharded:?}");
}

/// Two organisations may each have a container `c0` in a database `db`: the sweep must keep both chains alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_keeps_alive_same_named_containers_of_different_organisations() {
    use chainkeeper_e2e::exact::ExactHarness;
    let h = ExactHarness::start(|_| {}).await;
    for org in ["alpha", "beta"] {
        h.services.vault.keys().create_org_key(org).await.unwrap();
        h.install_minted_chain(org, 0, &format!("user-{org}")).await.unwrap();
    }
    // Both refresh tokens are a day from expiring unused (and the harness's own `eol` chain with them).
    h.advance(std::time::Duration::from_secs(29 * 86_400 + 60));
    let report = h.services.sweep.run_once(1_000).await.unwrap();
    assert_eq!(report.refreshed, 3, "every chain kept alive: {report:?}");
}
