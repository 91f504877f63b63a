//! Every error → problem document, in one place: the use cases' error enums, the ports' errors, and the API's own
//! refusals (routes, methods, bodies, tokens, scopes). Each detail says what happened and what to do, naming the
//! container; none repeats a value from the request or a secret. A 5xx logs its cause and shows a generic text.
//!
//! Store and key-service outages are `503` with `Retry-After` (`store_unavailable`, `key_service_unavailable`),
//! never `500`: nothing was changed and retrying helps.

use axum::http::StatusCode;

use super::problem::Problem;
use crate::app::api_tokens::{ApiTokenError, AuthError};
use crate::app::audit::AuditError;
use crate::app::authorization::AuthorizationError;
use crate::app::containers::ContainerError;
use crate::app::handout::HandOutError;
use crate::app::identifiers::IdentifierError;
use crate::app::lookup::LookupError;
use crate::app::orgs::OrgError;
use crate::app::query::{DailyLimitReached, PlatformFailure, QueryError};
use crate::app::recovery::RecoveryError;
use crate::app::webhooks::{UrlRefusal, WebhookError};
use crate::auth::TokenRejected;
use crate::chain::ChainError;
use crate::clock::rfc3339;
use crate::ids::{ContainerRef, InvalidName};
use crate::keys::KeyError;
use crate::store::StoreError;

// --- the API's own refusals ---

/// A failure we did not expect: the cause goes to the log, the caller sees a generic text.
pub fn internal(cause: &dyn std::fmt::Display) -> Problem {
    tracing::error!(error = %cause, "internal error");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "chainkeeper hit an unexpected error; nothing was changed that you were told succeeded. Retry, and report it to the operator if it persists.",
    )
}

pub fn no_such_route(path: &str) -> Problem {
    let path: String = path.chars().take(200).collect();
    Problem::not_found("no_such_route", format!("There is no route {path}. See /openapi.json for the API."))
}

pub fn method_not_allowed(allow: Option<&str>) -> Problem {
    let detail = match allow {
        Some(allow) => format!("This route takes {allow}. See /openapi.json."),
        None => "This route does not take that method. See /openapi.json.".to_string(),
    };
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", detail)
}

pub fn no_such_problem_type() -> Problem {
    Problem::not_found(
        "no_such_problem_type",
        "There is no problem code of that name. Problem documents link to their own page in `type`.",
    )
}

/// A body that is not the JSON the route takes; `what` never holds a value from the body.
pub fn invalid_body(what: &str) -> Problem {
    Problem::bad_request(
        "invalid_body",
        format!("The JSON body is not valid: {what}. See /openapi.json for the expected shape."),
    )
}

pub fn unreadable_body() -> Problem {
    Problem::bad_request("invalid_body", "The request body could not be read (cut off).")
}

/// A body above the route's limit (`limits.json_body_bytes` or `limits.proxy_body_bytes`). The rest of the body
/// is never read, so the connection cannot carry another request: `Connection: close` tells the client so before
/// it puts the connection back in its pool (without it, a client's next request on that connection fails).
pub fn body_too_large(limit: usize) -> Problem {
    let mut p = Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("This route takes request bodies of at most {limit} bytes. Send a smaller body."),
    );
    p.headers.push((axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close")));
    p
}

/// `limit` or `cursor` of a paged list not valid.
pub fn invalid_paging(what: &str) -> Problem {
    Problem::bad_request("invalid_paging", format!("{what} See /openapi.json for the paging parameters."))
}

/// The caller's API token is over its request rate.
pub fn rate_limited(wait_s: u64) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("This API token made more requests than its rate allows. Try again in {wait_s} seconds."),
    )
    .retry_after(wait_s)
}

/// The process is serving as many requests at once as it may.
pub fn overloaded() -> Problem {
    Problem::unavailable(
        "overloaded",
        "chainkeeper is serving as many requests at once as it is configured to; nothing was done. Try again in a second.",
        1,
    )
}

