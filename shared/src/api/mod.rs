//! The HTTP API: one `axum::Router` per Lambda function, all built here from the route table ([`routes`]).
//! `chainkeeper serve` merges them on one port; in AWS each function serves its own through `lambda_http`. The
//! same request takes the same code path.
//!
//! A handler only parses (names, body), calls one use case of [`crate::app`], and renders its answer; every
//! error becomes a problem document in [`errors`]. Nothing outside this module imports it.
//!
//! | module | what |
//! | --- | --- |
//! | [`routes`] | the route table: method, path, resource (scopes), public or not, function, handler |
//! | [`auth`] | the middleware that checks API tokens and scopes against the table |
//! | [`extract`] | path names, JSON bodies and the caller, with problem+json rejections |
//! | [`problem`], [`errors`] | problem documents and their registry; every error → problem mapping |
//! | [`openapi`] | `/openapi.json`, generated from the table |
//! | [`limits`], [`server`] | concurrency cap, request timeout, per-token rate limits, body limits; `serve`'s connection loop with the header read timeout |
//! | [`console`] | the web console for people: sign-in, sessions, HTML pages under `/console` |
//! | [`orgs`], [`webhooks`], [`containers`], [`authorization`], [`handout`], [`query`], [`recovery`], [`api_tokens`], [`audit`] | the handlers, one module per use-case area |

pub mod api_tokens;
pub mod audit;
pub mod auth;
pub mod authorization;
pub mod console;
pub mod containers;
pub mod errors;
pub mod extract;
pub mod handout;
pub mod identifiers;
pub mod limits;
pub mod openapi;
pub mod orgs;
pub mod problem;
pub mod query;
pub mod recovery;
pub mod routes;
pub mod server;
pub mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::app::App;
use crate::config::LimitsConfig;
use problem::Problem;
use routes::{Handler, ROUTES, RouteSpec};

/// What every handler gets: the application.
pub type AppState = Arc<App>;

/// The handler of one route of the table, on exactly that route's method (axum serves `HEAD` with a `GET`
/// handler). The match is exhaustive: a handler added to the table without a function here does not compile.
fn endpoint(spec: &RouteSpec) -> MethodRouter<AppState> {
    let method: Method = spec.method.parse().expect("route table methods are valid");
    let filter = MethodFilter::try_from(method).expect("route table methods are standard");
    match spec.handler {
        Handler::Health => on(filter, || async { "ok" }),
        Handler::OpenApi => on(filter, openapi::serve),
        Handler::ProblemPage => on(filter, problem::serve_page),
        Handler::Callback => on(filter, authorization::callback),
        Handler::CreateOrg => on(filter, orgs::create_org),
        Handler::GetOrg => on(filter, orgs::get_org),
        Handler::DeleteOrg => on(filter, orgs::delete_org),
        Handler::CreateDb => on(filter, orgs::create_db),
        Handler::ListDbs => on(filter, orgs::list_dbs),
        Handler::DeleteDb => on(filter, orgs::delete_db),
        Handler::CreateContainer => on(filter, containers::create),
        Handler::ListContainers => on(filter, containers::list),
        Handler::GetContainer => on(filter, containers::get),
        Handler::DeleteContainer => on(filter, containers::delete),
        Handler::SetCredentials => on(filter, containers::set_credentials),
        Handler::SetAutoRecovery => on(filter, recovery::set),
        Handler::DeleteAutoRecovery => on(filter, recovery::delete),
        Handler::Recover => on(filter, recovery::run),
        Handler::Authorize => on(filter, authorization::start),
        Handler::HandOut => on(filter, handout::hand_out),
        Handler::Query => on(filter, query::proxy),
        Handler::OData => on(filter, query::odata),
        Handler::Repairs => on(filter, containers::repairs),
        Handler::Audit => on(filter, audit::list),
        Handler::SetWebhook => on(filter, webhooks::set),
        Handler::DeleteWebhook => on(filter, webhooks::delete),
        Handler::CreateApiToken => on(filter, api_tokens::create),
        Handler::ListApiTokens => on(filter, api_tokens::list),
        Handler::RevokeApiToken => on(filter, api_tokens::revoke),
        Handler::ListPlatformApiTokens => on(filter, api_tokens::list_platform),
        Handler::RevokePlatformApiToken => on(filter, api_tokens::revoke_platform),
        Handler::SetOrgSettings => on(filter, orgs::set_settings),
        Handler::RevealCredentials => on(filter, containers::reveal),
        Handler::FindIdentifier => on(filter, identifiers::find),
        Handler::ReleaseIdentifier => on(filter, identifiers::release),
    }
}

