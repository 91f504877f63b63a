//! The route table: every route of the HTTP API with its resource (which gives its scopes), whether it is
//! public, its handler, and a one-line summary. It is the only source of routes: the routers are built from it
//! (`api::routes_of`), the auth middleware enforces it, `/openapi.json` publishes it, and the SAM template's
//! HttpApi events are checked against it. A method and path that are not in it never reach a handler.

use axum::http::Method;

pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    /// The resource whose `.read` / `.readwrite` scopes guard the route.
    pub resource: &'static str,
    pub public: bool,
    pub summary: &'static str,
    /// Which Lambda function serves it in AWS.
    pub function: &'static str,
    /// The handler that serves it (`api::endpoint` maps each one to its function, exhaustively).
    pub handler: Handler,
}

/// Every handler of the API. Several routes may share one (the query proxy serves one route per method).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    Health,
    OpenApi,
    ProblemPage,
    Callback,
    CreateOrg,
    GetOrg,
    DeleteOrg,
    CreateDb,
    ListDbs,
    DeleteDb,
    CreateContainer,
    ListContainers,
    GetContainer,
    DeleteContainer,
    SetCredentials,
    SetAutoRecovery,
    DeleteAutoRecovery,
    Recover,
    Authorize,
    HandOut,
    Query,
    OData,
    Repairs,
    Audit,
    SetWebhook,
    DeleteWebhook,
    CreateApiToken,
    ListApiTokens,
    RevokeApiToken,
    ListPlatformApiTokens,
    RevokePlatformApiToken,
    SetOrgSettings,
    RevealCredentials,
    FindIdentifier,
    ReleaseIdentifier,
}

impl RouteSpec {
    /// Routes that act on organisations themselves (create, delete) and the platform's own routes
    /// (`/v1/platform/…`) need a platform token: an organisation's own token, even with `admin`, cannot reach
    /// them. Published as `x-chainkeeper-platform-only` in `/openapi.json`.
    pub fn platform_only(&self) -> bool {
        (self.resource == "orgs" && self.method != "GET")
            || self.path.starts_with("/v1/platform/")
            || self.path.starts_with("/v1/identifiers/")
    }
}

const C: &str = "/v1/orgs/{org}/databases/{db}/containers/{alias}";
/// The page of a problem code (every problem document's `type`). A const, so that the route table's `RouteSpec`
/// entries hold no braces (infra/validate.sh reads them with a regular expression).
const PROBLEM_PAGE: &str = "/problems/{code}";

macro_rules! r {
    ($m:literal, $p:expr, $res:literal, $f:literal, $h:ident, $s:literal) => {
        RouteSpec {
            method: $m,
            path: $p,
            resource: $res,
            public: false,
            summary: $s,
            function: $f,
            handler: Handler::$h,
        }
    };
}

pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "GET",
        path: "/healthz",
        resource: "health",
        public: true,
        summary: "Liveness: 200 once chainkeeper serves.",
        function: "manage",
        handler: Handler::Health,
    },
    RouteSpec {
        method: "GET",
        path: "/openapi.json",
        resource: "openapi",
        public: true,
        summary: "This API's OpenAPI 3.1 description.",
        function: "manage",
        handler: Handler::OpenApi,
    },
    RouteSpec {
        method: "GET",
        path: PROBLEM_PAGE,
        resource: "problems",
        public: true,
        summary: "What a problem code means and what to do (every problem document's `type` links to its page).",
        function: "manage",
        handler: Handler::ProblemPage,
    },
    RouteSpec {
        method: "GET",
        path: "/v1/callback",
        resource: "callback",
        public: true,
        summary: "The OAuth2 redirect URI: completes an authorization.",
        function: "callback",
        handler: Handler::Callback,
    },
    r!(
        "POST",
        "/v1/orgs",
        "orgs",
        "manage",
        CreateOrg,
        "Create an organisation and its encryption key (platform token)."
    ),
    r!("GET", "/v1/orgs/{org}", "orgs", "manage", GetOrg, "An organisation."),
    r!(
        "PATCH",
        "/v1/orgs/{org}/settings",
        "settings",
        "manage",
        SetOrgSettings,
        "Change the organisation's settings: allow_credential_reveal (off until turned on)."
    ),
    r!(
        "DELETE",
        "/v1/orgs/{org}",
        "orgs",
        "manage",
        DeleteOrg,
        "Delete an empty organisation and destroy its encryption key (platform token)."
    ),
    r!("POST", "/v1/orgs/{org}/databases", "databases", "manage", CreateDb, "Create a database."),
    r!("GET", "/v1/orgs/{org}/databases", "databases", "manage", ListDbs, "List databases."),
    r!("DELETE", "/v1/orgs/{org}/databases/{db}", "databases", "manage", DeleteDb, "Delete an empty database."),
    r!(
        "POST",
        "/v1/orgs/{org}/databases/{db}/containers",
        "containers",
        "manage",
        CreateContainer,
        "Create a data container."
    ),
    r!(
        "GET",
        "/v1/orgs/{org}/databases/{db}/containers",
        "containers",
        "manage",
        ListContainers,
        "List containers with status and masked credentials."
    ),
    r!("GET", C, "containers", "manage", GetContainer, "A container: status and a masked copy of its credential."),
    r!("DELETE", C, "containers", "manage", DeleteContainer, "Delete a container, its secrets and its identifier."),
    r!(
        "PUT",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/credentials",
        "containers",
        "manage",
        SetCredentials,
        "Set username/password, API token, or client id/secret."
    ),
    r!(
        "GET",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/credentials/reveal",
        "credentials",
        "manage",
        RevealCredentials,
        "The stored password or API token itself, for the organisation's own tools: scope credentials.reveal only (admin does not cover it), where the organisation allows it; every reveal audited."
    ),
    r!(
        "PUT",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/auto-recovery",
        "containers",
        "manage",
        SetAutoRecovery,
        "Store auto-recovery credentials (username, password, TOTP secret), encrypted, kept 1-90 days."
    ),
    r!(
        "DELETE",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/auto-recovery",
        "containers",
        "manage",
        DeleteAutoRecovery,
        "Delete the auto-recovery credentials at once."
    ),
    r!(
        "POST",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/recover",
        "containers",
        "manage",
        Recover,
        "Run auto-recovery now for a chain that needs repair (200 with its outcome; in AWS 202: queued for the recover function)."
    ),
    r!(
        "POST",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/authorize",
        "containers",
        "callback",
        Authorize,
        "Start or renew an authorization: returns the provider's URL (state + PKCE)."
    ),
    r!(
        "POST",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/token",
        "tokens",
        "query",
        HandOut,
        "A valid access token for the caller's own use."
    ),
    r!(
        "GET",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}",
        "query",
        "query",
        Query,
        "The platform's API behind the container's credential (GET; cached when the profile allows)."
    ),
    r!(
        "POST",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}",
        "query",
        "query",
        Query,
        "The platform's API behind the container's credential (POST)."
    ),
    r!(
        "PUT",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}",
        "query",
        "query",
        Query,
        "The platform's API behind the container's credential (PUT)."
    ),
    r!(
        "PATCH",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}",
        "query",
        "query",
        Query,
        "The platform's API behind the container's credential (PATCH)."
    ),
    r!(
        "DELETE",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}",
        "query",
        "query",
        Query,
        "The platform's API behind the container's credential (DELETE)."
    ),
    r!(
        "GET",
        "/v1/orgs/{org}/databases/{db}/containers/{alias}/odata/{*path}",
        "query",
        "query",
        OData,
        "The platform's OData feed for BI tools: paging links point back here; the division placeholder is the current division."
    ),
    r!(
        "GET",
        "/v1/orgs/{org}/repairs",
        "repairs",
        "manage",
        Repairs,
        "Containers that need a person, each with its renew link."
    ),
    r!("GET", "/v1/orgs/{org}/audit", "audit", "manage", Audit, "Who changed which credential when."),
    r!(
        "PUT",
        "/v1/orgs/{org}/webhook",
        "webhooks",
        "manage",
        SetWebhook,
        "Register the organisation's webhook (events: chain.needs_repair, chain.recovered); returns its signing secret once."
    ),
    r!("DELETE", "/v1/orgs/{org}/webhook", "webhooks", "manage", DeleteWebhook, "Remove the organisation's webhook."),
    r!(
        "POST",
        "/v1/orgs/{org}/api-tokens",
        "api-tokens",
        "manage",
        CreateApiToken,
        "Issue an API token of the organisation (the token is shown once)."
    ),
    r!(
        "GET",
        "/v1/orgs/{org}/api-tokens",
        "api-tokens",
        "manage",
        ListApiTokens,
        "List the organisation's API tokens (never the tokens themselves)."
    ),
    r!(
        "DELETE",
        "/v1/orgs/{org}/api-tokens/{id}",
        "api-tokens",
        "manage",
        RevokeApiToken,
        "Revoke an API token, and every token issued through it: refused from its next request on, in every process."
    ),
    r!(
        "GET",
        "/v1/platform/api-tokens",
        "api-tokens",
        "manage",
        ListPlatformApiTokens,
        "List the platform tokens the operator issued (`chainkeeper token issue --platform`; platform token)."
    ),
    r!(
        "DELETE",
        "/v1/platform/api-tokens/{id}",
        "api-tokens",
        "manage",
        RevokePlatformApiToken,
        "Revoke a platform token, and every token issued through it (platform token)."
    ),
    r!(
        "GET",
        "/v1/identifiers/{identifier}",
        "identifiers",
        "manage",
        FindIdentifier,
        "Which organisation, database and container hold a single-instance identifier `client_id#user_id` (platform token)."
    ),
    r!(
        "POST",
        "/v1/identifiers/{identifier}/release",
        "identifiers",
        "manage",
        ReleaseIdentifier,
        "Release a single-instance identifier, with a reason, in the holder's audit log and the asking organisation's (platform token)."
    ),
];

/// The route spec for a matched path template and method. `HEAD` is `GET` without the body: same route, same
/// authentication, same scopes.
pub fn route_for(method: &Method, template: &str) -> Option<&'static RouteSpec> {
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    ROUTES.iter().find(|r| r.path == template && r.method == method)
}

/// The methods the table allows on a path template, for a `405`'s `Allow` header (`HEAD` wherever `GET` is).
pub fn allowed_methods(template: &str) -> Vec<&'static str> {
    let mut methods: Vec<&'static str> = ROUTES.iter().filter(|r| r.path == template).map(|r| r.method).collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_listed_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(
                ROUTES[i + 1..].iter().all(|b| (a.method, a.path) != (b.method, b.path)),
                "{} {} is in the table twice",
                a.method,
                a.path
            );
            assert!(a.method.parse::<Method>().is_ok() && a.method != "HEAD", "{} {}", a.method, a.path);
        }
    }

    #[test]
    fn head_is_get_and_other_methods_are_not_routes() {
        let c = "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}";
        assert_eq!(route_for(&Method::HEAD, c).map(|r| r.method), Some("GET"));
        assert!(route_for(&Method::OPTIONS, c).is_none());
        assert!(route_for(&Method::from_bytes(b"get").unwrap(), c).is_none());
        assert!(route_for(&Method::from_bytes(b"PROPFIND").unwrap(), c).is_none());
        assert_eq!(allowed_methods("/v1/orgs/{org}"), vec!["GET", "DELETE", "HEAD"]);
    }
}