/// The answer did not begin within the request timeout.
pub fn request_timeout(after_s: f64) -> Problem {
    Problem::unavailable(
        "request_timeout",
        format!(
            "The answer did not begin within {after_s} seconds. What the request started may or may not have happened: read the state again before retrying a change."
        ),
        1,
    )
}

pub fn invalid_path_names() -> Problem {
    Problem::bad_request("invalid_name", "The path holds characters that are not allowed in names.")
}

pub fn route_needs(what: &str) -> Problem {
    Problem::bad_request("invalid_name", format!("This route needs {what}."))
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

pub fn token_missing() -> Problem {
    unauthorized(
        "This call needs an API token: `Authorization: Bearer <API token>` (or the token as the Basic password; reads of the query proxy and the OData feed also take `?api_key=<API token>`). Issue one with `chainkeeper token issue` or POST /v1/orgs/{org}/api-tokens.",
    )
}

pub fn not_bearer() -> Problem {
    unauthorized(
        "Send the API token as `Authorization: Bearer <API token>`, or as the password of `Authorization: Basic` (any user name).",
    )
}

pub fn wrong_organisation() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "wrong_organisation",
        "This API token belongs to another organisation. Use a token of the organisation in the URL.",
    )
}

pub fn platform_scope_required() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "platform_scope_required",
        "This route needs a platform token (`chainkeeper token issue --platform`): creating or deleting organisations, the platform's tokens, the identifier registry.",
    )
}

pub fn insufficient_scope(needed: &[String], held: &[String]) -> Problem {
    // `admin` covers every scope but the reveal scope (auth::REVEAL_SCOPE).
    let or_admin = if needed.iter().any(|n| n == crate::auth::REVEAL_SCOPE) {
        "; `admin` does not cover it"
    } else {
        " (or `admin`)"
    };
    Problem::new(
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        format!("This call needs scope `{}`{or_admin}; the API token has: {}.", needed.join("` or `"), held.join(", ")),
    )
}

// --- the ports ---

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Problem::conflict(
                "concurrent_update",
                "Someone changed this item at the same moment. Read it again and retry.",
            ),
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "store unavailable");
                Problem::unavailable(
                    "store_unavailable",
                    "chainkeeper's storage did not answer. Nothing was changed; retry shortly.",
                    2,
                )
            }
        }
    }
}

impl From<KeyError> for Problem {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Unavailable(cause) => {
                tracing::error!(error = %cause, "key service unavailable");
                Problem::unavailable(
                    "key_service_unavailable",
                    "chainkeeper's key service did not answer, so no secret could be sealed or opened. Nothing was changed; retry shortly.",
                    2,
                )
            }
            other => internal(&other),
        }
    }
}

impl From<anyhow::Error> for Problem {
    fn from(e: anyhow::Error) -> Self {
        internal(&format!("{e:#}"))
    }
}

impl From<InvalidName> for Problem {
    fn from(e: InvalidName) -> Self {
        Problem::bad_request("invalid_name", e.to_string())
    }
}

// --- the use cases ---

impl From<LookupError> for Problem {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::OrgNotFound(org) => Problem::not_found(
                "org_not_found",
                format!("Organisation '{org}' does not exist. Create it with POST /v1/orgs."),
            ),
            LookupError::DatabaseNotFound { org, db } => Problem::not_found(
                "database_not_found",
                format!("Database '{db}' does not exist in organisation '{org}'."),
            ),
            LookupError::ContainerNotFound(c) => Problem::not_found(
                "container_not_found",
                format!("There is no container with alias '{}' in database '{}'.", c.alias, c.db),
            ),
            LookupError::Store(e) => e.into(),
        }
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Rejected(TokenRejected::Invalid) => unauthorized(
                "The API token is not valid (bad signature or format). Ask an administrator for a new one.",
            ),
            AuthError::Rejected(TokenRejected::Expired) => {
                unauthorized("The API token has expired. Ask an administrator for a new one.")
            }
            AuthError::Revoked => unauthorized("This API token was revoked. Ask an administrator for a new one."),
            AuthError::Store(e) => e.into(),
            AuthError::Unexpected(e) => e.into(),
        }
    }
}

