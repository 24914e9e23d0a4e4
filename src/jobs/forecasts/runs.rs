//! Starting runs (on demand, from the CLI, nightly), telling how one ended, and pruning old
//! ones.

use super::{DAILY_SEASON, ForecastJob};
use crate::jobs::webhooks::events::{self, Event, EventType};
use crate::jobs::{self, Enqueue};
use crate::queue::Queues;
use chrono::NaiveDate;
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Most SKUs to reorder listed in a `forecast.run.finished` event (`reorder_count` has them all).
const MAX_REORDER_LISTED: i64 = 100;

/// How many of a run's SKUs each model was chosen for.
pub async fn model_mix(
    db: impl sqlx::PgExecutor<'_>,
    tenant_id: Uuid,
    run_id: Uuid,
) -> sqlx::Result<BTreeMap<String, i64>> {
    let rows = sqlx::query!(
        r#"SELECT model, count(*) AS "n!" FROM forecast_results
           WHERE run_id = $1 AND tenant_id = $2 GROUP BY model"#,
        run_id,
        tenant_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.model, r.n)).collect())
}

/// Records the `forecast.run.finished` event of a run that has just ended, in the transaction
/// that ended it: its outcome, the mix of models chosen and the SKUs due to reorder.
pub(super) async fn record_finished(tx: &mut PgConnection, run_id: Uuid) -> sqlx::Result<()> {
    let run = sqlx::query!(
        "SELECT tenant_id, status, trigger, skus_total, error FROM forecast_runs WHERE id = $1",
        run_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let models = model_mix(&mut *tx, run.tenant_id, run_id).await?;
    // The most urgent SKUs to reorder, each row carrying how many there are in all.
    let due = sqlx::query!(
        r#"SELECT sku, on_hand, reorder_point, order_quantity, stockout_date,
                  count(*) OVER () AS "total!"
           FROM forecast_results
           WHERE run_id = $1 AND on_hand <= reorder_point
           ORDER BY stockout_date NULLS LAST, sku LIMIT $2"#,
        run_id,
        MAX_REORDER_LISTED
    )
    .fetch_all(&mut *tx)
    .await?;
    let reorder_count = due.first().map_or(0, |r| r.total);
    let reorder: Vec<serde_json::Value> = due
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "sku": r.sku, "on_hand": r.on_hand, "reorder_point": r.reorder_point,
                "order_quantity": r.order_quantity, "stockout_date": r.stockout_date,
            })
        })
        .collect();
    let data = serde_json::json!({
        "run_id": run_id, "status": run.status, "trigger": run.trigger,
        "skus_total": run.skus_total, "models": models, "reorder": reorder,
        "reorder_count": reorder_count, "error": run.error,
    });
    let event = Event::new(run.tenant_id, EventType::ForecastRunFinished, data);
    events::record(tx, &[event]).await.map(|_| ())
}

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// On demand through the API: at most one such run per `min_gap` per tenant.
    Api {
        min_gap: std::time::Duration,
    },
    Cli,
    /// The nightly schedule, for this night.
    Schedule {
        night: NaiveDate,
    },
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Api { .. } => "api",
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
    /// The tenant started a run on demand less than the least gap ago: this long to wait.
    #[error("another forecast run may start on demand in {0:?}")]
    TooSoon(std::time::Duration),
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
    let today = queues.settings().clock.today();
    let run_id = create_run(db, tenant, trigger, horizon_days, skus, today).await?;
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
    // The run is started once its plan job is queued: failing to note the job's id on the run
    // (Postgres blinked) is logged, not returned, or the caller would hear "not started" about a
    // run that goes ahead.
    let noted = sqlx::query!(
        "UPDATE forecast_runs SET job_id = $2 WHERE id = $1",
        run_id,
        job_id
    )
    .execute(db)
    .await;
    if let Err(e) = noted {
        tracing::warn!(error = %e, %run_id, job_id, "forecast run started; noting its job id failed");
    }
    Ok((run_id, job_id))
}

/// The run row alone (for [`start_run`] and for in-process runs from the CLI); its history ends
/// the day before `today`.
pub async fn create_run(
    db: &PgPool,
    tenant: Uuid,
    trigger: Trigger,
    horizon_days: i32,
    skus: Option<Vec<String>>,
    today: NaiveDate,
) -> Result<Uuid, StartError> {
    let night = match trigger {
        Trigger::Schedule { night } => Some(night),
        _ => None,
    };
    let history_end = today - chrono::Duration::days(1);
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
    let abandoned = sqlx::query_scalar!(
        r#"UPDATE forecast_runs
           SET status = 'failed', finished_at = now(),
               error = 'abandoned: still unfinished after ' || $2::float8 || ' hours'
           WHERE tenant_id = $1 AND status IN ('queued', 'running')
             AND created_at < now() - $2::float8 * interval '1 hour'
           RETURNING id"#,
        tenant,
        ABANDONED_AFTER_HOURS
    )
    .fetch_all(&mut *tx)
    .await?;
    for run in abandoned {
        record_finished(&mut tx, run).await?;
    }
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
    // And one run on demand per gap: a run is a lot of CPU for the shared workers (seconds per
    // few hundred SKUs), and a day's sales change nothing within minutes.
    if let Trigger::Api { min_gap } = trigger
        && !min_gap.is_zero()
        && let Some(wait) = sqlx::query_scalar!(
            r#"SELECT EXTRACT(EPOCH FROM max(created_at) + make_interval(secs => $2) - now())::float8
               FROM forecast_runs WHERE tenant_id = $1 AND trigger = 'api'"#,
            tenant,
            min_gap.as_secs_f64()
        )
        .fetch_one(&mut *tx)
        .await?
        .filter(|&w| w > 0.0)
    {
        return Err(StartError::TooSoon(std::time::Duration::from_secs_f64(wait)));
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
