//! The auto-recovery login drivers: sign in at a provider the way a person's browser does, until the provider
//! redirects to chainkeeper's redirect URI with a code.
//!
//! The provider profile picks the driver and the hosts (`[providers.<name>.login]`, [`LoginProfile`]):
//! - [`html_form`] (the default): login, two-step and consent pages that are HTML forms (oidc-provider, most
//!   identity servers);
//! - [`azure_b2c`]: Exact Online's sign-in — a start page with the e-mail address, then Azure AD B2C's
//!   script-built, self-asserted pages on another host.
//!
//! Host policy ([`HostPolicy`]): the driver requests nothing outside the profile's `login.hosts` (by default the
//! authorize URL's own host), so neither credentials nor the cookies of a half-done sign-in ever reach another
//! host; and only over `https`, except loopback (the credentials never leave the machine, as browsers treat
//! `localhost`) or a host the operator names in `[server] login_allow_http_hosts` (tests).
//!
//! Every way a sign-in ends is a [`LoginError`] a person can act on; no error text carries a credential.

pub mod azure_b2c;
pub mod html_form;

use super::request_error_text as why;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub use html_form::FormSpec;

/// Which driver signs in at a provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginDriver {
    /// HTML forms, fields recognised by type, `autocomplete` and name.
    #[default]
    HtmlForm,
    /// Exact Online: start page, then Azure AD B2C.
    AzureB2c,
}

/// A profile's `login` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginProfile {
    #[serde(default)]
    pub driver: LoginDriver,
    /// The hosts (`name` or `name:port`) the driver may send requests to, credentials included. Empty: the
    /// authorize URL's host only.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// How a sign-in that did not reach the redirect URI ended. Each names what a person can do about it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    /// The provider refused the username or password (or the account is unknown).
    #[error("the provider did not accept the stored username or password: {0}")]
    PasswordRejected(String),
    /// The provider refused the TOTP code, or asked for one and no TOTP secret is stored.
    #[error("the provider did not accept the TOTP code: {0}")]
    TotpRejected(String),
    /// Only a person can go on: a captcha or bot check, a code sent by e-mail, a locked account.
    #[error("the sign-in needs a person: {0}")]
    VerificationNeeded(String),
    /// A page or step the driver does not know, or one that would take the sign-in outside the profile's hosts
    /// or off `https`: the driver stopped rather than guess.
    #[error("the sign-in reached a step the driver does not support: {0}")]
    UnsupportedStep(String),
    /// Network trouble, timeouts, 5xx: worth another try later.
    #[error("the provider's sign-in could not be reached: {0}")]
    Unreachable(String),
}

pub struct Credentials<'a> {
    pub username: &'a SecretString,
    pub password: &'a SecretString,
    /// The current TOTP code, if the account has a second step.
    pub totp: Option<&'a (dyn Fn() -> String + Send + Sync)>,
}

/// Signs in with the profile's driver and returns the final redirect (the redirect URI with `code` and
/// `state`), without requesting it.
pub async fn sign_in(
    login: &LoginProfile,
    spec: &FormSpec,
    authorize_url: &str,
    redirect_uri: &str,
    creds: &Credentials<'_>,
    allow_http_hosts: &[String],
) -> Result<String, LoginError> {
    let start = url::Url::parse(authorize_url).map_err(|e| LoginError::UnsupportedStep(e.to_string()))?;
    let policy = HostPolicy::new(&login.hosts, &start, allow_http_hosts)?;
    let browser = Browser::new(&policy)?;
    match login.driver {
        LoginDriver::HtmlForm => html_form::sign_in(&browser, start, redirect_uri, creds, spec).await,
        LoginDriver::AzureB2c => azure_b2c::sign_in(&browser, start, redirect_uri, creds, spec).await,
    }
}

/// Where the driver may send requests.
#[derive(Debug)]
pub struct HostPolicy {
    /// (lower-case host, port; `None` = the scheme's default port).
    hosts: Vec<(String, Option<u16>)>,
    allow_http_hosts: Vec<String>,
}