impl From<ApiTokenError> for Problem {
    fn from(e: ApiTokenError) -> Self {
        match e {
            ApiTokenError::Lookup(e) => e.into(),
            ApiTokenError::InvalidScopes => Problem::bad_request(
                "invalid_scopes",
                "Give one or more scopes such as `containers.read`, `tokens.readwrite` or `admin`.",
            ),
            ApiTokenError::ScopeEscalation(extra) => Problem::new(
                StatusCode::FORBIDDEN,
                "scope_escalation",
                format!("Your API token does not hold `{extra}`, so it cannot grant it."),
            ),
            ApiTokenError::InvalidId => {
                Problem::bad_request("invalid_token_id", "That is not an API token id (see GET …/api-tokens).")
            }
            ApiTokenError::NotFound { org, id } => {
                Problem::not_found("api_token_not_found", format!("Organisation '{org}' has no API token '{id}'."))
            }
            ApiTokenError::PlatformNotFound(id) => {
                Problem::not_found("api_token_not_found", format!("There is no platform API token '{id}'."))
            }
            ApiTokenError::OutlivesIssuer { issuer_expires_at_ms } => Problem::new(
                StatusCode::FORBIDDEN,
                "token_outlives_issuer",
                format!(
                    "Your API token expires at {}; a token it issues cannot be valid for longer. Ask for a shorter `expires_in_s`, or leave it out to get your token's expiry.",
                    crate::clock::rfc3339(issuer_expires_at_ms)
                ),
            ),
            ApiTokenError::IssuerRevoked => {
                unauthorized("This API token was revoked. Ask an administrator for a new one.")
            }
            ApiTokenError::Store(e) => e.into(),
            ApiTokenError::Unexpected(e) => e.into(),
        }
    }
}

impl From<AuditError> for Problem {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Lookup(e) => e.into(),
            AuditError::Store(e) => e.into(),
            AuditError::BadLimit => invalid_paging("`limit` must be a whole number from 1 to 1000."),
            AuditError::BadCursor => {
                invalid_paging("`cursor` is not one this list gave out: pass `next_cursor` back unchanged.")
            }
        }
    }
}

impl From<OrgError> for Problem {
    fn from(e: OrgError) -> Self {
        match e {
            OrgError::Lookup(e) => e.into(),
            OrgError::Exists(org) => Problem::conflict("org_exists", format!("Organisation '{org}' already exists.")),
            OrgError::NameRetired { org, deleted_at_ms } => Problem::conflict(
                "org_name_retired",
                format!(
                    "The name '{org}' belonged to an organisation deleted at {}. Names are never reused, so that its API tokens \
                     and audit trail cannot reach a new owner. Choose another name.",
                    rfc3339(deleted_at_ms)
                ),
            ),
            OrgError::NotEmpty(org) => Problem::conflict(
                "org_not_empty",
                format!("Organisation '{org}' still has databases. Delete its containers and databases first."),
            ),
            OrgError::DatabaseExists(db) => {
                Problem::conflict("database_exists", format!("Database '{db}' already exists."))
            }
            OrgError::DatabaseNotEmpty(db) => Problem::conflict(
                "database_not_empty",
                format!("Database '{db}' still has containers. Delete them first."),
            ),
            OrgError::Store(e) => e.into(),
            OrgError::Keys(e) => e.into(),
        }
    }
}

