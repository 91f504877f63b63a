//! Errors as the API shows them: problem documents (`application/problem+json`, RFC 9457) with a stable `code`,
//! a `detail` that says what happened and what to do, and `retry_after` where waiting helps.
//!
//! Every code is in one registry, [`PROBLEM_TYPES`], with its title, what it means and what to do; each problem's
//! `type` is `/problems/{code}`, a public page of chainkeeper's own that says exactly that (a relative reference,
//! resolved against the URL that answered, RFC 9457 §3.1.1, so it leads to the same deployment behind any host
//! name). Which error becomes which problem is decided in one place, [`super::errors`].

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::chain::RepairCode;

/// One kind of problem: what `/problems/{code}` says about it.
#[derive(Clone, Copy, Debug)]
pub struct ProblemType {
    pub code: &'static str,
    /// A short summary that does not change from occurrence to occurrence (the problem's `title`).
    pub title: &'static str,
    /// What it means.
    pub meaning: &'static str,
    /// What to do.
    pub remedy: &'static str,
}

macro_rules! types {
    ($($code:literal => $title:literal, $meaning:literal, $remedy:literal;)*) => {
        /// Every problem code chainkeeper answers with.
        pub const PROBLEM_TYPES: &[ProblemType] = &[
            $(ProblemType { code: $code, title: $title, meaning: $meaning, remedy: $remedy }),*
        ];
    };
}

