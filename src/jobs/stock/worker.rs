//! The `stock` queue's handler: parses the payload again (it went through Redis) and hands it
//! to the per-process [`StockLedger`], which batches it with whatever else is waiting.

use super::StockAdjustmentJob;
use super::ledger::{Adjustment, Applied, StockLedger};
use crate::domain::{Delta, IdempotencyKey, Sku};
use crate::jobs::{WorkerContext, worker_options};
use crate::queue::{JobError, JobMeta, WorkerOptions};
use apalis::prelude::Data;

/// Stock jobs mostly wait for their batch: many run at once to fill batches.
pub fn options(concurrency: Option<usize>) -> WorkerOptions {
    let mut options = worker_options::<StockAdjustmentJob>(concurrency.unwrap_or(512));
    options.batch = 512;
    options
}

/// The process's one ledger writer.
pub fn deps(ctx: &WorkerContext) -> anyhow::Result<StockLedger> {
    Ok(StockLedger::start(ctx.db.clone()))
}

/// The payload checked against the rules every adjustment obeys, whoever produced it.
fn parse(job: StockAdjustmentJob) -> Result<Adjustment, String> {
    let delta = Delta::parse(job.delta).map_err(|e| format!("delta {e}"))?;
    job.reason
        .check_sign(delta)
        .map_err(|e| format!("delta {e}"))?;
    Ok(Adjustment {
        tenant_id: job.tenant_id,
        sku: Sku::parse(&job.sku).map_err(|e| format!("sku {e}"))?,
        delta,
        reason: job.reason,
        idempotency_key: IdempotencyKey::parse(&job.idempotency_key)
            .map_err(|e| format!("idempotency_key {e}"))?,
        reference: job.reference,
        occurred_at: job.occurred_at,
    })
}

/// The `stock` queue's handler.
pub async fn handle(
    job: StockAdjustmentJob,
    meta: Data<JobMeta>,
    ledger: Data<StockLedger>,
) -> Result<serde_json::Value, JobError> {
    let adjustment =
        parse(job).map_err(|e| JobError::permanent(format!("invalid adjustment: {e}")))?;
    if meta.tenant != Some(adjustment.tenant_id) {
        return Err(JobError::permanent(
            "the payload's tenant does not match the job's tenant",
        ));
    }
    match ledger
        .apply(adjustment, &meta.id)
        .await
        .map_err(JobError::retry)?
    {
        Applied::Moved {
            movement_id,
            on_hand_after,
        } => Ok(
            serde_json::json!({"movement_id": movement_id, "on_hand_after": on_hand_after, "applied": true}),
        ),
        Applied::AlreadyApplied {
            movement_id,
            on_hand_after,
        } => Ok(
            serde_json::json!({"movement_id": movement_id, "on_hand_after": on_hand_after, "applied": false}),
        ),
        Applied::InsufficientStock { on_hand } => Err(JobError::permanent(format!(
            "insufficient_stock: {on_hand} on hand"
        ))),
        Applied::OutOfRange { on_hand } => Err(JobError::permanent(format!(
            "stock_out_of_range: {on_hand} on hand; this adjustment would take the level past what the ledger can hold"
        ))),
        Applied::UnknownSku => Err(JobError::permanent(
            "unknown_sku: the product no longer exists",
        )),
    }
}
