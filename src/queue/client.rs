//! The producer and admin side of the queues: push jobs, read a job's fate, count, list, and
//! repair (retry, discard, cancel, pause, resume). Used by the API, the outbox relay and tests;
//! workers use [`super::RedisBackend`].

use super::keys::{JobSet, QueueKeys};
use super::{JobId, QueueName, QueueSettings, now_ms, scripts};
use crate::redis_conn::RedisHandle;
use chrono::{DateTime, TimeZone, Utc};
use redis::{ErrorKind, RedisError, RedisResult, Value};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Name of the single consumer group of every queue stream.
pub(crate) const GROUP: &str = "workers";
/// Jobs per push script call: bounds the script's run time and argument count, and makes a
/// push of up to this many jobs atomic (all or none).
const PUSH_CHUNK: usize = 1000;
/// Tenants with jobs waiting that a listing of queued jobs goes through.
const MAX_LISTED_TENANTS: usize = 1000;
/// Jobs per admin batch call (bulk retry, promote).
const ADMIN_CHUNK: usize = 1000;

/// Client for every queue of one deployment (one Redis namespace). Cheap to clone.
#[derive(Clone)]
pub struct Queues {
    redis: RedisHandle,
    namespace: Arc<str>,
    settings: QueueSettings,
    groups_ready: Arc<Mutex<HashSet<String>>>,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub tenant: Option<Uuid>,
    /// The payload as JSON bytes; the worker decodes it into its job type.
    pub payload: Vec<u8>,
    pub max_attempts: u32,
    pub run_at: Option<DateTime<Utc>>,
    /// Deduplicates pushes for the idempotency retention window (callers scope it, e.g. by
    /// tenant).
    pub idempotency_key: Option<String>,
}

impl NewJob {
    pub fn new(kind: &str, payload: &impl Serialize) -> Self {
        NewJob {
            kind: kind.to_string(),
            tenant: None,
            payload: serde_json::to_vec(payload).expect("job payloads serialize"),
            max_attempts: 5,
            run_at: None,
            idempotency_key: None,
        }
    }

    /// A job whose payload is raw bytes (used to prove that undecodable payloads are handled).
    pub fn raw(kind: &str, payload: Vec<u8>) -> Self {
        NewJob {
            payload,
            ..NewJob::new(kind, &())
        }
    }

    pub fn tenant(mut self, tenant: Uuid) -> Self {
        self.tenant = Some(tenant);
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// The result of a push: the job's id and whether this push created it (false when the
/// idempotency key already named a job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub id: String,
    pub created: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Scheduled,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Dead,
}

impl JobStatus {
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "queued" => JobStatus::Queued,
            "scheduled" => JobStatus::Scheduled,
            "running" => JobStatus::Running,
            "retrying" => JobStatus::Retrying,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "dead" => JobStatus::Dead,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Dead => "dead",
        }
    }

    fn set(self) -> Option<JobSet> {
        match self {
            JobStatus::Scheduled => Some(JobSet::Scheduled),
            JobStatus::Retrying => Some(JobSet::Retrying),
            JobStatus::Succeeded => Some(JobSet::Succeeded),
            JobStatus::Failed => Some(JobSet::Failed),
            JobStatus::Dead => Some(JobSet::Dead),
            JobStatus::Queued | JobStatus::Running => None,
        }
    }
}

/// Everything Redis knows about a job, parsed.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub tenant: Option<Uuid>,
    pub status: JobStatus,
    pub attempts: u32,
    pub max_attempts: u32,
    /// The payload as JSON (or as a string when it is not JSON: a poison payload).
    pub payload: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub last_error: Option<String>,
    /// `[{"attempt", "at" (ms), "error"}]`, oldest first.
    pub errors: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
    pub run_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Sizes of a queue, each read in O(1) or O(log n).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QueueCounts {
    pub pending: u64,
    pub scheduled: u64,
    pub running: u64,
    pub retrying: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub paused: bool,
}

/// A page of jobs of one status.
#[derive(Debug, Clone, Serialize)]
pub struct ListedJobs {
    pub items: Vec<JobRecord>,
    pub next_cursor: Option<String>,
}

