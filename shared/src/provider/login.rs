//! The auto-recovery login driver: signs in at a provider the way a person's browser does — fetch the
//! authorize URL, fill the login page, the two-step (TOTP) page and the consent page, follow redirects — until
//! the provider redirects to chainkeeper's redirect URI with a code. Which fields mean what comes from the
//! provider profile's `login_form` table (with defaults that fit Exact Online and common login pages).
//!
//! It never leaves the provider's own host and scheme, and gives up after a bounded number of pages. It sends
//! credentials over `https` only: plain `http` only to a loopback host (the credentials never leave the machine,
//! as browsers treat `localhost`) or to a host the operator names in `[server] login_allow_http_hosts` (tests).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// The profile's description of its login pages.
#[derive(Clone, Debug)]
pub struct FormSpec {
    pub username_fields: Vec<String>,
    pub password_fields: Vec<String>,
    pub totp_fields: Vec<String>,
    /// Words that mark a button as "allow" (consent) and as "deny" (never pressed).
    pub allow_words: Vec<String>,
    pub deny_words: Vec<String>,
}

fn strings(t: Option<&toml::Table>, key: &str, default: &[&str]) -> Vec<String> {
    match t.and_then(|t| t.get(key)) {
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => default.iter().map(|s| s.to_string()).collect(),
    }
}

