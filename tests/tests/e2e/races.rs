//! One refresh per chain across processes: four `chainkeeper serve` processes on one SQLite file, 200 callers.

use std::time::Duration;

use chainkeeper_e2e::exact::{CLIENT_ID, CLIENT_SECRET, sim_user};
use chainkeeper_e2e::{Api, Serve, container_path, free_port, issue_token};
use exact_sim::{ExactSim, SimApp, SimClock, SimConfig};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_callers_over_four_processes_cause_one_token_request() {
    // Exact's rules scaled down 200x so the test runs in seconds: 3 s tokens, 2.85 s between token requests.
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let redirect = format!("http://127.0.0.1:{}/v1/callback", ports[0]);
    let user = sim_user(1);
    let sim = ExactSim::start(
        SimConfig {
            apps: vec![SimApp { client_id: CLIENT_ID.into(), client_secret: CLIENT_SECRET.into(), redirect_uris: vec![redirect.clone()] }],
            users: vec![user.clone()],
            access_token_lifetime: Duration::from_secs(3),
            min_token_interval: Duration::from_millis(2_850),
            ..SimConfig::default()
        },
        SimClock::system(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chainkeeper.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[engine]
refresh_margin_s = 1
sweep_interval_s = 3600
[providers.exact-online-nl]
authorize_url = "{base}/api/oauth2/auth"
token_url = "{base}/api/oauth2/token"
api_base_url = "{base}/api"
min_token_interval_s = 2.85
access_token_lifetime_s = 3
[apps.exact-online-nl]
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uri = "{redirect}"
"#,
            base = sim.base_url
        ),
    )
    .unwrap();
    let mut serves = Vec::new();
    for port in &ports {
        serves.push(Serve::start_on(dir.path(), Some(&config), *port).await.unwrap());
    }
    let token = issue_token(dir.path(), &["--platform"], &["admin"]);
    let apis: Vec<Api> = serves.iter().map(|s| Api::new(&s.base, &token)).collect();
    apis[0].create_container("acme", "finance", "eol", "oauth2_code", Some("exact-online-nl")).await;
    let r = apis[1].post(&format!("{}/authorize", container_path("acme", "finance", "eol")), json!({})).await;
    let url = r.body["authorize_url"].as_str().unwrap().to_string();
    let back = exact_sim::browser::login(&url, &user.username, &user.password, sim.totp_now(&user.username).as_deref()).await.unwrap();
    assert_eq!(apis[0].with_token("").get(&back).await.status, 200);

    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(3_100)).await; // every process now sees an expired token
        let before = sim.stats().refresh_requests;
        let path = format!("{}/token", container_path("acme", "finance", "eol"));
        let calls = (0..200).map(|i| {
            let api = apis[i % 4].clone();
            let path = path.clone();
            async move { api.post(&path, json!({})).await }
        });
        let replies = futures::future::join_all(calls).await;
        let mut tokens = std::collections::HashSet::new();
        for r in &replies {
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
            tokens.insert(r.body["access_token"].as_str().unwrap().to_string());
        }
        assert_eq!(sim.stats().refresh_requests - before, 1, "round {round}: exactly one token request reached Exact");
        assert_eq!(tokens.len(), 1, "round {round}: every caller got the same token");
        let me = reqwest::Client::new()
            .get(format!("{}/api/v1/current/Me", sim.base_url))
            .bearer_auth(tokens.iter().next().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200);
    }
    assert_eq!(sim.stats().invalid_grant, 0);
    assert_eq!(sim.stats().rate_limited, 0);
}
