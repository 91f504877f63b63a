//! A browser without a browser for the web console's HTTP tests: a cookie jar, no redirects followed, the CSRF
//! token read from the last page, and sign-in with `chainkeeper console-link`.

use std::path::Path;
use std::time::Duration;

use crate::{assert_no_planted_secret, cli};

/// One answer of the console.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    /// Every `Set-Cookie` header.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect()
    }
    pub fn csp(&self) -> &str {
        self.headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    /// Where a hand-over page (to a provider's sign-in) sends the browser: its `#continue` link.
    pub fn continue_link(&self) -> Option<String> {
        let marker = r#"id="continue" href=""#;
        let at = self.body.find(marker)? + marker.len();
        let raw = self.body[at..].split('"').next()?;
        Some(
            raw.replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        )
    }

    /// The value of the first hidden CSRF field.
    pub fn csrf(&self) -> Option<String> {
        csrf_of(&self.body)
    }
}

/// The value of the first `name="csrf"` field of a page.
pub fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..].split('"').next()?.to_string())
}

/// A person's browser: cookies kept, redirects not followed (each answer is checked).
pub struct Browser {
    pub base: String,
    pub http: reqwest::Client,
}

impl Browser {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self { base: base.trim_end_matches('/').to_string(), http }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") { path.to_string() } else { format!("{}{path}", self.base) }
    }

    async fn read(&self, what: String, res: reqwest::Response) -> Page {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.text().await.unwrap_or_default();
        assert_no_planted_secret(&what, &body);
        Page { status, headers, body }
    }

    pub async fn get(&self, path: &str) -> Page {
        let res = self.http.get(self.url(path)).header("accept", "text/html").send().await.expect("GET sent");
        self.read(format!("GET {path}"), res).await
    }

    /// Posts a form as given (no CSRF added).
    pub async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let res =
            self.http.post(self.url(path)).header("accept", "text/html").form(fields).send().await.expect("POST sent");
        self.read(format!("POST {path}"), res).await
    }

    /// Posts a form with the CSRF token of the page at `from`.
    pub async fn post(&self, from: &str, path: &str, fields: &[(&str, &str)]) -> Page {
        let page = self.get(from).await;
        let csrf = page.csrf().unwrap_or_else(|| panic!("no CSRF field on {from}: {} {}", page.status, page.body));
        let mut all: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }

    /// Signs in with a fresh `chainkeeper console-link` (`owner`: `["--org", "acme"]` or `["--platform"]`).
    pub async fn sign_in_with_link(
        &self,
        data_dir: &Path,
        config: Option<&Path>,
        owner: &[&str],
        scopes: &[&str],
    ) -> Page {
        let link = console_link(data_dir, config, owner, scopes, &self.base);
        let token = link.split("t=").nth(1).expect("the link carries its token").to_string();
        let landing = self.get(&link).await;
        assert_eq!(landing.status, 200, "{}", landing.body);
        self.post_raw("/console/signin/link", &[("t", &token)]).await
    }
}

/// `chainkeeper console-link …`: the printed link.
pub fn console_link(data_dir: &Path, config: Option<&Path>, owner: &[&str], scopes: &[&str], base: &str) -> String {
    let mut args = vec!["console-link", "--data-dir", data_dir.to_str().unwrap(), "--base-url", base];
    if let Some(c) = config {
        args.extend(["--config", c.to_str().unwrap()]);
    }
    args.extend_from_slice(owner);
    for s in scopes {
        args.extend(["--scope", s]);
    }
    cli(&args).expect("console-link").trim().to_string()
}
