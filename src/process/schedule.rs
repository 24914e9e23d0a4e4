//! `backroom schedule`: time-driven work, on apalis-cron.
//!
//! Every scheduler process runs the same schedules; what they trigger is safe to run from
//! several processes at once (pruning and trimming are idempotent, and each nightly job is keyed
//! so that it happens once however many schedulers fire).
//! - every ten minutes: prune relayed outbox rows older than a week and webhook events older
//!   than 30 days (once none of their deliveries is pending), trim each queue's finished-job
//!   sets to their retention, and keep each tenant's newest forecast runs only;
//! - nightly (`BACKROOM_FORECAST_CRON`, default 02:00 UTC): start a forecast run for every
//!   active tenant with sales history. A run is keyed by tenant and night in Postgres, so the
//!   night's tick from every scheduler starts one run per tenant.

use crate::config::{ForecastSettings, Settings};
use crate::jobs::Queue;
use crate::jobs::forecasts;
use crate::jobs::webhooks::events;
use crate::queue::{JobError, Queues};
use crate::{db, outbox};
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use sqlx::PgPool;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::watch;

/// What scheduled jobs need.
#[derive(Clone)]
pub struct SchedulerDeps {
    pub db: PgPool,
    pub queues: Queues,
    pub forecast: ForecastSettings,
}

/// Relayed outbox rows are kept this long for inspection.
const OUTBOX_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// Webhook events (and their deliveries' records) are kept this long for tenants to list and
/// replay.
const WEBHOOK_EVENTS_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// The maintenance tick: prune the outbox and old webhook events, trim the queues.
pub async fn maintain(tick: Tick, deps: Data<SchedulerDeps>) -> Result<(), JobError> {
    let pruned = outbox::prune(&deps.db, OUTBOX_KEEP).await?;
    let runs_pruned = forecasts::prune_runs(&deps.db, deps.forecast.keep_runs).await?;
    let events_pruned = events::prune(&deps.db, WEBHOOK_EVENTS_KEEP).await?;
    let mut trimmed = 0;
    for queue in Queue::ALL {
        trimmed += deps.queues.trim(&queue.id()).await?;
    }
    tracing::info!(
        at = tick.get_timestamp(),
        pruned,
        trimmed,
        runs_pruned,
        events_pruned,
        "maintenance done"
    );
    Ok(())
}

/// The nightly tick: tonight's forecast run for every tenant (once per tenant and night). With
/// traces on, the tick is a span and the runs it starts are jobs of its trace.
#[tracing::instrument(name = "nightly forecasts", skip_all, fields(otel.kind = "producer"))]
pub async fn nightly(tick: Tick, deps: Data<SchedulerDeps>) -> Result<(), JobError> {
    let night = chrono::DateTime::from_timestamp(tick.get_timestamp() as i64, 0)
        .unwrap_or_else(chrono::Utc::now)
        .date_naive();
    let started =
        forecasts::start_nightly(&deps.db, &deps.queues, night, deps.forecast.horizon_days).await?;
    tracing::info!(%night, started, "nightly forecast runs started");
    Ok(())
}

/// Which schedule a worker runs.
#[derive(Debug, Clone, Copy)]
enum Schedule {
    Maintenance,
    NightlyForecasts,
}

/// Runs the schedules until `shutdown` resolves.
pub async fn run(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let deps = SchedulerDeps {
        db: db::pool(&settings.database_url, 4, crate::db::Role::Worker)?,
        queues: Queues::new(
            crate::redis_conn::RedisHandle::open(&settings.redis_url)?,
            &settings.redis_namespace,
            settings.queue.clone(),
        ),
        forecast: settings.forecast.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let maintenance = tokio::spawn(run_schedule(
        Schedule::Maintenance,
        "0 */10 * * * *".to_string(),
        deps.clone(),
        stop_rx.clone(),
    ));
    let nightly = tokio::spawn(run_schedule(
        Schedule::NightlyForecasts,
        settings.forecast.cron.clone(),
        deps.clone(),
        stop_rx.clone(),
    ));
    tracing::info!(forecast_cron = %settings.forecast.cron, "scheduler running");
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = maintenance.await;
    let _ = nightly.await;
    Ok(())
}

/// Runs one cron schedule, restarting its worker if it stops on its own (apalis-cron ends a
/// worker whose tick was polled late, e.g. after a long pause of the process).
async fn run_schedule(
    which: Schedule,
    cron: String,
    deps: SchedulerDeps,
    stop: watch::Receiver<bool>,
) {
    // Settings checked the expression at start-up.
    let schedule = cron::Schedule::from_str(&cron).expect("cron expressions are validated");
    let name = format!("{which:?}");
    loop {
        if *stop.borrow() {
            return;
        }
        let mut stopped = stop.clone();
        let until = async move {
            let _ = stopped.wait_for(|s| *s).await;
            Ok::<(), std::io::Error>(())
        };
        let builder = WorkerBuilder::new(format!("{name}-{}", std::process::id()))
            .backend(CronScheduler::new(schedule.clone()))
            .data(deps.clone())
            .concurrency(1);
        let result = match which {
            Schedule::Maintenance => builder.build(maintain).run_until(until).await,
            Schedule::NightlyForecasts => builder.build(nightly).run_until(until).await,
        };
        if let Err(e) = result {
            tracing::warn!(schedule = %name, error = %e, "schedule stopped; restarting it");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
