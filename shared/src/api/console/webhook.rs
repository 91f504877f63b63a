//! The organisation's webhook: its URL (shown masked), the event types it receives, a test delivery, removal.
//! The signing secret is shown once, when the webhook is saved. Scopes: those of `PUT/DELETE /v1/orgs/{org}/webhook`
//! (viewing and testing need the `PUT`'s, as only someone who may set the webhook needs to see or test it).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use maud::{Markup, html};
use secrecy::ExposeSecret;

use super::{FieldErrors, PageResult, Signed, input, page_with, problem_page, see_other};
use crate::api::AppState;
use crate::api::routes::Handler;
use crate::app::webhooks::{EVENT_TYPES, TestDelivery, UrlRefusal, WebhookError};
use crate::ids::OrgId;

/// Longest URL the form takes.
const MAX_URL: usize = 2000;

#[derive(Default)]
struct Form {
    url: String,
    /// The event types ticked (all of them on a first view).
    events: Vec<String>,
    errors: FieldErrors,
    /// The signing secret of a webhook just saved (shown once), or the outcome of a test delivery.
    secret: Option<String>,
    notice: Option<(bool, String)>,
}

fn webhook_url(org: &OrgId) -> String {
    format!("/console/orgs/{org}/webhook")
}

/// `GET /console/orgs/{org}/webhook`.
pub async fn show(State(app): State<AppState>, s: Signed, Path(org): Path<String>) -> PageResult {
    render(&app, &s, &org, Form::default(), StatusCode::OK).await
}

async fn render(app: &AppState, s: &Signed, org: &str, mut form: Form, status: StatusCode) -> PageResult {
    s.require_route(app, Handler::SetWebhook, Some(org))?;
    let org_id = OrgId::parse(org).map_err(|e| problem_page(s, e))?;
    let rec = app.orgs.get(&org_id).await.map_err(|e| problem_page(s, e))?;
    if form.events.is_empty() && form.errors.is_empty() {
        form.events = match &rec.webhook_events {
            Some(evs) => evs.clone(),
            None => EVENT_TYPES.iter().map(|(t, _)| t.to_string()).collect(),
        };
    }
    let base = webhook_url(&org_id);
    let body = html! {
        p { a href=(format!("/console/orgs/{org_id}")) { "Organisation " (org_id) } }
        h1 { "Webhook" }
        @if let Some((ok, text)) = &form.notice {
            p class=(if *ok { "notice ok" } else { "notice error" }) role="status" { (text) }
        }
        @if let Some(secret) = &form.secret {
            section aria-labelledby="secret-h" {
                h2 id="secret-h" { "Signing secret" }
                p { "Copy it now: it is shown only this once. Receivers check each event's "
                    code { "X-Chainkeeper-Signature" } " header (HMAC-SHA256 of \"<t>.<body>\") with it." }
                p { code id="webhook-secret" { (secret) } }
                button type="button" data-copy="webhook-secret" { "Copy secret" }
            }
        }
        h2 { "Current webhook" }
        @match &rec.webhook_url {
            Some(url) => {
                p { "Events go to " code { (url) } " (only the scheme, host and port are shown)." }
                p { "It receives: "
                    @match &rec.webhook_events { Some(evs) => (evs.join(", ")), None => "every event type" } "." }
                form method="post" class="inline" action=(format!("{base}/test")) {
                    (s.csrf_field())
                    button type="submit" { "Send a test event" }
                }
                @if s.allowed_route(app, Handler::DeleteWebhook, Some(org)) {
                    form method="post" class="inline" action=(format!("{base}/delete")) {
                        (s.csrf_field())
                        button type="submit" { "Remove webhook" }
                    }
                }
            }
            None => p { "No webhook: nobody is told when a chain needs repair, except on this console." },
        }
        (set_form(s, &base, &form))
    };
    Ok(page_with(s, status, "Webhook", body))
}

fn set_form(s: &Signed, base: &str, f: &Form) -> Markup {
    let events_error = f.errors.get("events");
    html! {
        h2 id="set-h" { "Set the webhook" }
        form method="post" action=(base) aria-labelledby="set-h" {
            (s.csrf_field())
            (input("hook", "url", "Webhook URL", "url", &f.url, &f.errors, Some("https://… of your receiver. Saving replaces the current webhook and its secret.")))
            fieldset aria-describedby=[events_error.map(|_| "hook-events-error")] {
                legend { "Events" }
                @for (kind, what) in EVENT_TYPES {
                    @let id = format!("hook-ev-{}", kind.replace('.', "-"));
                    div class="check" {
                        input type="checkbox" id=(id) name="events" value=(kind) checked[f.events.iter().any(|e| e == kind)];
                        label for=(id) { code { (kind) } " — " (what) }
                    }
                }
                (super::field_error("hook-events-error", events_error))
            }
            button type="submit" { "Save webhook" }
        }
    }
}

