//! Starting an authorization (`POST …/authorize`) and completing it (`GET /v1/callback`).

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::extract::{Caller, Names};
use super::manage::{load_container, remove_container};
use crate::app::Services;
use crate::audit;
use crate::clock::rfc3339;
use crate::ids::{ContainerRef, random_id};
use crate::keys::{ContainerFields, Field};
use crate::problem::Problem;
use crate::provider::oauth::{self, Grant, TokenError};
use crate::records::*;
use crate::store::{Condition, Put, StoreError, WriteOp};

pub async fn start(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
) -> Result<Json<serde_json::Value>, Problem> {
    let c = names.container()?;
    let (url, _) = begin(&s, &c, &who.sub).await?;
    let state = url::Url::parse(&url)
        .ok()
        .and_then(|u| u.query_pairs().find(|(k, _)| k == "state").map(|(_, v)| v.to_string()))
        .unwrap_or_default();
    let expires_at_ms = s.clock.now_ms() + s.config.server.authorization_ttl_s as i64 * 1000;
    audit::record(&s, &c.org, &who.sub, "authorization.start", Some(&c), "ok", None).await;
    Ok(Json(json!({"authorize_url": url, "state": state, "expires_at": rfc3339(expires_at_ms)})))
}

/// Starts an authorization of `c`: a single-use expiring `state` bound to the container, PKCE where the
/// profile uses it. Returns the provider's authorize URL and the redirect URI it will come back to.
pub async fn begin(s: &Services, c: &ContainerRef, started_by: &str) -> Result<(String, String), Problem> {
    let (rec, _) = load_container(s, c).await?;
    if rec.kind != CredentialKind::Oauth2Code {
        return Err(Problem::bad_request(
            "not_an_authorization_container",
            format!("{c} uses {:?} credentials; set them with PUT …/credentials.", rec.kind),
        ));
    }
    let provider = rec.provider.clone().unwrap_or_default();
    let profile = s.config.provider(&provider).ok_or_else(|| {
        Problem::conflict("unknown_provider", format!("Provider '{provider}' is no longer configured."))
    })?;
    let app = s.secrets.app(&provider).await.map_err(|e| Problem::internal(&e))?.ok_or_else(|| {
        Problem::conflict("app_not_configured", format!("No app registration for provider '{provider}': add [apps.{provider}] with client_id, client_secret and redirect_uri to the config."))
    })?;
    let state = random_id();
    let now = s.clock.now_ms();
    let (verifier, challenge) = if profile.pkce {
        let (v, ch) = oauth::pkce_pair();
        (Some(v), Some(ch))
    } else {
        (None, None)
    };
    let sealed_pkce_verifier = match &verifier {
        Some(v) => Some(s.vault.seal(&ContainerFields::of(c).context(Field::PkceVerifier), v.as_bytes()).await?),
        None => None,
    };
    let expires_at_ms = now + s.config.server.authorization_ttl_s as i64 * 1000;
    let authz = AuthzRecord {
        container: c.clone(),
        provider: provider.clone(),
        sealed_pkce_verifier,
        redirect_uri: app.redirect_uri.clone(),
        started_by: started_by.to_string(),
        created_at_ms: now,
        expires_at_ms,
    };
    s.store.put(Put::new(authz_key(&state), encode(&authz), Condition::Absent).expires_at(Some(expires_at_ms))).await?;
    let mut url = url::Url::parse(&profile.authorize_url).map_err(|e| Problem::internal(&e))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code");
        q.append_pair("client_id", &app.client_id);
        q.append_pair("redirect_uri", &app.redirect_uri);
        q.append_pair("state", &state);
        if !rec.scopes.is_empty() {
            q.append_pair("scope", &rec.scopes.join(" "));
        }
        if let Some(ch) = &challenge {
            q.append_pair("code_challenge", ch);
            q.append_pair("code_challenge_method", "S256");
        }
        for (k, v) in &profile.extra_authorize_params {
            q.append_pair(k, v);
        }
    }
    Ok((url.to_string(), app.redirect_uri.clone()))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub async fn callback(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<CallbackQuery>) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
    match complete_with(
        &s,
        q.code,
        q.state,
        q.error.map(|e| format!("{e} {}", q.error_description.unwrap_or_default())),
        None,
    )
    .await
    {
        Ok(done) => {
            if wants_json {
                Json(done).into_response()
            } else {
                let text = format!(
                    "<!doctype html><meta charset=utf-8><title>chainkeeper</title><h1>Authorization complete</h1><p>Container <b>{}</b> of database <b>{}</b> now signs in as <b>{}</b>. You can close this window.</p>",
                    html_escape(done["alias"].as_str().unwrap_or("")),
                    html_escape(done["database"].as_str().unwrap_or("")),
                    html_escape(done["user_name"].as_str().or(done["user_id"].as_str()).unwrap_or("")),
                );
                Html(text).into_response()
            }
        }
        Err(p) => p.into_response(),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Completes an authorization from the provider's redirect (`code`, `state`, or `error`). With `expect_user`
/// (auto-recovery), a different user than expected is refused before anything is stored.
pub async fn complete_with(
    s: &Services,
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    expect_user: Option<&str>,
) -> Result<serde_json::Value, Problem> {
    let state = state.filter(|v| !v.is_empty() && v.len() <= 200).ok_or_else(|| {
        Problem::bad_request(
            "authorization_state_missing",
            "The callback has no `state`. Start the authorization again with POST …/authorize.",
        )
    })?;
    let key = authz_key(&state);
    let item = s.store.get(&key).await?.ok_or_else(|| {
        Problem::bad_request(
            "authorization_state_invalid",
            "This sign-in link is unknown or has expired. Start the authorization again with POST …/authorize.",
        )
    })?;
    // Single use: whoever deletes it first completes the authorization.
    match s.store.delete(&key, Condition::Version(item.version)).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            return Err(Problem::bad_request(
                "authorization_state_used",
                "This sign-in link was already used. Start a new authorization.",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let authz: AuthzRecord = decode(&item)?;
    let c = authz.container.clone();
    if let Some(err) = error {
        let said: String = err.trim().chars().take(200).collect();
        audit::record(s, &c.org, &authz.started_by, "authorization.complete", Some(&c), "denied", Some(said.clone()))
            .await;
        return Err(Problem::bad_request(
            "authorization_denied",
            format!("The provider did not authorize {c}: {said}. Start again and allow access."),
        ));
    }
    let code = code.filter(|v| !v.is_empty()).ok_or_else(|| {
        Problem::bad_request("authorization_code_missing", "The callback has no `code`. Start the authorization again.")
    })?;
    let (rec, version) = load_container(s, &c).await?;
    let profile = s
        .config
        .provider(&authz.provider)
        .ok_or_else(|| Problem::conflict("unknown_provider", "The container's provider is no longer configured."))?
        .clone();
    let app = s.secrets.app(&profile.name).await.map_err(|e| Problem::internal(&e))?.ok_or_else(|| {
        Problem::conflict("app_not_configured", format!("No app registration for provider '{}'.", profile.name))
    })?;
    let verifier = match &authz.sealed_pkce_verifier {
        Some(v) => Some(s.vault.open_string(&ContainerFields::of(&c).context(Field::PkceVerifier), v).await?),
        None => None,
    };
    let timeout = Duration::from_secs_f64(s.config.engine.token_timeout_s);
    let grant = Grant::AuthorizationCode {
        code: &code,
        redirect_uri: &authz.redirect_uri,
        pkce_verifier: verifier.as_ref().map(|v| v.expose_secret()),
    };
    let tokens = oauth::request_token(&s.http, &profile, &app, grant, timeout).await.map_err(|e| match &e {
        TokenError::Transient { .. } | TokenError::Lost(_) => Problem::unavailable(
            "provider_unavailable",
            format!(
                "The provider did not answer the code exchange for {c}. Start the authorization again in a minute."
            ),
            30,
        ),
        TokenError::InvalidClient(_) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "invalid_client",
            format!(
                "The provider refused chainkeeper's app registration for '{}'. Check client_id and client_secret.",
                profile.name
            ),
        ),
        _ => Problem::bad_request(
            "authorization_code_rejected",
            format!("The provider refused the sign-in code for {c} ({e}). Start the authorization again."),
        ),
    })?;
    // Who signed in?
    let (user_id, user_name) = match &profile.identity {
        Some(_) => oauth::fetch_identity(&s.http, &profile, &tokens.access_token, timeout).await.map_err(|e| {
            tracing::warn!(error = %e, "identity lookup failed");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "identity_unavailable",
                format!("Could not read who signed in at the provider for {c}. Start the authorization again."),
            )
        })?,
        None => (String::from("unknown"), None),
    };
    if let Some(expected) = expect_user.filter(|e| *e != user_id) {
        audit::record(
            s,
            &c.org,
            &authz.started_by,
            "authorization.complete",
            Some(&c),
            "wrong_identity",
            Some(format!("signed in as {user_id}, expected {expected}")),
        )
        .await;
        return Err(Problem::conflict(
            "recovery_wrong_identity",
            format!(
                "Auto-recovery signed in as a different user than {c} uses; nothing was stored. Store the recovery credentials of the container's own user."
            ),
        ));
    }
    let now = s.clock.now_ms();
    let single_instance_id = profile.single_instance.then(|| single_instance_id(&app.client_id, &user_id));

    if let Some(sid) = &single_instance_id
        && let Some(holder_item) = s.store.get(&ident_key(sid)).await?
    {
        let holder: IdentRecord = decode(&holder_item)?;
        if holder.container != c {
            return refuse_second_instance(s, &authz, &rec, version, holder, sid, &tokens).await;
        }
    }
    // Register the identifier, release the previous one (another user), and update the container, together.
    let mut updated = rec.clone();
    updated.identity = Some(IdentityInfo {
        user_id: user_id.clone(),
        user_name: user_name.clone(),
        single_instance_id: single_instance_id.clone(),
        authorized_at_ms: now,
    });
    updated.updated_at_ms = now;
    let mut ops = vec![WriteOp::Put(Put::new(container_key(&c), encode(&updated), Condition::Version(version)))];
    let previous_sid = rec.identity.as_ref().and_then(|i| i.single_instance_id.clone());
    if let Some(previous) = previous_sid.as_ref().filter(|p| Some(*p) != single_instance_id.as_ref()) {
        ops.push(WriteOp::Delete { key: ident_key(previous), condition: Condition::None });
    }
    if let Some(sid) = &single_instance_id {
        ops.push(WriteOp::Put(Put::new(
            ident_key(sid),
            encode(&IdentRecord { container: c.clone(), since_ms: now }),
            Condition::None,
        )));
    }
    s.store.transact(ops).await?;
    s.engine.install(&c, &profile.name, &tokens).await.map_err(|e| Problem::internal(&e))?;
    audit::record(
        s,
        &c.org,
        &authz.started_by,
        "authorization.complete",
        Some(&c),
        "ok",
        Some(format!("user {user_id}")),
    )
    .await;
    Ok(json!({
        "alias": c.alias, "database": c.db, "status": "healthy",
        "user_id": user_id, "user_name": user_name, "single_instance_id": single_instance_id,
    }))
}

/// A second container for one `client_id#user_id`: refused. The provider has just invalidated the holder's
/// refresh token, so the fresh tokens go to the holder (same app, same user) and it keeps working.
async fn refuse_second_instance(
    s: &Services,
    authz: &AuthzRecord,
    rec: &ContainerRecord,
    version: u64,
    holder: IdentRecord,
    sid: &str,
    tokens: &oauth::TokenSet,
) -> Result<serde_json::Value, Problem> {
    let c: &ContainerRef = &authz.container;
    let handed_over = s.engine.install(&holder.container, &authz.provider, tokens).await.is_ok();
    let never_authorized = s.engine.chain(c).await.map_err(|e| Problem::internal(&e))?.is_none();
    let mut removed = String::new();
    if never_authorized {
        remove_container(s, rec, version).await?;
        removed = format!(" The new container '{}' was removed", c.alias);
        let rest = s.store.query(&org_pk(&c.org), &containers_of_db_prefix(&c.db), 1).await?;
        if rest.is_empty() {
            s.store.delete(&db_key(&c.org, &c.db), Condition::None).await?;
            removed.push_str(&format!(", and its database '{}', which had no other container", c.db));
        }
        removed.push('.');
    }
    audit::record(
        s,
        &c.org,
        &authz.started_by,
        "authorization.complete",
        Some(c),
        "refused_single_instance",
        Some(format!("identifier {sid} is held by another container")),
    )
    .await;
    audit::record(
        s,
        &holder.container.org,
        "chainkeeper",
        "chain.handover",
        Some(&holder.container),
        if handed_over { "ok" } else { "failed" },
        Some(format!("identifier {sid} was authorized again elsewhere; this container received the new tokens")),
    )
    .await;
    Err(Problem::conflict(
        "single_instance_conflict",
        format!(
            "There can be at most one container in all organisations with the single-instance authentication identifier '{sid}'. Another container holds it and keeps working with the new sign-in.{removed} Delete the other container first, or sign in with another user or app."
        ),
    ))
}
