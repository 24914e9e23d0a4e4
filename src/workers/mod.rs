//! Workers: one file per job kind (its payload with its `JobKind` contract, its handler, its
//! tests), and [`run`], which runs the chosen queues' workers with the outbox relay until
//! shutdown. `run` matches on every `jobs::Queue`: a queue without a worker does not compile.
//!
//! Shutdown is graceful with a deadline: on the signal every worker stops fetching, hands back
//! what it fetched but did not start, and lets running jobs finish; jobs still running when the
//! grace period ends are handed back to the queue at once rather than waiting out their lease.

pub mod emails;
pub mod forecasts;
pub mod import_files;
pub mod imports;
pub mod invoice_pdf;
pub mod invoices;
pub mod stock;

use crate::config::Settings;
use crate::jobs::{JobKind, Queue};
use crate::queue::{LimitChange, Queues, RedisBackend, WorkerHandle, WorkerOptions};
use crate::{db, outbox};
use anyhow::Context;
use apalis::prelude::*;
use std::future::Future;
use std::sync::Arc;
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

/// Copies the queues' default per-tenant limits (`BACKROOM_TENANT_CONCURRENCY`) and every
/// tenant's own limits and pauses from Postgres into the queue engine, and clears rules Redis
/// holds for tenants that no longer have them. Postgres is the record; Redis may have lost its
/// data or missed a change made while it was down.
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
    }
    let rows = sqlx::query!(
        "SELECT id, queue_limits, paused_queues FROM tenants WHERE queue_limits <> '{}'::jsonb OR paused_queues <> '{}'"
    )
    .fetch_all(db)
    .await?;
    let mut with_rules = std::collections::HashSet::new();
    for row in rows {
        let limits: std::collections::BTreeMap<String, u32> =
            serde_json::from_value(row.queue_limits).unwrap_or_default();
        queues
            .apply_tenant_rules(&all, row.id, &limits, &row.paused_queues)
            .await?;
        with_rules.insert(row.id.to_string());
    }
    let mut stale = std::collections::BTreeSet::new();
    for queue in &all {
        stale.extend(queues.paused_tenants(queue).await?);
        stale.extend(queues.limited_tenants(queue).await?.into_keys());
    }
    for tenant in stale.difference(&with_rules.into_iter().collect()) {
        if let Ok(id) = uuid::Uuid::parse_str(tenant) {
            queues
                .apply_tenant_rules(&all, id, &Default::default(), &[])
                .await?;
        }
    }
    Ok(())
}

