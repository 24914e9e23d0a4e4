//! Finished jobs counted over days: per minute (kept 2 days) and per hour (kept as long as the
//! history), per queue and tenant, by outcome, with histograms of enqueue-to-start time and run
//! time. The copier adds each batch's newly stored jobs in the transaction that stores them
//! ([`add`]), so counts are exact even when a batch is stored twice; histograms add up, so an
//! hour is exactly the sum of its minutes, and percentiles are read from them (to within a
//! bucket, interpolated inside it).

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// Upper bounds of the histogram buckets, in milliseconds; one more bucket holds the rest.
pub const BOUNDS_MS: [i64; 18] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000,
    900_000, 3_600_000,
];
const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// The queue of the totals over every queue.
pub const ALL_QUEUES: &str = "*";
/// The tenant of the totals over every tenant.
pub const ALL_TENANTS: Uuid = Uuid::max();

/// How long minute counts are kept.
pub const MINUTES_KEPT: TimeDelta = TimeDelta::days(2);

fn bucket(ms: i64) -> usize {
    BOUNDS_MS
        .iter()
        .position(|b| ms < *b)
        .unwrap_or(BOUNDS_MS.len())
}

/// A job just stored in the history, as the counts need it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub queue: String,
    pub tenant_id: Option<Uuid>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
}

#[derive(Default)]
struct Cell {
    outcomes: [i64; 4],
    wait: [i64; BUCKETS],
    run: [i64; BUCKETS],
}

fn array_text(v: &[i64]) -> String {
    let parts: Vec<String> = v.iter().map(i64::to_string).collect();
    format!("{{{}}}", parts.join(","))
}

