//! A storage outage is `503 store_unavailable` with `Retry-After`, never a `500`: nothing was changed, and
//! retrying helps. Each case fails the store at a step that used to be mapped to `500 internal_error` (the chain's
//! record read, the chain's removal, the chain's installation after a sign-in).

use chainkeeper_e2e::Reply;
use chainkeeper_e2e::container_path;
use chainkeeper_e2e::exact::ExactHarness;
use serde_json::json;

fn assert_store_outage(r: &Reply) {
    r.assert_problem(503, "store_unavailable");
    let retry = r.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s >= 1), "Retry-After: {:?}", r.headers.get("retry-after"));
    assert!(r.body["retry_after"].as_u64().is_some_and(|s| s >= 1), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_container_while_the_store_is_down_is_503() {
    let h = ExactHarness::start(|_| {}).await;
    let path = container_path("acme", "finance", "eol");
    // The token's revocation check is read, then the container (one read: its organisation and database are read
    // only when it is missing), which fails.
    h.store.skip_reads_then_fail(1, 1);
    assert_store_outage(&h.api.get(&path).await);
    let r = h.api.get(&path).await;
    assert_eq!(r.status, 200, "the store is back: {}", r.body);
    assert_eq!(r.body["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_cannot_remove_the_chain_is_503_and_can_be_retried() {
    let h = ExactHarness::start(|_| {}).await;
    let path = container_path("acme", "finance", "eol");
    // The chain goes first (one transaction): it fails, so nothing was deleted.
    h.store.skip_then_fail(0, 1);
    assert_store_outage(&h.api.delete(&path).await);
    assert_eq!(h.status().await["status"], "healthy", "the container and its chain are still there");
    assert_eq!(h.api.delete(&path).await.status, 204, "retrying finishes the job");
    h.api.get(&path).await.assert_problem(404, "container_not_found");
    assert!(h.services.engine.chain(&h.container).await.unwrap().is_none(), "no chain is left behind for the sweep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_whose_chain_cannot_be_written_is_503() {
    let h = ExactHarness::start(|_| {}).await;
    let r = h.api.post(&format!("{}/authorize", container_path("acme", "finance", "eol")), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.body["authorize_url"].as_str().unwrap().to_string();
    let user = h.user.clone();
    let totp = h.sim.totp_now(&user.username);
    let back = exact_sim::browser::login(&url, &user.username, &user.password, totp.as_deref()).await.unwrap();
    // The state is consumed and the container updated (two writes); installing the new chain fails.
    h.store.skip_then_fail(2, 1);
    assert_store_outage(&h.api.with_token("").get(&back).await);
    assert_eq!(h.status().await["chain"]["generation"], 1, "the old chain is untouched");
}
