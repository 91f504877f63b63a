//! API tokens of an organisation: issue, list, revoke. A revoked token is refused by the auth middleware on
//! its next request, in every process (the revocation is a store item, checked on every request).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use super::manage::load_org;
use crate::audit;
use crate::auth::{Claims, issue};
use crate::clock::rfc3339;
use crate::ids::random_id;
use crate::problem::Problem;
use crate::records::{API_TOKENS_PREFIX, api_token_key, decode, encode, org_pk, revoked_key};
use crate::store::{Condition, Put};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub issued_by: String,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    subject: String,
    scopes: Vec<String>,
    /// Seconds the token is valid; default 90 days, at most 2 years.
    #[serde(default)]
    expires_in_s: Option<u64>,
}

fn view(t: &ApiTokenRecord) -> Value {
    json!({
        "id": t.id, "subject": t.subject, "scopes": t.scopes, "issued_by": t.issued_by,
        "issued_at": rfc3339(t.issued_at_ms), "expires_at": rfc3339(t.expires_at_ms),
        "revoked_at": t.revoked_at_ms.map(rfc3339),
    })
}

pub async fn create(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<NewToken>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    load_org(&s, &names.org).await?;
    if b.scopes.is_empty()
        || b.scopes.iter().any(|sc| sc.is_empty() || sc.len() > 80 || sc.contains(char::is_whitespace))
    {
        return Err(Problem::bad_request(
            "invalid_scopes",
            "Give one or more scopes such as `containers.read`, `tokens.readwrite` or `admin`.",
        ));
    }
    // Nobody hands out more than they hold.
    let holds_admin = who.scopes.iter().any(|s| s == "admin");
    if !holds_admin && let Some(extra) = b.scopes.iter().find(|sc| !who.scopes.contains(sc)) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "scope_escalation",
            format!("Your API token does not hold `{extra}`, so it cannot grant it."),
        ));
    }
    let ttl = b.expires_in_s.unwrap_or(90 * 86_400).clamp(60, 2 * 365 * 86_400);
    let now = s.clock.now_ms();
    let id = random_id();
    let claims = Claims {
        sub: b.subject.chars().take(120).collect(),
        org: Some(names.org.to_string()),
        scopes: b.scopes.clone(),
        exp: now / 1000 + ttl as i64,
        iat: now / 1000,
        jti: id.clone(),
    };
    let key = s.secrets.signing_key().await.map_err(|e| Problem::internal(&e))?;
    let token = issue(&key, &claims).map_err(|e| Problem::internal(&e))?;
    let rec = ApiTokenRecord {
        id: id.clone(),
        subject: claims.sub.clone(),
        scopes: b.scopes,
        issued_by: who.sub.clone(),
        issued_at_ms: now,
        expires_at_ms: claims.exp * 1000,
        revoked_at_ms: None,
    };
    s.store
        .put(
            Put::new(api_token_key(&names.org, &id), encode(&rec), Condition::Absent)
                .expires_at(Some(rec.expires_at_ms)),
        )
        .await?;
    audit::record(
        &s,
        &names.org,
        &who.sub,
        "api_token.issue",
        None,
        "ok",
        Some(format!("id {id} for {}", rec.subject)),
    )
    .await;
    let mut body = view(&rec);
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(State(s): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    load_org(&s, &names.org).await?;
    let items = s.store.query(&org_pk(&names.org), API_TOKENS_PREFIX, 10_000).await?;
    let list: Vec<Value> =
        items.iter().map(|i| decode::<ApiTokenRecord>(i).map(|t| view(&t))).collect::<Result<_, _>>()?;
    Ok(Json(json!({ "api_tokens": list })))
}

/// The marker that makes every process refuse a token, kept until the token would have expired anyway.
fn revocation_marker(rec: &ApiTokenRecord) -> Put {
    Put::new(revoked_key(&rec.id), Vec::new(), Condition::None).expires_at(Some(rec.expires_at_ms + 60_000))
}

/// Revokes every API token issued for the organisation through the API (when the organisation is deleted, so
/// that a later organisation of the same name does not inherit them). Returns how many were revoked.
pub(crate) async fn revoke_all(s: &crate::app::Services, org: &crate::ids::OrgId) -> Result<usize, Problem> {
    let now = s.clock.now_ms();
    let mut n = 0;
    for item in s.store.query(&org_pk(org), API_TOKENS_PREFIX, 100_000).await? {
        let rec: ApiTokenRecord = decode(&item)?;
        if rec.expires_at_ms > now {
            s.store.put(revocation_marker(&rec)).await?;
            n += 1;
        }
        s.store.delete(&item.key, Condition::None).await?;
    }
    Ok(n)
}

pub async fn revoke(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Path(params): Path<std::collections::HashMap<String, String>>,
) -> Result<StatusCode, Problem> {
    load_org(&s, &names.org).await?;
    let id = params.get("id").cloned().unwrap_or_default();
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(Problem::bad_request("invalid_token_id", "That is not an API token id (see GET …/api-tokens)."));
    }
    let now = s.clock.now_ms();
    let key = api_token_key(&names.org, &id);
    let Some(item) = s.store.get(&key).await? else {
        return Err(Problem::not_found(
            "api_token_not_found",
            format!("Organisation '{}' has no API token '{id}'.", names.org),
        ));
    };
    let mut rec: ApiTokenRecord = decode(&item)?;
    // The revocation marker first: from this write on, every process refuses the token.
    s.store.put(revocation_marker(&rec)).await?;
    rec.revoked_at_ms.get_or_insert(now);
    s.store.put(Put::new(key, encode(&rec), Condition::None).expires_at(Some(rec.expires_at_ms))).await?;
    audit::record(&s, &names.org, &who.sub, "api_token.revoke", None, "ok", Some(format!("id {id}"))).await;
    Ok(StatusCode::NO_CONTENT)
}
