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
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| match name.strip_prefix('*') {
                Some(rest) => json!({"name": rest, "in": "path", "required": true, "description": "a path relative to the platform's API", "schema": {"type": "string"}}),
                None => json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"}}),
            })
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}_{}", r.method.to_lowercase(), r.path.trim_start_matches('/').replace(['/', '{', '}', '.', '*', '-'], "_")),
            "tags": [r.function],
            "parameters": params,
            "responses": {
                "default": {"description": "An error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            }
        });
        if r.public {
            op["security"] = json!([]);
        } else {
            let scopes = accepted_scopes(&method, r.resource);
            for s in &scopes {
                all_scopes.insert(s.clone(), format!("{} on {}", if s.ends_with(".read") { "Read" } else { "Read and write" }, r.resource));
            }
            let mut alternatives: Vec<Value> = scopes.iter().map(|s| json!({"apiToken": [s]})).collect();
            alternatives.push(json!({"apiToken": ["admin"]}));
            op["security"] = Value::Array(alternatives);
            op["x-chainkeeper-resource"] = json!(r.resource);
        }
        let entry = paths.entry(r.path.replace("{*", "{")).or_insert_with(|| json!({}));
        entry[r.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "chainkeeper", "version": env!("CARGO_PKG_VERSION"), "description": "Keeps OAuth2 and other credentials of data containers alive and safe."},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": format!("Scopes: {}", all_scopes.keys().cloned().collect::<Vec<_>>().join(", "))}},
            "schemas": {
                "Problem": {"type": "object", "required": ["code", "detail", "status_code"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status_code": {"type": "integer"},
                    "code": {"type": "string"}, "detail": {"type": "string"}, "retry_after": {"type": "integer"}}}
            }
        }
    })
}

pub async fn serve() -> Json<Value> {
    Json(document())
}
