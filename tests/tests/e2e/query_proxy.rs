//! The query proxy against the Exact simulator: forwarding, one refresh on a 401, rate limits, caching, and
//! every way out of the platform's API refused.

use std::time::Duration;

use chainkeeper_e2e::exact::ExactHarness;
use chainkeeper_e2e::{container_path, raw_request};

fn q(path: &str) -> String {
    format!("{}/query/{path}", container_path("acme", "finance", "eol"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_method_query_body_and_headers_and_passes_rate_limit_headers_back() {
    let h = ExactHarness::start(|_| {}).await;
    let division = h.user.division;
    let r = h.api.get(&q(&format!("v1/{division}/crm/Accounts"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["d"]["results"].is_array(), "{}", r.body);
    for name in ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-minutely-remaining"] {
        assert!(r.headers.contains_key(name), "{name} passed on: {:?}", r.headers);
    }
    assert!(!r.headers.contains_key("x-chainkeeper-cache"), "no cache unless the profile asks for it");

    let res = h
        .api
        .http
        .post(format!("{}{}", h.api.base, q(&format!("v1/{division}/echo/a/b?$filter=Name%20eq%20'x'&top=5"))))
        .bearer_auth(&h.api.token)
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("cookie", "session=should-not-pass")
        .body(r#"{"Name":"Acme"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo: serde_json::Value = res.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert!(echo["path"].as_str().unwrap().ends_with("/echo/a/b"), "{echo}");
    assert!(echo["query"].as_str().unwrap().contains("top=5"), "{echo}");
    assert_eq!(echo["body"], r#"{"Name":"Acme"}"#);
    let headers = echo["headers"].to_string().to_lowercase();
    assert!(headers.contains("bearer stampnl001"), "the chain's access token, not the API token: {headers}");
    assert!(!headers.contains("should-not-pass"), "cookies are not forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_the_platform_refreshes_once_and_retries() {
    let h = ExactHarness::start_full(|_| {}, "refresh_margin_s = 1", "").await;
    // chainkeeper believes the token has 25 s left; Exact's clock says it expired.
    h.clock.advance(Duration::from_secs(575));
    h.sim.clock().advance(Duration::from_secs(601));
    let r = h.api.get(&q("v1/current/Me")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(h.sim.stats().refresh_requests, 1, "exactly one refresh");
    assert_eq!(r.body["d"]["results"][0]["UserID"], h.user.user_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_429_is_returned_with_retry_after_and_the_platforms_headers() {
    let h = ExactHarness::start(|c| c.minutely_limit = 2).await;
    let path = q(&format!("v1/{}/crm/Accounts", h.user.division));
    assert_eq!(h.api.get(&path).await.status, 200);
    assert_eq!(h.api.get(&path).await.status, 200);
    let r = h.api.get(&path).await;
    r.assert_problem(429, "platform_rate_limited");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(r.headers.contains_key("x-ratelimit-minutely-reset"), "{:?}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_responses_are_cached_per_container_when_the_profile_allows() {
    let h = ExactHarness::start_with(|_| {}, "cache_ttl_s = 30").await;
    let path = q(&format!("v1/{}/crm/Accounts", h.user.division));
    let calls = h.sim.stats().api_calls;
    let first = h.api.get(&path).await;
    assert_eq!(first.headers["x-chainkeeper-cache"], "miss");
    let second = h.api.get(&path).await;
    assert_eq!(second.headers["x-chainkeeper-cache"], "hit");
    assert_eq!(second.body, first.body);
    assert_eq!(h.sim.stats().api_calls, calls + 1, "the hit did not reach Exact");
    // Authorized again (here the same person; it might be another, with other rights): nothing cached before it
    // is served after it.
    let user = h.user.clone();
    assert_eq!(h.authorize("acme", "finance", "eol", &user).await.status, 200);
    assert_eq!(h.api.get(&path).await.headers["x-chainkeeper-cache"], "miss", "a new authorization starts afresh");
    assert_eq!(h.api.get(&path).await.headers["x-chainkeeper-cache"], "hit");
    h.advance(Duration::from_secs(31));
    assert_eq!(h.api.get(&path).await.headers["x-chainkeeper-cache"], "miss", "expired after the TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaves_the_platforms_api() {
    let h = ExactHarness::start(|_| {}).await;
    let base = container_path("acme", "finance", "eol");
    let calls = h.sim.stats().api_calls;
    for evil in [
        "query/http://127.0.0.1:1/x",
        "query/https:%2F%2Fevil.example/x",
        "query/%2F%2Fevil.example/x",
        "query/../../../v1/orgs",
        "query/v1/..%2F..%2Fadmin",
        "query/%2e%2e/%2e%2e/x",
        "query/v1/%252e%252e/x",
        "query/v1\\..\\x",
        "query/user@evil.example/x",
        "query/v1/current/Me%0d%0aX-Injected:%201",
        "query/v1//current",
    ] {
        let (status, body) = raw_request(&h.api.base, "GET", &format!("{base}/{evil}"), &h.api.token).await;
        assert!(status == 400 || status == 404, "{evil}: {status} {body}");
        if status == 400 {
            assert!(body.contains("query_path_refused") || body.contains("invalid"), "{evil}: {body}");
        }
    }
    assert_eq!(h.sim.stats().api_calls, calls, "not one of them reached any platform");
}
