//! The sweep fans out in AWS (issue 19): through the Lambda functions on moto, the `refresh` schedule reads every
//! shard of the due index (and the unsharded partition of older versions), prints the backlog metrics, and hands
//! the chains due to the sweep queue (SQS) in batches; the test plays Lambda's SQS poller (receive, deliver the
//! batch to `refresh` as an SQS event, delete what succeeded), and the workers refresh every chain. A message a
//! worker cannot run is reported as a batch item failure and ends in the dead-letter queue. And the migration from
//! the unsharded index (and from a lowered shard count): `chainkeeper migrate due-shards --aws` on DynamoDB.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::Message;
use chainkeeper::aws::dynamo::DynamoStore;
use chainkeeper::ids::{Alias, ContainerRef, DbName, OrgId};
use chainkeeper::records::{LEGACY_DUE_PK, chain_key, due_shard_of, due_shard_pk};
use chainkeeper::store::{Condition, Index, IndexKey, Put, Store};
use chainkeeper_e2e::exact::{sim_profile_toml, sim_user};
use chainkeeper_e2e::lambda_runtime::{LocalLambda, http_event, scheduled_event};
use chainkeeper_e2e::moto::Moto;
use serde_json::{Value, json};

const CHAINS: u32 = 8;
const SHARDS: u32 = 4;
const BATCH: usize = 3;

