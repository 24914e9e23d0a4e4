//! Failed authentication, throttled per client address, so that guessing or garbage credentials
//! cost the platform nothing that tenants share.
//!
//! A tenant key that is not cached costs a Postgres query. Without a bound, a flood of bogus
//! tokens (a broken client, or someone guessing) ties up the connection pool and real tenants
//! get 503. Three things keep it cheap:
//! - a token that is not shaped like a key (`bk_` and 43 base64url characters) is refused without
//!   a query;
//! - each client address may fail `BACKROOM_AUTH_FAILURES_PER_MINUTE` times a minute in one API
//!   process; past that its uncached credentials get 429 without being looked up. A key that
//!   was valid in the last day is still looked up (and one cached as valid passes at once), so a
//!   tenant sharing an address with a noisy client (a NAT, a proxy) keeps working;
//! - at most a quarter of the pool serves key lookups at once (`AppState::key_lookups`).
//!
//! IPv6 clients are counted per /64, the block one subscriber usually holds. Counts live in the
//! process: the bound is per API process, and a restart forgets them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// How long a key that authenticated stays exempt from its address's throttle.
const VOUCHED_FOR: Duration = Duration::from_secs(24 * 3600);
/// Past this many addresses (or vouched keys), expired entries are dropped; if none are, the map
/// starts afresh.
const MAX_ENTRIES: usize = 100_000;

pub struct AuthThrottle {
    per_minute: u32,
    windows: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
    /// Hashes of keys that authenticated, and when they last did.
    vouched: Mutex<HashMap<Vec<u8>, Instant>>,
}

impl AuthThrottle {
    /// `per_minute` failures per address and minute; 0 turns the throttle off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::default(),
            vouched: Mutex::default(),
        }
    }

    /// Records that the key with this hash authenticated.
    pub fn vouch(&self, key_hash: &[u8]) {
        if self.per_minute == 0 {
            return;
        }
        let mut vouched = self.vouched.lock().unwrap_or_else(|p| p.into_inner());
        make_room(&mut vouched, |at| at.elapsed() < VOUCHED_FOR);
        vouched.insert(key_hash.to_vec(), Instant::now());
    }

    /// How long `address` must wait before `key_hash` (or, with `None`, any credential) is
    /// looked up, or `None` when it may be now.
    pub fn wait(&self, address: Option<IpAddr>, key_hash: Option<&[u8]>) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        if let Some(hash) = key_hash {
            let vouched = self.vouched.lock().unwrap_or_else(|p| p.into_inner());
            if vouched
                .get(hash)
                .is_some_and(|at| at.elapsed() < VOUCHED_FOR)
            {
                return None;
            }
        }
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (started, failures) = windows.get(&bucket(address))?;
        let elapsed = started.elapsed();
        (elapsed < WINDOW && *failures >= self.per_minute).then(|| WINDOW - elapsed)
    }

    /// Counts one failed authentication from `address`.
    pub fn failed(&self, address: Option<IpAddr>) {
        if self.per_minute == 0 {
            return;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        make_room(&mut windows, |(started, _)| started.elapsed() < WINDOW);
        let now = Instant::now();
        let entry = windows.entry(bucket(address)).or_insert((now, 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Keeps `map` under [`MAX_ENTRIES`]: when full, drops the entries `live` rejects, and starts
/// afresh if that frees nothing.
fn make_room<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, live: impl Fn(&V) -> bool) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, v| live(v));
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
}

/// The unit counted: the address itself, or its /64 for IPv6.
fn bucket(address: Option<IpAddr>) -> Option<IpAddr> {
    address.map(|ip| match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_its_budget_waits_and_others_do_not() {
        let throttle = AuthThrottle::new(3);
        let noisy: IpAddr = "10.0.0.1".parse().unwrap();
        let quiet: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.wait(Some(noisy), None).is_none());
            throttle.failed(Some(noisy));
        }
        let wait = throttle.wait(Some(noisy), None).expect("over budget");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(5));
        assert!(throttle.wait(Some(quiet), None).is_none());
        assert!(AuthThrottle::new(0).wait(Some(noisy), None).is_none());
        // A key that authenticated before is still looked up from the noisy address.
        throttle.vouch(b"known");
        assert!(throttle.wait(Some(noisy), Some(b"known")).is_none());
        assert!(throttle.wait(Some(noisy), Some(b"unknown")).is_some());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let throttle = AuthThrottle::new(1);
        throttle.failed(Some("2001:db8:1:2::1".parse().unwrap()));
        assert!(
            throttle
                .wait(Some("2001:db8:1:2:ffff::9".parse().unwrap()), None)
                .is_some()
        );
        assert!(
            throttle
                .wait(Some("2001:db8:1:3::1".parse().unwrap()), None)
                .is_none()
        );
        throttle.failed(Some("::ffff:10.0.0.9".parse().unwrap()));
        assert!(
            throttle
                .wait(Some("10.0.0.9".parse().unwrap()), None)
                .is_some()
        );
    }
}
