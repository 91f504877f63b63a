//! The container page: status, the masked credential and the identity (`client_id#user_id`), Renew authorization
//! and Sign in as another user (both start `app::authorization` and send the browser to the provider), the
//! auto-recovery form (`app::recovery`), the credential form (`app::containers`) and this container's audit entries.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use maud::{Markup, html};
use secrecy::SecretString;

use super::org::{broken_reason, container_url, kind_name, org_url, status_text};
use super::{Action, FieldErrors, PageResult, Refused, Signed, input, page_with, problem_page, see_other, when};
use crate::api::AppState;
use crate::app::containers::{ContainerDetails, Credentials};
use crate::app::recovery::{DEFAULT_RETENTION_DAYS, RecoveryCredentials, RecoveryError};
use crate::ids::{Alias, ContainerRef, DbName, OrgId};
use crate::records::CredentialKind;

/// The longest value a console form field takes (usernames, passwords, tokens, TOTP URIs).
const MAX_FIELD: usize = 1024;
/// Audit entries read to find this container's (the newest of the organisation's log).
const AUDIT_SCAN: usize = 500;
const AUDIT_SHOWN: usize = 20;

type Names = (String, String, String);

fn container_ref(s: &Signed, (org, db, alias): &Names) -> Result<ContainerRef, Refused> {
    let parse = || -> Result<ContainerRef, crate::ids::InvalidName> {
        Ok(ContainerRef { org: OrgId::parse(org)?, db: DbName::parse(db)?, alias: Alias::parse(alias)? })
    };
    parse().map_err(|e| problem_page(s, e).into())
}

/// The values (never a secret) and errors of the page's forms, when one is shown again.
#[derive(Default)]
struct Forms {
    recovery_username: String,
    recovery_days: String,
    recovery_errors: FieldErrors,
    cred_username: String,
    cred_client_id: String,
    cred_errors: FieldErrors,
}

/// `GET …/containers/{alias}`.
pub async fn show(State(app): State<AppState>, s: Signed, Path(names): Path<Names>) -> PageResult {
    render(&app, &s, &names, &Forms::default(), StatusCode::OK).await
}

