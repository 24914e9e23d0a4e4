//! Dashboard pages of the queues: the overview, a queue's jobs, one job, and their actions.

use crate::api::AppState;
use crate::api::charts;
use crate::api::error::{Error, Result};
use crate::jobs::Queue;
use crate::queue::{ActionOutcome, JobRecord, JobStatus, QueueName};
use axum::extract::{Form, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use std::collections::HashMap;
use uuid::Uuid;

use super::{Flash, Signed, back, checked, page, time};
use crate::api::extract::queue_named;
use crate::api::operators::repairs::{self, JobAction, QueueAction};

/// Every queue's counts and the live workers; an admin limited to some tenants is sent to their
/// tenants instead (these counts cover every tenant).
pub(super) async fn overview(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    if actor.tenants.is_some() {
        return Ok(Redirect::to("/admin/tenants").into_response());
    }
    let mut queues = vec![];
    let mut workers = vec![];
    let now = Utc::now();
    for queue in Queue::ALL {
        let (name, queue) = (queue.name(), queue.id());
        let (c, per_minute, live) = tokio::try_join!(
            state.queues.counts(&queue),
            state.queues.processed_per_minute(&queue, 60),
            state.queues.workers(&queue)
        )?;
        let finished: u64 = per_minute.iter().sum();
        let failed_hour = failure_count(&state, &queue).await?;
        queues.push(minijinja::context! {
            name, pending => c.pending, scheduled => c.scheduled, running => c.running,
            retrying => c.retrying, dead => c.dead, failed => c.failed, succeeded => c.succeeded,
            waiting => c.waiting, cancelled => c.cancelled, paused => c.paused,
            failure_rate => if finished == 0 { "—".to_string() } else {
                format!("{:.1} %", 100.0 * failed_hour as f64 / finished as f64)
            },
        });
        for w in live {
            workers.push(minijinja::context! {
                id => w.id, queue => name,
                age => (now - w.last_heartbeat).num_seconds().max(0),
                in_flight => w.in_flight,
                concurrency => w.info.get("concurrency").cloned().unwrap_or_default().to_string(),
            });
        }
    }
    page(
        "overview.html",
        minijinja::context! {
            title => "Overview", nav => "overview", csrf => s.csrf, flash => flash.flash,
            queues, workers,
        },
    )
}

/// Failed outcomes in the last hour (from the per-minute stats).
async fn failure_count(state: &AppState, queue: &QueueName) -> Result<u64> {
    let minutes = state.queues.outcomes_per_minute(queue, 60).await?;
    Ok(minutes.iter().map(|(_, failed)| failed).sum())
}

pub(super) async fn throughput_svg(
    State(state): State<AppState>,
    Signed(..): Signed,
) -> Result<Response> {
    let mut total = vec![0u64; 60];
    for queue in Queue::ALL {
        let queue = queue.id();
        for (slot, n) in total
            .iter_mut()
            .zip(state.queues.processed_per_minute(&queue, 60).await?)
        {
            *slot += n;
        }
    }
    let svg = charts::bars(
        &total,
        ["-60 min", "-30 min", "now"],
        "Jobs finished per minute",
    );
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response())
}

/// Tenant slugs by id, for showing jobs.
async fn tenant_slugs(state: &AppState) -> Result<HashMap<Uuid, String>> {
    Ok(sqlx::query!("SELECT id, slug FROM tenants")
        .fetch_all(&state.db)
        .await?
        .into_iter()
        .map(|r| (r.id, r.slug))
        .collect())
}

#[derive(Deserialize, Default)]
pub(super) struct QueueFilters {
    status: Option<String>,
    tenant: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    cursor: Option<String>,
    flash: Option<String>,
}