/// A worker process seen by a queue.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub id: String,
    pub last_heartbeat: DateTime<Utc>,
    pub in_flight: u64,
    /// What the worker said about itself (host, pid, start time, concurrency).
    pub info: serde_json::Value,
}

/// One tenant's concurrency rule on one queue and where it stands.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TenantQueueState {
    pub queue: String,
    /// At most this many of the tenant's jobs run (or wait prefetched) at once across every
    /// worker; `None` is no limit.
    pub limit: Option<u32>,
    /// Whether `limit` is the queue's default rather than the tenant's own.
    pub limit_is_default: bool,
    pub paused: bool,
    /// The tenant's jobs held by workers now (running or prefetched).
    pub running: u64,
    /// The tenant's jobs waiting to run.
    pub waiting: u64,
}

/// A change to a tenant's limit on a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitChange {
    Keep,
    /// The queue's default.
    Default,
    /// This many at once; 0 is no limit.
    Set(u32),
}

/// Outcome of an admin action on one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOutcome {
    Done,
    Missing,
    /// The job is in a state the action does not apply to.
    Refused(JobStatus),
}

impl Queues {
    pub fn new(redis: RedisHandle, namespace: &str, settings: QueueSettings) -> Self {
        Self {
            redis,
            namespace: namespace.into(),
            settings,
            groups_ready: Default::default(),
        }
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    pub fn redis(&self) -> &RedisHandle {
        &self.redis
    }

    pub fn keys(&self, queue: &QueueName) -> QueueKeys {
        QueueKeys::new(&self.namespace, queue.as_str())
    }

    /// Creates the queue's stream and consumer group if needed (from the start of the stream, so
    /// jobs pushed before any worker ran are not skipped).
    pub async fn ensure_group(&self, queue: &QueueName) -> RedisResult<()> {
        if self.groups_ready.lock().unwrap().contains(queue.as_str()) {
            return Ok(());
        }
        let mut conn = self.redis.conn().await?;
        let created: RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys(queue).stream())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.groups_ready
            .lock()
            .unwrap()
            .insert(queue.as_str().to_string());
        Ok(())
    }

    /// Enqueues jobs in batches; returns one [`Pushed`] per job, in order.
    pub async fn push(&self, queue: &QueueName, jobs: Vec<NewJob>) -> RedisResult<Vec<Pushed>> {
        self.ensure_group(queue).await?;
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut pushed = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(PUSH_CHUNK) {
            let mut call = scripts::PUSH.prepare_invoke();
            call.key(keys.stream())
                .arg(keys.prefix())
                .arg(now_ms())
                .arg(self.settings.idempotency_retention.as_millis() as u64)
                .arg(chunk.len());
            for job in chunk {
                let idem = job
                    .idempotency_key
                    .as_deref()
                    .map(|k| format!("{}:{k}", job.kind))
                    .unwrap_or_default();
                call.arg(JobId::new(queue).as_str())
                    .arg(&job.kind)
                    .arg(job.tenant.map(|t| t.to_string()).unwrap_or_default())
                    .arg(&job.payload)
                    .arg(job.max_attempts)
                    .arg(job.run_at.map(|t| t.timestamp_millis()).unwrap_or(0))
                    .arg(idem);
            }
            let reply: Vec<Value> = call.invoke_async(&mut conn).await?;
            for pair in reply.chunks(2) {
                pushed.push(Pushed {
                    id: string(&pair[0]).ok_or_else(|| parse_error("push reply"))?,
                    created: int(&pair[1]) == Some(1),
                });
            }
        }
        for p in &pushed {
            if p.created {
                super::metrics::pushed(queue.as_str(), 1);
            }
        }
        Ok(pushed)
    }

