//! The stock adjustment kind: one signed change to one SKU's level, applied exactly once to the
//! tenant's ledger in Postgres.
//!
//! Producers: `POST /v1/stock/adjustments` (one or a batch) and orders (through the outbox).
//! The payload is checked again when it is run ([`worker`]), against the same domain rules
//! (`crate::domain::Reason::check_sign`), so an adjustment from any producer obeys them.
//! [`ledger`] applies many adjustments per transaction.

pub mod ledger;
pub mod worker;

use crate::domain::Reason;
use crate::jobs::{JobKind, Queue};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// The job payload, as the API enqueues it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockAdjustmentJob {
    pub tenant_id: Uuid,
    pub sku: String,
    pub delta: i64,
    pub reason: Reason,
    pub idempotency_key: String,
    pub reference: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

impl StockAdjustmentJob {
    /// The one kind of the stock queue (its name scopes the idempotency keys).
    pub const KIND: &'static str = "stock_adjustment";
}

impl JobKind for StockAdjustmentJob {
    const QUEUE: Queue = Queue::Stock;
    const MAX_ATTEMPTS: u32 = 10;
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn tenant(&self) -> Option<Uuid> {
        Some(self.tenant_id)
    }
}
