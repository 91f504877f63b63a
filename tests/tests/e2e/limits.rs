//! No cheap denial of service, against a running `chainkeeper serve` with low `[limits]`: a slow-loris client is
//! dropped within the header read timeout, a body above the route's limit is `413`, the audit route is paged,
//! a token over its rate gets `429` with `Retry-After`, requests above the concurrency cap get `503` at once,
//! and an answer that does not begin in time is `503 request_timeout`.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use chainkeeper_e2e::{Api, Serve, container_path, issue_token};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `serve` with these `[limits]` lines.
async fn serve_with(dir: &Path, limits: &str) -> Serve {
    let config = dir.join("chainkeeper.toml");
    std::fs::write(&config, format!("[limits]\n{limits}\n")).unwrap();
    Serve::start(dir, Some(&config)).await.unwrap()
}

/// Reads until the server closes the connection, or until what arrived satisfies `done` (or `within` passes);
/// returns when, and what the server sent.
async fn read_until(s: &mut TcpStream, within: Duration, done: impl Fn(&[u8]) -> bool) -> Option<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some((start.elapsed(), got)),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if done(&got) {
                    return Some((start.elapsed(), got));
                }
            }
            Err(_) => {}
        }
    }
    None
}

/// Reads until the server closes the connection (or `within` passes).
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<(Duration, Vec<u8>)> {
    read_until(s, within, |_| false).await
}