    /// One job, from its id alone (the id names its queue).
    pub async fn get(&self, id: &str) -> RedisResult<Option<JobRecord>> {
        let Some((queue, id)) = JobId::parse(id) else {
            return Ok(None);
        };
        let mut conn = self.redis.conn().await?;
        let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.keys(&queue).job(id.as_str()))
            .query_async(&mut conn)
            .await?;
        parse_record(&queue, id.as_str(), fields)
    }

    async fn get_many(&self, queue: &QueueName, ids: &[String]) -> RedisResult<Vec<JobRecord>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let keys = self.keys(queue);
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(keys.job(id));
        }
        let mut conn = self.redis.conn().await?;
        let replies: Vec<HashMap<String, Vec<u8>>> = pipe.query_async(&mut conn).await?;
        let mut records = Vec::with_capacity(ids.len());
        for (id, fields) in ids.iter().zip(replies) {
            if let Some(record) = parse_record(queue, id, fields)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    pub async fn counts(&self, queue: &QueueName) -> RedisResult<QueueCounts> {
        self.ensure_group(queue).await?;
        let keys = self.keys(queue);
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(keys.stream());
        pipe.cmd("XPENDING").arg(keys.stream()).arg(GROUP);
        for set in [
            JobSet::Scheduled,
            JobSet::Retrying,
            JobSet::Succeeded,
            JobSet::Failed,
            JobSet::Dead,
        ] {
            pipe.cmd("ZCARD").arg(keys.set(set));
        }
        pipe.cmd("EXISTS").arg(keys.paused());
        pipe.cmd("GET").arg(keys.waiting());
        let mut conn = self.redis.conn().await?;
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let n = |i: usize| int(&replies[i]).unwrap_or(0).max(0) as u64;
        let stream_len = n(0);
        let running = array(&replies[1]).first().and_then(int).unwrap_or(0).max(0) as u64;
        let waiting = string(&replies[8])
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(QueueCounts {
            // Waiting in the tenants' ready lists, plus any delivered-to-nobody stream entries.
            pending: waiting + stream_len.saturating_sub(running),
            running,
            scheduled: n(2),
            retrying: n(3),
            succeeded: n(4),
            failed: n(5),
            dead: n(6),
            paused: n(7) == 1,
        })
    }

    /// Jobs finished per minute (succeeded + failed) for the last `minutes` minutes, oldest first.
    pub async fn processed_per_minute(
        &self,
        queue: &QueueName,
        minutes: usize,
    ) -> RedisResult<Vec<u64>> {
        let keys = self.keys(queue);
        let this_minute = now_ms() / 60_000;
        let mut pipe = redis::pipe();
        for m in (0..minutes as i64).rev() {
            pipe.cmd("HMGET")
                .arg(keys.stats_minute(this_minute - m))
                .arg("succeeded")
                .arg("failed");
        }
        let mut conn = self.redis.conn().await?;
        let replies: Vec<Vec<Option<u64>>> = pipe.query_async(&mut conn).await?;
        Ok(replies
            .into_iter()
            .map(|pair| pair.into_iter().flatten().sum())
            .collect())
    }

    /// A page of jobs with `status`. Finished jobs come newest first, scheduled and retrying
    /// soonest first, queued and running in stream order.
    pub async fn list(
        &self,
        queue: &QueueName,
        status: JobStatus,
        limit: usize,
        cursor: Option<&str>,
    ) -> RedisResult<ListedJobs> {
        self.ensure_group(queue).await?;
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let (ids, next_cursor) = match status.set() {
            Some(set) => {
                let offset: isize = cursor.and_then(|c| c.parse().ok()).unwrap_or(0).max(0);
                let newest_first = matches!(
                    status,
                    JobStatus::Succeeded | JobStatus::Failed | JobStatus::Dead
                );
                let ids: Vec<String> =
                    redis::cmd(if newest_first { "ZREVRANGE" } else { "ZRANGE" })
                        .arg(keys.set(set))
                        .arg(offset)
                        .arg(offset + limit as isize)
                        .query_async(&mut conn)
                        .await?;
                page(ids, limit, |_, n| (offset + n as isize).to_string())
            }
            None if status == JobStatus::Queued => {
                // Tenant by tenant in ring order (the order the next fetches take them in,
                // roughly), each tenant's jobs oldest first. Cursor: "<ring index>.<offset>".
                let (mut tenant_at, mut offset) = cursor
                    .and_then(|c| c.split_once('.'))
                    .and_then(|(t, o)| Some((t.parse::<usize>().ok()?, o.parse::<usize>().ok()?)))
                    .unwrap_or((0, 0));
                let ring: Vec<String> = redis::cmd("LRANGE")
                    .arg(keys.ring())
                    .arg(0)
                    .arg(MAX_LISTED_TENANTS - 1)
                    .query_async(&mut conn)
                    .await?;
                let mut ids = vec![];
                let mut positions = vec![];
                while ids.len() <= limit && tenant_at < ring.len() {
                    let want = limit + 1 - ids.len();
                    let got: Vec<String> = redis::cmd("LRANGE")
                        .arg(keys.ready(&ring[tenant_at]))
                        .arg(offset)
                        .arg(offset + want - 1)
                        .query_async(&mut conn)
                        .await?;
                    for (k, id) in got.iter().enumerate() {
                        positions.push(format!("{tenant_at}.{}", offset + k + 1));
                        ids.push(id.clone());
                    }
                    if got.len() < want {
                        tenant_at += 1;
                        offset = 0;
                    } else {
                        offset += got.len();
                    }
                }
                page(ids, limit, |i, _| positions[i].clone())
            }
            None => {
                let start = cursor
                    .map(|c| format!("({c}"))
                    .unwrap_or_else(|| "-".into());
                let pending: Vec<Value> = redis::cmd("XPENDING")
                    .arg(keys.stream())
                    .arg(GROUP)
                    .arg(start)
                    .arg("+")
                    .arg(limit + 1)
                    .query_async(&mut conn)
                    .await?;
                let entries: Vec<String> = pending
                    .iter()
                    .filter_map(|p| array(p).first().and_then(string))
                    .collect();
                let mut pipe = redis::pipe();
                for e in &entries {
                    pipe.cmd("XRANGE").arg(keys.stream()).arg(e).arg(e);
                }
                let ranges: Vec<Vec<Value>> = if entries.is_empty() {
                    vec![]
                } else {
                    pipe.query_async(&mut conn).await?
                };
                let pairs: Vec<(String, String)> = ranges
                    .iter()
                    .filter_map(|r| r.first().and_then(entry_pair))
                    .collect();
                let ids = pairs.iter().map(|(_, id)| id.clone()).collect();
                page(ids, limit, |i, _| pairs[i].0.clone())
            }
        };
        let mut items = self.get_many(queue, &ids).await?;
        items.retain(|r| r.status == status);
        Ok(ListedJobs { items, next_cursor })
    }

    /// Re-queues a dead or failed job with a fresh attempt budget.
    pub async fn retry(&self, id: &str) -> RedisResult<ActionOutcome> {
        let Some((queue, id)) = JobId::parse(id) else {
            return Ok(ActionOutcome::Missing);
        };
        let keys = self.keys(&queue);
        let mut conn = self.redis.conn().await?;
        let reply: Vec<String> = scripts::RETRY
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(now_ms())
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(action_outcome(reply.first().map(String::as_str), "retried"))
    }

    /// Re-queues every dead job of a queue, in bounded batches; returns how many.
    pub async fn retry_all_dead(&self, queue: &QueueName) -> RedisResult<u64> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut total = 0;
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(keys.set(JobSet::Dead))
                .arg(0)
                .arg(ADMIN_CHUNK - 1)
                .query_async(&mut conn)
                .await?;
            if ids.is_empty() {
                return Ok(total);
            }
            let mut call = scripts::RETRY.prepare_invoke();
            call.key(keys.stream()).arg(keys.prefix()).arg(now_ms());
            for id in &ids {
                call.arg(id);
            }
            let reply: Vec<String> = call.invoke_async(&mut conn).await?;
            total += reply.iter().filter(|s| *s == "retried").count() as u64;
            // Ids that were not dead any more (retried meanwhile) leave the set anyway.
            let _: () = redis::cmd("ZREM")
                .arg(keys.set(JobSet::Dead))
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
        }
    }

    /// Deletes a job that is not running.
    pub async fn discard(&self, id: &str) -> RedisResult<ActionOutcome> {
        let Some((queue, id)) = JobId::parse(id) else {
            return Ok(ActionOutcome::Missing);
        };
        let keys = self.keys(&queue);
        let mut conn = self.redis.conn().await?;
        let reply: String = scripts::DISCARD
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(action_outcome(Some(&reply), "deleted"))
    }

    /// Cancels a job that has not started; it ends `failed` with `reason`.
    pub async fn cancel(&self, id: &str, reason: &str) -> RedisResult<ActionOutcome> {
        let Some((queue, id)) = JobId::parse(id) else {
            return Ok(ActionOutcome::Missing);
        };
        let keys = self.keys(&queue);
        let mut conn = self.redis.conn().await?;
        let reply: String = scripts::CANCEL
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(id.as_str())
            .arg(now_ms())
            .arg(reason)
            .arg(self.settings.dead_retention.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(action_outcome(Some(&reply), "cancelled"))
    }

    /// Sets one tenant's pause and limit on a queue (`tenant` `*` with a limit: the queue's
    /// default). Paused jobs stay queued; a resumed or un-limited tenant's jobs flow at once.
    pub async fn control_tenant(
        &self,
        queue: &QueueName,
        tenant: &str,
        paused: Option<bool>,
        limit: LimitChange,
    ) -> RedisResult<()> {
        let keys = self.keys(queue);
        let limit = match limit {
            LimitChange::Keep => String::new(),
            LimitChange::Default => "-".into(),
            LimitChange::Set(n) => n.to_string(),
        };
        let paused = match paused {
            None => "",
            Some(true) => "1",
            Some(false) => "0",
        };
        let mut conn = self.redis.conn().await?;
        let _: i64 = scripts::TENANT_CONTROL
            .key(keys.stream())
            .arg(keys.prefix())
            .arg(tenant)
            .arg(paused)
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Applies a tenant's whole rule set on `queues`: its own limits (queues not named get the
    /// default) and the queues it is paused on (every other queue resumes).
    pub async fn apply_tenant_rules(
        &self,
        queues: &[QueueName],
        tenant: Uuid,
        limits: &std::collections::BTreeMap<String, u32>,
        paused: &[String],
    ) -> RedisResult<()> {
        for queue in queues {
            let name = queue.as_str();
            let limit = limits
                .get(name)
                .map_or(LimitChange::Default, |&n| LimitChange::Set(n));
            let is_paused = paused.iter().any(|p| p == name);
            self.control_tenant(queue, &tenant.to_string(), Some(is_paused), limit)
                .await?;
        }
        Ok(())
    }

    /// A tenant's rule and load on a queue.
    pub async fn tenant_state(
        &self,
        queue: &QueueName,
        tenant: Uuid,
    ) -> RedisResult<TenantQueueState> {
        let keys = self.keys(queue);
        let t = tenant.to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(keys.limits()).arg(&t);
        pipe.cmd("HGET").arg(keys.limits()).arg("*");
        pipe.cmd("SISMEMBER").arg(keys.paused_tenants()).arg(&t);
        pipe.cmd("HGET").arg(keys.active()).arg(&t);
        pipe.cmd("LLEN").arg(keys.ready(&t));
        let mut conn = self.redis.conn().await?;
        let (own, default, paused, active, waiting): (
            Option<u32>,
            Option<u32>,
            bool,
            Option<u64>,
            u64,
        ) = pipe.query_async(&mut conn).await?;
        let limit = own.or(default).filter(|&n| n > 0);
        Ok(TenantQueueState {
            queue: queue.to_string(),
            limit,
            limit_is_default: own.is_none(),
            paused,
            running: active.unwrap_or(0),
            waiting,
        })
    }

    /// The tenants paused on a queue.
    pub async fn paused_tenants(&self, queue: &QueueName) -> RedisResult<HashSet<String>> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("SMEMBERS")
            .arg(self.keys(queue).paused_tenants())
            .query_async(&mut conn)
            .await
    }

    /// The tenants with a limit of their own on a queue.
    pub async fn limited_tenants(&self, queue: &QueueName) -> RedisResult<HashMap<String, u32>> {
        let mut conn = self.redis.conn().await?;
        let mut all: HashMap<String, u32> = redis::cmd("HGETALL")
            .arg(self.keys(queue).limits())
            .query_async(&mut conn)
            .await?;
        all.remove("*");
        Ok(all)
    }

    pub async fn pause(&self, queue: &QueueName) -> RedisResult<()> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("SET")
            .arg(self.keys(queue).paused())
            .arg(now_ms())
            .query_async(&mut conn)
            .await
    }

    pub async fn resume(&self, queue: &QueueName) -> RedisResult<()> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("DEL")
            .arg(self.keys(queue).paused())
            .query_async(&mut conn)
            .await
    }

    /// Moves due scheduled and retrying jobs into the stream; returns how many moved.
    pub async fn promote_due(&self, queue: &QueueName) -> RedisResult<u64> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut total = 0;
        loop {
            let moved: u64 = scripts::PROMOTE
                .key(keys.stream())
                .arg(keys.prefix())
                .arg(now_ms())
                .arg(ADMIN_CHUNK)
                .invoke_async(&mut conn)
                .await?;
            total += moved;
            if moved < ADMIN_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Drops finished jobs older than their retention from the finished sets and deletes their
    /// hashes, in bounded batches. O(log n + removed).
    pub async fn trim(&self, queue: &QueueName) -> RedisResult<u64> {
        const BATCH: u64 = 500;
        let keys = self.keys(queue);
        let now = now_ms();
        let mut conn = self.redis.conn().await?;
        let mut total = 0;
        for (set, keep) in [
            (JobSet::Succeeded, self.settings.succeeded_retention),
            (JobSet::Failed, self.settings.dead_retention),
            (JobSet::Dead, self.settings.dead_retention),
        ] {
            loop {
                let removed: u64 = scripts::TRIM
                    .key(keys.stream())
                    .arg(keys.prefix())
                    .arg(set.suffix())
                    .arg(now - keep.as_millis() as i64)
                    .arg(BATCH)
                    .invoke_async(&mut conn)
                    .await?;
                total += removed;
                if removed < BATCH {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Jobs finished today (UTC) per tenant id: (succeeded, failed/retried/dead outcomes).
    pub async fn tenant_volume_today(
        &self,
        queue: &QueueName,
    ) -> RedisResult<HashMap<String, (u64, u64)>> {
        let day = now_ms() / 86_400_000;
        let mut conn = self.redis.conn().await?;
        let fields: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(format!("{}:tenantstats:{day}", self.keys(queue).prefix()))
            .query_async(&mut conn)
            .await?;
        let mut volume: HashMap<String, (u64, u64)> = HashMap::new();
        for (field, count) in fields {
            if let Some((tenant, outcome)) = field.rsplit_once(':') {
                let entry = volume.entry(tenant.to_string()).or_default();
                if outcome == "succeeded" {
                    entry.0 += count;
                } else {
                    entry.1 += count;
                }
            }
        }
        Ok(volume)
    }

    /// The job an idempotency key maps to (`kind`-scoped, as pushed).
    pub async fn find_by_idempotency_key(
        &self,
        queue: &QueueName,
        kind: &str,
        key: &str,
    ) -> RedisResult<Option<String>> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("GET")
            .arg(format!("{}:idem:{kind}:{key}", self.keys(queue).prefix()))
            .query_async(&mut conn)
            .await
    }

    /// Deletes every dead job of a queue, in bounded batches; returns how many.
    pub async fn discard_all_dead(&self, queue: &QueueName) -> RedisResult<u64> {
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let mut total = 0;
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(keys.set(JobSet::Dead))
                .arg(0)
                .arg(ADMIN_CHUNK - 1)
                .query_async(&mut conn)
                .await?;
            if ids.is_empty() {
                return Ok(total);
            }
            for id in &ids {
                let reply: String = scripts::DISCARD
                    .key(keys.stream())
                    .arg(keys.prefix())
                    .arg(id)
                    .invoke_async(&mut conn)
                    .await?;
                total += u64::from(reply == "deleted");
            }
            let _: () = redis::cmd("ZREM")
                .arg(keys.set(JobSet::Dead))
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
        }
    }

    /// Workers that heartbeat on this queue, most recent first.
    pub async fn workers(&self, queue: &QueueName) -> RedisResult<Vec<WorkerInfo>> {
        self.ensure_group(queue).await?;
        let keys = self.keys(queue);
        let mut conn = self.redis.conn().await?;
        let beats: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(keys.workers())
            .arg(0)
            .arg(199)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let summary: Value = redis::cmd("XPENDING")
            .arg(keys.stream())
            .arg(GROUP)
            .query_async(&mut conn)
            .await?;
        let in_flight: HashMap<String, u64> = array(&summary)
            .get(3)
            .map(array)
            .unwrap_or(&[])
            .iter()
            .filter_map(|pair| {
                let pair = array(pair);
                Some((string(pair.first()?)?, int(pair.get(1)?)? as u64))
            })
            .collect();
        let mut workers = Vec::with_capacity(beats.len());
        for (id, at) in beats {
            let info: Option<String> = redis::cmd("GET")
                .arg(keys.worker(&id))
                .query_async(&mut conn)
                .await?;
            workers.push(WorkerInfo {
                last_heartbeat: ms_to_time(at as i64).unwrap_or_default(),
                in_flight: in_flight.get(&id).copied().unwrap_or(0),
                info: info
                    .and_then(|i| serde_json::from_str(&i).ok())
                    .unwrap_or(serde_json::Value::Null),
                id,
            });
        }
        Ok(workers)
    }
}

fn page(
    mut ids: Vec<String>,
    limit: usize,
    cursor_after: impl Fn(usize, usize) -> String,
) -> (Vec<String>, Option<String>) {
    let more = ids.len() > limit;
    ids.truncate(limit);
    let next = (more && !ids.is_empty()).then(|| cursor_after(ids.len() - 1, ids.len()));
    (ids, next)
}

fn action_outcome(reply: Option<&str>, success: &str) -> ActionOutcome {
    match reply {
        Some(s) if s == success => ActionOutcome::Done,
        Some("missing") | None => ActionOutcome::Missing,
        Some(other) => JobStatus::parse(other)
            .map(ActionOutcome::Refused)
            .unwrap_or(ActionOutcome::Missing),
    }
}

fn parse_record(
    queue: &QueueName,
    id: &str,
    mut fields: HashMap<String, Vec<u8>>,
) -> RedisResult<Option<JobRecord>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut text = |name: &str| {
        fields
            .remove(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .filter(|s| !s.is_empty())
    };
    let status_raw = text("status").unwrap_or_default();
    let status = JobStatus::parse(&status_raw)
        .ok_or_else(|| parse_error_detail("job status", status_raw.clone()))?;
    let number = |v: Option<String>| v.and_then(|s| s.parse::<i64>().ok());
    let payload_raw = text("payload").unwrap_or_default();
    let payload =
        serde_json::from_str(&payload_raw).unwrap_or(serde_json::Value::String(payload_raw));
    Ok(Some(JobRecord {
        id: id.to_string(),
        queue: queue.to_string(),
        kind: text("kind").unwrap_or_default(),
        tenant: text("tenant").and_then(|t| Uuid::parse_str(&t).ok()),
        status,
        attempts: number(text("attempts")).unwrap_or(0) as u32,
        max_attempts: number(text("max_attempts")).unwrap_or(1) as u32,
        payload,
        result: text("result").and_then(|r| serde_json::from_str(&r).ok()),
        last_error: text("last_error"),
        errors: text("errors")
            .and_then(|e| serde_json::from_str(&e).ok())
            .unwrap_or_else(|| serde_json::json!([])),
        idempotency_key: text("idem"),
        worker: text("worker"),
        created_at: number(text("created_at"))
            .and_then(ms_to_time)
            .unwrap_or_default(),
        run_at: number(text("run_at")).and_then(ms_to_time),
        started_at: number(text("started_at")).and_then(ms_to_time),
        finished_at: number(text("finished_at")).and_then(ms_to_time),
    }))
}

pub(crate) fn ms_to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

pub(crate) fn parse_error(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::Parse, what))
}

fn parse_error_detail(what: &'static str, detail: String) -> RedisError {
    RedisError::from((ErrorKind::Parse, what, detail))
}

pub(crate) fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// A stream entry `[id, [field, value, …]]` as (entry id, job id).
fn entry_pair(v: &Value) -> Option<(String, String)> {
    let parts = array(v);
    let entry = string(parts.first()?)?;
    let fields = array(parts.get(1)?);
    let job = string(fields.get(1)?)?;
    Some((entry, job))
}
