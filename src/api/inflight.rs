//! Work in flight per tenant inside one API process: at most `max` of a tenant's requests (or of
//! one kind of them) at once; the rest wait their turn, first come first served, for at most a
//! set time (none for uploads and history reads: refused at once), then get 429. Requests hold
//! database connections and handler time, and orders their tenant's own counter-row lock;
//! without a bound, one tenant sending many at once holds most of the pool while other
//! tenants' requests queue behind its own. The bound is per process, like the pool it protects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// Sales uploads of one tenant read at once by one API process (refused at once beyond).
pub const UPLOADS_PER_TENANT: usize = 2;

/// Reads of one tenant's job history (`GET /v1/jobs`) at once in one API process.
pub const HISTORY_READS_PER_TENANT: usize = 2;

/// The longest a request waits for its tenant's turn (`BACKROOM_TENANT_REQUESTS_IN_FLIGHT`)
/// before it is refused (429).
pub const REQUEST_TURN_WAIT: Duration = Duration::from_secs(10);

type Tenants = Arc<Mutex<HashMap<Uuid, Arc<Semaphore>>>>;

pub struct PerTenant {
    max: usize,
    wait: Duration,
    tenants: Tenants,
}

/// No slot came in time: the request is refused with 429 and `Retry-After: 1`.
#[derive(Debug)]
pub struct Busy;

impl From<Busy> for super::error::Error {
    fn from(_: Busy) -> Self {
        super::error::Error::RateLimited {
            retry_after_secs: 1,
        }
    }
}

/// One of a tenant's slots, given back when dropped (also when the request is cancelled).
#[derive(Debug)]
pub struct Slot {
    tenant: Uuid,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    tenants: Tenants,
}

impl PerTenant {
    /// `max` requests per tenant at once, waiting at most `wait` for a turn; 0 is no limit.
    pub fn new(max: usize, wait: Duration) -> Self {
        Self {
            max,
            wait,
            tenants: Arc::default(),
        }
    }

    /// Waits for a slot of `tenant`: `Ok(None)` when there is no limit, [`Busy`] when none came
    /// in time (with no wait, when none is free now).
    pub async fn start(&self, tenant: Uuid) -> Result<Option<Slot>, Busy> {
        if self.max == 0 {
            return Ok(None);
        }
        let semaphore = lock(&self.tenants)
            .entry(tenant)
            .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
            .clone();
        let mut slot = Slot {
            tenant,
            semaphore,
            permit: None,
            tenants: self.tenants.clone(),
        };
        let acquire = slot.semaphore.clone().acquire_owned();
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => {
                slot.permit = Some(permit);
                Ok(Some(slot))
            }
            // Never closed; a timeout drops `slot`, which forgets an idle tenant.
            _ => Err(Busy),
        }
    }

    /// Tenants with a request handled or waiting (for tests).
    pub fn tenants(&self) -> usize {
        lock(&self.tenants).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut tenants = lock(&self.tenants);
        // Only the map and this turn hold the semaphore: nobody else runs or waits.
        if Arc::strong_count(&self.semaphore) == 2 {
            tenants.remove(&self.tenant);
        }
    }
}

fn lock(tenants: &Tenants) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Semaphore>>> {
    tenants.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_at_its_share_waits_while_another_is_served_and_idle_tenants_are_forgotten() {
        let shares = PerTenant::new(2, REQUEST_TURN_WAIT);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = shares.start(a).await.unwrap().unwrap();
        let _second = shares.start(a).await.unwrap().unwrap();
        let third = shares.start(a);
        tokio::pin!(third);
        // A's third waits…
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut third)
                .await
                .is_err()
        );
        // …while B is served at once…
        let b_turn = shares.start(b).await.unwrap().unwrap();
        // …and A's third gets the turn A gives back.
        drop(first);
        let third = third.await.unwrap().unwrap();
        drop((third, _second, b_turn));
        assert_eq!(shares.tenants(), 0);
    }

    #[tokio::test]
    async fn a_turn_that_does_not_come_in_time_is_refused() {
        let shares = PerTenant::new(1, Duration::from_millis(20));
        let a = Uuid::now_v7();
        let _held = shares.start(a).await.unwrap().unwrap();
        assert!(shares.start(a).await.is_err());
        assert_eq!(shares.tenants(), 1);
    }

    #[tokio::test]
    async fn with_no_wait_a_tenant_at_its_limit_is_refused_at_once_and_another_is_not() {
        let inflight = PerTenant::new(2, Duration::ZERO);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = inflight.start(a).await.unwrap().unwrap();
        let _second = inflight.start(a).await.unwrap().unwrap();
        assert!(inflight.start(a).await.is_err());
        assert!(inflight.start(b).await.unwrap().is_some());
        drop(first);
        assert!(inflight.start(a).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn no_limit_takes_no_slot() {
        let shares = PerTenant::new(0, REQUEST_TURN_WAIT);
        assert!(shares.start(Uuid::now_v7()).await.unwrap().is_none());
        assert_eq!(shares.tenants(), 0);
    }
}
