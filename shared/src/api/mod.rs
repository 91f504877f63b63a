//! The HTTP API: one `axum::Router` per Lambda function, all built here. `chainkeeper serve` merges them on one
//! port; in AWS each function serves its own through `lambda_http`. The same request takes the same code path.

pub mod authorize;
pub mod extract;
pub mod manage;
pub mod openapi;
pub mod query;
pub mod recovery;
pub mod routes;
pub mod token;
pub mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};

use crate::app::Services;
use crate::problem::Problem;

pub type AppState = Arc<Services>;

const C: &str = "/v1/orgs/{org}/databases/{db}/containers/{alias}";

fn with_common(router: Router<AppState>, state: AppState) -> Router {
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi::serve))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::require_token))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn callback_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/callback", get(authorize::callback))
        .route(&format!("{C}/authorize"), post(authorize::start))
}

fn query_routes() -> Router<AppState> {
    Router::new()
        .route(&format!("{C}/token"), post(token::hand_out))
        .route(&format!("{C}/query/{{*path}}"), axum::routing::any(query::proxy))
}

fn manage_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/orgs", post(manage::create_org))
        .route("/v1/orgs/{org}", get(manage::get_org).delete(manage::delete_org))
        .route("/v1/orgs/{org}/databases", post(manage::create_db).get(manage::list_dbs))
        .route("/v1/orgs/{org}/databases/{db}", axum::routing::delete(manage::delete_db))
        .route("/v1/orgs/{org}/databases/{db}/containers", post(manage::create_container).get(manage::list_containers))
        .route(C, get(manage::get_container).delete(manage::delete_container))
        .route(&format!("{C}/credentials"), axum::routing::put(manage::set_credentials))
        .route(&format!("{C}/auto-recovery"), axum::routing::put(recovery::set).delete(recovery::delete))
        .route(&format!("{C}/recover"), post(recovery::run))
        .route("/v1/orgs/{org}/repairs", get(manage::repairs))
        .route("/v1/orgs/{org}/audit", get(manage::audit))
        .route("/v1/orgs/{org}/webhook", axum::routing::put(manage::set_webhook).delete(manage::delete_webhook))
        .route("/v1/orgs/{org}/api-tokens", post(tokens::create).get(tokens::list))
        .route("/v1/orgs/{org}/api-tokens/{id}", axum::routing::delete(tokens::revoke))
}

/// The `callback` function's routes.
pub fn callback_router(state: AppState) -> Router {
    with_common(callback_routes(), state)
}
/// The `query` function's routes.
pub fn query_router(state: AppState) -> Router {
    with_common(query_routes(), state)
}
/// The `manage` function's routes.
pub fn manage_router(state: AppState) -> Router {
    with_common(manage_routes(), state)
}
/// Every route, for `chainkeeper serve`.
pub fn router(state: AppState) -> Router {
    with_common(callback_routes().merge(query_routes()).merge(manage_routes()), state)
}

async fn not_found(uri: Uri) -> Problem {
    let path: String = uri.path().chars().take(200).collect();
    Problem::not_found("no_such_route", format!("There is no route {path}. See /openapi.json for the API."))
}

async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "This route does not take that method. See /openapi.json.")
}
