//! Recovery starts at once in AWS too (issue 12): through the Lambda functions on moto, a chain that `query` (or
//! `refresh`'s sweep) finds broken is handed to the recovery queue (SQS) before the function answers; the test
//! plays Lambda's SQS poller (receive, deliver the batch to `recover` as an SQS event, delete what succeeded) and
//! the chain is healthy again, with no person and no credential sent outside the profile's `login.hosts`.

use std::time::Duration;

use aws_sdk_sqs::types::Message;
use chainkeeper_e2e::exact::{CLIENT_ID, sim_profile_toml, sim_user};
use chainkeeper_e2e::lambda_runtime::{LocalLambda, http_event, scheduled_event};
use chainkeeper_e2e::moto::Moto;
use chainkeeper_e2e::moto::SIGNING_KEY_SECRET;
use exact_sim::{ExactSim, Fault, SignInBehaviour, SignInOutcome, SimUser};
use serde_json::{Value, json};

const USERS: u32 = 8;

/// The deployment on moto: the table, the secrets, the recovery queue with its dead-letter queue (redrive after
/// `max_receive` receives), the five functions configured as the template configures them.
struct Deployment {
    sim: ExactSim,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    dlq_url: String,
    token: String,
    manage: LocalLambda,
    callback: LocalLambda,
    query: LocalLambda,
    refresh: LocalLambda,
    recover: LocalLambda,
    /// The `query` function's environment (for a second one, configured otherwise).
    query_env: Vec<(&'static str, String)>,
    _moto: Moto,
    _dir: tempfile::TempDir,
}

fn body(v: &Value) -> Value {
    serde_json::from_str(v["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

fn path(alias: &str) -> String {
    format!("/v1/orgs/acme/databases/finance/containers/{alias}")
}

impl Deployment {
    async fn start(visibility_timeout_s: u32) -> Deployment {
        let moto = Moto::start().await.unwrap();
        let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
        let redirect = "https://ck.example/v1/callback";
        let sim = chainkeeper_e2e::exact::quick_sim(USERS, redirect).await;
        let chainkeeper_e2e::moto::DeployedBasics { table, signing, .. } =
            chainkeeper_e2e::moto::deploy_basics(&sdk, redirect).await;
        // The queues as the template makes them: a dead-letter queue, the recovery queue redriving to it.
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let (queue_url, dlq_url) =
            chainkeeper_e2e::moto::queue_with_dead_letters(&sqs, "ck-recovery", visibility_timeout_s).await;
        let queue_arn = chainkeeper_e2e::moto::queue_arn(&sqs, &queue_url).await;

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chainkeeper.toml");
        // Webhooks may reach this test's receiver on loopback (`webhook_events_are_delivered_before_…`).
        let webhooks = "[webhooks]\nallow_http_hosts = [\"127.0.0.1\"]\nallow_private_hosts = [\"127.0.0.1\"]\n";
        std::fs::write(&config, format!("{}min_token_interval_s = 0\n{webhooks}", sim_profile_toml(&sim))).unwrap();
        let mut env = chainkeeper_e2e::moto::function_env(&moto, &table, &config);
        // As in the template: recover (and refresh) check no API tokens; query, refresh and manage send to the
        // queue; recover and callback do not.
        let recover = start("recover", &env).await;
        let callback_env = [&env[..], &[("CHAINKEEPER_SIGNING_KEY_SECRET", SIGNING_KEY_SECRET.into())]].concat();
        let callback = start("callback", &callback_env).await;
        env.push(("CHAINKEEPER_RECOVERY_QUEUE_URL", queue_url.clone()));
        let refresh = start("refresh", &env).await;
        env.push(("CHAINKEEPER_SIGNING_KEY_SECRET", SIGNING_KEY_SECRET.to_string()));
        let (manage, query) = (start("manage", &env).await, start("query", &env).await);
        let token = chainkeeper_e2e::moto::platform_token_from_secret(&signing);
        let d = Deployment {
            sim,
            sqs,
            queue_url,
            queue_arn,
            dlq_url,
            token,
            manage,
            callback,
            query,
            refresh,
            recover,
            query_env: env,
            _moto: moto,
            _dir: dir,
        };
        d.call(&d.manage, "POST", "/v1/orgs", Some(json!({"name": "acme"})), 201).await;
        d.call(&d.manage, "POST", "/v1/orgs/acme/databases", Some(json!({"name": "finance"})), 201).await;
        d
    }

    /// Invokes an HTTP function; asserts the status; the answer holds no planted secret.
    async fn call(&self, f: &LocalLambda, method: &str, p: &str, payload: Option<Value>, want: u16) -> Value {
        let event = http_event(method, p, Some(&self.token), payload.map(|p| p.to_string()).as_deref());
        let r = f.invoke(event).await.unwrap_or_else(|e| panic!("{method} {p}: the function failed: {e}"));
        chainkeeper_e2e::assert_no_planted_secret(&format!("the answer to {method} {p}"), &r.to_string());
        assert_eq!(r["statusCode"], want, "{method} {p}: {r}");
        r
    }

    /// Container `alias` with a chain a person authorized (the only person action), and recovery credentials.
    async fn container(&self, alias: &str, user: &SimUser, password: &str, totp: &str) {
        let c = json!({"alias": alias, "kind": "oauth2_code", "provider": "exact-online-nl"});
        self.call(&self.manage, "POST", "/v1/orgs/acme/databases/finance/containers", Some(c), 201).await;
        let r = self.call(&self.callback, "POST", &format!("{}/authorize", path(alias)), None, 200).await;
        let url = body(&r)["authorize_url"].as_str().unwrap().to_string();
        let totp_now = self.sim.totp_now(&user.username);
        let back = exact_sim::browser::login(&url, &user.username, &user.password, totp_now.as_deref())
            .await
            .expect("a person signs in at the simulator");
        let back = url::Url::parse(&back).unwrap();
        let cb = http_event("GET", &format!("/v1/callback?{}", back.query().unwrap()), None, None);
        assert_eq!(self.callback.invoke(cb).await.unwrap()["statusCode"], 200);
        let creds = json!({"username": user.username, "password": password, "totp_secret": totp});
        self.call(&self.manage, "PUT", &format!("{}/auto-recovery", path(alias)), Some(creds), 200).await;
    }

    async fn view(&self, alias: &str) -> Value {
        body(&self.call(&self.manage, "GET", &path(alias), None, 200).await)
    }

    /// What Lambda's poller does: receive a batch (the queue must hold something now: no long wait).
    async fn receive(&self) -> Vec<Message> {
        let r = self.sqs.receive_message().queue_url(&self.queue_url).max_number_of_messages(10).send().await;
        r.unwrap().messages.unwrap_or_default()
    }

    /// Delivers `messages` to `recover` as an SQS event; deletes those not reported failed (as the poller does
    /// with ReportBatchItemFailures); returns the reported failures' ids.
    async fn deliver(&self, messages: &[Message]) -> Vec<String> {
        let records: Vec<Value> = messages
            .iter()
            .map(|m| {
                json!({
                    "messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                    "attributes": {}, "messageAttributes": {}, "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs", "eventSourceARN": self.queue_arn, "awsRegion": "eu-west-1"
                })
            })
            .collect();
        let r = self.recover.invoke(json!({ "Records": records })).await.expect("the recover function runs the batch");
        let failed: Vec<String> = r["batchItemFailures"]
            .as_array()
            .unwrap_or_else(|| panic!("a partial batch response: {r}"))
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
            .collect();
        for m in messages.iter().filter(|m| !failed.iter().any(|f| Some(f.as_str()) == m.message_id())) {
            let handle = m.receipt_handle().unwrap();
            self.sqs.delete_message().queue_url(&self.queue_url).receipt_handle(handle).send().await.unwrap();
        }
        failed
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

fn request_of(m: &Message) -> Value {
    serde_json::from_str(m.body().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_broken_at_the_provider_is_handed_to_recover_through_sqs_and_recovered_without_a_person() {
    let d = Deployment::start(30).await;
    let totp = "JBSWY3DPEHPK3PXP";
    let cases = ["revoked", "superseded", "lost", "found by the sweep"];
    for (i, how) in cases.iter().enumerate() {
        let (alias, user) = (format!("c{i}"), sim_user(i as u32 + 1));
        d.container(&alias, &user, &user.password, totp).await;
        let signed_in = d.sim.stats().sign_in.completed;
        if *how == "found by the sweep" {
            // A chain in use: the sweep refreshes it ahead of its access token's expiry.
            d.call(&d.query, "POST", &format!("{}/token", path(&alias)), None, 200).await;
        }
        tokio::time::sleep(Duration::from_millis(2100)).await; // the access token expired: the next use refreshes
        match *how {
            "revoked" | "found by the sweep" => d.sim.revoke(CLIENT_ID, &user.user_id),
            "superseded" => {
                let _ = d.sim.mint_tokens(CLIENT_ID, &user.user_id); // a second authorization kills ours
            }
            _ => d.sim.fail_next_token_requests(1, Fault::LoseResponse),
        }
        if *how == "found by the sweep" {
            let r = d.refresh.invoke(scheduled_event()).await.expect("the sweep runs");
            assert_eq!(r["broken"], 1, "the sweep found the chain broken: {r}");
        } else {
            let r = d.call(&d.query, "POST", &format!("{}/token", path(&alias)), None, 409).await;
            let code = body(&r)["code"].as_str().unwrap_or_default().to_string();
            let want = match *how {
                "revoked" => "refresh_token_invalid",
                "superseded" => "refresh_token_superseded",
                _ => "refresh_response_lost",
            };
            assert!(code == want || (*how == "revoked" && code.starts_with("refresh_token_")), "{how}: {code}");
        }
        // The message was on the queue when the function answered: no waiting for it.
        let messages = d.receive().await;
        assert_eq!(messages.len(), 1, "{how}: one request per break: {messages:?}");
        let request = request_of(&messages[0]);
        assert_eq!(
            (&request["org"], &request["database"], &request["container"]),
            (&json!("acme"), &json!("finance"), &json!(alias)),
            "{how}: {request}"
        );
        assert!(request["reason"].as_str().unwrap().starts_with("the chain broke"), "{request}");
        assert_eq!(d.view(&alias).await["status"], "needs_repair", "{how}: nothing recovered it in the background");
        assert!(d.deliver(&messages).await.is_empty(), "{how}: the batch succeeded");
        let view = d.view(&alias).await;
        assert_eq!(
            (view["status"].as_str(), view["chain"]["generation"].as_u64()),
            (Some("healthy"), Some(2)),
            "{how}: {view}"
        );
        d.call(&d.query, "POST", &format!("{}/token", path(&alias)), None, 200).await;
        // Only the recovery signed in (0 person actions), and the password went to the B2C host only.
        let st = d.sim.stats().sign_in;
        assert_eq!(st.completed, signed_in + 1, "{how}: one unattended sign-in: {st:?}");
        assert_eq!(st.start_host.password_seen, 0, "{how}: {st:?}");
        // Delivered twice (SQS is at least once): harmless, no second sign-in, nothing left on the queue.
        let again = d.deliver(&messages).await;
        assert!(again.is_empty(), "{how}: a duplicate is not a failure");
        assert_eq!(d.sim.stats().sign_in.start_pages, st.start_pages, "{how}: a duplicate signs in no more");
        assert!(d.receive().await.is_empty(), "{how}: the queue is empty");
    }
    let st = d.sim.stats().sign_in;
    assert_eq!(
        st.b2c_host.password_seen,
        2 * cases.len() as u64,
        "each person's and each recovery's password only there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_recovery_through_the_queue_stops_retries_and_shows_its_reason() {
    let d = Deployment::start(30).await;
    let good = "JBSWY3DPEHPK3PXP";
    let cases = [
        ("recovery_password_rejected", "wrong-password-PLANTED", good, SignInOutcome::Normal),
        ("recovery_totp_rejected", "", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", SignInOutcome::Normal),
        ("recovery_verification_needed", "", good, SignInOutcome::Recaptcha),
    ];
    for (i, (code, password, totp, outcome)) in cases.into_iter().enumerate() {
        let (alias, user) = (format!("r{i}"), sim_user(i as u32 + 1));
        let password = if password.is_empty() { user.password.clone() } else { password.to_string() };
        d.container(&alias, &user, &password, totp).await;
        d.sim.set_sign_in_behaviour(&user.username, SignInBehaviour { outcome, ..Default::default() });
        tokio::time::sleep(Duration::from_millis(2100)).await;
        d.sim.revoke(CLIENT_ID, &user.user_id);
        d.call(&d.query, "POST", &format!("{}/token", path(&alias)), None, 409).await;
        let messages = d.receive().await;
        assert_eq!(messages.len(), 1, "{code}");
        assert!(d.deliver(&messages).await.is_empty(), "{code}: an outcome, not a failed item");
        let view = d.view(&alias).await;
        assert_eq!(view["auto_recovery"]["stopped"], code, "{code}: {view}");
        assert_eq!(view["chain"]["last_error"]["code"], code, "{code}: {view}");
        let repairs = body(&d.call(&d.manage, "GET", "/v1/orgs/acme/repairs", None, 200).await);
        let listed = repairs["repairs"].as_array().unwrap().iter().find(|r| r["alias"] == alias).cloned();
        assert_eq!(listed.as_ref().map(|r| r["code"].clone()), Some(json!(code)), "{code}: {repairs}");
        // Retries stopped: the same request again, a person's POST …/recover, the schedule: no sign-in.
        let pages = d.sim.stats().sign_in.start_pages;
        assert!(d.deliver(&messages).await.is_empty());
        let r = d.call(&d.manage, "POST", &format!("{}/recover", path(&alias)), None, 202).await;
        assert_eq!(body(&r)["outcome"], "queued", "{r}");
        assert!(d.deliver(&d.receive().await).await.is_empty());
        d.recover.invoke(scheduled_event()).await.expect("the scheduled run");
        assert_eq!(d.sim.stats().sign_in.start_pages, pages, "{code}: no sign-in after the stop");
        assert_eq!(d.view(&alias).await["auto_recovery"]["stopped"], code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_s_recover_request_is_queued_with_202_and_run_by_the_recover_function() {
    let d = Deployment::start(30).await;
    let user = sim_user(1);
    // Healthy: refused before anything is queued.
    d.container("eol", &user, &user.password, "JBSWY3DPEHPK3PXP").await;
    let r = d.call(&d.manage, "POST", &format!("{}/recover", path("eol")), None, 409).await;
    assert_eq!(body(&r)["code"], "chain_healthy");
    assert!(d.receive().await.is_empty(), "nothing queued for a healthy chain");
    // Broken (and its automatic request lost: the test drops it), then asked for by a person.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    d.sim.revoke(CLIENT_ID, &user.user_id);
    d.call(&d.query, "POST", &format!("{}/token", path("eol")), None, 409).await;
    let automatic = d.receive().await;
    for m in &automatic {
        d.sqs
            .delete_message()
            .queue_url(&d.queue_url)
            .receipt_handle(m.receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
    }
    let r = d.call(&d.manage, "POST", &format!("{}/recover", path("eol")), None, 202).await;
    assert!(body(&r)["next"].as_str().unwrap().contains("recover function"), "{r}");
    let messages = d.receive().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(request_of(&messages[0])["requested_by"], "ops");
    assert!(d.deliver(&messages).await.is_empty());
    assert_eq!(d.view("eol").await["status"], "healthy");
    let audit = body(&d.call(&d.manage, "GET", "/v1/orgs/acme/audit", None, 200).await).to_string();
    assert!(audit.contains("requested by ops") && audit.contains("recovered"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_request_is_a_failed_batch_item_and_ends_in_the_dead_letter_queue() {
    let d = Deployment::start(1).await;
    let user = sim_user(1);
    d.container("eol", &user, &user.password, "JBSWY3DPEHPK3PXP").await;
    let ghost = json!({"org": "acme", "database": "finance", "container": "ghost", "reason": "the chain broke"});
    for poison in [ghost.to_string(), "not json".to_string()] {
        d.sqs.send_message().queue_url(&d.queue_url).message_body(poison).send().await.unwrap();
    }
    // A good request in the same batch: it is not redone because the others failed.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    d.sim.revoke(CLIENT_ID, &user.user_id);
    d.call(&d.query, "POST", &format!("{}/token", path("eol")), None, 409).await;
    let mut receives = 0;
    for _ in 0..40 {
        let batch = d.receive().await;
        if !batch.is_empty() {
            receives += 1;
            let failed = d.deliver(&batch).await;
            let poisoned: Vec<_> = batch
                .iter()
                .filter(|m| !m.body().unwrap().contains("\"eol\""))
                .filter_map(|m| m.message_id())
                .collect();
            assert_eq!(failed.len(), poisoned.len(), "exactly the poisoned items failed: {failed:?}");
            assert!(failed.iter().all(|f| poisoned.contains(&f.as_str())), "{failed:?}");
        }
        tokio::time::sleep(Duration::from_millis(1100)).await; // the visibility timeout (1 s) runs out
        let dead = d.sqs.receive_message().queue_url(&d.dlq_url).max_number_of_messages(10).send().await.unwrap();
        let dead = dead.messages.unwrap_or_default();
        if dead.len() == 2 {
            assert!(receives >= 3, "redriven after three receives ({receives})");
            assert_eq!(d.view("eol").await["status"], "healthy", "the good request was run once");
            assert_eq!(d.sim.stats().sign_in.completed, 2, "the person's sign-in and one recovery");
            return;
        }
    }
    panic!("the poisoned requests did not reach the dead-letter queue after {receives} receives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_does_not_take_the_request_never_fails_the_caller_and_the_schedule_still_recovers() {
    let d = Deployment::start(30).await;
    let user = sim_user(1);
    d.container("eol", &user, &user.password, "JBSWY3DPEHPK3PXP").await;
    // A query function whose queue does not exist (deleted, or a wrong URL).
    let env: Vec<(&'static str, String)> = d
        .query_env
        .iter()
        .map(|(k, v)| match *k {
            "CHAINKEEPER_RECOVERY_QUEUE_URL" => (*k, v.replace("ck-recovery", "no-such-queue")),
            _ => (*k, v.clone()),
        })
        .collect();
    let query = start("query", &env).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    d.sim.revoke(CLIENT_ID, &user.user_id);
    let started = std::time::Instant::now();
    let r = query.invoke(http_event("POST", &format!("{}/token", path("eol")), Some(&d.token), None)).await.unwrap();
    assert_eq!(r["statusCode"], 409, "the caller gets the chain's answer, not the queue's failure: {r}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());
    assert!(
        query.settled_stdout_lines().await.iter().any(|l| l.contains("RecoveryHandOffFailures")),
        "the failed hand-off is counted (EMF)"
    );
    assert!(d.receive().await.is_empty(), "nothing reached the real queue");
    // The safety net: the recover schedule finds the broken chain.
    let r = d.recover.invoke(scheduled_event()).await.expect("the scheduled run");
    assert_eq!(r["recovered"], 1, "{r}");
    assert_eq!(d.view("eol").await["status"], "healthy");
}

/// A webhook receiver on loopback that takes `delay` to answer; the kinds of the events it has received.
async fn slow_receiver(delay: Duration) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook/PLANTED-receiver-key",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                tokio::time::sleep(delay).await;
                let event: Value = serde_json::from_slice(&body).unwrap_or_default();
                sink.lock().unwrap().push(event["type"].as_str().unwrap_or("?").to_string());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/hook/PLANTED-receiver-key", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// A Lambda sandbox may be frozen as soon as its function answers: the webhook events a function causes are
/// delivered before it answers — `chain.needs_repair` before `query`'s, `chain.recovered` before `recover`'s —
/// even from a receiver that takes its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_events_are_delivered_before_the_function_answers() {
    let d = Deployment::start(30).await;
    let (url, got) = slow_receiver(Duration::from_millis(700)).await;
    d.call(&d.manage, "PUT", "/v1/orgs/acme/webhook", Some(json!({"url": url})), 200).await;
    let user = sim_user(1);
    d.container("w0", &user, &user.password, "JBSWY3DPEHPK3PXP").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    d.sim.revoke(CLIENT_ID, &user.user_id);
    d.call(&d.query, "POST", &format!("{}/token", path("w0")), None, 409).await;
    assert_eq!(*got.lock().unwrap(), ["chain.needs_repair"], "delivered before query answered");
    let messages = d.receive().await;
    assert!(d.deliver(&messages).await.is_empty());
    assert_eq!(*got.lock().unwrap(), ["chain.needs_repair", "chain.recovered"], "delivered before recover returned");
}
