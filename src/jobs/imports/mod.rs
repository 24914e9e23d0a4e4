//! The sales import kind: validates an uploaded sales CSV (`date,sku,quantity`) with polars
//! ([`validate`]) and loads its good rows into the daily sales history with `COPY` ([`worker`]).
//!
//! The upload is streamed into Postgres in parts ([`upload`]) and waits in `sales_imports`
//! (committed with its outbox job, so an accepted file is never lost while Redis is down).
//! Producer: `POST /v1/imports/sales`.

pub mod upload;
pub mod validate;
pub mod worker;

use crate::jobs::{JobKind, Queue};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SalesImport {
    pub tenant_id: Uuid,
    pub import_id: Uuid,
}

impl JobKind for SalesImport {
    const QUEUE: Queue = Queue::Imports;
    const MAX_ATTEMPTS: u32 = 5;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10 * 60);

    fn kind(&self) -> &'static str {
        "sales_import"
    }

    fn tenant(&self) -> Option<Uuid> {
        Some(self.tenant_id)
    }
}
