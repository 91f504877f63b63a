//! The HTML of the start host's and the B2C host's sign-in pages (see the parent module for the evidence).
//!
//! B2C pages carry `SETTINGS` and `SA_FIELDS` and a script that does what B2C's own script does: build the
//! form from `SA_FIELDS`, post each step to `<tenant>/SelfAsserted` with XHR (`X-CSRF-TOKEN`,
//! `X-Requested-With`), show the `message` of a `{"status":"400"}` answer, and on `{"status":"200"}` go to
//! `<tenant>/api/<api>/confirmed`. Nothing on these pages loads anything from another host: the captcha frames
//! point at the B2C host itself, so a real browser never leaves the machine.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use super::super::html_escape;

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, Html(body)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const STYLE: &str = "body{font-family:sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem}\
label{display:block;margin-top:1rem}input[type=email],input[type=password],input[type=text]{width:100%;padding:.4rem}\
button{margin-top:1rem;padding:.5rem 1.5rem}.error{color:#b00020;margin:1rem 0}";

fn shell(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} | Exact Online</title><style>{STYLE}</style></head>\n<body>\n{}\n</body></html>\n",
        html_escape(title),
        body
    )
}

/// The start host's page: the e-mail address and the anti-forgery token.
pub(super) fn start_page(action: &str, token: &str, error: Option<&str>, username: &str) -> Response {
    let err =
        error.map(|e| format!("<div class=\"error\" role=\"alert\">{}</div>\n", html_escape(e))).unwrap_or_default();
    html(
        StatusCode::OK,
        shell(
            "Log in",
            &format!(
                "<h1>Exact Online</h1>\n{err}<form method=\"post\" action=\"{action}\" id=\"LoginForm\" novalidate>\n\
                 <input name=\"__RequestVerificationToken\" type=\"hidden\" value=\"{token}\">\n\
                 <label for=\"LoginForm$UserName\">E-mail address</label>\n\
                 <input id=\"LoginForm$UserName\" name=\"LoginForm$UserName\" type=\"email\" autocomplete=\"username\" value=\"{user}\">\n\
                 <button type=\"submit\" id=\"submit_btn\">Next</button>\n</form>",
                action = html_escape(action),
                token = html_escape(token),
                user = html_escape(username),
            ),
        ),
    )
}

/// What a signed-in person sees at `/` without a `ReturnUrl`.
pub(super) fn portal(full_name: &str) -> Response {
    html(
        StatusCode::OK,
        shell("Home", &format!("<h1>Exact Online</h1><p>Signed in as {}.</p>", html_escape(full_name))),
    )
}

pub(super) fn error(status: StatusCode, title: &str, message: &str) -> Response {
    html(
        status,
        shell(
            title,
            &format!(
                "<h1>{}</h1>\n<div class=\"error\" role=\"alert\">{}</div>",
                html_escape(title),
                html_escape(message)
            ),
        ),
    )
}

/// Which shape of B2C page.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    Normal,
    Recaptcha,
    Hcaptcha,
    /// `$Config` instead of `SETTINGS`/`SA_FIELDS`, other element ids.
    Changed,
}

/// JSON inside `<script>`: `</` written as `<\/` so no string can end the element.
fn script_json(v: &Value) -> String {
    v.to_string().replace("</", "<\\/")
}