pub(super) async fn queue_page(
    State(state): State<AppState>,
    Signed(s, _): Signed,
    Path(queue): Path<String>,
    Query(f): Query<QueueFilters>,
) -> Result<Response> {
    let queue = queue_named(&queue)?;
    let status = match f.status.as_deref().filter(|s| !s.is_empty()) {
        None => JobStatus::Queued,
        Some(raw) => {
            JobStatus::parse(raw).ok_or_else(|| Error::invalid("status", "is not a job status"))?
        }
    };
    let slugs = tenant_slugs(&state).await?;
    let tenant_filter = f.tenant.clone().filter(|t| !t.is_empty());
    let kind_filter = f.kind.clone().filter(|k| !k.is_empty());
    let since = f
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").ok())
        .map(|t| t.and_utc());
    let filtering = tenant_filter.is_some() || kind_filter.is_some() || since.is_some();
    // With filters, look through a larger page and keep what matches.
    let limit = if filtering { 500 } else { 50 };
    let listed = state
        .queues
        .list(&queue, status, limit, f.cursor.as_deref())
        .await?;
    let counts = state.queues.counts(&queue).await?;
    let jobs: Vec<minijinja::Value> = listed
        .items
        .into_iter()
        .filter(|j| {
            let slug = j.tenant.and_then(|t| slugs.get(&t));
            tenant_filter.as_ref().is_none_or(|t| slug == Some(t))
                && kind_filter.as_ref().is_none_or(|k| &j.kind == k)
                && since.is_none_or(|s| j.created_at >= s)
        })
        .map(|j| {
            minijinja::context! {
                id => j.id, kind => j.kind,
                tenant => j.tenant.and_then(|t| slugs.get(&t).cloned()).unwrap_or_default(),
                attempts => j.attempts, max_attempts => j.max_attempts,
                created_at => time(j.created_at), last_error => j.last_error.unwrap_or_default(),
            }
        })
        .collect();
    page(
        "queue.html",
        minijinja::context! {
            title => format!("Queue {queue}"), nav => "overview", csrf => s.csrf, flash => f.flash,
            queue => queue.as_str(), paused => counts.paused, status => status.as_str(),
            statuses => ["queued", "waiting", "scheduled", "running", "retrying", "succeeded", "failed",
                "dead", "cancelled"],
            tenant => f.tenant.unwrap_or_default(), kind => f.kind.unwrap_or_default(),
            since => f.since.unwrap_or_default(), jobs, next_cursor => listed.next_cursor,
        },
    )
}

pub(super) async fn queue_action(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Path((queue, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let queue = queue_named(&queue)?;
    let what = QueueAction::parse(&action)
        .ok_or_else(|| Error::NotFound(format!("no action '{action}'")))?;
    let moved = repairs::on_queue(&state, &actor, &queue, what).await?;
    let flash = match what {
        QueueAction::Pause => format!("Queue {queue} paused."),
        QueueAction::Resume => format!("Queue {queue} resumed."),
        QueueAction::RetryDead => format!("{moved} dead jobs re-queued."),
        QueueAction::DiscardDead => format!("{moved} dead jobs deleted."),
    };
    Ok(back(&format!("/admin/queues/{queue}"), &flash))
}

#[derive(Deserialize, Default)]
pub(super) struct Lookup {
    id: Option<String>,
    tenant: Option<String>,
    key: Option<String>,
    queue: Option<String>,
}

pub(super) async fn job_lookup(
    State(state): State<AppState>,
    Signed(_, actor): Signed,
    Query(l): Query<Lookup>,
) -> Result<Response> {
    if let Some(id) = l.id.filter(|i| !i.trim().is_empty()) {
        return Ok(Redirect::to(&format!("/admin/jobs/{}", id.trim())).into_response());
    }
    let (Some(slug), Some(key)) = (l.tenant, l.key) else {
        return Err(Error::invalid(
            "id",
            "give a job id, or a tenant and an idempotency key",
        ));
    };
    let tenant = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug.trim())
        .fetch_optional(&state.db)
        .await?
        .filter(|id| actor.sees(Some(*id)))
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let queue = queue_named(l.queue.as_deref().unwrap_or("stock"))?;
    // Stock adjustments are keyed by tenant; other kinds by what caused them.
    let found = state
        .queues
        .find_by_idempotency_key(
            &queue,
            crate::jobs::stock::StockAdjustmentJob::KIND,
            &format!("{tenant}:{}", key.trim()),
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("no job with key '{key}' for '{slug}'")))?;
    Ok(Redirect::to(&format!("/admin/jobs/{found}")).into_response())
}