impl From<WebhookError> for Problem {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Lookup(e) => e.into(),
            WebhookError::InvalidUrl(why) => Problem::bad_request(
                "invalid_webhook_url",
                match why {
                    UrlRefusal::NotAbsolute => "The webhook URL is not an absolute URL.".to_string(),
                    UrlRefusal::Form => "The webhook URL must be https://host/path, without credentials.".to_string(),
                    UrlRefusal::NotHttps => "Webhooks are sent over https only (an operator may allow plain http for a named host with [webhooks] allow_http_hosts).".to_string(),
                    UrlRefusal::PrivateAddress(class) => format!(
                        "The webhook URL names a {} address; webhooks reach public addresses only (an operator may allow private addresses for a named host with [webhooks] allow_private_hosts).",
                        class.as_str()
                    ),
                },
            ),
            WebhookError::UnknownEvent(kind) => Problem::bad_request(
                "invalid_body",
                format!("{kind:?} is not a webhook event type: chain.needs_repair, chain.recovered or auto_recovery.expiring."),
            ),
            WebhookError::Store(e) => e.into(),
            WebhookError::Keys(e) => e.into(),
        }
    }
}

impl From<ContainerError> for Problem {
    fn from(e: ContainerError) -> Self {
        match e {
            ContainerError::Lookup(e) => e.into(),
            ContainerError::ProviderRequired { kind, known } => Problem::bad_request(
                "provider_required",
                format!("A {kind:?} container needs `provider`: one of {known}."),
            ),
            ContainerError::UnknownProvider { given, known } => {
                Problem::bad_request("unknown_provider", format!("Provider '{given}' is not known. Known: {known}."))
            }
            ContainerError::ProviderNotForKind { kind, provider } => Problem::bad_request(
                "provider_not_for_kind",
                format!(
                    "Provider '{provider}' cannot serve a {kind:?} container: password and api_token containers need a profile with `credential_use`, OAuth2 containers one with a `token_url`."
                ),
            ),
            ContainerError::Exists(c) => Problem::conflict(
                "container_exists",
                format!("Database '{}' already has a container '{}'.", c.db, c.alias),
            ),
            ContainerError::CredentialsNotSettable(c) => Problem::bad_request(
                "credentials_not_settable",
                format!(
                    "{c} uses an OAuth2 authorization: renew it with POST …/containers/{}/authorize instead.",
                    c.alias
                ),
            ),
            ContainerError::FieldNotAllowed { kind, field, allowed } => Problem::bad_request(
                "credential_field_not_allowed",
                format!("A {kind:?} container does not take `{field}`; it takes: {}.", allowed.join(", ")),
            ),
            ContainerError::CredentialsEmpty { allowed } => {
                Problem::bad_request("credentials_empty", format!("Give at least one of: {}.", allowed.join(", ")))
            }
            ContainerError::RevealNotAllowed(org) => Problem::new(
                StatusCode::FORBIDDEN,
                "credential_reveal_disabled",
                format!(
                    "Organisation '{org}' does not allow revealing stored credentials. An administrator turns it on with PATCH /v1/orgs/{org}/settings {{\"allow_credential_reveal\": true}}."
                ),
            ),
            ContainerError::NothingToReveal { kind } => Problem::bad_request(
                "nothing_to_reveal",
                format!(
                    "A {kind:?} container has no stored password or API token to reveal; only password and api_token containers do."
                ),
            ),
            ContainerError::Chain(e) => general_chain_problem(e),
            ContainerError::Store(e) => e.into(),
            ContainerError::Keys(e) => e.into(),
            ContainerError::Unexpected(e) => e.into(),
        }
    }
}

