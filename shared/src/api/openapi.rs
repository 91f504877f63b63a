//! `GET /openapi.json`, generated from the route table, so the published security scopes are exactly the ones
//! the middleware enforces.

use axum::Json;
use serde_json::{Value, json};

use super::routes::ROUTES;
use crate::auth::accepted_scopes;

pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    let mut all_scopes = std::collections::BTreeMap::new();
    all_scopes.insert("admin".to_string(), "Every resource".to_string());
    for r in ROUTES {
        let method: axum::http::Method = r.method.parse().expect("valid method");
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| match name.strip_prefix('*') {
                Some(rest) => json!({"name": rest, "in": "path", "required": true, "description": "a path relative to the platform's API", "schema": {"type": "string"}}),
                None => json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"}}),
            })
            .collect();
        params.extend(query_params(r.method, r.path));
        let success = success_status(r.method, r.path);
        let mut responses = json!({
            "default": {"description": "An error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        });
        responses[success.to_string()] = match (success, r.path) {
            (204, _) => json!({"description": "Done"}),
            (_, p) if p.contains("/query/") => {
                json!({"description": "The platform's answer, passed on", "content": {"*/*": {}}})
            }
            (_, "/v1/callback") => {
                json!({"description": "Authorization complete", "content": {"text/html": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}}})
            }
            (_, "/problems/{code}") => {
                json!({"description": "The page of the problem code", "content": {"text/html": {"schema": {"type": "string"}}}})
            }
            (_, "/healthz") => {
                json!({"description": "Serving", "content": {"text/plain": {"schema": {"type": "string"}}}})
            }
            (_, p) if p.ends_with("/audit") => {
                json!({"description": "One page of entries, newest first", "content": {"application/json": {"schema": {
                "type": "object", "required": ["entries"], "properties": {
                    "entries": {"type": "array", "items": {"type": "object"}},
                    "next_cursor": {"type": "string", "description": "Pass as `cursor` for the next page; absent on the last page."}}}}}})
            }
            _ => json!({"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}),
        };
        if r.path.ends_with("/recover") {
            // In AWS the request is queued for the recover function (api::recovery::run).
            responses["202"] = json!({"description": "Queued for the recover function (AWS): `{\"outcome\": \"queued\", \"next\": …}`", "content": {"application/json": {"schema": {"type": "object"}}}});
        }
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}_{}", r.method.to_lowercase(), r.path.trim_start_matches('/').replace(['/', '{', '}', '.', '*', '-'], "_")),
            "tags": [r.function],
            "parameters": params,
            "responses": responses,
        });
        if let Some(schema) = request_schema(r.method, r.path) {
            op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": schema}}});
        }
        if r.public {
            op["security"] = json!([]);
        } else {
            let scopes = accepted_scopes(&method, r.resource);
            for s in &scopes {
                all_scopes.insert(
                    s.clone(),
                    match s.as_str() {
                        crate::auth::REVEAL_SCOPE => {
                            "Read stored passwords and API tokens (not covered by admin)".into()
                        }
                        _ => format!(
                            "{} on {}",
                            if s.ends_with(".read") { "Read" } else { "Read and write" },
                            r.resource
                        ),
                    },
                );
            }
            let mut alternatives: Vec<Value> = scopes.iter().map(|s| json!({"apiToken": [s]})).collect();
            // The reveal scope stands apart: `admin` does not cover it (auth::REVEAL_SCOPE).
            if r.resource != crate::auth::REVEAL_RESOURCE {
                alternatives.push(json!({"apiToken": ["admin"]}));
            }
            op["security"] = Value::Array(alternatives);
            op["x-chainkeeper-resource"] = json!(r.resource);
            if r.platform_only() {
                op["x-chainkeeper-platform-only"] = json!(true);
            }
        }
        let entry = paths.entry(r.path.replace("{*", "{")).or_insert_with(|| json!({}));
        entry[r.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "chainkeeper", "version": env!("CARGO_PKG_VERSION"), "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": format!("Scopes: {}", all_scopes.keys().cloned().collect::<Vec<_>>().join(", "))}},
            "schemas": {
                "Problem": {"type": "object", "description": "RFC 9457 problem details; `type` leads to the code's page under /problems/{code}.", "required": ["type", "title", "status", "code", "detail"], "properties": {
                    "type": {"type": "string", "format": "uri-reference"}, "title": {"type": "string"}, "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "code": {"type": "string"}, "detail": {"type": "string"}, "retry_after": {"type": "integer"}}}
            }
        }
    })
}

