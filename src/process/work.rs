//! `backroom work`: [`run`] runs the chosen queues' workers with the outbox relay until
//! shutdown. Each kind's worker (its handler, options and dependencies) lives in its folder under
//! `crate::jobs`; `run` matches on every `jobs::Queue`, so a queue without a worker does not
//! compile.
//!
//! Shutdown is graceful with a deadline: on the signal every worker stops fetching, hands back
//! what it fetched but did not start, and lets running jobs finish; jobs still running when the
//! grace period ends are handed back to the queue at once rather than waiting out their lease.

use crate::config::Settings;
use crate::jobs::{self, Queue, WorkerContext};
use crate::queue::{LimitChange, Queues, RedisBackend, TenantRules, WorkerHandle};
use crate::{db, outbox};
use anyhow::Context;
use apalis::prelude::*;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// Which queues to work and how hard.
#[derive(Debug, Clone)]
pub struct WorkPlan {
    pub queues: Vec<Queue>,
    /// Jobs at once per queue; `None` uses each queue's default.
    pub concurrency: Option<usize>,
}

impl WorkPlan {
    /// Parses `--queues` (comma-separated; empty means every queue).
    pub fn parse(queues: Option<&str>, concurrency: Option<usize>) -> anyhow::Result<Self> {
        let mut parsed = vec![];
        match queues {
            None => parsed.extend(Queue::ALL),
            Some(list) => {
                for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let queue = Queue::parse(name).with_context(|| {
                        format!(
                            "--queues: '{name}' is not a queue (queues: {})",
                            Queue::names()
                        )
                    })?;
                    parsed.push(queue);
                }
            }
        }
        anyhow::ensure!(!parsed.is_empty(), "--queues: name at least one queue");
        Ok(WorkPlan {
            queues: parsed,
            concurrency,
        })
    }
}

/// Copies the queues' default per-tenant limits and rates (`BACKROOM_TENANT_CONCURRENCY`,
/// `BACKROOM_TENANT_JOB_RATES`) and every tenant's own rules from Postgres into the queue
/// engine, and clears rules Redis holds for tenants that no longer have them. Postgres is the
/// record; Redis may have lost its data or missed a change made while it was down.
pub async fn sync_tenant_rules(
    db: &sqlx::PgPool,
    queues: &Queues,
    settings: &Settings,
) -> anyhow::Result<()> {
    let all = Queue::ALL.map(Queue::id);
    for queue in &all {
        let default = settings
            .tenant_concurrency
            .get(queue.as_str())
            .map_or(LimitChange::Default, |&n| LimitChange::Set(n));
        queues.control_tenant(queue, "*", None, default).await?;
        let rate = settings.tenant_job_rates.get(queue.as_str()).copied();
        queues.set_tenant_rate(queue, "*", rate).await?;
    }
    let rows = sqlx::query!(
        "SELECT id, queue_limits, queue_rates, paused_queues FROM tenants
         WHERE queue_limits <> '{}'::jsonb OR queue_rates <> '{}'::jsonb OR paused_queues <> '{}'"
    )
    .fetch_all(db)
    .await?;
    let mut with_rules = std::collections::HashSet::new();
    for row in rows {
        let rules = TenantRules {
            limits: serde_json::from_value(row.queue_limits).unwrap_or_default(),
            rates: serde_json::from_value(row.queue_rates).unwrap_or_default(),
            paused: row.paused_queues,
        };
        queues.apply_tenant_rules(&all, row.id, &rules).await?;
        with_rules.insert(row.id.to_string());
    }
    let mut stale = std::collections::BTreeSet::new();
    for queue in &all {
        stale.extend(queues.paused_tenants(queue).await?);
        stale.extend(queues.limited_tenants(queue).await?.into_keys());
        stale.extend(queues.rated_tenants(queue).await?);
    }
    for tenant in stale.difference(&with_rules.into_iter().collect()) {
        if let Ok(id) = uuid::Uuid::parse_str(tenant) {
            queues
                .apply_tenant_rules(&all, id, &TenantRules::default())
                .await?;
        }
    }
    Ok(())
}

