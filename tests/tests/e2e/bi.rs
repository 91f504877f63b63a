//! BI tools (Power BI, Power Query, Python) reading through chainkeeper: the credential forms they can send, the
//! OData feed with its paging links pointing back through chainkeeper, and the provider's limits kept.

use base64::Engine;
use chainkeeper_e2e::exact::{ExactHarness, captured_log};
use chainkeeper_e2e::{assert_no_planted_secret, container_path};
use serde_json::{Value, json};

fn q(path: &str) -> String {
    format!("{}/query/{path}", container_path("acme", "finance", "eol"))
}

/// An organisation token with the scopes given, as Power BI's user would issue it.
async fn org_token(h: &ExactHarness, scopes: &[&str]) -> String {
    let r = h.api.post("/v1/orgs/acme/api-tokens", json!({"subject": "power-bi", "scopes": scopes})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["token"].as_str().unwrap().to_string()
}

/// GET without the harness's Bearer header: the caller's credential only.
async fn get(h: &ExactHarness, url: &str, auth: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let url = if url.starts_with("http") { url.to_string() } else { format!("{}{url}", h.api.base) };
    let mut req = h.api.http.get(url).header("accept", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let (status, headers) = (res.status().as_u16(), res.headers().clone());
    (status, headers, res.text().await.unwrap())
}

/// The secret part of an API token (its signature): it must appear nowhere chainkeeper writes.
fn assert_key_absent(token: &str, what: &str, text: &str) {
    let signature = token.rsplit('.').next().unwrap();
    assert!(signature.len() > 20);
    assert!(!text.contains(signature), "the API token leaked into {what}");
    assert_no_planted_secret(what, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_bi_credentials_api_key_and_basic_password_work_and_the_key_goes_nowhere() {
    let h = ExactHarness::start(|_| {}).await;
    let token = org_token(&h, &["query.read"]).await;
    let division = h.user.division;

    // Web API credential: the key as `?api_key=`, between the caller's own parameters.
    let url = q(&format!("v1/{division}/echo/x?$top=5&api_key={token}&$select=ID,Name"));
    let (status, headers, body) = get(&h, &url, None).await;
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["query"], "$top=5&$select=ID,Name", "the key is not forwarded, the rest is intact: {echo}");
    assert_key_absent(&token, "the request the provider received", &echo.to_string());
    assert_key_absent(&token, "the answer", &format!("{headers:?}{body}"));

    // Basic credential: any user name, the token as the password.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("powerbi:{token}"));
    let (status, _, body) =
        get(&h, &q(&format!("v1/{division}/crm/Accounts?$top=2")), Some(&format!("Basic {basic}"))).await;
    assert_eq!(status, 200, "{body}");
    let rows: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows["d"]["results"].as_array().unwrap().len(), 2);

    // A wrong key, a key where the route does not take one, and a write with a key: refused, never echoed.
    let wrong = format!("{}x", &token[..token.len() - 1]);
    for (url, auth) in [
        (q(&format!("v1/{division}/crm/Accounts?api_key={wrong}")), None),
        (format!("{}?api_key={token}", container_path("acme", "finance", "eol")), None),
        (q(&format!("v1/{division}/crm/Accounts?api_key={token}")), Some("Digest abc")),
    ] {
        let (status, _, body) = get(&h, &url, auth).await;
        assert_eq!(status, 401, "{url}: {body}");
        assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
        assert_key_absent(&token, "a refusal", &body);
    }
    let res = h
        .api
        .http
        .post(format!("{}{}", h.api.base, q(&format!("v1/{division}/echo/x?api_key={token}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a write does not take a key in the URL");

    assert_key_absent(&token, "chainkeeper's log", &captured_log());
}

fn feed(path: &str) -> String {
    format!("{}/odata/{path}", container_path("acme", "finance", "eol"))
}

/// Follows `__next` from `first` to the end, sending the key on every page as Power BI's Web API credential does;
/// returns the rows' IDs and every `__next` link chainkeeper wrote.
async fn walk(h: &ExactHarness, first: &str, token: &str) -> (Vec<String>, Vec<String>) {
    let (mut ids, mut links) = (Vec::new(), Vec::new());
    let mut url = first.to_string();
    loop {
        let sep = if url.contains('?') { '&' } else { '?' };
        let (status, _, body) = get(h, &format!("{url}{sep}api_key={token}"), None).await;
        assert_eq!(status, 200, "{url}: {body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        for row in page["d"]["results"].as_array().unwrap() {
            ids.push(row["ID"].as_str().unwrap().to_string());
        }
        match page["d"]["__next"].as_str() {
            Some(next) => {
                links.push(next.to_string());
                url = next.to_string();
            }
            None => return (ids, links),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_odata_feed_pages_through_chainkeeper_with_the_current_division_and_options_intact() {
    let h = ExactHarness::start(|c| c.dataset.accounts = 250).await;
    let token = org_token(&h, &["query.read"]).await;
    let division = h.user.division;
    let feed_base = format!("{}{}", h.api.base, feed(""));

    // `{division}` (sent percent-encoded, as clients do) is the signed-in user's current division.
    let (ids, links) = walk(&h, &feed("v1/%7Bdivision%7D/crm/Accounts?$select=ID,Name"), &token).await;
    assert_eq!(ids, h.sim.dataset_ids(division, "crm/Accounts"), "every row once, in order");
    assert_eq!(links.len(), 4, "250 rows in pages of 60");
    for link in &links {
        assert!(
            link.starts_with(&format!("{feed_base}v1/{division}/crm/Accounts?")),
            "back through chainkeeper: {link}"
        );
        assert!(link.contains("$select=ID,Name") && link.contains("$skiptoken="), "{link}");
        assert!(!link.contains("api_key") && !link.contains(&h.sim.base_url), "{link}");
        assert_key_absent(&token, "a paging link", link);
    }

    // $filter, $orderby, $top and $select reach the provider as sent: the answer is the provider's own.
    let options = "$filter=Country%20eq%20'NL'&$orderby=Name%20desc&$top=7&$select=ID,Name,Country";
    let through_feed = get(&h, &feed(&format!("v1/{{division}}/crm/Accounts?{options}&api_key={token}")), None).await;
    let direct = h.api.get(&q(&format!("v1/{division}/crm/Accounts?{options}"))).await;
    assert_eq!(through_feed.0, 200, "{}", through_feed.2);
    let rows: Value = serde_json::from_str(&through_feed.2).unwrap();
    assert_eq!(rows["d"]["results"].as_array().unwrap().len(), 7);
    assert_eq!(
        rows["d"]["results"].to_string().replace(&feed_base, "P/"),
        direct.body["d"]["results"].to_string().replace(&format!("{}/api/", h.sim.base_url), "P/"),
        "the same rows as the provider's own answer, links aside"
    );

    // The service document and $metadata pass through (the document's base is the feed).
    let url = format!("{}{}?api_key={token}", h.api.base, feed("v1/{division}/crm/"));
    let res = h.api.http.get(url).header("accept", "application/atomsvc+xml").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let doc = res.text().await.unwrap();
    assert!(doc.contains(&format!("xml:base=\"{feed_base}v1/{division}/crm/\"")), "{doc}");
    assert!(doc.contains("<collection href=\"Accounts\">"), "{doc}");
    let (status, _, metadata) =
        get(&h, &format!("{}?api_key={token}", feed("v1/{division}/crm/$metadata")), None).await;
    assert_eq!(status, 200, "{metadata}");
    assert!(metadata.contains("EntityType Name=\"Account\""), "{metadata}");

    assert_key_absent(&token, "chainkeeper's log", &captured_log());
}

/// Runs `tests/peers/pyodata/read_feed.py` (pyodata, a registry OData client) against the feed.
async fn pyodata_read(service_url: &str, credential: &str, token: &str) -> Value {
    let script = chainkeeper_e2e::workspace().join("tests/peers/pyodata/read_feed.py");
    let (url, credential, token) = (service_url.to_string(), credential.to_string(), token.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args([&url, "Accounts", &credential])
            .env("CK_TOKEN", &token)
            .output()
            .expect("python3 with pyodata (pip install 'pyodata>=1.11,<2')")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "pyodata failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyodata_reads_a_paged_entity_set_through_the_feed_with_each_credential_form() {
    let h = ExactHarness::start(|_| {}).await;
    let token = org_token(&h, &["query.read"]).await;
    let expected = h.sim.dataset_ids(h.user.division, "crm/Accounts");
    let service = format!("{}{}", h.api.base, feed("v1/%7Bdivision%7D/crm/"));
    for credential in ["api_key", "basic", "bearer"] {
        let read = pyodata_read(&service, credential, &token).await;
        let ids: Vec<String> = serde_json::from_value(read["ids"].clone()).unwrap();
        assert_eq!(ids, expected, "{credential}: every row once");
        assert_eq!(read["pages"], 3, "{credential}: 130 rows in pages of 60, following __next");
        for link in read["next_urls"].as_array().unwrap() {
            assert_key_absent(&token, "a paging link", link.as_str().unwrap());
        }
    }
    assert_key_absent(&token, "chainkeeper's log", &captured_log());
}

/// Exact's limit scaled down: 5 calls a minute per division at the simulator and in the profile.
const FIVE_A_MINUTE: &str = "rate_limit = { per_minute = 5, per_day = 5000, company_segment = 1, max_wait_s = 600 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_in_two_processes_queue_inside_the_minutely_limit_and_the_provider_never_answers_429() {
    let h = ExactHarness::start_with(|c| c.minutely_limit = 5, FIVE_A_MINUTE).await;
    let (other, _server) = h.another_process().await;
    let division = h.user.division;
    let before = h.sim.stats();
    let apis = [h.api.clone(), other];
    // 16 readers of distinct pages (nothing cached), half through each process: 16 calls, 5 a minute.
    let readers: Vec<_> = (0..16)
        .map(|i| {
            let api = apis[i % 2].clone();
            let path = q(&format!("v1/{division}/crm/Accounts?$top={}&$select=ID", i + 1));
            tokio::spawn(async move { api.get(&path).await })
        })
        .collect();
    // The minute turns (on both clocks at once) only while no call is in flight: every reader is queued.
    let mut last = h.sim.stats().api_calls;
    let mut minutes = 0;
    while !readers.iter().all(|r| r.is_finished()) {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = h.sim.stats().api_calls;
        if now == last && !readers.iter().all(|r| r.is_finished()) {
            h.advance(std::time::Duration::from_secs(60));
            minutes += 1;
            assert!(minutes < 20, "the readers never finished");
        }
        last = now;
    }
    for r in readers {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "a reader waited its turn instead of failing: {}", r.body);
    }
    let after = h.sim.stats();
    assert_eq!(after.api_rate_limited - before.api_rate_limited, 0, "the provider never answered 429");
    assert_eq!(after.api_calls - before.api_calls, 16, "one call per reader, none repeated");
    assert!(minutes >= 3, "16 calls at 5 a minute take at least 4 minutes: {minutes} turns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_limit_is_a_429_problem_with_its_reset_time_before_the_provider_is_called() {
    let h = ExactHarness::start_with(
        |_| {},
        "rate_limit = { per_minute = 60, per_day = 3, company_segment = 1, max_wait_s = 600 }",
    )
    .await;
    let division = h.user.division;
    for i in 0..3 {
        let r = h.api.get(&q(&format!("v1/{division}/crm/Accounts?$top={}", i + 1))).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let calls = h.sim.stats().api_calls;
    let r = h.api.get(&q(&format!("v1/{division}/crm/Accounts?$top=9"))).await;
    r.assert_problem(429, "platform_daily_limit");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("3 calls a day") && detail.contains(&division.to_string()), "{detail}");
    assert!(detail.contains("T00:00:00Z"), "the reset time: {detail}");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait), "{wait}");
    assert_eq!(h.sim.stats().api_calls, calls, "refused before the provider was called");
    let me = h.api.get(&q("v1/current/Me")).await;
    assert_eq!(me.status, 200, "a call without a division does not count: {}", me.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_reads_are_cached_coalesced_and_answer_if_none_match_with_304() {
    let h = ExactHarness::start(|_| {}).await;
    let token = org_token(&h, &["query.read"]).await;
    let page = format!("{}?$select=ID,Name&api_key={token}", feed("v1/{division}/crm/Accounts"));
    let _ = get(&h, &feed(&format!("v1/{{division}}/crm/$metadata?api_key={token}")), None).await; // the division, once
    let calls = h.sim.stats().api_calls;

    // Sixteen identical reads at once: one call to the provider, one answer for all.
    let reads: Vec<_> = (0..16)
        .map(|_| {
            let (http, url) = (h.api.http.clone(), format!("{}{page}", h.api.base));
            tokio::spawn(async move {
                let res = http.get(url).send().await.unwrap();
                let cache = res.headers()["x-chainkeeper-cache"].to_str().unwrap().to_string();
                let etag = res.headers()["etag"].to_str().unwrap().to_string();
                (res.status().as_u16(), cache, etag, res.text().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for r in reads {
        answers.push(r.await.unwrap());
    }
    assert_eq!(h.sim.stats().api_calls, calls + 1, "identical concurrent reads made one provider call");
    assert!(answers.iter().all(|a| a.0 == 200 && a.2 == answers[0].2 && a.3 == answers[0].3), "one answer for all");
    assert_eq!(answers.iter().filter(|a| a.1 == "miss").count(), 1, "one miss, the rest hits");
    let etag = answers[0].2.clone();

    // If-None-Match with that ETag: 304, no body, no provider call.
    let res = h.api.http.get(format!("{}{page}", h.api.base)).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"], etag.as_str());
    assert!(res.text().await.unwrap().is_empty());
    assert_eq!(h.sim.stats().api_calls, calls + 1);

    // `Cache-Control: no-cache` goes to the provider; after the profile's minute the cache is stale.
    let res = h.api.http.get(format!("{}{page}", h.api.base)).header("cache-control", "no-cache").send().await.unwrap();
    assert_eq!(res.headers()["x-chainkeeper-cache"], "miss");
    assert_eq!(h.sim.stats().api_calls, calls + 2, "the caller asked to go around the cache");
    h.advance(std::time::Duration::from_secs(61));
    let (status, headers, _) = get(&h, &page, None).await;
    assert_eq!((status, headers["x-chainkeeper-cache"].to_str().unwrap()), (200, "miss"), "stale after 60 s");
    assert_eq!(h.sim.stats().api_calls, calls + 3);

    // The raw query proxy of Exact stays uncached (apps write through it).
    let division = h.user.division;
    let direct = h.api.get(&q(&format!("v1/{division}/crm/Accounts?$top=1"))).await;
    assert!(!direct.headers.contains_key("x-chainkeeper-cache"));
}

/// The proof at test scale (`chainkeeper_e2e::bi`): 64 readers page through 10,000 rows of Exact's
/// `TransactionLines` through the feed against the simulator's 60 calls a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_readers_page_through_ten_thousand_rows_and_the_provider_never_answers_429() {
    let h = chainkeeper_e2e::bi::readers_harness().await;
    let run = chainkeeper_e2e::bi::page_through(&h, 64).await.unwrap();
    println!("{run}");
    assert_eq!(run.complete, 64, "every reader got every row once, in order");
    assert_eq!(run.provider_429s, 0, "the provider never answered 429");
    assert!(run.per_minute.iter().all(|n| *n <= 60), "at most 60 calls a minute: {:?}", run.per_minute);
    // Identical reads share one call; a reader that falls a minute behind reads its page again (the cache
    // keeps a page for Exact's 60 s).
    assert!(run.page_calls < 2 * 167, "about one call per page for all 64 readers (167 pages): {run}");
    assert_eq!(run.identity_calls, 1, "the current division is read once for all readers");
}

/// Reads `path` through two processes (`first`, then `second`); returns the two answers' cache uses and bodies.
async fn read_in(h: &ExactHarness, bases: [&str; 2], path: &str, auth: &str) -> [(u16, String, String); 2] {
    let mut out = Vec::new();
    for base in bases {
        let (status, headers, body) = get(h, &format!("{base}{path}"), Some(auth)).await;
        let cache = headers.get("x-chainkeeper-cache").map_or("", |v| v.to_str().unwrap()).to_string();
        out.push((status, cache, body));
    }
    out.try_into().unwrap()
}

/// "In AWS the cache is per warm Lambda instance unless the profile opts into the store": with `cache_in_store`,
/// a page one process fetched is served by another for the rest of the cache time without a provider call, from
/// an item sealed under the organisation's key; without it, each process calls the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cache_in_store_another_process_serves_a_fetched_page_from_the_store_sealed() {
    use chainkeeper::clock::Clock;
    use chainkeeper::store::Store;
    let h = ExactHarness::start_with(|_| {}, "cache_in_store = true").await;
    let (other, _server) = h.another_process().await;
    let bases = [h.api.base.as_str(), other.base.as_str()];
    let bearer = format!("Bearer {}", h.api.token);
    let division = h.user.division;
    let page = feed(&format!("v1/{division}/crm/Accounts?$select=ID,Name&$top=5"));
    let calls = h.sim.stats().api_calls;

    let [first, second] = read_in(&h, bases, &page, &bearer).await;
    assert_eq!((first.0, first.1.as_str(), second.0, second.1.as_str()), (200, "miss", 200, "hit"), "{}", second.2);
    assert_eq!(h.sim.stats().api_calls, calls + 1, "the second process read the page from the store");
    assert_eq!(first.2, second.2, "the same answer, its links already pointing at the feed");
    assert!(second.2.contains(&format!("{}/v1/orgs/acme", h.api.base)) && !second.2.contains(&h.sim.base_url));
    // The API key is not part of the cache key: a key in the URL finds the same entry.
    let token = org_token(&h, &["query.read"]).await;
    let (status, headers, body) = get(&h, &format!("{}{page}&api_key={token}", other.base), None).await;
    assert_eq!((status, headers["x-chainkeeper-cache"].to_str().unwrap(), body), (200, "hit", first.2.clone()));

    // What the store holds: one item per page, expiring with the cache time, the rows' text sealed.
    let items = h.store.query("answer#acme#finance#eol", "", 10).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].expires_at_ms, Some(h.clock.now_ms() + 60_000), "Exact's odata_cache_ttl_s");
    let raw = String::from_utf8_lossy(&items[0].body).to_string();
    let rows: Value = serde_json::from_str(&first.2).unwrap();
    for row in rows["d"]["results"].as_array().unwrap() {
        for text in [row["ID"].as_str().unwrap(), row["Name"].as_str().unwrap()] {
            assert!(!raw.contains(text), "{text} is in the stored item in plaintext: {raw}");
        }
    }
    assert!(!raw.contains("Accounts") && raw.contains("sealed_answer"), "{raw}");

    // After the cache time: a provider call again, whose answer the other process then reads from the store.
    h.advance(std::time::Duration::from_secs(61));
    let [first, second] = read_in(&h, [bases[1], bases[0]], &page, &bearer).await;
    assert_eq!((first.0, first.1.as_str(), second.0, second.1.as_str()), (200, "miss", 200, "hit"));
    assert_eq!(h.sim.stats().api_calls, calls + 2, "stale after 60 s, fetched once more");
    // Expired items go for good (the recovery run's purge, in `serve`; DynamoDB's TTL in AWS).
    h.advance(std::time::Duration::from_secs(61));
    assert!(h.store.purge_expired().await.unwrap() >= 1);
    assert!(h.store.query("answer#acme#finance#eol", "", 10).await.unwrap().is_empty());

    // Without the opt-in: each process keeps its own cache and calls the provider once; nothing is stored.
    let h = ExactHarness::start(|_| {}).await;
    let (other, _server) = h.another_process().await;
    let calls = h.sim.stats().api_calls;
    let [first, second] = read_in(&h, [h.api.base.as_str(), other.base.as_str()], &page, &bearer_of(&h)).await;
    assert_eq!((first.1.as_str(), second.1.as_str()), ("miss", "miss"));
    assert_eq!(h.sim.stats().api_calls, calls + 2, "one provider call per process");
    assert!(h.store.query("answer#acme#finance#eol", "", 10).await.unwrap().is_empty());
}

fn bearer_of(h: &ExactHarness) -> String {
    format!("Bearer {}", h.api.token)
}
