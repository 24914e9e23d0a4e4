//! Forecast runs: a `plan` job per run and a `chunk` job per few hundred SKUs on the `forecasts`
//! queue, so every worker process shares a tenant's nightly run.
//!
//! - **Start** ([`start_run`]): a `forecast_runs` row, then its plan job. A nightly run carries
//!   its night and `(tenant_id, night)` is unique, so several schedulers firing at once start
//!   one run per tenant per night.
//! - **Plan**: picks the SKUs with history, trains what every chunk shares (the global model and
//!   the model chooser, see [`crate::forecast::pipeline`]) on a sample, stores it on the run, and
//!   pushes the chunk jobs (idempotently, so a re-delivered plan pushes nothing twice).
//! - **Chunk**: forecasts its SKUs, then in one transaction writes results and points with
//!   `COPY`, marks the chunk done and advances the run's progress. A chunk delivered twice finds
//!   itself done and does nothing; the chunk that completes the run finishes it and, for a
//!   nightly run, queues the tenant's reorder digest through the outbox.

use crate::forecast::history::{self, csv_quoted};
use crate::forecast::pipeline::{self, Artifacts, Outcome, RunSettings};
use crate::forecast::reorder;
use crate::jobs::{self, Enqueue, JobKind, Queue};
use crate::outbox;
use crate::queue::{JobError, JobMeta, Queues, cancel};
use crate::workers::emails::EmailJob;
use anyhow::Context;
use apalis::prelude::Data;
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// SKUs per chunk job: big enough to amortise loading, small enough to spread over workers.
pub const CHUNK_SKUS: usize = 250;
/// Season length of daily sales: weekly.
pub const DAILY_SEASON: i32 = 7;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum ForecastJob {
    Plan {
        tenant_id: Uuid,
        run_id: Uuid,
    },
    Chunk {
        tenant_id: Uuid,
        run_id: Uuid,
        chunk_no: i32,
        skus: Vec<String>,
    },
}

impl JobKind for ForecastJob {
    const QUEUE: Queue = Queue::Forecasts;
    const MAX_ATTEMPTS: u32 = 4;
    /// A chunk of 250 SKUs with full backtests takes minutes; a plan trains the shared models.
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

    fn kind(&self) -> &'static str {
        match self {
            ForecastJob::Plan { .. } => "forecast_plan",
            ForecastJob::Chunk { .. } => "forecast_chunk",
        }
    }

    fn tenant(&self) -> Option<Uuid> {
        Some(self.tenant_id())
    }
}

impl ForecastJob {
    fn tenant_id(&self) -> Uuid {
        match self {
            ForecastJob::Plan { tenant_id, .. } | ForecastJob::Chunk { tenant_id, .. } => {
                *tenant_id
            }
        }
    }
}

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Api,
    Cli,
    /// The nightly schedule, for this night.
    Schedule {
        night: NaiveDate,
    },
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Cli => "cli",
            Trigger::Schedule { .. } => "schedule",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] redis::RedisError),
    /// The night already has its run.
    #[error("this night's run already exists")]
    AlreadyRan,
    /// The tenant has a run queued or running (one at a time, however it was started).
    #[error("forecast run {0} is still queued or running")]
    Busy(Uuid),
}

impl From<jobs::EnqueueError> for StartError {
    fn from(e: jobs::EnqueueError) -> Self {
        match e {
            jobs::EnqueueError::Queue(e) => StartError::Queue(e),
            jobs::EnqueueError::Database(e) => StartError::Database(e),
        }
    }
}

/// A run still queued or running after this long is taken for abandoned (its jobs died without
/// reporting) and no longer blocks the tenant's next run: the longest legitimate run is four
/// attempts of a 30-minute job.
const ABANDONED_AFTER_HOURS: f64 = 6.0;

/// Creates a run (history up to yesterday, UTC) and queues its plan job; returns the run's id
/// and the plan job's id.
pub async fn start_run(
    db: &PgPool,
    queues: &Queues,
    tenant: Uuid,
    trigger: Trigger,
    horizon_days: i32,
    skus: Option<Vec<String>>,
) -> Result<(Uuid, String), StartError> {
    let run_id = create_run(db, tenant, trigger, horizon_days, skus).await?;
    let job = ForecastJob::Plan {
        tenant_id: tenant,
        run_id,
    };
    let job_id = jobs::enqueue_or_undo(
        queues,
        db,
        Enqueue::new(&job).key(format!("forecast-plan:{run_id}")),
        sqlx::query!("DELETE FROM forecast_runs WHERE id = $1", run_id),
    )
    .await?;
    sqlx::query!(
        "UPDATE forecast_runs SET job_id = $2 WHERE id = $1",
        run_id,
        job_id
    )
    .execute(db)
    .await?;
    Ok((run_id, job_id))
}

