//! The organisation page: databases and their containers with status, the repair counter (seed 002: how many
//! containers need a person, one click to each), and the forms that create a database and a container.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::{Action, FieldErrors, Fields, PageResult, Signed, input, page, page_with, problem_page, see_other, when};
use crate::api::AppState;
use crate::app::containers::{ContainerDetails, ContainerStatus, NewContainer};
use crate::chain::RepairCode;
use crate::ids::{Alias, ContainerRef, DbName, OrgId};
use crate::records::CredentialKind;

/// `GET /console`: an organisation's session goes to its organisation; a platform session to the platform pages.
pub async fn home(s: Signed) -> Response {
    match &s.session.org {
        Some(org) => see_other(&format!("/console/orgs/{org}")),
        None => page(
            &s,
            "Platform",
            html! {
                h1 { "Platform" }
                p { "You are signed in as a platform operator." }
                p { a href="/console/platform" { "All organisations" } }
            },
        ),
    }
}

pub fn org_url(org: &str) -> String {
    format!("/console/orgs/{org}")
}

pub fn container_url(c: &ContainerRef) -> String {
    format!("/console/orgs/{}/databases/{}/containers/{}", c.org, c.db, c.alias)
}

/// What a person reads as a container's state: the API's status, and "recovering" for a broken chain that
/// auto-recovery is working on.
pub fn status_text(d: &ContainerDetails) -> (&'static str, &'static str) {
    let recovering = d.recovery.as_ref().and_then(|r| r.as_ref()).is_some_and(|r| r.stopped.is_none());
    match d.status {
        ContainerStatus::Healthy => ("Healthy", "ok"),
        ContainerStatus::Refreshing => ("Refreshing", "busy"),
        ContainerStatus::NeedsRepair if recovering => ("Recovering", "busy"),
        ContainerStatus::NeedsRepair => ("Needs repair", "bad"),
        ContainerStatus::NotAuthorized => ("Not authorized yet", "todo"),
        ContainerStatus::NotConfigured => ("Not configured", "todo"),
        ContainerStatus::CredentialsIncomplete => ("Credentials incomplete", "todo"),
        ContainerStatus::AppNotConfigured => ("No app registration (ask the operator)", "bad"),
    }
}

/// The reason and since-when of a broken chain.
pub fn broken_reason(d: &ContainerDetails) -> Option<(RepairCode, i64)> {
    if d.status != ContainerStatus::NeedsRepair {
        return None;
    }
    let e = d.chain.as_ref()?.last_error.as_ref()?;
    Some((RepairCode::parse(&e.code), e.at_ms))
}

pub fn kind_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::Password => "password",
        CredentialKind::ApiToken => "api_token",
        CredentialKind::Oauth2Code => "oauth2_code",
        CredentialKind::Oauth2ClientCredentials => "oauth2_client_credentials",
        CredentialKind::Oauth2Password => "oauth2_password",
    }
}

const KINDS: &[(&str, &str)] = &[
    ("oauth2_code", "OAuth2 authorization (Exact Online and others)"),
    ("password", "Username and password"),
    ("api_token", "API token"),
    ("oauth2_client_credentials", "OAuth2 client credentials"),
    ("oauth2_password", "OAuth2 password grant"),
];

/// `GET /console/orgs/{org}`.
pub async fn show(State(app): State<AppState>, s: Signed, Path(org): Path<String>) -> PageResult {
    render(&app, &s, &org, &Forms::default(), StatusCode::OK).await
}

/// The values and errors of the two forms, when one is shown again.
#[derive(Default)]
struct Forms {
    db_name: String,
    db_errors: FieldErrors,
    ctr: [String; 4],
    ctr_errors: FieldErrors,
}

