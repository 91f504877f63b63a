//! A person's browser, reduced to what Exact Online's login needs: fetch the authorize URL, fill in the
//! login form, the two-step verification form and the consent form, and stop at the redirect to the app.
//!
//! Forms are found by plain string parsing (`<form … action=…>`, `<input …>`, `<button …>`), so the
//! helper works against the simulator and documents what a real login page must look like.

use std::collections::HashMap;

use anyhow::{Context, bail};
use reqwest::header::LOCATION;
use url::Url;

/// A parsed HTML form.
#[derive(Debug, Clone, Default)]
pub struct Form {
    pub action: Option<String>,
    pub method: String,
    /// `<input>` elements: (name, type, value), in document order.
    pub inputs: Vec<(String, String, String)>,
    /// `<button>` elements: (name, value).
    pub buttons: Vec<(String, String)>,
}

impl Form {
    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.iter().any(|(n, _, _)| n == name)
    }
    pub fn has_button(&self, name: &str) -> bool {
        self.buttons.iter().any(|(n, _)| n == name)
    }
}

/// Decodes the few HTML entities that matter in attribute values.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..end];
        let decoded = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ if ent.starts_with("#x") || ent.starts_with("#X") => {
                u32::from_str_radix(&ent[2..], 16).ok().and_then(char::from_u32)
            }
            _ if ent.starts_with('#') => ent[1..].parse::<u32>().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Attributes of one start tag (`tag` is the text between `<name` and `>`). Names are lower-cased.
fn attributes(tag: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let b = tag.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        if start == i {
            i += 1;
            continue;
        }
        let name = tag[start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                i += 1;
                let vs = i;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = decode_entities(&tag[vs..i]);
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = decode_entities(&tag[vs..i]);
            }
        }
        out.entry(name).or_insert(value);
    }
    out
}

/// Start tags named `name` in `html`, each as the text after the name up to `>`.
fn tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let lower = html.to_ascii_lowercase();
    let pat = format!("<{name}");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&pat) {
        let s = from + i + pat.len();
        // `<input` must not match `<inputx`.
        if lower[s..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
            from = s;
            continue;
        }
        let end = lower[s..].find('>').map(|e| s + e).unwrap_or(lower.len());
        out.push(&html[s..end]);
        from = end;
    }
    out
}

/// The first `<form>` in the page.
pub fn parse_form(html: &str) -> Option<Form> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<form")?;
    let end = lower[start..].find("</form").map(|e| start + e).unwrap_or(html.len());
    let inner = &html[start..end];
    let form_tag = tags(inner, "form").into_iter().next()?;
    let fa = attributes(form_tag);
    let mut form = Form {
        action: fa.get("action").cloned(),
        method: fa.get("method").cloned().unwrap_or_else(|| "get".into()).to_ascii_lowercase(),
        ..Form::default()
    };
    for t in tags(inner, "input") {
        let a = attributes(t);
        if let Some(name) = a.get("name") {
            let ty = a.get("type").cloned().unwrap_or_else(|| "text".into()).to_ascii_lowercase();
            form.inputs.push((name.clone(), ty, a.get("value").cloned().unwrap_or_default()));
        }
    }
    for t in tags(inner, "button") {
        let a = attributes(t);
        if let Some(name) = a.get("name") {
            form.buttons.push((name.clone(), a.get("value").cloned().unwrap_or_default()));
        }
    }
    Some(form)
}

/// The text of the page's error message (`class="error"` element), if any.
pub fn error_text(html: &str) -> Option<String> {
    let i = html.find("class=\"error\"")?;
    let s = i + html[i..].find('>')? + 1;
    let e = s + html[s..].find('<')?;
    Some(decode_entities(html[s..e].trim()))
}

/// Drives the login with a fresh cookie-keeping client without automatic redirects.
/// `authorize_url` is the complete authorize URL (client_id, redirect_uri, state, …).
/// Returns the final `Location` (the app's redirect URI with `code` and `state`), not fetched.
pub async fn login(authorize_url: &str, username: &str, password: &str, totp: Option<&str>) -> anyhow::Result<String> {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build()?;
    login_with(&client, authorize_url, username, password, totp).await
}