/// A B2C self-asserted page.
pub(super) fn b2c_page(settings: &Value, fields: &Value, variant: Variant) -> Response {
    let data = match variant {
        Variant::Changed => {
            let mut config = settings.clone();
            config["AttributeFields"] = fields["AttributeFields"].clone();
            format!("var $Config = {};", script_json(&config))
        }
        _ => format!("var SETTINGS = {};\nvar SA_FIELDS = {};", script_json(settings), script_json(fields)),
    };
    let captcha = match variant {
        Variant::Recaptcha => {
            "<div class=\"g-recaptcha\" data-sitekey=\"6Lc-exact-sim\"><iframe title=\"reCAPTCHA\" src=\"/_captcha/recaptcha/api2/anchor?k=6Lc-exact-sim\" width=\"304\" height=\"78\"></iframe></div>\n"
        }
        Variant::Hcaptcha => {
            "<div class=\"h-captcha\" data-sitekey=\"exact-sim\"><iframe title=\"hCaptcha\" src=\"/_captcha/hcaptcha/checkbox.html?sitekey=exact-sim\" width=\"304\" height=\"78\"></iframe></div>\n"
        }
        _ => "",
    };
    let container = if variant == Variant::Changed { "root" } else { "api" };
    let title = if settings["api"] == "CombinedSigninAndSignup" { "Sign in" } else { "Verify" };
    html(
        StatusCode::OK,
        shell(
            title,
            &format!(
                "<h1>Exact</h1>\n<div id=\"{container}\" role=\"main\"></div>\n{captcha}<script>\n{data}\n</script>\n<script>\n{SCRIPT}\n</script>\n<noscript><p>JavaScript is required to sign in.</p></noscript>"
            ),
        ),
    )
}

/// The form B2C builds from `SA_FIELDS`, and its XHR posts. Plain ES5 so any browser runs it.
const SCRIPT: &str = r#"(function () {
  var S = window.SETTINGS || window.$Config;
  if (!S) { return; }
  var changed = !window.SETTINGS;
  var F = window.SA_FIELDS ? window.SA_FIELDS.AttributeFields : (S.AttributeFields || []);
  var idOf = function (id) { return changed ? 'i_' + id : id; };
  var root = document.getElementById(changed ? 'root' : 'api');
  var form = document.createElement('form');
  form.id = changed ? 'i0281' : 'attributeVerification';
  form.setAttribute('novalidate', '');
  var err = document.createElement('div');
  err.className = 'error pageLevel';
  err.setAttribute('role', 'alert');
  err.style.display = 'none';
  form.appendChild(err);
  var visible = 0;
  function label(forId, text) {
    var l = document.createElement('label');
    l.setAttribute('for', forId);
    l.textContent = text;
    form.appendChild(l);
  }
  function input(id, type, text, auto) {
    var i = document.createElement('input');
    i.id = idOf(id); i.name = id; i.type = type;
    if (auto) { i.setAttribute('autocomplete', auto); }
    if (text) { label(i.id, text); }
    form.appendChild(i);
    if (type !== 'hidden') { visible++; }
    return i;
  }
  function checkbox(id, text, checked) {
    var i = input(id, 'checkbox', '', null);
    i.checked = checked;
    var l = document.createElement('label');
    l.setAttribute('for', i.id); l.textContent = text;
    form.appendChild(l);
  }
  F.forEach(function (f) {
    switch (f.ID) {
      case 'signInName': case 'email':
        input(f.ID, 'email', 'E-mail address', 'username'); break;
      case 'password':
        input(f.ID, 'password', 'Password', 'current-password'); break;
      case 'userAgent':
        input(f.ID, 'hidden', '', null).value = navigator.userAgent; break;
      case 'totpVerificationCode':
        var t = input(f.ID, 'text', 'Enter the 6-digit code from your authenticator app', 'one-time-code');
        t.setAttribute('inputmode', 'numeric'); t.maxLength = 6; break;
      case 'emailVerificationCode':
        var e = input(f.ID, 'text', 'We sent a verification code to your e-mail address. Enter it here', 'one-time-code');
        e.setAttribute('inputmode', 'numeric'); break;
      case 'reset_totp':
        checkbox(f.ID, 'I lost my authenticator app: set up a new one', false); break;
      case 'totp_skip_days':
        checkbox(f.ID, 'Do not ask again on this device for 30 days', false); break;
      case 'rememberMePeriodChangeInfo':
        var p = document.createElement('p');
        p.id = idOf(f.ID); p.setAttribute('data-informational', 'true');
        p.textContent = 'How long you stay signed in has changed.';
        form.appendChild(p); break;
      case 'captchaControlChallengeCode':
        input(f.ID, 'hidden', '', null); break;
      default:
        input(f.ID, 'text', f.ID, null);
    }
  });
  var next = document.createElement('button');
  next.id = changed ? 'idSIButton9' : 'next';
  next.type = 'submit';
  next.textContent = S.api === 'CombinedSigninAndSignup' ? 'Sign in' : 'Continue';
  form.appendChild(next);
  root.appendChild(form);
  var q = function (v) { return encodeURIComponent(v); };
  function submit() {
    var body = ['request_type=RESPONSE'];
    F.forEach(function (f) {
      var el = document.getElementById(idOf(f.ID));
      if (!el || el.getAttribute('data-informational')) { return; }
      var v = el.type === 'checkbox' ? (el.checked ? 'true' : 'false') : el.value;
      body.push(q(f.ID) + '=' + q(v));
    });
    var x = new XMLHttpRequest();
    x.open('POST', S.hosts.tenant + '/SelfAsserted?tx=' + q(S.transId) + '&p=' + q(S.hosts.policy));
    x.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded; charset=UTF-8');
    x.setRequestHeader('X-CSRF-TOKEN', S.csrf);
    x.setRequestHeader('X-Requested-With', 'XMLHttpRequest');
    x.onload = function () {
      var r;
      try { r = JSON.parse(x.responseText); } catch (e) { r = { status: String(x.status), message: 'Something went wrong (' + x.status + ').' }; }
      if (r.status === '200') {
        window.location.href = S.hosts.tenant + '/api/' + S.api + '/confirmed?' +
          (S.api === 'CombinedSigninAndSignup' ? 'rememberMe=false&' : '') +
          'csrf_token=' + q(S.csrf) + '&tx=' + q(S.transId) + '&p=' + q(S.hosts.policy);
      } else {
        err.textContent = r.message || ('Error ' + r.status);
        err.style.display = 'block';
        next.disabled = false;
      }
    };
    x.onerror = function () { err.textContent = 'The sign-in service cannot be reached.'; err.style.display = 'block'; next.disabled = false; };
    next.disabled = true;
    x.send(body.join('&'));
  }
  form.addEventListener('submit', function (ev) { ev.preventDefault(); submit(); });
  // A step with nothing to type (the user-agent step) answers itself.
  if (visible === 0 && F.length > 0) { submit(); }
})();"#;

