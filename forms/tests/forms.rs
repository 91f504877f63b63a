//! The parser on pages shaped like the ones it reads: oidc-provider's login form, the simulator's pages,
//! Exact Online's start page, Azure AD B2C's script-built pages and form_post pages.

use chainkeeper_forms::*;
use serde_json::json;

#[test]
fn oidc_provider_login_form() {
    let html = r#"<html><body><form autocomplete="off" action="http://127.0.0.1:1/interaction/abc" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
  <input required type="password" name="password" placeholder="and password" >
  <button type="submit" class="login login-submit">Sign-in</button>
</form></body></html>"#;
    let f = first_form(html).unwrap();
    assert_eq!(f.action.as_deref(), Some("http://127.0.0.1:1/interaction/abc"));
    assert_eq!(f.method, "post");
    let names: Vec<_> = f.fields.iter().map(|f| (f.name.as_str(), f.kind.as_str())).collect();
    assert_eq!(names, vec![("prompt", "hidden"), ("login", "text"), ("password", "password"), ("", "submit")]);
    assert_eq!(f.default_submitter().unwrap().text, "Sign-in");
    assert_eq!(
        f.entries(f.default_submitter()),
        vec![("prompt".into(), "login".into()), ("login".into(), String::new()), ("password".into(), String::new())]
    );
}

#[test]
fn exact_start_page_with_anti_forgery_token() {
    let html = r#"<form method="POST" action="/?ReturnUrl=%2fapi%2foauth2%2fauth%3fclient_id%3dx&amp;y=1" id="LoginForm">
      <input name="__RequestVerificationToken" type="hidden" value="CfDJ8&#x2B;abc" />
      <label for="LoginForm$UserName">E-mail</label>
      <input id="LoginForm$UserName" name="LoginForm$UserName" type="email" autocomplete="section-login username">
      <button type="submit" id="submit_btn">Next</button></form>"#;
    let f = first_form(html).unwrap();
    assert_eq!(f.action.as_deref(), Some("/?ReturnUrl=%2fapi%2foauth2%2fauth%3fclient_id%3dx&y=1"));
    assert_eq!(f.id.as_deref(), Some("LoginForm"));
    assert_eq!(f.hidden_fields().next().unwrap().value, "CfDJ8+abc");
    assert_eq!(f.field_with_autocomplete("username").unwrap().name, "LoginForm$UserName");
    assert_eq!(f.field_with_autocomplete("USERNAME").unwrap().id(), Some("LoginForm$UserName"));
    assert!(f.field_with_autocomplete("section-login").is_some());
    assert!(f.field_with_autocomplete("current-password").is_none());
    assert_eq!(f.default_submitter().unwrap().id(), Some("submit_btn"));
}

#[test]
fn entry_list_follows_the_browser() {
    let html = r#"<form method=post>
      <input name=a value=1><input name=b value=2 disabled><input value=unnamed>
      <input type=checkbox name=c><input type=checkbox name=d checked><input type=checkbox name=e value=yes checked>
      <input type=radio name=r value=x><input type=radio name=r value=y checked>
      <input type=file name=f><input type=reset name=g><input type=button name=h value=i>
      <select name=s><option>first</option><option value=v2 selected>second</option></select>
      <select name=t><option value=t1>one<option value=t2>two</select>
      <textarea name=ta>line &amp; more</textarea>
      <input type=submit name=go value=Go><button name=alt value=other>Other</button>
    </form>"#;
    let f = first_form(html).unwrap();
    let alt = f.field("alt").unwrap();
    assert_eq!(
        f.entries(Some(alt)),
        vec![
            ("a".to_string(), "1".to_string()),
            ("d".into(), "on".into()),
            ("e".into(), "yes".into()),
            ("r".into(), "y".into()),
            ("s".into(), "v2".into()),
            ("t".into(), "t1".into()),
            ("ta".into(), "line & more".into()),
            ("alt".into(), "other".into()),
        ]
    );
    assert_eq!(f.default_submitter().unwrap().name, "go");
    let mut e = f.entries(None);
    set_entry(&mut e, "a", "changed");
    set_entry(&mut e, "new", "x");
    assert_eq!(e[0], ("a".into(), "changed".into()));
    assert_eq!(e.last().unwrap(), &("new".into(), "x".into()));
}

