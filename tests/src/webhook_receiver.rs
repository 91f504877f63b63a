//! A webhook receiver on loopback for the tests: it keeps every delivery (headers and body) and answers 200.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;

/// Every delivery received so far, in order.
pub type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// Starts a receiver on 127.0.0.1 that takes POSTs at `path`; returns its URL, naming `host` (an address that
/// reaches 127.0.0.1, or a name the test maps there), and what it received.
pub async fn start(host: &str, path: &str) -> (String, Received) {
    let got: Received = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        path,
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{host}:{port}{path}"), got)
}
