mod common;

use std::time::Duration;

use common::*;
use exact_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_DIVISION, DEFAULT_PASSWORD, DEFAULT_REDIRECT_URI,
    DEFAULT_USER_ID, DEFAULT_USERNAME, Fault, SimConfig, browser, totp,
};

// ------------------------------------------------------------------ authorization + code

#[tokio::test]
async fn browser_login_end_to_end_echoes_state_and_gives_usable_tokens() {
    let sim = start(SimConfig::default()).await;
    let state = "a b&c=d/é?+%";
    let loc = browser::login(
        &authorize_url(&sim, state, None),
        DEFAULT_USERNAME,
        DEFAULT_PASSWORD,
        sim.totp_now(DEFAULT_USERNAME).as_deref(),
    )
    .await
    .unwrap();
    assert!(loc.starts_with(&format!("{DEFAULT_REDIRECT_URI}?")), "{loc}");
    let q = query_of(&loc);
    assert_eq!(q["state"], state);
    let r = exchange(&sim, &q["code"], None).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    // expires_in is a STRING, as Exact sends it.
    assert_eq!(r.json["expires_in"], serde_json::json!("600"));
    assert_eq!(r.json["token_type"], "bearer");
    assert!(!r.access_token().is_empty() && !r.refresh_token().is_empty());
    let (status, me_json) = me(&sim, &r.access_token()).await;
    assert_eq!(status, 200);
    let u = &me_json["d"]["results"][0];
    assert_eq!(u["UserID"], DEFAULT_USER_ID);
    assert_eq!(u["UserName"], DEFAULT_USERNAME);
    assert_eq!(u["CurrentDivision"], DEFAULT_DIVISION);
    let st = sim.stats();
    assert_eq!((st.token_requests, st.code_requests, st.refresh_requests, st.api_calls), (1, 1, 0, 1));
    assert_eq!(sim.active_refresh_token_count(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), 1);
}

