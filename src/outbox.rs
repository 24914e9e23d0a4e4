//! The transactional outbox: work decided inside a Postgres transaction (an order's invoice and
//! emails, a low-stock alert) is written as `outbox` rows in that same transaction, and the
//! relay moves committed rows to the Redis queues.
//!
//! So a committed order never misses its jobs, and a rolled-back one never runs them. The relay
//! survives Redis being down (rows wait and flow when it returns), runs in every worker process
//! at once (`FOR UPDATE SKIP LOCKED`: each row is taken by one relay), and pushes each row with
//! the idempotency key `outbox:<row key>`, so a row re-sent after a crash between the push and
//! the commit maps to the job it already created.

use crate::queue::{GroupSpec, JobId, NewJob, QueueName, Queues};
use anyhow::Context;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// A job to enqueue once the surrounding transaction commits.
#[derive(Debug, Clone)]
pub struct OutboxJob {
    pub queue: &'static str,
    pub kind: &'static str,
    pub tenant: Option<Uuid>,
    pub payload: serde_json::Value,
    pub max_attempts: u32,
    /// Unique per logical job: the relay dedupes on it.
    pub idempotency_key: String,
    /// The job's id, chosen when the row is written.
    pub job_id: JobId,
    /// Jobs this one waits for (ids of jobs already pushed or of rows of the same transaction).
    pub depends_on: Vec<String>,
    /// The group it counts in, and the group's size (see [`group`]).
    pub group: Option<(Uuid, u32)>,
    /// The W3C `traceparent` of the span that wrote it (see [`crate::telemetry::traces`]).
    pub trace: Option<String>,
}

/// Makes `jobs` one queue group with id `id` (one status for all of them: `GET /v1/groups/{id}`).
pub fn group(id: Uuid, mut jobs: Vec<OutboxJob>) -> Vec<OutboxJob> {
    let total = jobs.len() as u32;
    for job in &mut jobs {
        job.group = Some((id, total));
    }
    jobs
}

impl OutboxJob {
    /// Runs this job only once `parent` (a row of the same transaction, or a pushed job) has
    /// succeeded.
    pub fn after(mut self, parent: &OutboxJob) -> Self {
        self.depends_on.push(parent.job_id.to_string());
        self
    }
}