types! {
    // --- requests and routes ---
    "invalid_body" => "The request body is not valid",
        "The JSON body could not be read, or a field is missing, unknown or of the wrong type.",
        "Send the body /openapi.json describes for this route.";
    "invalid_name" => "A name is not valid",
        "Organisation, database and container names are 1-63 characters a-z, 0-9, '-' or '_', starting with a letter or digit (case-insensitive).",
        "Use a name of that form.";
    "no_such_route" => "No such route",
        "The path is not a route of the API.",
        "See /openapi.json for every route.";
    "method_not_allowed" => "Method not allowed",
        "The route exists but does not take this method. The `Allow` header lists the ones it takes.",
        "Use one of the methods in `Allow`.";
    "body_too_large" => "Body too large",
        "The request body is larger than the route takes: JSON routes take `limits.json_body_bytes` (64 KiB by default), the query proxy `limits.proxy_body_bytes` (10 MiB by default).",
        "Send a smaller body.";
    "invalid_paging" => "Paging parameters not valid",
        "`limit` must be a whole number from 1 to 1000, and `cursor` must be the `next_cursor` of an earlier page of the same list.",
        "Give a limit from 1 to 1000, and pass `next_cursor` back unchanged.";
    "rate_limited" => "Too many requests for this API token",
        "The API token made more requests than `limits.token_requests_per_s` (with a burst of `limits.token_burst`) allows.",
        "Retry after the number of seconds in `Retry-After`, and spread your requests.";
    "overloaded" => "Too many requests at once",
        "chainkeeper is serving as many requests at once as it is configured to (`limits.max_concurrent_requests`). Nothing was done.",
        "Retry after the number of seconds in `Retry-After`.";
    "request_timeout" => "Request took too long",
        "The answer did not begin within `limits.request_timeout_s`. What the request started may or may not have happened.",
        "Read the state again before retrying a change; retry a read after the number of seconds in `Retry-After`.";
    "no_such_problem_type" => "No such problem type",
        "There is no problem code of that name.",
        "Problem documents link to their own page in `type`; follow that link.";
    "internal_error" => "Unexpected error",
        "chainkeeper hit an error it did not expect. Nothing you were told succeeded was lost; the cause is in chainkeeper's log.",
        "Retry. If it persists, report it to the operator with the time of the request.";
    "store_unavailable" => "Storage unavailable",
        "chainkeeper's storage (SQLite or DynamoDB) did not answer. Nothing was changed.",
        "Retry after the number of seconds in `Retry-After`.";
    "key_service_unavailable" => "Key service unavailable",
        "The key service (the local key file or KMS) did not answer, so no secret could be sealed or opened. Nothing was changed.",
        "Retry after the number of seconds in `Retry-After`.";
    "concurrent_update" => "Changed at the same moment",
        "Someone changed the same item at the same moment; your change was not applied.",
        "Read the item again and retry.";
    // --- API tokens and scopes ---
    "unauthorized" => "No valid API token",
        "The call has no API token, or it is malformed, badly signed, expired or revoked.",
        "Send `Authorization: Bearer <API token>`; ask an administrator for a new token if yours expired or was revoked.";
    "wrong_organisation" => "Token of another organisation",
        "The API token belongs to another organisation than the one in the URL.",
        "Use a token of the organisation in the URL.";
    "platform_scope_required" => "Platform token required",
        "Creating and deleting organisations needs a platform token; an organisation's own token cannot do it.",
        "Use a token from `chainkeeper token issue --platform`.";
    "insufficient_scope" => "Scope missing",
        "The API token does not hold a scope this call needs.",
        "Use a token with the scope the detail names (or `admin`).";
    "invalid_scopes" => "Scopes not valid",
        "The scopes of a new API token are missing or malformed.",
        "Give one or more scopes such as `containers.read`, `tokens.readwrite` or `admin`.";
    "scope_escalation" => "Cannot grant a scope you do not hold",
        "An API token can only issue tokens with scopes it holds itself.",
        "Ask for the token with an API token that holds those scopes.";
    "token_outlives_issuer" => "Token would outlive its issuer",
        "A token issued with another token cannot be valid for longer than the token that issues it.",
        "Ask for a shorter `expires_in_s`, or leave it out to get the issuing token's expiry.";
    "invalid_token_id" => "Not an API token id",
        "The id in the path is not of the form of an API token id.",
        "Take the id from GET …/api-tokens.";
    "api_token_not_found" => "API token not found",
        "The organisation has no API token with that id.",
        "List the organisation's tokens with GET …/api-tokens.";
    // --- organisations, databases, containers ---
    "org_not_found" => "Organisation not found",
        "No organisation of that name exists (or it was deleted).",
        "Check the name, or create the organisation with POST /v1/orgs.";
    "org_exists" => "Organisation exists",
        "An organisation of that name already exists.",
        "Choose another name, or use the existing organisation.";
    "org_name_retired" => "Organisation name retired",
        "The name belonged to an organisation that was deleted. Names are never reused, so that its API tokens and audit trail cannot reach a new owner.",
        "Choose another name.";
    "org_not_empty" => "Organisation not empty",
        "An organisation is deleted only once it has no databases.",
        "Delete its containers and databases first.";
    "database_not_found" => "Database not found",
        "The organisation has no database of that name.",
        "Check the name, or create it with POST …/databases.";
    "database_exists" => "Database exists",
        "The organisation already has a database of that name.",
        "Choose another name.";
    "database_not_empty" => "Database not empty",
        "A database is deleted only once it has no containers.",
        "Delete its containers first.";
    "container_not_found" => "Container not found",
        "The database has no container with that alias.",
        "Check the alias, or create the container with POST …/containers.";
    "container_exists" => "Container exists",
        "The database already has a container with that alias.",
        "Choose another alias.";
    "provider_required" => "Provider required",
        "OAuth2 containers need a provider profile.",
        "Give `provider`: one of the profiles the detail lists.";
    "unknown_provider" => "Unknown provider",
        "The provider profile is not configured (or no longer).",
        "Use a configured profile, or add it to the config file.";
    "app_not_configured" => "No app registration",
        "The provider has no app registration (client id, secret, redirect URI) in this deployment.",
        "An operator adds `[apps.<provider>]` to the config (in AWS: the Secrets Manager secret).";
    "credentials_not_settable" => "Credentials cannot be set",
        "An OAuth2 authorization-code container gets its tokens from an authorization, not from stored credentials.",
        "Renew the authorization with POST …/authorize.";
    "credential_field_not_allowed" => "Field not allowed for this kind",
        "The container's credential kind does not take that field.",
        "Send only the fields the detail lists.";
    "credentials_empty" => "No credentials given",
        "The request set no credential field.",
        "Give at least one of the fields the detail lists.";
    "provider_not_for_kind" => "Provider does not fit the kind",
        "Password and API-token containers need a profile that says how the secret is used (`credential_use`); OAuth2 containers need a profile with a token endpoint.",
        "Choose a profile for the kind (README \"Passwords and API tokens through the proxy\"), or create the container without `provider` to keep the secret only.";
    "no_credential_use" => "The profile does not say how the secret is used",
        "The container's provider profile has no `credential_use`: the query proxy does not know where its password or API token goes on a request.",
        "Give the profile a `credential_use` (header, bearer, basic, query or session_login; see README \"Provider profiles\"), or fetch the secret with GET …/credentials/reveal.";
    "credential_reveal_disabled" => "Revealing credentials is off",
        "The organisation has not allowed tokens with the credentials.reveal scope to read stored passwords and API tokens.",
        "An administrator of the organisation turns it on with PATCH /v1/orgs/{org}/settings {\"allow_credential_reveal\": true}.";
    "nothing_to_reveal" => "Nothing to reveal",
        "Only password and api_token containers hold a secret that can be revealed; OAuth2 containers hand out access tokens.",
        "Use POST …/token for an OAuth2 container's access token.";
    "invalid_identifier" => "Identifier not valid",
        "A single-instance identifier is `client_id#user_id`, 1-300 characters without control characters.",
        "Give the identifier as the error that named it shows it, with `#` percent-encoded (%23).";
    "identifier_not_found" => "Identifier not held",
        "No container in any organisation holds this single-instance identifier.",
        "Nothing to release: a new authorization with it can go ahead.";
    "release_reason_required" => "A release needs a reason",
        "Releasing an identifier is recorded in the audit logs with its reason.",
        "Give `reason` (1-500 characters), and `asked_by_org` when another organisation asked for it.";
    "credentials_missing" => "Credentials missing",
        "The container has no complete credentials yet, so no token can be had.",
        "Set them with PUT …/credentials.";
    "no_access_token" => "No access token for this kind",
        "Password and API-token containers have no access token to hand out.",
        "Call the platform through the query proxy, which applies the credential as the profile says; a tool that needs the raw secret uses GET …/credentials/reveal where the organisation allows it.";
    "invalid_webhook_url" => "Webhook URL not valid",
        "The webhook URL is not an absolute http(s) URL without credentials, or points at a private address this deployment refuses.",
        "Give a public https URL.";
    // --- authorization ---
    "not_an_authorization_container" => "Not an authorization container",
        "Only oauth2_code containers are authorized through the provider's sign-in.",
        "Set the credentials of this container with PUT …/credentials.";
    "authorization_state_missing" => "Callback without state",
        "The provider's redirect came back without `state`.",
        "Start the authorization again with POST …/authorize.";
    "authorization_state_invalid" => "Sign-in link unknown or expired",
        "The `state` of the callback is unknown or expired (a started authorization lasts `server.authorization_ttl_s`).",
        "Start the authorization again with POST …/authorize and finish it in time.";
    "authorization_state_used" => "Sign-in link already used",
        "Every started authorization completes once.",
        "Start a new authorization.";
    "authorization_denied" => "Authorization denied",
        "The provider did not authorize the container (the person declined, or the provider refused).",
        "Start again and allow access.";
    "authorization_code_missing" => "Callback without code",
        "The provider's redirect came back without `code`.",
        "Start the authorization again.";
    "authorization_code_rejected" => "Sign-in code refused",
        "The provider refused the code of the sign-in (used or expired).",
        "Start the authorization again.";
    "identity_unavailable" => "Identity not readable",
        "chainkeeper could not read who signed in at the provider.",
        "Start the authorization again; if it persists the provider's identity endpoint is down.";
    "different_provider_user" => "Signed in as another user",
        "The authorization was completed as another provider user than the container's; nothing was stored.",
        "Sign in as the user the detail names, or start the authorization with `{\"replace_user\": true}` to change the container's user.";
    "single_instance_conflict" => "Identifier held by another container",
        "The provider allows one active authorization per app and user, and another container holds this app and user. It keeps working with the new sign-in.",
        "Delete the other container first, or sign in with another user or app.";
    "invalid_client" => "App registration refused",
        "The provider refused chainkeeper's app registration (client id or secret).",
        "An operator checks client_id and client_secret of the provider's app registration.";
    // --- tokens and chains ---
    "not_authorized" => "Not authorized yet",
        "The container has no authorization yet.",
        "Start one with POST …/authorize.";
    "token_rate_limited" => "Too early for a new token",
        "The provider allows a new access token only after a minimum interval since the last one.",
        "Retry after the number of seconds in `Retry-After`.";
    "provider_unavailable" => "Provider unavailable",
        "The provider did not give a token just now (down, overloaded, or no answer). The chain is intact.",
        "Retry after the number of seconds in `Retry-After`.";
    "refresh_response_lost_retrying" => "Refresh answer lost, retrying",
        "The provider's answer to the chain's last refresh never arrived. The chain is not broken: chainkeeper refreshes again with the previous refresh token once the provider's minimum interval has passed.",
        "Retry after the number of seconds in `Retry-After`. If the provider no longer accepts the previous token, the chain is marked `refresh_response_lost` and auto-recovery starts where it is set.";
    "refresh_in_progress" => "Refresh taking long",
        "Another caller's refresh of this chain is taking longer than usual. The chain is intact.",
        "Retry after a few seconds.";
    // --- auto-recovery ---
    "auto_recovery_not_applicable" => "Auto-recovery not applicable",
        "Auto-recovery is for oauth2_code containers only.",
        "Nothing to do for this container.";
    "auto_recovery_not_configured" => "Auto-recovery not configured",
        "The container has no auto-recovery credentials.",
        "Store them with PUT …/auto-recovery.";
    "invalid_retention" => "Retention not valid",
        "Auto-recovery credentials are kept 1 to 90 days.",
        "Give retention_days between 1 and 90.";
    "invalid_totp_secret" => "TOTP secret not valid",
        "The TOTP secret is neither base32 nor an otpauth:// URI.",
        "Give the base32 secret or the otpauth:// URI your authenticator shows.";
    "chain_healthy" => "Chain healthy",
        "Auto-recovery only runs for a chain that needs repair.",
        "Nothing to do.";
    "recovery_rate_limited" => "Too many recovery attempts",
        "A container gets at most three recovery attempts per hour.",
        "Retry after the number of seconds in `Retry-After`.";
    "recovery_queue_unavailable" => "Recovery queue unavailable",
        "The recovery request could not be handed to the recover function (its queue did not answer). Nothing was started; the scheduled recovery run still tries broken chains every few minutes.",
        "Retry after the number of seconds in `Retry-After`.";
    // --- query proxy ---
    "query_path_refused" => "Query path refused",
        "The query path must stay on the platform's API: relative, without '.', '..', empty segments, encoded slashes or other hosts.",
        "Give a path relative to the platform's API, e.g. `v1/current/Me`.";
    "no_api_base_url" => "No platform API",
        "The container's provider profile has no api_base_url to query.",
        "Set api_base_url in the provider profile, or use the token hand-out instead.";
    "platform_unavailable" => "Platform unavailable",
        "The platform's API did not answer, or its answer broke off.",
        "Retry shortly.";
    "platform_rate_limited" => "Platform rate limit reached",
        "The platform's rate limit for this container is used up.",
        "Retry after the number of seconds in `Retry-After`.";
    "platform_daily_limit" => "Platform daily limit reached",
        "The platform's daily call limit for this company, shared by every connection through chainkeeper's app registration, is used up.",
        "Wait until the reset time in the detail (`Retry-After` seconds); answers chainkeeper has cached still come.";
    "platform_answer_too_large" => "Platform answer too large for the feed",
        "The OData feed holds an answer in memory to point its links back through chainkeeper; this one was larger than that allows.",
        "Ask for fewer rows or columns per request ($top, $select), or follow the paging links.";
}

