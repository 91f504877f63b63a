//! The REST API as Exact serves it (issue 15): entity sets that page by `__next` + `$skiptoken`, the query
//! options, `$count`, `$metadata` and the service document, the minutely and daily limits per (app, division)
//! with their headers — and a real OData client library (`pyodata`) reading a paged set.

mod common;

use std::collections::HashSet;

use common::*;
use exact_sim::{DEFAULT_CLIENT_ID, DEFAULT_DIVISION, DEFAULT_USER_ID, ExactSim, SimConfig, SimDataset, SimUser};
use serde_json::Value;

/// A simulator without practical rate limits, with `accounts` and `lines` rows, and a fresh access token.
async fn sim_with(accounts: usize, lines: usize) -> (ExactSim, String) {
    let sim = start(SimConfig {
        minutely_limit: 1_000_000,
        daily_limit: 1_000_000,
        dataset: SimDataset { seed: 3, accounts, transaction_lines: lines },
        ..SimConfig::default()
    })
    .await;
    let (at, _) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    (sim, at)
}

async fn get(url: &str, at: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client().get(url).bearer_auth(at).header("accept", "application/json").send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Follows `__next` from `first`; returns every row and the number of pages.
async fn all_pages(first: &str, at: &str) -> (Vec<Value>, usize) {
    let mut rows = Vec::new();
    let mut url = first.to_string();
    let mut pages = 0;
    loop {
        let (status, _, j) = get(&url, at).await;
        assert_eq!(status, 200, "{url}: {j}");
        pages += 1;
        rows.extend(j["d"]["results"].as_array().unwrap().iter().cloned());
        match j["d"]["__next"].as_str() {
            Some(n) => url = n.to_string(),
            None => break,
        }
        assert!(pages < 10_000, "no end");
    }
    (rows, pages)
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter().map(|r| r["ID"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn ten_thousand_accounts_page_by_60_and_every_row_comes_once() {
    let (sim, at) = sim_with(10_000, 0).await;
    let base = format!("{}/api/v1/{DEFAULT_DIVISION}", sim.base_url);
    let (status, _, first) = get(&format!("{base}/crm/Accounts"), &at).await;
    assert_eq!(status, 200);
    let page = first["d"]["results"].as_array().unwrap();
    assert_eq!(page.len(), 60, "Exact's page size");
    let next = first["d"]["__next"].as_str().unwrap();
    let last_id = page[59]["ID"].as_str().unwrap();
    assert_eq!(next, format!("{base}/crm/Accounts?$skiptoken=guid'{last_id}'"), "absolute, keyed on the last row");
    let a = &page[0];
    assert!(a["__metadata"]["uri"].as_str().unwrap().starts_with(&format!("{base}/crm/Accounts(guid'")));
    assert_eq!(a["__metadata"]["type"], "Exact.Web.Api.Models.Account");
    assert_eq!(a["Code"].as_str().unwrap().len(), 18, "fixed width, left-padded");
    assert!(a["Created"].as_str().unwrap().starts_with("/Date("), "{a}");

    let (rows, pages) = all_pages(&format!("{base}/crm/Accounts"), &at).await;
    assert_eq!(pages, 167, "ceil(10000 / 60)");
    let got = ids(&rows);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 10_000, "no duplicates");
    assert_eq!(got, sim.dataset_ids(DEFAULT_DIVISION, "crm/Accounts"), "every row, in key order");
    let st = sim.stats();
    assert_eq!((st.api_pages_served, st.api_rows_served), (168, 10_060));

    // The bulk endpoint: 1,000 a page, $select required and carried in __next, no $skip.
    let (rows, pages) = all_pages(&format!("{base}/bulk/CRM/Accounts?$select=ID,Name"), &at).await;
    assert_eq!((rows.len(), pages), (10_000, 10));
    assert_eq!(ids(&rows), sim.dataset_ids(DEFAULT_DIVISION, "bulk/CRM/Accounts"));
    assert!(rows[0].get("City").is_none() && rows[0].get("Name").is_some());
    let (status, _, e) = get(&format!("{base}/bulk/CRM/Accounts"), &at).await;
    assert_eq!(status, 400);
    assert!(e["error"]["message"]["value"].as_str().unwrap().contains("$select is mandatory"), "{e}");
    let (status, _, _) = get(&format!("{base}/bulk/CRM/Accounts?$select=ID&$skip=5"), &at).await;
    assert_eq!(status, 400);
    // The same data differ per division, and are the same for the same configuration.
    assert_ne!(sim.dataset_ids(DEFAULT_DIVISION, "crm/Accounts"), sim.dataset_ids(42, "crm/Accounts"));
    let (again, _) = sim_with(10_000, 0).await;
    assert_eq!(again.dataset_ids(DEFAULT_DIVISION, "crm/Accounts"), sim.dataset_ids(DEFAULT_DIVISION, "crm/Accounts"));
}

#[tokio::test]
async fn query_options_select_filter_top_skip_orderby_inlinecount_and_count() {
    let (sim, at) = sim_with(500, 3000).await;
    let base = format!("{}/api/v1/{DEFAULT_DIVISION}", sim.base_url);
    let accounts = format!("{base}/crm/Accounts");

    // $select: only those properties (and __metadata); carried into __next.
    let (_, _, j) = get(&format!("{accounts}?$select=ID,Name"), &at).await;
    let mut keys: Vec<&String> = j["d"]["results"][0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["ID", "Name", "__metadata"]);
    assert!(j["d"]["__next"].as_str().unwrap().contains("$select=ID,Name&$skiptoken="));

    // $filter with eq / and / gt, over every page; the result equals a filter done here.
    let (all, _) = all_pages(&accounts, &at).await;
    let want: Vec<&Value> = all.iter().filter(|r| r["City"] == "Delft" && r["IsSupplier"] == false).collect();
    assert!(!want.is_empty());
    let (got, _) =
        all_pages(&format!("{accounts}?$filter=City%20eq%20'Delft'%20and%20IsSupplier%20eq%20false"), &at).await;
    assert_eq!(ids(&got), want.iter().map(|r| r["ID"].as_str().unwrap().to_string()).collect::<Vec<_>>());
    let padded = all[7]["Code"].as_str().unwrap();
    let (_, _, j) = get(&format!("{accounts}?$filter=Code eq '{}'", padded.replace(' ', "%20")), &at).await;
    assert_eq!(j["d"]["results"].as_array().unwrap().len(), 1, "the padded code matches");
    let (_, _, j) = get(&format!("{accounts}?$filter=Code eq '{}'", padded.trim()), &at).await;
    assert_eq!(j["d"]["results"].as_array().unwrap().len(), 0, "an unpadded code matches nothing, silently");

    let lines = format!("{base}/financialtransaction/TransactionLines");
    let (got, _) =
        all_pages(&format!("{lines}?$filter=AmountDC%20gt%204000%20and%20FinancialYear%20eq%202025"), &at).await;
    assert!(!got.is_empty());
    assert!(got.iter().all(|r| r["AmountDC"].as_f64().unwrap() > 4000.0 && r["FinancialYear"] == 2025));
    let (got, _) =
        all_pages(&format!("{lines}?$filter=Date%20ge%20datetime'2025-06-01T00:00'&$select=ID,Date"), &at).await;
    assert!(!got.is_empty() && got.len() < 3000);

    // $inlinecount=allpages: __count (a string) is the filtered total; $count is a bare number.
    let (_, _, j) = get(&format!("{accounts}?$inlinecount=allpages&$filter=Country%20eq%20'BE'"), &at).await;
    let total = all.iter().filter(|r| r["Country"] == "BE").count();
    assert_eq!(j["d"]["__count"], total.to_string());
    let r =
        client().get(format!("{accounts}/$count?$filter=Country%20eq%20'BE'")).bearer_auth(&at).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), total.to_string());

    // $top across pages: 100 rows = 60 + 40, the link carries what is left of $top.
    let (_, _, j) = get(&format!("{accounts}?$top=100"), &at).await;
    assert!(j["d"]["__next"].as_str().unwrap().contains("$top=40&$skiptoken="));
    let (rows, pages) = all_pages(&format!("{accounts}?$top=100"), &at).await;
    assert_eq!((rows.len(), pages), (100, 2));
    assert_eq!(ids(&rows), ids(&all[..100]));
    // $skip on a classic endpoint.
    let (rows, _) = all_pages(&format!("{accounts}?$skip=450"), &at).await;
    assert_eq!(ids(&rows), ids(&all[450..]));

    // $orderby desc pages with the order values in the $skiptoken; every row once, in order.
    let (rows, pages) = all_pages(&format!("{lines}?$orderby=AmountDC%20desc&$select=ID,AmountDC"), &at).await;
    assert_eq!((rows.len(), pages), (3000, 50));
    assert!(rows.windows(2).all(|w| w[0]["AmountDC"].as_f64() >= w[1]["AmountDC"].as_f64()));
    assert_eq!(ids(&rows).into_iter().collect::<HashSet<_>>().len(), 3000);
    let (_, _, j) = get(&format!("{lines}?$orderby=AmountDC%20desc&$select=ID,AmountDC"), &at).await;
    assert!(j["d"]["__next"].as_str().unwrap().contains("$skiptoken="), "{}", j["d"]["__next"]);

    // Errors in WCF's words, as Exact's 400s.
    for (q, text) in [
        (
            "$filter=ID%20eq%203",
            "Operator 'eq' incompatible with operand types 'System.Guid' and 'System.Int32' at position 3.",
        ),
        ("$select=Nope", "No property 'Nope' exists in type 'Exact.Web.Api.Models.Account'"),
        ("$filter=Name%20eq", "Syntax error"),
        ("$frobnicate=1", "system-reserved '$' character"),
        ("$skiptoken=guid'nope'", "Invalid $skiptoken"),
        ("$expand=BankAccounts", "$expand"),
    ] {
        let (status, _, e) = get(&format!("{accounts}?{q}"), &at).await;
        assert_eq!(status, 400, "{q}");
        assert!(e["error"]["message"]["value"].as_str().unwrap().contains(text), "{q}: {e}");
    }

    // One entity by key.
    let id = all[3]["ID"].as_str().unwrap();
    let (status, _, j) = get(&format!("{accounts}(guid'{id}')?$select=Name"), &at).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["d"]["Name"], all[3]["Name"]);
    let (status, _, _) = get(&format!("{accounts}(guid'00000000-0000-4000-8000-000000000000')"), &at).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metadata_and_service_document() {
    let (sim, at) = sim_with(10, 10).await;
    let base = format!("{}/api/v1/{DEFAULT_DIVISION}", sim.base_url);
    let r = client().get(format!("{base}/crm/$metadata")).bearer_auth(&at).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/xml"));
    assert!(r.headers().contains_key("x-ratelimit-minutely-remaining"), "it has a division: it counts");
    let x = r.text().await.unwrap();
    for needle in [
        "<edmx:Edmx Version=\"1.0\"",
        "<EntityType Name=\"Account\">",
        "<PropertyRef Name=\"ID\" />",
        "<Property Name=\"ID\" Type=\"Edm.Guid\" Nullable=\"false\" />",
        "<EntitySet Name=\"Accounts\" EntityType=\"Exact.Web.Api.Models.Account\" />",
        "<EntityContainer Name=\"CrmService\"",
    ] {
        assert!(x.contains(needle), "{needle} in {x}");
    }
    let r = client().get(format!("{base}/financialtransaction/")).bearer_auth(&at).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let x = r.text().await.unwrap();
    assert!(x.contains("<collection href=\"TransactionLines\">"), "{x}");
    let (status, _, j) = get(&format!("{base}/crm"), &at).await;
    assert_eq!(status, 200);
    assert_eq!(j["d"]["EntitySets"], serde_json::json!(["Accounts"]));
    assert_eq!(client().get(format!("{base}/crm/$metadata")).send().await.unwrap().status(), 401, "needs a token");
}

#[tokio::test]
async fn minutely_and_daily_limits_per_app_and_division_with_exacts_headers() {
    let other_division = 777;
    let sim = start(SimConfig {
        minutely_limit: 60,
        daily_limit: 100,
        users: vec![
            SimUser {
                user_id: DEFAULT_USER_ID.into(),
                username: "a".into(),
                password: "p".into(),
                totp_secret_base32: None,
                full_name: "A".into(),
                division: DEFAULT_DIVISION,
            },
            SimUser {
                user_id: "u-2".into(),
                username: "b".into(),
                password: "p".into(),
                totp_secret_base32: None,
                full_name: "B".into(),
                division: other_division,
            },
        ],
        ..SimConfig::default()
    })
    .await;
    let (at, _) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    let (at2, _) = sim.mint_tokens(DEFAULT_CLIENT_ID, "u-2");
    let now = sim.clock().now_ms();
    let minute = now - now % 60_000 + 60_000;
    sim.clock().set_ms(minute + 5_000);
    let url = format!("{}/api/v1/{DEFAULT_DIVISION}/crm/Accounts?$select=ID", sim.base_url);
    for i in 1..=60u32 {
        let (status, h, _) = get(&url, &at).await;
        assert_eq!(status, 200);
        assert_eq!(h["x-ratelimit-minutely-limit"], "60");
        assert_eq!(h["x-ratelimit-minutely-remaining"], (60 - i).to_string().as_str());
        assert_eq!(h["x-ratelimit-minutely-reset"], (minute + 60_000).to_string().as_str(), "epoch ms");
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], (100 - i).to_string().as_str());
        let day = minute - minute.rem_euclid(86_400_000) + 86_400_000;
        assert_eq!(h["x-ratelimit-reset"], day.to_string().as_str(), "the next UTC midnight, epoch ms");
    }
    let (status, h, e) = get(&url, &at).await;
    assert_eq!(status, 429);
    assert_eq!(h["x-ratelimit-minutely-remaining"], "0");
    assert!(h.get("retry-after").is_none(), "Exact documents none");
    assert!(e["error"]["message"]["value"].is_string());
    // Another division of the same app has its own budget; current/Me has none and no headers.
    let (status, h, _) = get(&format!("{}/api/v1/{other_division}/crm/Accounts", sim.base_url), &at2).await;
    assert_eq!((status, h["x-ratelimit-minutely-remaining"].to_str().unwrap()), (200, "59"));
    let r = client().get(format!("{}/api/v1/current/Me", sim.base_url)).bearer_auth(&at).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-remaining").is_none());

    // The next minute: 40 more reach the daily limit of 100, then 429 until the next day.
    sim.clock().advance(secs(60));
    for _ in 0..40 {
        assert_eq!(get(&url, &at).await.0, 200);
    }
    let (status, h, _) = get(&url, &at).await;
    assert_eq!((status, h["x-ratelimit-remaining"].to_str().unwrap()), (429, "0"));
    sim.clock().advance(secs(120));
    assert_eq!(get(&url, &at).await.0, 429, "still the same day");
    sim.clock().advance(secs(86_400));
    let (at, _) = sim.mint_tokens(DEFAULT_CLIENT_ID, DEFAULT_USER_ID); // the old one lived 600 s
    assert_eq!(get(&url, &at).await.0, 200, "a new day");
    let st = sim.stats();
    assert_eq!((st.api_rate_limited, st.api_daily_limited), (3, 2));
}

