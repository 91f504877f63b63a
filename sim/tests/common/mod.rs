#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use exact_sim::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_REDIRECT_URI, ExactSim, SimClock, SimConfig};
use reqwest::header::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const T0: i64 = 1_700_000_000_000;
pub const S: u64 = 1000;

pub async fn start(config: SimConfig) -> ExactSim {
    ExactSim::start(config, SimClock::new(T0)).await.expect("sim starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

pub fn pkce_pair() -> (String, String) {
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_string();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub fn authorize_url(sim: &ExactSim, state: &str, challenge: Option<&str>) -> String {
    let mut u = url::Url::parse(&sim.authorize_url()).unwrap();
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("client_id", DEFAULT_CLIENT_ID)
            .append_pair("redirect_uri", DEFAULT_REDIRECT_URI)
            .append_pair("response_type", "code")
            .append_pair("state", state)
            .append_pair("force_login", "1");
        if let Some(c) = challenge {
            q.append_pair("code_challenge", c).append_pair("code_challenge_method", "S256");
        }
    }
    u.to_string()
}

pub fn query_of(location: &str) -> HashMap<String, String> {
    url::Url::parse(location).unwrap().query_pairs().into_owned().collect()
}

/// Logs the default user in through the HTML forms; returns the code.
pub async fn get_code(sim: &ExactSim, challenge: Option<&str>) -> String {
    let loc = exact_sim::browser::login(
        &authorize_url(sim, "st", challenge),
        exact_sim::DEFAULT_USERNAME,
        exact_sim::DEFAULT_PASSWORD,
        sim.totp_now(exact_sim::DEFAULT_USERNAME).as_deref(),
    )
    .await
    .expect("login");
    assert!(loc.starts_with(DEFAULT_REDIRECT_URI), "{loc}");
    query_of(&loc)["code"].clone()
}

#[derive(Debug)]
pub struct TokenResp {
    pub status: u16,
    pub headers: HeaderMap,
    pub json: Value,
}

impl TokenResp {
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
    pub fn description(&self) -> &str {
        self.json["error_description"].as_str().unwrap_or("")
    }
    pub fn refresh_token(&self) -> String {
        self.json["refresh_token"].as_str().expect("refresh_token").to_string()
    }
    pub fn access_token(&self) -> String {
        self.json["access_token"].as_str().expect("access_token").to_string()
    }
}

/// Posts to the token endpoint with client credentials in the body (or Basic when `basic`).
pub async fn token_with(
    c: &reqwest::Client,
    sim: &ExactSim,
    params: &[(&str, &str)],
    creds: (&str, &str),
    basic: bool,
) -> reqwest::Result<TokenResp> {
    let mut form: Vec<(&str, &str)> = params.to_vec();
    let mut rb = c.post(sim.token_url());
    if basic {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let b = STANDARD.encode(format!("{}:{}", enc(creds.0), enc(creds.1)));
        rb = rb.header("Authorization", format!("Basic {b}"));
    } else {
        form.push(("client_id", creds.0));
        form.push(("client_secret", creds.1));
    }
    let r = rb.form(&form).send().await?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await?;
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(TokenResp { status, headers, json })
}

pub async fn token(sim: &ExactSim, params: &[(&str, &str)]) -> TokenResp {
    token_with(&client(), sim, params, (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET), false).await.unwrap()
}

pub async fn exchange(sim: &ExactSim, code: &str, verifier: Option<&str>) -> TokenResp {
    let mut p = vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", DEFAULT_REDIRECT_URI)];
    if let Some(v) = verifier {
        p.push(("code_verifier", v));
    }
    token(sim, &p).await
}

pub async fn refresh(sim: &ExactSim, rt: &str) -> TokenResp {
    token(sim, &[("grant_type", "refresh_token"), ("refresh_token", rt)]).await
}

/// Login + code exchange: a fresh chain. Returns the token response.
pub async fn authorize(sim: &ExactSim) -> TokenResp {
    let code = get_code(sim, None).await;
    let r = exchange(sim, &code, None).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    r
}

pub async fn me(sim: &ExactSim, access: &str) -> (u16, Value) {
    let r = client().get(format!("{}/api/v1/current/Me", sim.base_url)).bearer_auth(access).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
