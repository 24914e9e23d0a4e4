//! The search page: the job history by the same query language as `GET /admin/v1/jobs/search`.

use super::{Signed, invalid_text, link, page, time};
use crate::api::AppState;
use crate::api::error::{Error, Result};
use crate::api::extract::FieldErrors;
use crate::history::search;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

#[derive(Deserialize, Default)]
pub(super) struct SearchForm {
    q: Option<String>,
    cursor: Option<String>,
}

pub(super) async fn search_page(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Query(form): Query<SearchForm>,
) -> Result<Response> {
    let q = form.q.clone().unwrap_or_default();
    let searched = !q.trim().is_empty();
    let mut jobs = vec![];
    let mut live = None;
    let mut older = None;
    let mut error = None;
    if searched {
        let outcome = match search::Query::parse(&q) {
            Ok(mut query) => {
                query.within = actor.tenants.clone();
                // The live jobs lead the first page; later pages are the history's.
                if form.cursor.is_none() {
                    live = Some(live_rows(&state, &query).await?);
                }
                crate::api::history::page_of(
                    &state,
                    &query,
                    None,
                    form.cursor.clone(),
                    FieldErrors::default(),
                )
                .await
            }
            Err(e) => Err(Error::invalid("q", e)),
        };
        match outcome {
            Ok(p) => {
                older = p
                    .next_cursor
                    .map(|cursor| link("/admin/search", &[("q", &q), ("cursor", &cursor)]));
                jobs = p
                    .items
                    .into_iter()
                    .map(|j| {
                        minijinja::context! {
                            id => j.id, tenant => j.tenant, kind => j.kind, status => j.status,
                            attempts => j.attempts, payload => j.payload.to_string(),
                            last_error => j.last_error, finished_at => time(j.finished_at),
                        }
                    })
                    .collect();
            }
            Err(Error::Validation(errors)) => error = Some(invalid_text(&errors)),
            Err(e) => return Err(e),
        }
    }
    page(
        "search.html",
        minijinja::context! {
            title => "Search", nav => "search", limited => actor.tenants.is_some(), csrf => s.csrf.clone(), q, searched, jobs, older,
            live, error, days => state.settings.job_history_days,
            scan => crate::history::live::LIVE_SCAN,
        },
    )
}

/// The live matches as the page shows them.
async fn live_rows(state: &AppState, query: &search::Query) -> Result<minijinja::Value> {
    let found = crate::api::history::live_matches(state, query).await?;
    let jobs: Vec<minijinja::Value> = found
        .jobs
        .into_iter()
        .map(|j| {
            minijinja::context! {
                id => j.id, tenant => j.tenant, kind => j.kind, status => j.status,
                attempts => j.attempts, payload => j.payload.to_string(),
                last_error => j.last_error, created_at => time(j.created_at),
            }
        })
        .collect();
    Ok(minijinja::context! { jobs, scanned => found.scanned, complete => found.complete })
}
