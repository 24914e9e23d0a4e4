//! Stock adjustment intake: validate at the door, enqueue to the `stock` queue, answer 202 with
//! the job. A repeated idempotency key answers 200 with the first job (the queue maps the key to
//! its job; the ledger's unique key makes a repeat harmless even after that mapping expires).

use super::AppState;
use super::error::{Error, Result};
use super::extract::{FieldErrors, Json, Tenant};
use crate::domain::{DateWindow, Delta, IdempotencyKey, Reason, Sku};
use crate::jobs::stock::StockAdjustmentJob;
use crate::jobs::{self, Enqueue};
use crate::queue::{GroupSpec, JobRecord};
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use utoipa::ToSchema;
use uuid::Uuid;

pub const MAX_BATCH: usize = 1000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentInput {
    sku: String,
    /// Non-zero whole units; sales and damage are negative, receipts and returns positive.
    delta: i64,
    /// sale, receipt, return, correction, damage or transfer.
    reason: String,
    /// 1..=128 characters; repeats return the first job and never move stock twice.
    idempotency_key: String,
    reference: Option<String>,
    /// RFC 3339; defaults to now.
    occurred_at: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchInput {
    adjustments: Vec<AdjustmentInput>,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    job_id: String,
    status: String,
}

#[derive(Serialize, ToSchema)]
pub struct BatchItem {
    idempotency_key: String,
    job_id: String,
    status: String,
}

#[derive(Serialize, ToSchema)]
pub struct BatchAccepted {
    /// The batch's group (`GET /v1/groups/{id}`: one status for all its jobs); a batch sent
    /// again answers with the first sending's group. `null` only when every item's key named an
    /// earlier single adjustment.
    group_id: Option<Uuid>,
    jobs: Vec<BatchItem>,
}

/// Checks one adjustment, recording errors under `prefix` (e.g. `adjustments[3].`).
fn parse_adjustment(
    input: &AdjustmentInput,
    dates: DateWindow,
    now: DateTime<Utc>,
    tenant_id: Uuid,
    prefix: &str,
    errors: &mut FieldErrors,
) -> Option<StockAdjustmentJob> {
    let field = |name: &str| format!("{prefix}{name}");
    let sku = errors.check(&field("sku"), Sku::parse(&input.sku));
    let reason = errors.check(&field("reason"), Reason::parse(&input.reason));
    let delta = errors.check(&field("delta"), Delta::parse(input.delta));
    if let (Some(reason), Some(delta)) = (reason, delta)
        && let Err(e) = reason.check_sign(delta)
    {
        errors.push(&field("delta"), e);
    }
    let key = errors.check(
        &field("idempotency_key"),
        IdempotencyKey::parse(&input.idempotency_key),
    );
    let reference = match &input.reference {
        None => Some(None),
        Some(r) => errors
            .check(&field("reference"), crate::domain::clean_text(r, 200))
            .map(Some),
    };
    let occurred_at = match &input.occurred_at {
        None => Some(now),
        Some(raw) => errors.check(
            &field("occurred_at"),
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| "must be an RFC 3339 timestamp".to_string())
                .and_then(|t| dates.check_time(t, now)),
        ),
    };
    Some(StockAdjustmentJob {
        tenant_id,
        sku: sku?.as_str().to_string(),
        delta: delta?.get(),
        reason: reason?,
        idempotency_key: key?.as_str().to_string(),
        reference: reference?,
        occurred_at: occurred_at?,
    })
}