/// Reads until a whole answer with a JSON body has arrived (or the connection closed).
async fn answered_within(s: &mut TcpStream, within: Duration) -> Option<(Duration, Vec<u8>)> {
    read_until(s, within, |got| {
        String::from_utf8_lossy(got).split_once("\r\n\r\n").is_some_and(|(_, body)| body.trim_end().ends_with('}'))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_client_is_dropped_within_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_with(dir.path(), "header_read_timeout_s = 1.0").await;
    let addr = format!("127.0.0.1:{}", serve.port);

    // Headers trickle in, one short line every 200 ms, never ending: the connection is closed after ~1 s.
    let mut loris = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    loris.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let trickle = tokio::spawn(async move {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if loris.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).await.is_err() {
                return (loris, i);
            }
            let mut probe = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(1), loris.peek(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (loris, i),
                _ => {}
            }
        }
        unreachable!()
    });
    let (mut loris, lines) = tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .expect("the slow client is dropped within the header timeout plus a margin")
        .unwrap();
    let closed_after = started.elapsed();
    assert!(closed_after >= Duration::from_millis(900), "closed by the header timeout, not before: {closed_after:?}");
    assert!(closed_after <= Duration::from_millis(2_500), "closed within the timeout + margin: {closed_after:?}");
    assert!(lines >= 3, "the client kept sending header lines until it was dropped ({lines})");
    // Nothing after the close; and a connection that sends nothing at all is dropped the same way.
    assert!(closed_within(&mut loris, Duration::from_secs(1)).await.is_some());
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let (after, _) = closed_within(&mut silent, Duration::from_secs(4)).await.expect("a silent connection is closed");
    assert!(after <= Duration::from_millis(2_500), "{after:?}");

    // A client that sends its headers in time is served as before.
    let api = Api::new(&serve.base, "");
    assert_eq!(api.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_above_the_routes_limit_is_413_problem_json() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_with(dir.path(), "json_body_bytes = 1024\nproxy_body_bytes = 4096").await;
    let admin = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));

    let big_name = json!({"name": "acme", "display_name": "x".repeat(2_000)});
    let r = admin.post("/v1/orgs", big_name).await;
    r.assert_problem(413, "body_too_large");
    assert!(r.body["detail"].as_str().unwrap().contains("1024"), "{}", r.body);
    assert_eq!(admin.get("/v1/orgs/acme").await.status, 404, "nothing was created");
    // Just under the limit passes.
    let r = admin.post("/v1/orgs", json!({"name": "acme", "display_name": "x".repeat(900)})).await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Without Content-Length (chunked), the limit holds as the body arrives.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..8).map(|_| Ok(vec![b' '; 500])).collect();
    let res = admin
        .http
        .post(format!("{}/v1/orgs/acme/databases", serve.base))
        .bearer_auth(&admin.token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    // The rest of the body is never read: the client is told not to reuse the connection (the next request on
    // this client would otherwise meet a closed connection).
    assert_eq!(res.headers()["connection"], "close");

    // The query proxy has its own, larger limit: above it 413, before anything reaches a platform.
    admin.post("/v1/orgs/acme/databases", json!({"name": "main"})).await;
    admin.create_container("acme", "main", "eol", "oauth2_code", Some("exact-online-nl")).await;
    let proxy = format!("{}/query/v1/current/Me", container_path("acme", "main", "eol"));
    let r = admin.post(&proxy, json!({"blob": "y".repeat(5_000)})).await;
    r.assert_problem(413, "body_too_large");
    assert!(r.body["detail"].as_str().unwrap().contains("4096"), "{}", r.body);
    // Under it, the body passes the limit (and the request fails later, for want of an authorization).
    let r = admin.post(&proxy, json!({"blob": "y".repeat(2_000)})).await;
    assert_ne!(r.status, 413, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_route_is_paged_and_a_cursor_walks_every_entry_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_with(dir.path(), "").await;
    let admin = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    admin.post("/v1/orgs", json!({"name": "acme"})).await;
    for i in 0..40 {
        let r = admin.post("/v1/orgs/acme/databases", json!({"name": format!("db{i}")})).await;
        assert_eq!(r.status, 201);
    }
    let all = admin.get("/v1/orgs/acme/audit?limit=1000").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let all: Vec<Value> = all.body["entries"].as_array().unwrap().clone();
    assert_eq!(all.len(), 41, "org.create and 40 database.create");
    assert!(admin.get("/v1/orgs/acme/audit?limit=1000").await.body.get("next_cursor").is_none());
    let default = admin.get("/v1/orgs/acme/audit").await;
    assert_eq!(default.body["entries"].as_array().unwrap().len(), 41, "the default page (100) holds them all");

    // Pages of 7, following next_cursor: every entry exactly once, in the same order (newest first).
    let mut walked: Vec<Value> = Vec::new();
    let mut cursors = HashSet::new();
    let mut url = "/v1/orgs/acme/audit?limit=7".to_string();
    loop {
        let page = admin.get(&url).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let entries = page.body["entries"].as_array().unwrap();
        assert!(entries.len() <= 7);
        walked.extend(entries.iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(entries.len(), 7, "only the last page is short");
                assert!(cursors.insert(next.to_string()), "a cursor never repeats");
                url = format!("/v1/orgs/acme/audit?limit=7&cursor={next}");
            }
            None => break,
        }
    }
    assert_eq!(walked, all, "the pages hold every entry exactly once, in order");
    assert_eq!(cursors.len(), 5, "41 entries in pages of 7: 6 pages, 5 cursors");
    let newest_first = walked.windows(2).all(|w| w[0]["at"].as_str() >= w[1]["at"].as_str());
    assert!(newest_first, "newest first");

    // Over the limit, zero, not a number, a cursor it never gave out: 400 problems, nothing echoed.
    for bad in ["limit=1001", "limit=0", "limit=-1", "limit=lots", "cursor=bm90LWEtY3Vyc29y", "cursor=%00%FF"] {
        let r = admin.get(&format!("/v1/orgs/acme/audit?{bad}")).await;
        r.assert_problem(400, "invalid_paging");
        assert!(!r.body["detail"].as_str().unwrap().contains("lots"), "{}", r.body);
    }
    assert_eq!(admin.get("/v1/orgs/acme/audit?limit=1000").await.status, 200);
    // A cursor of one organisation's page reads nothing of another's.
    admin.post("/v1/orgs", json!({"name": "beta"})).await;
    let first = admin.get("/v1/orgs/acme/audit?limit=1").await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let beta = admin.get(&format!("/v1/orgs/beta/audit?cursor={cursor}")).await;
    assert_eq!(beta.status, 200);
    let text = beta.body.to_string();
    assert!(!text.contains("database.create"), "beta's own entries only: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_with_retry_after_and_other_tokens_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_with(dir.path(), "token_requests_per_s = 0.5\ntoken_burst = 5").await;
    let admin = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    let other = admin.with_token(&issue_token(dir.path(), &["--platform"], &["admin"]));
    for i in 0..5 {
        assert_eq!(admin.get("/v1/orgs/acme").await.status, 404, "request {i} is within the burst");
    }
    let r = admin.get("/v1/orgs/acme").await;
    r.assert_problem(429, "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}: one request back after 1/rate = 2 s");
    assert_eq!(r.body["retry_after"], retry);
    // Another token has its own bucket; public routes have none.
    assert_eq!(other.get("/v1/orgs/acme").await.status, 404);
    for _ in 0..20 {
        assert_eq!(admin.with_token("").get("/healthz").await.status, 200);
    }
    // After Retry-After, the token may make a request again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(admin.get("/v1/orgs/acme").await.status, 404);
    admin.get("/v1/orgs/acme").await.assert_problem(429, "rate_limited");
}

/// Sends a request whose body never comes: it holds its place until the request timeout.
async fn stalled_upload(addr: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/orgs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_above_the_concurrency_cap_get_503_at_once_and_stalled_ones_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_with(dir.path(), "max_concurrent_requests = 2\nrequest_timeout_s = 3.0").await;
    let token = issue_token(dir.path(), &["--platform"], &["admin"]);
    let admin = Api::new(&serve.base, &token);
    let addr = format!("127.0.0.1:{}", serve.port);

    let mut held = vec![stalled_upload(&addr, &token).await, stalled_upload(&addr, &token).await];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = admin.get("/v1/orgs/acme").await;
    r.assert_problem(503, "overloaded");
    assert_eq!(r.headers["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once, not queued");
    admin.with_token("").get("/healthz").await.assert_problem(503, "overloaded");

    // The stalled requests end at the request timeout with a problem, and free their places.
    for s in &mut held {
        let (after, answer) = answered_within(s, Duration::from_secs(6)).await.expect("answered");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("request_timeout") && answer.contains("application/problem+json"), "{answer}");
        assert!(after <= Duration::from_secs(5), "{after:?}");
    }
    assert_eq!(admin.get("/v1/orgs/acme").await.status, 404, "served again once places are free");
}