/// Adds `jobs` to the minute and hour counts, on `tx` (the transaction that stored them).
pub async fn add(tx: &mut PgConnection, jobs: &[Stored]) -> sqlx::Result<()> {
    let mut cells: HashMap<(&'static str, DateTime<Utc>, &str, Uuid), Cell> = HashMap::new();
    for job in jobs {
        let outcome = match job.status.as_str() {
            "succeeded" => 0,
            "failed" => 1,
            "dead" => 2,
            _ => 3,
        };
        for (grain, step) in [
            ("minute", TimeDelta::minutes(1)),
            ("hour", TimeDelta::hours(1)),
        ] {
            let at = job
                .finished_at
                .duration_trunc(step)
                .unwrap_or(job.finished_at);
            let tenant = job.tenant_id.unwrap_or(Uuid::nil());
            // Its own cell and the three totals it counts in.
            for (queue, tenant) in [
                (job.queue.as_str(), tenant),
                (ALL_QUEUES, tenant),
                (job.queue.as_str(), ALL_TENANTS),
                (ALL_QUEUES, ALL_TENANTS),
            ] {
                let cell = cells.entry((grain, at, queue, tenant)).or_default();
                cell.outcomes[outcome] += 1;
                if let Some(started) = job.started_at {
                    cell.wait[bucket((started - job.created_at).num_milliseconds())] += 1;
                    cell.run[bucket((job.finished_at - started).num_milliseconds())] += 1;
                }
            }
        }
    }
    if cells.is_empty() {
        return Ok(());
    }
    let mut grains = vec![];
    let mut ats = vec![];
    let mut queues = vec![];
    let mut tenants = vec![];
    let mut outcomes: [Vec<i64>; 4] = Default::default();
    let mut waits = vec![];
    let mut runs = vec![];
    for ((grain, at, queue, tenant), cell) in &cells {
        grains.push(grain.to_string());
        ats.push(*at);
        queues.push(queue.to_string());
        tenants.push(*tenant);
        for (i, n) in cell.outcomes.iter().enumerate() {
            outcomes[i].push(*n);
        }
        waits.push(array_text(&cell.wait));
        runs.push(array_text(&cell.run));
    }
    sqlx::query!(
        "INSERT INTO job_stats
           (grain, at, queue, tenant_id, succeeded, failed, dead, cancelled, wait_buckets,
            run_buckets)
         SELECT g, a, q, t, s, f, d, c, w::bigint[], r::bigint[]
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::uuid[], $5::int8[],
                     $6::int8[], $7::int8[], $8::int8[], $9::text[], $10::text[])
              AS u(g, a, q, t, s, f, d, c, w, r)
         ON CONFLICT (grain, queue, tenant_id, at) DO UPDATE SET
           succeeded = job_stats.succeeded + EXCLUDED.succeeded,
           failed = job_stats.failed + EXCLUDED.failed,
           dead = job_stats.dead + EXCLUDED.dead,
           cancelled = job_stats.cancelled + EXCLUDED.cancelled,
           wait_buckets = bigint_array_add(job_stats.wait_buckets, EXCLUDED.wait_buckets),
           run_buckets = bigint_array_add(job_stats.run_buckets, EXCLUDED.run_buckets)",
        &grains,
        &ats,
        &queues,
        &tenants,
        &outcomes[0],
        &outcomes[1],
        &outcomes[2],
        &outcomes[3],
        &waits,
        &runs
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Drops minute counts older than [`MINUTES_KEPT`] and hour counts older than `keep_days`.
pub async fn prune(db: &PgPool, keep_days: u32, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "DELETE FROM job_stats
         WHERE (grain = 'minute' AND at < $1) OR (grain = 'hour' AND at < $2)",
        now - MINUTES_KEPT,
        now - TimeDelta::days(i64::from(keep_days))
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// The span a chart covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last 24 hours, per minute.
    Day,
    /// The last 30 days, per hour.
    Month,
}

impl Range {
    pub fn parse(raw: &str) -> Option<Range> {
        match raw {
            "day" => Some(Range::Day),
            "month" => Some(Range::Month),
            _ => None,
        }
    }

    fn grain(self) -> (&'static str, TimeDelta, i64) {
        match self {
            Range::Day => ("minute", TimeDelta::minutes(1), 24 * 60),
            Range::Month => ("hour", TimeDelta::hours(1), 30 * 24),
        }
    }
}

/// Counts and percentiles per slot, oldest first; every slot of the range is present.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Series {
    pub at: Vec<DateTime<Utc>>,
    pub succeeded: Vec<i64>,
    pub failed: Vec<i64>,
    pub dead: Vec<i64>,
    pub cancelled: Vec<i64>,
    /// Enqueue-to-start percentiles in milliseconds (`null` for a slot without jobs).
    pub wait_p50_ms: Vec<Option<f64>>,
    pub wait_p95_ms: Vec<Option<f64>>,
    pub wait_p99_ms: Vec<Option<f64>>,
    pub run_p50_ms: Vec<Option<f64>>,
    pub run_p95_ms: Vec<Option<f64>>,
    pub run_p99_ms: Vec<Option<f64>>,
}

/// The `p` quantile (0..1) of a histogram, interpolated inside its bucket.
pub fn quantile(buckets: &[i64], p: f64) -> Option<f64> {
    let total: i64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = p * total as f64;
    let mut below = 0.0;
    for (i, n) in buckets.iter().enumerate() {
        let n = *n as f64;
        if n > 0.0 && below + n >= rank {
            let low = if i == 0 { 0 } else { BOUNDS_MS[i - 1] } as f64;
            let high = BOUNDS_MS.get(i).map_or(low * 2.0, |b| *b as f64);
            return Some(low + (high - low) * ((rank - below) / n).clamp(0.0, 1.0));
        }
        below += n;
    }
    None
}

/// The series of `range` up to `now` for one queue (all when `None`) and some tenants (all when
/// `None`; several are summed slot by slot).
pub async fn series(
    db: &PgPool,
    range: Range,
    now: DateTime<Utc>,
    queue: Option<&str>,
    tenants: Option<&[Uuid]>,
) -> sqlx::Result<Series> {
    let (grain, step, slots) = range.grain();
    let end = now.duration_trunc(step).unwrap_or(now) + step;
    let start = end - step * slots as i32;
    // One row per slot and tenant; every tenant's totals are kept as rows of their own.
    let tenants = tenants.map_or_else(|| vec![ALL_TENANTS], <[Uuid]>::to_vec);
    let rows = sqlx::query!(
        r#"SELECT at, succeeded, failed, dead, cancelled, wait_buckets AS wait,
                  run_buckets AS run
           FROM job_stats
           WHERE grain = $1 AND at >= $2 AND at < $3 AND queue = $4 AND tenant_id = ANY($5)"#,
        grain,
        start,
        end,
        queue.unwrap_or(ALL_QUEUES),
        &tenants
    )
    .fetch_all(db)
    .await?;
    let mut by_slot: HashMap<DateTime<Utc>, Slot> = HashMap::new();
    for r in rows {
        let slot = by_slot.entry(r.at).or_default();
        slot.counts[0] += r.succeeded;
        slot.counts[1] += r.failed;
        slot.counts[2] += r.dead;
        slot.counts[3] += r.cancelled;
        add_buckets(&mut slot.wait, &r.wait);
        add_buckets(&mut slot.run, &r.run);
    }
    let mut s = Series {
        at: vec![],
        succeeded: vec![],
        failed: vec![],
        dead: vec![],
        cancelled: vec![],
        wait_p50_ms: vec![],
        wait_p95_ms: vec![],
        wait_p99_ms: vec![],
        run_p50_ms: vec![],
        run_p95_ms: vec![],
        run_p99_ms: vec![],
    };
    for i in 0..slots {
        let at = start + step * i as i32;
        s.at.push(at);
        let row = by_slot.get(&at);
        s.succeeded.push(row.map_or(0, |r| r.counts[0]));
        s.failed.push(row.map_or(0, |r| r.counts[1]));
        s.dead.push(row.map_or(0, |r| r.counts[2]));
        s.cancelled.push(row.map_or(0, |r| r.counts[3]));
        let q = |buckets: Option<&Vec<i64>>, p| buckets.and_then(|b| quantile(b, p));
        let (wait, run) = (row.map(|r| &r.wait), row.map(|r| &r.run));
        s.wait_p50_ms.push(q(wait, 0.5));
        s.wait_p95_ms.push(q(wait, 0.95));
        s.wait_p99_ms.push(q(wait, 0.99));
        s.run_p50_ms.push(q(run, 0.5));
        s.run_p95_ms.push(q(run, 0.95));
        s.run_p99_ms.push(q(run, 0.99));
    }
    Ok(s)
}

/// One slot's counts (succeeded, failed, dead, cancelled) and histograms, summed over tenants.
#[derive(Default)]
struct Slot {
    counts: [i64; 4],
    wait: Vec<i64>,
    run: Vec<i64>,
}

fn add_buckets(sum: &mut Vec<i64>, more: &[i64]) {
    if sum.len() < more.len() {
        sum.resize(more.len(), 0);
    }
    for (s, m) in sum.iter_mut().zip(more) {
        *s += m;
    }
}

/// A tenant's volume over a range.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantVolume {
    pub tenant: String,
    pub jobs: i64,
    /// Failed and dead.
    pub failures: i64,
}

