//! The producer and admin side of the queues: push jobs, read a job's fate, count, list, and
//! repair (retry, discard, cancel, pause, resume). Used by the API, the outbox relay and tests;
//! workers use [`super::RedisBackend`].

mod admin;
pub mod deps;
pub mod groups;
pub mod history;
mod inspect;
mod push;
mod upkeep;

use super::keys::{JobSet, QueueKeys};
use super::{JobId, QueueName, QueueSettings, scripts};
use crate::redis_conn::RedisHandle;
use chrono::{DateTime, TimeZone, Utc};
use redis::{ErrorKind, RedisError, RedisResult, Value};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Name of the single consumer group of every queue stream.
pub(crate) const GROUP: &str = "workers";
/// Jobs per push script call. Redis runs one script at a time and serves no other client
/// meanwhile, so this bounds how long one tenant's big push holds up every other tenant's calls.
/// A push costs about 15 µs of Redis time per job (more under load): 1,000 jobs (the old chunk)
/// held Redis for 15–35 ms, and in the noisy-neighbour bench one tenant's batches of 1,000 alone
/// raised another tenant's single-adjustment p99 from 4 to 55 ms (21 ms with chunks of 100,
/// 8.5 ms with 25). The extra round trips cost the enqueue bench 2–5 %. A push of more than
/// this many jobs is therefore not atomic: a failure part-way leaves the first chunks queued
/// (their idempotency keys make a retry of the whole push safe).
const PUSH_CHUNK: usize = 25;
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
    group_hook: Option<Arc<dyn groups::GroupHook>>,
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
    /// The id to create the job with (the outbox assigns ids when it writes a row, so a row can
    /// name another row's job as its parent); `None`: a new id.
    pub id: Option<JobId>,
    /// Jobs (of any queue) that must succeed before this one runs; see [`deps`].
    pub depends_on: Vec<String>,
    pub on_parent_failure: ParentFailure,
    /// Whether a parent that does not exist yet is one still to be pushed (the outbox relays
    /// rows of one transaction in any order) rather than a parent that is gone.
    pub parents_may_follow: bool,
    /// The group it counts in (see [`groups`]).
    pub group: Option<Uuid>,
    /// The W3C `traceparent` its runs continue (see [`crate::telemetry::traces`]); `None`: the
    /// span it is pushed in, when traces are on.
    pub trace: Option<String>,
}

/// What a job waiting for parents does when one of them ends failed, dead or cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParentFailure {
    /// It is cancelled with the reason (the default); it waits again if that parent is retried
    /// by an admin and then succeeds.
    #[default]
    Cancel,
    /// It runs once every parent has ended, however they ended.
    RunAnyway,
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
            id: None,
            depends_on: vec![],
            on_parent_failure: ParentFailure::Cancel,
            parents_may_follow: false,
            group: None,
            trace: None,
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

    /// Holds the job (`waiting`) until every one of `parents` has succeeded.
    pub fn depends_on(mut self, parents: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.depends_on.extend(parents.into_iter().map(Into::into));
        self
    }

    /// Runs the job once its parents have ended, even if some failed.
    pub fn run_if_parents_fail(mut self) -> Self {
        self.on_parent_failure = ParentFailure::RunAnyway;
        self
    }

    /// Continues the trace `traceparent` rather than the current span's.
    pub fn trace(mut self, traceparent: Option<String>) -> Self {
        self.trace = traceparent;
        self
    }

    /// Counts the job in group `group` (opened with [`Queues::open_group`]).
    pub fn in_group(mut self, group: Uuid) -> Self {
        self.group = Some(group);
        self
    }

    pub fn with_id(mut self, id: JobId) -> Self {
        self.id = Some(id);
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
    /// Held until the jobs it depends on have succeeded.
    Waiting,
    /// Ended without running: a job it depended on did not succeed.
    Cancelled,
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
            "waiting" => JobStatus::Waiting,
            "cancelled" => JobStatus::Cancelled,
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
            JobStatus::Waiting => "waiting",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended for good (until an admin retries it).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Dead | JobStatus::Cancelled
        )
    }

    fn set(self) -> Option<JobSet> {
        match self {
            JobStatus::Scheduled => Some(JobSet::Scheduled),
            JobStatus::Retrying => Some(JobSet::Retrying),
            JobStatus::Succeeded => Some(JobSet::Succeeded),
            JobStatus::Failed => Some(JobSet::Failed),
            JobStatus::Dead => Some(JobSet::Dead),
            JobStatus::Waiting => Some(JobSet::Waiting),
            JobStatus::Cancelled => Some(JobSet::Cancelled),
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
    /// The group it counts in.
    pub group: Option<Uuid>,
    /// The trace its runs belong to (32 hex digits), when it was enqueued inside one.
    pub trace_id: Option<String>,
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
    /// Held for the jobs they depend on.
    pub waiting: u64,
    pub cancelled: u64,
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
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TenantQueueState {
    pub queue: String,
    /// At most this many of the tenant's jobs run (or wait prefetched) at once across every
    /// worker; `None` is no limit.
    pub limit: Option<u32>,
    /// Whether `limit` is the queue's default rather than the tenant's own.
    pub limit_is_default: bool,
    /// At most this many of the tenant's jobs start per second across every worker (a burst of
    /// one second's worth); `None` is no rate.
    pub rate: Option<f64>,
    /// Whether `rate` is the queue's default rather than the tenant's own.
    pub rate_is_default: bool,
    pub paused: bool,
    /// The tenant's jobs held by workers now (running or prefetched).
    pub running: u64,
    /// The tenant's jobs waiting to run.
    pub waiting: u64,
}

/// A tenant's own rules, by queue name: limits and rates (queues not named have the queue's
/// default) and the queues it is paused on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantRules {
    pub limits: std::collections::BTreeMap<String, u32>,
    pub rates: std::collections::BTreeMap<String, f64>,
    pub paused: Vec<String>,
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
            group_hook: None,
        }
    }

    /// Tells `hook` of every group that completes while this client notes its members.
    pub fn with_group_hook(mut self, hook: Arc<dyn groups::GroupHook>) -> Self {
        self.group_hook = Some(hook);
        self
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
        group: text("group").and_then(|g| Uuid::parse_str(&g).ok()),
        trace_id: text("trace")
            .and_then(|t| crate::telemetry::traces::trace_id_of(&t).map(str::to_string)),
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
