//! A person's browser, reduced to what Exact Online's sign-in needs, over plain HTTP with a cookie jar: start at
//! the authorize URL, follow redirects, fill each page, and stop at the redirect to the app (returned, not
//! fetched). Pages are read with `chainkeeper-forms`.
//!
//! It speaks both sign-ins of the simulator:
//! - [`SignIn::AzureB2c`](crate::SignIn): the start page (`LoginForm$UserName` + `__RequestVerificationToken`),
//!   then the B2C pages the way public clients drive them (a Go client of Exact's web login, 2026: read
//!   `var SETTINGS` and `var SA_FIELDS`, fill the fields it knows — `signInName`/`email` with the e-mail,
//!   `password`, `userAgent`, `totpVerificationCode`, `reset_totp=false`, `totp_skip_days=true`; skip the
//!   informational `rememberMePeriodChangeInfo`/`exactAssistantPayload`; refuse any other field — post them to
//!   `<tenant>/SelfAsserted` with `X-CSRF-TOKEN` and `X-Requested-With`, then GET `<tenant>/api/<api>/confirmed`),
//!   then the form_post page to `/signin-azureb2c`, the redirects back to the authorize URL, and consent;
//! - [`SignIn::Simple`](crate::SignIn): the simulator's `UserName`/`Password` form, `Code` form and consent form.
//!
//! A sign-in that cannot go on unattended ends in an error whose root cause is a [`Stopped`] (use
//! `err.downcast_ref::<Stopped>()`).

use anyhow::{Context, bail};
use reqwest::header::LOCATION;
use url::Url;

pub use chainkeeper_forms::{Field, Form, decode_entities};

/// The first `<form>` of a page.
pub fn parse_form(html: &str) -> Option<Form> {
    chainkeeper_forms::first_form(html)
}

/// The text of the page's first non-empty `class="error"` element, if any.
pub fn error_text(html: &str) -> Option<String> {
    chainkeeper_forms::texts_with_class(html, "error").into_iter().find(|t| !t.is_empty())
}

/// Why a sign-in stopped where a person would have to step in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The password was refused (the provider's message).
    PasswordRejected(String),
    /// The verification code was refused.
    CodeRejected(String),
    /// The account is locked.
    Locked(String),
    /// A captcha or bot challenge is on the page.
    Captcha(String),
    /// A code sent by e-mail is asked for.
    EmailCode,
    /// A two-step code is asked for and none was given.
    NoCode,
    /// A page this browser does not know how to fill (the provider changed it).
    UnknownPage(String),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::PasswordRejected(m) => write!(f, "login rejected: the password was refused: {m}"),
            Stopped::CodeRejected(m) => write!(f, "verification code rejected: {m}"),
            Stopped::Locked(m) => write!(f, "the account is locked: {m}"),
            Stopped::Captcha(m) => write!(f, "the sign-in asks for a captcha or bot check: {m}"),
            Stopped::EmailCode => write!(f, "the sign-in asks for a code sent by e-mail"),
            Stopped::NoCode => write!(f, "the login asks for a two-step verification code and none was given"),
            Stopped::UnknownPage(m) => write!(f, "unrecognised page: {m}"),
        }
    }
}

impl std::error::Error for Stopped {}

/// What a browser sends as `userAgent` on B2C's user-agent step.
pub const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) exact-sim-browser";

/// Markers of captcha widgets and bot challenges (as a 2026 Exact web-login client looks for them).
fn captcha_marker(body: &str) -> Option<&'static str> {
    const MARKERS: &[(&str, &str)] = &[
        ("g-recaptcha", "reCAPTCHA"),
        ("/recaptcha/", "reCAPTCHA"),
        ("h-captcha", "hCaptcha"),
        ("hcaptcha", "hCaptcha"),
        ("challenges.cloudflare", "Cloudflare challenge"),
        ("_cf_chl_opt", "Cloudflare challenge"),
    ];
    MARKERS.iter().find(|(m, _)| body.contains(m)).map(|(_, n)| *n)
}

/// Signs in with a fresh cookie-keeping client that does not follow redirects.
/// `authorize_url` is the complete authorize URL (client_id, redirect_uri, state, …).
/// Returns the final redirect (the app's redirect URI with `code` and `state`), not fetched.
pub async fn login(authorize_url: &str, username: &str, password: &str, totp: Option<&str>) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .user_agent(USER_AGENT)
        .build()?;
    login_with(&client, authorize_url, username, password, totp).await
}

enum Next {
    Get(Url),
    Post(Url, Vec<(String, String)>),
}