impl From<AuthorizationError> for Problem {
    fn from(e: AuthorizationError) -> Self {
        use AuthorizationError as E;
        match e {
            E::Lookup(e) => e.into(),
            E::NotAnAuthorizationContainer { c, kind } => Problem::bad_request(
                "not_an_authorization_container",
                format!("{c} uses {kind:?} credentials; set them with PUT …/credentials."),
            ),
            E::UnknownProvider(p) => {
                Problem::conflict("unknown_provider", format!("Provider '{p}' is no longer configured."))
            }
            E::AppNotConfigured(p) => Problem::conflict(
                "app_not_configured",
                format!(
                    "No app registration for provider '{p}': add [apps.{p}] with client_id, client_secret and redirect_uri to the config."
                ),
            ),
            E::StateMissing => Problem::bad_request(
                "authorization_state_missing",
                "The callback has no `state`. Start the authorization again with POST …/authorize.",
            ),
            E::StateInvalid => Problem::bad_request(
                "authorization_state_invalid",
                "This sign-in link is unknown or has expired. Start the authorization again with POST …/authorize.",
            ),
            E::StateUsed => Problem::bad_request(
                "authorization_state_used",
                "This sign-in link was already used. Start a new authorization.",
            ),
            E::Denied { c, said } => Problem::bad_request(
                "authorization_denied",
                format!("The provider did not authorize {c}: {said}. Start again and allow access."),
            ),
            E::CodeMissing => Problem::bad_request(
                "authorization_code_missing",
                "The callback has no `code`. Start the authorization again.",
            ),
            E::ProviderUnavailable(c) => Problem::unavailable(
                "provider_unavailable",
                format!(
                    "The provider did not answer the code exchange for {c}. Start the authorization again in a minute."
                ),
                30,
            ),
            E::InvalidClient(provider) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "invalid_client",
                format!(
                    "The provider refused chainkeeper's app registration for '{provider}'. Check client_id and client_secret."
                ),
            ),
            E::CodeRejected { c, reason } => Problem::bad_request(
                "authorization_code_rejected",
                format!("The provider refused the sign-in code for {c} ({reason}). Start the authorization again."),
            ),
            E::IdentityUnavailable(c) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "identity_unavailable",
                format!("Could not read who signed in at the provider for {c}. Start the authorization again."),
            ),
            E::WrongIdentity { c } => Problem::conflict(
                "recovery_wrong_identity",
                format!(
                    "Auto-recovery signed in as a different user than {c} uses; nothing was stored. Store the recovery credentials of the container's own user."
                ),
            ),
            E::DifferentUser { c, expected } => Problem::conflict(
                "different_provider_user",
                format!(
                    "{c} signs in as {expected}, but this authorization was completed as another user; nothing was stored and the container keeps its chain. Sign in as {expected}, or start the authorization with {{\"replace_user\": true}} to change the container's user."
                ),
            ),
            E::SingleInstanceConflict { sid, removed } => Problem::conflict(
                "single_instance_conflict",
                format!(
                    "There can be at most one container in all organisations with the single-instance authentication identifier '{sid}'. Another container holds it and keeps working with the new sign-in.{removed} Delete the other container first, or sign in with another user or app."
                ),
            ),
            E::Container(e) => e.into(),
            E::Chain(e) => general_chain_problem(e),
            E::Store(e) => e.into(),
            E::Keys(e) => e.into(),
            E::Unexpected(e) => e.into(),
        }
    }
}

impl From<HandOutError> for Problem {
    fn from(e: HandOutError) -> Self {
        match e {
            HandOutError::Lookup(e) => e.into(),
            HandOutError::Caller(e) => e.into(),
            HandOutError::Chain { c, source } => chain_problem(&c, source),
            HandOutError::NotAuthorized(c) => Problem::conflict(
                "not_authorized",
                format!("{c} has no authorization yet. Start one with POST …/containers/{}/authorize.", c.alias),
            ),
            HandOutError::CredentialsMissing { c, needs } => Problem::conflict(
                "credentials_missing",
                format!("{c} has no {needs} yet. Set them with PUT …/containers/{}/credentials.", c.alias),
            ),
            HandOutError::NoAccessToken { c, kind } => Problem::bad_request(
                "no_access_token",
                format!("{c} uses {kind:?} credentials, which have no access token."),
            ),
        }
    }
}