fn bare(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

impl HostPolicy {
    /// `hosts` from the profile (empty: `start`'s host and port).
    pub fn new(hosts: &[String], start: &url::Url, allow_http_hosts: &[String]) -> Result<Self, LoginError> {
        let mut list = Vec::new();
        if hosts.is_empty() {
            list.push((bare(start.host_str().unwrap_or_default()).to_ascii_lowercase(), start.port()));
        }
        for h in hosts {
            let u = url::Url::parse(&format!("https://{h}/"))
                .ok()
                .filter(|u| u.host_str().is_some() && u.path() == "/")
                .ok_or_else(|| LoginError::UnsupportedStep(format!("login.hosts entry {h:?} is not a host[:port]")))?;
            list.push((bare(u.host_str().unwrap_or_default()).to_ascii_lowercase(), u.port()));
        }
        Ok(Self { hosts: list, allow_http_hosts: allow_http_hosts.to_vec() })
    }

    /// May the driver request `url` (and so send it credentials)?
    pub fn check(&self, url: &url::Url) -> Result<(), LoginError> {
        let host = bare(url.host_str().unwrap_or_default()).to_ascii_lowercase();
        let listed = self.hosts.iter().any(|(h, port)| {
            *h == host
                && match port {
                    Some(p) => url.port_or_known_default() == Some(*p),
                    None => url.port().is_none(),
                }
        });
        if !listed {
            let shown = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            };
            return Err(LoginError::UnsupportedStep(format!(
                "the sign-in goes on at {shown}, which is not in the provider profile's login.hosts; \
                 no credentials were sent there"
            )));
        }
        if !secure_enough(url, &self.allow_http_hosts) {
            return Err(LoginError::UnsupportedStep(format!(
                "the sign-in page at {} is not https; credentials are sent over https only \
                 (an operator may allow plain http for a test host with [server] login_allow_http_hosts)",
                url.host_str().unwrap_or("?")
            )));
        }
        Ok(())
    }
}

/// Over `https`; over plain `http` only to loopback or a host the operator named.
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
    let host = bare(url.host_str().unwrap_or_default());
    url.scheme() == "http" && (loopback || allow_http_hosts.iter().any(|h| bare(h).eq_ignore_ascii_case(host)))
}

/// What one request gave.
pub(super) enum Page {
    /// A redirect, resolved against the request URL.
    Redirect(url::Url),
    /// A page: its URL, HTTP status, body, and whether a bot challenge answered (`cf-mitigated`).
    Html { url: url::Url, status: u16, body: String, challenged: bool },
}

/// Where a driver goes next: a URL to GET, or a URL and the form fields to POST there.
pub(super) type Next = (url::Url, Option<Vec<(String, String)>>);

/// What the next request of a driver's loop gave.
pub(super) enum Step {
    /// The provider sent the browser to the redirect URI: the answer (not requested).
    Done(String),
    /// A redirect inside the sign-in, already set as the next request.
    Followed,
    /// A page for the driver to read: its URL and body.
    Page(url::Url, String),
}

/// Makes `next`'s request. Every driver stops here at a captcha or bot challenge (a person is needed) and at an
/// error page (a step it does not know).
pub(super) async fn visit(browser: &Browser<'_>, next: &mut Next, redirect_uri: &str) -> Result<Step, LoginError> {
    let page = match next.1.take() {
        None => browser.get(next.0.clone()).await?,
        Some(fields) => browser.post(next.0.clone(), &fields, &[]).await?,
    };
    let (url, status, body, challenged) = match page {
        Page::Redirect(to) if to.as_str().starts_with(redirect_uri) => return Ok(Step::Done(to.to_string())),
        Page::Redirect(to) => {
            *next = (to, None);
            return Ok(Step::Followed);
        }
        Page::Html { url, status, body, challenged } => (url, status, body, challenged),
    };
    if let Some(what) = captcha_on(&body, challenged) {
        return Err(LoginError::VerificationNeeded(format!("the sign-in page shows {what}")));
    }
    if !(200..300).contains(&status) {
        return Err(LoginError::UnsupportedStep(format!(
            "{} answered HTTP {status} ({})",
            url.host_str().unwrap_or("?"),
            title_of(&body)
        )));
    }
    Ok(Step::Page(url, body))
}