/// The values of a repeated form field (the event checkboxes), as the body gives them.
fn all(body: &[u8], name: &str) -> Vec<String> {
    url::form_urlencoded::parse(body).filter(|(k, _)| k == name).map(|(_, v)| v.trim().to_string()).collect()
}

/// `POST /console/orgs/{org}/webhook`.
pub async fn set(State(app): State<AppState>, s: Signed, Path(org): Path<String>, body: Bytes) -> PageResult {
    let f = s.form(&body)?;
    s.require_route(&app, Handler::SetWebhook, Some(&org))?;
    let org_id = OrgId::parse(&org).map_err(|e| problem_page(&s, e))?;
    let url = f.get("url");
    let events: Vec<String> = all(&body, "events").into_iter().take(10).map(|e| e.chars().take(60).collect()).collect();
    let mut form = Form { url: url.chars().take(MAX_URL + 50).collect(), events: events.clone(), ..Form::default() };
    form.errors.required("url", url, MAX_URL);
    if events.is_empty() {
        form.errors.add("events", "Choose at least one event type.");
    } else if let Some(bad) = events.iter().find(|e| !EVENT_TYPES.iter().any(|(t, _)| t == *e)) {
        form.errors.add("events", format!("{bad} is not an event type."));
    }
    if !form.errors.is_empty() {
        return render(&app, &s, &org, form, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let chosen = (events.len() < EVENT_TYPES.len()).then_some(events);
    match app.webhooks.register_for(&org_id, &s.session.sub, url, chosen).await {
        Ok(done) => {
            let form = Form {
                secret: Some(done.secret.expose_secret().to_string()),
                notice: Some((true, format!("Saved: events go to {}.", done.masked_url))),
                ..Form::default()
            };
            render(&app, &s, &org, form, StatusCode::OK).await
        }
        Err(WebhookError::InvalidUrl(why)) => {
            form.errors.add("url", refusal_text(&why));
            render(&app, &s, &org, form, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(WebhookError::UnknownEvent(kind)) => {
            form.errors.add("events", format!("{kind} is not an event type."));
            render(&app, &s, &org, form, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(e) => Err(problem_page(&s, e).into()),
    }
}

fn refusal_text(why: &UrlRefusal) -> String {
    match why {
        UrlRefusal::NotAbsolute => "Give a whole URL, starting with https://.".into(),
        UrlRefusal::Form => "Use https://host/path, without a user name or password in it.".into(),
        UrlRefusal::NotHttps => "Webhooks are sent over https only.".into(),
        UrlRefusal::PrivateAddress(class) => {
            format!("This URL names a {} address; webhooks go to public addresses only.", class.as_str())
        }
    }
}

/// `POST /console/orgs/{org}/webhook/test`.
pub async fn test(State(app): State<AppState>, s: Signed, Path(org): Path<String>, body: Bytes) -> PageResult {
    s.form(&body)?;
    s.require_route(&app, Handler::SetWebhook, Some(&org))?;
    let org_id = OrgId::parse(&org).map_err(|e| problem_page(&s, e))?;
    let outcome = app.webhooks.send_test(&org_id, &s.session.sub).await.map_err(|e| problem_page(&s, e))?;
    let notice = match outcome {
        TestDelivery::Delivered => {
            (true, "The test event was delivered: your receiver answered with success.".to_string())
        }
        TestDelivery::NoWebhook => (false, "There is no webhook to test: set one first.".to_string()),
        TestDelivery::Failed(why) => (false, format!("The test event was not delivered: {why}.")),
    };
    let status = if notice.0 { StatusCode::OK } else { StatusCode::BAD_GATEWAY };
    render(&app, &s, &org, Form { notice: Some(notice), ..Form::default() }, status).await
}

/// `POST /console/orgs/{org}/webhook/delete`.
pub async fn delete(State(app): State<AppState>, s: Signed, Path(org): Path<String>, body: Bytes) -> PageResult {
    s.form(&body)?;
    s.require_route(&app, Handler::DeleteWebhook, Some(&org))?;
    let org_id = OrgId::parse(&org).map_err(|e| problem_page(&s, e))?;
    app.webhooks.remove(&org_id, &s.session.sub).await.map_err(|e| problem_page(&s, e))?;
    Ok(see_other(&webhook_url(&org_id)))
}
