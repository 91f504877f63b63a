//! A local stand-in for the Lambda Runtime API (what `cargo lambda watch` provides): it hands events to a
//! function binary exactly as Lambda does (`GET …/invocation/next`, `POST …/{id}/response` or `…/error`), so the
//! real `main.rs` of each function runs unmodified. It also times the cold start: from spawning the binary to its
//! first request for an event (the init phase Lambda bills as "Init Duration").

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{Notify, oneshot};

#[derive(Default)]
struct Inner {
    queue: VecDeque<(String, Value)>,
    waiting: std::collections::HashMap<String, oneshot::Sender<Result<Value, Value>>>,
    first_next: Option<Instant>,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    ready: Arc<Notify>,
}

async fn next(State(s): State<Shared>) -> Response {
    loop {
        let notified = s.ready.notified();
        {
            let mut inner = s.inner.lock().unwrap();
            inner.first_next.get_or_insert_with(Instant::now);
            if let Some((id, event)) = inner.queue.pop_front() {
                let mut res = axum::Json(event).into_response();
                let h = res.headers_mut();
                h.insert("lambda-runtime-aws-request-id", HeaderValue::from_str(&id).unwrap());
                let deadline =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 30_000;
                h.insert("lambda-runtime-deadline-ms", HeaderValue::from_str(&deadline.to_string()).unwrap());
                h.insert(
                    "lambda-runtime-invoked-function-arn",
                    HeaderValue::from_static("arn:aws:lambda:eu-west-1:000000000000:function:test"),
                );
                h.insert(
                    "lambda-runtime-trace-id",
                    HeaderValue::from_static("Root=1-00000000-000000000000000000000000"),
                );
                return res;
            }
        }
        notified.await;
    }
}

async fn respond(State(s): State<Shared>, UrlPath(id): UrlPath<String>, body: axum::body::Bytes) -> StatusCode {
    if let Some(tx) = s.inner.lock().unwrap().waiting.remove(&id) {
        let _ = tx.send(Ok(serde_json::from_slice(&body).unwrap_or(Value::Null)));
    }
    StatusCode::ACCEPTED
}

async fn error(
    State(s): State<Shared>,
    UrlPath(id): UrlPath<String>,
    _h: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    if let Some(tx) = s.inner.lock().unwrap().waiting.remove(&id) {
        let _ = tx.send(Err(serde_json::from_slice(&body).unwrap_or(Value::Null)));
    }
    StatusCode::ACCEPTED
}

/// One function binary running against the stand-in runtime.
pub struct LocalLambda {
    shared: Shared,
    started: Instant,
    _child: tokio::process::Child,
    _server: tokio::task::JoinHandle<()>,
    counter: std::sync::atomic::AtomicU64,
    /// Every line the function wrote to standard output (where Lambda functions write EMF metric lines).
    stdout: Arc<Mutex<Vec<String>>>,
}

impl LocalLambda {
    /// Starts `binary` (a function built by cargo) with `env` as its environment.
    pub async fn start(binary: &Path, env: &[(&str, String)]) -> anyhow::Result<LocalLambda> {
        let shared = Shared::default();
        let app = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(respond))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(|| async { StatusCode::ACCEPTED }))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("fn").to_string();
        let mut cmd = tokio::process::Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", &api)
            .env("AWS_LAMBDA_FUNCTION_NAME", &name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_REGION", "eu-west-1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines_out = stdout.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    lines_out.lock().unwrap().push(line);
                }
            });
        }
        Ok(LocalLambda { shared, started, _child: child, _server: server, counter: Default::default(), stdout })
    }

    /// The lines the function has written to standard output so far (as far as they have been read: the pipe is
    /// read asynchronously, so a line written just before an invocation answered may not be here yet; see
    /// [`Self::settled_stdout_lines`]).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The lines on standard output once no new one has arrived for 200 ms (at most 5 s): what the function wrote
    /// during the invocations that have answered, even on a loaded machine.
    pub async fn settled_stdout_lines(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = usize::MAX;
        loop {
            let now = self.stdout.lock().unwrap().len();
            if now == seen || std::time::Instant::now() > deadline {
                return self.stdout_lines();
            }
            seen = now;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Invokes the function with `event`; `Ok` is its response, `Err` the error it reported.
    pub async fn invoke(&self, event: Value) -> Result<Value, Value> {
        let id = format!("req-{}", self.counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.shared.inner.lock().unwrap();
            inner.waiting.insert(id.clone(), tx);
            inner.queue.push_back((id, event));
        }
        self.shared.ready.notify_waiters();
        self.shared.ready.notify_one();
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("the function answered within 30 s")
            .expect("answer")
    }

    /// Time from spawning the binary to its first request for an event (its init phase).
    pub fn init_duration(&self) -> Option<Duration> {
        self.shared.inner.lock().unwrap().first_next.map(|t| t - self.started)
    }
}

/// An API Gateway HTTP API (payload v2) event.
pub fn http_event(method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Value {
    let mut headers =
        serde_json::json!({"host": "api.example", "content-type": "application/json", "accept": "application/json"});
    if let Some(t) = token {
        headers["authorization"] = Value::String(format!("Bearer {t}"));
    }
    let (raw_path, raw_query) = path.split_once('?').unwrap_or((path, ""));
    serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000", "apiId": "local", "domainName": "api.example", "domainPrefix": "api",
            "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"},
            "requestId": "r", "routeKey": "$default", "stage": "$default", "time": "22/Nov/2026:08:00:00 +0000", "timeEpoch": 1795000000000u64
        },
        "body": body,
        "isBase64Encoded": false
    })
}

/// An EventBridge scheduled event.
pub fn scheduled_event() -> Value {
    serde_json::json!({
        "version": "0", "id": "e", "detail-type": "Scheduled Event", "source": "aws.events", "account": "000000000000",
        "time": "2026-11-22T08:00:00Z", "region": "eu-west-1", "resources": ["arn:aws:events:eu-west-1:000000000000:rule/refresh"], "detail": {}
    })
}