fn page_excerpt(body: &str) -> String {
    let t = chainkeeper_forms::visible_text(body);
    t.chars().take(300).collect()
}

/// As [`login`], with a caller's client (which must keep cookies and must not follow redirects).
pub async fn login_with(
    client: &reqwest::Client,
    authorize_url: &str,
    username: &str,
    password: &str,
    totp: Option<&str>,
) -> anyhow::Result<String> {
    let start = Url::parse(authorize_url).context("authorize URL")?;
    let app = start.query_pairs().find(|(k, _)| k == "redirect_uri").map(|(_, v)| v.into_owned());
    let is_app = |u: &Url| match &app {
        Some(a) => u.as_str().split(['?', '#']).next() == Some(a.split(['?', '#']).next().unwrap_or(a)),
        None => u.query_pairs().any(|(k, _)| k == "code" || k == "error"),
    };
    let (mut sent_password, mut sent_code) = (false, false);
    let mut next = Next::Get(start);
    for _ in 0..40 {
        let (url, resp) = match next {
            Next::Get(u) => {
                let r = client.get(u.clone()).send().await.with_context(|| format!("GET {u}"))?;
                (u, r)
            }
            Next::Post(u, fields) => {
                let r = client.post(u.clone()).form(&fields).send().await.with_context(|| format!("POST {u}"))?;
                (u, r)
            }
        };
        let status = resp.status();
        if status.is_redirection() {
            let loc =
                resp.headers().get(LOCATION).context("redirect without Location")?.to_str().context("Location")?;
            let target = url.join(loc).context("Location")?;
            if is_app(&target) {
                return Ok(target.to_string());
            }
            next = Next::Get(target);
            continue;
        }
        let challenged = resp.headers().contains_key("cf-mitigated");
        let body = resp.text().await?;
        if let Some(kind) = captcha_marker(&body).or(challenged.then_some("Cloudflare challenge")) {
            return Err(Stopped::Captcha(kind.to_string()).into());
        }
        if !status.is_success() {
            bail!("sign-in page {url} answered {status}: {}", error_text(&body).unwrap_or_else(|| page_excerpt(&body)));
        }

        // Azure AD B2C: no form, a script's SETTINGS and SA_FIELDS.
        if let Some(settings) = chainkeeper_forms::script_json(&body, "SETTINGS") {
            next = Next::Get(b2c_step(client, &url, &settings, &body, username, password, totp).await?);
            continue;
        }

        let Some(form) = parse_form(&body) else {
            return Err(Stopped::UnknownPage(format!("no form at {url}: {}", page_excerpt(&body))).into());
        };
        let action = url.join(form.action.as_deref().unwrap_or("")).context("form action")?;
        let submitter = form.default_submitter().cloned();
        let mut fields = form.entries(submitter.as_ref());
        let set = chainkeeper_forms::set_entry;

        if form.has_field("LoginForm$UserName") {
            // Exact's start page: the e-mail address (the anti-forgery token goes along as a hidden field).
            set(&mut fields, "LoginForm$UserName", username);
        } else if let Some(allow) = form.fields.iter().find(|f| f.name == "Allow" && f.value == "yes") {
            fields = form.entries(Some(allow));
        } else if form.has_field("Password") {
            if sent_password {
                let msg = error_text(&body).unwrap_or_else(|| "login page shown again".into());
                return Err(Stopped::PasswordRejected(msg).into());
            }
            set(&mut fields, "UserName", username);
            set(&mut fields, "Password", password);
            sent_password = true;
        } else if form.has_field("Code") {
            let Some(code) = totp else { return Err(Stopped::NoCode.into()) };
            if sent_code {
                return Err(Stopped::CodeRejected(error_text(&body).unwrap_or_default()).into());
            }
            set(&mut fields, "Code", code);
            sent_code = true;
        } else if !form.fields.is_empty() && form.fields.iter().all(|f| f.is_hidden() || f.is_submit()) {
            // A page that posts itself (B2C's form_post to /signin-azureb2c).
            fields = form.entries(None);
        } else {
            return Err(Stopped::UnknownPage(format!("form at {url}: {}", page_excerpt(&body))).into());
        }
        next = if form.method == "post" {
            Next::Post(action, fields)
        } else {
            let mut a = action;
            a.query_pairs_mut().clear().extend_pairs(fields.iter());
            Next::Get(a)
        };
    }
    bail!("too many pages without a redirect to the app")
}