impl FormSpec {
    /// From a profile's `login_form` table (`username_field`, `password_field`, `totp_field`, `allow_words`,
    /// `deny_words`; each a string or a list).
    pub fn from_profile(table: Option<&toml::Table>) -> Self {
        Self {
            username_fields: strings(table, "username_field", &["UserName", "username", "login", "email"]),
            password_fields: strings(table, "password_field", &["Password", "password"]),
            totp_fields: strings(table, "totp_field", &["Code", "code", "otp", "totp"]),
            allow_words: strings(table, "allow_words", &["allow", "yes", "continue", "authorize", "accept", "grant"]),
            deny_words: strings(table, "deny_words", &["deny", "no", "cancel", "abort", "reject"]),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The provider showed the login (or two-step) page again: the stored credentials are wrong.
    #[error("the provider did not accept the stored {0}")]
    Rejected(&'static str),
    /// Anything else: network, unexpected pages. Worth another try later.
    #[error("sign-in did not complete: {0}")]
    Failed(String),
}

/// One HTML form.
#[derive(Debug, Default)]
struct Form {
    action: Option<String>,
    method: String,
    inputs: Vec<(String, String, String)>,  // (type, name, value)
    buttons: Vec<(String, String, String)>, // (name, value, text)
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(name) {
        let at = from + pos;
        from = at + name.len();
        let before_ok = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = tag[at + name.len()..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
            _ => rest.split(|c: char| c.is_whitespace() || c == '>').next().unwrap_or(""),
        };
        return Some(unescape(value));
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#x2F;", "/")
}

fn parse_forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut forms = Vec::new();
    let mut from = 0;
    while let Some(start) = lower[from..].find("<form") {
        let start = from + start;
        let end = lower[start..].find("</form").map_or(html.len(), |e| start + e);
        let tag_end = lower[start..].find('>').map_or(end, |e| start + e);
        let tag = &html[start..tag_end];
        let mut form = Form {
            action: attr(tag, "action"),
            method: attr(tag, "method").unwrap_or_else(|| "get".into()).to_ascii_lowercase(),
            ..Default::default()
        };
        let body = &html[tag_end..end];
        let body_lower = &lower[tag_end..end];
        let mut i = 0;
        while let Some(p) = body_lower[i..].find('<') {
            let p = i + p;
            let close = body_lower[p..].find('>').map_or(body.len(), |e| p + e);
            let tag = &body[p..close];
            let tl = &body_lower[p..close];
            if tl.starts_with("<input") {
                let kind = attr(tag, "type").unwrap_or_else(|| "text".into()).to_ascii_lowercase();
                if let Some(name) = attr(tag, "name") {
                    let value = attr(tag, "value").unwrap_or_default();
                    if kind == "submit" {
                        form.buttons.push((name, value.clone(), value));
                    } else {
                        form.inputs.push((kind, name, value));
                    }
                }
            } else if tl.starts_with("<button") {
                let text_end = body_lower[close..].find("</button").map_or(close, |e| close + e);
                let text = body[close + 1.min(body.len() - close)..text_end].trim().to_string();
                let kind = attr(tag, "type").unwrap_or_else(|| "submit".into()).to_ascii_lowercase();
                if kind == "submit" {
                    form.buttons.push((
                        attr(tag, "name").unwrap_or_default(),
                        attr(tag, "value").unwrap_or_default(),
                        text,
                    ));
                }
            }
            i = close.max(p + 1);
        }
        forms.push(form);
        from = end.max(start + 1);
    }
    forms
}

pub struct Credentials<'a> {
    pub username: &'a SecretString,
    pub password: &'a SecretString,
    /// The current TOTP code, if the account has a second step.
    pub totp: Option<&'a (dyn Fn() -> String + Send + Sync)>,
}

/// May credentials go to `url`? Over `https`; over plain `http` only to loopback or a host the operator named.
fn secure_enough(url: &url::Url, allow_http_hosts: &[String]) -> bool {
    if url.scheme() == "https" {
        return true;
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    url.scheme() == "http"
        && (loopback
            || allow_http_hosts
                .iter()
                .any(|h| h.trim_start_matches('[').trim_end_matches(']').eq_ignore_ascii_case(host)))
}

/// Signs in and returns the final redirect (the redirect URI with `code` and `state`), without requesting it.
/// `allow_http_hosts`: hosts besides loopback where credentials may go over plain `http` (tests).
pub async fn sign_in(
    authorize_url: &str,
    redirect_uri: &str,
    creds: &Credentials<'_>,
    spec: &FormSpec,
    allow_http_hosts: &[String],
) -> Result<String, LoginError> {
    let fail = |m: String| LoginError::Failed(m);
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("chainkeeper-recovery/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let start = url::Url::parse(authorize_url).map_err(|e| fail(e.to_string()))?;
    if !secure_enough(&start, allow_http_hosts) {
        return Err(fail(format!(
            "the provider's sign-in page is not https ({}); credentials are sent over https only \
             (an operator may allow plain http for a test host with [server] login_allow_http_hosts)",
            start.host_str().unwrap_or("?")
        )));
    }
    let same_site = |u: &url::Url| {
        u.scheme() == start.scheme()
            && u.host_str() == start.host_str()
            && u.port_or_known_default() == start.port_or_known_default()
    };
    let mut url = start.clone();
    let mut form_body: Option<Vec<(String, String)>> = None;
    let (mut sent_password, mut sent_totp) = (0, 0);
    for _ in 0..15 {
        let req = match &form_body {
            None => client.get(url.clone()),
            Some(fields) => client.post(url.clone()).form(fields),
        };
        let res = req.send().await.map_err(|e| fail(format!("provider unreachable: {e}")))?;
        let status = res.status();
        if status.is_redirection() {
            let location = res
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| fail("redirect without a location".into()))?;
            let next = url.join(location).map_err(|e| fail(e.to_string()))?;
            if next.as_str().starts_with(redirect_uri) {
                return Ok(next.to_string());
            }
            if !same_site(&next) {
                return Err(fail(format!(
                    "the provider redirected to another host ({})",
                    next.host_str().unwrap_or("?")
                )));
            }
            url = next;
            form_body = None;
            continue;
        }
        if !status.is_success() {
            return Err(fail(format!("the provider answered HTTP {}", status.as_u16())));
        }
        let html = res.text().await.map_err(|e| fail(e.to_string()))?;
        let forms = parse_forms(&html);
        let has = |f: &Form, names: &[String]| {
            f.inputs.iter().any(|(_, n, _)| names.iter().any(|m| m.eq_ignore_ascii_case(n)))
        };
        let Some(form) = forms
            .iter()
            .find(|f| has(f, &spec.password_fields) || has(f, &spec.totp_fields))
            .or_else(|| forms.iter().find(|f| f.method == "post"))
        else {
            return Err(fail("the provider showed a page without a form".into()));
        };
        let mut fields: Vec<(String, String)> = Vec::new();
        for (_, name, value) in &form.inputs {
            let is = |names: &[String]| names.iter().any(|m| m.eq_ignore_ascii_case(name));
            let value = if is(&spec.password_fields) {
                creds.password.expose_secret().to_string()
            } else if is(&spec.username_fields) {
                creds.username.expose_secret().to_string()
            } else if is(&spec.totp_fields) {
                match creds.totp {
                    Some(code) => code(),
                    None => {
                        return Err(LoginError::Rejected(
                            "TOTP secret (the account asks for a code and none is stored)",
                        ));
                    }
                }
            } else {
                value.clone()
            };
            fields.push((name.clone(), value));
        }
        if has(form, &spec.password_fields) {
            sent_password += 1;
            if sent_password > 1 {
                return Err(LoginError::Rejected("username or password"));
            }
        } else if has(form, &spec.totp_fields) {
            sent_totp += 1;
            if sent_totp > 2 {
                return Err(LoginError::Rejected("TOTP secret"));
            }
        }
        let word = |s: &str, words: &[String]| {
            words.iter().any(|w| s.to_ascii_lowercase().split(|c: char| !c.is_alphanumeric()).any(|p| p == w))
        };
        let button = form
            .buttons
            .iter()
            .find(|(n, v, t)| word(v, &spec.allow_words) || word(t, &spec.allow_words) || word(n, &spec.allow_words))
            .or_else(|| {
                form.buttons.iter().find(|(n, v, t)| {
                    !(word(v, &spec.deny_words) || word(t, &spec.deny_words) || word(n, &spec.deny_words))
                })
            });
        if let Some((name, value, _)) = button
            && !name.is_empty()
        {
            fields.push((name.clone(), value.clone()));
        }
        let target = match &form.action {
            Some(a) if !a.is_empty() => url.join(a).map_err(|e| fail(e.to_string()))?,
            _ => url.clone(),
        };
        if !same_site(&target) {
            return Err(fail("a login form posts to another host".into()));
        }
        url = target;
        form_body = Some(fields);
    }
    Err(fail("too many pages before the provider redirected back".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_go_over_https_only_except_loopback_and_named_test_hosts() {
        let (user, pw): (SecretString, SecretString) = ("u".into(), "pw-PLANTED".into());
        let creds = Credentials { username: &user, password: &pw, totp: None };
        let spec = FormSpec::from_profile(None);
        // A plain-http sign-in page on a real host: refused before any request (the name does not even resolve).
        let e = sign_in("http://login.example.invalid/auth", "https://ck/cb", &creds, &spec, &[]).await.unwrap_err();
        let LoginError::Failed(why) = e else { panic!("{e:?}") };
        assert!(why.contains("https only"), "{why}");
        // The rule itself.
        let ok = |u: &str, allow: &[String]| secure_enough(&url::Url::parse(u).unwrap(), allow);
        assert!(ok("https://start.exactonline.nl/api/oauth2/auth", &[]));
        assert!(ok("http://127.0.0.1:8801/auth", &[]));
        assert!(ok("http://[::1]:8801/auth", &[]));
        assert!(ok("http://localhost:8801/auth", &[]));
        assert!(!ok("http://start.exactonline.nl/api/oauth2/auth", &[]));
        assert!(!ok("http://10.0.0.5/auth", &[]));
        assert!(!ok("ftp://127.0.0.1/auth", &[]));
        assert!(ok("http://idp.test/auth", &["IDP.test".to_string()]));
    }

    #[test]
    fn forms_are_read_like_a_browser_reads_them() {
        let html = r#"<html><form method="post" action="/interaction/ab&amp;c" id=x>
            <input type="hidden" name="prompt" value="login"/>
            <input required type=text name=login placeholder='Enter'>
            <input type="password" name="password">
            <button type="submit" class="login">Sign-in</button></form>
            <form method="post" action="/c"><button type="submit" name="Allow" value="yes">Allow</button>
            <button type="submit" name="Allow" value="no">Deny</button></form>"#;
        let forms = parse_forms(html);
        assert_eq!(forms.len(), 2);
        assert_eq!(forms[0].action.as_deref(), Some("/interaction/ab&c"));
        assert_eq!(forms[0].inputs.iter().map(|i| i.1.as_str()).collect::<Vec<_>>(), ["prompt", "login", "password"]);
        assert_eq!(forms[0].inputs[0].2, "login");
        assert_eq!(forms[1].buttons[0], ("Allow".into(), "yes".into(), "Allow".into()));
    }
}