async fn render(app: &AppState, s: &Signed, names: &Names, forms: &Forms, status: StatusCode) -> PageResult {
    s.require(app, Action::ViewContainer, Some(&names.0))?;
    let c = container_ref(s, names)?;
    let d = app.containers.details(&c).await.map_err(|e| problem_page(s, e))?;
    let org = c.org.as_str();
    let audit = if s.allowed(app, Action::ViewAudit, Some(org)) {
        let all = app.audit.page(&c.org, AUDIT_SCAN, None).await.map_err(|e| problem_page(s, e))?;
        let mine = c.local_name();
        Some(
            all.entries
                .into_iter()
                .filter(|e| e.container.as_deref() == Some(mine.as_str()))
                .take(AUDIT_SHOWN)
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    let title = format!("Container {}/{}", c.db, c.alias);
    let (text, class) = status_text(&d);
    let rec = &d.record;
    let body = html! {
        p { a href=(org_url(org)) { "← Organisation " (org) } }
        h1 { (title) }
        dl class="facts" {
            dt { "Kind" } dd { (kind_name(rec.kind)) }
            @if let Some(p) = &rec.provider { dt { "Provider" } dd { (p) } }
            dt { "Status" } dd { span class=(format!("status {class}")) { (text) } }
            @if let Some((code, at)) = broken_reason(&d) {
                dt { "Reason" } dd { (code.title()) " — since " (when(at)) br; (code.remedy()) }
            }
            dt { "Last successful refresh" }
            dd { @match d.chain.as_ref().and_then(|ch| ch.last_refresh_at_ms) { Some(at) => (when(at)), None => "never" } }
        }
        (credential_section(&d))
        @if rec.kind == CredentialKind::Oauth2Code && s.allowed(app, Action::Authorize, Some(org)) {
            (authorize_section(s, &c, &d))
        }
        @if rec.kind == CredentialKind::Oauth2Code {
            (recovery_section(app, s, &c, &d, forms))
        }
        @if rec.kind != CredentialKind::Oauth2Code && s.allowed(app, Action::SetCredentials, Some(org)) {
            (credential_form(s, &c, &d, forms))
        }
        @if let Some(entries) = audit {
            section aria-labelledby="audit-h" {
                h2 id="audit-h" { "Audit log of this container" }
                @if entries.is_empty() { p { "No entries yet." } } @else {
                    div class="table-wrap" tabindex="0" role="region" aria-label="Audit entries, newest first" {
                        table {
                            caption { "Newest first" }
                            thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "Outcome" } } }
                            tbody {
                                @for e in &entries {
                                    tr {
                                        td { (when(e.at_ms)) }
                                        td { (e.actor) }
                                        td { (e.action) @if let Some(d) = &e.detail { br; small { (d) } } }
                                        td { (e.outcome) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page_with(s, status, &title, body))
}

fn credential_section(d: &ContainerDetails) -> Markup {
    let rec = &d.record;
    let set = |v: &Option<String>| if v.is_some() { "configured" } else { "not set" };
    html! {
        section aria-labelledby="cred-h" {
            h2 id="cred-h" { "Credential" }
            dl class="facts" {
                @match rec.kind {
                    CredentialKind::Oauth2Code => {
                        @if let Some(id) = &rec.identity {
                            dt { "Signed in as" }
                            dd { (id.user_name.as_deref().unwrap_or(&id.user_id)) }
                            dt { "Identity" }
                            dd { code { (id.single_instance_id.clone().unwrap_or_else(|| id.user_id.clone())) } }
                            dt { "Authorized" } dd { (when(id.authorized_at_ms)) }
                        } @else {
                            dt { "Authorization" } dd { "not authorized yet" }
                        }
                        dt { "Refresh token" }
                        dd { (if d.chain.as_ref().is_some_and(|c| c.sealed_refresh_token.is_some()) { "configured" } else { "not set" }) }
                    }
                    _ => {
                        dt { "Username" } dd { (rec.username.as_deref().unwrap_or("not set")) }
                        dt { "Password" } dd { (set(&rec.sealed_password)) }
                        dt { "API token" } dd { (set(&rec.sealed_api_token)) }
                        dt { "Client id" } dd { (rec.client_id.as_deref().unwrap_or("not set")) }
                        dt { "Client secret" } dd { (set(&rec.sealed_client_secret)) }
                    }
                }
                @if !d.missing.is_empty() { dt { "Still needed" } dd { (d.missing.join(", ")) } }
            }
        }
    }
}

fn authorize_section(s: &Signed, c: &ContainerRef, d: &ContainerDetails) -> Markup {
    let action = format!("{}/authorize", container_url(c));
    let authorized = d.record.identity.is_some();
    html! {
        section aria-labelledby="authz-h" {
            h2 id="authz-h" { "Authorization" }
            form method="post" action=(action) class="inline" {
                (s.csrf_field())
                input type="hidden" name="replace_user" value="false";
                button type="submit" { (if authorized { "Renew authorization" } else { "Authorize" }) }
            }
            @if authorized {
                p class="hint" id="replace-hint" {
                    "Signing in as another user replaces the container's user (for example a colleague who left). "
                    "The provider's sign-in page opens; sign in there as the new user."
                }
                form method="post" action=(action) class="inline" {
                    (s.csrf_field())
                    input type="hidden" name="replace_user" value="true";
                    button type="submit" aria-describedby="replace-hint" { "Sign in as another user" }
                }
            }
        }
    }
}

fn recovery_section(app: &AppState, s: &Signed, c: &ContainerRef, d: &ContainerDetails, f: &Forms) -> Markup {
    let stored = d.recovery.as_ref().and_then(|r| r.as_ref());
    let can_set = s.allowed(app, Action::SetAutoRecovery, Some(c.org.as_str()));
    let can_delete = s.allowed(app, Action::DeleteAutoRecovery, Some(c.org.as_str()));
    let today = app.clock.now_ms();
    let days_value =
        if f.recovery_days.is_empty() { DEFAULT_RETENTION_DAYS.to_string() } else { f.recovery_days.clone() };
    let default_until = when(today + i64::from(DEFAULT_RETENTION_DAYS) * 86_400_000);
    let e = &f.recovery_errors;
    html! {
        section aria-labelledby="recovery-h" {
            h2 id="recovery-h" { "Auto-recovery" }
            @match stored {
                Some(r) => {
                    p {
                        "Stored" @if r.sealed_totp.is_some() { " with a TOTP secret" }
                        ", kept " (r.retention_days) " days, until " strong { (when(r.expires_at_ms)) } "."
                    }
                    @if let Some(why) = &r.stopped { p class="error" { "Stopped: " (why) ". Store new credentials to restart it." } }
                }
                None => p { "No auto-recovery credentials stored." }
            }
            @if can_set {
                form method="post" action=(format!("{}/auto-recovery", container_url(c))) {
                    (s.csrf_field())
                    (input("rec", "username", "Username at the provider", "text", &f.recovery_username, e, None))
                    (input("rec", "password", "Password", "password", "", e, None))
                    (input("rec", "totp", "TOTP secret or otpauth:// URI (optional)", "password", "", e,
                        Some("The base32 secret of the two-step sign-in, or the otpauth://totp/… URI from its QR code.")))
                    (input("rec", "retention_days", "Keep for (days, 1–90)", "number", &days_value, e,
                        Some(&format!("Deleted automatically when this ends; {DEFAULT_RETENTION_DAYS} days from now is {default_until}."))))
                    button type="submit" { "Store auto-recovery credentials" }
                }
            }
            @if stored.is_some() && can_delete {
                form method="post" action=(format!("{}/auto-recovery/delete", container_url(c))) {
                    (s.csrf_field())
                    button type="submit" { "Delete auto-recovery credentials" }
                }
            }
        }
    }
}

/// The credential fields a kind takes in the console's form.
fn credential_fields(kind: CredentialKind) -> &'static [(&'static str, &'static str, &'static str)] {
    match kind {
        CredentialKind::Password | CredentialKind::Oauth2Password => {
            &[("username", "Username", "text"), ("password", "Password", "password")]
        }
        CredentialKind::ApiToken => {
            &[("username", "Username (where the provider uses one)", "text"), ("api_token", "API token", "password")]
        }
        CredentialKind::Oauth2ClientCredentials => {
            &[("client_id", "Client id", "text"), ("client_secret", "Client secret", "password")]
        }
        CredentialKind::Oauth2Code => &[],
    }
}

fn credential_form(s: &Signed, c: &ContainerRef, d: &ContainerDetails, f: &Forms) -> Markup {
    html! {
        section aria-labelledby="cred-form-h" {
            h2 id="cred-form-h" { "Change the credential" }
            p class="hint" { "Fields left empty keep what is stored." }
            form method="post" action=(format!("{}/credentials", container_url(c))) {
                (s.csrf_field())
                @for (name, label, kind) in credential_fields(d.record.kind) {
                    @let value = match *name { "username" => f.cred_username.as_str(), "client_id" => f.cred_client_id.as_str(), _ => "" };
                    (input("cred", name, label, kind, value, &f.cred_errors, None))
                }
                (super::field_error("cred-form-error", f.cred_errors.get("form")))
                button type="submit" { "Save credential" }
            }
        }
    }
}

/// `POST …/authorize`: starts the authorization, then a page that sends the browser on to the provider. Not a 303:
/// Chromium applies the CSP's `form-action 'self'` to a form's redirects too, so the provider is reached by a link
/// (followed at once by `console.js`, or by a click without script).
pub async fn authorize(State(app): State<AppState>, s: Signed, Path(names): Path<Names>, body: Bytes) -> PageResult {
    let f = s.form(&body)?;
    s.require(&app, Action::Authorize, Some(&names.0))?;
    let c = container_ref(&s, &names)?;
    let replace_user = f.get("replace_user") == "true";
    let d = app.containers.details(&c).await.map_err(|e| problem_page(&s, e))?;
    let started = app.authorization.start(&c, &s.session.sub, replace_user).await.map_err(|e| problem_page(&s, e))?;
    let provider = d
        .record
        .provider
        .as_deref()
        .map(|p| {
            app.config.provider(p).and_then(|profile| profile.display_name.clone()).unwrap_or_else(|| p.to_string())
        })
        .unwrap_or_else(|| "the provider".to_string());
    Ok(leave_for(&s, &provider, &started.authorize_url, replace_user))
}

/// The page that hands the browser over to the provider's sign-in.
fn leave_for(s: &Signed, provider: &str, url: &str, replace_user: bool) -> axum::response::Response {
    let title = format!("Sign in at {provider}");
    let body = html! {
        h1 { (title) }
        p {
            @if replace_user { "Sign in as the user who should take over this container. " }
            @else { "Sign in as the container's user to renew its authorization. " }
            "You come back here when you are done."
        }
        p { a id="continue" href=(url) data-autofollow="true" { "Continue to " (provider) } }
    };
    super::page(s, &title, body)
}

/// `POST …/auto-recovery`.
pub async fn recovery(State(app): State<AppState>, s: Signed, Path(names): Path<Names>, body: Bytes) -> PageResult {
    let f = s.form(&body)?;
    s.require(&app, Action::SetAutoRecovery, Some(&names.0))?;
    let c = container_ref(&s, &names)?;
    let (username, password, totp, days) =
        (f.get("username"), f.raw("password"), f.get("totp"), f.get("retention_days"));
    let mut forms = Forms {
        recovery_username: username.chars().take(MAX_FIELD).collect(),
        recovery_days: days.chars().take(10).collect(),
        ..Forms::default()
    };
    let e = &mut forms.recovery_errors;
    e.required("username", username, MAX_FIELD);
    e.required("password", password, MAX_FIELD);
    if totp.chars().count() > MAX_FIELD {
        e.add("totp", format!("At most {MAX_FIELD} characters."));
    }
    let retention = match days.parse::<u32>() {
        Ok(n) if (1..=90).contains(&n) => Some(n),
        _ => {
            e.add("retention_days", "Give a number of days from 1 to 90.");
            None
        }
    };
    if !e.is_empty() {
        return render(&app, &s, &names, &forms, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let given = RecoveryCredentials {
        username: SecretString::from(username.to_string()),
        password: SecretString::from(password.to_string()),
        totp_secret: (!totp.is_empty()).then(|| SecretString::from(totp.to_string())),
        retention_days: retention,
    };
    match app.recovery.store_credentials(&s.session.sub, &c, given).await {
        Ok(_) => Ok(see_other(&container_url(&c))),
        Err(RecoveryError::InvalidTotp(_)) => {
            forms.recovery_errors.add(
                "totp",
                "This is not a TOTP secret: give the base32 secret (letters A–Z and digits 2–7) or an otpauth://totp/ URI.",
            );
            render(&app, &s, &names, &forms, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(RecoveryError::InvalidRetention) => {
            forms.recovery_errors.add("retention_days", "Give a number of days from 1 to 90.");
            render(&app, &s, &names, &forms, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(e) => Err(problem_page(&s, e).into()),
    }
}

/// `POST …/auto-recovery/delete`.
pub async fn recovery_delete(
    State(app): State<AppState>,
    s: Signed,
    Path(names): Path<Names>,
    body: Bytes,
) -> PageResult {
    s.form(&body)?;
    s.require(&app, Action::DeleteAutoRecovery, Some(&names.0))?;
    let c = container_ref(&s, &names)?;
    app.recovery.delete_credentials(&s.session.sub, &c).await.map_err(|e| problem_page(&s, e))?;
    Ok(see_other(&container_url(&c)))
}

/// `POST …/credentials`.
pub async fn credentials(State(app): State<AppState>, s: Signed, Path(names): Path<Names>, body: Bytes) -> PageResult {
    let f = s.form(&body)?;
    s.require(&app, Action::SetCredentials, Some(&names.0))?;
    let c = container_ref(&s, &names)?;
    let d = app.containers.details(&c).await.map_err(|e| problem_page(&s, e))?;
    let mut forms = Forms {
        cred_username: f.get("username").chars().take(MAX_FIELD).collect(),
        cred_client_id: f.get("client_id").chars().take(MAX_FIELD).collect(),
        ..Forms::default()
    };
    let fields = credential_fields(d.record.kind);
    let mut any = false;
    for (name, _, _) in fields {
        let v = if *name == "username" || *name == "client_id" { f.get(name) } else { f.raw(name) };
        if v.chars().count() > MAX_FIELD {
            forms.cred_errors.add(name, format!("At most {MAX_FIELD} characters."));
        }
        any |= !v.is_empty();
    }
    if !any {
        let first = fields.first().map_or("form", |(n, _, _)| *n);
        forms.cred_errors.add(first, "Fill in at least one field.");
    }
    if !forms.cred_errors.is_empty() {
        return render(&app, &s, &names, &forms, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let text = |n: &str| Some(f.get(n).to_string()).filter(|v| !v.is_empty());
    let secret = |n: &str| Some(f.raw(n).to_string()).filter(|v| !v.is_empty()).map(SecretString::from);
    let takes = |n: &str| fields.iter().any(|(name, _, _)| *name == n);
    let given = Credentials {
        username: text("username").filter(|_| takes("username")),
        password: secret("password").filter(|_| takes("password")),
        api_token: secret("api_token").filter(|_| takes("api_token")),
        client_id: text("client_id").filter(|_| takes("client_id")),
        client_secret: secret("client_secret").filter(|_| takes("client_secret")),
    };
    use crate::app::containers::ContainerError as E;
    match app.containers.set_credentials(&s.session.sub, &c, given).await {
        Ok(_) => Ok(see_other(&container_url(&c))),
        Err(E::FieldNotAllowed { field, .. }) => {
            let name = fields.iter().map(|(n, _, _)| *n).find(|n| *n == field).unwrap_or("form");
            forms.cred_errors.add(name, "This container does not take this field.");
            render(&app, &s, &names, &forms, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(e) => Err(problem_page(&s, e).into()),
    }
}
