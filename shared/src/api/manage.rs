//! Organisations, databases, containers, credentials, repairs and the audit log.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Body, Caller, Names};
use crate::app::Services;
use crate::audit;
use crate::chain::RepairCode;
use crate::clock::rfc3339;
use crate::ids::{Alias, ContainerRef, DbName, OrgId};
use crate::keys::{ContainerFields, Field, org_context};
use crate::problem::Problem;
use crate::records::*;
use crate::store::{Condition, Index, Put, WriteOp};

type Created = (StatusCode, Json<Value>);

pub(crate) async fn load_org(s: &Services, org: &OrgId) -> Result<OrgRecord, Problem> {
    Ok(load_org_versioned(s, org).await?.0)
}

/// The organisation and its item version; a deleted organisation (tombstone) does not exist.
async fn load_org_versioned(s: &Services, org: &OrgId) -> Result<(OrgRecord, u64), Problem> {
    let not_found = || {
        Problem::not_found(
            "org_not_found",
            format!("Organisation '{org}' does not exist. Create it with POST /v1/orgs."),
        )
    };
    let item = s.store.get(&org_key(org)).await?.ok_or_else(not_found)?;
    let rec: OrgRecord = decode(&item)?;
    if rec.deleted_at_ms.is_some() {
        return Err(not_found());
    }
    Ok((rec, item.version))
}

pub(crate) async fn load_db(s: &Services, org: &OrgId, db: &DbName) -> Result<DbRecord, Problem> {
    load_org(s, org).await?;
    let item = s.store.get(&db_key(org, db)).await?.ok_or_else(|| {
        Problem::not_found("database_not_found", format!("Database '{db}' does not exist in organisation '{org}'."))
    })?;
    Ok(decode(&item)?)
}