/// The registry entry of a code: [`PROBLEM_TYPES`], and the chain engine's repair codes ([`RepairCode`], which
/// carry their own title, meaning and remedy).
pub fn problem_type(code: &str) -> Option<ProblemType> {
    PROBLEM_TYPES.iter().copied().find(|t| t.code == code).or_else(|| {
        RepairCode::ALL.into_iter().find(|r| r.code() == code).map(|r| ProblemType {
            code: r.code(),
            title: r.title(),
            meaning: r.meaning(),
            remedy: r.remedy(),
        })
    })
}

/// Where a code's page is: the problem's `type`.
pub fn type_uri(code: &str) -> String {
    format!("/problems/{code}")
}

/// A problem document. Serialized as RFC 9457 members (`type`, `title`, `status`, `detail`) plus `code` and
/// `retry_after`; `type` and `title` come from the code's registry entry.
#[derive(Debug, Clone)]
pub struct Problem {
    pub title: &'static str,
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
    /// Extra response headers (the platform's rate-limit headers on a proxied 429).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Document<'a> {
            #[serde(rename = "type")]
            type_uri: String,
            title: &'a str,
            status: u16,
            code: &'a str,
            detail: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            retry_after: Option<u64>,
        }
        Document {
            type_uri: type_uri(self.code),
            title: self.title,
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
            retry_after: self.retry_after,
        }
        .serialize(ser)
    }
}

