//! The `invoices` queue's handler: numbers an order's invoice and renders its PDF.
//!
//! Two short transactions around the render, so that one tenant's invoices are not serialised
//! behind each other's rendering:
//! 1. **number** — with the invoice row locked, an invoice without a number takes the next one
//!    from the tenant's yearly counter and its issue date, committed together. The counter row
//!    is locked only for that moment; numbers stay gapless and strictly increasing, because a
//!    number is only ever committed on its invoice. A job delivered twice finds the number (or
//!    the finished invoice) and reuses it, so an invoice is numbered once.
//! 2. **render** — outside any transaction, from the numbered invoice.
//! 3. **store** — the PDF and `ready`, unless another delivery got there first.
//!
//! An invoice whose render fails for good is `failed` but keeps its number and date, so a retry
//! from the dashboard renders the same document. PDFs are stored in Postgres (`bytea`): they
//! commit atomically with the invoice's status, are backed up and scoped by tenant like every
//! other row, and at ~30–60 KB each need no separate object store.

use super::RenderInvoice;
use super::pdf::{self, Fonts, InvoiceDocument, InvoiceLine};
use crate::clock::Clock;
use crate::domain::format_amount;
use crate::jobs::webhooks::events::{self, Event, EventType};
use crate::jobs::{WorkerContext, worker_options};
use crate::queue::{JobError, JobMeta, WorkerOptions};
use anyhow::Context;
use apalis::prelude::Data;
use chrono::Datelike;
use sqlx::PgPool;
use std::sync::Arc;
use tracing::Instrument as _;

/// Rendering is CPU work (on the blocking pool); the rest waits on Postgres and Redis. Four jobs
/// per core keep the cores busier through those waits (measured on 2 cores, end to end: 4 jobs
/// in all 258 invoices/s, 8 jobs 284–339/s).
pub fn options(concurrency: Option<usize>) -> WorkerOptions {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    worker_options::<RenderInvoice>(concurrency.unwrap_or(4 * cores))
}

pub fn deps(ctx: &WorkerContext) -> anyhow::Result<InvoiceDeps> {
    Ok(InvoiceDeps {
        db: ctx.db.clone(),
        fonts: Arc::new(Fonts::new(ctx.settings.invoice_font_dir.clone())),
        clock: ctx.settings.queue.clock.clone(),
    })
}

/// What the invoice worker needs.
#[derive(Clone)]
pub struct InvoiceDeps {
    pub db: PgPool,
    pub fonts: Arc<Fonts>,
    pub clock: Clock,
}

/// The `invoices` queue's handler.
pub async fn handle(
    job: RenderInvoice,
    meta: Data<JobMeta>,
    deps: Data<InvoiceDeps>,
) -> Result<serde_json::Value, JobError> {
    if meta.tenant != Some(job.tenant_id) {
        return Err(JobError::permanent(
            "the payload's tenant does not match the job's tenant",
        ));
    }
    let result = render_and_store(&deps, &job).await;
    match result {
        Ok(done) => Ok(done),
        Err(error) => {
            // A permanent failure, or the last attempt of a transient one, leaves the invoice
            // `failed` with the reason, for the tenant and the dashboard to see.
            let last = matches!(error, JobError::Permanent { .. }) || meta.is_last_attempt();
            if last {
                let reason = error.to_string();
                if let Err(e) = mark_failed(&deps.db, &job, &reason).await {
                    tracing::warn!(error = %e, "could not mark the invoice failed");
                }
            }
            Err(error)
        }
    }
}

/// Marks the invoice failed with its `invoice.failed` event, in one transaction (once: an
/// invoice already failed or ready is left as it is).
async fn mark_failed(db: &PgPool, job: &RenderInvoice, reason: &str) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let order_id = sqlx::query_scalar!(
        "UPDATE invoices SET status = 'failed', failure_reason = $3 WHERE id = $1 AND tenant_id = $2 AND status = 'pending' RETURNING order_id",
        job.invoice_id,
        job.tenant_id,
        reason
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(order_id) = order_id {
        let failed = Event::new(
            job.tenant_id,
            EventType::InvoiceFailed,
            serde_json::json!({
                "invoice_id": job.invoice_id, "order_id": order_id, "reason": reason,
            }),
        );
        events::record(&mut tx, &[failed]).await?;
    }
    tx.commit().await
}