#[tokio::test]
async fn odata_v4_style_paging_for_other_providers() {
    let (sim, at) = sim_with(150, 0).await;
    let url = format!("{}/odata4/{DEFAULT_DIVISION}/crm/Accounts?$count=true&$select=ID,Created", sim.base_url);
    let (status, h, j) = get(&url, &at).await;
    assert_eq!(status, 200);
    assert_eq!(h["odata-version"], "4.0");
    assert_eq!(j["@odata.count"], 150);
    assert_eq!(j["value"].as_array().unwrap().len(), 60);
    assert!(j["value"][0]["Created"].as_str().unwrap().ends_with('Z'), "ISO dates");
    let mut rows = j["value"].as_array().unwrap().clone();
    let mut next = j["@odata.nextLink"].as_str().map(str::to_string);
    while let Some(n) = next {
        let (_, _, j) = get(&n, &at).await;
        rows.extend(j["value"].as_array().unwrap().iter().cloned());
        next = j["@odata.nextLink"].as_str().map(str::to_string);
    }
    assert_eq!(ids(&rows), sim.dataset_ids(DEFAULT_DIVISION, "crm/Accounts"));
}

/// `pyodata` (SAP's OData v2 client, from PyPI) reads `$metadata`, then the entity set page by page through
/// `__next`, with the access token as a Bearer header: every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyodata_reads_a_paged_entity_set() {
    let (sim, at) = sim_with(250, 0).await;
    let script = r#"
import sys, requests, pyodata
service_url, token = sys.argv[1], sys.argv[2]
s = requests.Session()
s.headers.update({"Authorization": "Bearer " + token, "Accept": "application/json"})
client = pyodata.Client(service_url, s)
ids = []
req = client.entity_sets.Accounts.get_entities().select("ID,Name")
while True:
    page = req.execute()
    ids.extend(str(e.ID) for e in page)
    if not page.next_url:
        break
    req = client.entity_sets.Accounts.get_entities().next_url(page.next_url)
print("\n".join(ids))
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(format!("{}/api/v1/{DEFAULT_DIVISION}/crm", sim.base_url))
        .arg(&at)
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pyodata failed (is it installed? `pip install pyodata`): {stderr}");
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_lowercase).collect();
    assert_eq!(got, sim.dataset_ids(DEFAULT_DIVISION, "crm/Accounts"), "{stderr}");
    assert_eq!(sim.stats().api_pages_served, 5, "250 rows = 5 pages of 60");
}
