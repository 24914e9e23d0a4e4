//! The queue's side of the job history: while the history is on (`:history:on`, holding how
//! many may wait, set by `work` processes at start), finished jobs wait in `:history` (appended by the scripts that
//! finish jobs) until one copier per queue, holding a lease, has stored them elsewhere and drops
//! them. The copying itself is the
//! application's (`crate::history`); the queue only hands out records and takes them back.

use super::*;
use std::time::Duration;

/// A finished job as the history keeps it: JSON fields as text, untouched (the copier does
/// not parse what it only moves; [`FinishedJob::json`] makes sure each is valid JSON).
#[derive(Debug, Clone)]
pub struct FinishedJob {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub tenant: Option<Uuid>,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub payload: String,
    pub result: Option<String>,
    pub last_error: Option<String>,
    pub errors: String,
    pub idempotency_key: Option<String>,
    pub group: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
}

/// The most finished jobs that may wait in a queue's history list; past it, newer ones are not
/// kept (a bound on Redis memory should every copier stop for long).
pub const HISTORY_CAP: u64 = 1_000_000;

/// The hash fields a finished job is read from, in [`FinishedJob::parse`]'s order.
const FIELDS: [&str; 14] = [
    "kind",
    "tenant",
    "status",
    "attempts",
    "max_attempts",
    "payload",
    "result",
    "last_error",
    "errors",
    "idem",
    "group",
    "created_at",
    "started_at",
    "finished_at",
];

impl FinishedJob {
    fn parse(queue: &QueueName, id: &str, v: Vec<Option<String>>) -> Option<FinishedJob> {
        let [
            kind,
            tenant,
            status,
            attempts,
            max_attempts,
            payload,
            result,
            last_error,
            errors,
            idem,
            group,
            created,
            started,
            finished,
        ]: [Option<String>; 14] = v.try_into().ok()?;
        let status = JobStatus::parse(status.as_deref()?).filter(|s| s.is_final())?;
        let number = |v: Option<String>| v.and_then(|s| s.parse::<i64>().ok());
        let time = |v: Option<String>| number(v).and_then(ms_to_time);
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Some(FinishedJob {
            id: id.to_string(),
            queue: queue.to_string(),
            kind: kind.unwrap_or_default(),
            tenant: tenant.and_then(|t| Uuid::parse_str(&t).ok()),
            status,
            attempts: number(attempts).unwrap_or(0) as i32,
            max_attempts: number(max_attempts).unwrap_or(1) as i32,
            payload: Self::json(payload.unwrap_or_default()),
            result: nonempty(result).map(Self::json),
            last_error: nonempty(last_error),
            errors: nonempty(errors).map_or_else(|| "[]".to_string(), Self::json),
            idempotency_key: nonempty(idem),
            group: group.and_then(|g| Uuid::parse_str(&g).ok()),
            created_at: time(created).unwrap_or_default(),
            started_at: time(started),
            finished_at: time(finished)?,
        })
    }

    /// `raw` if it is JSON, else `raw` as a JSON string (a poison payload is kept as text).
    pub fn json(raw: String) -> String {
        match serde_json::from_str::<serde::de::IgnoredAny>(&raw) {
            Ok(_) => raw,
            Err(_) => serde_json::Value::String(raw).to_string(),
        }
    }
}

/// Finished jobs read from the head of a queue's history list.
pub struct HistoryBatch {
    /// How many ids were read (some may have no record left: expired or discarded since).
    pub read: usize,
    /// The id at the head when read: dropping checks it is still there.
    pub first: Option<String>,
    /// The jobs that are still finished.
    pub jobs: Vec<FinishedJob>,
}

impl Queues {
    /// Sets how many finished jobs of `queue` may wait in its history list: [`HISTORY_CAP`]
    /// while the history is on; 0 turns it off (and forgets what waits).
    pub async fn set_history_cap(&self, queue: &QueueName, cap: u64) -> RedisResult<()> {
        let keys = self.keys(queue);
        let flag = format!("{}:history:on", keys.prefix());
        let mut conn = self.redis.conn().await?;
        if cap > 0 {
            redis::cmd("SET")
                .arg(flag)
                .arg(cap)
                .query_async(&mut conn)
                .await
        } else {
            redis::cmd("DEL")
                .arg(flag)
                .arg(keys.history())
                .query_async(&mut conn)
                .await
        }
    }

    /// Takes or keeps the lease on copying `queue`'s history for `lease`. Returns whether
    /// `owner` holds it.
    pub async fn history_lease(
        &self,
        queue: &QueueName,
        owner: &str,
        lease: Duration,
    ) -> RedisResult<bool> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let held: i64 = scripts::HISTORY_LEASE
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(owner)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }

    /// Reads up to `max` finished jobs from the head of `queue`'s history list.
    pub async fn history_peek(&self, queue: &QueueName, max: usize) -> RedisResult<HistoryBatch> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(keys.history())
            .arg(0)
            .arg(max.saturating_sub(1))
            .query_async(&mut conn)
            .await?;
        let jobs = self.finished_jobs(queue, &ids).await?;
        Ok(HistoryBatch {
            read: ids.len(),
            first: ids.into_iter().next(),
            jobs,
        })
    }

    /// The jobs among `ids` that have finished, as the history keeps them.
    pub async fn finished_jobs(
        &self,
        queue: &QueueName,
        ids: &[String],
    ) -> RedisResult<Vec<FinishedJob>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let keys = self.keys(queue);
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(keys.job(id)).arg(&FIELDS[..]);
        }
        let mut conn = self.redis.conn().await?;
        let replies: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .iter()
            .zip(replies)
            .filter_map(|(id, fields)| FinishedJob::parse(queue, id, fields))
            .collect())
    }

    /// Drops a batch from the head of the list once it is stored, if `owner` still holds the
    /// lease and the list still starts where the batch did. Returns whether it was dropped.
    pub async fn history_drop(
        &self,
        queue: &QueueName,
        owner: &str,
        batch: &HistoryBatch,
    ) -> RedisResult<bool> {
        let Some(first) = &batch.first else {
            return Ok(true);
        };
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let dropped: i64 = scripts::HISTORY_TRIM
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(owner)
            .arg(batch.read)
            .arg(first)
            .invoke_async(&mut conn)
            .await?;
        Ok(dropped == 1)
    }

    /// How many jobs wait in `queue`'s ready lists (O(1)): whether it is draining.
    pub async fn waiting_to_run(&self, queue: &QueueName) -> RedisResult<u64> {
        let mut conn = self.redis.conn().await?;
        let n: Option<u64> = redis::cmd("GET")
            .arg(self.keys(queue).waiting())
            .query_async(&mut conn)
            .await?;
        Ok(n.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::FinishedJob;

    #[test]
    fn json_is_kept_as_it_is_and_anything_else_becomes_a_json_string() {
        assert_eq!(
            FinishedJob::json(r#"{"a": [1, 2]}"#.into()),
            r#"{"a": [1, 2]}"#
        );
        assert_eq!(FinishedJob::json("not json".into()), r#""not json""#);
        assert_eq!(FinishedJob::json("{\"cut".into()), r#""{\"cut""#);
    }
}
