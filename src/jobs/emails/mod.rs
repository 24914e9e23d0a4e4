//! The email kind: every email the platform sends (invoices, low-stock alerts, reorder digests,
//! and the ones tenants ask for), logged in `emails` and sent once over SMTP.
//!
//! Producers: `POST /v1/emails`, invoices and the stock ledger (through the outbox), forecast runs,
//! webhook deliveries (an endpoint disabled).

pub mod mailer;
pub mod worker;

use crate::jobs::{JobKind, Queue};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// Every email job, tagged by type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EmailJob {
    /// "Your invoice": the PDF attached, to the order's customer once the invoice is ready.
    Invoice {
        tenant_id: Uuid,
        invoice_id: Uuid,
        /// Carried for searching the job history by it (`args.order_number:…`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_number: Option<String>,
    },
    /// A product crossed below its reorder point; to the tenant's `alert_email`.
    LowStock {
        tenant_id: Uuid,
        sku: String,
        on_hand: i64,
        reorder_point: i64,
        /// Names the crossing (the adjustment that caused it): one email per crossing.
        crossing: String,
    },
    /// An email a tenant asked for through `POST /v1/emails` (its row holds the content).
    Requested { tenant_id: Uuid, email_id: Uuid },
    /// After a nightly forecast run: the SKUs due to reorder, to the tenant's `alert_email`.
    ReorderDigest { tenant_id: Uuid, run_id: Uuid },
    /// The platform disabled one of the tenant's webhook endpoints (410 Gone, or failing for
    /// days); to the tenant's `alert_email`. `disabled_at` (Unix microseconds) names the
    /// disabling: one email per disabling.
    WebhookDisabled {
        tenant_id: Uuid,
        endpoint_id: Uuid,
        disabled_at: i64,
    },
}

impl JobKind for EmailJob {
    const QUEUE: Queue = Queue::Emails;
    const MAX_ATTEMPTS: u32 = 8;
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn kind(&self) -> &'static str {
        match self {
            EmailJob::Invoice { .. } => "invoice_email",
            EmailJob::LowStock { .. } => "low_stock_alert",
            EmailJob::Requested { .. } => "requested_email",
            EmailJob::ReorderDigest { .. } => "reorder_digest",
            EmailJob::WebhookDisabled { .. } => "webhook_disabled",
        }
    }

    fn tenant(&self) -> Option<Uuid> {
        Some(self.tenant_id())
    }
}

impl EmailJob {
    fn tenant_id(&self) -> Uuid {
        match self {
            EmailJob::Invoice { tenant_id, .. }
            | EmailJob::LowStock { tenant_id, .. }
            | EmailJob::Requested { tenant_id, .. }
            | EmailJob::ReorderDigest { tenant_id, .. }
            | EmailJob::WebhookDisabled { tenant_id, .. } => *tenant_id,
        }
    }
}
