//! The Azure AD B2C driver: Exact Online's sign-in as public client code of 2025–2026 shows it (the simulator's
//! `sim/src/server/sign_in_flow.rs` lists the evidence).
//!
//! 1. The authorize URL sends a browser without a session to the start page: an HTML form with
//!    `LoginForm$UserName` (the e-mail address) and a hidden `__RequestVerificationToken` (paired with a
//!    cookie). Filled as any HTML form ([`super::html_form::fill_page`]).
//! 2. Posting it redirects to the B2C host. B2C pages have no HTML form: a script builds it from
//!    `var SETTINGS = {…}` (`api`, `csrf`, `transId`, `hosts.tenant`, `hosts.policy`) and
//!    `var SA_FIELDS = {"AttributeFields":[{"ID":…},…]}`.
//! 3. Each step: `POST <tenant>/SelfAsserted?tx=<transId>&p=<policy>` with `X-CSRF-TOKEN` and
//!    `X-Requested-With: XMLHttpRequest`, body `request_type=RESPONSE` + the fields; the JSON answer says
//!    `{"status":"200"}` or `{"status":"400","message":…}`; then `GET <tenant>/api/<api>/confirmed?csrf_token=…
//!    &tx=…&p=…` serves the next step (`userAgent`, the TOTP page, …).
//! 4. The last page auto-posts `state` and `code` to the start host's `/signin-azureb2c`, which sends the browser
//!    back to the authorize URL, which redirects to chainkeeper with the code.
//!
//! Fields it fills: `signInName`/`email` (the username), `password`, `totpVerificationCode`, `userAgent` (its own
//! user agent), `reset_totp=false` (never re-enrol the authenticator), `totp_skip_days=false` (the driver keeps no
//! cookies between runs, so "remember this device" would only leave a remembered device behind). It passes the
//! informational `rememberMePeriodChangeInfo`. Anything else — a captcha, a code sent by e-mail, a locked
//! account, a field it does not know, a page without `SETTINGS` — ends the sign-in with the outcome a person
//! can act on.

use secrecy::ExposeSecret;
use serde_json::Value;

use super::html_form::{FormSpec, Sent, fill_page};
use super::{Browser, Credentials, LoginError, Next, Page, Step, USER_AGENT, visit};

/// Signs in and returns the final redirect (the redirect URI with `code` and `state`), without requesting it.
pub(super) async fn sign_in(
    browser: &Browser<'_>,
    start: url::Url,
    redirect_uri: &str,
    creds: &Credentials<'_>,
    spec: &FormSpec,
) -> Result<String, LoginError> {
    let mut next: Next = (start, None);
    let mut sent = Sent::default();
    for _ in 0..30 {
        let (url, body) = match visit(browser, &mut next, redirect_uri).await? {
            Step::Done(answer) => return Ok(answer),
            Step::Followed => continue,
            Step::Page(url, body) => (url, body),
        };
        if let Some(settings) = chainkeeper_forms::script_json(&body, "SETTINGS") {
            next = (step(browser, &url, &settings, &body, creds).await?, None);
            continue;
        }
        // The start page, the auto-posting last page, a consent page: HTML forms.
        next = fill_page(&url, &body, spec, creds, &mut sent).map(|(to, fields)| (to, Some(fields)))?;
    }
    Err(LoginError::UnsupportedStep("too many pages before the provider redirected back".into()))
}

/// What a step's fields ask for.
#[derive(Default)]
struct Asked {
    password: bool,
    code: bool,
}

