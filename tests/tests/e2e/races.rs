//! One refresh per chain across processes: four `chainkeeper serve` processes on one SQLite file, 200 callers.

use std::time::Duration;

use chainkeeper_e2e::container_path;
use chainkeeper_e2e::exact::four_processes;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_callers_over_four_processes_cause_one_token_request() {
    let (sim, apis, _serves, _dir) = four_processes(Duration::ZERO).await.unwrap();

    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(3_100)).await; // every process now sees an expired token
        let before = sim.stats().refresh_requests;
        let path = format!("{}/token", container_path("acme", "finance", "eol"));
        let calls = (0..200).map(|i| {
            let api = apis[i % 4].clone();
            let path = path.clone();
            async move { api.post(&path, json!({})).await }
        });
        let replies = futures::future::join_all(calls).await;
        let mut tokens = std::collections::HashSet::new();
        for r in &replies {
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
            tokens.insert(r.body["access_token"].as_str().unwrap().to_string());
        }
        assert_eq!(sim.stats().refresh_requests - before, 1, "round {round}: exactly one token request reached Exact");
        assert_eq!(tokens.len(), 1, "round {round}: every caller got the same token");
        let me = reqwest::Client::new()
            .get(format!("{}/api/v1/current/Me", sim.base_url))
            .bearer_auth(tokens.iter().next().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200);
    }
    assert_eq!(sim.stats().invalid_grant, 0);
    assert_eq!(sim.stats().rate_limited, 0);
}