/// One B2C step: fills the `SA_FIELDS`, posts them to `SelfAsserted`, and returns the `confirmed` URL.
async fn b2c_step(
    client: &reqwest::Client,
    page: &Url,
    settings: &serde_json::Value,
    body: &str,
    username: &str,
    password: &str,
    totp: Option<&str>,
) -> anyhow::Result<Url> {
    let text = |k: &str| settings.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let (api, csrf, tx) = (text("api"), text("csrf"), text("transId"));
    let tenant = settings.pointer("/hosts/tenant").and_then(|v| v.as_str()).unwrap_or_default();
    let policy = settings.pointer("/hosts/policy").and_then(|v| v.as_str()).unwrap_or_default();
    if api.is_empty() || csrf.is_empty() || tx.is_empty() || tenant.is_empty() || policy.is_empty() {
        return Err(Stopped::UnknownPage(format!("B2C SETTINGS without api/csrf/transId/hosts at {page}")).into());
    }
    let ids: Vec<String> = chainkeeper_forms::script_json(body, "SA_FIELDS")
        .and_then(|f| f.get("AttributeFields").and_then(|a| a.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|f| f.get("ID").and_then(|v| v.as_str()).map(str::to_string))
        .collect();
    if ids.is_empty() {
        return Err(Stopped::UnknownPage(format!("B2C page without SA_FIELDS at {page}")).into());
    }
    let mut form = vec![("request_type".to_string(), "RESPONSE".to_string())];
    let (mut has_password, mut has_code) = (false, false);
    for id in &ids {
        let value = match id.as_str() {
            "signInName" | "email" | "emailAddress" => username.to_string(),
            "password" => {
                has_password = true;
                password.to_string()
            }
            "userAgent" => USER_AGENT.to_string(),
            "totpVerificationCode" => {
                has_code = true;
                totp.ok_or(Stopped::NoCode)?.to_string()
            }
            "reset_totp" => "false".to_string(),
            "totp_skip_days" => "true".to_string(),
            "rememberMePeriodChangeInfo" | "exactAssistantPayload" => continue,
            "emailVerificationCode" => return Err(Stopped::EmailCode.into()),
            other => return Err(Stopped::UnknownPage(format!("unhandled B2C field {other:?} at {page}")).into()),
        };
        form.push((id.clone(), value));
    }
    let base = format!("{}{}", page.origin().ascii_serialization(), tenant);
    let mut post = Url::parse(&format!("{base}/SelfAsserted")).context("B2C tenant path")?;
    post.query_pairs_mut().append_pair("tx", &tx).append_pair("p", policy);
    let resp = client
        .post(post.clone())
        .header("X-CSRF-TOKEN", &csrf)
        .header("X-Requested-With", "XMLHttpRequest")
        .header("Accept", "application/json, text/javascript, */*; q=0.01")
        .form(&form)
        .send()
        .await
        .with_context(|| format!("POST {post}"))?;
    let http = resp.status();
    let answer = resp.text().await.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
    if json["status"] != "200" {
        let msg = json["message"].as_str().map(str::to_string).unwrap_or_else(|| format!("HTTP {http}: {answer}"));
        let stop = if msg.to_ascii_lowercase().contains("locked") {
            Stopped::Locked(msg)
        } else if has_password {
            Stopped::PasswordRejected(msg)
        } else if has_code {
            Stopped::CodeRejected(msg)
        } else {
            Stopped::UnknownPage(msg)
        };
        return Err(stop.into());
    }
    let mut confirmed = Url::parse(&format!("{base}/api/{api}/confirmed")).context("B2C confirmed URL")?;
    {
        let mut q = confirmed.query_pairs_mut();
        if api == "CombinedSigninAndSignup" {
            q.append_pair("rememberMe", "false");
        }
        q.append_pair("csrf_token", &csrf).append_pair("tx", &tx).append_pair("p", policy);
    }
    Ok(confirmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_simulators_simple_login_form() {
        let html = r#"<html><FORM method="post" action="/a?x=1&amp;y=2"><input type=hidden name='Sid' value="a&quot;b">
            <input name="UserName"><input type="submit" name="Go" value="Log in"><button name="Allow" value="yes">ok</button></form>"#;
        let f = parse_form(html).unwrap();
        assert_eq!(f.action.as_deref(), Some("/a?x=1&y=2"));
        assert_eq!(f.method, "post");
        assert_eq!(f.hidden_fields().next().unwrap().value, "a\"b");
        assert!(f.has_field("UserName") && f.has_field("Allow"));
        assert_eq!(error_text("<p class=\"x error\">Wrong &amp; bad</p>").as_deref(), Some("Wrong & bad"));
    }
}