/// A cookie-keeping client that follows no redirect by itself and asks the host policy before every request.
pub(super) struct Browser<'a> {
    client: reqwest::Client,
    policy: &'a HostPolicy,
}

impl<'a> Browser<'a> {
    fn new(policy: &'a HostPolicy) -> Result<Self, LoginError> {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| LoginError::Unreachable(why(e)))?;
        Ok(Self { client, policy })
    }

    pub(super) async fn get(&self, url: url::Url) -> Result<Page, LoginError> {
        self.policy.check(&url)?;
        self.page(url.clone(), self.client.get(url)).await
    }

    /// POSTs a form body with extra headers.
    pub(super) async fn post(
        &self,
        url: url::Url,
        fields: &[(String, String)],
        headers: &[(&str, &str)],
    ) -> Result<Page, LoginError> {
        self.policy.check(&url)?;
        let mut req = self.client.post(url.clone()).form(fields);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.page(url, req).await
    }

    async fn page(&self, url: url::Url, req: reqwest::RequestBuilder) -> Result<Page, LoginError> {
        let res = req.send().await.map_err(|e| LoginError::Unreachable(why(e)))?;
        let status = res.status();
        if status.is_redirection() {
            let location = res
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| LoginError::UnsupportedStep("a redirect without a location".into()))?;
            let next = url.join(location).map_err(|e| LoginError::UnsupportedStep(e.to_string()))?;
            return Ok(Page::Redirect(next));
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(LoginError::Unreachable(format!(
                "{} answered HTTP {}",
                url.host_str().unwrap_or("?"),
                status.as_u16()
            )));
        }
        let challenged = res.headers().contains_key("cf-mitigated");
        let body = res.text().await.map_err(|e| LoginError::Unreachable(why(e)))?;
        Ok(Page::Html { url, status: status.as_u16(), body, challenged })
    }
}

/// What the driver says it is.
pub(super) const USER_AGENT: &str = concat!("chainkeeper-recovery/", env!("CARGO_PKG_VERSION"));

/// The captcha or bot check on a page, if any (the markers a 2026 Exact web-login client looks for).
pub(super) fn captcha_on(body: &str, challenged: bool) -> Option<&'static str> {
    const MARKERS: &[(&str, &str)] = &[
        ("g-recaptcha", "reCAPTCHA"),
        ("/recaptcha/", "reCAPTCHA"),
        ("h-captcha", "hCaptcha"),
        ("hcaptcha", "hCaptcha"),
        ("challenges.cloudflare", "a Cloudflare challenge"),
        ("_cf_chl_opt", "a Cloudflare challenge"),
    ];
    if challenged {
        return Some("a Cloudflare challenge");
    }
    MARKERS.iter().find(|(m, _)| body.contains(m)).map(|(_, n)| *n)
}