/// Which of `skus` the tenant has no product for.
async fn unknown_skus(state: &AppState, tenant: Uuid, skus: &[String]) -> Result<HashSet<String>> {
    let to_check: Vec<String> = skus
        .iter()
        .filter(|s| !state.lookups.has_sku(tenant, s))
        .cloned()
        .collect();
    if to_check.is_empty() {
        return Ok(HashSet::new());
    }
    let generation = state.lookups.generation();
    let known: HashSet<String> = sqlx::query_scalar!(
        "SELECT sku FROM products WHERE tenant_id = $1 AND sku = ANY($2)",
        tenant,
        &to_check
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .collect();
    state.lookups.remember_skus(generation, tenant, &known);
    Ok(to_check
        .into_iter()
        .filter(|s| !known.contains(s))
        .collect())
}

/// The job of an adjustment, keyed by its tenant's idempotency key.
fn enqueue(job: &StockAdjustmentJob) -> Enqueue<StockAdjustmentJob> {
    Enqueue::new(job).key(format!("{}:{}", job.tenant_id, job.idempotency_key))
}

/// The group of a batch sent again (every key named an earlier job): the first job's group,
/// opened again in case the first sending stopped between its push and its group's opening
/// (its size: the jobs of this batch in it).
async fn earlier_group(
    state: &AppState,
    tenant: Uuid,
    earlier: &[Option<JobRecord>],
) -> Result<Option<Uuid>> {
    let group_of = |r: &Option<JobRecord>| r.as_ref().and_then(|r| r.group);
    let Some(group) = earlier.first().and_then(group_of) else {
        return Ok(None);
    };
    let total = earlier
        .iter()
        .filter(|r| group_of(r) == Some(group))
        .count() as u64;
    state
        .queues
        .open_group(GroupSpec {
            id: group,
            tenant: Some(tenant),
            total,
            follow_up: None,
        })
        .await?;
    Ok(Some(group))
}

/// The status to report for the job a repeated key maps to; once the job itself has left
/// Redis (retention, or an admin discarded it) the ledger tells whether it moved stock.
async fn current_status(
    state: &AppState,
    job: &StockAdjustmentJob,
    record: Option<JobRecord>,
) -> Result<String> {
    if let Some(record) = record {
        return Ok(match record.status.as_str() {
            "scheduled" => "queued".to_string(),
            s => s.to_string(),
        });
    }
    let applied = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM stock_movements
                          WHERE tenant_id = $1 AND idempotency_key = $2) AS "applied!""#,
        job.tenant_id,
        job.idempotency_key
    )
    .fetch_one(&state.db)
    .await?;
    Ok(if applied { "succeeded" } else { "failed" }.to_string())
}

/// Queues one stock adjustment.
#[utoipa::path(post, path = "/v1/stock-adjustments", tag = "tenant", security(("tenant_key" = [])),
    request_body = AdjustmentInput,
    responses((status = 202, body = Accepted),
        (status = 200, description = "The idempotency key was seen before: the first job", body = Accepted),
        (status = 422, body = super::error::Problem), (status = 503, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn create_adjustment(
    tenant: Tenant,
    State(state): State<AppState>,
    Json(body): Json<AdjustmentInput>,
) -> Result<(StatusCode, axum::Json<Accepted>)> {
    let mut errors = FieldErrors::default();
    let job = parse_adjustment(
        &body,
        state.settings.dates,
        state.settings.queue.clock.now(),
        tenant.id,
        "",
        &mut errors,
    );
    errors.finish()?;
    let job = job.expect("checked");
    if !unknown_skus(&state, tenant.id, std::slice::from_ref(&job.sku))
        .await?
        .is_empty()
    {
        return Err(Error::invalid("sku", format!("no product '{}'", job.sku)));
    }
    let pushed = jobs::enqueue(&state.queues, [enqueue(&job)])
        .await?
        .remove(0);
    if pushed.created {
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(Accepted {
                job_id: pushed.id,
                status: "queued".into(),
            }),
        ))
    } else {
        let record = state.queues.get(&pushed.id).await?;
        let status = current_status(&state, &job, record).await?;
        Ok((
            StatusCode::OK,
            axum::Json(Accepted {
                job_id: pushed.id,
                status,
            }),
        ))
    }
}

