//! Errors as the API shows them: `application/problem+json` (RFC 7807) with a stable `code`, a `detail` that
//! says what happened and what to do, and `retry_after` where waiting helps. This is the one place where errors
//! become HTTP. A 5xx logs its cause and shows a generic text; a secret never reaches a `detail`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(skip)]
    pub status: StatusCode,
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status_code: u16,
    pub code: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            type_uri: format!("https://chainkeeper.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status_code: status.as_u16(),
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }
    /// A failure we did not expect: the cause goes to the log, the caller sees a generic text.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "chainkeeper hit an unexpected error; nothing was changed that you were told succeeded. Retry, and report it to the operator if it persists.",
        )
    }
    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(retry_after)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (self.status, body).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict => Problem::conflict(
                "concurrent_update",
                "Someone changed this item at the same moment. Read it again and retry.",
            ),
            crate::store::StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "store unavailable");
                Problem::unavailable(
                    "store_unavailable",
                    "chainkeeper's storage did not answer. Nothing was changed; retry shortly.",
                    2,
                )
            }
        }
    }
}

impl From<crate::keys::KeyError> for Problem {
    fn from(e: crate::keys::KeyError) -> Self {
        Problem::internal(&e)
    }
}

impl From<crate::ids::InvalidName> for Problem {
    fn from(e: crate::ids::InvalidName) -> Self {
        Problem::bad_request("invalid_name", e.to_string())
    }
}
