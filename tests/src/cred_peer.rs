//! A platform that checks a credential the way real platforms do, for the query proxy's credential kinds: a key in a
//! header (`X-API-Key`), a bearer token, HTTP Basic, a key in the query, a session login (JSON body, token in the
//! answer, sessions that expire on the platform's own clock), and an OAuth2 client-credentials token endpoint.
//! Each API path answers `200 {"kind": …}` with the right credential and `401` otherwise; nothing it answers holds
//! a credential.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};

/// What the peer accepts.
#[derive(Clone)]
pub struct Expected {
    pub api_key: String,
    pub username: String,
    pub password: String,
    pub client_id: String,
    pub client_secret: String,
}

#[derive(Default)]
pub struct Counts {
    pub logins: AtomicU32,
    pub cc_tokens: AtomicU32,
    pub refused: AtomicU32,
}

struct Peer {
    expected: Expected,
    /// Session token → when it dies.
    sessions: Mutex<HashMap<String, Instant>>,
    session_ttl: Mutex<Duration>,
    cc_tokens: Mutex<Vec<String>>,
    counts: Arc<Counts>,
}

pub struct CredPeer {
    pub base: String,
    pub counts: Arc<Counts>,
    peer: Arc<Peer>,
    _server: tokio::task::JoinHandle<()>,
}

impl CredPeer {
    pub async fn start(expected: Expected) -> CredPeer {
        let counts = Arc::new(Counts::default());
        let peer = Arc::new(Peer {
            expected,
            sessions: Mutex::default(),
            session_ttl: Mutex::new(Duration::from_secs(600)),
            cc_tokens: Mutex::default(),
            counts: counts.clone(),
        });
        let app = Router::new()
            .route("/header/data", get(header))
            .route("/bearer/data", get(bearer))
            .route("/basic/data", get(basic))
            .route("/query/data", get(query))
            .route("/session/login", post(login))
            .route("/session/data", get(session))
            .route("/cc/token", post(cc_token))
            .route("/cc/data", get(cc_data))
            .with_state(peer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        CredPeer { base, counts, peer, _server: server }
    }

    /// Ends every session now (the platform's clock ran past them).
    pub fn expire_sessions(&self) {
        self.peer.sessions.lock().unwrap().clear();
    }

    pub fn logins(&self) -> u32 {
        self.counts.logins.load(Ordering::SeqCst)
    }
    pub fn cc_tokens(&self) -> u32 {
        self.counts.cc_tokens.load(Ordering::SeqCst)
    }
}

type Answer = (StatusCode, Json<Value>);

fn answer(peer: &Peer, ok: bool, kind: &str) -> Answer {
    if ok {
        (StatusCode::OK, Json(json!({"kind": kind})))
    } else {
        peer.counts.refused.fetch_add(1, Ordering::SeqCst);
        (StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized"})))
    }
}

fn header_value<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

async fn header(State(p): State<Arc<Peer>>, h: HeaderMap) -> Answer {
    answer(&p, header_value(&h, "x-api-key") == p.expected.api_key, "header")
}

async fn bearer(State(p): State<Arc<Peer>>, h: HeaderMap) -> Answer {
    answer(&p, header_value(&h, "authorization") == format!("Bearer {}", p.expected.api_key), "bearer")
}

fn basic_of(h: &HeaderMap) -> Option<(String, String)> {
    let b64 = header_value(h, "authorization").strip_prefix("Basic ")?;
    let raw = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

async fn basic(State(p): State<Arc<Peer>>, h: HeaderMap) -> Answer {
    let ok = basic_of(&h) == Some((p.expected.username.clone(), p.expected.password.clone()));
    answer(&p, ok, "basic")
}

async fn query(State(p): State<Arc<Peer>>, Query(q): Query<HashMap<String, String>>) -> Answer {
    answer(&p, q.get("api_key") == Some(&p.expected.api_key), "query")
}

async fn login(State(p): State<Arc<Peer>>, Json(body): Json<Value>) -> Answer {
    if body["user"] != p.expected.username.as_str() || body["password"] != p.expected.password.as_str() {
        return answer(&p, false, "login");
    }
    let n = p.counts.logins.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("session-{n}");
    let ttl = *p.session_ttl.lock().unwrap();
    p.sessions.lock().unwrap().insert(token.clone(), Instant::now() + ttl);
    (StatusCode::OK, Json(json!({"result": {"sessionId": token}})))
}

async fn session(State(p): State<Arc<Peer>>, h: HeaderMap) -> Answer {
    let given = header_value(&h, "x-session");
    let ok = p.sessions.lock().unwrap().get(given).is_some_and(|until| *until > Instant::now());
    answer(&p, ok, "session")
}

async fn cc_token(State(p): State<Arc<Peer>>, h: HeaderMap, body: String) -> Answer {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let from_basic = basic_of(&h);
    let (id, secret) = match from_basic {
        Some(pair) => pair,
        None => {
            (form.get("client_id").cloned().unwrap_or_default(), form.get("client_secret").cloned().unwrap_or_default())
        }
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || id != p.expected.client_id
        || secret != p.expected.client_secret
    {
        p.counts.refused.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"})));
    }
    let n = p.counts.cc_tokens.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("cc-{n}");
    p.cc_tokens.lock().unwrap().push(token.clone());
    (StatusCode::OK, Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600})))
}

async fn cc_data(State(p): State<Arc<Peer>>, h: HeaderMap) -> Answer {
    let given = header_value(&h, "authorization").strip_prefix("Bearer ").unwrap_or_default().to_string();
    let ok = p.cc_tokens.lock().unwrap().contains(&given);
    answer(&p, ok, "client_credentials")
}
