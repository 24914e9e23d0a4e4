//! Job kinds behind one typed contract.
//!
//! A kind is declared once, with its payload type, by implementing [`JobKind`]: its queue, its
//! name, how many attempts it gets, how long one run may take, and whose work it is. Everything
//! else reads those facts from here: producers enqueue a payload (directly with [`enqueue`], or
//! inside a database transaction with [`outbox_job`]), so no call site names a queue or a kind in
//! a string; the workers take their timeouts from it; and [`Queue::ALL`] is the one list of
//! queues that `--queues`, the dashboard, metrics, retention and the tenants' rules iterate.
//!
//! Each kind has its own folder below: its contract (the payload and its `JobKind` impl, and
//! what producers need: records the API returns, functions that start a run) in the folder's
//! `mod.rs`, its handler in `worker.rs` beside the helpers only it uses (the PDF renderer, the
//! ledger writer, the mailer, the CSV reader). Each `worker.rs` also says how its worker runs
//! (`options`) and what it needs (`deps`); `crate::process::work` starts one per queue.
//!
//! The queue engine (`crate::queue`) knows nothing of kinds: it moves named jobs. This module
//! sits above it and the domain rules; the HTTP API and the process wiring sit above this one.

pub mod emails;
pub mod forecasts;
pub mod imports;
pub mod invoices;
pub mod queues;
pub mod stock;
pub mod webhooks;

pub use queues::Queue;

use crate::config::Settings;
use crate::outbox::OutboxJob;
use crate::queue::{JobError, JobMeta, NewJob, Pushed, Queues, WorkerOptions};
use apalis::prelude::Data;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::time::Duration;
use uuid::Uuid;

/// The single declaration of a job kind, implemented by its payload type.
pub trait JobKind: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The queue its jobs wait in.
    const QUEUE: Queue;
    /// Runs before the job is dead (a retryable failure on the last one kills it).
    const MAX_ATTEMPTS: u32;
    /// The longest one run may take; past it the run is stopped and retried.
    const TIMEOUT: Duration;

    /// The kind's name as stored with each job (a payload enum names its variant).
    fn kind(&self) -> &'static str;

    /// The tenant whose work this is (`None` for the platform's own jobs).
    fn tenant(&self) -> Option<Uuid>;
}

/// One job of kind `K`, ready to enqueue: the payload with its kind, tenant and attempts, and
/// optionally an idempotency key and a start time.
pub struct Enqueue<K> {
    job: NewJob,
    kind: PhantomData<fn() -> K>,
}

impl<K: JobKind> Enqueue<K> {
    pub fn new(payload: &K) -> Self {
        let mut job = NewJob::new(payload.kind(), payload).max_attempts(K::MAX_ATTEMPTS);
        if let Some(tenant) = payload.tenant() {
            job = job.tenant(tenant);
        }
        Enqueue {
            job,
            kind: PhantomData,
        }
    }

    /// Enqueues with this key (scoped by kind) at most once within the idempotency window.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.job = self.job.idempotency_key(key);
        self
    }

    /// At most `n` attempts instead of the kind's `MAX_ATTEMPTS`.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.job = self.job.max_attempts(n);
        self
    }

    /// The engine's job (to hand to it as a group's follow-up).
    pub fn into_new_job(self) -> NewJob {
        self.job
    }

    /// Counts the job in `group` (see [`crate::queue::GroupSpec`]).
    pub fn in_group(mut self, group: Uuid) -> Self {
        self.job = self.job.in_group(group);
        self
    }

    /// Not before `at`.
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.job = self.job.run_at(at);
        self
    }
}

/// Pushes jobs of one kind onto its queue, in order; returns their ids (or the first job's id
/// for a repeated key).
pub async fn enqueue<K: JobKind>(
    queues: &Queues,
    jobs: impl IntoIterator<Item = Enqueue<K>>,
) -> redis::RedisResult<Vec<Pushed>> {
    let jobs: Vec<NewJob> = jobs.into_iter().map(|e| e.job).collect();
    queues.push(&K::QUEUE.id(), jobs).await
}

/// Why [`enqueue_or_undo`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// Redis refused the push (the row was removed).
    #[error(transparent)]
    Queue(#[from] redis::RedisError),
    /// Removing the row failed too.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Enqueues the job of a row the caller has just committed (an email, an upload, a forecast
/// run) and returns its id; if Redis refuses, runs `undo` (removing the row) so that nothing is
/// half-accepted, and fails.
pub async fn enqueue_or_undo<'q, K: JobKind>(
    queues: &Queues,
    db: &sqlx::PgPool,
    job: Enqueue<K>,
    undo: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<String, EnqueueError> {
    match enqueue(queues, [job]).await {
        Ok(mut pushed) => Ok(pushed.remove(0).id),
        Err(e) => {
            undo.execute(db).await?;
            Err(e.into())
        }
    }
}

/// A job of kind `K` to write into the outbox inside the caller's transaction (it is enqueued
/// once the transaction commits); `key` names it uniquely, for the relay's dedupe.
pub fn outbox_job<K: JobKind>(payload: &K, key: impl Into<String>) -> OutboxJob {
    OutboxJob {
        queue: K::QUEUE.name(),
        kind: payload.kind(),
        tenant: payload.tenant(),
        payload: serde_json::to_value(payload).expect("job payloads serialize"),
        max_attempts: K::MAX_ATTEMPTS,
        idempotency_key: key.into(),
        job_id: crate::queue::JobId::new(&K::QUEUE.id()),
        depends_on: vec![],
        group: None,
        trace: crate::telemetry::traces::current_traceparent(),
    }
}

/// What a kind's worker is built from: the process's connections and settings.
pub struct WorkerContext<'a> {
    pub db: &'a sqlx::PgPool,
    pub queues: &'a Queues,
    pub settings: &'a Settings,
}

/// A worker's options for kind `K`: its queue and timeout, `concurrency` jobs at once, twice
/// that fetched ahead. A kind's `worker::options` starts from this.
pub fn worker_options<K: JobKind>(concurrency: usize) -> WorkerOptions {
    let mut options = WorkerOptions::new(K::QUEUE.id());
    options.concurrency = concurrency;
    options.prefetch = concurrency * 2;
    options.job_timeout = K::TIMEOUT;
    options
}

/// Runs one job of kind `K` in this process, outside any queue: `handle` (a kind's
/// `worker::handle`) on `payload` with `deps` (from its `worker::deps`), as delivery `attempt`.
/// For tests, as Oban's `perform_job`: one kind's handler against the real database.
pub async fn perform<K, D, F, Fut>(
    handle: F,
    payload: K,
    deps: D,
    attempt: u32,
) -> Result<serde_json::Value, JobError>
where
    K: JobKind,
    F: FnOnce(K, Data<JobMeta>, Data<D>) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, JobError>>,
{
    let meta = JobMeta::outside_queue(
        crate::queue::JobId::new(&K::QUEUE.id()).to_string(),
        K::QUEUE.name(),
        payload.kind(),
        payload.tenant(),
        attempt,
        K::MAX_ATTEMPTS,
    );
    perform_as(handle, payload, deps, meta).await
}

/// Like [`perform`], as the delivery `meta` describes (a given job id and attempt: a job
/// delivered again).
pub async fn perform_as<K, D, F, Fut>(
    handle: F,
    payload: K,
    deps: D,
    meta: JobMeta,
) -> Result<serde_json::Value, JobError>
where
    K: JobKind,
    F: FnOnce(K, Data<JobMeta>, Data<D>) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, JobError>>,
{
    handle(payload, Data(meta), Data(deps)).await
}
