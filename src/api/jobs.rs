//! Jobs and queues over HTTP: a tenant asks for its job's fate; admins watch queues and repair
//! them (retry, discard, pause, resume, bulk retry of the dead set). Everything reads from and
//! acts on the queue engine in Redis.

use super::AppState;
use super::error::{Error, Result};
use super::extract::{Admin, FieldErrors, Query, Tenant, queue_named};
use super::operators::repairs::{self, JobAction, QueueAction};
use super::pagination::{PageParams, encode_cursor};
use crate::jobs::Queue;
use crate::queue::{ActionOutcome, GroupView, JobRecord, JobStatus, QueueName};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A job as its tenant sees it.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    id: String,
    kind: String,
    /// queued, waiting (held until the jobs it depends on succeed), paused (queued while an
    /// admin has paused this tenant on the job's queue), running, succeeded, retrying, failed,
    /// dead or cancelled (a job it depended on did not succeed).
    status: &'static str,
    attempts: u32,
    max_attempts: u32,
    last_error: Option<String>,
    /// What the job produced (kind-specific), once it succeeded.
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    /// For a scheduled or retrying job: when it runs next.
    run_at: Option<DateTime<Utc>>,
    /// The group it counts in (`GET /v1/groups/{id}`), if any.
    group_id: Option<Uuid>,
    /// The trace (W3C trace id, 32 hex digits) of the request that caused it, when traces are
    /// on: quote it to support to find every step of this job.
    trace_id: Option<String>,
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> Self {
        JobView {
            // A scheduled job is, to its tenant, simply queued (with a `run_at`).
            status: match j.status {
                JobStatus::Scheduled => "queued",
                other => other.as_str(),
            },
            id: j.id,
            kind: j.kind,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            last_error: j.last_error,
            result: j.result,
            created_at: j.created_at,
            finished_at: j.finished_at,
            run_at: j.run_at,
            group_id: j.group,
            trace_id: j.trace_id,
        }
    }
}

