//! Work in flight per tenant inside one API process, for what holds a connection and database
//! work while it lasts (a sales upload, written part by part as it arrives; a read of its job
//! history). A tenant at its
//! limit is refused with 429; other tenants are not counted against it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Sales uploads of one tenant read at once by one API process.
pub const UPLOADS_PER_TENANT: usize = 2;

/// Reads of one tenant's job history (`GET /v1/jobs`) at once in one API process.
pub const HISTORY_READS_PER_TENANT: usize = 2;

pub struct PerTenant {
    max: usize,
    counts: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// One slot, given back when dropped (also when the request is cancelled mid-read).
pub struct Slot {
    tenant: Uuid,
    counts: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl PerTenant {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::default(),
        }
    }

    /// A slot for `tenant`, or `None` when it already has `max` in flight.
    pub fn start(&self, tenant: Uuid) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(tenant).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            tenant,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_at_its_limit_does_not_block_another() {
        let inflight = PerTenant::new(2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = inflight.start(a).unwrap();
        let _second = inflight.start(a).unwrap();
        assert!(inflight.start(a).is_none());
        assert!(inflight.start(b).is_some());
        drop(first);
        assert!(inflight.start(a).is_some());
    }
}