/// As [`login`], with a caller's client (which must not follow redirects).
pub async fn login_with(
    client: &reqwest::Client,
    authorize_url: &str,
    username: &str,
    password: &str,
    totp: Option<&str>,
) -> anyhow::Result<String> {
    let mut url = Url::parse(authorize_url).context("authorize URL")?;
    let mut resp = client.get(url.clone()).send().await.context("GET authorize URL")?;
    let (mut sent_password, mut sent_code) = (false, false);
    for _ in 0..12 {
        let status = resp.status();
        if status.is_redirection() {
            let loc = resp
                .headers()
                .get(LOCATION)
                .context("redirect without Location")?
                .to_str()
                .context("Location is not ASCII")?;
            return Ok(url.join(loc).context("Location")?.to_string());
        }
        let body = resp.text().await?;
        if !status.is_success() {
            bail!(
                "login page answered {status}: {}",
                error_text(&body).unwrap_or_else(|| body.chars().take(300).collect())
            );
        }
        let form = parse_form(&body).with_context(|| {
            format!(
                "no form on the login page: {}",
                error_text(&body).unwrap_or_else(|| body.chars().take(300).collect())
            )
        })?;
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut clicked_submit = false;
        for (name, ty, value) in &form.inputs {
            match ty.as_str() {
                "submit" | "image" => {
                    if !clicked_submit {
                        fields.push((name.clone(), value.clone()));
                        clicked_submit = true;
                    }
                }
                "button" | "reset" | "file" => {}
                "checkbox" | "radio" => {} // unchecked unless `checked`; the pages here have none
                _ => fields.push((name.clone(), value.clone())),
            }
        }
        let set = |fields: &mut Vec<(String, String)>, name: &str, value: &str| match fields
            .iter_mut()
            .find(|(n, _)| n == name)
        {
            Some(f) => f.1 = value.to_string(),
            None => fields.push((name.to_string(), value.to_string())),
        };
        if form.has_input("Password") {
            if sent_password {
                bail!("login rejected: {}", error_text(&body).unwrap_or_else(|| "login page shown again".into()));
            }
            set(&mut fields, "UserName", username);
            set(&mut fields, "Password", password);
            sent_password = true;
        } else if form.has_input("Code") {
            let Some(code) = totp else { bail!("the login asks for a two-step verification code and none was given") };
            if sent_code {
                bail!("verification code rejected: {}", error_text(&body).unwrap_or_default());
            }
            set(&mut fields, "Code", code);
            sent_code = true;
        } else if form.has_button("Allow") {
            set(&mut fields, "Allow", "yes");
        } else {
            bail!("unrecognised page: {}", body.chars().take(300).collect::<String>());
        }
        let action = url.join(form.action.as_deref().unwrap_or("")).context("form action")?;
        resp = if form.method == "post" {
            client.post(action.clone()).form(&fields).send().await?
        } else {
            let mut a = action.clone();
            a.query_pairs_mut().clear().extend_pairs(fields.iter());
            client.get(a).send().await?
        };
        url = action;
    }
    bail!("too many pages without a redirect")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let html = r#"<html><FORM method="post" action="/a?x=1&amp;y=2"><input type=hidden name='Sid' value="a&quot;b">
            <input name="UserName"><input type="submit" name="Go" value="Log in"><button name="Allow" value="yes">ok</button></form>"#;
        let f = parse_form(html).unwrap();
        assert_eq!(f.action.as_deref(), Some("/a?x=1&y=2"));
        assert_eq!(f.method, "post");
        assert_eq!(f.inputs[0], ("Sid".into(), "hidden".into(), "a\"b".into()));
        assert_eq!(f.inputs[1], ("UserName".into(), "text".into(), "".into()));
        assert!(f.has_button("Allow"));
        assert_eq!(decode_entities("&#39;x&#x41;&bogus"), "'xA&bogus");
    }
}