/// Cloudflare's interstitial, served instead of the sign-in page (status 403, `cf-mitigated: challenge`).
pub(super) fn cloudflare_challenge() -> Response {
    let body = "<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title><meta charset=\"UTF-8\"></head>\
<body><div class=\"main-wrapper\" role=\"main\"><h1>login.exact.com</h1>\
<h2 id=\"challenge-running\">Checking your browser before accessing login.exact.com.</h2>\
<p>Verify you are human by completing the action below.</p><div id=\"challenge-stage\">\
<iframe title=\"Widget containing a Cloudflare security challenge\" src=\"/challenges.cloudflare.com/cdn-cgi/challenge-platform/h/b/turnstile/if/ov2/av0/rcv/exact-sim\" width=\"300\" height=\"65\"></iframe></div></div>\
<script>window._cf_chl_opt={cvId:'3',cType:'managed',cRay:'exact-sim'};</script></body></html>";
    let mut r = html(StatusCode::FORBIDDEN, body.to_string());
    r.headers_mut().insert("cf-mitigated", HeaderValue::from_static("challenge"));
    r
}

/// A captcha provider's frame, served by the B2C host itself.
pub(super) fn captcha_frame() -> Response {
    html(StatusCode::OK, "<!DOCTYPE html><html><body><p>I'm not a robot</p></body></html>".to_string())
}

/// The form_post page that ends the B2C flow: posts `fields` to `action` by itself.
pub(super) fn form_post(action: &str, fields: &[(&str, &str)]) -> Response {
    let inputs: String = fields
        .iter()
        .map(|(n, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\" />", html_escape(n), html_escape(v)))
        .collect();
    html(
        StatusCode::OK,
        format!(
            "<html><head><title>Working...</title></head><body><form method=\"POST\" name=\"hiddenform\" action=\"{}\">{inputs}<noscript><p>Script is disabled. Click Submit to continue.</p><input type=\"submit\" value=\"Submit\" /></noscript></form><script language=\"javascript\">document.forms[0].submit();</script></body></html>",
            html_escape(action)
        ),
    )
}