/// Writes jobs into the outbox inside the caller's transaction.
pub async fn add(tx: &mut PgConnection, jobs: &[OutboxJob]) -> sqlx::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let tenants: Vec<Option<Uuid>> = jobs.iter().map(|j| j.tenant).collect();
    let queues: Vec<String> = jobs.iter().map(|j| j.queue.to_string()).collect();
    let kinds: Vec<String> = jobs.iter().map(|j| j.kind.to_string()).collect();
    let payloads: Vec<serde_json::Value> = jobs.iter().map(|j| j.payload.clone()).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts as i32).collect();
    let keys: Vec<String> = jobs.iter().map(|j| j.idempotency_key.clone()).collect();
    let job_ids: Vec<String> = jobs.iter().map(|j| j.job_id.to_string()).collect();
    // Postgres arrays of arrays must be rectangular: dependencies travel as one
    // space-separated string per row (job ids have no spaces).
    let depends_on: Vec<String> = jobs.iter().map(|j| j.depends_on.join(" ")).collect();
    let groups: Vec<Option<Uuid>> = jobs.iter().map(|j| j.group.map(|g| g.0)).collect();
    let group_totals: Vec<Option<i32>> = jobs.iter().map(|j| j.group.map(|g| g.1 as i32)).collect();
    let traces: Vec<Option<String>> = jobs.iter().map(|j| j.trace.clone()).collect();
    sqlx::query!(
        r#"INSERT INTO outbox (tenant_id, queue, kind, payload, max_attempts, idempotency_key,
                               job_id, depends_on, group_id, group_total, trace)
           SELECT t, q, k, p, m, i, j, coalesce(string_to_array(NULLIF(d, ''), ' '), '{}'), g, gt, tr
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int[], $6::text[],
                       $7::text[], $8::text[], $9::uuid[], $10::int[], $11::text[])
                AS u(t, q, k, p, m, i, j, d, g, gt, tr)"#,
        &tenants as &[Option<Uuid>],
        &queues,
        &kinds,
        &payloads,
        &attempts,
        &keys,
        &job_ids,
        &depends_on,
        &groups as &[Option<Uuid>],
        &group_totals as &[Option<i32>],
        &traces as &[Option<String>]
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("SELECT pg_notify('backroom_outbox', '')")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Moves up to `limit` committed rows to Redis; returns how many moved.
pub async fn relay_once(db: &PgPool, queues: &Queues, limit: i64) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let rows = sqlx::query!(
        r#"SELECT id, tenant_id, queue, kind, payload, max_attempts, idempotency_key, job_id,
                  depends_on, group_id, group_total, trace
           FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"#,
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut job_ids = Vec::with_capacity(rows.len());
    // Rows are pushed per queue, keeping their order within each queue.
    let mut by_queue: Vec<(String, Vec<(i64, NewJob)>)> = vec![];
    let mut groups = vec![];
    // The relay of a trace's rows is a span of that trace (traces on), open until their push is
    // done; their jobs continue it. A batch request's thousand rows share one relay span.
    let mut spans = RelaySpans::default();
    for row in rows {
        let Some(queue) = QueueName::parse(&row.queue) else {
            tracing::error!(outbox_id = row.id, queue = %row.queue, "outbox row names an unknown queue; skipped");
            continue;
        };
        let trace = spans.relay(&row.queue, row.id, row.trace);
        let mut job = NewJob {
            kind: row.kind,
            tenant: row.tenant_id,
            payload: serde_json::to_vec(&row.payload)?,
            max_attempts: row.max_attempts.max(1) as u32,
            run_at: None,
            idempotency_key: None,
            // Rows written before ids were chosen up front have none: a new id then.
            id: row
                .job_id
                .as_deref()
                .and_then(JobId::parse)
                .filter(|(q, _)| *q == queue)
                .map(|(_, id)| id),
            depends_on: row.depends_on,
            on_parent_failure: Default::default(),
            // The rows of one transaction are relayed in any order, by any relay.
            parents_may_follow: true,
            group: row.group_id,
            trace,
        };
        if let (Some(id), Some(total)) = (row.group_id, row.group_total)
            && !groups.iter().any(|g: &GroupSpec| g.id == id)
        {
            groups.push(GroupSpec {
                id,
                tenant: row.tenant_id,
                total: total.max(0) as u64,
                follow_up: None,
            });
        }
        job = job.idempotency_key(format!("outbox:{}", row.idempotency_key));
        match by_queue.iter_mut().find(|(q, _)| q == queue.as_str()) {
            Some((_, jobs)) => jobs.push((row.id, job)),
            None => by_queue.push((queue.to_string(), vec![(row.id, job)])),
        }
    }
    // Groups are opened before their members are pushed (opening again changes nothing), all at
    // once: each is its own key (and Cluster slot).
    futures::future::try_join_all(groups.into_iter().map(|g| queues.open_group(g)))
        .await
        .context("while opening outbox groups in Redis")?;
    for (queue, jobs) in by_queue {
        let queue = QueueName::parse(&queue).expect("parsed above");
        let (row_ids, new_jobs): (Vec<i64>, Vec<NewJob>) = jobs.into_iter().unzip();
        let pushed = queues
            .push(&queue, new_jobs)
            .await
            .context("while relaying outbox rows to Redis")?;
        ids.extend(row_ids);
        job_ids.extend(pushed.into_iter().map(|p| p.id));
    }
    sqlx::query!(
        r#"UPDATE outbox o SET sent_at = now(), job_id = u.job_id
           FROM UNNEST($1::bigint[], $2::text[]) AS u(id, job_id) WHERE o.id = u.id"#,
        &ids,
        &job_ids
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    spans.close();
    Ok(ids.len())
}

/// The relay spans of one pass: one per trace whose rows it moves (a batch request's thousand
/// rows share one), each open until the pass is done; a row of no trace gets one of its own
/// (and so a trace of its own).
#[derive(Default)]
struct RelaySpans {
    by_trace: HashMap<String, usize>,
    /// Each span, the `traceparent` its rows' jobs carry, and how many rows it relayed.
    spans: Vec<(tracing::Span, Option<String>, u32)>,
}

impl RelaySpans {
    /// The `traceparent` the job of a row written in `trace` carries.
    fn relay(&mut self, queue: &str, outbox_id: i64, trace: Option<String>) -> Option<String> {
        if let Some(&i) = trace.as_ref().and_then(|t| self.by_trace.get(t)) {
            let (_, relayed, rows) = &mut self.spans[i];
            *rows += 1;
            return relayed.clone();
        }
        let (span, _) = crate::telemetry::traces::span_for(trace.as_deref(), || {
            tracing::info_span!(
                "outbox relay",
                outbox_id,
                queue,
                rows = 1u32,
                "otel.kind" = "producer",
                trace_id = trace
                    .as_deref()
                    .and_then(crate::telemetry::traces::trace_id_of)
            )
        });
        let relayed = crate::telemetry::traces::traceparent_of(&span).or_else(|| trace.clone());
        if let Some(trace) = trace {
            self.by_trace.insert(trace, self.spans.len());
        }
        self.spans.push((span, relayed.clone(), 1));
        relayed
    }

    /// Ends the spans, each with the count of rows it relayed.
    fn close(self) {
        for (span, _, rows) in self.spans {
            span.record("rows", rows);
        }
    }
}

/// Relays until `stop` resolves: wakes on `NOTIFY backroom_outbox` and also polls, so a missed
/// notification (or one sent while this relay was down) delays a row by at most `poll`.
pub async fn run_relay(
    db: PgPool,
    queues: Queues,
    poll: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut listener = None;
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        match relay_once(&db, &queues, 500).await {
            Ok(n) if n > 0 => {
                failures = 0;
                continue;
            }
            Ok(_) => failures = 0,
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "outbox relay failed; rows wait and will be retried"
                    );
                }
                failures += 1;
            }
        }
        if listener.is_none() {
            listener = match sqlx::postgres::PgListener::connect_with(&db).await {
                Ok(mut l) => l.listen("backroom_outbox").await.ok().map(|_| l),
                Err(_) => None,
            };
        }
        let backoff = if failures > 0 {
            Duration::from_millis((100u64 << failures.min(6)).min(5_000))
        } else {
            poll
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
            n = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            } => if n.is_err() { listener = None },
        }
    }
}

/// Deletes relayed rows older than `keep` (called by the scheduler).
pub async fn prune(db: &PgPool, keep: Duration) -> sqlx::Result<u64> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or_default();
    let done = sqlx::query!(
        "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1",
        cutoff
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