/// Queues 1..=1000 adjustments; if any is invalid, none is queued.
#[utoipa::path(post, path = "/v1/stock-adjustments/batch", tag = "tenant",
    security(("tenant_key" = [])), request_body = BatchInput,
    responses((status = 202, body = BatchAccepted), (status = 422, body = super::error::Problem),
        (status = 503, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn create_batch(
    tenant: Tenant,
    State(state): State<AppState>,
    Json(body): Json<BatchInput>,
) -> Result<(StatusCode, axum::Json<BatchAccepted>)> {
    let n = body.adjustments.len();
    if n == 0 || n > MAX_BATCH {
        return Err(Error::invalid(
            "adjustments",
            format!("must hold 1 to {MAX_BATCH} adjustments (got {n})"),
        ));
    }
    // Errors are reported item by item, in order, so each item's problems stand together.
    let mut per_item: Vec<FieldErrors> = Vec::with_capacity(n);
    let mut jobs = Vec::with_capacity(n);
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    let now = state.settings.queue.clock.now();
    for (i, input) in body.adjustments.iter().enumerate() {
        let prefix = format!("adjustments[{i}].");
        let mut item = FieldErrors::default();
        jobs.push(parse_adjustment(
            input,
            state.settings.dates,
            now,
            tenant.id,
            &prefix,
            &mut item,
        ));
        if let Some(&first) = first_index.get(input.idempotency_key.as_str()) {
            item.push(
                &format!("{prefix}idempotency_key"),
                format!("repeats adjustments[{first}].idempotency_key"),
            );
        } else {
            first_index.insert(&input.idempotency_key, i);
        }
        per_item.push(item);
    }
    let skus: Vec<String> = jobs.iter().flatten().map(|j| j.sku.clone()).collect();
    let unknown = unknown_skus(&state, tenant.id, &skus).await?;
    let mut errors = FieldErrors::default();
    for (i, (job, mut item)) in jobs.iter().zip(per_item).enumerate() {
        if let Some(job) = job
            && unknown.contains(&job.sku)
        {
            item.push(
                &format!("adjustments[{i}].sku"),
                format!("no product '{}'", job.sku),
            );
        }
        errors.extend(item);
    }
    errors.finish()?;
    let jobs: Vec<StockAdjustmentJob> = jobs.into_iter().map(|j| j.expect("checked")).collect();
    // Bad input queues nothing (checked above). The push goes to Redis in chunks (see
    // `queue::client::PUSH_CHUNK`), so a Redis failure part-way leaves the first chunks queued
    // and answers 503; the same batch sent again queues the rest (the keys repeat the others).
    // Its new jobs form a group, opened once they exist (members that finish first are counted
    // when it opens).
    let group = Uuid::now_v7();
    let pushed = jobs::enqueue(
        &state.queues,
        jobs.iter().map(|j| enqueue(j).in_group(group)),
    )
    .await?;
    let created = pushed.iter().filter(|p| p.created).count() as u64;
    // The jobs that repeated keys map to, read once (for their status and their group).
    let mut earlier = Vec::with_capacity(n);
    for p in &pushed {
        earlier.push(match p.created {
            true => None,
            false => state.queues.get(&p.id).await?,
        });
    }
    let group_id = if created > 0 {
        state
            .queues
            .open_group(GroupSpec {
                id: group,
                tenant: Some(tenant.id),
                total: created,
                follow_up: None,
            })
            .await?;
        Some(group)
    } else {
        earlier_group(&state, tenant.id, &earlier).await?
    };
    let mut items = Vec::with_capacity(n);
    for ((job, p), record) in jobs.iter().zip(pushed).zip(earlier) {
        let status = if p.created {
            "queued".to_string()
        } else {
            current_status(&state, job, record).await?
        };
        items.push(BatchItem {
            idempotency_key: job.idempotency_key.clone(),
            job_id: p.id,
            status,
        });
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(BatchAccepted {
            group_id,
            jobs: items,
        }),
    ))
}
