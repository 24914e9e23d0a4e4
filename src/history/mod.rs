//! The job history: every finished job (succeeded, failed, dead, cancelled) copied from Redis
//! into Postgres's `job_history`, so that it outlives Redis's retention (24 h for succeeded jobs,
//! 7 days for the rest) and can be read and searched later.
//!
//! Exact and cheap for the queue: the scripts that finish jobs append their ids to the queue's
//! `:history` list (one more call inside a script that already runs, and only while a copier
//! keeps the list on). One copier per queue at a time, holding a lease in Redis, reads up to
//! [`BATCH`] of them, inserts them in one statement (a repeat is ignored: a row's key is the job
//! and its finish time), then drops them from the list, checking it still holds the lease and
//! the list still starts where it read. A copier that dies between inserting and dropping leaves
//! the batch for the next one, which stores nothing twice.
//!
//! Copying yields to the queue: while jobs wait to run (the queue is draining), a copier works at
//! most a tenth of the time (after a batch that took `t`, it rests `9t`, at most 2 s), so the
//! drain keeps its CPU; once nothing waits, it copies flat out and catches up. Should a queue
//! stay saturated for so long that a million finished jobs wait, newer ones are not kept.
//!
//! The table is partitioned by week of `finished_at` (from Monday, UTC); the copier creates each
//! week's partition when it first needs it, and [`prune`] drops the weeks entirely older than
//! `BACKROOM_JOB_HISTORY_DAYS` (whole tables: no row-by-row delete). The history a tenant can leave is bounded by what its
//! jobs are (every job is bounded in size) and by that retention.

pub mod live;
pub mod search;
pub mod stats;

use crate::queue::{FinishedJob, QueueName, Queues};
use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// Finished jobs copied per round and queue.
pub const BATCH: usize = 1000;
/// How long a copier's lease on a queue lasts without being renewed.
const LEASE: Duration = Duration::from_secs(30);
/// How often old partitions are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// While its queue drains, a copier rests this many times as long as each batch took.
const REST_FACTOR: u32 = 9;
const MAX_REST: Duration = Duration::from_secs(2);

