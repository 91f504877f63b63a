//! The figures of [`crate::metrics_names`], recorded where they happen and read two ways:
//! - **CloudWatch Embedded Metric Format** (the Lambda functions): each figure is one JSON line on standard output
//!   with the `_aws` envelope (namespace `chainkeeper`, dimension `Stage`); CloudWatch Logs turns it into a
//!   metric. No API call, nothing to batch or flush.
//! - **Prometheus text** (`chainkeeper serve --metrics-listen`): every figure is also kept in this process's
//!   registry, which [`prometheus_text`] renders.
//!
//! One recorder per process (like the `metrics` crate's global recorder): the figures come from deep inside the
//! engine, the token endpoint and the use cases, and a recorder passed through every constructor would only carry
//! a sink that the process chooses once, at start ([`install`]). Until then nothing is printed and the registry
//! still counts (tests read it). Recording takes one short lock; no label holds a secret (outcomes and provider
//! profile names only).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value, json};

use crate::metrics_names as m;

/// Where the figures go besides the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Only the in-process registry (`serve`, the CLI, tests).
    Registry,
    /// Also one EMF line per figure on standard output, with this `Stage` dimension (Lambda).
    Emf { stage: String },
}

/// Upper bounds (ms) of the token-latency histogram's buckets.
const LATENCY_BUCKETS_MS: &[f64] = &[25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One series: a metric with its labels.
#[derive(Default, Clone, Debug)]
struct Series {
    value: f64,
    /// Histograms: observations per bucket (not cumulative) and their sum.
    buckets: Vec<u64>,
    count: u64,
}

type SeriesKey = (&'static str, Vec<(&'static str, String)>);

struct Recorder {
    sink: OnceLock<Sink>,
    series: Mutex<BTreeMap<SeriesKey, Series>>,
}

static RECORDER: Recorder = Recorder { sink: OnceLock::new(), series: Mutex::new(BTreeMap::new()) };

/// Chooses the sink, once per process (later calls are ignored).
pub fn install(sink: Sink) {
    let _ = RECORDER.sink.set(sink);
}

/// The sink of the environment: EMF in Lambda (`AWS_LAMBDA_FUNCTION_NAME`) or with `CHAINKEEPER_METRICS=emf`,
/// with the stage from `CHAINKEEPER_STAGE` (default `default`); otherwise the registry only.
pub fn install_from_env() {
    let emf = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
        || std::env::var("CHAINKEEPER_METRICS").is_ok_and(|v| v == "emf");
    if emf {
        let stage = std::env::var("CHAINKEEPER_STAGE").ok().filter(|s| !s.trim().is_empty());
        install(Sink::Emf { stage: stage.unwrap_or_else(|| "default".into()) });
    } else {
        install(Sink::Registry);
    }
}

// --- the figures --------------------------------------------------------------------------------------------

/// One refresh attempt of a chain ended with `outcome` (`metrics_names::OUTCOME_*`).
pub fn refresh_outcome(provider: &str, outcome: &'static str) {
    record(m::REFRESH_OUTCOME, Kind::Counter, "Count", &[(m::DIM_OUTCOME, outcome)], Some(provider), 1.0);
}

/// One token-endpoint request took `millis`.
pub fn provider_token_latency(provider: &str, millis: f64) {
    record(m::PROVIDER_TOKEN_LATENCY, Kind::Histogram, "Milliseconds", &[], Some(provider), millis);
}

/// The recovery run's view of broken chains: how many, and the age of the oldest (0 when none).
pub fn chains_needing_repair(count: usize, oldest_age_s: f64) {
    record(m::CHAINS_NEEDING_REPAIR, Kind::Gauge, "Count", &[], None, count as f64);
    record(m::OLDEST_REPAIR_AGE_SECONDS, Kind::Gauge, "Seconds", &[], None, oldest_age_s.max(0.0));
}

/// One auto-recovery attempt ended with `outcome` (`metrics_names::OUTCOME_*`).
pub fn recovery_outcome(outcome: &'static str) {
    record(m::RECOVERY_OUTCOME, Kind::Counter, "Count", &[(m::DIM_OUTCOME, outcome)], None, 1.0);
}

/// A broken chain could not be handed to the recover function.
pub fn recovery_handoff_failed() {
    record(m::RECOVERY_HANDOFF_FAILURES, Kind::Counter, "Count", &[], None, 1.0);
}

/// One request forwarded by the data proxy.
pub fn proxy_call(provider: &str) {
    record(m::PROXY_CALLS, Kind::Counter, "Count", &[], Some(provider), 1.0);
}