/// The run row alone (for [`start_run`] and for in-process runs from the CLI).
pub async fn create_run(
    db: &PgPool,
    tenant: Uuid,
    trigger: Trigger,
    horizon_days: i32,
    skus: Option<Vec<String>>,
) -> Result<Uuid, StartError> {
    let night = match trigger {
        Trigger::Schedule { night } => Some(night),
        _ => None,
    };
    let history_end = Utc::now().date_naive() - chrono::Duration::days(1);
    let run_id = Uuid::now_v7();
    let mut tx = db.begin().await?;
    // One run at a time per tenant: a run started on demand waits for the one in progress (409),
    // so starting runs in a loop costs the shared workers one run, not hundreds. The lock makes
    // the check and the insert one step for concurrent starts. Nightly runs are exempt (the
    // tenant cannot block its own night) but count as in progress.
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('forecast-run:' || $1::uuid::text, 0))",
        tenant
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        r#"UPDATE forecast_runs
           SET status = 'failed', finished_at = now(),
               error = 'abandoned: still unfinished after ' || $2::float8 || ' hours'
           WHERE tenant_id = $1 AND status IN ('queued', 'running')
             AND created_at < now() - $2::float8 * interval '1 hour'"#,
        tenant,
        ABANDONED_AFTER_HOURS
    )
    .execute(&mut *tx)
    .await?;
    if night.is_none()
        && let Some(active) = sqlx::query_scalar!(
            "SELECT id FROM forecast_runs WHERE tenant_id = $1 AND status IN ('queued', 'running') ORDER BY created_at LIMIT 1",
            tenant
        )
        .fetch_optional(&mut *tx)
        .await?
    {
        return Err(StartError::Busy(active));
    }
    let created = sqlx::query_scalar!(
        r#"INSERT INTO forecast_runs (id, tenant_id, trigger, night, horizon_days, season, skus, history_end)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT ON CONSTRAINT forecast_runs_one_per_night DO NOTHING
           RETURNING id"#,
        run_id,
        tenant,
        trigger.as_str(),
        night,
        horizon_days,
        DAILY_SEASON,
        skus.as_deref(),
        history_end
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    created.ok_or(StartError::AlreadyRan)
}

/// How runs are made (from the forecast settings).
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Service level of reorder advice (e.g. 0.95).
    pub service_level: f64,
    /// Runs over more SKUs let the model chooser shortlist each SKU's model instead of
    /// backtesting every model.
    pub full_backtest_max_skus: usize,
    /// The most days of history read per SKU (`BACKROOM_FORECAST_HISTORY_DAYS`).
    pub history_days: i32,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            service_level: 0.95,
            full_backtest_max_skus: pipeline::FULL_BACKTEST_MAX_SKUS,
            history_days: 1096,
        }
    }
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
                ForecastJob::Plan { run_id, .. } | ForecastJob::Chunk { run_id, .. } => *run_id,
            };
            let _ = sqlx::query!(
                "UPDATE forecast_runs SET status = 'failed', error = $2, finished_at = now() WHERE id = $1 AND status IN ('queued', 'running')",
                run_id,
                error.to_string()
            )
            .execute(&deps.db)
            .await;
        }
    }
    result
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
    sqlx::query!(
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
    .execute(db)
    .await?;
    Ok(chunks)
}

async fn push_chunks(
    queues: &Queues,
    tenant: Uuid,
    run_id: Uuid,
    chunks: &[Vec<String>],
) -> Result<(), JobError> {
    for (first, batch) in chunks.chunks(500).enumerate() {
        let batch = batch.iter().enumerate().map(|(i, skus)| {
            let n = first * 500 + i;
            let job = ForecastJob::Chunk {
                tenant_id: tenant,
                run_id,
                chunk_no: n as i32,
                skus: skus.clone(),
            };
            Enqueue::new(&job).key(format!("forecast-chunk:{run_id}:{n}"))
        });
        jobs::enqueue(queues, batch).await?;
    }
    Ok(())
}

/// Forecasts one chunk and records it; returns how many SKUs it wrote (0 if already done).
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
    let progress = sqlx::query!(
        r#"UPDATE forecast_runs SET skus_done = skus_done + $2, chunks_done = chunks_done + 1
           WHERE id = $1
           RETURNING trigger, chunks_done, chunks_total"#,
        run_id,
        skus.len() as i32
    )
    .fetch_one(&mut *tx)
    .await?;
    // Counted on the run's row: concurrent chunks serialise on its lock, so exactly one of
    // them sees the last chunk done.
    if progress.chunks_done >= progress.chunks_total {
        sqlx::query!(
            "UPDATE forecast_runs SET status = 'succeeded', finished_at = now(), skus_done = skus_total WHERE id = $1 AND status = 'running'",
            run_id
        )
        .execute(&mut *tx)
        .await?;
        if progress.trigger == "schedule" {
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
    }
    tx.commit().await?;
    Ok(rows.len())
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

/// Runs a whole forecast in this process (plan, then every chunk in turn), reporting progress
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
    Ok(())
}

/// Starts tonight's run for every active tenant with sales history; several schedulers may
/// call this for the same night and each tenant still gets one run. Returns the runs started.
pub async fn start_nightly(
    db: &PgPool,
    queues: &Queues,
    night: NaiveDate,
    horizon_days: i32,
) -> anyhow::Result<usize> {
    let tenants = sqlx::query_scalar!(
        r#"SELECT t.id FROM tenants t
           WHERE t.active AND EXISTS (SELECT 1 FROM daily_sales d WHERE d.tenant_id = t.id)
             AND NOT EXISTS (SELECT 1 FROM forecast_runs r WHERE r.tenant_id = t.id AND r.night = $1)"#,
        night
    )
    .fetch_all(db)
    .await?;
    let mut started = 0;
    for tenant in tenants {
        match start_run(
            db,
            queues,
            tenant,
            Trigger::Schedule { night },
            horizon_days,
            None,
        )
        .await
        {
            Ok(_) => started += 1,
            Err(StartError::AlreadyRan) => {}
            Err(e) => {
                tracing::error!(tenant = %tenant, error = %e, "could not start the nightly forecast")
            }
        }
    }
    Ok(started)
}

/// Deletes each tenant's runs beyond the newest `keep` (results and points go with them).
pub async fn prune_runs(db: &PgPool, keep: i64) -> sqlx::Result<u64> {
    sqlx::query!(
        r#"DELETE FROM forecast_runs WHERE id IN (
               SELECT id FROM (
                   SELECT id, row_number() OVER (PARTITION BY tenant_id ORDER BY created_at DESC) AS n
                   FROM forecast_runs WHERE status IN ('succeeded', 'failed')
               ) ranked WHERE n > $1)"#,
        keep
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected())
}