/// Copies `queues`' finished jobs into Postgres until `stop`, dropping days older than
/// `keep_days`. Every `work` process runs one for the queues it works; the lease makes one of
/// them copy each queue at a time.
pub async fn run_copier(
    db: PgPool,
    queues: Queues,
    names: Vec<QueueName>,
    keep_days: u32,
    mut stop: watch::Receiver<bool>,
) {
    let owner = format!("copier-{}-{}", std::process::id(), Uuid::new_v4().simple());
    let mut partitions = Partitions::default();
    let mut failures = 0u32;
    let mut last_prune: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut full = false;
        let mut rest = Duration::ZERO;
        for queue in &names {
            let started = Instant::now();
            match copy_once(&db, &queues, queue, &owner, &mut partitions).await {
                Ok(n) => {
                    full |= n == BATCH;
                    failures = 0;
                    if n > 0 && queues.waiting_to_run(queue).await.unwrap_or(0) > 0 {
                        rest = rest.max((started.elapsed() * REST_FACTOR).min(MAX_REST));
                    }
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(queue = %queue, error = format!("{e:#}"),
                            "job history copy failed; the jobs wait in Redis and will be copied");
                    }
                    failures += 1;
                }
            }
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            if let Err(e) = stats::prune(&db, keep_days, Utc::now()).await {
                tracing::warn!(error = %e, "could not drop old job counts");
            }
            match prune(&db, keep_days, Utc::now().date_naive()).await {
                Ok(dropped) if !dropped.is_empty() => {
                    tracing::info!(?dropped, "old job history dropped");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not drop old job history"),
            }
        }
        if !full || !rest.is_zero() {
            let pause = if failures > 0 {
                Duration::from_secs(2)
            } else if full {
                rest
            } else {
                rest.max(Duration::from_millis(500))
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// One round for one queue: returns how many ids it took off the list (0 when another copier
/// holds the lease or nothing waits).
pub async fn copy_once(
    db: &PgPool,
    queues: &Queues,
    queue: &QueueName,
    owner: &str,
    partitions: &mut Partitions,
) -> anyhow::Result<usize> {
    if !queues.history_lease(queue, owner, LEASE).await? {
        return Ok(0);
    }
    let batch = queues.history_peek(queue, BATCH).await?;
    if batch.read == 0 {
        return Ok(0);
    }
    store(db, &batch.jobs, partitions).await?;
    if !queues.history_drop(queue, owner, &batch).await? {
        // The lease moved on; the next holder copies (and skips) the same ids.
        return Ok(0);
    }
    metrics::counter!("backroom_job_history_copied_total", "queue" => queue.to_string())
        .increment(batch.jobs.len() as u64);
    Ok(batch.read)
}

/// The days whose partition this process knows exists.
#[derive(Default)]
pub struct Partitions(HashSet<NaiveDate>);

/// Inserts finished jobs and adds them to the counts (`stats`), in one transaction; a job
/// already stored with the same finish time is skipped. JSON arrives as text and becomes `jsonb`
/// in Postgres (nothing is parsed here only to be written). Returns how many were new.
pub async fn store(
    db: &PgPool,
    jobs: &[FinishedJob],
    partitions: &mut Partitions,
) -> sqlx::Result<u64> {
    for week in jobs.iter().map(|j| week_of(j.finished_at.date_naive())) {
        if !partitions.0.contains(&week) {
            create_partition(db, week).await?;
            partitions.0.insert(week);
        }
    }
    macro_rules! column {
        ($field:ident) => {
            jobs.iter().map(|j| j.$field.clone()).collect::<Vec<_>>()
        };
    }
    let statuses: Vec<&str> = jobs.iter().map(|j| j.status.as_str()).collect();
    let mut tx = db.begin().await?;
    let stored = sqlx::query_as!(
        stats::Stored,
        "INSERT INTO job_history
           (id, queue, kind, tenant_id, status, attempts, max_attempts, payload, result,
            last_error, errors, idempotency_key, group_id, created_at, started_at, finished_at)
         SELECT id, queue, kind, tenant_id, status, attempts, max_attempts, payload::jsonb,
                result::jsonb, last_error, errors::jsonb, idempotency_key, group_id, created_at,
                started_at, finished_at
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::int4[],
                     $7::int4[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                     $13::uuid[], $14::timestamptz[], $15::timestamptz[], $16::timestamptz[])
              AS j(id, queue, kind, tenant_id, status, attempts, max_attempts, payload, result,
                   last_error, errors, idempotency_key, group_id, created_at, started_at,
                   finished_at)
         ON CONFLICT DO NOTHING
         RETURNING queue, tenant_id, status, created_at, started_at, finished_at",
        &column!(id),
        &column!(queue),
        &column!(kind),
        &column!(tenant) as &[Option<Uuid>],
        &statuses as &[&str],
        &column!(attempts),
        &column!(max_attempts),
        &column!(payload),
        &column!(result) as &[Option<String>],
        &column!(last_error) as &[Option<String>],
        &column!(errors),
        &column!(idempotency_key) as &[Option<String>],
        &column!(group) as &[Option<Uuid>],
        &column!(created_at),
        &column!(started_at) as &[Option<DateTime<Utc>>],
        &column!(finished_at)
    )
    .fetch_all(&mut *tx)
    .await?;
    // Only the jobs stored now are counted: a batch stored twice counts once.
    stats::add(&mut tx, &stored).await?;
    tx.commit().await?;
    Ok(stored.len() as u64)
}

/// The Monday that starts `day`'s week: partitions hold a week each (a search without a time
/// bound visits every partition's indexes, so fewer and larger ones are faster to search).
fn week_of(day: NaiveDate) -> NaiveDate {
    day - TimeDelta::days(i64::from(day.weekday().num_days_from_monday()))
}

fn partition_name(week: NaiveDate) -> String {
    format!("job_history_{}", week.format("%Y%m%d"))
}

/// Creates the partition of `day`'s week (UTC, from Monday) unless it exists; creators take
/// turns.
pub async fn create_partition(db: &PgPool, day: NaiveDate) -> sqlx::Result<()> {
    let day = week_of(day);
    let next = day + TimeDelta::days(7);
    let mut tx = db.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('job_history_partitions'))")
        .execute(&mut *tx)
        .await?;
    // Names and bounds come from a date, never from input.
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF job_history \
         FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
        partition_name(day)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Drops the partitions whose every day is before `today - keep_days`; returns their names.
pub async fn prune(db: &PgPool, keep_days: u32, today: NaiveDate) -> sqlx::Result<Vec<String>> {
    let oldest_kept = today - TimeDelta::days(i64::from(keep_days));
    let names = sqlx::query_scalar!(
        r#"SELECT c.relname AS "name!"
           FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
           WHERE p.relname = 'job_history'"#
    )
    .fetch_all(db)
    .await?;
    let mut dropped = vec![];
    for name in names {
        let day = name
            .strip_prefix("job_history_")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok());
        if let Some(day) = day
            && day + TimeDelta::days(7) <= oldest_kept
        {
            let ddl = format!("DROP TABLE IF EXISTS {}", partition_name(day));
            sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(db).await?;
            dropped.push(name);
        }
    }
    Ok(dropped)
}
