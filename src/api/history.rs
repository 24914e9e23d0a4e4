//! The job history over HTTP: admins search every tenant's finished jobs
//! (`GET /admin/v1/jobs/search?q=`), a tenant lists its own (`GET /v1/jobs`). Both read
//! `history::search`, newest first, in stable cursor pages; a tenant's list is limited to the
//! tenant outside the query, so no parameter can widen it.

use super::AppState;
use super::error::Result;
use super::extract::{Admin, FieldErrors, Query, Tenant};
use super::pagination::{Page, PageParams};
use crate::history::search::{self, HistoryJob, Term};
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// e.g. `tenant:acme kind:invoice status:dead args.order_number:ORD-2026-000123
    /// error:"timed out" after:2026-11-01` (see the README's "Job history").
    pub q: Option<String>,
    /// Items per page, 1..=500 (default 50).
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// Runs a parsed query for a page; bad paging is 422 naming `limit` or `cursor`.
pub async fn page_of(
    state: &AppState,
    query: &search::Query,
    limit: Option<String>,
    cursor: Option<String>,
    errors: FieldErrors,
) -> Result<Page<HistoryJob>> {
    let mut errors = errors;
    let page = PageParams { limit, cursor }.parse_into(&mut errors);
    let after = match page.as_ref().and_then(|p| p.after.as_deref()) {
        Some(raw) => errors.check(
            "cursor",
            search::parse_cursor_key(raw).ok_or("is not a cursor from this API".to_string()),
        ),
        None => None,
    };
    errors.finish()?;
    let page = page.expect("checked");
    let rows = search::search(&state.db, query, after.as_ref(), page.limit).await?;
    Ok(Page::from_rows(rows, page.limit, search::cursor_key))
}

/// Searches every tenant's finished jobs (the job history, kept `BACKROOM_JOB_HISTORY_DAYS`).
#[utoipa::path(get, path = "/admin/v1/jobs/search", tag = "admin", security(("admin_token" = [])),
    params(SearchParams),
    responses((status = 200, body = Page<HistoryJob>), (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn search_jobs(
    _: Admin,
    State(state): State<AppState>,
    Query(params): Query<SearchParams>,
) -> Result<axum::Json<Page<HistoryJob>>> {
    let mut errors = FieldErrors::default();
    let query = errors
        .check("q", search::Query::parse(params.q.as_deref().unwrap_or("")))
        .unwrap_or_default();
    page_of(&state, &query, params.limit, params.cursor, errors)
        .await
        .map(axum::Json)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantJobParams {
    /// A kind (`stock_adjustment`) or queue (`invoices`).
    pub kind: Option<String>,
    /// succeeded, failed, dead or cancelled.
    pub status: Option<String>,
    /// Finished at or after this date or time.
    pub after: Option<String>,
    /// Finished before this date or time.
    pub before: Option<String>,
    /// Items per page, 1..=500 (default 50).
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The calling tenant's finished jobs, newest first (the job history). A job still queued or
/// running is read by its id (`GET /v1/jobs/{id}`).
#[utoipa::path(get, path = "/v1/jobs", tag = "tenant", security(("tenant_key" = [])),
    params(TenantJobParams),
    responses((status = 200, body = Page<HistoryJob>), (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn list_tenant_jobs(
    tenant: Tenant,
    State(state): State<AppState>,
    Query(params): Query<TenantJobParams>,
) -> Result<axum::Json<Page<HistoryJob>>> {
    let mut errors = FieldErrors::default();
    let mut query = search::Query {
        terms: vec![],
        tenant_id: Some(tenant.id),
    };
    // Each parameter is one term of the search language, checked the same way.
    for (name, value) in [
        ("kind", &params.kind),
        ("status", &params.status),
        ("after", &params.after),
        ("before", &params.before),
    ] {
        let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) else {
            continue;
        };
        if value.contains(char::is_whitespace) || value.contains('"') {
            errors.push(name, "must be one word");
            continue;
        }
        let parsed = search::Query::parse(&format!("{name}:{value}"))
            .map_err(|e| e.replacen(&format!("{name}:{value}: "), "", 1));
        if let Some(mut parsed) = errors.check(name, parsed) {
            let term: Term = parsed.terms.remove(0);
            query.terms.push(term);
        }
    }
    page_of(&state, &query, params.limit, params.cursor, errors)
        .await
        .map(axum::Json)
}
