//! The organisation's API tokens: create one with scopes or groups (at most what the session holds, as the API
//! bounds a token issued with another; shown once, with a copy button), list them, revoke one. Each action checks
//! the scope of the API route it stands for (`POST/GET …/api-tokens`, `DELETE …/api-tokens/{id}`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use maud::{Markup, html};
use secrecy::ExposeSecret;

use super::{FieldErrors, PageResult, Signed, input, page_with, problem_page, see_other, when};
use crate::api::AppState;
use crate::api::routes::Handler;
use crate::app::api_tokens::{ApiTokenError, NewApiToken};
use crate::ids::OrgId;
use crate::records::ApiTokenRecord;

/// Longest subject and scope list a form may send (the use case cuts the subject at 120 characters anyway).
const MAX_SUBJECT: usize = 120;
const MAX_SCOPES: usize = 400;
/// Days a new token is valid: 1 to 730 (the use case's 2 years), 90 by default.
const DEFAULT_DAYS: u32 = 90;
const MAX_DAYS: u32 = 730;

/// The organisation page's links to its API tokens, webhook and audit log (those the session may open).
pub(super) fn org_nav(app: &AppState, s: &Signed, org: &OrgId) -> Markup {
    let o = Some(org.as_str());
    let links = [
        (Handler::ListApiTokens, "api-tokens", "API tokens"),
        (Handler::SetWebhook, "webhook", "Webhook"),
        (Handler::Audit, "audit", "Audit log"),
    ];
    let shown: Vec<_> = links.iter().filter(|(h, _, _)| s.allowed_route(app, *h, o)).collect();
    html! {
        @if !shown.is_empty() {
            nav aria-label="Organisation" {
                ul class="links" {
                    @for (_, path, label) in shown { li { a href=(format!("/console/orgs/{org}/{path}")) { (label) } } }
                }
            }
        }
    }
}

fn tokens_url(org: &OrgId) -> String {
    format!("/console/orgs/{org}/api-tokens")
}

/// The new-token form's values and problems, when it is shown again; the token just made, once.
#[derive(Default)]
struct Form {
    subject: String,
    scopes: String,
    days: String,
    errors: FieldErrors,
    created: Option<(ApiTokenRecord, String)>,
}

/// `GET /console/orgs/{org}/api-tokens`.
pub async fn show(State(app): State<AppState>, s: Signed, Path(org): Path<String>) -> PageResult {
    let form = Form { days: DEFAULT_DAYS.to_string(), ..Form::default() };
    render(&app, &s, &org, &form, StatusCode::OK).await
}

async fn render(app: &AppState, s: &Signed, org: &str, form: &Form, status: StatusCode) -> PageResult {
    s.require_route(app, Handler::ListApiTokens, Some(org))?;
    let org_id = OrgId::parse(org).map_err(|e| problem_page(s, e))?;
    let mut tokens = app.api_tokens.list(&org_id).await.map_err(|e| problem_page(s, e))?;
    tokens.sort_by_key(|t| std::cmp::Reverse(t.issued_at_ms));
    let can_create = s.allowed_route(app, Handler::CreateApiToken, Some(org));
    let can_revoke = s.allowed_route(app, Handler::RevokeApiToken, Some(org));
    let body = html! {
        p { a href=(format!("/console/orgs/{org_id}")) { "Organisation " (org_id) } }
        h1 { "API tokens" }
        @if let Some((rec, token)) = &form.created {
            section aria-labelledby="created-h" class="created" {
                h2 id="created-h" { "Token for " (rec.subject) }
                p { "Copy it now: it is shown only this once. It is valid until " (when(rec.expires_at_ms)) "." }
                p { code id="new-token" { (token) } }
                button type="button" data-copy="new-token" { "Copy token" }
            }
        }
        @if can_create { (new_form(s, &org_id, form)) }
        h2 { "Tokens" }
        @if tokens.is_empty() { p { "No API tokens yet." } } @else {
            div class="table-wrap" tabindex="0" role="region" aria-labelledby="table-caption" {
                table {
                    caption id="table-caption" { "API tokens of " (org_id) ", newest first" }
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Scopes" } th scope="col" { "Issued by" }
                        th scope="col" { "Issued" } th scope="col" { "Expires" } th scope="col" { "Status" }
                    } }
                    tbody { @for t in &tokens { (row(s, &org_id, t, can_revoke)) } }
                }
            }
        }
    };
    Ok(page_with(s, status, "API tokens", body))
}

