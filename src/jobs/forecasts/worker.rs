//! The `forecasts` queue's handler.
//!
//! - **Plan**: picks the SKUs with history, trains what every chunk shares (the global model and
//!   the model chooser, see [`crate::forecast::pipeline`]) on a sample, stores it on the run, and
//!   pushes the chunk jobs (idempotently, so a re-delivered plan pushes nothing twice).
//! - **Chunk**: forecasts its SKUs, then in one transaction writes results and points with
//!   `COPY`, marks the chunk done and advances the run's progress. A chunk delivered twice finds
//!   itself done and does nothing.
//! - **Finish**: the chunks are one queue group (its id is the run's) whose follow-up this is,
//!   pushed once when every chunk has finished: it ends the run, records its
//!   `forecast.run.finished` event and, for a nightly run, queues the tenant's reorder digest
//!   through the outbox. A run whose chunk died was ended `failed` by that chunk; its Finish
//!   changes nothing.

use super::{CHUNK_SKUS, ForecastJob, RunOptions, runs};
use crate::forecast::history::{self, csv_quoted};
use crate::forecast::pipeline::{self, Artifacts, Outcome, RunSettings};
use crate::forecast::reorder;
use crate::jobs::emails::EmailJob;
use crate::jobs::{self, Enqueue, JobKind};
use crate::jobs::{WorkerContext, worker_options};
use crate::outbox;
use crate::queue::WorkerOptions;
use crate::queue::{GroupSpec, JobError, JobMeta, Queues, cancel};
use anyhow::Context;
use apalis::prelude::Data;
use chrono::NaiveDate;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Each chunk job forecasts its SKUs on every core (rayon): one or two at once keep the cores
/// busy while the next chunk loads.
pub fn options(concurrency: Option<usize>) -> WorkerOptions {
    let mut options = worker_options::<ForecastJob>(concurrency.unwrap_or(2));
    options.prefetch = options.concurrency;
    options
}

pub fn deps(ctx: &WorkerContext) -> anyhow::Result<ForecastDeps> {
    let forecast = &ctx.settings.forecast;
    Ok(ForecastDeps {
        db: ctx.db.clone(),
        queues: ctx.queues.clone(),
        options: RunOptions {
            service_level: forecast.service_level,
            full_backtest_max_skus: forecast.full_backtest_max_skus,
            history_days: forecast.history_days,
        },
    })
}

/// What forecast jobs need.
#[derive(Clone)]
pub struct ForecastDeps {
    pub db: PgPool,
    pub queues: Queues,
    pub options: RunOptions,
}

/// The `forecasts` queue's handler.
pub async fn handle(
    job: ForecastJob,
    meta: Data<JobMeta>,
    deps: Data<ForecastDeps>,
) -> Result<serde_json::Value, JobError> {
    if meta.tenant != Some(job.tenant_id()) {
        return Err(JobError::permanent(
            "the payload's tenant does not match the job's tenant",
        ));
    }
    let result = match &job {
        ForecastJob::Plan { tenant_id, run_id } => {
            let chunks = plan(&deps.db, &deps.options, *tenant_id, *run_id).await?;
            push_chunks(&deps.queues, *tenant_id, *run_id, &chunks).await?;
            Ok(serde_json::json!({"chunks": chunks.len()}))
        }
        ForecastJob::Finish { tenant_id, run_id } => finish_run(&deps.db, *tenant_id, *run_id)
            .await
            .map(|ended| serde_json::json!({"ended": ended})),
        ForecastJob::Chunk {
            tenant_id,
            run_id,
            chunk_no,
            skus,
        } => run_chunk(
            &deps.db,
            &deps.options,
            *tenant_id,
            *run_id,
            *chunk_no,
            skus,
        )
        .await
        .map(|done| serde_json::json!({"skus": done})),
    };
    if let Err(error) = &result {
        let last = matches!(error, JobError::Permanent { .. }) || meta.is_last_attempt();
        if last {
            let run_id = match &job {
                ForecastJob::Plan { run_id, .. }
                | ForecastJob::Chunk { run_id, .. }
                | ForecastJob::Finish { run_id, .. } => *run_id,
            };
            if let Err(e) = mark_failed(&deps.db, run_id, &error.to_string()).await {
                tracing::warn!(error = %e, "could not mark the forecast run failed");
            }
        }
    }
    result
}

