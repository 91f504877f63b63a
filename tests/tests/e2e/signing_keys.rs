//! Signing-key rotation across processes: `chainkeeper signing-key rotate` on a data directory that two `serve`
//! processes use. Tokens name their key (`kid`); the previous key is accepted for the rotation window, and no
//! longer after the next rotation.

use std::path::Path;
use std::time::Duration;

use chainkeeper_e2e::{Api, Serve, cli, issue_token};
use serde_json::{Value, json};

fn rotate(dir: &Path, window: &str) -> Value {
    let out = cli(&["signing-key", "rotate", "--data-dir", dir.to_str().unwrap(), "--window", window]).unwrap();
    serde_json::from_str(&out).expect("rotate prints JSON")
}

/// The `kid` in a token's header.
fn kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["kid"].as_str().expect("a kid").to_string()
}

/// The status of an authenticated read on `base` with `token`, once it is `want` (a running process re-reads
/// its key files within a second), or the last status seen after five seconds.
async fn status_becomes(base: &str, token: &str, want: u16) -> u16 {
    let api = Api::new(base, token);
    let mut last = 0;
    for _ in 0..50 {
        let r = api.get("/v1/orgs/acme").await;
        last = r.status;
        if last == want {
            if want == 401 {
                r.assert_problem(401, "unauthorized");
            }
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_earlier_tokens_for_its_window_in_every_process_and_the_next_one_retires_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = Serve::start(dir.path(), None).await.unwrap();
    let first = issue_token(dir.path(), &["--platform"], &["admin"]);
    let r = Api::new(&a.base, &first).post("/v1/orgs", json!({"name": "acme"})).await;
    assert_eq!(r.status, 201, "{}", r.body);

    let one = rotate(dir.path(), "1h");
    assert_eq!(one["previous_key_id"], kid(&first), "{one}");
    assert!(!one.to_string().contains(&std::fs::read_to_string(dir.path().join("signing.key")).unwrap()));
    let second = issue_token(dir.path(), &["--platform"], &["admin"]);
    assert_eq!(kid(&second), one["key_id"].as_str().unwrap());
    assert_ne!(kid(&second), kid(&first));

    // Another process, started after the rotation, accepts the token of before and the new one.
    let b = Serve::start(dir.path(), None).await.unwrap();
    assert_eq!(status_becomes(&b.base, &first, 200).await, 200, "the earlier token in the new process");
    assert_eq!(status_becomes(&b.base, &second, 200).await, 200);
    // The process that was running during the rotation picks up the new key.
    assert_eq!(status_becomes(&a.base, &second, 200).await, 200, "the new token in the running process");
    assert_eq!(status_becomes(&a.base, &first, 200).await, 200);

    // A second rotation retires the first key: its token is refused everywhere, the second one still works.
    rotate(dir.path(), "1h");
    let third = issue_token(dir.path(), &["--platform"], &["admin"]);
    for s in [&a, &b] {
        assert_eq!(status_becomes(&s.base, &first, 401).await, 401, "a token of a retired key");
        assert_eq!(status_becomes(&s.base, &second, 200).await, 200, "the previous key inside its window");
        assert_eq!(status_becomes(&s.base, &third, 200).await, 200);
    }

    // When the window ends, the previous key's tokens are refused without another rotation.
    let started = std::time::Instant::now();
    rotate(dir.path(), "2s");
    let fourth = issue_token(dir.path(), &["--platform"], &["admin"]);
    assert_eq!(status_becomes(&b.base, &fourth, 200).await, 200);
    let third_in_window = Api::new(&b.base, &third).get("/v1/orgs/acme").await.status;
    if started.elapsed() < Duration::from_millis(1_800) {
        assert_eq!(third_in_window, 200, "inside the window");
    }
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(started.elapsed())).await;
    assert_eq!(status_becomes(&b.base, &third, 401).await, 401, "the window has ended");
    assert_eq!(status_becomes(&a.base, &third, 401).await, 401);
    assert_eq!(status_becomes(&a.base, &fourth, 200).await, 200);
}
