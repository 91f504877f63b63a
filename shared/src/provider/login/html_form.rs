//! The generic login driver: login, two-step (TOTP) and consent pages that are HTML forms. Which fields mean
//! what is read the way a password manager reads a page (by `type` and `autocomplete`), then by the profile's
//! `login_form` names (with defaults that fit common login pages); on a consent page it presses "allow".

use chainkeeper_forms::{Field, Form};
use secrecy::ExposeSecret;

use super::{Browser, Credentials, LoginError, Next, Step, title_of, visit};

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

/// What a form control asks for, read the way a password manager reads a page: by `type` and `autocomplete`
/// first (`password`, `current-password`, `username`, `email`, `one-time-code`), then by the profile's names.
/// Hidden controls keep their own values: credentials never go into a field a person cannot see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asks {
    Username,
    Password,
    Totp,
}

fn asks(field: &Field, spec: &FormSpec) -> Option<Asks> {
    if field.tag != "input" || field.is_hidden() || field.name.is_empty() || field.is_submit() {
        return None;
    }
    let named = |names: &[String]| names.iter().any(|m| m.eq_ignore_ascii_case(&field.name));
    if field.has_autocomplete("one-time-code") || named(&spec.totp_fields) {
        Some(Asks::Totp)
    } else if field.kind == "password"
        || field.has_autocomplete("current-password")
        || field.has_autocomplete("new-password")
        || named(&spec.password_fields)
    {
        Some(Asks::Password)
    } else if field.has_autocomplete("username")
        || field.has_autocomplete("email")
        || field.kind == "email"
        || named(&spec.username_fields)
    {
        Some(Asks::Username)
    } else {
        None
    }
}

fn form_asks(form: &Form, spec: &FormSpec, what: Asks) -> bool {
    form.fields.iter().any(|f| asks(f, spec) == Some(what))
}

/// How often a sign-in showed the password and the TOTP form (a form shown again means a refusal).
#[derive(Default)]
pub(super) struct Sent {
    password: u32,
    totp: u32,
}

/// Fills the page's login, two-step or consent form (pressing "allow", never "deny") and returns where it
/// posts and what: the URL, and the entry list.
pub(super) fn fill_page(
    page: &url::Url,
    html: &str,
    spec: &FormSpec,
    creds: &Credentials<'_>,
    sent: &mut Sent,
) -> Result<(url::Url, Vec<(String, String)>), LoginError> {
    let unsupported = |m: String| LoginError::UnsupportedStep(m);
    let forms = chainkeeper_forms::forms(html);
    let Some(form) = forms
        .iter()
        .find(|f| form_asks(f, spec, Asks::Password) || form_asks(f, spec, Asks::Totp))
        .or_else(|| forms.iter().find(|f| f.method == "post"))
    else {
        return Err(unsupported(format!("a page without a form ({})", title_of(html))));
    };
    let word = |s: &str, words: &[String]| {
        words.iter().any(|w| s.to_ascii_lowercase().split(|c: char| !c.is_alphanumeric()).any(|p| p == w))
    };
    let says = |f: &Field, words: &[String]| word(&f.value, words) || word(&f.text, words) || word(&f.name, words);
    let buttons = || form.fields.iter().filter(|f| f.is_submit() && !f.disabled);
    let button =
        buttons().find(|f| says(f, &spec.allow_words)).or_else(|| buttons().find(|f| !says(f, &spec.deny_words)));
    let mut fields = form.entries(button);
    for field in form.fields.iter().filter(|f| !f.disabled) {
        let value = match asks(field, spec) {
            None => continue,
            Some(Asks::Password) => creds.password.expose_secret().to_string(),
            Some(Asks::Username) => creds.username.expose_secret().to_string(),
            Some(Asks::Totp) => match creds.totp {
                Some(code) => code(),
                None => {
                    return Err(LoginError::TotpRejected(
                        "the account asks for a TOTP code and no TOTP secret is stored".into(),
                    ));
                }
            },
        };
        chainkeeper_forms::set_entry(&mut fields, &field.name, &value);
    }
    if form_asks(form, spec, Asks::Password) {
        sent.password += 1;
        if sent.password > 1 {
            return Err(LoginError::PasswordRejected("the login page was shown again".into()));
        }
    } else if form_asks(form, spec, Asks::Totp) {
        sent.totp += 1;
        if sent.totp > 2 {
            return Err(LoginError::TotpRejected("the two-step page was shown again".into()));
        }
    }
    let target = match &form.action {
        Some(a) if !a.is_empty() => page.join(a).map_err(|e| unsupported(e.to_string()))?,
        _ => page.clone(),
    };
    Ok((target, fields))
}

