//! The route table: every route of the HTTP API with its resource (which gives its scopes), whether it is
//! public, and a one-line summary. The auth middleware and `/openapi.json` both read this one table.

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
}

impl RouteSpec {
    /// Routes that act on organisations themselves (create, delete) need a platform token: an organisation's
    /// own token, even with `admin`, cannot create or delete organisations. Published as
    /// `x-chainkeeper-platform-only` in `/openapi.json`.
    pub fn platform_only(&self) -> bool {
        self.resource == "orgs" && self.method != "GET"
    }
}

const C: &str = "/v1/orgs/{org}/databases/{db}/containers/{alias}";

macro_rules! r {
    ($m:literal, $p:expr, $res:literal, $f:literal, $s:literal) => {
        RouteSpec { method: $m, path: $p, resource: $res, public: false, summary: $s, function: $f }
    };
}

pub const ROUTES: &[RouteSpec] = &[
    RouteSpec { method: "GET", path: "/healthz", resource: "health", public: true, summary: "Liveness: 200 once chainkeeper serves.", function: "manage" },
    RouteSpec { method: "GET", path: "/openapi.json", resource: "openapi", public: true, summary: "This API's OpenAPI 3.1 description.", function: "manage" },
    RouteSpec { method: "GET", path: "/v1/callback", resource: "callback", public: true, summary: "The OAuth2 redirect URI: completes an authorization.", function: "callback" },
    r!("POST", "/v1/orgs", "orgs", "manage", "Create an organisation and its encryption key (platform token)."),
    r!("GET", "/v1/orgs/{org}", "orgs", "manage", "An organisation."),
    r!("DELETE", "/v1/orgs/{org}", "orgs", "manage", "Delete an empty organisation and destroy its encryption key (platform token)."),
    r!("POST", "/v1/orgs/{org}/databases", "databases", "manage", "Create a database."),
    r!("GET", "/v1/orgs/{org}/databases", "databases", "manage", "List databases."),
    r!("DELETE", "/v1/orgs/{org}/databases/{db}", "databases", "manage", "Delete an empty database."),
    r!("POST", "/v1/orgs/{org}/databases/{db}/containers", "containers", "manage", "Create a data container."),
    r!("GET", "/v1/orgs/{org}/databases/{db}/containers", "containers", "manage", "List containers with status and masked credentials."),
    r!("GET", C, "containers", "manage", "A container: status and a masked copy of its credential."),
    r!("DELETE", C, "containers", "manage", "Delete a container, its secrets and its identifier."),
    r!("PUT", "/v1/orgs/{org}/databases/{db}/containers/{alias}/credentials", "containers", "manage", "Set username/password, API token, or client id/secret."),
    r!("PUT", "/v1/orgs/{org}/databases/{db}/containers/{alias}/auto-recovery", "containers", "manage", "Store auto-recovery credentials (username, password, TOTP secret), encrypted, kept 1-90 days."),
    r!("DELETE", "/v1/orgs/{org}/databases/{db}/containers/{alias}/auto-recovery", "containers", "manage", "Delete the auto-recovery credentials at once."),
    r!("POST", "/v1/orgs/{org}/databases/{db}/containers/{alias}/recover", "containers", "manage", "Run auto-recovery now for a chain that needs repair."),
    r!("POST", "/v1/orgs/{org}/databases/{db}/containers/{alias}/authorize", "containers", "callback", "Start or renew an authorization: returns the provider's URL (state + PKCE)."),
    r!("POST", "/v1/orgs/{org}/databases/{db}/containers/{alias}/token", "tokens", "query", "A valid access token for the caller's own use."),
    r!("GET", "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}", "query", "query", "The platform's API behind the container's credential (GET; cached when the profile allows)."),
    r!("POST", "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}", "query", "query", "The platform's API behind the container's credential (POST)."),
    r!("PUT", "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}", "query", "query", "The platform's API behind the container's credential (PUT)."),
    r!("PATCH", "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}", "query", "query", "The platform's API behind the container's credential (PATCH)."),
    r!("DELETE", "/v1/orgs/{org}/databases/{db}/containers/{alias}/query/{*path}", "query", "query", "The platform's API behind the container's credential (DELETE)."),
    r!("GET", "/v1/orgs/{org}/repairs", "repairs", "manage", "Containers that need a person, each with its renew link."),
    r!("GET", "/v1/orgs/{org}/audit", "audit", "manage", "Who changed which credential when."),
    r!("PUT", "/v1/orgs/{org}/webhook", "webhooks", "manage", "Register the organisation's webhook (events: chain.needs_repair, chain.recovered); returns its signing secret once."),
    r!("DELETE", "/v1/orgs/{org}/webhook", "webhooks", "manage", "Remove the organisation's webhook."),
    r!("POST", "/v1/orgs/{org}/api-tokens", "api-tokens", "manage", "Issue an API token of the organisation (the token is shown once)."),
    r!("GET", "/v1/orgs/{org}/api-tokens", "api-tokens", "manage", "List the organisation's API tokens (never the tokens themselves)."),
    r!("DELETE", "/v1/orgs/{org}/api-tokens/{id}", "api-tokens", "manage", "Revoke an API token: refused from its next request on, in every process."),
];

/// The route spec for a matched path template and method.
pub fn route_for(method: &Method, template: &str) -> Option<&'static RouteSpec> {
    ROUTES.iter().find(|r| r.path == template && r.method == method.as_str())
}
