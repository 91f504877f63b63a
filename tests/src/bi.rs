//! The BI proof at test scale, shared by the e2e test (`bi::sixty_four_readers…`) and
//! `chainkeeper-bench odata`: readers page through 10,000 rows of Exact's `TransactionLines` (60 a page) through
//! the OData feed against the simulator's 60 calls a minute. The minute turns (both clocks) whenever no call has
//! reached the provider for a moment, that is when every reader is queued or done.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::container_path;
use crate::exact::ExactHarness;

/// Rows behind the entity set the readers page through.
pub const ROWS: usize = 10_000;

/// The harness of the readers' run: 10,000 `TransactionLines`, no per-token limit, Exact's 60 calls a minute with
/// a queue as long as the run needs.
pub async fn readers_harness() -> ExactHarness {
    ExactHarness::start_all(
        |c| c.dataset.transaction_lines = ROWS,
        "[limits]\ntoken_requests_per_s = 0.0",
        "",
        "rate_limit = { per_minute = 60, per_day = 5000, company_segment = 1, max_wait_s = 600 }",
    )
    .await
}

/// What a readers' run saw.
#[derive(Debug)]
pub struct ReadersRun {
    pub readers: usize,
    /// Readers that got every row once, in the provider's order.
    pub complete: usize,
    /// Page calls that reached the provider, and the identity calls (for the current division).
    pub page_calls: u64,
    pub identity_calls: u64,
    /// `429`s the provider answered.
    pub provider_429s: u64,
    /// Page calls in each simulated minute.
    pub per_minute: Vec<u64>,
    pub elapsed: Duration,
}

impl std::fmt::Display for ReadersRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} readers x {ROWS} rows: {}/{} readers got every row once; {} provider page calls over {} minutes \
             ({:?} a minute), {} identity call(s), {} provider 429s, {:.1} s",
            self.readers,
            self.complete,
            self.readers,
            self.page_calls,
            self.per_minute.len(),
            self.per_minute,
            self.identity_calls,
            self.provider_429s,
            self.elapsed.as_secs_f64()
        )
    }
}

/// `readers` readers follow `__next` from the first page of `{division}`'s `TransactionLines` to the last.
pub async fn page_through(h: &ExactHarness, readers: usize) -> anyhow::Result<ReadersRun> {
    let expected = h.sim.dataset_ids(h.user.division, "financialtransaction/TransactionLines");
    anyhow::ensure!(expected.len() == ROWS, "the simulator holds {} rows", expected.len());
    let before = h.sim.stats();
    let started = Instant::now();
    let feed = format!("{}/odata", container_path("acme", "finance", "eol"));
    let first = format!("{}{feed}/v1/{{division}}/financialtransaction/TransactionLines?$select=ID", h.api.base);
    let tasks: Vec<_> = (0..readers)
        .map(|_| {
            let (http, token, first) = (h.api.http.clone(), h.api.token.clone(), first.clone());
            tokio::spawn(async move {
                let (mut ids, mut url) = (Vec::new(), first);
                loop {
                    let res = http.get(&url).bearer_auth(&token).header("accept", "application/json").send().await?;
                    anyhow::ensure!(res.status() == 200, "{url}: {}", res.status());
                    let page: Value = res.json().await?;
                    let rows = page["d"]["results"].as_array().cloned().unwrap_or_default();
                    ids.extend(rows.iter().filter_map(|r| r["ID"].as_str().map(String::from)));
                    match page["d"]["__next"].as_str() {
                        Some(next) => url = next.to_string(),
                        None => return Ok(ids),
                    }
                }
            })
        })
        .collect();
    let (mut last, mut minute_start) = (h.sim.stats().api_pages_served, h.sim.stats().api_pages_served);
    let mut per_minute = Vec::new();
    while !tasks.iter().all(|r| r.is_finished()) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = h.sim.stats().api_pages_served;
        if now == last && !tasks.iter().all(|r| r.is_finished()) {
            per_minute.push(now - minute_start);
            minute_start = now;
            h.advance(Duration::from_secs(60));
            anyhow::ensure!(per_minute.len() < 30, "the readers never finished: {per_minute:?}");
        }
        last = now;
    }
    per_minute.push(h.sim.stats().api_pages_served - minute_start);
    let mut complete = 0;
    for t in tasks {
        if t.await?? == expected {
            complete += 1;
        }
    }
    let after = h.sim.stats();
    let page_calls = after.api_pages_served - before.api_pages_served;
    Ok(ReadersRun {
        readers,
        complete,
        page_calls,
        identity_calls: (after.api_calls - before.api_calls) - page_calls,
        provider_429s: after.api_rate_limited - before.api_rate_limited,
        per_minute,
        elapsed: started.elapsed(),
    })
}
