//! What a job handler sees (its [`JobMeta`]) and how it reports failure ([`JobError`]).

use std::time::Duration;

/// A job's identity and delivery facts, given to its handler as apalis task data
/// (`apalis::prelude::Data<JobMeta>`).
#[derive(Debug, Clone)]
pub struct JobMeta {
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// The tenant the job works for; `None` for system jobs.
    pub tenant: Option<uuid::Uuid>,
    /// 1 on the first run.
    pub attempt: u32,
    pub max_attempts: u32,
    /// When the job was accepted (ms since the epoch).
    pub created_at_ms: i64,
    /// The W3C `traceparent` its runs continue (`None` when it was enqueued outside any trace).
    pub trace: Option<String>,
    /// The stream entry this delivery came from: the lease.
    pub(crate) entry: String,
    /// How to tell whether this worker still owns the job (`None` outside a queue worker).
    pub(crate) lease: Option<super::backend::Lease>,
}

impl JobMeta {
    /// A job's facts outside any queue worker (for `jobs::perform` and tests); created now.
    pub fn outside_queue(
        id: impl Into<String>,
        queue: &str,
        kind: &str,
        tenant: Option<uuid::Uuid>,
        attempt: u32,
        max_attempts: u32,
    ) -> Self {
        JobMeta {
            id: id.into(),
            queue: queue.to_string(),
            kind: kind.to_string(),
            tenant,
            attempt,
            max_attempts,
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            trace: None,
            entry: String::new(),
            lease: None,
        }
    }

    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The worker process running this delivery, as a name to store with what it claims
    /// (`None` outside a queue worker).
    pub fn process_name(&self) -> Option<String> {
        self.lease.as_ref().map(|lease| lease.process_name())
    }

    /// Whether the worker process `name` (a [`JobMeta::process_name`] stored earlier) is known to
    /// be gone: it ran on this machine, in this boot, and its pid is no more. False when that
    /// cannot be known (another machine: it may be frozen rather than dead).
    pub fn process_is_gone(&self, name: &str) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|lease| lease.process_is_gone(name))
    }

    /// Whether this worker still owns the job: false once another worker has reclaimed it (after
    /// this one stalled past its lease, frozen or cut off). A handler about to do what must not
    /// happen twice (send an email) asks right before; the worker asks before starting each
    /// job. Cheap while the worker's heartbeats are on time (a local check); after a stall it
    /// asks Redis. When Redis cannot answer, it says true: delivery stays at least once.
    pub async fn still_owned(&self) -> bool {
        match &self.lease {
            None => true,
            Some(lease) => lease.still_owned(&self.id, &self.entry).await,
        }
    }
}

/// How a job failed. Handlers sort failures explicitly: `retry` for what may work later
/// (database, SMTP, network), `permanent` for what never will (bad data, business rules).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again later: after `after`, or after the queue's exponential backoff.
    #[error("{message}")]
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// Stop for good: the job ends `failed` with this reason.
    #[error("{message}")]
    Permanent { message: String },
}

impl JobError {
    pub fn retry(message: impl std::fmt::Display) -> Self {
        JobError::Retry {
            message: message.to_string(),
            after: None,
        }
    }

    pub fn retry_after(message: impl std::fmt::Display, after: Duration) -> Self {
        JobError::Retry {
            message: message.to_string(),
            after: Some(after),
        }
    }

    pub fn permanent(message: impl std::fmt::Display) -> Self {
        JobError::Permanent {
            message: message.to_string(),
        }
    }
}

/// Unclassified errors (I/O, database) are transient: retried, then dead when attempts run out.
impl From<anyhow::Error> for JobError {
    fn from(e: anyhow::Error) -> Self {
        JobError::retry(format!("{e:#}"))
    }
}

/// Database and Redis errors are the platform's, not the tenant's: the job keeps a plain
/// reason (which a tenant reads from `GET /v1/jobs/{id}`), and the error itself is logged in the
/// job's span, with its id.
impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "a job's database call failed");
        JobError::retry("the database was unavailable or refused a statement (logged); retrying")
    }
}

impl From<redis::RedisError> for JobError {
    fn from(e: redis::RedisError) -> Self {
        tracing::warn!(error = %e, "a job's Redis call failed");
        JobError::retry("the queue's Redis was unavailable (logged); retrying")
    }
}