/// A job with everything an admin needs to repair it.
#[derive(Serialize, ToSchema)]
pub struct AdminJobView {
    id: String,
    queue: String,
    kind: String,
    tenant_id: Option<Uuid>,
    status: JobStatus,
    attempts: u32,
    max_attempts: u32,
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
    last_error: Option<String>,
    /// `[{"attempt", "at" (ms since the epoch), "error"}]`, oldest first.
    #[schema(value_type = Vec<Object>)]
    errors: serde_json::Value,
    idempotency_key: Option<String>,
    /// The trace of the request that caused it (W3C trace id), when traces are on.
    trace_id: Option<String>,
    worker: Option<String>,
    created_at: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<JobRecord> for AdminJobView {
    fn from(j: JobRecord) -> Self {
        AdminJobView {
            id: j.id,
            queue: j.queue,
            kind: j.kind,
            tenant_id: j.tenant,
            status: j.status,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            payload: j.payload,
            result: j.result,
            last_error: j.last_error,
            errors: j.errors,
            idempotency_key: j.idempotency_key,
            trace_id: j.trace_id,
            worker: j.worker,
            created_at: j.created_at,
            run_at: j.run_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct QueueView {
    name: String,
    pending: u64,
    scheduled: u64,
    running: u64,
    retrying: u64,
    succeeded: u64,
    failed: u64,
    dead: u64,
    /// Held until the jobs they depend on succeed.
    waiting: u64,
    /// Ended without running: a job they depended on did not succeed.
    cancelled: u64,
    paused: bool,
    /// Jobs finished in each of the last 60 minutes, oldest first.
    processed_per_minute: Vec<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct QueueList {
    items: Vec<QueueView>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AdminJobPage {
    items: Vec<AdminJobView>,
    next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListParams {
    /// queued (default), scheduled, running, retrying, succeeded, failed or dead.
    status: Option<String>,
    /// Items per page, 1..=500 (default 50).
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RetriedJob {
    id: String,
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct QueueState {
    name: String,
    paused: bool,
}

#[derive(Serialize, ToSchema)]
pub struct BulkRetry {
    retried: u64,
}

/// The calling tenant's job `id`; another tenant's is 404, exactly like a missing one.
async fn own_job(state: &AppState, tenant: &Tenant, id: &str) -> Result<JobRecord> {
    state
        .queues
        .get(id)
        .await?
        .filter(|j| j.tenant == Some(tenant.id))
        .ok_or_else(|| Error::NotFound(format!("no job '{id}'")))
}

/// What a retry came to, as the API answers it (admins' and tenants' alike).
fn retried(id: String, outcome: ActionOutcome) -> Result<axum::Json<RetriedJob>> {
    match outcome {
        ActionOutcome::Done => Ok(axum::Json(RetriedJob {
            id,
            status: "queued",
        })),
        ActionOutcome::Missing => Err(Error::NotFound(format!("no job '{id}'"))),
        ActionOutcome::Refused(status) => Err(refused(&id, "retried", status)),
    }
}

/// A job of the calling tenant. Another tenant's job is 404, exactly like a missing one.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(job_id = %id))]
pub async fn get_job(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>> {
    let job = own_job(&state, &tenant, &id).await?;
    let paused = match (job.status, QueueName::parse(&job.queue)) {
        (JobStatus::Queued, Some(queue)) => {
            state.queues.tenant_state(&queue, tenant.id).await?.paused
        }
        _ => false,
    };
    let mut view = JobView::from(job);
    if paused {
        view.status = "paused";
    }
    Ok(axum::Json(view))
}

/// Retries one of the calling tenant's own dead or failed jobs with a fresh attempt budget.
/// Another tenant's job is 404, exactly like a missing one.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = RetriedJob), (status = 404, body = super::error::Problem),
        (status = 409, description = "The job is not dead or failed", body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(job_id = %id))]
pub async fn retry_own_job(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<RetriedJob>> {
    let job = own_job(&state, &tenant, &id).await?;
    if !matches!(job.status, JobStatus::Dead | JobStatus::Failed) {
        return Err(refused(&id, "retried", job.status));
    }
    let outcome = state.queues.retry(&id).await?;
    retried(id, outcome)
}

/// A group of the calling tenant's jobs (a stock batch, an order's work, a forecast run's
/// chunks). Another tenant's group is 404, exactly like a missing one.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(group_id = %id))]
pub async fn get_group(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<GroupView>> {
    let missing = || Error::NotFound(format!("no group '{id}'"));
    let group_id = Uuid::parse_str(&id).map_err(|_| missing())?;
    let g = state
        .queues
        .group(&group_id)
        .await?
        .filter(|g| g.tenant == Some(tenant.id))
        .ok_or_else(missing)?;
    Ok(axum::Json(g))
}

/// Every queue's counts and its last hour of throughput.
#[utoipa::path(get, path = "/admin/v1/queues", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = QueueList)))]
#[tracing::instrument(skip_all)]
pub async fn list_queues(_: Admin, State(state): State<AppState>) -> Result<axum::Json<QueueList>> {
    let mut items = Vec::with_capacity(Queue::ALL.len());
    for queue in Queue::ALL {
        let (name, queue) = (queue.name(), queue.id());
        let (counts, per_minute) = tokio::try_join!(
            state.queues.counts(&queue),
            state.queues.processed_per_minute(&queue, 60)
        )?;
        items.push(QueueView {
            name: name.to_string(),
            pending: counts.pending,
            scheduled: counts.scheduled,
            running: counts.running,
            retrying: counts.retrying,
            succeeded: counts.succeeded,
            failed: counts.failed,
            dead: counts.dead,
            waiting: counts.waiting,
            cancelled: counts.cancelled,
            paused: counts.paused,
            processed_per_minute: per_minute,
        });
    }
    Ok(axum::Json(QueueList {
        items,
        next_cursor: None,
    }))
}

/// A page of a queue's jobs with one status, with payloads, attempts and errors.
#[utoipa::path(get, path = "/admin/v1/queues/{queue}/jobs", tag = "admin",
    security(("admin_token" = [])), params(("queue" = String, Path), JobListParams),
    responses((status = 200, body = AdminJobPage), (status = 404, body = super::error::Problem),
        (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn list_jobs(
    _: Admin,
    State(state): State<AppState>,
    Path(queue): Path<String>,
    Query(params): Query<JobListParams>,
) -> Result<axum::Json<AdminJobPage>> {
    let queue = queue_named(&queue)?;
    let mut errors = FieldErrors::default();
    let status = match params.status.as_deref() {
        None => Some(JobStatus::Queued),
        Some(raw) => errors.check(
            "status",
            JobStatus::parse(raw).ok_or_else(|| {
                "must be one of queued, scheduled, running, retrying, succeeded, failed, dead"
                    .to_string()
            }),
        ),
    };
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse_into(&mut errors);
    errors.finish()?;
    let (status, page) = (status.expect("checked"), page.expect("checked"));
    let listed = state
        .queues
        .list(&queue, status, page.limit as usize, page.after.as_deref())
        .await?;
    Ok(axum::Json(AdminJobPage {
        items: listed.items.into_iter().map(Into::into).collect(),
        next_cursor: listed.next_cursor.map(|c| encode_cursor(&c)),
    }))
}

fn refused(id: &str, action: &str, status: JobStatus) -> Error {
    Error::Conflict {
        detail: format!("job '{id}' is {} and cannot be {action}", status.as_str()),
        field: None,
    }
}

/// Re-queues a dead or failed job with a fresh attempt budget (its error history is kept).
#[utoipa::path(post, path = "/admin/v1/jobs/{id}/retry", tag = "admin",
    security(("admin_token" = [])), params(("id" = String, Path)),
    responses((status = 200, body = RetriedJob), (status = 404, body = super::error::Problem),
        (status = 409, description = "The job is not dead or failed", body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(job_id = %id))]
pub async fn retry_job(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<RetriedJob>> {
    let outcome = repairs::on_job(&state, &actor, &id, JobAction::Retry).await?;
    retried(id, outcome)
}

/// Deletes a job that is not running.
#[utoipa::path(delete, path = "/admin/v1/jobs/{id}", tag = "admin",
    security(("admin_token" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::Problem),
        (status = 409, description = "The job is running", body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(job_id = %id))]
pub async fn discard_job(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    match repairs::on_job(&state, &actor, &id, JobAction::Discard).await? {
        ActionOutcome::Done => Ok(StatusCode::NO_CONTENT),
        ActionOutcome::Missing => Err(Error::NotFound(format!("no job '{id}'"))),
        ActionOutcome::Refused(status) => Err(refused(&id, "discarded", status)),
    }
}

/// Stops workers from taking new jobs of this queue (running jobs finish).
#[utoipa::path(post, path = "/admin/v1/queues/{queue}/pause", tag = "admin",
    security(("admin_token" = [])), params(("queue" = String, Path)),
    responses((status = 200, body = QueueState), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn pause_queue(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<axum::Json<QueueState>> {
    let queue = queue_named(&queue)?;
    repairs::on_queue(&state, &actor, &queue, QueueAction::Pause).await?;
    Ok(axum::Json(QueueState {
        name: queue.to_string(),
        paused: true,
    }))
}

/// Lets workers take this queue's jobs again.
#[utoipa::path(post, path = "/admin/v1/queues/{queue}/resume", tag = "admin",
    security(("admin_token" = [])), params(("queue" = String, Path)),
    responses((status = 200, body = QueueState), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn resume_queue(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<axum::Json<QueueState>> {
    let queue = queue_named(&queue)?;
    repairs::on_queue(&state, &actor, &queue, QueueAction::Resume).await?;
    Ok(axum::Json(QueueState {
        name: queue.to_string(),
        paused: false,
    }))
}

/// Re-queues every dead job of the queue.
#[utoipa::path(post, path = "/admin/v1/queues/{queue}/retry-dead", tag = "admin",
    security(("admin_token" = [])), params(("queue" = String, Path)),
    responses((status = 200, body = BulkRetry), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn retry_dead(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<axum::Json<BulkRetry>> {
    let queue = queue_named(&queue)?;
    let retried = repairs::on_queue(&state, &actor, &queue, QueueAction::RetryDead).await?;
    Ok(axum::Json(BulkRetry { retried }))
}