/// A caller or the sweep had to wait for a provider's rate limit or minimum token interval.
pub fn rate_limit_wait(provider: &str) {
    record(m::RATE_LIMIT_WAITS, Kind::Counter, "Count", &[], Some(provider), 1.0);
}

/// The sweep's view: chains due and left for the next sweep, and how far past due the most overdue one is.
pub fn sweep_backlog(left: usize, oldest_overdue_s: f64) {
    record(m::SWEEP_BACKLOG, Kind::Gauge, "Count", &[], None, left as f64);
    record(m::OLDEST_OVERDUE_SECONDS, Kind::Gauge, "Seconds", &[], None, oldest_overdue_s.max(0.0));
}

// --- recording ----------------------------------------------------------------------------------------------

fn record(name: &'static str, kind: Kind, unit: &str, dims: &[(&'static str, &str)], provider: Option<&str>, v: f64) {
    let mut labels: Vec<(&'static str, String)> = dims.iter().map(|(k, v)| (*k, v.to_string())).collect();
    if let Some(p) = provider {
        labels.push((m::DIM_PROVIDER, p.to_string()));
    }
    {
        let mut all = RECORDER.series.lock().unwrap_or_else(|e| e.into_inner());
        let s = all.entry((name, labels)).or_default();
        match kind {
            Kind::Counter => s.value += v,
            Kind::Gauge => s.value = v,
            Kind::Histogram => {
                if s.buckets.is_empty() {
                    s.buckets = vec![0; LATENCY_BUCKETS_MS.len()];
                }
                if let Some(i) = LATENCY_BUCKETS_MS.iter().position(|b| v <= *b) {
                    s.buckets[i] += 1;
                }
                s.value += v;
            }
        }
        s.count += 1;
    }
    if let Some(Sink::Emf { stage }) = RECORDER.sink.get() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let line = emf_line(now as i64, stage, name, unit, dims, provider, v);
        // One write of the whole line, so that lines of concurrent figures never interleave.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(format!("{line}\n").as_bytes());
        let _ = out.flush();
    }
}

/// One EMF document: the figure `name` = `value` with the dimension set `[Stage, dims…]` (the set the alarms
/// read) and, with a provider, a second set `[Stage, dims…, Provider]`.
pub fn emf_line(
    timestamp_ms: i64,
    stage: &str,
    name: &str,
    unit: &str,
    dims: &[(&str, &str)],
    provider: Option<&str>,
    value: f64,
) -> String {
    let mut set: Vec<&str> = vec![m::DIM_STAGE];
    set.extend(dims.iter().map(|(k, _)| *k));
    let mut sets = vec![set.clone()];
    if provider.is_some() {
        let mut with = set;
        with.push(m::DIM_PROVIDER);
        sets.push(with);
    }
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": m::NAMESPACE,
                "Dimensions": sets,
                "Metrics": [{"Name": name, "Unit": unit}],
            }],
        }),
    );
    doc.insert(m::DIM_STAGE.into(), Value::from(stage));
    for (k, v) in dims {
        doc.insert((*k).into(), Value::from(*v));
    }
    if let Some(p) = provider {
        doc.insert(m::DIM_PROVIDER.into(), Value::from(p));
    }
    doc.insert(name.into(), json!(value));
    Value::Object(doc).to_string()
}

// --- reading ------------------------------------------------------------------------------------------------