#[tokio::test]
async fn login_pages_wrong_password_wrong_totp_consent_skip() {
    let sim = start(SimConfig { sign_in: exact_sim::SignIn::Simple, ..SimConfig::default() }).await;
    let c = client();
    let page = c.get(authorize_url(&sim, "s1", None)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let form = browser::parse_form(&html).unwrap();
    assert_eq!(form.method, "post");
    assert!(form.has_field("UserName") && form.has_field("Password"));
    let sid = form.hidden_fields().next().unwrap().value.clone();
    let post = |fields: Vec<(&'static str, String)>| {
        let c = c.clone();
        let url = sim.authorize_url();
        async move { c.post(url).form(&fields).send().await.unwrap() }
    };
    // wrong password: the login page again, 200, with an error text
    let r =
        post(vec![("LoginSessionId", sid.clone()), ("UserName", DEFAULT_USERNAME.into()), ("Password", "nope".into())])
            .await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(browser::error_text(&html).unwrap().contains("incorrect"));
    assert!(browser::parse_form(&html).unwrap().has_field("Password"));
    // right password: TOTP page
    let r = post(vec![
        ("LoginSessionId", sid.clone()),
        ("UserName", DEFAULT_USERNAME.into()),
        ("Password", DEFAULT_PASSWORD.into()),
    ])
    .await;
    let html = r.text().await.unwrap();
    assert!(browser::parse_form(&html).unwrap().has_field("Code"));
    // wrong code: the TOTP page again with an error
    let now_s = sim.clock().now_ms() / 1000;
    let wrong = totp::totp(&totp::base32_decode(exact_sim::DEFAULT_TOTP_SECRET).unwrap(), now_s - 300, 6);
    let r = post(vec![("LoginSessionId", sid.clone()), ("Code", wrong)]).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(browser::error_text(&html).unwrap().contains("incorrect"));
    // a code of the previous step is still accepted (±1 step)
    let prev = totp::totp(&totp::base32_decode(exact_sim::DEFAULT_TOTP_SECRET).unwrap(), now_s - 30, 6);
    let r = post(vec![("LoginSessionId", sid.clone()), ("Code", prev)]).await;
    let html = r.text().await.unwrap();
    assert!(browser::parse_form(&html).unwrap().has_field("Allow"), "{html}");
    let r = post(vec![("LoginSessionId", sid.clone()), ("Allow", "yes".into())]).await;
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(query_of(&loc)["state"], "s1");

    // second authorization: consent already given → straight from TOTP to the redirect
    let html = c.get(authorize_url(&sim, "s2", None)).send().await.unwrap().text().await.unwrap();
    let sid = browser::parse_form(&html).unwrap().hidden_fields().next().unwrap().value.clone();
    post(vec![
        ("LoginSessionId", sid.clone()),
        ("UserName", DEFAULT_USERNAME.into()),
        ("Password", DEFAULT_PASSWORD.into()),
    ])
    .await;
    let r = post(vec![("LoginSessionId", sid.clone()), ("Code", sim.totp_now(DEFAULT_USERNAME).unwrap())]).await;
    assert_eq!(r.status(), 302);

    // the helper reports a wrong password instead of looping
    let err = browser::login(&authorize_url(&sim, "s", None), DEFAULT_USERNAME, "bad", None).await.unwrap_err();
    assert!(err.to_string().contains("incorrect"), "{err}");
}

#[tokio::test]
async fn unknown_client_or_unregistered_redirect_is_a_400_page_without_redirect() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let base = sim.authorize_url();
    let r = c
        .get(&base)
        .query(&[("client_id", "nobody"), ("redirect_uri", DEFAULT_REDIRECT_URI), ("response_type", "code")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    let r = c
        .get(&base)
        .query(&[
            ("client_id", DEFAULT_CLIENT_ID),
            ("redirect_uri", "https://evil.example/cb"),
            ("response_type", "code"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("not registered"));
}

#[tokio::test]
async fn code_is_single_use_and_bound_to_redirect_uri() {
    let sim = start(SimConfig::default()).await;
    let code = get_code(&sim, None).await;
    let wrong = token(
        &sim,
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", "http://127.0.0.1:9/other")],
    )
    .await;
    assert_eq!((wrong.status, wrong.error()), (400, "invalid_grant"));
    let first = exchange(&sim, &code, None).await;
    assert_eq!(first.status, 200);
    let again = exchange(&sim, &code, None).await;
    assert_eq!((again.status, again.error()), (400, "invalid_grant"));
    assert!(again.description().contains("already used"));
    assert_eq!(sim.stats().invalid_grant, 2);
}

#[tokio::test]
async fn code_lives_180_seconds() {
    let sim = start(SimConfig::default()).await;
    let code = get_code(&sim, None).await;
    sim.clock().advance(secs(180));
    assert_eq!(exchange(&sim, &code, None).await.status, 200);

    let code = get_code(&sim, None).await;
    sim.clock().advance(secs(181));
    let r = exchange(&sim, &code, None).await;
    assert_eq!((r.status, r.error()), (400, "invalid_grant"));
    assert!(r.description().contains("expired"));
}

#[tokio::test]
async fn pkce_s256_is_verified() {
    let sim = start(SimConfig::default()).await;
    let (verifier, challenge) = pkce_pair();
    let code = get_code(&sim, Some(&challenge)).await;
    let missing = exchange(&sim, &code, None).await;
    assert_eq!((missing.status, missing.error()), (400, "invalid_grant"));
    let wrong = exchange(&sim, &code, Some("not-the-verifier-not-the-verifier-not-the-verifier")).await;
    assert_eq!((wrong.status, wrong.error()), (400, "invalid_grant"));
    assert!(wrong.description().contains("PKCE"));
    let ok = exchange(&sim, &code, Some(&verifier)).await;
    assert_eq!(ok.status, 200, "{:?}", ok.json);
}

// ------------------------------------------------------------------ client authentication

#[tokio::test]
async fn client_auth_basic_or_post_and_invalid_client() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let good = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET);
    let bad = (DEFAULT_CLIENT_ID, "wrong");

    let code = get_code(&sim, None).await;
    let p = [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", DEFAULT_REDIRECT_URI)];
    for basic in [false, true] {
        let r = token_with(&c, &sim, &p, bad, basic).await.unwrap();
        assert_eq!((r.status, r.error()), (401, "invalid_client"), "basic={basic}");
    }
    let r = token_with(&c, &sim, &p, ("unknown", DEFAULT_CLIENT_SECRET), false).await.unwrap();
    assert_eq!((r.status, r.error()), (401, "invalid_client"));
    // Basic works…
    let r = token_with(&c, &sim, &p, good, true).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json);
    // …and so does the body.
    sim.clock().advance(secs(570));
    let rt = r.refresh_token();
    let r =
        token_with(&c, &sim, &[("grant_type", "refresh_token"), ("refresh_token", &rt)], good, false).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(sim.stats().invalid_client, 3);
}

// ------------------------------------------------------------------ refresh rules

#[tokio::test]
async fn refresh_rotates_and_old_token_is_invalid_grant() {
    let sim = start(SimConfig::default()).await;
    let a = authorize(&sim).await;
    let rt1 = a.refresh_token();
    sim.clock().advance(secs(570));
    let b = refresh(&sim, &rt1).await;
    assert_eq!(b.status, 200, "{:?}", b.json);
    assert_eq!(b.json["expires_in"], "600");
    let rt2 = b.refresh_token();
    assert_ne!(rt1, rt2);
    assert_eq!(sim.active_refresh_token(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).as_deref(), Some(rt2.as_str()));
    assert_eq!(sim.active_refresh_token_count(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), 1);
    sim.clock().advance(secs(600));
    let old = refresh(&sim, &rt1).await;
    assert_eq!((old.status, old.error(), old.description()), (400, "invalid_grant", "Old refresh token used."));
    // the old token's use does not hurt the new one
    assert_eq!(refresh(&sim, &rt2).await.status, 200);
    let st = sim.stats();
    assert_eq!((st.refresh_requests, st.tokens_issued, st.invalid_grant), (3, 3, 1));
    let per = &st.per_chain[&format!("{DEFAULT_CLIENT_ID}#{DEFAULT_USER_ID}")];
    assert_eq!((per.refresh_requests, per.code_requests, per.invalid_grant), (3, 1, 1));
}

#[tokio::test]
async fn rate_rule_570s_rejects_with_reason_and_does_not_rotate() {
    let sim = start(SimConfig::default()).await;
    let a = authorize(&sim).await;
    let rt = a.refresh_token();
    sim.clock().advance(secs(569));
    let r = refresh(&sim, &rt).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error(), "access_denied");
    assert_eq!(r.description(), "Rate limit exceeded: access_token not expired");
    assert_eq!(r.headers["reason"], "TooEarlyToRefreshTokens");
    // no rotation: the presented token is still the active one
    assert_eq!(sim.active_refresh_token(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).as_deref(), Some(rt.as_str()));
    sim.clock().advance(secs(1));
    let ok = refresh(&sim, &rt).await;
    assert_eq!(ok.status, 200, "{:?}", ok.json);
    // the interval counts from the last issued access token (the refresh), not from the authorization
    let again = refresh(&sim, &ok.refresh_token()).await;
    assert_eq!(again.error(), "access_denied");
    assert_eq!(sim.stats().rate_limited, 2);
}

#[tokio::test]
async fn refresh_token_expires_after_30_days_unused() {
    let sim = start(SimConfig::default()).await;
    let rt = authorize(&sim).await.refresh_token();
    sim.clock().advance(secs(30 * 24 * 3600 + 1));
    let r = refresh(&sim, &rt).await;
    // The default (until chainkeeper's engine knows Exact's own answer, see `ExpiredRefreshAnswer`).
    assert_eq!((r.status, r.error(), r.description()), (400, "invalid_grant", "Refresh token expired"));
    // Exact's answer, as reported in websmurf/laravel-exact-online issue #23: `invalid_request` (not
    // `invalid_grant`) with both times in .NET's US format.
    sim.set_expired_refresh_answer(exact_sim::ExpiredRefreshAnswer::Exact);
    let r = refresh(&sim, &rt).await;
    assert_eq!(
        (r.status, r.error(), r.description()),
        (
            400,
            "invalid_request",
            "The refresh token expired at 12/14/2023 10:13:20 PM and it is now 12/14/2023 10:13:21 PM."
        )
    );
    assert_eq!(sim.stats().old_refresh_token_used, 0, "an expired token is not an old one");

    // just inside the window it still works
    let sim = start(SimConfig::default()).await;
    let rt = authorize(&sim).await.refresh_token();
    sim.clock().advance(secs(30 * 24 * 3600));
    assert_eq!(refresh(&sim, &rt).await.status, 200);
}

#[tokio::test]
async fn new_authorization_kills_earlier_refresh_token() {
    let sim = start(SimConfig::default()).await;
    let rt1 = authorize(&sim).await.refresh_token();
    let a2 = authorize(&sim).await;
    assert_eq!(sim.active_refresh_token_count(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), 1);
    sim.clock().advance(secs(600));
    let r = refresh(&sim, &rt1).await;
    assert_eq!((r.status, r.error(), r.description()), (400, "invalid_grant", "Old refresh token used."));
    assert_eq!(refresh(&sim, &a2.refresh_token()).await.status, 200);
}

#[tokio::test]
async fn access_token_lives_600_seconds() {
    let sim = start(SimConfig::default()).await;
    let at = authorize(&sim).await.access_token();
    sim.clock().advance(secs(599));
    assert_eq!(me(&sim, &at).await.0, 200);
    sim.clock().advance(secs(1));
    assert_eq!(me(&sim, &at).await.0, 401);
    assert_eq!(me(&sim, "garbage").await.0, 401);
}

#[tokio::test]
async fn activation_rule() {
    let sim = start(SimConfig { require_activation: true, ..SimConfig::default() }).await;
    let rt1 = authorize(&sim).await.refresh_token(); // from a code: active at once
    sim.clock().advance(secs(570));
    let b = refresh(&sim, &rt1).await;
    assert_eq!(b.status, 200);
    sim.clock().advance(secs(570));
    let r = refresh(&sim, &b.refresh_token()).await;
    assert_eq!((r.status, r.error(), r.description()), (400, "invalid_grant", "Refresh token not activated"));
    // still the active token; one API call with its access token activates it
    assert_eq!(sim.active_refresh_token(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), Some(b.refresh_token()));
    assert_eq!(me(&sim, &b.access_token()).await.0, 200);
    assert_eq!(refresh(&sim, &b.refresh_token()).await.status, 200);
}

#[tokio::test]
async fn revoke_and_set_password() {
    let sim = start(SimConfig::default()).await;
    let a = authorize(&sim).await;
    sim.revoke(DEFAULT_CLIENT_ID, DEFAULT_USER_ID);
    assert_eq!(sim.active_refresh_token_count(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), 0);
    sim.clock().advance(secs(600));
    let r = refresh(&sim, &a.refresh_token()).await;
    assert_eq!((r.status, r.error()), (400, "invalid_grant"));
    assert_eq!(me(&sim, &a.access_token()).await.0, 401);

    sim.set_password(DEFAULT_USERNAME, "n3w-pass");
    let totp = sim.totp_now(DEFAULT_USERNAME);
    let url = authorize_url(&sim, "s", None);
    assert!(browser::login(&url, DEFAULT_USERNAME, DEFAULT_PASSWORD, totp.as_deref()).await.is_err());
    let loc = browser::login(&url, DEFAULT_USERNAME, "n3w-pass", totp.as_deref()).await.unwrap();
    assert!(query_of(&loc).contains_key("code"));
}

// ------------------------------------------------------------------ concurrency: the judge

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_refreshes_with_one_token_exactly_one_wins() {
    let sim = start(SimConfig::default()).await;
    let rt = authorize(&sim).await.refresh_token();
    sim.clock().advance(secs(570));
    let c = reqwest::Client::builder().pool_max_idle_per_host(1000).build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        let url = sim.token_url();
        let rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("client_id", DEFAULT_CLIENT_ID),
                    ("client_secret", DEFAULT_CLIENT_SECRET),
                ])
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let j: serde_json::Value = r.json().await.unwrap();
            (s, j["error_description"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut ok = 0;
    let mut old = 0;
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (400, d) if d == "Old refresh token used." => old += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((ok, old), (1, 999));
    let st = sim.stats();
    assert_eq!(st.refresh_requests, 1000);
    assert_eq!(st.tokens_issued, 2);
    assert_eq!(sim.active_refresh_token_count(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), 1);
}

// ------------------------------------------------------------------ faults

#[tokio::test]
async fn lost_response_still_rotates() {
    let sim = start(SimConfig::default()).await;
    let rt1 = authorize(&sim).await.refresh_token();
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(1, Fault::LoseResponse);
    let c = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let e = token_with(
        &c,
        &sim,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt1)],
        (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        false,
    )
    .await;
    let e = e.expect_err("the response must be lost");
    assert!(!e.is_timeout(), "closed without a response, not held: {e}");
    // rotation happened: the presented token is dead, a new one is active
    let active = sim.active_refresh_token(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).unwrap();
    assert_ne!(active, rt1);
    sim.clock().advance(secs(570));
    let r = refresh(&sim, &rt1).await;
    assert_eq!((r.error(), r.description()), ("invalid_grant", "Old refresh token used."));
    assert_eq!(refresh(&sim, &active).await.status, 200);
    let st = sim.stats();
    assert_eq!((st.lost_responses, st.faults_injected), (1, 1));
    // code + lost refresh (sent once, not retried by the client) + old + new
    assert_eq!(st.token_requests, 4);
}