/// A page's `<title>` (to name an unknown page without quoting its content).
pub(super) fn title_of(body: &str) -> String {
    let lower = body.to_ascii_lowercase();
    let Some(start) = lower.find("<title>").map(|i| i + 7) else { return "untitled page".into() };
    let end = lower[start..].find("</title>").map_or(body.len().min(start + 80), |e| start + e);
    let t = chainkeeper_forms::decode_entities(body.get(start..end).unwrap_or("")).trim().to_string();
    t.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], start: &str, allow: &[&str]) -> HostPolicy {
        let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        HostPolicy::new(&hosts, &url::Url::parse(start).unwrap(), &allow).unwrap()
    }

    fn ok(p: &HostPolicy, u: &str) -> bool {
        p.check(&url::Url::parse(u).unwrap()).is_ok()
    }

    #[test]
    fn only_the_profiles_hosts_over_https_receive_anything() {
        let exact = policy(&["start.exactonline.nl", "login.exact.com"], "https://start.exactonline.nl/api/x", &[]);
        assert!(ok(&exact, "https://start.exactonline.nl/api/oauth2/auth"));
        assert!(ok(&exact, "https://LOGIN.exact.com/t/B2C/SelfAsserted"));
        assert!(ok(&exact, "https://login.exact.com:443/t"));
        assert!(!ok(&exact, "https://login.exact.com:8443/t"), "another port is another host");
        assert!(!ok(&exact, "https://evil.example/t"));
        assert!(!ok(&exact, "https://login.exact.com.evil.example/t"));
        assert!(!ok(&exact, "http://login.exact.com/t"), "https only");
        let e = exact.check(&url::Url::parse("https://evil.example/x").unwrap()).unwrap_err();
        assert!(
            matches!(&e, LoginError::UnsupportedStep(m) if m.contains("evil.example") && m.contains("login.hosts"))
        );
        // No list: the authorize URL's host and port only.
        let own = policy(&[], "http://127.0.0.1:8801/auth", &[]);
        assert!(ok(&own, "http://127.0.0.1:8801/login"));
        assert!(!ok(&own, "http://127.0.0.1:8802/login"));
        // Ports in the list; plain http on loopback, or on a host the operator named.
        let sim = policy(&["127.0.0.1:8801", "[::1]:8802", "idp.test"], "http://127.0.0.1:8801/a", &["IDP.test"]);
        assert!(ok(&sim, "http://127.0.0.1:8801/a") && ok(&sim, "http://[::1]:8802/b") && ok(&sim, "http://idp.test/"));
        assert!(!ok(&sim, "ftp://127.0.0.1:8801/a"));
        let lan = policy(&["10.0.0.5"], "https://10.0.0.5/", &[]);
        assert!(!ok(&lan, "http://10.0.0.5/auth") && ok(&lan, "https://10.0.0.5/auth"));
        assert!(HostPolicy::new(&["a/b".into()], &url::Url::parse("https://a/").unwrap(), &[]).is_err());
    }

    #[tokio::test]
    async fn a_plain_http_sign_in_page_on_a_real_host_is_refused_before_any_request() {
        let (user, pw): (SecretString, SecretString) = ("u".into(), "pw-PLANTED".into());
        let creds = Credentials { username: &user, password: &pw, totp: None };
        for driver in [LoginDriver::HtmlForm, LoginDriver::AzureB2c] {
            let login = LoginProfile { driver, hosts: vec![] };
            let spec = FormSpec::from_profile(None);
            // The name does not even resolve: an error other than UnsupportedStep would mean a request was tried.
            let e = sign_in(&login, &spec, "http://login.example.invalid/auth", "https://ck/cb", &creds, &[])
                .await
                .unwrap_err();
            assert!(matches!(&e, LoginError::UnsupportedStep(m) if m.contains("https only")), "{e:?}");
        }
    }

    #[tokio::test]
    async fn a_sign_in_page_that_does_not_answer_is_a_passing_failure() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (user, pw): (SecretString, SecretString) = ("u".into(), "pw-PLANTED".into());
        let creds = Credentials { username: &user, password: &pw, totp: None };
        let login = LoginProfile { driver: LoginDriver::AzureB2c, hosts: vec![] };
        let url = format!("http://127.0.0.1:{port}/api/oauth2/auth");
        let e = sign_in(&login, &FormSpec::from_profile(None), &url, "https://ck/cb", &creds, &[]).await.unwrap_err();
        assert!(matches!(&e, LoginError::Unreachable(_)), "{e:?}");
        assert!(!e.to_string().contains("PLANTED"));
    }

    #[test]
    fn captchas_and_titles_are_read() {
        assert_eq!(captcha_on("<div class=\"g-recaptcha\">", false), Some("reCAPTCHA"));
        assert_eq!(captcha_on("<p>hi</p>", true), Some("a Cloudflare challenge"));
        assert_eq!(captcha_on("<p>Sign in</p>", false), None);
        assert_eq!(title_of("<html><head><TITLE> Log in &amp; go </title>"), "Log in & go");
        assert_eq!(title_of("<p>none"), "untitled page");
    }
}
