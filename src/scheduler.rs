//! `backroom schedule`: time-driven work, on apalis-cron.
//!
//! Every scheduler process runs the same schedules; what they trigger is safe to run from
//! several processes at once (pruning and trimming are idempotent, and each nightly job is keyed
//! so that it happens once however many schedulers fire).
//! - every ten minutes: prune relayed outbox rows older than a week and trim each queue's
//!   finished-job sets to their retention.

use crate::config::Settings;
use crate::queue::{JobError, QUEUE_NAMES, QueueName, Queues};
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
}

/// Relayed outbox rows are kept this long for inspection.
const OUTBOX_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The maintenance tick: prune the outbox, trim the queues.
pub async fn maintain(tick: Tick, deps: Data<SchedulerDeps>) -> Result<(), JobError> {
    let pruned = outbox::prune(&deps.db, OUTBOX_KEEP).await?;
    let mut trimmed = 0;
    for name in QUEUE_NAMES {
        trimmed += deps
            .queues
            .trim(&QueueName::parse(name).expect("known queue"))
            .await?;
    }
    tracing::info!(
        at = tick.get_timestamp(),
        pruned,
        trimmed,
        "maintenance done"
    );
    Ok(())
}

/// Runs the schedules until `shutdown` resolves.
pub async fn run(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let deps = SchedulerDeps {
        db: db::pool(&settings.database_url, 4)?,
        queues: Queues::new(
            crate::redis_conn::RedisHandle::open(&settings.redis_url)?,
            &settings.redis_namespace,
            settings.queue.clone(),
        ),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let maintenance = tokio::spawn(run_schedule(
        "maintenance",
        "0 */10 * * * *",
        deps.clone(),
        stop_rx.clone(),
    ));
    tracing::info!("scheduler running");
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = maintenance.await;
    Ok(())
}

/// Runs one cron schedule, restarting its worker if it stops on its own (apalis-cron ends a
/// worker whose tick was polled late, e.g. after a long pause of the process).
async fn run_schedule(
    name: &'static str,
    cron: &'static str,
    deps: SchedulerDeps,
    stop: watch::Receiver<bool>,
) {
    let schedule = cron::Schedule::from_str(cron).expect("static cron expressions parse");
    loop {
        if *stop.borrow() {
            return;
        }
        let mut stopped = stop.clone();
        let worker = WorkerBuilder::new(format!("{name}-{}", std::process::id()))
            .backend(CronScheduler::new(schedule.clone()))
            .data(deps.clone())
            .concurrency(1)
            .build(maintain);
        let result = worker
            .run_until(async move {
                let _ = stopped.wait_for(|s| *s).await;
                Ok::<(), std::io::Error>(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(schedule = name, error = %e, "schedule stopped; restarting it");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
