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

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::app::Services;
use crate::problem::Problem;
use routes::{Handler, ROUTES, RouteSpec};

pub type AppState = Arc<Services>;

/// The handler of one route of the table, on exactly that route's method (axum serves `HEAD` with a `GET`
/// handler). The match is exhaustive: a handler added to the table without a function here does not compile.
fn endpoint(spec: &RouteSpec) -> MethodRouter<AppState> {
    let method: Method = spec.method.parse().expect("route table methods are valid");
    let filter = MethodFilter::try_from(method).expect("route table methods are standard");
    match spec.handler {
        Handler::Health => on(filter, || async { "ok" }),
        Handler::OpenApi => on(filter, openapi::serve),
        Handler::ProblemPage => on(filter, problem_page),
        Handler::Callback => on(filter, authorize::callback),
        Handler::CreateOrg => on(filter, manage::create_org),
        Handler::GetOrg => on(filter, manage::get_org),
        Handler::DeleteOrg => on(filter, manage::delete_org),
        Handler::CreateDb => on(filter, manage::create_db),
        Handler::ListDbs => on(filter, manage::list_dbs),
        Handler::DeleteDb => on(filter, manage::delete_db),
        Handler::CreateContainer => on(filter, manage::create_container),
        Handler::ListContainers => on(filter, manage::list_containers),
        Handler::GetContainer => on(filter, manage::get_container),
        Handler::DeleteContainer => on(filter, manage::delete_container),
        Handler::SetCredentials => on(filter, manage::set_credentials),
        Handler::SetAutoRecovery => on(filter, recovery::set),
        Handler::DeleteAutoRecovery => on(filter, recovery::delete),
        Handler::Recover => on(filter, recovery::run),
        Handler::Authorize => on(filter, authorize::start),
        Handler::HandOut => on(filter, token::hand_out),
        Handler::Query => on(filter, query::proxy),
        Handler::Repairs => on(filter, manage::repairs),
        Handler::Audit => on(filter, manage::audit),
        Handler::SetWebhook => on(filter, manage::set_webhook),
        Handler::DeleteWebhook => on(filter, manage::delete_webhook),
        Handler::CreateApiToken => on(filter, tokens::create),
        Handler::ListApiTokens => on(filter, tokens::list),
        Handler::RevokeApiToken => on(filter, tokens::revoke),
    }
}

/// The routes of the table that `function` serves (every route for `None`), built from the table and nothing
/// else. Liveness and the API description are served by every function.
fn routes_of(function: Option<&str>) -> Router<AppState> {
    let mut by_path: BTreeMap<&str, MethodRouter<AppState>> = BTreeMap::new();
    let served = ROUTES.iter().filter(|r| {
        function.is_none_or(|f| r.function == f || matches!(r.handler, Handler::Health | Handler::OpenApi))
    });
    for spec in served {
        let merged = by_path.remove(spec.path).unwrap_or_default().merge(endpoint(spec));
        by_path.insert(spec.path, merged);
    }
    by_path.into_iter().fold(Router::new(), |router, (path, methods)| router.route(path, methods))
}

fn with_common(router: Router<AppState>, state: AppState) -> Router {
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::require_token))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The `callback` function's routes.
pub fn callback_router(state: AppState) -> Router {
    with_common(routes_of(Some("callback")), state)
}
/// The `query` function's routes.
pub fn query_router(state: AppState) -> Router {
    with_common(routes_of(Some("query")), state)
}
/// The `manage` function's routes.
pub fn manage_router(state: AppState) -> Router {
    with_common(routes_of(Some("manage")), state)
}
/// Every route, for `chainkeeper serve`.
pub fn router(state: AppState) -> Router {
    with_common(routes_of(None), state)
}

/// `GET /problems/{code}`: what a problem code means and what to do (every problem's `type` links here).
async fn problem_page(axum::extract::Path(code): axum::extract::Path<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match crate::problem::problem_type(&code) {
        Some(t) => axum::response::Html(crate::problem::page(&t)).into_response(),
        None => Problem::not_found(
            "no_such_problem_type",
            "There is no problem code of that name. Problem documents link to their own page in `type`.",
        )
        .into_response(),
    }
}

async fn not_found(uri: Uri) -> Problem {
    let path: String = uri.path().chars().take(200).collect();
    Problem::not_found("no_such_route", format!("There is no route {path}. See /openapi.json for the API."))
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This route does not take that method. See /openapi.json.",
    )
}

/// A `405` for a path of the table whose method is not: never passed to a handler. `Allow` lists what the table has.
pub(crate) fn method_not_in_table(template: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let allow = routes::allowed_methods(template).join(", ");
    let mut res = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("This route takes {allow}. See /openapi.json."),
    )
    .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&allow) {
        res.headers_mut().insert(axum::http::header::ALLOW, v);
    }
    res
}
