//! Each Lambda function binary, invoked the way Lambda invokes it: API Gateway v2 events for the HTTP
//! functions, an EventBridge scheduled event for `refresh` and `recover` (embedded storage here; the AWS
//! adapters are exercised against moto in `aws.rs`).

use chainkeeper::auth::{Claims, issue};
use chainkeeper_e2e::lambda_runtime::{LocalLambda, http_event, scheduled_event};
use serde_json::Value;

fn function(name: &str) -> std::path::PathBuf {
    let bin = chainkeeper_e2e::cli_bin().with_file_name(name);
    assert!(bin.exists(), "{} is missing: cargo build --workspace", bin.display());
    bin
}

fn body(v: &Value) -> Value {
    serde_json::from_str(v["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_answers_the_events_lambda_sends() {
    let dir = tempfile::tempdir().unwrap();
    let data = chainkeeper::wiring::DataDir::open(dir.path()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let token = issue(
        &data.signing_key().unwrap(),
        &Claims {
            sub: "ops".into(),
            org: None,
            scopes: vec!["admin".into()],
            exp: now + 3600,
            iat: now,
            jti: "t1".into(),
        },
    )
    .unwrap();
    let env = [("CHAINKEEPER_DATA_DIR", dir.path().display().to_string()), ("CHAINKEEPER_STAGE", "e2e".to_string())];

    let manage = LocalLambda::start(&function("manage"), &env).await.unwrap();
    let r = manage.invoke(http_event("GET", "/healthz", None, None)).await.unwrap();
    assert_eq!(r["statusCode"], 200, "{r}");
    let r = manage.invoke(http_event("POST", "/v1/orgs", Some(&token), Some(r#"{"name":"acme"}"#))).await.unwrap();
    assert_eq!(r["statusCode"], 201, "{r}");
    assert_eq!(body(&r)["name"], "acme");
    let r = manage
        .invoke(http_event("POST", "/v1/orgs/acme/databases", Some(&token), Some(r#"{"name":"finance"}"#)))
        .await
        .unwrap();
    assert_eq!(r["statusCode"], 201, "{r}");
    let r = manage.invoke(http_event("GET", "/v1/orgs/acme/databases", None, None)).await.unwrap();
    assert_eq!(r["statusCode"], 401, "no token, no data: {r}");
    assert_eq!(body(&r)["code"], "unauthorized");
    let r = manage.invoke(http_event("GET", "/openapi.json", None, None)).await.unwrap();
    assert_eq!(body(&r)["openapi"], "3.1.0");

    let query = LocalLambda::start(&function("query"), &env).await.unwrap();
    let r = query
        .invoke(http_event("POST", "/v1/orgs/acme/databases/finance/containers/eol/token", Some(&token), None))
        .await
        .unwrap();
    assert_eq!(r["statusCode"], 404, "{r}");
    assert_eq!(body(&r)["code"], "container_not_found");
    let r = query.invoke(http_event("GET", "/v1/orgs/acme/databases", Some(&token), None)).await.unwrap();
    assert_eq!(r["statusCode"], 404, "the query function serves only its own routes: {r}");

    let callback = LocalLambda::start(&function("callback"), &env).await.unwrap();
    let r = callback.invoke(http_event("GET", "/v1/callback?code=x&state=forged", None, None)).await.unwrap();
    assert_eq!(r["statusCode"], 400, "{r}");
    assert_eq!(body(&r)["code"], "authorization_state_invalid");

    let refresh = LocalLambda::start(&function("refresh"), &env).await.unwrap();
    let r = refresh.invoke(scheduled_event()).await.expect("the sweep runs");
    assert_eq!(r["due"], 0, "{r}");
    let recover = LocalLambda::start(&function("recover"), &env).await.unwrap();
    let r = recover.invoke(scheduled_event()).await.expect("the recovery run runs");
    assert_eq!(r["needs_repair"], 0, "{r}");
    // An event delivered twice is harmless.
    assert!(refresh.invoke(scheduled_event()).await.is_ok());

    // Each scheduled run emitted its gauges as CloudWatch EMF lines on standard output (also when 0: the
    // chains-need-repair alarm reads OldestRepairAgeSeconds), and nothing else is written there.
    let emitted = async |f: &LocalLambda| -> Vec<Value> {
        f.settled_stdout_lines()
            .await
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not an EMF line on stdout: {l}")))
            .collect()
    };
    for (f, names) in [
        (&refresh, ["SweepBacklog", "OldestOverdueSeconds"]),
        (&recover, ["ChainsNeedingRepair", "OldestRepairAgeSeconds"]),
    ] {
        let docs = emitted(f).await;
        for name in names {
            let doc = docs
                .iter()
                .find(|d| d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] == name)
                .unwrap_or_else(|| panic!("{name} was not emitted: {docs:?}"));
            assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], "chainkeeper");
            assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"], serde_json::json!([["Stage"]]));
            assert_eq!(doc["Stage"], "e2e");
            assert_eq!(doc[name], 0.0, "{doc}");
        }
    }
    for f in [&manage, &query, &callback] {
        emitted(f).await; // every stdout line of the HTTP functions is an EMF document too
    }

    for (name, f) in
        [("manage", &manage), ("query", &query), ("callback", &callback), ("refresh", &refresh), ("recover", &recover)]
    {
        eprintln!("{name}: init {:?} (debug build)", f.init_duration().unwrap());
    }
}