/// One self-asserted step: fill `SA_FIELDS`, post them, and return the `confirmed` URL of the next page.
async fn step(
    browser: &Browser<'_>,
    page: &url::Url,
    settings: &Value,
    body: &str,
    creds: &Credentials<'_>,
) -> Result<url::Url, LoginError> {
    let unsupported = |m: String| LoginError::UnsupportedStep(m);
    let text = |p: &str| settings.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    let (api, csrf, tx, tenant, policy) =
        (text("/api"), text("/csrf"), text("/transId"), text("/hosts/tenant"), text("/hosts/policy"));
    if [&api, &csrf, &tx, &tenant, &policy].iter().any(|v| v.is_empty()) || !tenant.starts_with('/') {
        return Err(unsupported("a B2C page whose SETTINGS lack api, csrf, transId or hosts".into()));
    }
    let ids: Vec<String> = chainkeeper_forms::script_json(body, "SA_FIELDS")
        .and_then(|f| f.get("AttributeFields").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|f| f.get("ID").and_then(Value::as_str).map(str::to_string))
        .collect();
    if ids.is_empty() {
        return Err(unsupported(format!("a B2C page without SA_FIELDS ({api})")));
    }
    let mut form = vec![("request_type".to_string(), "RESPONSE".to_string())];
    let mut asked = Asked::default();
    for id in &ids {
        let value = match id.as_str() {
            "signInName" | "email" | "emailAddress" => creds.username.expose_secret().to_string(),
            "password" => {
                asked.password = true;
                creds.password.expose_secret().to_string()
            }
            "totpVerificationCode" => {
                asked.code = true;
                match creds.totp {
                    Some(code) => code(),
                    None => {
                        return Err(LoginError::TotpRejected(
                            "the account asks for a TOTP code and no TOTP secret is stored".into(),
                        ));
                    }
                }
            }
            "userAgent" => USER_AGENT.to_string(),
            "reset_totp" | "totp_skip_days" => "false".to_string(),
            "rememberMePeriodChangeInfo" | "exactAssistantPayload" => continue,
            "emailVerificationCode" | "verificationCode" => {
                return Err(LoginError::VerificationNeeded(
                    "the sign-in asks for a code sent by e-mail instead of the TOTP code".into(),
                ));
            }
            "captchaControlChallengeCode" | "captcha" => {
                return Err(LoginError::VerificationNeeded("the sign-in page asks for a captcha".into()));
            }
            other => return Err(unsupported(format!("a B2C step with the field {other:?}"))),
        };
        form.push((id.clone(), value));
    }
    let base = format!("{}{}", page.origin().ascii_serialization(), tenant.trim_end_matches('/'));
    let mut post = url::Url::parse(&format!("{base}/SelfAsserted")).map_err(|e| unsupported(e.to_string()))?;
    post.query_pairs_mut().append_pair("tx", &tx).append_pair("p", &policy);
    let headers = [
        ("X-CSRF-TOKEN", csrf.as_str()),
        ("X-Requested-With", "XMLHttpRequest"),
        ("Accept", "application/json, text/javascript, */*; q=0.01"),
    ];
    let (status, answer) = match browser.post(post, &form, &headers).await? {
        Page::Html { status, body, .. } => (status, body),
        Page::Redirect(_) => return Err(unsupported("B2C answered a step with a redirect".into())),
    };
    let json: Value = serde_json::from_str(&answer).unwrap_or_default();
    if json["status"] != "200" {
        return Err(refusal(status, &json, &asked));
    }
    let mut confirmed =
        url::Url::parse(&format!("{base}/api/{api}/confirmed")).map_err(|e| unsupported(e.to_string()))?;
    {
        let mut q = confirmed.query_pairs_mut();
        if api == "CombinedSigninAndSignup" {
            q.append_pair("rememberMe", "false");
        }
        q.append_pair("csrf_token", &csrf).append_pair("tx", &tx).append_pair("p", &policy);
    }
    Ok(confirmed)
}

/// A step B2C did not accept, as the outcome a person can act on.
fn refusal(http: u16, json: &Value, asked: &Asked) -> LoginError {
    let Some(message) = json["message"].as_str().map(|m| m.chars().take(200).collect::<String>()) else {
        return LoginError::UnsupportedStep(format!("B2C answered a step with HTTP {http} and no status"));
    };
    let lower = message.to_ascii_lowercase();
    if http != 200 {
        // A request B2C refuses before reading it (CSRF, transaction): the flow changed under the driver.
        LoginError::UnsupportedStep(format!("B2C refused the step (HTTP {http}): {message}"))
    } else if lower.contains("locked") {
        LoginError::VerificationNeeded(format!("the account is locked: {message}"))
    } else if lower.contains("robot") || lower.contains("captcha") {
        LoginError::VerificationNeeded(format!("the sign-in asks for a captcha: {message}"))
    } else if asked.password {
        LoginError::PasswordRejected(message)
    } else if asked.code {
        LoginError::TotpRejected(message)
    } else {
        LoginError::UnsupportedStep(format!("B2C refused a step: {message}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn refusals_become_outcomes_a_person_can_act_on() {
        let pw = Asked { password: true, code: false };
        let code = Asked { password: false, code: true };
        let msg = |m: &str| json!({"status": "400", "message": m});
        let wrong = json!({"status":"400","errorCode":"AADB2C90052","message":"Invalid username or password."});
        assert_eq!(refusal(200, &wrong, &pw), LoginError::PasswordRejected("Invalid username or password.".into()));
        assert!(matches!(
            refusal(200, &msg("The verification code you entered is not valid."), &code),
            LoginError::TotpRejected(_)
        ));
        assert!(
            matches!(refusal(200, &msg("Your account has been locked."), &pw), LoginError::VerificationNeeded(m) if m.contains("locked"))
        );
        assert!(matches!(
            refusal(200, &msg("Please confirm that you are not a robot."), &pw),
            LoginError::VerificationNeeded(_)
        ));
        assert!(matches!(refusal(400, &msg("The CSRF token is missing"), &pw), LoginError::UnsupportedStep(_)));
        assert!(matches!(refusal(200, &json!({}), &pw), LoginError::UnsupportedStep(_)));
    }
}