/// What the API says about itself, limits included (their defaults; `[limits]` in the config changes them).
const DESCRIPTION: &str = "Keeps OAuth2 and other credentials of data containers alive and safe.\n\n\
Limits (defaults; an operator may change them): JSON request bodies up to 64 KiB and query-proxy bodies up to \
10 MiB (`413 body_too_large`); 200 requests a second per API token with bursts of 400 (`429 rate_limited` with \
`Retry-After`); 1024 requests at once per process (`503 overloaded` with `Retry-After`); an answer begins within \
120 s (`503 request_timeout`); request headers arrive within 10 s or the connection is closed. Lists that can \
grow without bound are paged: `limit` (1-1000) and the opaque `cursor` from the previous page's `next_cursor`.";

/// Query parameters of a route.
fn query_params(method: &str, path: &str) -> Vec<Value> {
    match (method, path.rsplit('/').next().unwrap_or("")) {
        ("GET", "audit") => vec![
            json!({"name": "limit", "in": "query", "required": false, "description": "Entries on this page (1-1000).",
                   "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}),
            json!({"name": "cursor", "in": "query", "required": false, "description": "`next_cursor` of the previous page; opaque.",
                   "schema": {"type": "string"}}),
        ],
        // The query proxy's and the OData feed's reads: BI tools may send the token as a URL key.
        ("GET", "{*path}") => vec![json!({"name": "api_key", "in": "query", "required": false,
                   "description": "The API token, for BI tools that send a key in the URL (Power Query's Web API credential with `ApiKeyName = \"api_key\"`); taken out of the URL before it is forwarded, cached or logged. Instead of `Authorization: Bearer` or the Basic password.",
                   "schema": {"type": "string"}})],
        _ => Vec::new(),
    }
}

fn success_status(method: &str, path: &str) -> u16 {
    match method {
        "DELETE" if !path.contains("/query/") => 204,
        "POST"
            if path.ends_with("/v1/orgs")
                || path.ends_with("/databases")
                || path.ends_with("/containers")
                || path.ends_with("/api-tokens") =>
        {
            201
        }
        _ => 200,
    }
}

/// The JSON body each route takes (the handlers' `Deserialize` types, written out).
fn request_schema(method: &str, path: &str) -> Option<Value> {
    let name = json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"});
    let text = json!({"type": "string"});
    let object = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required, "additionalProperties": false});
    Some(match (method, path.rsplit('/').next().unwrap_or("")) {
        ("POST", "orgs") => object(json!({"name": name, "display_name": text}), &["name"]),
        ("POST", "databases") => object(json!({"name": name, "description": text}), &["name"]),
        ("POST", "containers") => object(
            json!({"alias": name, "kind": {"type": "string", "enum": ["password", "api_token", "oauth2_code", "oauth2_client_credentials", "oauth2_password"]},
                   "provider": text, "scopes": {"type": "array", "items": text}}),
            &["alias", "kind"],
        ),
        ("PUT", "credentials") => object(
            json!({"username": text, "password": text, "api_token": text, "client_id": text, "client_secret": text}),
            &[],
        ),
        ("POST", "api-tokens") => object(
            json!({"subject": text, "scopes": {"type": "array", "items": text, "minItems": 1}, "expires_in_s": {"type": "integer", "minimum": 60}}),
            &["subject", "scopes"],
        ),
        ("POST", "authorize") => object(
            json!({"replace_user": {"type": "boolean", "default": false,
                "description": "Allow completing the authorization as another provider user than the container's current one."}}),
            &[],
        ),
        ("POST", "token") => object(json!({}), &[]),
        ("PUT", "auto-recovery") => object(
            json!({"username": text, "password": text, "totp_secret": text, "retention_days": {"type": "integer", "minimum": 1, "maximum": 90}}),
            &["username", "password"],
        ),
        ("POST", "recover") => object(json!({}), &[]),
        ("PATCH", "settings") => object(json!({"allow_credential_reveal": {"type": "boolean"}}), &[]),
        ("POST", "release") => object(json!({"reason": text, "asked_by_org": name}), &["reason"]),
        ("PUT", "webhook") => object(
            json!({
                "url": {"type": "string", "format": "uri"},
                "events": {"type": "array", "items": {"type": "string", "enum": crate::app::webhooks::EVENT_TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>()}},
            }),
            &["url"],
        ),
        _ => return None,
    })
}

pub async fn serve() -> Json<Value> {
    Json(document())
}