pub(crate) async fn load_container(s: &Services, c: &ContainerRef) -> Result<(ContainerRecord, u64), Problem> {
    load_db(s, &c.org, &c.db).await?;
    let item = s.store.get(&container_key(c)).await?.ok_or_else(|| {
        Problem::not_found(
            "container_not_found",
            format!("There is no container with alias '{}' in database '{}'.", c.alias, c.db),
        )
    })?;
    Ok((decode(&item)?, item.version))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrg {
    name: String,
    #[serde(default)]
    display_name: Option<String>,
}

pub async fn create_org(
    State(s): State<AppState>,
    Caller(who): Caller,
    Body(b): Body<NewOrg>,
) -> Result<Created, Problem> {
    let org = OrgId::parse(&b.name)?;
    // Look before making a key, so that a taken or retired name does not leave an orphan key behind.
    if let Some(item) = s.store.get(&org_key(&org)).await? {
        return Err(org_name_taken(&org, &decode(&item)?));
    }
    s.vault.keys().create_org_key(org.as_str()).await?;
    let rec = OrgRecord {
        name: org.clone(),
        display_name: b.display_name,
        created_at_ms: s.clock.now_ms(),
        webhook_url: None,
        sealed_webhook_secret: None,
        deleted_at_ms: None,
    };
    let ops = vec![
        WriteOp::Put(Put::new(org_key(&org), encode(&rec), Condition::Absent)),
        WriteOp::Put(Put::new(org_list_key(&org), Vec::new(), Condition::None)),
    ];
    match s.store.transact(ops).await {
        Ok(()) => {}
        Err(crate::store::StoreError::Conflict) => {
            return Err(Problem::conflict("org_exists", format!("Organisation '{org}' already exists.")));
        }
        Err(e) => return Err(e.into()),
    }
    audit::record(&s, &org, &who.sub, "org.create", None, "ok", None).await;
    Ok((StatusCode::CREATED, Json(org_view(&rec))))
}

/// Deletes an empty organisation (platform token only): its API tokens are revoked, its record becomes a
/// tombstone (the name is retired), and its key is destroyed (KMS: scheduled for deletion), so whatever sealed
/// data remained anywhere can no longer be opened.
pub async fn delete_org(State(s): State<AppState>, Caller(who): Caller, names: Names) -> Result<StatusCode, Problem> {
    // Platform tokens only: the auth middleware refuses organisation tokens (RouteSpec::platform_only).
    let org = &names.org;
    let (mut rec, version) = load_org_versioned(&s, org).await?;
    if !s.store.query(&org_pk(org), DATABASES_PREFIX, 1).await?.is_empty() {
        return Err(Problem::conflict(
            "org_not_empty",
            format!("Organisation '{org}' still has databases. Delete its containers and databases first."),
        ));
    }
    let revoked = super::tokens::revoke_all(&s, org).await?;
    rec.deleted_at_ms = Some(s.clock.now_ms());
    rec.webhook_url = None;
    rec.sealed_webhook_secret = None;
    s.store
        .transact(vec![
            WriteOp::Put(Put::new(org_key(org), encode(&rec), Condition::Version(version))),
            WriteOp::Delete { key: org_list_key(org), condition: Condition::None },
        ])
        .await?;
    s.vault.keys().delete_org_key(org.as_str()).await?;
    s.vault.forget_all();
    audit::record(
        &s,
        org,
        &who.sub,
        "org.delete",
        None,
        "ok",
        Some(format!("key destroyed, {revoked} API tokens revoked")),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

fn org_name_taken(org: &OrgId, existing: &OrgRecord) -> Problem {
    match existing.deleted_at_ms {
        Some(at) => Problem::conflict(
            "org_name_retired",
            format!(
                "The name '{org}' belonged to an organisation deleted at {}. Names are never reused, so that its API tokens \
                 and audit trail cannot reach a new owner. Choose another name.",
                rfc3339(at)
            ),
        ),
        None => Problem::conflict("org_exists", format!("Organisation '{org}' already exists.")),
    }
}

fn org_view(o: &OrgRecord) -> Value {
    json!({"name": o.name, "display_name": o.display_name, "created_at": rfc3339(o.created_at_ms), "webhook_url": o.webhook_url})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    url: String,
}

/// Registers (or replaces) the organisation's webhook; the signing secret is returned once.
pub async fn set_webhook(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<Webhook>,
) -> Result<Json<Value>, Problem> {
    let url = url::Url::parse(&b.url)
        .map_err(|_| Problem::bad_request("invalid_webhook_url", "The webhook URL is not an absolute URL."))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() || !url.username().is_empty() {
        return Err(Problem::bad_request(
            "invalid_webhook_url",
            "The webhook URL must be http(s)://host/path, without credentials.",
        ));
    }
    if !s.config.server.webhook_allow_private_networks && is_private_host(&url) {
        return Err(Problem::bad_request(
            "invalid_webhook_url",
            "Webhooks to loopback or private addresses are refused (set server.webhook_allow_private_networks to allow them).",
        ));
    }
    let (mut rec, version) = load_org_versioned(&s, &names.org).await?;
    use base64::Engine;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    rec.sealed_webhook_secret =
        Some(s.vault.seal(&org_context(&names.org, Field::WebhookSecret), secret.as_bytes()).await?);
    rec.webhook_url = Some(url.to_string());
    s.store.put(Put::new(org_key(&names.org), encode(&rec), Condition::Version(version))).await?;
    audit::record(&s, &names.org, &who.sub, "webhook.set", None, "ok", Some(url.to_string())).await;
    Ok(Json(
        json!({"url": url.as_str(), "secret": secret, "signature_header": "X-Chainkeeper-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<body>\")>"}),
    ))
}

pub async fn delete_webhook(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
) -> Result<StatusCode, Problem> {
    let (mut rec, version) = load_org_versioned(&s, &names.org).await?;
    rec.webhook_url = None;
    rec.sealed_webhook_secret = None;
    s.store.put(Put::new(org_key(&names.org), encode(&rec), Condition::Version(version))).await?;
    audit::record(&s, &names.org, &who.sub, "webhook.delete", None, "ok", None).await;
    Ok(StatusCode::NO_CONTENT)
}

fn is_private_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") || d.ends_with(".internal")
        }
        None => true,
    }
}

