//! How a stored password or API token is used on a platform's API (a profile's `credential_use`), as data: a
//! header, HTTP Basic, a query parameter, or a login call whose session token then goes on every request. The
//! session login runs through the chain engine's token cache (sealed under the organisation's key, renewed on
//! expiry and on a 401), as client-credentials tokens do.

use std::time::Duration;

use anyhow::bail;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::oauth::{TokenError, TokenSet};

/// Where a secret (or a session token) goes on a proxied request.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialUse {
    /// `<name>: <prefix><secret>` (`X-API-Key`, `Authorization: Token …`).
    Header {
        name: String,
        #[serde(default)]
        prefix: String,
    },
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// HTTP Basic with the container's username and its password (or API token).
    Basic,
    /// `?<name>=<secret>` added to the query.
    Query { name: String },
    /// A login call that yields a session token, cached and renewed like an access token.
    SessionLogin(Box<SessionLogin>),
}

/// A platform's login call.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionLogin {
    /// The login URL: absolute, or relative to `api_base_url` when it starts with "/".
    pub url: String,
    #[serde(default = "post")]
    pub method: String,
    /// The body's media type: the placeholders are escaped for it (JSON, form, XML).
    #[serde(default = "json")]
    pub content_type: String,
    /// The body, naming `{username}`, `{password}` and `{api_token}`.
    pub body: String,
    /// Where the session token is in the answer.
    pub token: TokenAt,
    /// How long a session lasts (seconds); it is renewed before then, and at once on a 401.
    pub lifetime_s: f64,
    /// How the session token goes on requests: `header`, `bearer` or `query`.
    pub apply: Box<CredentialUse>,
}

/// Where a login answer holds the session token.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenAt {
    /// A JSON pointer into a JSON answer (`/sessionId`).
    JsonPointer(String),
    /// A response header.
    Header(String),
    /// The text of the first XML element of this name (an ASMX web service's `<string>…</string>`).
    XmlElement(String),
}

fn post() -> String {
    "POST".into()
}
fn json() -> String {
    "application/json".into()
}

impl CredentialUse {
    pub fn validate(&self) -> anyhow::Result<()> {
        match self {
            Self::Header { name, .. } | Self::Query { name } if name.is_empty() => bail!("credential_use needs a name"),
            Self::Header { name, .. } if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() => {
                bail!("credential_use: {name:?} is not a header name")
            }
            Self::SessionLogin(s) => {
                if matches!(*s.apply, Self::Basic | Self::SessionLogin(_)) {
                    bail!("a session token is applied as header, bearer or query");
                }
                if s.lifetime_s <= 0.0 || s.method.parse::<reqwest::Method>().is_err() {
                    bail!("session_login needs a positive lifetime_s and an HTTP method");
                }
                s.apply.validate()
            }
            _ => Ok(()),
        }
    }

    /// Whether the container's username is used (Basic, or a login body naming it).
    pub fn uses_username(&self) -> bool {
        match self {
            Self::Basic => true,
            Self::SessionLogin(s) => s.body.contains("{username}"),
            _ => false,
        }
    }

    /// `req` with `secret` applied (`username` for Basic).
    pub fn apply(
        &self,
        req: reqwest::RequestBuilder,
        username: Option<&str>,
        secret: &SecretString,
    ) -> reqwest::RequestBuilder {
        let s = secret.expose_secret();
        match self {
            Self::Header { name, prefix } => req.header(name.as_str(), format!("{prefix}{s}")),
            Self::Bearer => req.bearer_auth(s),
            Self::Basic => req.basic_auth(username.unwrap_or_default(), Some(s)),
            Self::Query { name } => req.query(&[(name.as_str(), s)]),
            // A session token is applied by the login's own `apply`.
            Self::SessionLogin(l) => l.apply.apply(req, username, secret),
        }
    }
}

/// What a login body may name.
pub struct LoginValues<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a SecretString>,
    pub api_token: Option<&'a SecretString>,
}

impl SessionLogin {
    /// The body with each placeholder replaced by its value, escaped for the content type.
    fn body(&self, v: &LoginValues<'_>) -> String {
        let escape = |raw: &str| -> String {
            if self.content_type.contains("json") {
                let quoted = serde_json::to_string(raw).unwrap_or_default();
                quoted[1..quoted.len() - 1].to_string()
            } else if self.content_type.contains("x-www-form-urlencoded") {
                url::form_urlencoded::byte_serialize(raw.as_bytes()).collect()
            } else if self.content_type.contains("xml") {
                raw.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
            } else {
                raw.to_string()
            }
        };
        let mut body = self.body.clone();
        for (name, value) in [
            ("{username}", v.username),
            ("{password}", v.password.map(|p| p.expose_secret())),
            ("{api_token}", v.api_token.map(|t| t.expose_secret())),
        ] {
            body = body.replace(name, &escape(value.unwrap_or_default()));
        }
        body
    }

