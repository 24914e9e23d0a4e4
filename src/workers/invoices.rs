//! Invoices: the job that numbers an order's invoice and renders its PDF.
//!
//! Numbering and storing happen in one transaction with the invoice row locked: the number
//! comes from the tenant's yearly counter (gapless and strictly increasing — a failed render
//! rolls the number back), and a job delivered twice finds the invoice ready and does nothing, so
//! an invoice is numbered once. PDFs are stored in Postgres (`bytea`): they commit atomically with
//! the invoice's status, are backed up and scoped by tenant like every other row, and at
//! ~30–60 KB each need no separate object store.

use super::invoice_pdf::{self, Fonts, InvoiceDocument, InvoiceLine};
use crate::domain::format_amount;
use crate::queue::{JobError, JobMeta};
use anyhow::Context;
use apalis::prelude::Data;
use chrono::{Datelike, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

pub const QUEUE: &str = "invoices";
pub const KIND: &str = "render_invoice";
pub const MAX_ATTEMPTS: u32 = 6;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderInvoice {
    pub tenant_id: Uuid,
    pub invoice_id: Uuid,
}

/// What the invoice worker needs.
#[derive(Clone)]
pub struct InvoiceDeps {
    pub db: PgPool,
    pub fonts: Arc<Fonts>,
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

async fn mark_failed(db: &PgPool, job: &RenderInvoice, reason: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE invoices SET status = 'failed', failure_reason = $3 WHERE id = $1 AND tenant_id = $2 AND status = 'pending'",
        job.invoice_id,
        job.tenant_id,
        reason
    )
    .execute(db)
    .await
    .map(|_| ())
}

async fn render_and_store(
    deps: &InvoiceDeps,
    job: &RenderInvoice,
) -> Result<serde_json::Value, JobError> {
    let mut tx = deps.db.begin().await?;
    let invoice = sqlx::query!(
        r#"SELECT i.number, i.status, i.order_id, i.currency, i.subtotal, i.tax, i.total,
                  o.order_number, o.customer_name, o.customer_email, o.customer_address,
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
    let today = Utc::now().date_naive();
    let number = match invoice.number {
        Some(n) => n,
        None => {
            let n =
                crate::db::next_counter(&mut tx, job.tenant_id, "invoice", today.year()).await?;
            format!("INV-{}-{n:06}", today.year())
        }
    };
    let lines = sqlx::query!(
        r#"SELECT sku, description, quantity, unit_price, line_total
           FROM order_lines WHERE order_id = $1 AND tenant_id = $2 ORDER BY line_no"#,
        invoice.order_id,
        job.tenant_id
    )
    .fetch_all(&mut *tx)
    .await?;
    let currency = invoice.currency.clone();
    let money = |d| format_amount(d, &currency);
    let document = InvoiceDocument {
        seller: invoice.tenant_name,
        number: number.clone(),
        issued_on: today,
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
    let pdf = tokio::task::spawn_blocking(move || invoice_pdf::render(&document, &fonts))
        .await
        .context("the PDF renderer stopped")
        .and_then(|r| r)
        .map_err(|e| JobError::retry(format!("rendering the PDF: {e:#}")))?;
    let size = pdf.len();
    sqlx::query!(
        r#"UPDATE invoices SET number = $3, status = 'ready', issued_on = $4, pdf = $5,
                               ready_at = now(), failure_reason = NULL
           WHERE id = $1 AND tenant_id = $2"#,
        job.invoice_id,
        job.tenant_id,
        number,
        today,
        pdf
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(serde_json::json!({"number": number, "rendered": true, "pdf_bytes": size}))
}
