//! The HTTP client `oauth2` sends through: a `reqwest` wrapper that keeps what the chain engine acts on.
//!
//! `oauth2`'s own reqwest client folds every failure into one error and reads every answer that is not `200` as
//! an error document, dropping the status and the headers. This one tells apart a request that never left
//! (nothing changed at the provider: safe to retry) from one that was sent and got no complete answer (the provider
//! may have rotated the refresh token), and hands `oauth2` only `200` answers: any other answer comes back as
//! [`CallError::Answered`] with its status, `Retry-After`, Exact's `Reason` header and body, for
//! [`super::read_token_answer`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oauth2::http::{self, StatusCode};
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

/// One call to a provider's OAuth endpoint that did not end in a `200`, in the classes the chain engine acts on.
#[derive(thiserror::Error)]
pub(crate) enum CallError {
    /// The request could not be built (a malformed endpoint URL or header): nothing was sent, and sending it
    /// again will not help.
    #[error("request not built: {0}")]
    NotBuilt(String),
    /// The request never left (no connection): nothing changed at the provider.
    #[error("{0}")]
    NotSent(&'static str),
    /// The request was sent and no complete answer came back: the provider may have acted on it.
    #[error("{0}")]
    NoAnswer(&'static str),
    /// The provider answered, with another status than `200`.
    #[error("answered HTTP {}", .0.status.as_u16())]
    Answered(Answer),
}

/// What the reading of a non-`200` answer needs.
pub(crate) struct Answer {
    pub status: StatusCode,
    /// Exact's `Reason` header (`TooEarlyToRefreshTokens`).
    pub reason: Option<String>,
    /// `Retry-After` in seconds (the delay-seconds form).
    pub retry_after_s: Option<u64>,
    /// The body: an error document, or (a `2xx` other than `200`) possibly tokens. Never in `Debug`.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The client for one call: the process's `reqwest::Client`, the call's timeout, and (revocation on loopback only,
/// see [`super::revoke_token`]) the URL the request really goes to.
pub(crate) struct ProviderHttp<'a> {
    http: &'a reqwest::Client,
    timeout: Duration,
    send_to: Option<http::Uri>,
    sent: AtomicBool,
}

impl<'a> ProviderHttp<'a> {
    pub(crate) fn new(http: &'a reqwest::Client, timeout: Duration) -> Self {
        Self { http, timeout, send_to: None, sent: AtomicBool::new(false) }
    }

    /// Sends every request to `uri` instead of the URL `oauth2` built it for.
    pub(crate) fn sending_to(mut self, uri: http::Uri) -> Self {
        self.send_to = Some(uri);
        self
    }

    /// Whether a request went out (or was attempted): an `oauth2` error before that is about building it.
    pub(crate) fn sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }

    async fn send(&self, mut request: HttpRequest) -> Result<HttpResponse, CallError> {
        if let Some(uri) = &self.send_to {
            *request.uri_mut() = uri.clone();
        }
        let mut request =
            reqwest::Request::try_from(request).map_err(|_| CallError::NotBuilt("not a valid HTTP request".into()))?;
        *request.timeout_mut() = Some(self.timeout);
        self.sent.store(true, Ordering::Relaxed);
        let res = match self.http.execute(request).await {
            Ok(res) => res,
            Err(e) if e.is_builder() => return Err(CallError::NotBuilt("not a valid HTTP request".into())),
            Err(e) if e.is_connect() => return Err(CallError::NotSent("could not connect")),
            Err(e) if e.is_timeout() => return Err(CallError::NoAnswer("no answer before the timeout")),
            Err(_) => return Err(CallError::NoAnswer("connection broke before an answer")),
        };
        let status = res.status();
        let headers = res.headers().clone();
        let body = match res.bytes().await {
            Ok(b) => b.to_vec(),
            // A success cut off may have carried new tokens; an error's body only adds the provider's words.
            Err(_) if status.is_success() => return Err(CallError::NoAnswer("answer cut off")),
            Err(_) => Vec::new(),
        };
        if status != StatusCode::OK {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
            return Err(CallError::Answered(Answer {
                status,
                reason: header("reason").map(str::to_string),
                retry_after_s: header(http::header::RETRY_AFTER.as_str()).and_then(|v| v.parse().ok()),
                body,
            }));
        }
        let mut answer = http::Response::new(body);
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

// No `'a: 'c` bound spelled out (`&'c self` implies it): with one, rustc cannot show that the futures of the
// engine's callers are `Send` ("implementation of `Send` is not general enough").
impl<'c> AsyncHttpClient<'c> for ProviderHttp<'_> {
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, CallError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}