/// Ends a run as failed, with its event (once: a run already ended is left as it is).
async fn mark_failed(db: &PgPool, run_id: Uuid, error: &str) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let failed = sqlx::query!(
        "UPDATE forecast_runs SET status = 'failed', error = $2, finished_at = now() WHERE id = $1 AND status IN ('queued', 'running')",
        run_id,
        error
    )
    .execute(&mut *tx)
    .await?;
    if failed.rows_affected() > 0 {
        runs::record_finished(&mut tx, run_id).await?;
    }
    tx.commit().await
}

/// Loaded run parameters.
struct Run {
    settings: RunSettings,
    history_end: NaiveDate,
    skus: Option<Vec<String>>,
    artifacts: Option<serde_json::Value>,
    status: String,
}

async fn load_run(db: &PgPool, tenant: Uuid, run_id: Uuid) -> Result<Run, JobError> {
    let row = sqlx::query!(
        r#"SELECT horizon_days, season, history_end, skus, artifacts, status
           FROM forecast_runs WHERE id = $1 AND tenant_id = $2"#,
        run_id,
        tenant
    )
    .fetch_optional(db)
    .await?
    .ok_or_else(|| JobError::permanent("no such forecast run (deleted?)"))?;
    Ok(Run {
        settings: RunSettings::new(row.season as usize, row.horizon_days as usize),
        history_end: row.history_end,
        skus: row.skus,
        artifacts: row.artifacts,
        status: row.status,
    })
}

/// Plans a run: its SKUs, its shared artifacts; returns the chunks to push. Re-running the plan
/// of a planned run returns the same chunks.
pub async fn plan(
    db: &PgPool,
    options: &RunOptions,
    tenant: Uuid,
    run_id: Uuid,
) -> Result<Vec<Vec<String>>, JobError> {
    let run = load_run(db, tenant, run_id).await?;
    if run.status == "succeeded" || run.status == "failed" {
        return Ok(vec![]);
    }
    let skus: Vec<String> = sqlx::query_scalar!(
        r#"SELECT p.sku FROM products p
           WHERE p.tenant_id = $1 AND ($2::text[] IS NULL OR p.sku = ANY($2))
             AND EXISTS (SELECT 1 FROM daily_sales d WHERE d.tenant_id = p.tenant_id AND d.sku = p.sku AND d.day <= $3)
           ORDER BY p.sku"#,
        tenant,
        run.skus.as_deref(),
        run.history_end
    )
    .fetch_all(db)
    .await?;
    let chunks: Vec<Vec<String>> = skus.chunks(CHUNK_SKUS).map(<[String]>::to_vec).collect();
    if run.artifacts.is_none() {
        let use_chooser = skus.len() > options.full_backtest_max_skus;
        let sample = pipeline::training_sample(&skus);
        let panel =
            history::daily_demand(db, tenant, &sample, run.history_end, options.history_days)
                .await?;
        let settings = run.settings.clone();
        let artifacts = cancel::spawn_blocking(move |cancel| -> anyhow::Result<Artifacts> {
            cancel.check()?;
            let described = pipeline::describe(panel, settings.season)?;
            cancel.check()?;
            Ok(pipeline::train(&described, &settings, use_chooser))
        })
        .await
        .map_err(|e| JobError::retry(format!("training stopped: {e}")))?
        .map_err(|e| JobError::retry(format!("training: {e:#}")))?;
        let artifacts = serde_json::to_value(&artifacts).context("serialising artifacts")?;
        sqlx::query!(
            "UPDATE forecast_runs SET artifacts = $2 WHERE id = $1 AND artifacts IS NULL",
            run_id,
            artifacts
        )
        .execute(db)
        .await?;
    }
    let finished = skus.is_empty();
    let mut tx = db.begin().await?;
    let updated = sqlx::query!(
        r#"UPDATE forecast_runs
           SET status = CASE WHEN $4 THEN 'succeeded' ELSE 'running' END,
               skus_total = $2, chunks_total = $3,
               started_at = coalesce(started_at, now()),
               finished_at = CASE WHEN $4 THEN now() ELSE NULL END
           WHERE id = $1 AND status IN ('queued', 'running')"#,
        run_id,
        skus.len() as i32,
        chunks.len() as i32,
        finished
    )
    .execute(&mut *tx)
    .await?;
    if finished && updated.rows_affected() > 0 {
        runs::record_finished(&mut tx, run_id).await?;
    }
    tx.commit().await?;
    Ok(chunks)
}