async fn render_and_store(
    deps: &InvoiceDeps,
    job: &RenderInvoice,
) -> Result<serde_json::Value, JobError> {
    let mut tx = deps.db.begin().await?;
    let invoice = sqlx::query!(
        r#"SELECT i.number, i.issued_on, i.status, i.order_id, i.currency, i.subtotal, i.tax,
                  i.total, o.order_number, o.customer_name, o.customer_email, o.customer_address,
                  o.tax_rate, o.created_at, t.name AS tenant_name
           FROM invoices i
           JOIN orders o ON o.id = i.order_id
           JOIN tenants t ON t.id = i.tenant_id
           WHERE i.id = $1 AND i.tenant_id = $2
           FOR UPDATE OF i"#,
        job.invoice_id,
        job.tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| JobError::permanent("no such invoice (deleted?)"))?;
    if invoice.status == "ready" {
        return Ok(serde_json::json!({"number": invoice.number, "rendered": false}));
    }
    let (number, issued_on) = match (invoice.number, invoice.issued_on) {
        (Some(number), Some(issued_on)) => (number, issued_on),
        _ => {
            let today = deps.clock.today();
            let n =
                crate::db::next_counter(&mut tx, job.tenant_id, "invoice", today.year()).await?;
            let number = format!("INV-{}-{n:06}", today.year());
            sqlx::query!(
                "UPDATE invoices SET number = $3, issued_on = $4 WHERE id = $1 AND tenant_id = $2",
                job.invoice_id,
                job.tenant_id,
                number,
                today
            )
            .execute(&mut *tx)
            .await?;
            (number, today)
        }
    };
    tx.commit().await?;

    let lines = sqlx::query!(
        r#"SELECT sku, description, quantity, unit_price, line_total
           FROM order_lines WHERE order_id = $1 AND tenant_id = $2 ORDER BY line_no"#,
        invoice.order_id,
        job.tenant_id
    )
    .fetch_all(&deps.db)
    .await?;
    let currency = invoice.currency.clone();
    let money = |d| format_amount(d, &currency);
    let document = InvoiceDocument {
        seller: invoice.tenant_name,
        number: number.clone(),
        issued_on,
        order_number: invoice.order_number,
        customer_name: invoice.customer_name,
        customer_email: invoice.customer_email,
        customer_address: invoice.customer_address,
        currency: currency.clone(),
        tax_rate_percent: (invoice.tax_rate * rust_decimal::Decimal::from(100))
            .normalize()
            .to_string(),
        lines: lines
            .into_iter()
            .map(|l| InvoiceLine {
                sku: l.sku,
                description: l.description,
                quantity: l.quantity.to_string(),
                unit_price: money(l.unit_price),
                line_total: money(l.line_total),
            })
            .collect(),
        subtotal: money(invoice.subtotal),
        tax: money(invoice.tax),
        total: money(invoice.total),
    };
    let fonts = deps.fonts.clone();
    let pdf = crate::queue::cancel::spawn_blocking(move |cancel| {
        pdf::render(&document, &fonts, &|| cancel.is_cancelled())
    })
    .instrument(tracing::info_span!("pdf render"))
    .await
    .context("the PDF renderer stopped")
    .and_then(|r| r)
    .map_err(|e| JobError::retry(format!("rendering the PDF: {e:#}")))?;
    let size = pdf.len();
    // Stored with its `invoice.ready` event (for the tenant's webhooks), or neither.
    async {
        let mut tx = deps.db.begin().await?;
        let stored = sqlx::query!(
            r#"UPDATE invoices SET status = 'ready', pdf = $3, ready_at = now(), failure_reason = NULL
               WHERE id = $1 AND tenant_id = $2 AND status <> 'ready'"#,
            job.invoice_id,
            job.tenant_id,
            pdf
        )
        .execute(&mut *tx)
        .await?;
        if stored.rows_affected() == 0 {
            return Ok::<_, JobError>(serde_json::json!({"number": number, "rendered": false}));
        }
        let ready = Event::new(
            job.tenant_id,
            EventType::InvoiceReady,
            serde_json::json!({
                "invoice_id": job.invoice_id, "order_id": invoice.order_id, "number": number,
                "total": invoice.total.to_string(), "currency": currency,
                "pdf_url": format!("/v1/invoices/{}/pdf", job.invoice_id),
            }),
        );
        events::record(&mut tx, &[ready]).await?;
        tx.commit().await?;
        Ok::<_, JobError>(serde_json::json!({"number": number, "rendered": true, "pdf_bytes": size}))
    }
    .instrument(tracing::info_span!("db transaction", what = "store invoice"))
    .await
}
