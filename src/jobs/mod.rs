//! Job kinds behind one typed contract.
//!
//! A kind is declared once, with its payload type, by implementing [`JobKind`]: its queue, its
//! name, how many attempts it gets, how long one run may take, and whose work it is. Everything
//! else reads those facts from here: producers enqueue a payload (directly with [`enqueue`], or
//! inside a database transaction with [`outbox_job`]), so no call site names a queue or a kind in
//! a string; the workers take their timeouts from it; and [`Queue::ALL`] is the one list of
//! queues that `--queues`, the dashboard, metrics, retention and the tenants' rules iterate.
//!
//! The queue engine (`crate::queue`) knows nothing of kinds: it moves named jobs. This module
//! sits above it; the HTTP API and the workers sit above this one.

use crate::outbox::OutboxJob;
use crate::queue::{NewJob, Pushed, QueueName, Queues};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::time::Duration;
use uuid::Uuid;

/// The queues, one list. Adding a queue here makes every `match` over it (the workers') fail to
/// compile until the queue is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    Stock,
    Invoices,
    Emails,
    Forecasts,
    Imports,
}

impl Queue {
    pub const ALL: [Queue; 5] = [
        Queue::Stock,
        Queue::Invoices,
        Queue::Emails,
        Queue::Forecasts,
        Queue::Imports,
    ];

    /// The queue's name in the API, in Redis keys and in job ids.
    pub const fn name(self) -> &'static str {
        match self {
            Queue::Stock => "stock",
            Queue::Invoices => "invoices",
            Queue::Emails => "emails",
            Queue::Forecasts => "forecasts",
            Queue::Imports => "imports",
        }
    }

    pub fn parse(raw: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|q| q.name() == raw)
    }

    /// The engine's handle on this queue.
    pub fn id(self) -> QueueName {
        QueueName::parse(self.name()).expect("every queue's name is well-formed")
    }

    /// Every queue's name, comma-separated (for messages that list them).
    pub fn names() -> String {
        Queue::ALL.map(Queue::name).join(", ")
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_parses_back_from_its_name_and_names_are_unique() {
        for q in Queue::ALL {
            assert_eq!(Queue::parse(q.name()), Some(q));
            assert_eq!(q.id().as_str(), q.name());
        }
        let names: std::collections::HashSet<_> = Queue::ALL.map(Queue::name).into();
        assert_eq!(names.len(), Queue::ALL.len());
        assert_eq!(Queue::parse("nope"), None);
        assert_eq!(
            Queue::names(),
            "stock, invoices, emails, forecasts, imports"
        );
    }
}