#[test]
fn several_forms_nested_forms_and_loose_controls() {
    let html = r#"<input name=outside><form id=one action=a><form id=ignored><input name=x></form>
        <form id=two method=GET><input name=y></form><form id=three method=weird></form>"#;
    let fs = forms(html);
    assert_eq!(fs.len(), 3);
    assert_eq!(fs[0].id.as_deref(), Some("one"));
    assert!(fs[0].has_field("x"));
    assert_eq!(fs[1].method, "get");
    assert_eq!(fs[2].method, "get");
    let all: Vec<_> = controls(html).into_iter().map(|f| f.name).collect();
    assert_eq!(all, vec!["x", "y", "outside"]);
}

#[test]
fn markup_inside_scripts_and_comments_is_not_a_form() {
    let html = r#"<!-- <form action="/evil"> --><script>var s = '<form action="/evil"><input name=p>';</script>
        <textarea name=t><form action="/evil"></textarea>"#;
    assert!(forms(html).is_empty());
    let c = controls(html);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].value, "<form action=\"/evil\">");
}

#[test]
fn b2c_settings_and_fields_from_scripts() {
    let html = r#"<!DOCTYPE html><html><head><title>Sign in</title>
<script>var SETTINGS = {"remoteResource":"https://x/ui.html","api":"CombinedSigninAndSignup","csrf":"Y3NyZg==;}","transId":"StateProperties=eyJUSUQiOiIxIn0","hosts":{"tenant":"/t.onmicrosoft.com/B2C_1A_signin","policy":"B2C_1A_signin"},"locale":{"lang":"nl"}};
var SA_FIELDS = {"AttributeFields":[{"ID":"signInName","UX_INPUT_TYPE":"EmailBox"},{"ID":"password"}]};
var notSETTINGS = {"x":1}; window.OTHER = {'js': 'object'};</script></head><body><div id="api"></div></body></html>"#;
    let s = script_json(html, "SETTINGS").unwrap();
    assert_eq!(s["csrf"], "Y3NyZg==;}");
    assert_eq!(s["hosts"]["tenant"], "/t.onmicrosoft.com/B2C_1A_signin");
    let f = script_json(html, "SA_FIELDS").unwrap();
    assert_eq!(f["AttributeFields"][1], json!({"ID": "password"}));
    assert_eq!(script_object(html, "OTHER").as_deref(), Some("{'js': 'object'}"));
    assert!(script_json(html, "OTHER").is_none(), "not JSON");
    assert!(script_json(html, "ETTINGS").is_none());
    assert!(script_json(html, "api").is_none(), "an id in the body is not a script variable");
    assert!(forms(html).is_empty());
}

#[test]
fn script_json_with_html_escaped_json_and_other_declarations() {
    let html = r#"<script>const CFG={&quot;a&quot;:&quot;b&quot;}; let X = {"k": "v"}; if (Y == {}) {}; Y = {"y": [1, {"z": "}"}]}</script>"#;
    assert_eq!(script_json(html, "CFG").unwrap(), json!({"a": "b"}));
    assert_eq!(script_json(html, "X").unwrap(), json!({"k": "v"}));
    assert_eq!(script_json(html, "Y").unwrap(), json!({"y": [1, {"z": "}"}]}));
    assert!(script_object("<script>var A = {\"never\": \"closed\"</script>", "A").is_none());
}

#[test]
fn form_post_page_of_the_b2c_flow() {
    let html = r#"<html><head><title>Working...</title></head><body><form method="POST" name="hiddenform" action="http://127.0.0.1:9/signin-azureb2c"><input type="hidden" name="state" value="St&amp;1" /><input type="hidden" name="code" value="eyJr" /><noscript><p>Script is disabled. Click Submit to continue.</p><input type="submit" value="Submit" /></noscript></form><script language="javascript">document.forms[0].submit();</script></body></html>"#;
    let f = first_form(html).unwrap();
    assert_eq!(f.name.as_deref(), Some("hiddenform"));
    assert_eq!(f.entries(None), vec![("state".into(), "St&1".into()), ("code".into(), "eyJr".into())]);
}

#[test]
fn texts_and_errors() {
    let html = r#"<html><head><title>T</title><style>p{}</style></head><body><h1>Exact&nbsp;Online</h1>
        <div class="error pageLevel" role="alert"><p>Invalid <b>username</b> or password.</p><div>inner</div></div>
        <span class="errors">not this</span><script>var x = "<b>hidden</b>";</script><p class=error>second &amp; last</p></body></html>"#;
    assert_eq!(
        texts_with_class(html, "error"),
        vec!["Invalid username or password. inner".to_string(), "second & last".to_string()]
    );
    assert_eq!(visible_text(html), "T Exact Online Invalid username or password. inner not this second & last");
}
