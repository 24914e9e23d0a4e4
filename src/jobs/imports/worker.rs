//! The `imports` queue's handler: reads the upload, validates it ([`super::validate`]) and
//! loads the good rows. Loading is idempotent: an import *sets* a day's imported quantity (rows of
//! one SKU and day inside a file are summed first), so the same file imported twice, or one job
//! delivered twice, leaves the history as one import would.

use super::SalesImport;
use super::upload;
use super::validate::{ImportReport, validate};
use crate::clock::Clock;
use crate::domain::DateWindow;
use crate::forecast::history;
use crate::jobs::webhooks::events::{self, Event, EventType};
use crate::jobs::{WorkerContext, worker_options};
use crate::queue::{JobError, JobMeta, WorkerOptions};
use anyhow::Context;
use apalis::prelude::Data;
use sqlx::PgPool;

/// Validation is CPU work: two imports at once.
pub fn options(concurrency: Option<usize>) -> WorkerOptions {
    let mut options = worker_options::<SalesImport>(concurrency.unwrap_or(2));
    options.prefetch = options.concurrency;
    options
}

pub fn deps(ctx: &WorkerContext) -> anyhow::Result<ImportDeps> {
    Ok(ImportDeps {
        db: ctx.db.clone(),
        dates: ctx.settings.dates,
        clock: ctx.settings.queue.clock.clone(),
    })
}

/// What the imports worker needs.
#[derive(Clone)]
pub struct ImportDeps {
    pub db: PgPool,
    pub dates: DateWindow,
    pub clock: Clock,
}

/// The import's `import.finished` event: its counts (without the rejected rows' list) and the
/// reason a file could not be read.
fn finished(
    job: &SalesImport,
    status: &str,
    report: &ImportReport,
    error: &serde_json::Value,
) -> Event {
    let data = serde_json::json!({
        "import_id": job.import_id, "status": status, "rows": report.rows,
        "rows_loaded": report.rows_loaded, "rows_rejected": report.rows_rejected,
        "days_written": report.days_written, "skus": report.skus,
        "first_day": report.first_day, "last_day": report.last_day, "error": error,
    });
    Event::new(job.tenant_id, EventType::ImportFinished, data)
}

/// Postgres `jsonb` cannot hold U+0000, and a report quotes the cells it rejects: a NUL byte
/// from the upload is shown as U+FFFD instead, so the report is always storable.
fn storable(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{FFFD}")),
        Value::Array(items) => Value::Array(items.into_iter().map(storable).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.replace('\0', "\u{FFFD}"), storable(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The `imports` queue's handler.
pub async fn handle(
    job: SalesImport,
    meta: Data<JobMeta>,
    deps: Data<ImportDeps>,
) -> Result<serde_json::Value, JobError> {
    if meta.tenant != Some(job.tenant_id) {
        return Err(JobError::permanent(
            "the payload's tenant does not match the job's tenant",
        ));
    }
    let (body, status) = upload::read(&deps.db, job.tenant_id, job.import_id)
        .await?
        .ok_or_else(|| JobError::permanent("no such import (deleted?)"))?;
    // The file is dropped once read: a delivery after that finds the import finished.
    let Some(body) = body else {
        return match status.as_str() {
            "loaded" => Ok(sqlx::query_scalar!(
                "SELECT report FROM sales_imports WHERE id = $1",
                job.import_id
            )
            .fetch_one(&deps.db)
            .await?
            .unwrap_or(serde_json::Value::Null)),
            _ => Err(JobError::permanent("the import already failed")),
        };
    };
    let known: Vec<String> = sqlx::query_scalar!(
        "SELECT sku FROM products WHERE tenant_id = $1",
        job.tenant_id
    )
    .fetch_all(&deps.db)
    .await?;
    let today = deps.clock.today();
    let dates = deps.dates;
    // polars runs the validation as one query: the job's token is checked before it starts.
    let validated = crate::queue::cancel::spawn_blocking(move |cancel| {
        cancel.check()?;
        Ok(validate(&body, &known, today, dates))
    })
    .await
    .map_err(|e| JobError::retry(format!("the validator stopped: {e}")))?
    .map_err(|e: crate::queue::cancel::Cancelled| JobError::retry(e.to_string()))?;
    let (rows, report) = match validated {
        Ok(done) => done,
        Err(unreadable) => {
            let report = storable(serde_json::json!({"error": unreadable.0}));
            let mut tx = deps.db.begin().await?;
            sqlx::query!(
                "UPDATE sales_imports SET status = 'failed', report = $3, body = NULL WHERE id = $1 AND tenant_id = $2",
                job.import_id,
                job.tenant_id,
                report
            )
            .execute(&mut *tx)
            .await?;
            upload::drop_file(&mut tx, job.import_id).await?;
            let failed = finished(&job, "failed", &ImportReport::default(), &report["error"]);
            events::record(&mut tx, &[failed]).await?;
            tx.commit().await?;
            return Err(JobError::permanent(unreadable.0));
        }
    };
    let mut tx = deps.db.begin().await?;
    history::load_imported(&mut tx, job.tenant_id, &rows)
        .await
        .context("while loading the imported rows")
        .map_err(|e| JobError::retry(format!("{e:#}")))?;
    let report_json = storable(serde_json::to_value(&report).expect("reports serialize"));
    sqlx::query!(
        "UPDATE sales_imports SET status = 'loaded', report = $3, loaded_at = now(), body = NULL WHERE id = $1 AND tenant_id = $2",
        job.import_id,
        job.tenant_id,
        report_json
    )
    .execute(&mut *tx)
    .await?;
    upload::drop_file(&mut tx, job.import_id).await?;
    let loaded = finished(&job, "loaded", &report, &serde_json::Value::Null);
    events::record(&mut tx, &[loaded]).await?;
    tx.commit().await?;
    tracing::info!(
        rows = report.rows,
        loaded = report.rows_loaded,
        rejected = report.rows_rejected,
        "sales import loaded"
    );
    Ok(report_json)
}