#[tokio::test]
async fn lost_response_after_hold_times_the_client_out() {
    let sim = start(SimConfig::default()).await;
    let rt1 = authorize(&sim).await.refresh_token();
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(1, Fault::LoseResponseAfter(Duration::from_secs(30)));
    let c = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let e = token_with(
        &c,
        &sim,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt1)],
        (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        false,
    )
    .await
    .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_ne!(sim.active_refresh_token(DEFAULT_CLIENT_ID, DEFAULT_USER_ID).unwrap(), rt1);
}

#[tokio::test]
async fn unavailable_too_many_and_hang_faults() {
    let sim = start(SimConfig::default()).await;
    let rt = authorize(&sim).await.refresh_token();
    sim.clock().advance(secs(570));
    sim.fail_next_token_requests(2, Fault::ServiceUnavailable);
    sim.fail_next_token_requests(1, Fault::TooManyRequests { retry_after_s: 7 });
    assert_eq!(refresh(&sim, &rt).await.status, 503);
    assert_eq!(refresh(&sim, &rt).await.status, 503);
    let r = refresh(&sim, &rt).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "7");
    // none of those was processed: the token is still active
    assert_eq!(sim.active_refresh_token(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), Some(rt.clone()));
    sim.fail_next_token_requests(1, Fault::Hang(Duration::from_millis(400)));
    let t = std::time::Instant::now();
    let r = refresh(&sim, &rt).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(sim.stats().faults_injected, 4);
}