impl Problem {
    /// A problem with a registered `code` (`PROBLEM_TYPES`; the architecture tests check every code in the
    /// source, and debug builds check each one as it is made).
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        let registered = problem_type(code);
        debug_assert!(registered.is_some(), "problem code {code:?} is not in PROBLEM_TYPES");
        Self {
            title: registered.map_or("Error", |t| t.title),
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }
    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(retry_after)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (self.status, body).into_response();
        let headers = res.headers_mut();
        for (k, v) in self.headers {
            if k != header::CONTENT_TYPE && k != header::RETRY_AFTER {
                headers.append(k, v);
            }
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        res
    }
}

/// The page `/problems/{code}` serves: title, what it means, what to do.
pub fn page(t: &ProblemType) -> String {
    let e = html_escape;
    format!(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{title} — chainkeeper</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}code{{background:#eee;padding:0 .2em}}</style>\
         <h1>{title}</h1><p>Problem code <code>{code}</code></p>\
         <h2>What it means</h2><p>{meaning}</p><h2>What to do</h2><p>{remedy}</p>\
         <p>The problem document's <code>detail</code> names the organisation, database or container it is about. \
         Every route is described in <a href=\"/openapi.json\">/openapi.json</a>.</p></html>",
        title = e(t.title),
        code = e(t.code),
        meaning = e(t.meaning),
        remedy = e(t.remedy),
    )
}

/// `GET /problems/{code}`: what a problem code means and what to do (every problem's `type` links here).
pub async fn serve_page(axum::extract::Path(code): axum::extract::Path<String>) -> Response {
    match problem_type(&code) {
        Some(t) => axum::response::Html(page(&t)).into_response(),
        None => super::errors::no_such_problem_type().into_response(),
    }
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_documented() {
        for r in RepairCode::ALL {
            assert!(PROBLEM_TYPES.iter().all(|t| t.code != r.code()), "{} is a repair code", r.code());
            assert_eq!(problem_type(r.code()).unwrap().remedy, r.remedy());
        }
        for (i, t) in PROBLEM_TYPES.iter().enumerate() {
            assert!(t.code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", t.code);
            assert!(PROBLEM_TYPES[i + 1..].iter().all(|o| o.code != t.code), "{} is registered twice", t.code);
            assert!(!t.title.is_empty() && t.meaning.len() > 10 && t.remedy.len() > 5, "{}", t.code);
        }
    }

    #[test]
    fn a_problem_names_its_status_and_links_its_page() {
        let p = Problem::conflict("org_exists", "Organisation 'acme' already exists.");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["status"], 409);
        assert_eq!(v["type"], "/problems/org_exists");
        assert_eq!(v["title"], "Organisation exists");
        assert!(v.get("status_code").is_none());
        let html = page(&problem_type("org_exists").unwrap());
        assert!(html.contains("<h1>Organisation exists</h1>") && html.contains("What to do"));
    }
}
