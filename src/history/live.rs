//! The live side of a search: jobs still in Redis and not finished (queued, waiting, scheduled,
//! running, retrying), matched by the same terms as the history. Redis keeps no index over
//! payloads or errors, so a search reads at most [`LIVE_SCAN`] jobs of each queue and state
//! (those next to run) and says whether that was all of them. A queue that keeps up holds few
//! live jobs; the history holds the rest, indexed.

use super::search::{Query, Term};
use crate::config::RateLimit;
use crate::jobs::Queue;
use crate::queue::{JobRecord, JobStatus, Queues};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// The most jobs read per queue and state by one admin search.
pub const LIVE_SCAN: usize = 500;
/// The same for a tenant's own list: Redis's CPU is every tenant's, so one tenant's reads are
/// kept smaller (its queued jobs are read from its own ready list, exactly).
pub const TENANT_SCAN: usize = 100;
/// How often one tenant's list may scan the states that hold every tenant's jobs (running,
/// retrying, scheduled, waiting), across all API processes; between scans its list shows its
/// queued jobs only, marked incomplete. A tenant polling its list in a loop costs Redis at most
/// this, whatever its request rate.
pub const TENANT_SCANS: RateLimit = RateLimit {
    per_second: 2,
    burst: 10,
};
/// The most live matches returned.
pub const LIVE_SHOWN: usize = 50;

/// The states a job is live in (not finished; the history holds the others).
pub const LIVE_STATES: [JobStatus; 5] = [
    JobStatus::Running,
    JobStatus::Retrying,
    JobStatus::Queued,
    JobStatus::Scheduled,
    JobStatus::Waiting,
];

/// A job that has not finished, as searches show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveJob {
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// The tenant's slug.
    pub tenant: Option<String>,
    /// queued, waiting, scheduled, running or retrying.
    pub status: String,
    pub attempts: u32,
    pub payload: Value,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it is due (scheduled and retrying jobs).
    pub run_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
}

/// Live jobs matching a query, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveMatches {
    /// At most [`LIVE_SHOWN`].
    pub jobs: Vec<LiveJob>,
    /// Live jobs read.
    pub scanned: usize,
    /// Whether every live job was read (false: some queue or state held more than were read,
    /// or more matched than are shown; narrow the query or wait for the history).
    pub complete: bool,
}

/// What a live search read and found: at most [`LIVE_SHOWN`] jobs, newest first.
pub struct Scan {
    pub jobs: Vec<JobRecord>,
    pub scanned: usize,
    pub complete: bool,
}

impl Scan {
    /// The matches as shown, tenants named by `slugs`.
    pub fn shown(self, slugs: &HashMap<Uuid, String>) -> LiveMatches {
        let jobs = self
            .jobs
            .into_iter()
            .map(|j| LiveJob {
                tenant: j.tenant.and_then(|t| slugs.get(&t).cloned()),
                status: j.status.as_str().to_string(),
                id: j.id,
                queue: j.queue,
                kind: j.kind,
                attempts: j.attempts,
                payload: j.payload,
                last_error: j.last_error,
                created_at: j.created_at,
                run_at: j.run_at,
                started_at: j.started_at,
            })
            .collect();
        LiveMatches {
            jobs,
            scanned: self.scanned,
            complete: self.complete,
        }
    }
}

/// Live jobs matching `query`, reading at most `scan` jobs per queue and state; `tenants` gives
/// the ids of the slugs its `tenant:` terms name. Without `shared_states`, only one tenant's
/// queued jobs are read (its own lists) and the result is incomplete.
pub async fn search(
    queues: &Queues,
    query: &Query,
    tenants: &HashMap<String, Uuid>,
    scan: usize,
    shared_states: bool,
) -> redis::RedisResult<Scan> {
    // One tenant's queued jobs are in its own ready list: read that, not the ring of all.
    let one_tenant = query
        .tenant_id
        .or(match query.within.as_deref() {
            Some([only]) => Some(*only),
            _ => None,
        })
        .or_else(|| {
            query.terms.iter().find_map(|t| match t {
                Term::Tenant(slug) => tenants.get(slug).copied(),
                _ => None,
            })
        });
    // An `id:` term names one job: look it up instead of scanning.
    if let Some(id) = query.terms.iter().find_map(|t| match t {
        Term::Id(id) => Some(id),
        _ => None,
    }) {
        let jobs = queues
            .get(id)
            .await?
            .filter(|job| LIVE_STATES.contains(&job.status) && matches(query, job, tenants));
        return Ok(Scan {
            scanned: usize::from(jobs.is_some()),
            jobs: jobs.into_iter().collect(),
            complete: true,
        });
    }
    let mut jobs = vec![];
    let mut scanned = 0;
    let mut complete = true;
    for queue in Queue::ALL {
        if !query.terms.iter().all(|t| queue_may_match(t, queue.name())) {
            continue;
        }
        // A `status:` term reads only the state it names.
        let wanted = |status: JobStatus| {
            query
                .terms
                .iter()
                .all(|t| !matches!(t, Term::Status(s) if s != status.as_str()))
        };
        for status in LIVE_STATES.into_iter().filter(|s| wanted(*s)) {
            let listed = match (status, one_tenant) {
                (JobStatus::Queued, Some(t)) => queues.queued_of(&queue.id(), t, scan).await?,
                _ if shared_states => queues.list(&queue.id(), status, scan, None).await?,
                _ => {
                    complete = false;
                    continue;
                }
            };
            complete &= listed.next_cursor.is_none();
            scanned += listed.items.len();
            jobs.extend(
                listed
                    .items
                    .into_iter()
                    .filter(|job| matches(query, job, tenants)),
            );
        }
    }
    jobs.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    complete &= jobs.len() <= LIVE_SHOWN;
    jobs.truncate(LIVE_SHOWN);
    Ok(Scan {
        jobs,
        scanned,
        complete,
    })
}

