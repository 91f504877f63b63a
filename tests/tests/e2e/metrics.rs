//! The figures of `shared/src/metrics_names.rs` as a scraper sees them: `chainkeeper serve --metrics-listen`
//! against the Exact simulator.

use std::time::Duration;

use chainkeeper_e2e::exact::serve_processes;
use chainkeeper_e2e::{container_path, free_port};
use serde_json::json;

async fn scrape(addr: &str) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics answer");
    assert_eq!(r.status(), 200);
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    r.text().await.unwrap()
}

/// The value of one sample line (`name{labels} value`), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_through_serve_counts_as_ok_on_the_metrics_address_and_nowhere_else() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let (sim, apis, serves, _dir) =
        serve_processes(1, Duration::ZERO, &["--metrics-listen", &metrics_addr]).await.unwrap();
    let ok = "chainkeeper_refresh_outcome_total{outcome=\"ok\",provider=\"exact-online-nl\"}";
    let latency = "chainkeeper_provider_token_latency_ms_count{provider=\"exact-online-nl\"}";
    let before = scrape(&metrics_addr).await;
    assert_eq!(sample(&before, ok), None, "no refresh yet:\n{before}");
    // The authorization's code exchange was one token request.
    assert_eq!(sample(&before, latency), Some(1.0), "{before}");

    tokio::time::sleep(Duration::from_millis(3_100)).await; // the 3 s access token has expired
    let r = apis[0].post(&format!("{}/token", container_path("acme", "finance", "eol")), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sim.stats().refresh_requests, 1);

    let after = scrape(&metrics_addr).await;
    assert_eq!(sample(&after, ok), Some(1.0), "one refresh, outcome ok:\n{after}");
    assert_eq!(sample(&after, latency), Some(2.0), "the refresh's token request was timed:\n{after}");
    assert!(after.contains("# TYPE chainkeeper_refresh_outcome_total counter"), "{after}");
    // Nothing names an organisation, a container or a token.
    for word in ["acme", "finance", "eol", r.body["access_token"].as_str().unwrap()] {
        assert!(!after.contains(word), "{word} in\n{after}");
    }
    // The API's own port does not serve the figures, with or without a token.
    apis[0].get("/metrics").await.assert_problem(404, "no_such_route");
    drop(serves);
}