fn new_form(s: &Signed, org: &OrgId, f: &Form) -> Markup {
    let held = s.session.scopes.join(" ");
    let scopes_hint = format!(
        "Separated by spaces: scopes such as containers.read or api-tokens.readwrite, or groups such as admin. At most \
         what you hold yourself: {held}."
    );
    html! {
        section aria-labelledby="new-token-h" {
            h2 id="new-token-h" { "New token" }
            form method="post" action=(tokens_url(org)) {
                (s.csrf_field())
                (input("tok", "subject", "Name", "text", &f.subject, &f.errors, Some("Who or what uses the token, e.g. power-bi.")))
                (input("tok", "scopes", "Scopes or groups", "text", &f.scopes, &f.errors, Some(&scopes_hint)))
                (input("tok", "days", "Valid for (days)", "number", &f.days, &f.errors, Some("1 to 730 days.")))
                button type="submit" { "Create token" }
            }
        }
    }
}

fn row(s: &Signed, org: &OrgId, t: &ApiTokenRecord, can_revoke: bool) -> Markup {
    html! {
        tr {
            td { (t.subject) br; small { "id " code { (t.id) } } }
            td { (t.scopes.join(" ")) }
            td { (t.issued_by) }
            td { (when(t.issued_at_ms)) }
            td { (when(t.expires_at_ms)) }
            td {
                @match t.revoked_at_ms {
                    Some(at) => { span class="status bad" { "Revoked" } " " (when(at)) }
                    None => {
                        span class="status ok" { "Active" }
                        @if can_revoke {
                            form method="post" class="inline" action=(format!("{}/{}/revoke", tokens_url(org), t.id)) {
                                (s.csrf_field())
                                button type="submit" aria-label=(format!("Revoke {} ({})", t.subject, t.id)) { "Revoke" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /console/orgs/{org}/api-tokens`: the token is shown on the page this answers (once, never again).
pub async fn create(State(app): State<AppState>, s: Signed, Path(org): Path<String>, body: Bytes) -> PageResult {
    let f = s.form(&body)?;
    s.require_route(&app, Handler::CreateApiToken, Some(&org))?;
    let org_id = OrgId::parse(&org).map_err(|e| problem_page(&s, e))?;
    let (subject, scopes, days) = (f.get("subject"), f.get("scopes"), f.get("days"));
    let keep = |v: &str, n: usize| v.chars().take(n).collect::<String>();
    let mut form = Form {
        subject: keep(subject, MAX_SUBJECT + 50),
        scopes: keep(scopes, MAX_SCOPES + 50),
        days: keep(days, 12),
        ..Form::default()
    };
    let e = &mut form.errors;
    e.required("subject", subject, MAX_SUBJECT);
    e.required("scopes", scopes, MAX_SCOPES);
    let days_n = match days.parse::<u32>() {
        Ok(d) if (1..=MAX_DAYS).contains(&d) => Some(d),
        _ if days.is_empty() => Some(DEFAULT_DAYS),
        _ => {
            e.add("days", format!("A whole number of days from 1 to {MAX_DAYS}."));
            None
        }
    };
    let list: Vec<String> = scopes.split_whitespace().map(str::to_string).collect();
    let (Some(days_n), true) = (days_n, e.is_empty()) else {
        return render(&app, &s, &org, &form, StatusCode::UNPROCESSABLE_ENTITY).await;
    };
    let new =
        NewApiToken { subject: subject.to_string(), scopes: list, expires_in_s: Some(u64::from(days_n) * 86_400) };
    let held = &s.session.scopes;
    match app.api_tokens.issue_for_person(&org_id, &s.session.sub, held, new).await {
        Ok(issued) => {
            form = Form { days: DEFAULT_DAYS.to_string(), ..Form::default() };
            form.created = Some((issued.record, issued.token.expose_secret().to_string()));
            render(&app, &s, &org, &form, StatusCode::CREATED).await
        }
        Err(ApiTokenError::InvalidScopes) => {
            form.errors.add("scopes", "Scopes are words without spaces inside, each at most 80 characters.");
            render(&app, &s, &org, &form, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(ApiTokenError::ScopeEscalation(sc)) => {
            form.errors.add("scopes", format!("You do not hold {sc} yourself, so you cannot give it to a token."));
            render(&app, &s, &org, &form, StatusCode::FORBIDDEN).await
        }
        Err(e) => Err(problem_page(&s, e).into()),
    }
}

/// `POST /console/orgs/{org}/api-tokens/{id}/revoke`.
pub async fn revoke(
    State(app): State<AppState>,
    s: Signed,
    Path((org, id)): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    s.form(&body)?;
    s.require_route(&app, Handler::RevokeApiToken, Some(&org))?;
    let org_id = OrgId::parse(&org).map_err(|e| problem_page(&s, e))?;
    app.api_tokens.revoke(&org_id, &s.session.sub, &id).await.map_err(|e| problem_page(&s, e))?;
    Ok(see_other(&tokens_url(&org_id)))
}