async fn push_chunks(
    queues: &Queues,
    tenant: Uuid,
    run_id: Uuid,
    chunks: &[Vec<String>],
) -> Result<(), JobError> {
    if chunks.is_empty() {
        return Ok(());
    }
    // The run's id names its group: a plan delivered again opens the same group (no change)
    // and pushes nothing new.
    let finish = ForecastJob::Finish {
        tenant_id: tenant,
        run_id,
    };
    let follow_up = Enqueue::new(&finish).into_new_job();
    queues
        .open_group(GroupSpec {
            id: run_id,
            tenant: Some(tenant),
            total: chunks.len() as u64,
            follow_up: Some((ForecastJob::QUEUE.id(), follow_up)),
        })
        .await?;
    for (first, batch) in chunks.chunks(500).enumerate() {
        let batch = batch.iter().enumerate().map(|(i, skus)| {
            let n = first * 500 + i;
            let job = ForecastJob::Chunk {
                tenant_id: tenant,
                run_id,
                chunk_no: n as i32,
                skus: skus.clone(),
            };
            Enqueue::new(&job)
                .key(format!("forecast-chunk:{run_id}:{n}"))
                .in_group(run_id)
        });
        jobs::enqueue(queues, batch).await?;
    }
    Ok(())
}

/// Forecasts one chunk and records it; returns how many SKUs it wrote (0 if already done).
#[tracing::instrument(name = "forecast chunk", skip_all, fields(run_id = %run_id, chunk = chunk_no, skus = skus.len()))]
pub async fn run_chunk(
    db: &PgPool,
    options: &RunOptions,
    tenant: Uuid,
    run_id: Uuid,
    chunk_no: i32,
    skus: &[String],
) -> Result<usize, JobError> {
    let done = sqlx::query_scalar!(
        "SELECT 1 AS one FROM forecast_chunks WHERE run_id = $1 AND chunk_no = $2",
        run_id,
        chunk_no
    )
    .fetch_optional(db)
    .await?;
    if done.is_some() {
        return Ok(0);
    }
    let run = load_run(db, tenant, run_id).await?;
    let artifacts: Artifacts = match &run.artifacts {
        Some(a) => serde_json::from_value(a.clone())
            .map_err(|e| JobError::permanent(format!("the run's artifacts do not parse: {e}")))?,
        None => return Err(JobError::retry("the run is not planned yet")),
    };
    let panel =
        history::daily_demand(db, tenant, skus, run.history_end, options.history_days).await?;
    let settings = run.settings.clone();
    let outcomes = cancel::spawn_blocking(move |cancel| -> anyhow::Result<Vec<Outcome>> {
        cancel.check()?;
        let described = pipeline::describe(panel, settings.season)?;
        let stop = || cancel.is_cancelled();
        Ok(
            pipeline::forecast_all(&described, &artifacts, &settings, &|_| {}, &stop)
                .ok_or(cancel::Cancelled)?,
        )
    })
    .await
    .map_err(|e| JobError::retry(format!("forecasting stopped: {e}")))?
    .map_err(|e| JobError::retry(format!("forecasting: {e:#}")))?;

    let products = sqlx::query!(
        "SELECT sku, on_hand, lead_time_days, reorder_quantity FROM products WHERE tenant_id = $1 AND sku = ANY($2)",
        tenant,
        skus
    )
    .fetch_all(db)
    .await?;
    let first_day = run.history_end + chrono::Duration::days(1);
    let mut rows = Vec::with_capacity(outcomes.len());
    for outcome in &outcomes {
        let Some(product) = products.iter().find(|p| p.sku == outcome.id) else {
            continue;
        };
        let advice = reorder::advise(&reorder::Situation {
            on_hand: product.on_hand,
            lead_time_days: product.lead_time_days.max(0) as usize,
            minimum_order: product.reorder_quantity,
            first_day,
            point: &outcome.forecast.point,
            lower: &outcome.forecast.lower,
            upper: &outcome.forecast.upper,
            interval_level: pipeline::INTERVAL_LEVEL,
            service_level: options.service_level,
        });
        rows.push((outcome, product.on_hand, advice));
    }

    let mut tx = db.begin().await?;
    let claimed = sqlx::query!(
        "INSERT INTO forecast_chunks (run_id, chunk_no, skus) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        run_id,
        chunk_no,
        rows.len() as i32
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(0);
    }
    write_results(&mut tx, tenant, run_id, first_day, &rows)
        .await
        .map_err(|e| JobError::retry(format!("writing results: {e:#}")))?;
    sqlx::query!(
        "UPDATE forecast_runs SET skus_done = skus_done + $2, chunks_done = chunks_done + 1 WHERE id = $1",
        run_id,
        skus.len() as i32
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Ends a run whose chunks have all finished (the group's follow-up); returns whether it did
/// (false: a chunk died and the run ended failed, or a repeat).
async fn finish_run(db: &PgPool, tenant: Uuid, run_id: Uuid) -> Result<bool, JobError> {
    let mut tx = db.begin().await?;
    let ended = sqlx::query!(
        r#"UPDATE forecast_runs SET status = 'succeeded', finished_at = now(), skus_done = skus_total
           WHERE id = $1 AND tenant_id = $2 AND status = 'running' AND chunks_done >= chunks_total
           RETURNING trigger"#,
        run_id,
        tenant
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(ended) = ended else {
        return Ok(false);
    };
    runs::record_finished(&mut tx, run_id).await?;
    if ended.trigger == "schedule" {
        let email = EmailJob::ReorderDigest {
            tenant_id: tenant,
            run_id,
        };
        outbox::add(
            &mut tx,
            &[jobs::outbox_job(&email, format!("reorder-digest:{run_id}"))],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Writes a chunk's results and points with `COPY`.
async fn write_results(
    tx: &mut PgConnection,
    tenant: Uuid,
    run_id: Uuid,
    first_day: NaiveDate,
    rows: &[(&Outcome, i64, reorder::Advice)],
) -> anyhow::Result<()> {
    let mut results = String::new();
    let mut points = String::new();
    let number = |v: Option<f64>| {
        v.filter(|x| x.is_finite())
            .map(|x| x.to_string())
            .unwrap_or_default()
    };
    for (outcome, on_hand, advice) in rows {
        let sku = csv_quoted(&outcome.id);
        let scores = serde_json::to_string(&outcome.scores_json())?;
        results.push_str(&format!(
            "{run_id},{tenant},{sku},{},{},{},{},{},{},{},{},{on_hand},{},{},{}\n",
            outcome.model.name(),
            outcome.chosen_by,
            outcome
                .fallback_reason
                .as_deref()
                .map(csv_quoted)
                .unwrap_or_default(),
            number(outcome.chosen.mase),
            number(outcome.chosen.rmsse),
            number(Some(outcome.chosen.smape)),
            csv_quoted(&scores),
            outcome.history_len,
            advice.reorder_point,
            advice.suggested_order_quantity,
            advice
                .stockout_date
                .map(|d| d.to_string())
                .unwrap_or_default(),
        ));
        let f = &outcome.forecast;
        for i in 0..f.point.len() {
            let day = first_day + chrono::Duration::days(i as i64);
            let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
            points.push_str(&format!(
                "{run_id},{sku},{day},{},{},{}\n",
                finite(f.point[i]),
                finite(f.lower[i]),
                finite(f.upper[i]),
            ));
        }
    }
    let mut copy = tx
        .copy_in_raw(
            "COPY forecast_results (run_id, tenant_id, sku, model, chosen_by, fallback_reason, mase, rmsse, smape, scores, history_days, on_hand, reorder_point, order_quantity, stockout_date) FROM STDIN WITH (FORMAT csv)",
        )
        .await?;
    copy.send(results.as_bytes()).await?;
    copy.finish().await?;
    let mut copy = tx
        .copy_in_raw(
            "COPY forecast_points (run_id, sku, day, yhat, lower, upper) FROM STDIN WITH (FORMAT csv)",
        )
        .await?;
    copy.send(points.as_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

/// Runs a whole forecast in this process (plan, every chunk in turn, finish), reporting progress
/// as `(skus_done, skus_total)`; used by `backroom forecast run`.
pub async fn run_in_process(
    db: &PgPool,
    options: &RunOptions,
    tenant: Uuid,
    run_id: Uuid,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<()> {
    let chunks = plan(db, options, tenant, run_id)
        .await
        .map_err(|e| anyhow::anyhow!("planning: {e}"))?;
    let total: usize = chunks.iter().map(Vec::len).sum();
    let mut done = 0;
    progress(done, total);
    for (n, skus) in chunks.iter().enumerate() {
        run_chunk(db, options, tenant, run_id, n as i32, skus)
            .await
            .map_err(|e| anyhow::anyhow!("chunk {n}: {e}"))?;
        done += skus.len();
        progress(done, total);
    }
    // What the queue runs as the chunks' group follow-up, here once every chunk is done.
    if !chunks.is_empty() {
        finish_run(db, tenant, run_id)
            .await
            .map_err(|e| anyhow::anyhow!("finishing: {e}"))?;
    }
    Ok(())
}
