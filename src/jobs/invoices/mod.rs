//! The invoice kind: number an order's invoice and render its PDF ([`pdf`]), stored with the
//! invoice in Postgres. Producer: orders (through the outbox) and the dashboard's retry.

pub mod pdf;
pub mod worker;

use crate::jobs::{JobKind, Queue};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderInvoice {
    pub tenant_id: Uuid,
    pub invoice_id: Uuid,
    /// The order's number: not needed to render, carried so that the job history can be
    /// searched by it (`args.order_number:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_number: Option<String>,
}

impl JobKind for RenderInvoice {
    const QUEUE: Queue = Queue::Invoices;
    const MAX_ATTEMPTS: u32 = 6;
    const TIMEOUT: Duration = Duration::from_secs(120);

    fn kind(&self) -> &'static str {
        "render_invoice"
    }

    fn tenant(&self) -> Option<Uuid> {
        Some(self.tenant_id)
    }
}
