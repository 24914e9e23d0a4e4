//! Each tenant's share of one API process: at most `max` of a tenant's requests are handled at
//! once; the rest wait their turn (first come, first served) for at most [`MAX_WAIT`], then get
//! 429. Requests hold database connections, handler time and, for orders, their tenant's own
//! counter row lock; without a share, one tenant sending many requests at once (a flood, or a
//! burst that queues on its own lock) holds most of the pool while other tenants' requests queue
//! behind its own. The share is per process, like the pool it protects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// The longest a request waits for its tenant's turn before it is refused (429).
pub const MAX_WAIT: Duration = Duration::from_secs(10);

type Tenants = Arc<Mutex<HashMap<Uuid, Arc<Semaphore>>>>;

pub struct TenantShares {
    max: usize,
    wait: Duration,
    tenants: Tenants,
}

/// One of a tenant's turns, given back when dropped (also when the request is cancelled).
#[derive(Debug)]
pub struct Turn {
    tenant: Uuid,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    tenants: Tenants,
}

impl TenantShares {
    /// `max` requests per tenant at once, waiting at most `wait` for a turn; 0 is no limit.
    pub fn new(max: usize, wait: Duration) -> Self {
        Self {
            max,
            wait,
            tenants: Arc::default(),
        }
    }

    /// Waits for a turn of `tenant`: `Ok(None)` when there is no limit, `Err(())` when none came
    /// in time.
    pub async fn turn(&self, tenant: Uuid) -> Result<Option<Turn>, ()> {
        if self.max == 0 {
            return Ok(None);
        }
        let semaphore = lock(&self.tenants)
            .entry(tenant)
            .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
            .clone();
        let mut turn = Turn {
            tenant,
            semaphore,
            permit: None,
            tenants: self.tenants.clone(),
        };
        let acquire = turn.semaphore.clone().acquire_owned();
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => {
                turn.permit = Some(permit);
                Ok(Some(turn))
            }
            // Never closed; a timeout drops `turn`, which forgets an idle tenant.
            _ => Err(()),
        }
    }

    /// Tenants with a request handled or waiting (for tests).
    pub fn tenants(&self) -> usize {
        lock(&self.tenants).len()
    }
}

impl Drop for Turn {
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
        let shares = TenantShares::new(2, MAX_WAIT);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = shares.turn(a).await.unwrap().unwrap();
        let _second = shares.turn(a).await.unwrap().unwrap();
        let third = shares.turn(a);
        tokio::pin!(third);
        // A's third waits…
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut third)
                .await
                .is_err()
        );
        // …while B is served at once…
        let b_turn = shares.turn(b).await.unwrap().unwrap();
        // …and A's third gets the turn A gives back.
        drop(first);
        let third = third.await.unwrap().unwrap();
        drop((third, _second, b_turn));
        assert_eq!(shares.tenants(), 0);
    }

    #[tokio::test]
    async fn a_turn_that_does_not_come_in_time_is_refused() {
        let shares = TenantShares::new(1, Duration::from_millis(20));
        let a = Uuid::now_v7();
        let _held = shares.turn(a).await.unwrap().unwrap();
        assert!(shares.turn(a).await.is_err());
        assert_eq!(shares.tenants(), 1);
    }

    #[tokio::test]
    async fn no_limit_takes_no_turn() {
        let shares = TenantShares::new(0, MAX_WAIT);
        assert!(shares.turn(Uuid::now_v7()).await.unwrap().is_none());
        assert_eq!(shares.tenants(), 0);
    }
}