/// Runs the plan's workers and the outbox relay until `shutdown` resolves.
pub async fn run(
    settings: &Settings,
    plan: WorkPlan,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool = db::pool(&settings.database_url, settings.database_max_connections)?;
    let redis = crate::redis_conn::RedisHandle::open(&settings.redis_url)?;
    let queues = Queues::new(redis, &settings.redis_namespace, settings.queue.clone());
    crate::queue::metrics::handle();
    if let Some(bind) = settings.metrics_bind {
        crate::startup::spawn_metrics_listener(bind, queues.clone()).await?;
    }

    sync_tenant_rules(&pool, &queues, settings)
        .await
        .context("while copying the tenants' queue limits and pauses into Redis")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles: Vec<WorkerHandle> = vec![];
    let mut running = tokio::task::JoinSet::new();
    for queue in &plan.queues {
        let mut stopped = stop_rx.clone();
        let signal = async move {
            let _ = stopped.wait_for(|s| *s).await;
            Ok::<(), std::io::Error>(())
        };
        let mut options = WorkerOptions::new(queue.id());
        let concurrency = |default: usize| plan.concurrency.unwrap_or(default);
        match queue {
            Queue::Stock => {
                // Stock jobs mostly wait for their batch: many run at once to fill batches.
                options.concurrency = concurrency(512);
                options.prefetch = options.concurrency * 2;
                options.batch = 512;
                options.job_timeout = stock::StockAdjustmentJob::TIMEOUT;
                let backend: RedisBackend<stock::StockAdjustmentJob> =
                    RedisBackend::new(queues.clone(), options.clone());
                handles.push(backend.handle());
                let worker = WorkerBuilder::new(backend.consumer())
                    .backend(backend)
                    .data(stock::StockLedger::start(pool.clone()))
                    .concurrency(options.concurrency)
                    .build(stock::handle);
                running.spawn(async move { worker.run_until(signal).await });
            }
            Queue::Invoices => {
                // Rendering is CPU work (on the blocking pool); the rest waits on Postgres and
                // Redis. Four jobs per core keep the cores busier through those waits (measured
                // on 2 cores, end to end: 4 jobs in all 258 invoices/s, 8 jobs 284–339/s).
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                options.concurrency = concurrency(4 * cores);
                options.prefetch = options.concurrency * 2;
                options.job_timeout = invoices::RenderInvoice::TIMEOUT;
                let deps = invoices::InvoiceDeps {
                    db: pool.clone(),
                    fonts: Arc::new(invoice_pdf::Fonts::new(settings.invoice_font_dir.clone())),
                };
                let backend: RedisBackend<invoices::RenderInvoice> =
                    RedisBackend::new(queues.clone(), options.clone());
                handles.push(backend.handle());
                let worker = WorkerBuilder::new(backend.consumer())
                    .backend(backend)
                    .data(deps)
                    .concurrency(options.concurrency)
                    .build(invoices::handle);
                running.spawn(async move { worker.run_until(signal).await });
            }
            Queue::Emails => {
                let smtp = settings.smtp_url.as_deref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "configuration error: SMTP_URL: is not set (the emails worker needs it)"
                    )
                })?;
                options.concurrency = concurrency(32);
                options.prefetch = options.concurrency * 2;
                options.job_timeout = emails::EmailJob::TIMEOUT;
                let deps = emails::EmailDeps {
                    db: pool.clone(),
                    redis: queues.redis().clone(),
                    namespace: settings.redis_namespace.clone(),
                    mailer: Arc::new(emails::Mailer::new(smtp, &settings.mail_from)?),
                    per_tenant_per_minute: settings.emails_per_minute,
                };
                let backend: RedisBackend<emails::EmailJob> =
                    RedisBackend::new(queues.clone(), options.clone());
                handles.push(backend.handle());
                let worker = WorkerBuilder::new(backend.consumer())
                    .backend(backend)
                    .data(deps)
                    .concurrency(options.concurrency)
                    .build(emails::handle);
                running.spawn(async move { worker.run_until(signal).await });
            }
            Queue::Forecasts => {
                // Each chunk job forecasts its SKUs on every core (rayon): one or two at once
                // keep the cores busy while the next chunk loads.
                options.concurrency = concurrency(2);
                options.prefetch = options.concurrency;
                options.job_timeout = forecasts::ForecastJob::TIMEOUT;
                let deps = forecasts::ForecastDeps {
                    db: pool.clone(),
                    queues: queues.clone(),
                    options: forecasts::RunOptions {
                        service_level: settings.forecast.service_level,
                        full_backtest_max_skus: settings.forecast.full_backtest_max_skus,
                        history_days: settings.forecast.history_days,
                    },
                };
                let backend: RedisBackend<forecasts::ForecastJob> =
                    RedisBackend::new(queues.clone(), options.clone());
                handles.push(backend.handle());
                let worker = WorkerBuilder::new(backend.consumer())
                    .backend(backend)
                    .data(deps)
                    .concurrency(options.concurrency)
                    .build(forecasts::handle);
                running.spawn(async move { worker.run_until(signal).await });
            }
            Queue::Imports => {
                options.concurrency = concurrency(2);
                options.prefetch = options.concurrency;
                options.job_timeout = imports::SalesImport::TIMEOUT;
                let deps = imports::ImportDeps {
                    db: pool.clone(),
                    dates: settings.dates,
                };
                let backend: RedisBackend<imports::SalesImport> =
                    RedisBackend::new(queues.clone(), options.clone());
                handles.push(backend.handle());
                let worker = WorkerBuilder::new(backend.consumer())
                    .backend(backend)
                    .data(deps)
                    .concurrency(options.concurrency)
                    .build(imports::handle);
                running.spawn(async move { worker.run_until(signal).await });
            }
        }
    }
    running.spawn({
        let (db, queues, stop) = (pool.clone(), queues.clone(), stop_rx.clone());
        async move {
            outbox::run_relay(db, queues, Duration::from_millis(500), stop).await;
            Ok(())
        }
    });
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