impl From<IdentifierError> for Problem {
    fn from(e: IdentifierError) -> Self {
        match e {
            IdentifierError::InvalidIdentifier => Problem::bad_request(
                "invalid_identifier",
                "A single-instance identifier is `client_id#user_id` (1-300 characters; `#` percent-encoded as %23 in the path).",
            ),
            IdentifierError::NotFound => {
                Problem::not_found("identifier_not_found", "No container holds this single-instance identifier.")
            }
            IdentifierError::ReasonRequired => Problem::bad_request(
                "release_reason_required",
                "Give the release a `reason` (1-500 characters): it goes into the audit logs.",
            ),
            IdentifierError::Lookup(e) => e.into(),
            IdentifierError::Store(e) => e.into(),
        }
    }
}

impl From<QueryError> for Problem {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Caller(e) => e.into(),
            QueryError::PathRefused(why) => Problem::bad_request(
                "query_path_refused",
                format!("{why} The query path is relative to the platform's API, e.g. `v1/current/Me`."),
            ),
            QueryError::Lookup(e) => e.into(),
            QueryError::NoPlatform(c) => {
                Problem::conflict("unknown_provider", format!("{c} has no platform API to query."))
            }
            QueryError::NoApiBaseUrl(p) => {
                Problem::conflict("no_api_base_url", format!("Provider '{p}' has no api_base_url to query."))
            }
            QueryError::BodyTooLarge(limit) => body_too_large(limit),
            QueryError::Chain { c, source } => chain_problem(&c, source),
            QueryError::Credential(e) => e.into(),
            QueryError::NoCredentialUse { c, provider } => Problem::conflict(
                "no_credential_use",
                format!(
                    "{c} uses provider '{provider}', whose profile does not say how its secret goes on a request (credential_use)."
                ),
            ),
            QueryError::Keys(e) => e.into(),
            QueryError::Platform { c, failure } => Problem::new(
                StatusCode::BAD_GATEWAY,
                "platform_unavailable",
                match failure {
                    PlatformFailure::NoAnswer => format!("The platform API of {c} did not answer. Try again shortly."),
                    PlatformFailure::BrokeOff => "The platform's answer broke off.".to_string(),
                },
            ),
            QueryError::PlatformRateLimited { c, wait_s, headers } => {
                let mut p = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "platform_rate_limited",
                    format!("The platform's rate limit for {c} is used up. Try again in {wait_s} seconds."),
                )
                .retry_after(wait_s);
                p.headers = headers;
                p
            }
            QueryError::DailyLimit(d) => {
                let DailyLimitReached { c, platform, company, limit, reset_at_ms, wait_s } = *d;
                Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "platform_daily_limit",
                    format!(
                        "{platform} allows {limit} calls a day for company {company}, and today's are used up (by every connection through chainkeeper's app, {c} included). It resets at {}; cached answers still come.",
                        rfc3339(reset_at_ms)
                    ),
                )
                .retry_after(wait_s)
            }
            QueryError::Store(e) => e.into(),
            QueryError::AnswerTooLarge { c } => Problem::new(
                StatusCode::BAD_GATEWAY,
                "platform_answer_too_large",
                format!(
                    "The platform's OData answer for {c} is too large to pass through the feed. Ask for fewer rows per request ($top, $select) or page with the __next link."
                ),
            ),
            QueryError::Unexpected(e) => e.into(),
        }
    }
}