/// The largest request body a route takes: the query proxy forwards bodies, every other route reads JSON.
pub fn body_limit(spec: &RouteSpec, limits: &LimitsConfig) -> usize {
    match spec.handler {
        Handler::Query => limits.proxy_body_bytes,
        _ => limits.json_body_bytes,
    }
}

/// The routes of the table that `function` serves (every route for `None`), built from the table and nothing
/// else, each with its body limit. Liveness and the API description are served by every function.
fn routes_of(function: Option<&str>, limits: &LimitsConfig) -> Router<AppState> {
    let mut by_path: BTreeMap<&str, MethodRouter<AppState>> = BTreeMap::new();
    let served = ROUTES.iter().filter(|r| {
        function.is_none_or(|f| r.function == f || matches!(r.handler, Handler::Health | Handler::OpenApi))
    });
    for spec in served {
        let limit = body_limit(spec, limits);
        let limits = (DefaultBodyLimit::max(limit), axum::Extension(extract::BodyLimit(limit)));
        let endpoint: MethodRouter<AppState> = endpoint(spec).layer(limits);
        let merged = by_path.remove(spec.path).unwrap_or_default().merge(endpoint);
        by_path.insert(spec.path, merged);
    }
    by_path.into_iter().fold(Router::new(), |router, (path, methods)| router.route(path, methods))
}

/// Auth (then the per-token rate limit) on every route of the table; the request timeout and the concurrency
/// cap on everything, the 404 and 405 answers included.
fn with_common(function: Option<&str>, state: AppState) -> Router {
    use axum::middleware::from_fn_with_state;
    let cfg = state.config.limits.clone();
    let limiter = limits::RateLimiter::from_config(&cfg).map(Arc::new);
    let admission = limits::Admission {
        permits: (cfg.max_concurrent_requests > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_requests))),
        timeout: Duration::from_secs_f64(cfg.request_timeout_s),
    };
    let mut router = routes_of(function, &cfg)
        .route_layer(from_fn_with_state(auth::Gate { app: state.clone(), limiter }, auth::require_token));
    // The console (its own sessions, not API tokens) is served where the management API is.
    if function.is_none_or(|f| f == "manage") {
        router = router.merge(console::router());
    }
    let mut router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(admission, limits::admit));
    // Only in a Lambda function: `serve`'s background work runs on by itself, and its answers never wait.
    if state.background.is_tracked() {
        router = router.layer(from_fn_with_state(state.clone(), settle_background));
    }
    router.with_state(state)
}

/// The `callback` function's routes.
pub fn callback_router(state: AppState) -> Router {
    with_common(Some("callback"), state)
}
/// The `query` function's routes.
pub fn query_router(state: AppState) -> Router {
    with_common(Some("query"), state)
}
/// The `manage` function's routes.
pub fn manage_router(state: AppState) -> Router {
    with_common(Some("manage"), state)
}
/// Every route, for `chainkeeper serve`.
pub fn router(state: AppState) -> Router {
    with_common(None, state)
}

/// The answer leaves only once the work the request started in the background (a recovery hand-off, a webhook
/// delivery) has finished, within a bound (`app::background`): a Lambda function may be frozen as soon as it
/// answers.
async fn settle_background(
    axum::extract::State(app): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(req).await;
    app.background.settle().await;
    response
}

async fn not_found(uri: Uri) -> Problem {
    errors::no_such_route(uri.path())
}

async fn method_not_allowed() -> Problem {
    errors::method_not_allowed(None)
}
