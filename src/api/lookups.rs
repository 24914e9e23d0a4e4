//! In-process caches for the two lookups nearly every tenant request makes: API key → tenant,
//! and "does this tenant have this SKU". Without them a single stock adjustment costs two
//! Postgres round trips before its Redis push, and intake tops out near 6,000 requests/s on
//! 2 cores.
//!
//! Every process stays correct because Postgres tells it when an answer may have changed.
//! Statement triggers on `api_keys`, `tenants` and `products` send `NOTIFY backroom_lookups`
//! whenever a key is revoked, a tenant changed or a product deleted or re-keyed (migration
//! `…06_lookup_notify`). Each process listens and empties its caches on every notification.
//! The handler that made a change also empties them at once, so the change is visible to its
//! own next request without waiting for the round trip.
//!
//! While the listener is not connected (before it starts, or after its connection drops), the
//! caches are bypassed, so a missed notification cannot leave a revoked key working. A
//! generation number guards the fill race: an answer read before a clear is never stored after
//! it. Entries also expire after [`TTL`] as a last line of defence.

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The Postgres channel the triggers notify.
pub const CHANNEL: &str = "backroom_lookups";
/// The longest an entry is trusted even without a notification.
pub const TTL: Duration = Duration::from_secs(60);
/// Past this many entries a cache is emptied rather than grown.
const MAX_ENTRIES: usize = 200_000;

/// What an API key resolves to.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub tenant_id: Uuid,
    pub slug: String,
    pub active: bool,
}

#[derive(Clone, Default)]
pub struct Lookups {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    live: AtomicBool,
    generation: AtomicU64,
    keys: RwLock<HashMap<Vec<u8>, (KeyOwner, Instant)>>,
    /// Per tenant, the SKUs known to exist and when the set was started.
    skus: RwLock<HashMap<Uuid, (HashSet<String>, Instant)>>,
}

impl Lookups {
    /// The generation to pass back to the `remember_*` calls after reading Postgres.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    fn live(&self) -> bool {
        self.inner.live.load(Ordering::Acquire)
    }

    pub fn key(&self, hash: &[u8]) -> Option<KeyOwner> {
        if !self.live() {
            return None;
        }
        let keys = self.inner.keys.read().expect("lookup cache lock");
        keys.get(hash)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(owner, _)| owner.clone())
    }

    pub fn remember_key(&self, generation: u64, hash: Vec<u8>, owner: KeyOwner) {
        if !self.live() {
            return;
        }
        let mut keys = self.inner.keys.write().expect("lookup cache lock");
        if self.generation() != generation {
            return;
        }
        if keys.len() >= MAX_ENTRIES {
            keys.clear();
        }
        keys.insert(hash, (owner, Instant::now()));
    }

    /// Whether `sku` is known to exist for `tenant` (false means "ask Postgres").
    pub fn has_sku(&self, tenant: Uuid, sku: &str) -> bool {
        if !self.live() {
            return false;
        }
        let skus = self.inner.skus.read().expect("lookup cache lock");
        skus.get(&tenant)
            .is_some_and(|(set, at)| at.elapsed() < TTL && set.contains(sku))
    }

    pub fn remember_skus<'a>(
        &self,
        generation: u64,
        tenant: Uuid,
        found: impl IntoIterator<Item = &'a String>,
    ) {
        if !self.live() {
            return;
        }
        let mut skus = self.inner.skus.write().expect("lookup cache lock");
        if self.generation() != generation {
            return;
        }
        if skus.values().map(|(set, _)| set.len()).sum::<usize>() >= MAX_ENTRIES {
            skus.clear();
        }
        let (set, started) = skus
            .entry(tenant)
            .or_insert_with(|| (HashSet::new(), Instant::now()));
        if started.elapsed() >= TTL {
            set.clear();
            *started = Instant::now();
        }
        set.extend(found.into_iter().cloned());
    }

    /// Forgets everything; answers read before this call are not stored after it.
    pub fn clear(&self) {
        let mut keys = self.inner.keys.write().expect("lookup cache lock");
        let mut skus = self.inner.skus.write().expect("lookup cache lock");
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        keys.clear();
        skus.clear();
    }

    /// Listens for the triggers' notifications for as long as the process runs, reconnecting
    /// after a failure; the caches are only used while the listener is connected.
    pub async fn listen(self, db: PgPool) {
        loop {
            match subscribe(&db).await {
                Ok(mut listener) => {
                    self.clear();
                    self.inner.live.store(true, Ordering::Release);
                    // `Ok(None)` means the connection dropped: notifications may have been lost.
                    while let Ok(Some(_)) = listener.try_recv().await {
                        self.clear();
                    }
                    tracing::warn!("lookup cache listener lost its connection; bypassing caches");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "lookup cache listener cannot connect yet");
                }
            }
            self.inner.live.store(false, Ordering::Release);
            self.clear();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn subscribe(db: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(db).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Lookups {
        let lookups = Lookups::default();
        lookups.inner.live.store(true, Ordering::Release);
        lookups
    }

    fn owner() -> KeyOwner {
        KeyOwner {
            tenant_id: Uuid::nil(),
            slug: "acme".into(),
            active: true,
        }
    }

    #[test]
    fn nothing_is_cached_while_the_listener_is_down() {
        let lookups = Lookups::default();
        lookups.remember_key(lookups.generation(), vec![1], owner());
        lookups.remember_skus(lookups.generation(), Uuid::nil(), &["A".to_string()]);
        assert!(lookups.key(&[1]).is_none());
        assert!(!lookups.has_sku(Uuid::nil(), "A"));
    }

    #[test]
    fn an_answer_read_before_a_clear_is_not_stored_after_it() {
        let lookups = live();
        let before = lookups.generation();
        lookups.clear(); // a notification arrives while the request reads Postgres
        lookups.remember_key(before, vec![1], owner());
        lookups.remember_skus(before, Uuid::nil(), &["A".to_string()]);
        assert!(lookups.key(&[1]).is_none());
        assert!(!lookups.has_sku(Uuid::nil(), "A"));

        let now = lookups.generation();
        lookups.remember_key(now, vec![1], owner());
        lookups.remember_skus(now, Uuid::nil(), &["A".to_string()]);
        assert_eq!(lookups.key(&[1]).unwrap().slug, "acme");
        assert!(lookups.has_sku(Uuid::nil(), "A"));
        assert!(!lookups.has_sku(Uuid::nil(), "B"));
        assert!(!lookups.has_sku(Uuid::new_v4(), "A"), "SKUs are per tenant");

        lookups.clear();
        assert!(lookups.key(&[1]).is_none());
        assert!(!lookups.has_sku(Uuid::nil(), "A"));
    }
}