pub async fn get_org(State(s): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    Ok(Json(org_view(&load_org(&s, &names.org).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDb {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

fn db_view(d: &DbRecord) -> Value {
    json!({"name": d.name, "description": d.description, "created_at": rfc3339(d.created_at_ms)})
}

pub async fn create_db(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<NewDb>,
) -> Result<Created, Problem> {
    load_org(&s, &names.org).await?;
    let db = DbName::parse(&b.name)?;
    let rec = DbRecord { name: db.clone(), description: b.description, created_at_ms: s.clock.now_ms() };
    match s.store.put(Put::new(db_key(&names.org, &db), encode(&rec), Condition::Absent)).await {
        Ok(_) => {}
        Err(crate::store::StoreError::Conflict) => {
            return Err(Problem::conflict("database_exists", format!("Database '{db}' already exists.")));
        }
        Err(e) => return Err(e.into()),
    }
    audit::record(&s, &names.org, &who.sub, "database.create", None, "ok", Some(db.to_string())).await;
    Ok((StatusCode::CREATED, Json(db_view(&rec))))
}

pub async fn list_dbs(State(s): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    load_org(&s, &names.org).await?;
    let items = s.store.query(&org_pk(&names.org), DATABASES_PREFIX, 1000).await?;
    let dbs: Vec<Value> = items.iter().map(|i| decode::<DbRecord>(i).map(|d| db_view(&d))).collect::<Result<_, _>>()?;
    Ok(Json(json!({ "databases": dbs })))
}

pub async fn delete_db(State(s): State<AppState>, Caller(who): Caller, names: Names) -> Result<StatusCode, Problem> {
    let db = names.db()?;
    load_db(&s, &names.org, &db).await?;
    let containers = s.store.query(&org_pk(&names.org), &containers_of_db_prefix(&db), 1).await?;
    if !containers.is_empty() {
        return Err(Problem::conflict(
            "database_not_empty",
            format!("Database '{db}' still has containers. Delete them first."),
        ));
    }
    s.store.delete(&db_key(&names.org, &db), Condition::Exists).await?;
    audit::record(&s, &names.org, &who.sub, "database.delete", None, "ok", Some(db.to_string())).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewContainer {
    alias: String,
    kind: CredentialKind,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

pub async fn create_container(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<NewContainer>,
) -> Result<Created, Problem> {
    let db = names.db()?;
    load_db(&s, &names.org, &db).await?;
    let c = ContainerRef { org: names.org.clone(), db, alias: Alias::parse(&b.alias)? };
    let provider = match (b.kind.uses_provider(), b.provider) {
        (true, None) => {
            return Err(Problem::bad_request(
                "provider_required",
                format!("A {:?} container needs `provider`: one of {}.", b.kind, known(&s)),
            ));
        }
        (true, Some(p)) => {
            let profile = s.config.provider(&p).ok_or_else(|| {
                Problem::bad_request(
                    "unknown_provider",
                    format!(
                        "Provider '{}' is not known. Known: {}.",
                        p.chars().take(60).collect::<String>(),
                        known(&s)
                    ),
                )
            })?;
            Some(profile.name.clone())
        }
        (false, p) => p,
    };
    let scopes = b.scopes.unwrap_or_else(|| {
        provider.as_deref().and_then(|p| s.config.provider(p)).map(|p| p.scopes.clone()).unwrap_or_default()
    });
    let now = s.clock.now_ms();
    let rec = ContainerRecord {
        container: c.clone(),
        kind: b.kind,
        provider,
        created_at_ms: now,
        updated_at_ms: now,
        username: None,
        sealed_password: None,
        sealed_api_token: None,
        client_id: None,
        sealed_client_secret: None,
        scopes,
        identity: None,
    };
    match s.store.put(Put::new(container_key(&c), encode(&rec), Condition::Absent)).await {
        Ok(_) => {}
        Err(crate::store::StoreError::Conflict) => {
            return Err(Problem::conflict(
                "container_exists",
                format!("Database '{}' already has a container '{}'.", c.db, c.alias),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    audit::record(&s, &c.org, &who.sub, "container.create", Some(&c), "ok", None).await;
    Ok((StatusCode::CREATED, Json(container_view(&s, &rec, None))))
}

fn known(s: &Services) -> String {
    s.config.providers.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// A container as the API shows it: status and a masked copy of the credential, never a secret.
pub(crate) fn container_view(s: &Services, rec: &ContainerRecord, chain: Option<&ChainRecord>) -> Value {
    let now = s.clock.now_ms();
    let configured = |v: &Option<String>| v.as_ref().map(|_| "configured");
    let mut credential = json!({
        "username": rec.username,
        "password": configured(&rec.sealed_password),
        "api_token": configured(&rec.sealed_api_token),
        "client_id": rec.client_id,
        "client_secret": configured(&rec.sealed_client_secret),
        "scopes": rec.scopes,
    });
    if let Some(id) = &rec.identity {
        credential["user_id"] = json!(id.user_id);
        credential["user_name"] = json!(id.user_name);
        credential["single_instance_id"] = json!(id.single_instance_id);
        credential["authorized_at"] = json!(rfc3339(id.authorized_at_ms));
    }
    let configured_any = rec.sealed_password.is_some()
        || rec.sealed_api_token.is_some()
        || rec.sealed_client_secret.is_some()
        || chain.is_some();
    credential["configured"] = json!(configured_any);
    let status = match chain {
        None if rec.kind == CredentialKind::Oauth2Code => "not_authorized",
        None => {
            if configured_any {
                "healthy"
            } else {
                "not_configured"
            }
        }
        Some(ch) if ch.status == ChainStatus::NeedsRepair => "needs_repair",
        Some(ch) if ch.lease.as_ref().is_some_and(|l| l.until_ms > now) => "refreshing",
        Some(_) => "healthy",
    };
    let mut v = json!({
        "alias": rec.container.alias,
        "database": rec.container.db,
        "kind": rec.kind,
        "provider": rec.provider,
        "status": status,
        "credential": credential,
        "created_at": rfc3339(rec.created_at_ms),
        "updated_at": rfc3339(rec.updated_at_ms),
    });
    if let Some(ch) = chain {
        v["chain"] = json!({
            "access_token_expires_at": ch.access_expires_at_ms.map(rfc3339),
            "last_refresh_at": ch.last_refresh_at_ms.map(rfc3339),
            "refresh_token_issued_at": ch.refresh_token_issued_at_ms.map(rfc3339),
            "refreshes": ch.refresh_count,
            "generation": ch.generation,
            "last_error": ch.last_error.as_ref().map(|e| json!({
                "code": e.code, "at": rfc3339(e.at_ms), "provider_said": e.detail, "remediation": RepairCode::parse(&e.code).remediation()
            })),
            "history": ch.history.iter().map(|t| json!({"at": rfc3339(t.at_ms), "status": t.status, "code": t.code})).collect::<Vec<_>>(),
        });
    }
    v
}

pub async fn get_container(State(s): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    let c = names.container()?;
    let (rec, _) = load_container(&s, &c).await?;
    full_view(&s, &rec).await.map(Json)
}

/// The masked view with the chain and the auto-recovery state (presence and expiry, never a value).
async fn full_view(s: &Services, rec: &ContainerRecord) -> Result<Value, Problem> {
    let chain = s.engine.chain(&rec.container).await.map_err(|e| Problem::internal(&e))?.map(|(ch, _)| ch);
    let mut v = container_view(s, rec, chain.as_ref());
    if rec.kind == CredentialKind::Oauth2Code {
        v["auto_recovery"] = match crate::recover::load(s, &rec.container).await? {
            Some((r, _)) => json!({
                "configured": true, "totp": r.sealed_totp.is_some(), "expires_at": rfc3339(r.expires_at_ms),
                "retention_days": r.retention_days, "stopped": r.stopped,
            }),
            None => json!({"configured": false}),
        };
    }
    Ok(v)
}

pub async fn list_containers(State(s): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    let db = names.db()?;
    load_db(&s, &names.org, &db).await?;
    let items = s.store.query(&org_pk(&names.org), &containers_of_db_prefix(&db), 1000).await?;
    let mut out = Vec::new();
    for item in items {
        let rec: ContainerRecord = decode(&item)?;
        out.push(full_view(&s, &rec).await?);
    }
    Ok(Json(json!({ "containers": out })))
}

pub async fn delete_container(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
) -> Result<StatusCode, Problem> {
    let c = names.container()?;
    let (rec, version) = load_container(&s, &c).await?;
    // Tokens die at the provider first (best effort: an unreachable provider does not keep the container alive).
    let revoked = s.engine.revoke_at_provider(&c).await.map_err(|e| Problem::internal(&e))?;
    remove_container(&s, &rec, version).await?;
    let detail = match revoked {
        Some(true) => Some("tokens revoked at the provider".to_string()),
        Some(false) => Some("revocation at the provider failed; the tokens expire on their own".to_string()),
        None => None,
    };
    audit::record(&s, &c.org, &who.sub, "container.delete", Some(&c), "ok", detail).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a container with its identifier registration, then its chain.
pub(crate) async fn remove_container(s: &Services, rec: &ContainerRecord, version: u64) -> Result<(), Problem> {
    let c = &rec.container;
    let mut ops = vec![WriteOp::Delete { key: container_key(c), condition: Condition::Version(version) }];
    if let Some(sid) = rec.identity.as_ref().and_then(|i| i.single_instance_id.as_ref())
        && let Some(item) = s.store.get(&ident_key(sid)).await?
    {
        let holder: IdentRecord = decode(&item)?;
        if holder.container == *c {
            ops.push(WriteOp::Delete { key: ident_key(sid), condition: Condition::Version(item.version) });
        }
    }
    s.store.transact(ops).await?;
    s.engine.remove(c).await.map_err(|e| Problem::internal(&e))?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<secrecy::SecretString>,
    #[serde(default)]
    api_token: Option<secrecy::SecretString>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<secrecy::SecretString>,
}

pub async fn set_credentials(
    State(s): State<AppState>,
    Caller(who): Caller,
    names: Names,
    Body(b): Body<Credentials>,
) -> Result<Json<Value>, Problem> {
    use secrecy::ExposeSecret;
    let c = names.container()?;
    let (mut rec, version) = load_container(&s, &c).await?;
    let fields = ContainerFields::of(&c);
    let allowed: &[&str] = match rec.kind {
        CredentialKind::Password => &["username", "password"],
        CredentialKind::ApiToken => &["api_token", "password"],
        CredentialKind::Oauth2ClientCredentials => &["client_id", "client_secret", "username", "password"],
        CredentialKind::Oauth2Password => &["username", "password"],
        CredentialKind::Oauth2Code => &[],
    };
    let given: Vec<&str> = [
        ("username", b.username.is_some()),
        ("password", b.password.is_some()),
        ("api_token", b.api_token.is_some()),
        ("client_id", b.client_id.is_some()),
        ("client_secret", b.client_secret.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, set)| set.then_some(n))
    .collect();
    if rec.kind == CredentialKind::Oauth2Code {
        return Err(Problem::bad_request(
            "credentials_not_settable",
            format!("{c} uses an OAuth2 authorization: renew it with POST …/containers/{}/authorize instead.", c.alias),
        ));
    }
    if let Some(bad) = given.iter().find(|g| !allowed.contains(g)) {
        return Err(Problem::bad_request(
            "credential_field_not_allowed",
            format!("A {:?} container does not take `{bad}`; it takes: {}.", rec.kind, allowed.join(", ")),
        ));
    }
    if given.is_empty() {
        return Err(Problem::bad_request(
            "credentials_empty",
            format!("Give at least one of: {}.", allowed.join(", ")),
        ));
    }
    if let Some(u) = b.username {
        rec.username = Some(u);
    }
    // For api_token containers the token may come through the password field (as Yuki and NMBRS users know it).
    let (password, api_token) = match rec.kind {
        CredentialKind::ApiToken => (None, b.api_token.or(b.password)),
        _ => (b.password, b.api_token),
    };
    if let Some(p) = password {
        rec.sealed_password = Some(s.vault.seal(&fields.context(Field::Password), p.expose_secret().as_bytes()).await?);
    }
    if let Some(t) = api_token {
        rec.sealed_api_token =
            Some(s.vault.seal(&fields.context(Field::ApiToken), t.expose_secret().as_bytes()).await?);
    }
    if let Some(id) = b.client_id {
        rec.client_id = Some(id);
    }
    if let Some(sec) = b.client_secret {
        rec.sealed_client_secret =
            Some(s.vault.seal(&fields.context(Field::ClientSecret), sec.expose_secret().as_bytes()).await?);
    }
    rec.updated_at_ms = s.clock.now_ms();
    s.store.put(Put::new(container_key(&c), encode(&rec), Condition::Version(version))).await?;
    if matches!(rec.kind, CredentialKind::Oauth2ClientCredentials | CredentialKind::Oauth2Password) {
        // Tokens of the old credentials (and a `credentials_rejected` state) go; the next call uses the new ones.
        s.engine.remove(&c).await.map_err(|e| Problem::internal(&e))?;
    }
    audit::record(&s, &c.org, &who.sub, "credentials.set", Some(&c), "ok", Some(given.join(","))).await;
    Ok(Json(container_view(&s, &rec, None)))
}

pub async fn repairs(State(s): State<AppState>, names: Names) -> Result<Json<Value>, Problem> {
    load_org(&s, &names.org).await?;
    let items = s.store.query_index(Index::Repair, &repair_index_pk(&names.org), None, 1000).await?;
    let base = s.config.server.public_url.clone().unwrap_or_default();
    let mut list = Vec::new();
    for item in items {
        let chain: ChainRecord = decode(&item)?;
        let Some(ContainerRef { db, alias, .. }) = container_of_chain_pk(&item.key.pk) else { continue };
        let code = chain.last_error.as_ref().map_or("refresh_token_invalid", |e| e.code.as_str());
        list.push(json!({
            "database": db,
            "alias": alias,
            "code": code,
            "broken_at": chain.last_error.as_ref().map(|e| rfc3339(e.at_ms)),
            "remediation": RepairCode::parse(code).remediation(),
            "renew": {"method": "POST", "url": format!("{base}/v1/orgs/{}/databases/{db}/containers/{alias}/authorize", names.org)},
        }));
    }
    Ok(Json(json!({ "count": list.len(), "repairs": list })))
}

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn audit(
    State(s): State<AppState>,
    names: Names,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, Problem> {
    load_org(&s, &names.org).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut items = s.store.query(&audit_pk(&names.org), "", 100_000).await?;
    items.reverse();
    items.truncate(limit);
    let entries: Vec<Value> = items
        .iter()
        .map(|i| {
            decode::<AuditRecord>(i).map(|a| {
                json!({"at": rfc3339(a.at_ms), "actor": a.actor, "action": a.action, "container": a.container, "outcome": a.outcome, "detail": a.detail})
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({ "entries": entries })))
}