pub(super) async fn job_page(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    let job: JobRecord = state
        .queues
        .get(&id)
        .await?
        .filter(|job| actor.sees(job.tenant))
        .ok_or_else(|| Error::NotFound(format!("no job '{id}'")))?;
    let slugs = tenant_slugs(&state).await?;
    let mut timeline = vec![minijinja::context! { at => time(job.created_at), what => "accepted" }];
    if let Some(errors) = job.errors.as_array() {
        for e in errors {
            let at = e["at"]
                .as_i64()
                .and_then(DateTime::from_timestamp_millis)
                .map(time)
                .unwrap_or_default();
            timeline.push(minijinja::context! {
                at, what => format!("attempt {} failed", e["attempt"]),
                error => e["error"].as_str().unwrap_or_default(),
            });
        }
    }
    if let Some(t) = job.started_at {
        timeline.push(minijinja::context! { at => time(t), what => format!("attempt {} started", job.attempts) });
    }
    if let Some(t) = job.finished_at {
        timeline.push(
            minijinja::context! { at => time(t), what => format!("ended {}", job.status.as_str()) },
        );
    }
    // Oldest first ("%Y-%m-%d %H:%M:%S" sorts as text; the sort is stable for equal times).
    timeline.sort_by_key(|e| e.get_attr("at").map(|v| v.to_string()).unwrap_or_default());
    // The jobs it waits (or waited) for, the first few with their status.
    const SHOWN_PARENTS: usize = 20;
    let parent_ids = state.queues.parents_of(&job.id).await?;
    let mut parents = vec![];
    for parent in parent_ids.iter().take(SHOWN_PARENTS) {
        let status = state.queues.get(parent).await?.map(|p| p.status.as_str());
        parents.push(minijinja::context! { id => parent, status => status.unwrap_or("gone") });
    }
    page(
        "job.html",
        minijinja::context! {
            title => format!("Job {id}"), nav => "overview", limited => actor.tenants.is_some(), csrf => s.csrf, flash => flash.flash,
            tenant => job.tenant.and_then(|t| slugs.get(&t).cloned()).unwrap_or_default(),
            payload => serde_json::to_string_pretty(&job.payload).unwrap_or_default(),
            result => job.result.as_ref().map(|r| serde_json::to_string_pretty(r).unwrap_or_default()),
            timeline, parents, more_parents => parent_ids.len().saturating_sub(SHOWN_PARENTS),
            job => minijinja::context! {
                id => job.id, queue => job.queue, kind => job.kind, status => job.status.as_str(),
                attempts => job.attempts, max_attempts => job.max_attempts,
                idempotency_key => job.idempotency_key, worker => job.worker,
                trace_id => job.trace_id,
            },
        },
    )
}

pub(super) async fn job_action(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let what = match action.as_str() {
        "retry" => JobAction::Retry,
        "discard" => JobAction::Discard,
        other => return Err(Error::NotFound(format!("no action '{other}'"))),
    };
    let outcome = repairs::on_job(&state, &actor, &id, what).await?;
    Ok(match (action.as_str(), outcome) {
        ("retry", ActionOutcome::Done) => back(&format!("/admin/jobs/{id}"), "Job re-queued."),
        (_, ActionOutcome::Done) => {
            // Queue pages are closed to a user limited to some tenants: back to their search.
            let page = match actor.tenants {
                Some(_) => "/admin/search".to_string(),
                None => format!("/admin/queues/{}", id.split('_').next().unwrap_or("stock")),
            };
            back(&page, &format!("Job {id} deleted."))
        }
        (_, ActionOutcome::Missing) => back("/admin", &format!("Job {id} no longer exists.")),
        (_, ActionOutcome::Refused(status)) => back(
            &format!("/admin/jobs/{id}"),
            &format!("Not possible: the job is {}.", status.as_str()),
        ),
    })
}