/// Signs in through HTML forms and returns the final redirect (the redirect URI with `code` and `state`),
/// without requesting it.
pub(super) async fn sign_in(
    browser: &Browser<'_>,
    start: url::Url,
    redirect_uri: &str,
    creds: &Credentials<'_>,
    spec: &FormSpec,
) -> Result<String, LoginError> {
    let mut next: Next = (start, None);
    let mut sent = Sent::default();
    for _ in 0..15 {
        let (url, body) = match visit(browser, &mut next, redirect_uri).await? {
            Step::Done(answer) => return Ok(answer),
            Step::Followed => continue,
            Step::Page(url, body) => (url, body),
        };
        let (target, fields) = fill_page(&url, &body, spec, creds, &mut sent)?;
        next = (target, Some(fields));
    }
    Err(LoginError::UnsupportedStep("too many pages before the provider redirected back".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FormSpec {
        FormSpec::from_profile(None)
    }

    fn roles(html: &str) -> Vec<(String, Option<Asks>)> {
        let form = chainkeeper_forms::first_form(html).expect("a form");
        form.fields.iter().map(|f| (f.name.clone(), asks(f, &spec()))).collect()
    }

    #[test]
    fn fields_are_recognised_by_type_and_autocomplete_as_well_as_by_name() {
        let html = r#"<form method=post><input type=hidden name=password value=kept>
            <input name="f1" autocomplete="section-a username"><input type=password name="f2">
            <input name="f3" autocomplete="one-time-code"><input type=email name=f4><input name=Code>
            <input name=remember type=checkbox checked><button type=submit name=go>Sign in</button></form>"#;
        assert_eq!(
            roles(html),
            [
                ("password".into(), None),
                ("f1".into(), Some(Asks::Username)),
                ("f2".into(), Some(Asks::Password)),
                ("f3".into(), Some(Asks::Totp)),
                ("f4".into(), Some(Asks::Username)),
                ("Code".into(), Some(Asks::Totp)),
                ("remember".into(), None),
                ("go".into(), None),
            ]
        );
    }

    #[test]
    fn the_oidc_provider_login_form_is_read_by_its_names() {
        let html = r#"<html><form method="post" action="/interaction/ab&amp;c" id=x>
            <input type="hidden" name="prompt" value="login"/>
            <input required type=text name=login placeholder='Enter'>
            <input type="password" name="password">
            <button type="submit" class="login">Sign-in</button></form>"#;
        let form = chainkeeper_forms::first_form(html).unwrap();
        assert_eq!(form.action.as_deref(), Some("/interaction/ab&c"));
        assert!(form_asks(&form, &spec(), Asks::Password));
        assert_eq!(
            roles(html).into_iter().filter_map(|(n, r)| r.map(|r| (n, r))).collect::<Vec<_>>(),
            [("login".to_string(), Asks::Username), ("password".to_string(), Asks::Password)]
        );
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// HTML-ish text from the pieces login pages (and broken ones) are made of.
    fn html_soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<form".to_string()),
            Just("<FORM method=post action='/x'>".to_string()),
            Just("</form>".to_string()),
            Just("<input".to_string()),
            Just("<input type=password name=Password>".to_string()),
            Just("<button".to_string()),
            Just("</button>".to_string()),
            Just(">".to_string()),
            Just("<".to_string()),
            Just(" name=".to_string()),
            Just(" value=\"".to_string()),
            Just("'".to_string()),
            Just("=".to_string()),
            Just("&amp;".to_string()),
            Just("type=submit".to_string()),
            "[a-zA-Z0-9 ]{1,8}",
            "\\PC{1,4}",
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
    }

    fn esc(s: &str) -> String {
        s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// No page, however broken, makes the parser panic, and it finds no more forms than the page opens.
        #[test]
        fn fuzz_login_page_parser_never_panics(html in html_soup(), any_text in "\\PC{0,300}") {
            let spec = FormSpec::from_profile(None);
            for page in [&html, &any_text] {
                let forms = chainkeeper_forms::forms(page);
                prop_assert!(forms.len() <= page.to_ascii_lowercase().matches("<form").count());
                for f in &forms {
                    prop_assert!(f.method.chars().all(|c| !c.is_ascii_uppercase()));
                    // What the driver asks of each control never panics either, and a hidden one asks nothing.
                    for field in &f.fields {
                        let asked = asks(field, &spec);
                        prop_assert!(!(field.is_hidden() && asked.is_some()));
                    }
                }
            }
        }

        /// A form written out with escaped attributes reads back as exactly its fields, buttons and action.
        #[test]
        fn fuzz_login_form_round_trip(
            fields in proptest::collection::vec(("[A-Za-z][A-Za-z0-9_]{0,10}", "(\\PC|&lt;|&amp;|&quot;){0,16}", proptest::sample::select(&["text", "hidden", "password", "email"][..])), 0..6),
            button in ("[A-Za-z]{1,8}", "[a-z]{0,6}", "[A-Za-z ]{1,10}"),
            action in "/[a-z0-9/_-]{0,20}",
            junk in "[a-zA-Z ]{0,20}",
        ) {
            let mut html = format!("<p>{junk}</p><form method=\"POST\" action=\"{}\">", esc(&action));
            for (name, value, kind) in &fields {
                html.push_str(&format!("<input type=\"{kind}\" name=\"{name}\" value=\"{}\"/>", esc(value)));
            }
            html.push_str(&format!("<button type=\"submit\" name=\"{}\" value=\"{}\">{}</button></form>", button.0, button.1, button.2));
            let forms = chainkeeper_forms::forms(&html);
            prop_assert_eq!(forms.len(), 1);
            let f = &forms[0];
            prop_assert_eq!(f.method.as_str(), "post");
            prop_assert_eq!(f.action.as_deref(), Some(action.as_str()));
            let read: Vec<(String, String, String)> =
                f.fields.iter().filter(|c| c.tag == "input").map(|c| (c.kind.clone(), c.name.clone(), c.value.clone())).collect();
            let want: Vec<(String, String, String)> =
                fields.iter().map(|(n, v, k)| (k.to_string(), n.clone(), v.clone())).collect();
            prop_assert_eq!(read, want);
            let buttons: Vec<(String, String, String)> =
                f.fields.iter().filter(|c| c.is_submit()).map(|c| (c.name.clone(), c.value.clone(), c.text.clone())).collect();
            let text = button.2.split_whitespace().collect::<Vec<_>>().join(" ");
            prop_assert_eq!(buttons, vec![(button.0.clone(), button.1.clone(), text)]);
        }
    }
}
