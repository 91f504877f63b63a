//! The organisation's audit log: who did what to which container, when, with what outcome; newest first, filtered
//! by action, container and outcome, a page at a time. The scope is that of `GET /v1/orgs/{org}/audit`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use maud::{Markup, html};

use super::{FieldErrors, PageResult, Signed, input, page_with, problem_page, when};
use crate::api::AppState;
use crate::api::routes::Handler;
use crate::ids::OrgId;
use crate::records::AuditRecord;

/// Entries per page.
const PAGE: usize = 50;
/// Reads of the log for one page of filtered entries, at most (the rest is behind "Older entries").
const MAX_SCAN: usize = 20;
/// Longest filter value.
const MAX_FILTER: usize = 100;

/// The outcomes the filter offers.
const OUTCOMES: &[(&str, &str)] = &[("", "Any"), ("ok", "Succeeded"), ("failed", "Failed")];

/// The filter, as the query string gives it.
#[derive(Default)]
struct Filter {
    action: String,
    container: String,
    outcome: String,
}

impl Filter {
    fn matches(&self, e: &AuditRecord) -> bool {
        (self.action.is_empty() || e.action.to_ascii_lowercase().contains(&self.action.to_ascii_lowercase()))
            && (self.container.is_empty()
                || e.container
                    .as_deref()
                    .is_some_and(|c| c.to_ascii_lowercase().contains(&self.container.to_ascii_lowercase())))
            && match self.outcome.as_str() {
                "" => true,
                "ok" => e.outcome == "ok",
                _ => e.outcome != "ok",
            }
    }

    fn query(&self, cursor: Option<&str>) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("action", &self.action), ("container", &self.container), ("outcome", &self.outcome)] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        if let Some(c) = cursor {
            q.append_pair("cursor", c);
        }
        q.finish()
    }
}

/// `GET /console/orgs/{org}/audit[?action=&container=&outcome=&cursor=]`.
pub async fn show(
    State(app): State<AppState>,
    s: Signed,
    Path(org): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> PageResult {
    s.require_route(&app, Handler::Audit, Some(&org))?;
    let org_id = OrgId::parse(&org).map_err(|e| problem_page(&s, e))?;
    let get = |k: &str| q.get(k).map_or("", |v| v.trim());
    let keep = |v: &str| v.chars().take(MAX_FILTER + 20).collect::<String>();
    let filter =
        Filter { action: keep(get("action")), container: keep(get("container")), outcome: keep(get("outcome")) };
    let mut errors = FieldErrors::default();
    for (name, v) in [("action", get("action")), ("container", get("container"))] {
        if v.chars().count() > MAX_FILTER {
            errors.add(name, format!("At most {MAX_FILTER} characters."));
        }
    }
    if !OUTCOMES.iter().any(|(v, _)| *v == filter.outcome) {
        errors.add("outcome", "Choose one of the outcomes listed.");
    }
    let start = q.get("cursor").filter(|c| !c.is_empty()).cloned();
    if start.as_ref().is_some_and(|c| c.len() > 400) {
        errors.add("cursor", "This page link is not valid: start again from the newest entries.");
    }
    let (mut shown, mut next) = (Vec::new(), None);
    if errors.is_empty() {
        let mut cursor = start.clone();
        for _ in 0..MAX_SCAN {
            // At most as many entries as are still wanted: a page never holds more matches than it shows, so
            // the log's own cursor after it is where the next page starts.
            let want = PAGE - shown.len();
            let page = app.audit.page(&org_id, want, cursor.as_deref()).await.map_err(|e| problem_page(&s, e))?;
            shown.extend(page.entries.into_iter().filter(|e| filter.matches(e)));
            next = page.next_cursor;
            if shown.len() >= PAGE || next.is_none() {
                break;
            }
            cursor = next.clone();
        }
    }
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let base = format!("/console/orgs/{org_id}/audit");
    let body = html! {
        p { a href=(format!("/console/orgs/{org_id}")) { "Organisation " (org_id) } }
        h1 { "Audit log" }
        (filter_form(&base, &filter, &errors))
        @if let Some(e) = errors.get("cursor") { p class="error" role="alert" { (e) } }
        @if shown.is_empty() && errors.is_empty() { p { "No entries" @if start.is_some() { " on this page" } "." } }
        @if !shown.is_empty() {
            div class="table-wrap" tabindex="0" role="region" aria-labelledby="table-caption" {
                table {
                    caption id="table-caption" { "Audit entries of " (org_id) ", newest first" }
                    thead { tr {
                        th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" }
                        th scope="col" { "Container" } th scope="col" { "Outcome" } th scope="col" { "Detail" }
                    } }
                    tbody { @for e in &shown { (row(e)) } }
                }
            }
        }
        nav aria-label="Audit pages" {
            @if start.is_some() { a href=(format!("{base}?{}", filter.query(None))) { "Newest entries" } " " }
            @if let Some(n) = &next { a href=(format!("{base}?{}", filter.query(Some(n)))) { "Older entries" } }
        }
    };
    Ok(page_with(&s, status, "Audit log", body))
}

fn filter_form(base: &str, f: &Filter, errors: &FieldErrors) -> Markup {
    html! {
        form method="get" action=(base) aria-label="Filter the audit log" {
            (input("audit", "action", "Action", "text", &f.action, errors, Some("Part of an action's name, e.g. api_token or auto_recovery.")))
            (input("audit", "container", "Container", "text", &f.container, errors, Some("Part of database/container, e.g. finance/eol.")))
            div class="field" {
                label for="audit-outcome" { "Outcome" }
                select id="audit-outcome" name="outcome" aria-invalid=[errors.get("outcome").map(|_| "true")]
                    aria-describedby=[errors.get("outcome").map(|_| "audit-outcome-error")] {
                    @for (v, label) in OUTCOMES { option value=(v) selected[*v == f.outcome] { (label) } }
                }
                (super::field_error("audit-outcome-error", errors.get("outcome")))
            }
            button type="submit" { "Filter" }
        }
    }
}

fn row(e: &AuditRecord) -> Markup {
    html! {
        tr {
            td { (when(e.at_ms)) }
            td { (e.actor) }
            td { (e.action) }
            td { (e.container.as_deref().unwrap_or("—")) }
            td { @if e.outcome == "ok" { span class="status ok" { "ok" } } @else { span class="status bad" { (e.outcome) } } }
            td { (e.detail.as_deref().unwrap_or("")) }
        }
    }
}
