//! The platform operators' page: every organisation, with how many of its containers need repair. Only a
//! platform session sees it (the scope of `POST /v1/orgs`, a platform-only route).

use axum::extract::State;
use axum::http::StatusCode;
use maud::html;

use super::{PageResult, Signed, page_with, problem_page, when};
use crate::api::AppState;
use crate::api::routes::Handler;

/// `GET /console/platform`.
pub async fn show(State(app): State<AppState>, s: Signed) -> PageResult {
    s.require_route(&app, Handler::CreateOrg, None)?;
    let orgs = app.orgs.list().await.map_err(|e| problem_page(&s, e))?;
    let mut rows = Vec::new();
    for rec in &orgs {
        let repairs = app.containers.repairs(&rec.name).await.map(|r| r.len()).ok();
        rows.push((rec, repairs));
    }
    let body = html! {
        h1 { "All organisations" }
        @if orgs.is_empty() { p { "No organisations yet." } } @else {
            div class="table-wrap" tabindex="0" role="region" aria-labelledby="table-caption" {
                table {
                    caption id="table-caption" { (orgs.len()) " organisations" }
                    thead { tr {
                        th scope="col" { "Organisation" } th scope="col" { "Name" } th scope="col" { "Created" }
                        th scope="col" { "Containers needing repair" }
                    } }
                    tbody {
                        @for (rec, repairs) in &rows {
                            tr {
                                td { a href=(format!("/console/orgs/{}", rec.name)) { (rec.name) } }
                                td { (rec.display_name.as_deref().unwrap_or("")) }
                                td { (when(rec.created_at_ms)) }
                                td { @match repairs {
                                    Some(0) => span class="counter ok" { "0" },
                                    Some(n) => span class="counter bad" { (n) },
                                    None => "unknown (could not be read)",
                                } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page_with(&s, StatusCode::OK, "All organisations", body))
}