/// The tenants with the most finished jobs over `range` (optionally on one queue; among
/// `within` when given), most first.
pub async fn noisiest(
    db: &PgPool,
    range: Range,
    now: DateTime<Utc>,
    queue: Option<&str>,
    within: Option<&[Uuid]>,
    limit: i64,
) -> sqlx::Result<Vec<TenantVolume>> {
    let (grain, step, slots) = range.grain();
    let start = now.duration_trunc(step).unwrap_or(now) + step - step * slots as i32;
    sqlx::query_as!(
        TenantVolume,
        r#"SELECT t.slug AS "tenant!",
                  sum(s.succeeded + s.failed + s.dead + s.cancelled)::int8 AS "jobs!",
                  sum(s.failed + s.dead)::int8 AS "failures!"
           FROM job_stats s JOIN tenants t ON t.id = s.tenant_id
           WHERE s.grain = $1 AND s.at >= $2 AND s.queue = $3
             AND ($5::uuid[] IS NULL OR s.tenant_id = ANY($5))
           GROUP BY t.slug
           ORDER BY 2 DESC, 1
           LIMIT $4"#,
        grain,
        start,
        queue.unwrap_or(ALL_QUEUES),
        limit,
        within
    )
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut b = [0i64; BUCKETS];
        assert_eq!(quantile(&b, 0.5), None);
        // 100 jobs between 10 and 20 ms.
        b[bucket(15)] = 100;
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((10.0..=20.0).contains(&p50), "{p50}");
        // One slow job sets p99 apart from p50 only when it is more than 1 % of them.
        b[bucket(40_000)] = 2;
        assert!(quantile(&b, 0.99).unwrap() >= 30_000.0);
        assert!(quantile(&b, 0.5).unwrap() <= 20.0);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(10_000_000), BOUNDS_MS.len());
    }
}