fn body(v: &Value) -> Value {
    serde_json::from_str(v["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

fn container(alias: &str) -> ContainerRef {
    ContainerRef {
        org: OrgId::parse("acme").unwrap(),
        db: DbName::parse("finance").unwrap(),
        alias: Alias::parse(alias).unwrap(),
    }
}

async fn start(name: &str, env: &[(&'static str, String)]) -> LocalLambda {
    let bin = chainkeeper_e2e::cli_bin().with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: cargo build --workspace --features chainkeeper-e2e/aws,chainkeeper-cli/aws",
        bin.display()
    );
    LocalLambda::start(&bin, env).await.unwrap()
}

/// The value of metric `name` in the function's EMF lines so far (the last one).
async fn emf(f: &LocalLambda, name: &str) -> Option<f64> {
    f.settled_stdout_lines()
        .await
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|doc| doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] == name)
        .filter_map(|doc| doc[name].as_f64())
        .next_back()
}

/// Invokes an HTTP function with the platform token; asserts the status.
async fn call(token: &str, f: &LocalLambda, method: &str, p: &str, payload: Option<Value>, want: u16) -> Value {
    let event = http_event(method, p, Some(token), payload.map(|p| p.to_string()).as_deref());
    let r = f.invoke(event).await.unwrap_or_else(|e| panic!("{method} {p}: the function failed: {e}"));
    assert_eq!(r["statusCode"], want, "{method} {p}: {r}");
    r
}

struct Poller {
    sqs: aws_sdk_sqs::Client,
    url: String,
    arn: String,
}

impl Poller {
    async fn receive(&self) -> Vec<Message> {
        let r = self.sqs.receive_message().queue_url(&self.url).max_number_of_messages(10).send().await;
        r.unwrap().messages.unwrap_or_default()
    }

    /// Delivers `messages` to the worker as an SQS event; deletes those not reported failed; returns the failed.
    async fn deliver(&self, worker: &LocalLambda, messages: &[Message]) -> Vec<String> {
        let records: Vec<Value> = messages
            .iter()
            .map(|m| {
                json!({
                    "messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                    "attributes": {}, "messageAttributes": {}, "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs", "eventSourceARN": self.arn, "awsRegion": "eu-west-1"
                })
            })
            .collect();
        let r = worker.invoke(json!({ "Records": records })).await.expect("the refresh worker runs the batch");
        let failed: Vec<String> = r["batchItemFailures"]
            .as_array()
            .unwrap_or_else(|| panic!("a partial batch response: {r}"))
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
            .collect();
        for m in messages.iter().filter(|m| !failed.iter().any(|f| Some(f.as_str()) == m.message_id())) {
            let handle = m.receipt_handle().unwrap();
            self.sqs.delete_message().queue_url(&self.url).receipt_handle(handle).send().await.unwrap();
        }
        failed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_hands_every_due_chain_of_every_shard_to_refresh_workers_through_sqs() {
    let moto = Moto::start().await.unwrap();
    let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
    let redirect = "https://ck.example/v1/callback";
    let sim = chainkeeper_e2e::exact::quick_sim(CHAINS, redirect).await;
    let chainkeeper_e2e::moto::DeployedBasics { table, signing, .. } =
        chainkeeper_e2e::moto::deploy_basics(&sdk, redirect).await;
    // The queues as the template makes them: the sweep queue redriving to its dead-letter queue after three
    // receives; a visibility timeout of 1 s here, so that a failed batch comes back at once.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (url, dlq_url) = chainkeeper_e2e::moto::queue_with_dead_letters(&sqs, "ck-sweep", 1).await;
    let poller = Poller { sqs: sqs.clone(), arn: chainkeeper_e2e::moto::queue_arn(&sqs, &url).await, url: url.clone() };

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chainkeeper.toml");
    let engine = format!("[engine]\ndue_shards = {SHARDS}\nsweep_batch = {BATCH}\n");
    std::fs::write(&config, format!("{}min_token_interval_s = 0\n{engine}", sim_profile_toml(&sim))).unwrap();
    let mut env = chainkeeper_e2e::moto::function_env(&moto, &table, &config);
    // As in the template: only refresh has the sweep queue, and it checks no API tokens.
    let refresh = start("refresh", &[&env[..], &[("CHAINKEEPER_SWEEP_QUEUE_URL", url.clone())]].concat()).await;
    env.push(("CHAINKEEPER_SIGNING_KEY_SECRET", chainkeeper_e2e::moto::SIGNING_KEY_SECRET.to_string()));
    let (manage, callback, query) =
        (start("manage", &env).await, start("callback", &env).await, start("query", &env).await);
    let token = chainkeeper_e2e::moto::platform_token_from_secret(&signing);
    call(&token, &manage, "POST", "/v1/orgs", Some(json!({"name": "acme"})), 201).await;
    call(&token, &manage, "POST", "/v1/orgs/acme/databases", Some(json!({"name": "finance"})), 201).await;

    // Eight chains a person authorized, each in use (a token handed out): due ahead of their 2 s tokens' expiry.
    let aliases: Vec<String> = (0..CHAINS).map(|i| format!("c{i}")).collect();
    for (i, alias) in aliases.iter().enumerate() {
        let user = sim_user(i as u32 + 1);
        let c = json!({"alias": alias, "kind": "oauth2_code", "provider": "exact-online-nl"});
        call(&token, &manage, "POST", "/v1/orgs/acme/databases/finance/containers", Some(c), 201).await;
        let p = format!("/v1/orgs/acme/databases/finance/containers/{alias}");
        let r = call(&token, &callback, "POST", &format!("{p}/authorize"), None, 200).await;
        let authorize_url = body(&r)["authorize_url"].as_str().unwrap().to_string();
        let back = exact_sim::browser::login(
            &authorize_url,
            &user.username,
            &user.password,
            sim.totp_now(&user.username).as_deref(),
        )
        .await
        .expect("a person signs in at the simulator");
        let back = url::Url::parse(&back).unwrap();
        let cb = http_event("GET", &format!("/v1/callback?{}", back.query().unwrap()), None, None);
        assert_eq!(callback.invoke(cb).await.unwrap()["statusCode"], 200);
        call(&token, &query, "POST", &format!("{p}/token"), None, 200).await;
    }
    let shards: BTreeSet<u32> = aliases.iter().map(|a| due_shard_of(&container(a), SHARDS)).collect();
    assert!(shards.len() > 1, "the chains are spread over several shards: {shards:?}");

    // One chain as an older version wrote it: in the unsharded `due` partition.
    let store =
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table.clone(), Arc::new(chainkeeper::clock::SystemClock));
    let old = container("c0");
    let item = store.get(&chain_key(&old)).await.unwrap().expect("the chain");
    let due = item.due.clone().expect("the chain is in the due index");
    assert_eq!(due.pk, due_shard_pk(due_shard_of(&old, SHARDS)), "written in its shard");
    let mut put = Put::new(item.key.clone(), item.body.clone(), Condition::Version(item.version));
    put.due = Some(IndexKey { pk: LEGACY_DUE_PK.into(), sk: due.sk.clone() });
    store.put(put).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await; // every access token expired

    // The schedule: every due chain, from every shard and the legacy partition, in batches of three.
    let refreshes = sim.stats().refresh_requests;
    let r = refresh.invoke(scheduled_event()).await.expect("the schedule runs");
    assert_eq!((r["due"].as_u64(), r["batches_queued"].as_u64()), (Some(8), Some(3)), "{r}");
    assert_eq!(sim.stats().refresh_requests, refreshes, "the schedule itself refreshes nothing");
    assert_eq!(emf(&refresh, "SweepBacklog").await, Some(8.0), "the backlog is printed (EMF)");
    let overdue = emf(&refresh, "OldestOverdueSeconds").await.expect("the oldest overdue age is printed (EMF)");
    assert!(overdue > 1.0 && overdue < 600.0, "{overdue}");
    let mut messages = Vec::new();
    for _ in 0..5 {
        messages.extend(poller.receive().await);
        if messages.len() >= 3 {
            break;
        }
    }
    assert_eq!(messages.len(), 3, "{messages:?}");
    let mut named = Vec::new();
    for m in &messages {
        let batch: Value = serde_json::from_str(m.body().unwrap()).unwrap();
        let chains = batch["chains"].as_array().unwrap();
        assert!(chains.len() <= BATCH, "{batch}");
        named.extend(chains.iter().map(|c| c["container"].as_str().unwrap().to_string()));
    }
    named.sort();
    assert_eq!(named, aliases, "every due chain exactly once");

    // The workers: each batch refreshed; the legacy entry moved into its shard by the refresh.
    assert!(poller.deliver(&refresh, &messages).await.is_empty(), "every batch ran");
    assert_eq!(sim.stats().refresh_requests, refreshes + u64::from(CHAINS), "one refresh per chain");
    assert!(store.query_index(Index::Due, LEGACY_DUE_PK, None, 10).await.unwrap().is_empty(), "legacy drained");
    let moved = store.get(&chain_key(&old)).await.unwrap().unwrap().due.unwrap();
    assert_eq!(moved.pk, due_shard_pk(due_shard_of(&old, SHARDS)));
    assert!(poller.receive().await.is_empty(), "nothing left on the queue");

    // A message a worker cannot run (unreadable; an invalid name) is a failed batch item, delivered again, and
    // after three receives in the dead-letter queue. A good batch beside them is done once.
    let ghost = json!({"chains": [{"org": "acme", "database": "finance", "container": "../x"}]});
    for poison in [ghost.to_string(), "not json".to_string()] {
        sqs.send_message().queue_url(&url).message_body(poison).send().await.unwrap();
    }
    let good = json!({"chains": [{"org": "acme", "database": "finance", "container": "c1"}]});
    sqs.send_message().queue_url(&url).message_body(good.to_string()).send().await.unwrap();
    let mut receives = 0;
    for _ in 0..40 {
        let batch = poller.receive().await;
        if !batch.is_empty() {
            receives += 1;
            let failed = poller.deliver(&refresh, &batch).await;
            let poisoned: Vec<&str> =
                batch.iter().filter(|m| !m.body().unwrap().contains("\"c1\"")).filter_map(|m| m.message_id()).collect();
            assert_eq!(failed.len(), poisoned.len(), "exactly the poisoned items failed: {failed:?}");
            assert!(failed.iter().all(|f| poisoned.contains(&f.as_str())), "{failed:?}");
        }
        tokio::time::sleep(Duration::from_millis(1100)).await; // the visibility timeout (1 s) runs out
        let dead = sqs.receive_message().queue_url(&dlq_url).max_number_of_messages(10).send().await.unwrap();
        if dead.messages.unwrap_or_default().len() == 2 {
            assert!(receives >= 3, "redriven after three receives ({receives})");
            return;
        }
    }
    panic!("the poisoned batches did not reach the dead-letter queue after {receives} receives");
}

/// A chain item as the engine writes it (no tokens needed here), leased until `lease_until`, in `due_pk`.
async fn chain_item(store: &DynamoStore, c: &ContainerRef, due_pk: String, at_ms: i64, lease_until: Option<i64>) {
    let lease = lease_until.map(|until| json!({"owner": "a refresh elsewhere", "until_ms": until}));
    let body = json!({
        "provider": "exact-online-nl", "status": "healthy", "generation": 1, "sealed_refresh_token": null,
        "sealed_access_token": null, "access_expires_at_ms": null, "last_token_request_at_ms": null,
        "refresh_token_issued_at_ms": null, "lease": lease,
    });
    let mut put = Put::new(chain_key(c), serde_json::to_vec(&body).unwrap(), Condition::None);
    put.due = Some(IndexKey { pk: due_pk, sk: format!("{at_ms:015}") });
    store.put(put).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_due_shards_on_dynamodb_moves_legacy_and_lowered_shard_entries_and_is_safe_twice() {
    let moto = Moto::start().await.unwrap();
    let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
    let table = format!("ck{}", chainkeeper::ids::random_id().to_lowercase().replace(['-', '_'], "x"));
    let store =
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table.clone(), Arc::new(chainkeeper::clock::SystemClock));
    store.create_table().await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // Written before: five chains unsharded, five with 16 shards (recorded as the highest count), one leased.
    let (old, wide): (Vec<ContainerRef>, Vec<ContainerRef>) = (
        (0..5).map(|i| container(&format!("old{i}"))).collect(),
        (0..5).map(|i| container(&format!("wide{i}"))).collect(),
    );
    for (i, c) in old.iter().enumerate() {
        chain_item(&store, c, LEGACY_DUE_PK.into(), now + i as i64 * 60_000, None).await;
    }
    for c in &wide {
        chain_item(&store, c, due_shard_pk(due_shard_of(c, 16)), now - 1_000, None).await;
    }
    let leased = container("busy");
    chain_item(&store, &leased, LEGACY_DUE_PK.into(), now - 1_000, Some(now + 60_000)).await;
    let layout = chainkeeper::records::DueShardsRecord { highest_shards: 16, legacy_drained: false };
    store
        .put(Put::new(chainkeeper::records::due_shards_key(), chainkeeper::records::encode(&layout), Condition::Absent))
        .await
        .unwrap();

    // The operator lowers the count to 4 and migrates with the CLI, on the table, from the functions' environment.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chainkeeper.toml");
    std::fs::write(&config, "[engine]\ndue_shards = 4\n").unwrap();
    let migrate = || {
        let out = std::process::Command::new(chainkeeper_e2e::cli_bin())
            .args(["migrate", "due-shards", "--aws", "--config", config.to_str().unwrap()])
            .env_remove("CHAINKEEPER_DATA_DIR")
            .env("CHAINKEEPER_TABLE", &table)
            .env("CHAINKEEPER_STAGE", "test")
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "chainkeeper migrate due-shards (built with --features chainkeeper-cli/aws?): {err}"
        );
        (serde_json::from_slice::<Value>(&out.stdout).unwrap(), err)
    };
    let (first, err) = migrate();
    // A chain of shard 0-3 of sixteen is in the same shard of four (4 divides 16): only the others move.
    let above = wide.iter().filter(|c| due_shard_of(c, 16) >= 4).count();
    assert!(above > 0, "some chains sit in shards 4-15");
    assert_eq!(first, json!({"shards": 4, "moved": 5 + above, "busy": 1, "drained": false}), "{err}");
    assert!(err.contains("run it again"), "{err}");
    for c in old.iter().chain(&wide) {
        let due = store.get(&chain_key(c)).await.unwrap().unwrap().due.unwrap();
        assert_eq!(due.pk, due_shard_pk(due_shard_of(c, 4)), "{c} in its shard of four, its due time kept");
    }
    let kept = store.get(&chain_key(&old[3])).await.unwrap().unwrap().due.unwrap();
    assert_eq!(kept.sk, format!("{:015}", now + 3 * 60_000));
    let left = store.query_index(Index::Due, LEGACY_DUE_PK, None, 10).await.unwrap();
    assert_eq!(left.len(), 1, "the chain under a lease is left to its refresh");

    // The lease ends; run again: done, and the sweep reads the four shards only. A third run changes nothing.
    chain_item(&store, &leased, LEGACY_DUE_PK.into(), now - 1_000, None).await;
    let (second, _) = migrate();
    assert_eq!(second, json!({"shards": 4, "moved": 1, "busy": 0, "drained": true}));
    let layout = store.get(&chainkeeper::records::due_shards_key()).await.unwrap().unwrap();
    let layout: chainkeeper::records::DueShardsRecord = chainkeeper::records::decode(&layout).unwrap();
    assert_eq!((layout.highest_shards, layout.legacy_drained), (4, true));
    let (third, _) = migrate();
    assert_eq!(third, json!({"shards": 4, "moved": 0, "busy": 0, "drained": true}), "safe to run twice");
    for pk in (4..16).map(due_shard_pk).chain([LEGACY_DUE_PK.to_string()]) {
        assert!(store.query_index(Index::Due, &pk, None, 10).await.unwrap().is_empty(), "{pk} is empty");
    }
}
