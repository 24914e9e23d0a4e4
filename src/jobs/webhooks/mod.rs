//! The webhook kind: events that happened to a tenant's work, delivered to the tenant's
//! endpoints as signed HTTP POSTs ([`sign`], Standard Webhooks), retried over about a day, never
//! lost and never sent where they may not go ([`target`]).
//!
//! Producers: whatever changes a tenant's state records its event with [`events::record`] inside
//! its own transaction (the stock ledger, invoices, emails); that writes the event, one delivery
//! per subscribed endpoint and each delivery's job through the outbox. The API manages the
//! endpoints and shows the deliveries (`api::webhooks`).
//!
//! Per-tenant bounds: at most [`MAX_ENDPOINTS`] endpoints; each delivery times out
//! (`BACKROOM_WEBHOOK_TIMEOUT_SECS`, 10 s) and reads at most [`MAX_RESPONSE_BYTES`] of the answer;
//! the queue's fair scheduling and per-tenant concurrency limit (`webhooks=8` by default) keep a
//! slow or dead endpoint of one tenant from holding the workers every tenant shares. Events older than
//! 30 days with no delivery pending are pruned ([`events::prune`], by the scheduler), so what a
//! tenant's traffic leaves in Postgres is bounded by its rate over a month.

pub mod events;
pub mod group_events;
pub mod job_events;
pub mod sign;
pub mod target;
pub mod worker;

use crate::jobs::{JobKind, Queue};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// Most endpoints a tenant may have.
pub const MAX_ENDPOINTS: i64 = 20;
/// Most bytes of a receiver's answer read (and the first [`EXCERPT_CHARS`] kept).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
pub const EXCERPT_CHARS: usize = 2048;

/// Deliver one event to one endpoint (a `webhook_deliveries` row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverWebhook {
    pub tenant_id: Uuid,
    pub delivery_id: Uuid,
}

impl JobKind for DeliverWebhook {
    const QUEUE: Queue = Queue::Webhooks;
    /// The handler gives up by itself after the retry schedule (`BACKROOM_WEBHOOK_RETRY_SECS`);
    /// this only bounds a delivery whose handler keeps failing before it can count (Postgres away).
    const MAX_ATTEMPTS: u32 = 20;
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn kind(&self) -> &'static str {
        "deliver_webhook"
    }

    fn tenant(&self) -> Option<Uuid> {
        Some(self.tenant_id)
    }
}