#[tokio::test]
async fn token_latency() {
    let sim = start(SimConfig { token_latency: Duration::from_millis(300), ..SimConfig::default() }).await;
    let code = get_code(&sim, None).await;
    let t = std::time::Instant::now();
    assert_eq!(exchange(&sim, &code, None).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    sim.set_token_latency(Duration::ZERO);
}

// ------------------------------------------------------------------ API endpoints

#[tokio::test]
async fn minutely_limit_gives_429_with_rate_headers() {
    let sim = start(SimConfig { minutely_limit: 3, ..SimConfig::default() }).await;
    let at = authorize(&sim).await.access_token();
    let c = client();
    let url = format!("{}/api/v1/{DEFAULT_DIVISION}/crm/Accounts", sim.base_url);
    // align to the start of a minute
    let now = sim.clock().now_ms();
    sim.clock().set_ms(now - now % 60_000 + 60_000);
    for remaining in [2, 1, 0] {
        let r = c.get(&url).bearer_auth(&at).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h["x-ratelimit-minutely-limit"], "3");
        assert_eq!(h["x-ratelimit-minutely-remaining"], remaining.to_string().as_str());
        for k in ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-minutely-reset"] {
            assert!(h.contains_key(k), "{k}");
        }
        let j: serde_json::Value = r.json().await.unwrap();
        assert!(j["d"]["results"][0]["ID"].is_string());
        assert!(j["d"]["results"][0]["Name"].is_string());
    }
    let r = c.get(&url).bearer_auth(&at).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-minutely-remaining"], "0");
    assert!(r.headers().contains_key("x-ratelimit-minutely-reset"));
    sim.clock().advance(secs(60));
    assert_eq!(c.get(&url).bearer_auth(&at).send().await.unwrap().status(), 200);
    assert_eq!(sim.stats().api_rate_limited, 1);
    // another division is not this user's
    let r = c.get(format!("{}/api/v1/999/crm/Accounts", sim.base_url)).bearer_auth(&at).send().await.unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn echo_endpoint_reports_the_request() {
    let sim = start(SimConfig::default()).await;
    let at = authorize(&sim).await.access_token();
    let r = client()
        .put(format!("{}/api/v1/{DEFAULT_DIVISION}/echo/a/b?$filter=Name eq 'x'&$top=2", sim.base_url))
        .bearer_auth(&at)
        .header("X-Custom", "yes")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-ratelimit-minutely-remaining"));
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["method"], "PUT");
    assert_eq!(j["path"], format!("/api/v1/{DEFAULT_DIVISION}/echo/a/b"));
    assert_eq!(j["query_params"][0], serde_json::json!(["$filter", "Name eq 'x'"]));
    assert_eq!(j["headers"]["x-custom"], "yes");
    assert_eq!(j["headers"]["authorization"], format!("Bearer {at}"));
    assert_eq!(j["body"], "hello");
    let r = client().get(format!("{}/api/v1/{DEFAULT_DIVISION}/echo/x", sim.base_url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

// ------------------------------------------------------------------ HTTP control + binary

#[tokio::test]
async fn http_control_endpoints() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let a = authorize(&sim).await;
    let t0 = sim.clock().now_ms();
    let r: serde_json::Value =
        c.post(format!("{}/_sim/clock/advance?ms=570000", sim.base_url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["now_ms"], t0 + 570_000);
    let r = c.post(format!("{}/_sim/fault?n=1&kind=unavailable", sim.base_url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(refresh(&sim, &a.refresh_token()).await.status, 503);
    let st: exact_sim::SimStats =
        c.get(format!("{}/_sim/stats", sim.base_url)).send().await.unwrap().json().await.unwrap();
    assert_eq!((st.token_requests, st.refresh_requests, st.faults_injected), (2, 1, 1));
    let r = c
        .post(format!("{}/_sim/revoke", sim.base_url))
        .query(&[("client_id", DEFAULT_CLIENT_ID), ("user_id", DEFAULT_USER_ID)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.active_refresh_token_count(DEFAULT_CLIENT_ID, DEFAULT_USER_ID), 0);
    let r: serde_json::Value = c
        .get(format!("{}/_sim/totp?username={DEFAULT_USERNAME}", sim.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["code"].as_str(), sim.totp_now(DEFAULT_USERNAME).as_deref());
    let r = c.post(format!("{}/_sim/fault?kind=bogus", sim.base_url)).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[test]
fn totp_rfc6238_vector() {
    let secret = totp::base32_decode(exact_sim::DEFAULT_TOTP_SECRET).unwrap();
    assert_eq!(secret, b"12345678901234567890");
    assert_eq!(totp::totp(&secret, 59, 8), "94287082");
    assert_eq!(totp::totp(&secret, 59, 6), "287082");
}

#[tokio::test]
async fn totp_now_follows_the_sim_clock() {
    let sim = start(SimConfig::default()).await;
    sim.clock().set_ms(59_000);
    assert_eq!(sim.totp_now(DEFAULT_USERNAME).as_deref(), Some("287082"));
    assert_eq!(sim.totp_now("nobody"), None);
}

#[test]
fn config_json() {
    let c = SimConfig::from_json(
        r#"{"min_token_interval_s": 9.5, "access_token_lifetime": 10, "minutely_limit": 5,
            "apps": [{"client_id": "ck-app", "client_secret": "ck-secret", "redirect_uris": ["http://x/cb"]}],
            "users": [{"user_id": "u1", "username": "a", "password": "p"}]}"#,
    )
    .unwrap();
    assert_eq!(c.min_token_interval, Duration::from_millis(9500));
    assert_eq!(c.access_token_lifetime, Duration::from_secs(10));
    assert_eq!(c.code_lifetime, Duration::from_secs(180));
    assert_eq!(c.apps[0].client_id, "ck-app");
    assert_eq!(c.users[0].totp_secret_base32, None);
    assert!(SimConfig::from_json(r#"{"typo": 1}"#).is_err());
}

#[tokio::test]
async fn drop_stops_the_server() {
    let sim = start(SimConfig::default()).await;
    let url = format!("{}/_sim/stats", sim.base_url);
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    drop(sim);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    assert!(c.get(&url).send().await.is_err());
}
