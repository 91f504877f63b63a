//! moto in server mode (PyPI `moto[server]`): DynamoDB, KMS and Secrets Manager on a free loopback port, started
//! through `tests/peers/moto/serve.py` (moto's server, one request at a time).
//!
//! The launcher binds port 0 and reports the port it got: a port picked here and released first could be taken by
//! another test's peer before moto binds it, and the test would then talk to someone else's moto.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Moto {
    pub endpoint: String,
    _child: tokio::process::Child,
    /// Kept open: moto's server writes its request log to stdout.
    _stdout: tokio::task::JoinHandle<()>,
}

impl Moto {
    pub async fn start() -> anyhow::Result<Moto> {
        Self::start_with(&[], None).await
    }

    /// moto with extra environment (`MOTO_ENABLE_RECORDING` …), run in `dir` when given.
    pub async fn start_with(env: &[(&str, &Path)], dir: Option<&Path>) -> anyhow::Result<Moto> {
        let script = crate::workspace().join("tests/peers/moto/serve.py");
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(&script).args(["-H", "127.0.0.1", "-p", "0"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("moto did not start ({e}): pip install 'moto[server]'"))?;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("moto (tests/peers/moto/serve.py) did not report its port within 30 s")??;
        let Some(port) = first.as_deref().and_then(|l| l.strip_prefix("port ")).and_then(|p| p.parse::<u16>().ok())
        else {
            bail!("moto (tests/peers/moto/serve.py) did not start: {first:?} (pip install 'moto[server]')");
        };
        let stdout = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if reqwest::get(format!("{endpoint}/moto-api/")).await.is_ok() {
                return Ok(Moto { endpoint, _child: child, _stdout: stdout });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("moto (tests/peers/moto/serve.py) did not answer on {endpoint}")
    }
}

/// What `sam deploy` creates before the functions run, on moto: the table (a fresh name), the API-token signing
/// key's secret (its text holds a planted secret) and the operator's Exact app registration (`redirect`).
pub struct DeployedBasics {
    pub table: String,
    pub signing: String,
    pub signing_arn: String,
    pub app_secret_arn: String,
}

pub const SIGNING_KEY_SECRET: &str = "chainkeeper/test/api-token-signing-key";
pub const APPS_SECRET_PREFIX: &str = "chainkeeper/test/apps/";

pub async fn deploy_basics(sdk: &aws_config::SdkConfig, redirect: &str) -> DeployedBasics {
    let table = format!("ck{}", chainkeeper::ids::random_id().to_lowercase().replace(['-', '_'], "x"));
    chainkeeper::aws::dynamo::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        table.clone(),
        std::sync::Arc::new(chainkeeper::clock::SystemClock),
    )
    .create_table()
    .await
    .expect("the table");
    let sm = aws_sdk_secretsmanager::Client::new(sdk);
    let signing = "s".repeat(40) + "PLANTED-signing-key";
    let created = sm.create_secret().name(SIGNING_KEY_SECRET).secret_string(&signing).send().await;
    let signing_arn = created.expect("the signing key's secret").arn.unwrap_or_default();
    let app = serde_json::json!({
        "client_id": crate::exact::CLIENT_ID, "client_secret": crate::exact::CLIENT_SECRET, "redirect_uri": redirect
    });
    let created = sm
        .create_secret()
        .name(format!("{APPS_SECRET_PREFIX}exact-online-nl"))
        .secret_string(app.to_string())
        .send()
        .await;
    let app_secret_arn = created.expect("the app registration's secret").arn.unwrap_or_default();
    DeployedBasics { table, signing, signing_arn, app_secret_arn }
}

/// A Lambda function's environment as the template sets it, for the deployment `deploy_basics` made on `moto`
/// with the config file `config`: without the API-token signing key (`CHAINKEEPER_SIGNING_KEY_SECRET`) and the
/// queues, which only some functions get.
pub fn function_env(moto: &Moto, table: &str, config: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("CHAINKEEPER_TABLE", table.to_string()),
        ("CHAINKEEPER_APPS_SECRET_PREFIX", APPS_SECRET_PREFIX.to_string()),
        ("CHAINKEEPER_KMS_ALIAS_PREFIX", "alias/chainkeeper/test/".to_string()),
        ("CHAINKEEPER_STAGE", "test".to_string()),
        ("CHAINKEEPER_PUBLIC_URL", "https://ck.example".to_string()),
        ("CHAINKEEPER_CONFIG", config.display().to_string()),
        ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
    ]
}

/// The first platform token, as the README says: the signing key secret's text piped into `chainkeeper token issue`.
pub fn platform_token_from_secret(signing: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(crate::cli_bin())
        .args(["token", "issue", "--signing-key-stdin", "--platform", "--scope", "admin", "--subject", "ops"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("chainkeeper token issue");
    writeln!(child.stdin.take().expect("stdin"), "{signing}").expect("the key on stdin"); // as `--output text` ends
    let out = child.wait_with_output().expect("token issue ends");
    assert!(out.status.success(), "token issue --signing-key-stdin");
    String::from_utf8(out.stdout).expect("a token is text").trim().to_string()
}

/// A queue as the template makes one: its dead-letter queue, and the queue redriving to it after three receives,
/// with `visibility_timeout_s`. Returns the queue's URL and the dead-letter queue's URL.
pub async fn queue_with_dead_letters(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout_s: u32,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq_url = sqs.create_queue().queue_name(format!("{name}-dlq")).send().await.unwrap().queue_url.unwrap();
    let redrive = serde_json::json!({"deadLetterTargetArn": queue_arn(sqs, &dlq_url).await, "maxReceiveCount": "3"});
    let url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(QueueAttributeName::VisibilityTimeout, visibility_timeout_s.to_string())
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (url, dlq_url)
}

/// A queue's ARN (what an event source mapping, and so an SQS event, names).
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    use aws_sdk_sqs::types::QueueAttributeName;
    let a = sqs.get_queue_attributes().queue_url(url).attribute_names(QueueAttributeName::QueueArn).send().await;
    a.unwrap().attributes.unwrap()[&QueueAttributeName::QueueArn].clone()
}