impl From<RecoveryError> for Problem {
    fn from(e: RecoveryError) -> Self {
        match e {
            RecoveryError::Lookup(e) => e.into(),
            RecoveryError::NotApplicable(c) => Problem::bad_request(
                "auto_recovery_not_applicable",
                format!("{c} has no authorization to recover; auto-recovery is for oauth2_code containers."),
            ),
            RecoveryError::InvalidRetention => {
                Problem::bad_request("invalid_retention", "retention_days must be between 1 and 90.")
            }
            RecoveryError::InvalidTotp(why) => Problem::bad_request(
                "invalid_totp_secret",
                format!("{why}. Give the base32 secret or the otpauth:// URI your authenticator shows."),
            ),
            RecoveryError::ChainHealthy(c) => Problem::conflict(
                "chain_healthy",
                format!("{c} is healthy: auto-recovery only runs for a chain that needs repair."),
            ),
            RecoveryError::NotConfigured(c) => Problem::conflict(
                "auto_recovery_not_configured",
                format!("{c} has no auto-recovery credentials. Store them with PUT …/auto-recovery."),
            ),
            RecoveryError::RateLimited(c) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "recovery_rate_limited",
                format!("{c} had three recovery attempts in the last hour; the next is allowed later."),
            )
            .retry_after(600),
            RecoveryError::QueueUnavailable(why) => {
                tracing::warn!(error = %why, "the recovery queue did not take a request");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "recovery_queue_unavailable",
                    "The recovery request could not be queued; nothing was started. Retry shortly.",
                )
                .retry_after(5)
            }
            RecoveryError::Chain(e) => general_chain_problem(e),
            RecoveryError::Store(e) => e.into(),
            RecoveryError::Keys(e) => e.into(),
            RecoveryError::Unexpected(e) => e.into(),
        }
    }
}

/// A chain failure as the API shows it, naming the container and what to do.
pub fn chain_problem(c: &ContainerRef, e: ChainError) -> Problem {
    match e {
        ChainError::NeedsRepair { code, .. } if code.needs_new_credentials() => {
            Problem::conflict(code.code(), format!("{c} needs new credentials: {}", code.remediation()))
        }
        ChainError::NeedsRepair { code, .. } => Problem::conflict(
            code.code(),
            format!(
                "{c} needs repair: {} Renew it with POST …/containers/{}/authorize.",
                code.remediation(),
                c.alias
            ),
        ),
        ChainError::RateLimited { wait_s } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "token_rate_limited",
            format!(
                "The provider allows a new access token for {c} in {wait_s} seconds (minimum interval between token requests). Try again then."
            ),
        )
        .retry_after(wait_s),
        ChainError::ProviderUnavailable { retry_after_s, .. } => Problem::unavailable(
            "provider_unavailable",
            format!(
                "The provider did not give {c} a new token just now; the chain is intact. Try again in {retry_after_s} seconds."
            ),
            retry_after_s,
        ),
        ChainError::ResponseLostRetrying { retry_after_s } => Problem::unavailable(
            crate::chain::LOST_RETRYING,
            format!(
                "The provider's answer to the last refresh of {c} was lost. The chain is not broken: chainkeeper refreshes with the previous refresh token in {retry_after_s} seconds, when the provider allows a new token. Try again then."
            ),
            retry_after_s,
        ),
        ChainError::RefreshInProgress => Problem::unavailable(
            "refresh_in_progress",
            format!("A refresh of {c} is taking longer than usual; the chain is intact. Try again in a few seconds."),
            2,
        ),
        ChainError::InvalidClient(_) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "invalid_client",
            format!(
                "The provider refused chainkeeper's app registration while refreshing {c}. An operator must check client_id and client_secret."
            ),
        ),
        ChainError::NoApp(p) => Problem::conflict(
            "app_not_configured",
            format!("No app registration for provider '{p}'. Add [apps.{p}] to the config."),
        ),
        ChainError::UnknownProvider(p) => {
            Problem::conflict("unknown_provider", format!("Provider '{p}' of {c} is not configured."))
        }
        ChainError::NotAuthorized => Problem::conflict("not_authorized", format!("{c} has no authorization yet.")),
        ChainError::Store(e) => e.into(),
        ChainError::Keys(e) => e.into(),
        ChainError::Unexpected(e) => e.into(),
    }
}

/// A chain failure outside a token request (reading a chain, revoking, removing): only the ports can fail there.
fn general_chain_problem(e: ChainError) -> Problem {
    match e {
        ChainError::Store(e) => e.into(),
        ChainError::Keys(e) => e.into(),
        other => internal(&other),
    }
}