async fn render(app: &AppState, s: &Signed, org: &str, forms: &Forms, status: StatusCode) -> PageResult {
    s.require(app, Action::ViewOrg, Some(org))?;
    let org_id = OrgId::parse(org).map_err(|e| problem_page(s, e))?;
    let rec = app.orgs.get(&org_id).await.map_err(|e| problem_page(s, e))?;
    let dbs = app.orgs.databases(&org_id).await.map_err(|e| problem_page(s, e))?;
    let can_list = s.allowed(app, Action::ViewContainers, Some(org));
    let mut listed = Vec::new();
    for db in &dbs {
        let containers = if can_list {
            app.containers.list(&org_id, &db.name).await.map_err(|e| problem_page(s, e))?
        } else {
            vec![]
        };
        listed.push((db, containers));
    }
    let repairs = if s.allowed(app, Action::ViewRepairs, Some(org)) {
        Some(app.containers.repairs(&org_id).await.map_err(|e| problem_page(s, e))?)
    } else {
        None
    };
    let title = rec.display_name.clone().unwrap_or_else(|| org_id.to_string());
    let body = html! {
        h1 { "Organisation " (title) }
        (super::tokens::org_nav(app, s, &org_id))
        @if let Some(repairs) = &repairs {
            section aria-labelledby="repairs-h" class="repairs" {
                h2 id="repairs-h" {
                    span class=(if repairs.is_empty() { "counter ok" } else { "counter bad" }) { (repairs.len()) }
                    " " (if repairs.len() == 1 { "container needs repair" } else { "containers need repair" })
                }
                @if !repairs.is_empty() {
                    ul {
                        @for r in repairs {
                            @let c = ContainerRef { org: org_id.clone(), db: r.db.clone(), alias: r.alias.clone() };
                            li {
                                a href=(container_url(&c)) { (r.db) " / " (r.alias) }
                                " — " (r.code.title())
                                @if let Some(at) = r.broken_at_ms { " (since " (when(at)) ")" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Databases" }
        @if dbs.is_empty() { p { "No databases yet." } }
        @for (db, containers) in &listed {
            section aria-labelledby=(format!("database-{}", db.name)) {
                h3 id=(format!("database-{}", db.name)) { "Database " (db.name) }
                @if let Some(d) = &db.description { p { (d) } }
                @if containers.is_empty() { p { "No containers." } } @else {
                    div class="table-wrap" tabindex="0" role="region" aria-label=(format!("Containers of {}", db.name)) {
                        table {
                            caption { "Containers of " (db.name) }
                            thead { tr { th scope="col" { "Container" } th scope="col" { "Kind" } th scope="col" { "Status" } th scope="col" { "Last successful refresh" } } }
                            tbody {
                                @for d in containers { (container_row(d)) }
                            }
                        }
                    }
                }
            }
        }
        @if s.allowed(app, Action::CreateDatabase, Some(org)) {
            (db_form(s, &org_id, forms))
        }
        @if s.allowed(app, Action::CreateContainer, Some(org)) && !dbs.is_empty() {
            (container_form(app, s, &org_id, &dbs.iter().map(|d| d.name.to_string()).collect::<Vec<_>>(), forms))
        }
    };
    Ok(page_with(s, status, &format!("Organisation {title}"), body))
}

fn container_row(d: &ContainerDetails) -> Markup {
    let rec = &d.record;
    let (text, class) = status_text(d);
    html! {
        tr {
            td { a href=(container_url(&rec.container)) { (rec.container.alias) } }
            td { (kind_name(rec.kind)) @if let Some(p) = &rec.provider { " · " (p) } }
            td {
                span class=(format!("status {class}")) { (text) }
                @if let Some((code, at)) = broken_reason(d) {
                    br; (code.title()) " — since " (when(at))
                }
            }
            td { @match d.chain.as_ref().and_then(|c| c.last_refresh_at_ms) { Some(at) => (when(at)), None => "never" } }
        }
    }
}

fn db_form(s: &Signed, org: &OrgId, f: &Forms) -> Markup {
    html! {
        section aria-labelledby="new-db-h" {
            h2 id="new-db-h" { "New database" }
            form method="post" action=(format!("/console/orgs/{org}/databases")) {
                (s.csrf_field())
                (input("db", "name", "Database name", "text", &f.db_name, &f.db_errors, Some("Letters, digits, - and _.")))
                button type="submit" { "Create database" }
            }
        }
    }
}

fn container_form(app: &AppState, s: &Signed, org: &OrgId, dbs: &[String], f: &Forms) -> Markup {
    let [db, alias, kind, provider] = &f.ctr;
    let e = &f.ctr_errors;
    html! {
        section aria-labelledby="new-ctr-h" {
            h2 id="new-ctr-h" { "New container" }
            form method="post" id="new-container" action=(format!("/console/orgs/{org}/databases/-/containers")) {
                (s.csrf_field())
                div class="field" {
                    label for="ctr-database" { "Database" }
                    select id="ctr-database" name="database" {
                        @for d in dbs { option value=(d) selected[d == db] { (d) } }
                    }
                }
                (input("ctr", "alias", "Container name", "text", alias, e, Some("Letters, digits, - and _.")))
                div class="field" {
                    label for="ctr-kind" { "Kind" }
                    select id="ctr-kind" name="kind" aria-describedby=[e.get("kind").map(|_| "ctr-kind-error")] {
                        @for (value, label) in KINDS { option value=(value) selected[*value == kind] { (label) } }
                    }
                    (super::field_error("ctr-kind-error", e.get("kind")))
                }
                div class="field" {
                    label for="ctr-provider" { "Provider" }
                    select id="ctr-provider" name="provider" aria-describedby=[e.get("provider").map(|_| "ctr-provider-error")] {
                        option value="" { "(none)" }
                        @for (name, p) in &app.config.providers {
                            option value=(name) selected[name == provider] { (p.display_name.as_deref().unwrap_or(name)) }
                        }
                    }
                    (super::field_error("ctr-provider-error", e.get("provider")))
                }
                button type="submit" { "Create container" }
            }
        }
    }
}

/// `POST /console/orgs/{org}/databases`.
pub async fn create_db(State(app): State<AppState>, s: Signed, Path(org): Path<String>, body: Bytes) -> PageResult {
    let f = s.form(&body)?;
    s.require(&app, Action::CreateDatabase, Some(&org))?;
    let org_id = OrgId::parse(&org).map_err(|e| problem_page(&s, e))?;
    let name = f.get("name");
    let mut forms = Forms { db_name: name.chars().take(200).collect(), ..Forms::default() };
    forms.db_errors.required("name", name, 63);
    let db = if forms.db_errors.is_empty() {
        match DbName::parse(name) {
            Ok(db) => Some(db),
            Err(_) => {
                forms.db_errors.add("name", "Use letters, digits, - and _ only, starting with a letter or digit.");
                None
            }
        }
    } else {
        None
    };
    let Some(db) = db else { return render(&app, &s, &org, &forms, StatusCode::UNPROCESSABLE_ENTITY).await };
    match app.orgs.create_db(&s.session.sub, &org_id, &db, None).await {
        Ok(_) => Ok(see_other(&org_url(&org))),
        Err(crate::app::orgs::OrgError::DatabaseExists(_)) => {
            forms.db_errors.add("name", "A database with this name exists already.");
            render(&app, &s, &org, &forms, StatusCode::CONFLICT).await
        }
        Err(e) => Err(problem_page(&s, e).into()),
    }
}

/// `POST /console/orgs/{org}/databases/{db}/containers` (`{db}` may be `-`: the form's `database` field names it).
pub async fn create_container(
    State(app): State<AppState>,
    s: Signed,
    Path((org, db)): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    let f: Fields = s.form(&body)?;
    s.require(&app, Action::CreateContainer, Some(&org))?;
    let org_id = OrgId::parse(&org).map_err(|e| problem_page(&s, e))?;
    let db = if db == "-" { f.get("database").to_string() } else { db };
    let (alias, kind, provider) = (f.get("alias"), f.get("kind"), f.get("provider"));
    let keep = |v: &str| v.chars().take(200).collect::<String>();
    let mut forms = Forms { ctr: [keep(&db), keep(alias), keep(kind), keep(provider)], ..Forms::default() };
    let e = &mut forms.ctr_errors;
    e.required("alias", alias, 63);
    let db_name = DbName::parse(&db).ok();
    let alias_name = if e.is_empty() {
        Alias::parse(alias)
            .map_err(|_| e.add("alias", "Use letters, digits, - and _ only, starting with a letter or digit."))
            .ok()
    } else {
        None
    };
    let kind_value: Option<CredentialKind> = serde_json::from_value(serde_json::Value::String(kind.to_string())).ok();
    if kind_value.is_none() {
        e.add("kind", "Choose a kind.");
    }
    if !provider.is_empty() && app.config.provider(provider).is_none() {
        e.add("provider", "Choose a provider from the list.");
    }
    if kind_value.is_some_and(CredentialKind::uses_provider) && provider.is_empty() {
        e.add("provider", "This kind needs a provider.");
    }
    let (Some(db_name), Some(alias_name), Some(kind_value), true) = (db_name, alias_name, kind_value, e.is_empty())
    else {
        return render(&app, &s, &org, &forms, StatusCode::UNPROCESSABLE_ENTITY).await;
    };
    let c = ContainerRef { org: org_id, db: db_name, alias: alias_name };
    let new =
        NewContainer { kind: kind_value, provider: (!provider.is_empty()).then(|| provider.to_string()), scopes: None };
    use crate::app::containers::ContainerError as E;
    match app.containers.create(&s.session.sub, &c, new).await {
        Ok(_) => Ok(see_other(&container_url(&c))),
        Err(E::Exists(_)) => {
            forms.ctr_errors.add("alias", "A container with this name exists already in this database.");
            render(&app, &s, &org, &forms, StatusCode::CONFLICT).await
        }
        Err(E::ProviderNotForKind { .. }) | Err(E::ProviderRequired { .. }) | Err(E::UnknownProvider { .. }) => {
            forms.ctr_errors.add("provider", "This provider cannot serve this kind of container.");
            render(&app, &s, &org, &forms, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(e) => Err(problem_page(&s, e).into()),
    }
}
