//! The queue engine: backroom's own Redis backend for apalis workers.
//!
//! apalis 1.0 is the worker runtime (workers, concurrency, graceful shutdown); this module is the
//! storage underneath it. apalis-redis 1.0.0 was measured unfit (duplicate runs when a prefetched
//! batch outlives its heartbeat, a Lua `unpack` that kills every worker at ~8,000 due jobs, O(backlog)
//! `LREM` fetches, heartbeat-paced idle pickup, no retention, no Redis Cluster), so we keep its
//! role and replace its data layout.
//!
//! # Layout (per queue, every key under the hash tag `{<namespace>:<queue>}`)
//! - `…:ready:<tenant>` — a list per tenant of its jobs that are due, oldest first; `…:ring` —
//!   the tenants with jobs waiting, in round-robin order; `…:waiting` — how many wait in all.
//! - `…:stream` — a Redis Stream of delivered jobs (entries carry only the job id) with one
//!   consumer group, `workers`. Each fetch moves a fair share of every waiting tenant's jobs into
//!   it and takes them with `XREADGROUP`; the group's pending entries list (PEL) is the set of
//!   leased jobs, with each entry's owner and idle time.
//! - `…:wake` — a one-entry stream appended to whenever jobs become ready, for idle fetchers.
//! - `…:job:<id>` — a hash per job: payload, kind, tenant, status, attempts, max_attempts,
//!   timestamps, result, last error and the error history, the owning worker and its entry.
//! - `…:scheduled`, `…:retry` — sorted sets by due time; a bounded Lua call moves due jobs into the
//!   stream (100 ms cadence, 1,000 per call, so 20,000 jobs due at once are 20 short calls).
//! - `…:succeeded`, `…:failed`, `…:dead` — sorted sets by finish time. Finished job hashes carry a
//!   `PEXPIRE` (24 h succeeded, 7 days failed/dead by default) and the sets are trimmed with
//!   `ZREMRANGEBYSCORE`, so retention never scans and Redis memory stays flat under steady load.
//! - `…:idem:<key>` — idempotent enqueue: the first job id, always with a retention window.
//! - `…:paused`, `…:workers` (heartbeats), `…:worker:<id>` (identity), `…:stats:<minute>`
//!   (succeeded/failed per minute for the dashboard chart).
//! - `…:held`, `…:cancelled`, `…:children:<id>`, `…:parents:<id>`, `…:settle`, `…:linking` —
//!   jobs that wait for other jobs and the edges between them ([`client::deps`] has the design:
//!   each half of an edge lives in its own job's queue, so nothing spans two Cluster slots).
//! - `{<namespace>:group:<id>}:meta`, `…:members` — a group of jobs of any queues under a hash
//!   tag of its own: counts by outcome, state, follow-up; its members note their outcomes there
//!   as children learn of parents ([`client::groups`]).
//!
//! # Delivery
//! - **At least once, nothing lost.** A job leaves Redis only when its outcome is recorded. A
//!   worker that dies keeps its PEL entries; any live worker's `XAUTOCLAIM` takes them over once
//!   they sit idle longer than the lease (30 s by default), as many at a time as its prefetch
//!   buffer has room for, and again at once while there are more (every lease/4 otherwise). A
//!   worker of the same machine takes a dead neighbour's jobs over at once, without waiting for
//!   the lease: each worker's heartbeat records its pid and the kernel's boot id, and a process of
//!   the same host and boot whose pid is gone from `/proc` is dead (a restart after a kill, as
//!   Sidekiq Enterprise's super_fetch does). Every process start is a new consumer name:
//!   `host-pid-random`.
//! - **A worker holds what it can finish soon.** It takes no more jobs (running, prefetched,
//!   reclaimed) than it finishes in a quarter of a lease at its measured pace, never fewer than it
//!   runs at once, never more than its concurrency plus prefetch: a slow worker leaves the backlog
//!   in the queue for the others, and a worker that dies or freezes strands little.
//! - **Fenced.** A job is started only while its worker still owns it
//!   ([`JobMeta::still_owned`]): a worker frozen past its lease finds, when it thaws, that its
//!   prefetched jobs are another's and starts none of them; the email worker asks again right
//!   before the SMTP send.
//! - **No duplicates among live workers.** A worker refreshes the lease (`XCLAIM … JUSTID`, which
//!   resets idle time) of every job it holds — running *and* prefetched — every lease/3, so a
//!   live worker's jobs are never idle long enough to be reclaimed, however long the job. Outcomes
//!   are recorded only by the job's current owner; a worker that stalled past its lease finds its
//!   report ignored and the job with its new owner.
//! - **Fair across tenants.** One tenant's flood cannot starve another's jobs: a fetch of `n`
//!   jobs goes round the tenants that have jobs waiting and gives each an equal share of `n`
//!   (one tenant alone gets all of it), so a job of a quiet tenant waits for at most about one
//!   prefetch buffer of the busy tenant's jobs, not for its whole backlog.
//! - **Fast idle pickup.** When nothing is waiting the fetcher blocks in `XREAD BLOCK` on the
//!   wake-up stream, on its own connection, from the id the empty fetch saw, so it wakes the
//!   moment a job is made ready (no polling, no missed wake-up between the fetch and the wait).
//! - **Backlog-proof.** A fetch is one Lua call doing O(1) work per job and per waiting tenant
//!   it visits; an ack is `XACK` + `XDEL`. Nothing is O(backlog). (Cancelling or discarding one
//!   queued job is O(its tenant's list): an admin action on one job.)
//! - **Batching is the lever.** Fetches, acks (`COMPLETE`) and pushes each move many jobs per
//!   round trip; acks are coalesced from all finished jobs while the previous call runs.
//!
//! - **A reclaim is reported only when it happened.** A heartbeat that finds a held job no longer
//!   its own warns "reclaimed by another worker" only when another worker holds it; a job that no
//!   worker holds (most often one this worker's own ack finished while the heartbeat was on its
//!   way) is let go quietly.
//!
//! # What a Redis crash costs, by persistence setting
//! Every job's state lives in Redis, so what survives a crash of Redis is what its persistence
//! kept. Handlers are idempotent (the ledger's idempotency keys, the email log's claims, invoice
//! numbers assigned once), so a job that runs again changes nothing twice.
//! - **AOF, `appendfsync always`** (the fault tests' setting): every write is on disk before it is
//!   answered. Nothing acknowledged is lost; jobs that were running come back after their lease
//!   and may run again.
//! - **AOF, `appendfsync everysec`** (Redis's default for AOF): up to about a second of writes is
//!   lost. Jobs pushed in that second vanish (a direct `202` with them; work relayed from the
//!   outbox in that second too, as its rows are already marked relayed); outcomes recorded in that
//!   second are forgotten, so those jobs run again; idempotency keys of that second are forgotten,
//!   so a repeated key may enqueue again (the ledger still moves stock once).
//! - **No persistence:** everything waiting, scheduled, retrying or finished is gone, with the
//!   idempotency keys; only work still in the outbox is relayed again. Not for production.
//!
//! # Failure handling
//! Handlers return [`JobError`]: `retry` (transient: database, SMTP, network) goes to the retry
//! set with exponential backoff and full jitter until `max_attempts`, then to the dead set;
//! `permanent` ends the job as `failed` with its reason. A payload that does not decode, a
//! panic, and a job whose workers keep dying are dead at once, with the reason, and never take a
//! worker down. A job that outlives its timeout is a retryable failure.