/// Whether a term leaves any job of `queue` possible (so a `queue:` or `kind:` term skips the
/// other queues without reading them).
fn queue_may_match(term: &Term, queue: &str) -> bool {
    match term {
        Term::Queue(q) => q == queue,
        Term::Kind(k) => k == queue || format!("{k}s") == queue || !is_queue(k),
        _ => true,
    }
}

fn is_queue(name: &str) -> bool {
    Queue::parse(name).is_some() || Queue::parse(&format!("{name}s")).is_some()
}

/// Whether a live job holds every term of `query` and the query's tenant limits (`tenants`: the
/// ids of the slugs named by `tenant:` terms).
pub fn matches(query: &Query, job: &JobRecord, tenants: &HashMap<String, Uuid>) -> bool {
    let tenant_ok = query.tenant_id.is_none_or(|t| job.tenant == Some(t))
        && query
            .within
            .as_ref()
            .is_none_or(|within| job.tenant.is_some_and(|t| within.contains(&t)));
    tenant_ok
        && query.terms.iter().all(|term| match term {
            Term::Tenant(slug) => job.tenant.is_some_and(|t| tenants.get(slug) == Some(&t)),
            Term::Queue(q) => &job.queue == q,
            Term::Kind(k) => &job.kind == k || &job.queue == k || job.queue == format!("{k}s"),
            Term::Status(s) => job.status.as_str() == s,
            Term::Id(id) => &job.id == id,
            Term::Key(key) => job.idempotency_key.as_ref() == Some(key),
            Term::Error(text) => job
                .last_error
                .as_ref()
                .is_some_and(|e| e.to_lowercase().contains(&text.to_lowercase())),
            // A live job has not finished: its times are when it was accepted.
            Term::After(t) => job.created_at >= *t,
            Term::Before(t) => job.created_at < *t,
            Term::Args(options) => options.iter().any(|o| contains(&job.payload, o)),
        })
}

/// JSON containment as Postgres's `@>` has it: objects hold the pattern's keys (recursively),
/// arrays hold each of the pattern's elements, scalars are equal.
fn contains(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(v), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| contains(vv, pv))),
        (Value::Array(v), Value::Array(p)) => {
            p.iter().all(|pv| v.iter().any(|vv| contains(vv, pv)))
        }
        (v, p) => v == p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_follows_postgres() {
        let payload = json!({"order_number": "ORD-1", "lines": [{"sku": "A", "qty": 2}], "n": 3});
        assert!(contains(&payload, &json!({"order_number": "ORD-1"})));
        assert!(contains(&payload, &json!({"lines": [{"sku": "A"}]})));
        assert!(contains(&payload, &json!({"n": 3})));
        assert!(!contains(&payload, &json!({"n": "3"})));
        assert!(!contains(&payload, &json!({"lines": [{"sku": "B"}]})));
        assert!(!contains(&payload, &json!({"missing": 1})));
    }

    #[test]
    fn a_kind_term_skips_only_the_queues_it_rules_out() {
        let invoice = Term::Kind("invoice".into());
        assert!(queue_may_match(&invoice, "invoices"));
        assert!(!queue_may_match(&invoice, "stock"));
        // A kind that is not a queue's name may be any queue's.
        assert!(queue_may_match(
            &Term::Kind("stock_adjustment".into()),
            "stock"
        ));
    }
}
