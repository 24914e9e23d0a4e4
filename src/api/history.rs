//! The job history over HTTP: admins search every tenant's jobs (`GET /admin/v1/jobs/search?q=`)
//! and read their counts over days (`GET /admin/v1/stats`), a tenant lists its own
//! (`GET /v1/jobs`). Both read the finished jobs from `history::search`, newest first, in stable
//! cursor pages, and on the first page the live ones from `history::live`; a tenant's list is
//! limited to the tenant outside the query, so no parameter can widen it.

use super::AppState;
use super::error::{Error, Result};
use super::extract::{Admin, FieldErrors, Query, Tenant};
use super::operators::Actor;
use super::pagination::{Page, PageParams};
use crate::history::live::{self, LiveMatches};
use crate::history::search::{self, HistoryJob, Term};
use crate::history::stats;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};

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

/// A search's answer: a page of finished jobs and, on the first page, the live ones.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobSearch {
    /// Finished jobs (the history), newest first.
    pub items: Vec<HistoryJob>,
    /// Pass as `?cursor=` for the next page of the history; `null` on the last page.
    pub next_cursor: Option<String>,
    /// Jobs not finished yet that match (the first page only; `null` on later pages).
    pub live: Option<LiveMatches>,
}

/// Searches every tenant's jobs: those still in the queues (`live`, read from Redis, bounded)
/// and the finished ones (the job history, kept `BACKROOM_JOB_HISTORY_DAYS`, in stable pages).
#[utoipa::path(get, path = "/admin/v1/jobs/search", tag = "admin", security(("admin_token" = [])),
    params(SearchParams),
    responses((status = 200, body = JobSearch), (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn search_jobs(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Query(params): Query<SearchParams>,
) -> Result<axum::Json<JobSearch>> {
    let mut errors = FieldErrors::default();
    let mut query = errors
        .check("q", search::Query::parse(params.q.as_deref().unwrap_or("")))
        .unwrap_or_default();
    query.within = actor.tenants.clone();
    searched(&state, &query, params.limit, params.cursor, errors)
        .await
        .map(axum::Json)
}

/// The live jobs matching a query (`history::live`), tenants named by slug.
pub async fn live_matches(state: &AppState, query: &search::Query) -> Result<LiveMatches> {
    let named: Vec<String> = query
        .terms
        .iter()
        .filter_map(|t| match t {
            Term::Tenant(slug) => Some(slug.clone()),
            _ => None,
        })
        .collect();
    let mut tenants: HashMap<String, uuid::Uuid> = HashMap::new();
    if !named.is_empty() {
        let rows = sqlx::query!("SELECT id, slug FROM tenants WHERE slug = ANY($1)", &named)
            .fetch_all(&state.db)
            .await?;
        tenants.extend(rows.into_iter().map(|r| (r.slug, r.id)));
    }
    // A tenant's own list scans the states shared by every tenant at a bounded rate.
    let (scan, shared_states) = match query.tenant_id {
        None => (live::LIVE_SCAN, true),
        Some(tenant) => {
            let over = live::TENANT_SCANS
                .check(
                    &state.redis,
                    &state.settings.redis_namespace,
                    "live-scan",
                    tenant,
                )
                .await;
            (live::TENANT_SCAN, over.is_none())
        }
    };
    let scan = live::search(&state.queues, query, &tenants, scan, shared_states).await?;
    let mut ids: Vec<uuid::Uuid> = scan.jobs.iter().filter_map(|j| j.tenant).collect();
    ids.sort();
    ids.dedup();
    let mut slugs: HashMap<uuid::Uuid, String> = HashMap::new();
    if !ids.is_empty() {
        let rows = sqlx::query!("SELECT id, slug FROM tenants WHERE id = ANY($1)", &ids)
            .fetch_all(&state.db)
            .await?;
        slugs.extend(rows.into_iter().map(|r| (r.id, r.slug)));
    }
    Ok(scan.shown(&slugs))
}

/// The longest value of a tenant's list filter.
pub const MAX_PARAM_CHARS: usize = 100;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantJobParams {
    /// A kind (`stock_adjustment`) or queue (`invoices`).
    pub kind: Option<String>,
    /// succeeded, failed, dead or cancelled (finished), or queued, waiting, scheduled, running
    /// or retrying (live).
    pub status: Option<String>,
    /// Finished (live jobs: accepted) at or after this date or time.
    pub after: Option<String>,
    /// Finished before this date or time.
    pub before: Option<String>,
    /// Items per page, 1..=500 (default 50).
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The calling tenant's jobs: on the first page those not finished yet (`live`: queued,
/// waiting, scheduled, running, retrying), then the finished ones, newest first, in stable pages
/// (the job history).
#[utoipa::path(get, path = "/v1/jobs", tag = "tenant", security(("tenant_key" = [])),
    params(TenantJobParams),
    responses((status = 200, body = JobSearch), (status = 422, body = super::error::Problem),
        (status = 429, description = "This tenant's history reads already under way", body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn list_tenant_jobs(
    tenant: Tenant,
    State(state): State<AppState>,
    Query(params): Query<TenantJobParams>,
) -> Result<axum::Json<JobSearch>> {
    let mut errors = FieldErrors::default();
    let mut query = search::Query {
        tenant_id: Some(tenant.id),
        ..search::Query::default()
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
        if value.chars().count() > MAX_PARAM_CHARS {
            errors.push(
                name,
                format!("must be at most {MAX_PARAM_CHARS} characters"),
            );
        } else if let Some(term) = errors.check(name, Term::parse(name, value)) {
            query.terms.push(term);
        }
    }
    // A tenant's list reads only its own rows, but a filter that matches few of them reads many:
    // at most a few at once per tenant and API process, so one tenant's loop of such reads
    // cannot take the pool that every tenant's requests share.
    let _reading = state.history_reads.start(tenant.id).await?;
    searched(&state, &query, params.limit, params.cursor, errors)
        .await
        .map(axum::Json)
}

/// A page of the history and, on the first page, the live matches.
async fn searched(
    state: &AppState,
    query: &search::Query,
    limit: Option<String>,
    cursor: Option<String>,
    errors: FieldErrors,
) -> Result<JobSearch> {
    let first_page = cursor.is_none();
    let page = page_of(state, query, limit, cursor, errors).await?;
    let live = match first_page {
        true => Some(live_matches(state, query).await?),
        false => None,
    };
    Ok(JobSearch {
        items: page.items,
        next_cursor: page.next_cursor,
        live,
    })
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// `day` (the last 24 hours per minute, the default) or `month` (30 days per hour).
    pub range: Option<String>,
    /// One queue (all when absent).
    pub queue: Option<String>,
    /// One tenant's slug (all when absent).
    pub tenant: Option<String>,
}

/// What a stats request asks for, checked.
pub struct StatsRequest {
    pub range: stats::Range,
    pub queue: Option<String>,
    pub tenant: Option<(String, uuid::Uuid)>,
    /// The tenants the figures cover: the one asked for, else the actor's (`None`: all).
    pub tenants: Option<Vec<uuid::Uuid>>,
}

impl StatsParams {
    /// Checks the parameters; an unknown tenant is 404 (a typo should not look like silence), and
    /// so is one outside the actor's tenants.
    pub async fn check(&self, state: &AppState, actor: &Actor) -> Result<StatsRequest> {
        let mut errors = FieldErrors::default();
        let range = errors.check(
            "range",
            stats::Range::parse(self.range.as_deref().unwrap_or("day"))
                .ok_or_else(|| "must be day or month".to_string()),
        );
        let nonempty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let queue = nonempty(&self.queue);
        if let Some(q) = &queue
            && crate::jobs::Queue::parse(q).is_none()
        {
            errors.push(
                "queue",
                format!("is not a queue (one of: {})", crate::jobs::Queue::names()),
            );
        }
        errors.finish()?;
        let tenant = match nonempty(&self.tenant) {
            None => None,
            Some(slug) => {
                let id = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug)
                    .fetch_optional(&state.db)
                    .await?
                    .filter(|id| actor.sees(Some(*id)))
                    .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
                Some((slug, id))
            }
        };
        let tenants = match &tenant {
            Some((_, id)) => Some(vec![*id]),
            None => actor.tenants.clone(),
        };
        Ok(StatsRequest {
            range: range.expect("checked"),
            queue,
            tenant,
            tenants,
        })
    }
}

/// Finished jobs over days and the tenants with the most of them.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobStats {
    pub series: stats::Series,
    /// The five tenants with the most finished jobs over the range (on the queue, if one).
    pub noisiest: Vec<stats::TenantVolume>,
}

/// Finished jobs per minute (last day) or per hour (last 30 days): counts by outcome and
/// enqueue-to-start and run-time percentiles, for a queue and/or tenant.
#[utoipa::path(get, path = "/admin/v1/stats", tag = "admin", security(("admin_token" = [])),
    params(StatsParams),
    responses((status = 200, body = JobStats), (status = 404, body = super::error::Problem),
        (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn job_stats(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Query(params): Query<StatsParams>,
) -> Result<axum::Json<JobStats>> {
    let r = params.check(&state, &actor).await?;
    let now = chrono::Utc::now();
    let queue = r.queue.as_deref();
    let series = stats::series(&state.db, r.range, now, queue, r.tenants.as_deref()).await?;
    let within = actor.tenant_scope();
    let noisiest = stats::noisiest(&state.db, r.range, now, queue, within, 5).await?;
    Ok(axum::Json(JobStats { series, noisiest }))
}