/// Runs the plan's workers, the outbox relay and the job history copier until `shutdown`
/// resolves.
pub async fn run(
    settings: &Settings,
    plan: WorkPlan,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool = db::pool(
        &settings.database_url,
        settings.database_max_connections,
        crate::db::Role::Worker,
    )?;
    let redis = crate::redis_conn::RedisHandle::open(&settings.redis_url)?;
    let queues = Queues::new(redis, &settings.redis_namespace, settings.queue.clone())
        .with_group_hook(jobs::webhooks::group_events::GroupEvents::hook(
            pool.clone(),
        ));
    crate::queue::metrics::handle();
    if let Some(bind) = settings.metrics_bind {
        super::serve::spawn_metrics_listener(bind, queues.clone(), pool.clone()).await?;
    }

    sync_tenant_rules(&pool, &queues, settings)
        .await
        .context("while copying the tenants' queue limits and pauses into Redis")?;

    // The job history is switched on before any job of these queues can finish here, so none
    // is missed; a process with the history off switches it off (one setting for the fleet).
    for queue in &plan.queues {
        queues
            .set_history_cap(
                &queue.id(),
                if settings.job_history_days > 0 {
                    crate::queue::HISTORY_CAP
                } else {
                    0
                },
            )
            .await
            .context("while switching the job history")?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles: Vec<WorkerHandle> = vec![];
    let mut running = tokio::task::JoinSet::new();
    // Every kind's final outcomes become `job.*` webhook events (but the deliveries' own).
    let job_events = crate::queue::Hook(std::sync::Arc::new(
        jobs::webhooks::job_events::JobEvents::new(pool.clone()),
    ));
    for queue in &plan.queues {
        let mut stopped = stop_rx.clone();
        let signal = async move {
            let _ = stopped.wait_for(|s| *s).await;
            Ok::<(), std::io::Error>(())
        };
        let ctx = WorkerContext {
            db: &pool,
            queues: &queues,
            settings,
        };
        // One worker of a kind: its options and dependencies come from the kind's folder.
        macro_rules! start {
            ($kind:ident, $job:ty) => {{
                let mut options = jobs::$kind::worker::options(plan.concurrency);
                if *queue != Queue::Webhooks {
                    options.on_outcome = Some(job_events.clone());
                }
                let deps = jobs::$kind::worker::deps(&ctx)?;
                let backend: RedisBackend<$job> =
                    RedisBackend::new(queues.clone(), options.clone());
                handles.push(backend.handle());
                let worker = WorkerBuilder::new(backend.consumer())
                    .backend(backend)
                    .data(deps)
                    .concurrency(options.concurrency)
                    .build(jobs::$kind::worker::handle);
                running.spawn(async move { worker.run_until(signal).await });
            }};
        }
        match queue {
            Queue::Stock => start!(stock, jobs::stock::StockAdjustmentJob),
            Queue::Invoices => start!(invoices, jobs::invoices::RenderInvoice),
            Queue::Emails => start!(emails, jobs::emails::EmailJob),
            Queue::Forecasts => start!(forecasts, jobs::forecasts::ForecastJob),
            Queue::Imports => start!(imports, jobs::imports::SalesImport),
            Queue::Webhooks => start!(webhooks, jobs::webhooks::DeliverWebhook),
        }
    }
    running.spawn({
        let (db, queues, stop) = (pool.clone(), queues.clone(), stop_rx.clone());
        async move {
            outbox::run_relay(db, queues, Duration::from_millis(500), stop).await;
            Ok(())
        }
    });
    if settings.job_history_days > 0 {
        running.spawn({
            let (db, queues, stop) = (pool.clone(), queues.clone(), stop_rx.clone());
            let names = plan.queues.iter().map(|q| q.id()).collect();
            let keep = settings.job_history_days;
            async move {
                crate::history::run_copier(db, queues, names, keep, stop).await;
                Ok(())
            }
        });
    }
    tracing::info!(queues = ?plan.queues.iter().map(|q| q.name()).collect::<Vec<_>>(), "workers running");

    shutdown.await;
    tracing::info!(grace = ?settings.shutdown_grace, "stopping workers");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(settings.shutdown_grace, async {
        while let Some(joined) = running.join_next().await {
            if let Ok(Err(e)) = joined {
                tracing::error!(error = %e, "worker ended with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        for handle in &handles {
            match handle.hand_back_all().await {
                Ok(n) => tracing::warn!(
                    worker = handle.consumer(),
                    handed_back = n,
                    "grace period over; unfinished jobs handed back"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "could not hand jobs back; their leases will expire")
                }
            }
        }
    }
    Ok(())
}