    /// Runs the login call; the session token comes back as an access token with the session's lifetime. A
    /// 401/403 (or a 2xx without a token) is `InvalidGrant`: the credentials are refused.
    pub async fn login(
        &self,
        http: &reqwest::Client,
        url: &str,
        v: &LoginValues<'_>,
        timeout: Duration,
    ) -> Result<TokenSet, TokenError> {
        let method: reqwest::Method =
            self.method.parse().map_err(|_| TokenError::Refused("the login method is not valid".into()))?;
        let res = http
            .request(method, url)
            .header(reqwest::header::CONTENT_TYPE, self.content_type.as_str())
            .body(self.body(v))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| TokenError::Transient {
                status: None,
                retry_after_s: None,
                reason: super::request_error_text(e),
            })?;
        let status = res.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(TokenError::InvalidGrant(format!("the login was refused (HTTP {})", status.as_u16())));
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let reason = format!("the login failed (HTTP {})", status.as_u16());
            return Err(TokenError::Transient { status: Some(status.as_u16()), retry_after_s: None, reason });
        }
        if !status.is_success() {
            return Err(TokenError::Refused(format!("the login answered HTTP {}", status.as_u16())));
        }
        let from_header = match &self.token {
            TokenAt::Header(h) => res.headers().get(h.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string),
            _ => None,
        };
        let text = res.text().await.map_err(|e| TokenError::Lost(super::request_error_text(e)))?;
        let token = match &self.token {
            TokenAt::Header(_) => from_header,
            TokenAt::JsonPointer(p) => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.pointer(p).and_then(|t| t.as_str()).map(str::to_string)),
            TokenAt::XmlElement(name) => xml_text(&text, name),
        };
        match token.filter(|t| !t.is_empty()) {
            Some(t) => Ok(TokenSet {
                access_token: SecretString::from(t),
                refresh_token: None,
                expires_in: Some(self.lifetime_s),
                scope: None,
            }),
            None => Err(TokenError::InvalidGrant("the login answer holds no session token".into())),
        }
    }
}

/// The text of the first element `name` (with or without a namespace prefix) in `xml`.
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let mut rest = xml;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        let tag_end = rest.find('>')?;
        let tag = &rest[..tag_end];
        let tag_name = tag.split_whitespace().next().unwrap_or_default();
        let local = tag_name.rsplit(':').next().unwrap_or_default();
        if local == name && !tag.ends_with('/') {
            let body = &rest[tag_end + 1..];
            let end = body.find('<')?;
            let text = body[..end].trim();
            return Some(text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&"));
        }
        rest = &rest[tag_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(content_type: &str, body: &str) -> SessionLogin {
        SessionLogin {
            url: "/login".into(),
            method: "POST".into(),
            content_type: content_type.into(),
            body: body.into(),
            token: TokenAt::JsonPointer("/t".into()),
            lifetime_s: 60.0,
            apply: Box::new(CredentialUse::Bearer),
        }
    }

    #[test]
    fn login_bodies_escape_each_value_for_their_content_type() {
        let pw = SecretString::from("a\"b&c=d<e>");
        let v = LoginValues { username: Some("u s"), password: Some(&pw), api_token: None };
        let j = login("application/json", r#"{"u":"{username}","p":"{password}","t":"{api_token}"}"#).body(&v);
        let parsed: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(parsed["p"], "a\"b&c=d<e>");
        assert_eq!(parsed["t"], "");
        let f = login("application/x-www-form-urlencoded", "user={username}&pw={password}").body(&v);
        assert_eq!(f, "user=u+s&pw=a%22b%26c%3Dd%3Ce%3E");
        let x = login("text/xml", "<p>{password}</p>").body(&v);
        assert_eq!(x, "<p>a&quot;b&amp;c=d&lt;e&gt;</p>");
    }

    #[test]
    fn xml_tokens_are_found_with_or_without_namespace() {
        let asmx = r#"<?xml version="1.0"?><string xmlns="http://www.theyukicompany.com/">abc-123</string>"#;
        assert_eq!(xml_text(asmx, "string").as_deref(), Some("abc-123"));
        let soap = "<s:Envelope><s:Body><r:AuthenticateResult>x&amp;y</r:AuthenticateResult></s:Body></s:Envelope>";
        assert_eq!(xml_text(soap, "AuthenticateResult").as_deref(), Some("x&y"));
        assert_eq!(xml_text("<a/><b>1</b>", "c"), None);
    }

    #[test]
    fn profiles_parse_and_bad_ones_are_refused() {
        let ok: CredentialUse = toml::from_str::<toml::Table>(
            r#"u = { kind = "session_login", url = "/l", body = "{}", token = { header = "X-S" }, lifetime_s = 60, apply = { kind = "header", name = "X-Session" } }"#,
        )
        .unwrap()["u"]
            .clone()
            .try_into()
            .unwrap();
        ok.validate().unwrap();
        let bad = CredentialUse::SessionLogin(Box::new(SessionLogin {
            apply: Box::new(CredentialUse::Basic),
            ..login("application/json", "{}")
        }));
        assert!(bad.validate().is_err());
        assert!(CredentialUse::Query { name: String::new() }.validate().is_err());
        assert!(CredentialUse::Header { name: "bad name".into(), prefix: String::new() }.validate().is_err());
    }
}

#[cfg(test)]
mod built_in {
    use super::*;

    #[test]
    fn the_seed_platforms_profiles_say_how_their_secret_is_used() {
        let config = crate::config::Config::from_toml("").unwrap();
        let use_of = |p: &str| config.provider(p).and_then(|p| p.credential_use.clone());
        let Some(CredentialUse::SessionLogin(roller)) = use_of("roller") else { panic!("roller logs in") };
        assert!(roller.body.contains("{username}") && roller.body.contains("{password}"));
        assert_eq!(*roller.apply, CredentialUse::Bearer);
        let Some(CredentialUse::SessionLogin(yuki)) = use_of("yuki-nl") else { panic!("yuki logs in") };
        assert_eq!(yuki.token, TokenAt::XmlElement("string".into()));
        assert_eq!(
            config.provider("yuki-be").unwrap().endpoint(&yuki.url).unwrap(),
            "https://api.yukiworks.be/ws/Accounting.asmx/Authenticate"
        );
        assert!(config.provider("generic-api-key").is_none(), "abstract: extended, never used as is");
    }
}