/// The Prometheus name of a contract name: `RefreshOutcome` → `chainkeeper_refresh_outcome`.
fn prometheus_name(name: &str) -> String {
    let mut out = String::from("chainkeeper");
    for ch in name.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

fn kind_of(name: &str) -> Kind {
    match name {
        m::PROVIDER_TOKEN_LATENCY => Kind::Histogram,
        m::CHAINS_NEEDING_REPAIR | m::OLDEST_REPAIR_AGE_SECONDS | m::SWEEP_BACKLOG | m::OLDEST_OVERDUE_SECONDS => {
            Kind::Gauge
        }
        _ => Kind::Counter,
    }
}

fn label_text(labels: &[(&str, String)], extra: Option<(&str, String)>) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .chain(extra.map(|(k, v)| (k.to_string(), v)))
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect();
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

/// Every figure recorded in this process, as Prometheus text exposition (version 0.0.4): counters end in
/// `_total`, the token latency is a histogram in milliseconds (`chainkeeper_provider_token_latency_ms`).
pub fn prometheus_text() -> String {
    let all = RECORDER.series.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut out = String::new();
    let mut last: Option<&str> = None;
    for ((name, labels), s) in &all {
        let kind = kind_of(name);
        let base = prometheus_name(name);
        let metric = match kind {
            Kind::Counter => format!("{base}_total"),
            Kind::Gauge => base,
            Kind::Histogram => format!("{base}_ms"),
        };
        if last != Some(*name) {
            let t = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            out.push_str(&format!("# TYPE {metric} {t}\n"));
            last = Some(*name);
        }
        match kind {
            Kind::Counter | Kind::Gauge => out.push_str(&format!("{metric}{} {}\n", label_text(labels, None), s.value)),
            Kind::Histogram => {
                let mut cumulative = 0;
                for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
                    cumulative += s.buckets.get(i).copied().unwrap_or(0);
                    let l = label_text(labels, Some(("le", bound.to_string())));
                    out.push_str(&format!("{metric}_bucket{l} {cumulative}\n"));
                }
                let l = label_text(labels, Some(("le", "+Inf".into())));
                out.push_str(&format!("{metric}_bucket{l} {}\n", s.count));
                out.push_str(&format!("{metric}_sum{} {}\n", label_text(labels, None), s.value));
                out.push_str(&format!("{metric}_count{} {}\n", label_text(labels, None), s.count));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_line_is_json_whose_envelope_matches_its_values() {
        let line = emf_line(
            1_800_000_000_000,
            "prod",
            m::REFRESH_OUTCOME,
            "Count",
            &[(m::DIM_OUTCOME, m::OUTCOME_NEEDS_REPAIR)],
            Some("exact-online-nl"),
            1.0,
        );
        assert!(!line.contains('\n'), "one line");
        let doc: Value = serde_json::from_str(&line).expect("valid JSON");
        let aws = &doc["_aws"];
        assert_eq!(aws["Timestamp"], 1_800_000_000_000i64);
        let cw = aws["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(cw.len(), 1);
        assert_eq!(cw[0]["Namespace"], "chainkeeper");
        assert_eq!(cw[0]["Metrics"], json!([{"Name": "RefreshOutcome", "Unit": "Count"}]));
        // The set the alarms read first, then the one with the provider.
        assert_eq!(cw[0]["Dimensions"], json!([["Stage", "Outcome"], ["Stage", "Outcome", "Provider"]]));
        // Every dimension named in a set and every metric named is a member of the document.
        for set in cw[0]["Dimensions"].as_array().unwrap() {
            for d in set.as_array().unwrap() {
                assert!(doc[d.as_str().unwrap()].is_string(), "dimension {d} has a value in {line}");
            }
        }
        assert_eq!(doc["Stage"], "prod");
        assert_eq!(doc["Outcome"], "needs_repair");
        assert_eq!(doc["Provider"], "exact-online-nl");
        assert_eq!(doc["RefreshOutcome"], 1.0);
        // CloudWatch allows at most 30 dimensions per set and 100 metrics per document: far from it.
        let plain = emf_line(0, "dev", m::CHAINS_NEEDING_REPAIR, "Count", &[], None, 3.0);
        let doc: Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Stage"]]));
        assert_eq!(doc["ChainsNeedingRepair"], 3.0);
        assert!(doc.get("Provider").is_none());
    }

    #[test]
    fn the_registry_renders_counters_gauges_and_histograms_as_prometheus_text() {
        refresh_outcome("unit-test-provider", m::OUTCOME_OK);
        refresh_outcome("unit-test-provider", m::OUTCOME_OK);
        provider_token_latency("unit-test-provider", 30.0);
        provider_token_latency("unit-test-provider", 20_000.0);
        chains_needing_repair(2, 90.0);
        let text = prometheus_text();
        assert!(
            text.contains("chainkeeper_refresh_outcome_total{outcome=\"ok\",provider=\"unit-test-provider\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE chainkeeper_refresh_outcome_total counter\n"), "{text}");
        // Gauges are per process: under `cargo test` another test's recovery run may set them in between.
        if std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test") {
            assert!(text.contains("chainkeeper_chains_needing_repair 2\n"), "{text}");
            assert!(text.contains("chainkeeper_oldest_repair_age_seconds 90\n"), "{text}");
        }
        assert!(text.contains("# TYPE chainkeeper_chains_needing_repair gauge\n"), "{text}");
        let h = "chainkeeper_provider_token_latency_ms";
        assert!(text.contains(&format!("{h}_bucket{{provider=\"unit-test-provider\",le=\"25\"}} 0\n")), "{text}");
        assert!(text.contains(&format!("{h}_bucket{{provider=\"unit-test-provider\",le=\"50\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{h}_bucket{{provider=\"unit-test-provider\",le=\"10000\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{h}_bucket{{provider=\"unit-test-provider\",le=\"+Inf\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("{h}_count{{provider=\"unit-test-provider\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("{h}_sum{{provider=\"unit-test-provider\"}} 20030\n")), "{text}");
    }
}