mod backend;
pub mod cancel;
mod client;
mod job;
mod keys;
pub mod metrics;
mod scripts;

pub use backend::{Hook, OutcomeHook, RedisBackend, WorkerHandle, WorkerOptions};
pub use client::{
    ActionOutcome, JobRecord, JobStatus, LimitChange, ListedJobs, NewJob, ParentFailure, Pushed,
    QueueCounts, Queues, TenantQueueState, TenantRules, WorkerInfo,
    groups::{GroupHook, GroupSpec, GroupState, GroupView},
    history::{FinishedJob, HISTORY_CAP, HistoryBatch},
};
pub use job::{JobError, JobMeta};
pub use keys::{JobSet, QueueKeys};

use std::time::Duration;

/// A queue's name: lower-case letters and `-`. The engine serves any queue; which queues exist
/// is the job kinds' business (`crate::jobs::Queue`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueName(String);

impl QueueName {
    /// `None` unless `raw` is a well-formed name.
    pub fn parse(raw: &str) -> Option<Self> {
        (!raw.is_empty()
            && raw.len() <= 64
            && raw.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .then(|| QueueName(raw.to_string()))
    }

    /// A name known to be well-formed (tests and benchmarks with a queue of their own).
    pub fn custom(raw: &str) -> Self {
        Self::parse(raw).expect("queue names are a-z and '-'")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Timing and retention of the queues. Defaults suit production; tests shorten them.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// A job held by a worker that stops heartbeating is reclaimed after this long.
    pub lease: Duration,
    pub succeeded_retention: Duration,
    pub dead_retention: Duration,
    /// How long an idempotency key maps to its first job.
    pub idempotency_retention: Duration,
    /// First retry delay; doubles per attempt up to `retry_cap`, with full jitter.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// The time the scripts are given (shifted forward in tests).
    pub clock: crate::clock::Clock,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            succeeded_retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_retention: Duration::from_secs(24 * 3600),
            retry_base: Duration::from_secs(2),
            retry_cap: Duration::from_secs(3600),
            clock: crate::clock::Clock::default(),
        }
    }
}

/// A job id: `<queue>_<uuid v7>`, so the id alone finds its queue and ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    pub fn new(queue: &QueueName) -> Self {
        JobId(format!("{}_{}", queue, uuid::Uuid::now_v7().simple()))
    }

    /// Parses an id from the outside; `None` for anything that is not a job id of a known shape.
    pub fn parse(raw: &str) -> Option<(QueueName, JobId)> {
        let (queue, rest) = raw.split_once('_')?;
        let queue_ok =
            !queue.is_empty() && queue.chars().all(|c| c.is_ascii_lowercase() || c == '-');
        let rest_ok = rest.len() == 32 && rest.chars().all(|c| c.is_ascii_hexdigit());
        (queue_ok && rest_ok).then(|| (QueueName(queue.to_string()), JobId(raw.to_string())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_carry_their_queue() {
        let q = QueueName::parse("stock").unwrap();
        let id = JobId::new(&q);
        let (queue, parsed) = JobId::parse(id.as_str()).unwrap();
        assert_eq!(queue, q);
        assert_eq!(parsed, id);
        for bad in ["", "stock", "stock_", "stock_xyz", "Stock_0193", "../x_00"] {
            assert!(JobId::parse(bad).is_none(), "{bad:?}");
        }
        for bad in ["", "Stock", "a_b", "../x"] {
            assert!(QueueName::parse(bad).is_none(), "{bad:?}");
        }
    }
}
