//! Each tenant's request rate, shared by every API process through Redis: over the limit a
//! request gets 429 with `Retry-After`.
//!
//! The algorithm is GCRA (the "generic cell rate algorithm", a leaky bucket kept as one
//! timestamp). One key per tenant holds the theoretical arrival time of its next request. A
//! request passes when that time is at most the burst tolerance ahead of now, and moves it one
//! interval on. That costs one small Lua call per request, reads Redis's clock (so the API
//! processes' clocks do not matter), and the key expires once the tenant goes quiet.
//!
//! When Redis cannot answer, requests pass. The limiter protects the platform; refusing work
//! because the limiter is down would turn a Redis blip into an outage for order intake, which
//! keeps working without Redis (the outbox).

use crate::config::RateLimit;
use crate::redis_conn::RedisHandle;
use std::sync::LazyLock;
use std::time::Duration;
use uuid::Uuid;

/// KEYS[1]: the tenant's key. ARGV[1]: microseconds per request; ARGV[2]: the burst tolerance in
/// microseconds. Returns -1 when the request passes, else the microseconds to wait.
const GCRA: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat - now > tolerance then
  return tat - now - tolerance
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return -1
"#;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA));

impl RateLimit {
    /// `Some(wait)` when the tenant is over its limit of `what` (a name for what is counted:
    /// `api` for requests). Redis errors let the request pass.
    pub async fn check(
        &self,
        redis: &RedisHandle,
        namespace: &str,
        what: &str,
        tenant: Uuid,
    ) -> Option<Duration> {
        if self.per_second == 0 {
            return None;
        }
        let interval_us = 1_000_000 / u64::from(self.per_second.max(1));
        gcra(redis, namespace, what, tenant, interval_us, self.burst).await
    }
}

/// The same limiter for a budget counted per minute: `per_minute` a minute on average, at most
/// `burst` at once; 0 a minute means no limit.
pub async fn check_per_minute(
    redis: &RedisHandle,
    namespace: &str,
    what: &str,
    tenant: Uuid,
    per_minute: u32,
    burst: u32,
) -> Option<Duration> {
    if per_minute == 0 {
        return None;
    }
    let interval_us = 60_000_000 / u64::from(per_minute);
    gcra(redis, namespace, what, tenant, interval_us, burst).await
}

async fn gcra(
    redis: &RedisHandle,
    namespace: &str,
    what: &str,
    tenant: Uuid,
    interval_us: u64,
    burst: u32,
) -> Option<Duration> {
    let tolerance_us = interval_us * u64::from(burst.max(1) - 1);
    let key = format!("{{{namespace}:ratelimit}}:{what}:{tenant}");
    let result: redis::RedisResult<i64> = async {
        let mut conn = redis.conn().await?;
        SCRIPT
            .key(key)
            .arg(interval_us)
            .arg(tolerance_us)
            .invoke_async(&mut conn)
            .await
    }
    .await;
    match result {
        Ok(wait_us) if wait_us >= 0 => Some(Duration::from_micros(wait_us as u64)),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "rate limiter unavailable; letting the request pass");
            None
        }
    }
}
