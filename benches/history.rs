//! The job history at size (issue #19): search and chart queries over a history of
//! `HISTORY_ROWS` finished jobs (10,000,000; 200,000 in smoke mode) across 100 tenants and 30
//! days, with the real tables and indexes (the migrations). Prints figures next to their targets
//! with PASS or MISS; never asserts.
//!
//! The rows are generated in Postgres (`generate_series`, one statement per day's partition):
//! three queues (stock adjustments with a SKU and an order reference, invoices with an order
//! number, emails with an address), 2 % failed or dead with an error text, finish times spread
//! over 30 days. The counts over days (`job_stats`) are generated alike: per hour for 30 days and
//! per minute for 2 days, per queue and tenant.
//!
//! Each query shape runs 50 times with varying values (an order number, a tenant, a piece of
//! error text that exists) through `history::search::search` (what the API and the dashboard
//! call), first page of 50; the charts through `history::stats::series` and `noisiest`.
//! Targets: search p99 ≤ 200 ms for each shape; chart queries for 30 days p99 ≤ 100 ms.
//!
//! `cargo bench --bench history` (about 15 minutes here, most of it generating and indexing the
//! rows), or `-- --smoke` (or `HISTORY_BENCH_SMOKE=1`).

#[path = "common/mod.rs"]
mod common;

use backroom::history::search::{self, Query};
use backroom::history::stats::{self, Range};
use chrono::{TimeDelta, Utc};
use common::{Verdict, dec, percentile, print_table, thousands, verdict};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

const TENANTS: usize = 100;
const DAYS: i64 = 30;
const RUNS: usize = 50;

/// The query of a shape's `i`th run.
type QueryOf = Box<dyn Fn(usize) -> String>;

/// Generates `rows` history rows over the last 30 days, one statement per day.
async fn generate(db: &PgPool, rows: i64, tenants: &[Uuid]) -> anyhow::Result<()> {
    let per_day = rows / DAYS;
    let today = Utc::now().date_naive();
    let started = Instant::now();
    for d in 0..DAYS {
        let day = today - TimeDelta::days(d);
        backroom::history::create_partition(db, day).await?;
        let start = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
        // Finish times spread over the day (up to now for today).
        let span_ms = if d == 0 {
            (Utc::now() - start).num_milliseconds().max(1)
        } else {
            86_400_000
        };
        sqlx::query(
            "INSERT INTO job_history
               (id, queue, kind, tenant_id, status, attempts, max_attempts, payload, result,
                last_error, errors, idempotency_key, group_id, created_at, started_at, finished_at)
             SELECT
               q.queue || '_' || md5($4::text || ':' || g::text),
               q.queue, q.kind, ($3::uuid[])[1 + (g / 100) % $5],
               CASE WHEN g % 100 = 0 THEN 'dead' WHEN g % 100 = 1 THEN 'failed' ELSE 'succeeded' END,
               CASE WHEN g % 100 < 2 THEN 6 ELSE 1 END, 6,
               CASE q.queue
                 WHEN 'stock' THEN jsonb_build_object('sku', 'SKU-' || (g % 5000), 'delta', g % 7 - 3,
                     'reference', 'ORD-' || $4::text || '-' || lpad(g::text, 7, '0'))
                 WHEN 'invoices' THEN jsonb_build_object('invoice_id', md5(g::text)::uuid,
                     'order_number', 'ORD-' || $4::text || '-' || lpad(g::text, 7, '0'))
                 ELSE jsonb_build_object('type', 'requested', 'to', 'customer' || (g % 20000) || '@example.com')
               END,
               CASE WHEN g % 100 >= 2 THEN '{\"ok\": true}'::jsonb END,
               CASE WHEN g % 100 < 2 THEN
                 (ARRAY['SMTP relay timed out after 30 s', 'connection refused by 10.0.0.7:25',
                        'the invoice font directory is unreadable'])[1 + (g / 300) % 3]
                 || ' (ref ' || substr(md5(g::text), 1, 10) || ')'
               END,
               '[]'::jsonb, NULL, NULL,
               $1::timestamptz + (g::float8 / $6 * $2 || ' milliseconds')::interval - interval '150 ms',
               $1::timestamptz + (g::float8 / $6 * $2 || ' milliseconds')::interval - interval '100 ms',
               $1::timestamptz + (g::float8 / $6 * $2 || ' milliseconds')::interval
             FROM generate_series(1, $6) AS g
             CROSS JOIN LATERAL (SELECT (ARRAY['stock', 'invoices', 'emails'])[1 + g % 3] AS queue,
                                        (ARRAY['stock_adjustment', 'render_invoice', 'requested_email'])[1 + g % 3] AS kind) q",
        )
        .bind(start)
        .bind(span_ms as f64)
        .bind(tenants)
        .bind(day.format("%Y%m%d").to_string())
        .bind(tenants.len() as i64)
        .bind(per_day)
        .execute(db)
        .await?;
        eprintln!(
            "  day {}/{DAYS}: {} rows in {:.0} s",
            d + 1,
            thousands((per_day * (d + 1)) as f64),
            started.elapsed().as_secs_f64()
        );
    }
    // Counts over days: hours for 30 days, minutes for 2, every queue and tenant and their
    // totals (as the copier keeps them).
    sqlx::query(
        "INSERT INTO job_stats (grain, at, queue, tenant_id, succeeded, failed, dead, cancelled,
                                wait_buckets, run_buckets)
         SELECT g.grain, g.at, q, t, 100 + (extract(epoch FROM g.at)::int8 % 50), 1, 1, 0,
                '{0,0,0,5,20,40,20,10,3,1,1,0,0,0,0,0,0,0,0}', '{0,0,0,0,10,30,30,20,5,3,1,1,0,0,0,0,0,0,0}'
         FROM (SELECT 'hour' AS grain, generate_series(date_trunc('hour', now()) - interval '30 days',
                                                       now(), interval '1 hour') AS at
               UNION ALL
               SELECT 'minute', generate_series(date_trunc('minute', now()) - interval '2 days',
                                                now(), interval '1 minute')) g
         CROSS JOIN unnest(ARRAY['stock', 'invoices', 'emails', '*']) AS q
         CROSS JOIN unnest($1::uuid[] || 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid) AS t",
    )
    .bind(tenants)
    .execute(db)
    .await?;
    sqlx::query("ANALYZE job_history").execute(db).await?;
    sqlx::query("ANALYZE job_stats").execute(db).await?;
    Ok(())
}

/// Runs `shape` [`RUNS`] times (its `i`th query from `query(i)`); milliseconds, sorted.
async fn time_search(
    db: &PgPool,
    query: impl Fn(usize) -> String,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut ms = vec![];
    let mut matched = 0;
    for i in 0..RUNS {
        let q = Query::parse(&query(i)).map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        let rows = search::search(db, &q, None, 50).await?;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
        matched += rows.len().min(50);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms, matched))
}

async fn run(names: common::Names, smoke: bool) -> anyhow::Result<Vec<Verdict>> {
    let rows: i64 = common::env_or("HISTORY_ROWS", if smoke { 200_000 } else { 10_000_000 })?;
    let db = names.create_database().await?;
    let mut tenants = vec![];
    for n in 0..TENANTS {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO tenants (id, slug, name) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(format!("t{n:03}"))
            .bind(format!("Tenant {n}"))
            .execute(&db)
            .await?;
        tenants.push(id);
    }
    println!(
        "history benchmark: {} rows over {DAYS} days, {TENANTS} tenants, Postgres {}",
        thousands(rows as f64),
        names.pg.host_str().unwrap_or("?")
    );
    let started = Instant::now();
    generate(&db, rows, &tenants).await?;
    let size: String = sqlx::query_scalar(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid)))
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'job_history'::regclass",
    )
    .fetch_one(&db)
    .await?;
    println!(
        "  generated and indexed in {:.0} s; the history takes {size} with its indexes",
        started.elapsed().as_secs_f64()
    );

    // Values that exist, to search for: order numbers, error references, and the tenant and
    // order number of dead invoices that timed out in the last week.
    let orders: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'order_number' FROM job_history TABLESAMPLE SYSTEM (1)
         WHERE queue = 'invoices' LIMIT 50",
    )
    .fetch_all(&db)
    .await?;
    let refs: Vec<String> = sqlx::query_scalar(
        "SELECT substring(last_error from 'ref ([0-9a-f]+)') FROM job_history
         TABLESAMPLE SYSTEM (10) WHERE last_error IS NOT NULL LIMIT 50",
    )
    .fetch_all(&db)
    .await?;
    let examples: Vec<(String, String)> = sqlx::query_as(
        "SELECT t.slug, h.payload->>'order_number' FROM job_history h
         JOIN tenants t ON t.id = h.tenant_id
         WHERE h.queue = 'invoices' AND h.status = 'dead'
           AND h.last_error LIKE 'SMTP relay timed out%'
           AND h.finished_at >= now() - interval '6 days' LIMIT 50",
    )
    .fetch_all(&db)
    .await?;
    anyhow::ensure!(
        !orders.is_empty() && !refs.is_empty() && !examples.is_empty(),
        "the generated history lacks values to search for"
    );
    let today = Utc::now().date_naive();
    let week_ago = (today - TimeDelta::days(7)).format("%Y-%m-%d").to_string();
    let shapes: Vec<(&str, QueryOf)> = vec![
        (
            "args.order_number:<n>",
            Box::new({
                let orders = orders.clone();
                move |i| format!("args.order_number:{}", orders[i % orders.len()])
            }),
        ),
        (
            "tenant:<t> status:dead",
            Box::new(|i| format!("tenant:t{:03} status:dead", i % TENANTS)),
        ),
        (
            "tenant:<t> kind:invoice after:<7 days>",
            Box::new({
                let week_ago = week_ago.clone();
                move |i| format!("tenant:t{:03} kind:invoice after:{week_ago}", i % TENANTS)
            }),
        ),
        (
            "error:\"<text>\"",
            Box::new(move |i| format!("error:\"ref {}\"", refs[i % refs.len()])),
        ),
        (
            "tenant:<t> kind:invoice status:dead args.order_number:<n> error:\"timed out\" after:<7 days>",
            Box::new({
                let week_ago = week_ago.clone();
                move |i| {
                    let (tenant, order) = &examples[i % examples.len()];
                    format!(
                        "tenant:{tenant} kind:invoice status:dead args.order_number:{order} error:\"timed out\" after:{week_ago}"
                    )
                }
            }),
        ),
        (
            "(a tenant's list: newest first)",
            Box::new(|_| String::new()),
        ),
        (
            "args.to:<address> (emails)",
            Box::new(|i| format!("args.to:customer{}@example.com", i * 37 % 20000)),
        ),
    ];
    let mut table = vec![];
    let mut verdicts = vec![];
    for (name, shape) in &shapes {
        let (ms, matched) = if name.starts_with("(a tenant") {
            // The tenant is set apart (as GET /v1/jobs does), no terms.
            let mut ms = vec![];
            let mut matched = 0;
            for i in 0..RUNS {
                let q = Query {
                    tenant_id: Some(tenants[i % TENANTS]),
                    ..Query::default()
                };
                let t = Instant::now();
                matched += search::search(&db, &q, None, 50).await?.len().min(50);
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ms.sort_by(f64::total_cmp);
            (ms, matched)
        } else {
            time_search(&db, shape).await?
        };
        let p99 = percentile(&ms, 99.0);
        table.push(vec![
            name.to_string(),
            dec(matched as f64 / RUNS as f64, 1),
            dec(percentile(&ms, 50.0), 1),
            dec(p99, 1),
            verdict(p99 <= 200.0).into(),
        ]);
        verdicts.push(Verdict {
            target: format!("search {name} p99 ≤ 200 ms"),
            measured: format!("{} ms", dec(p99, 1)),
            pass: p99 <= 200.0,
        });
    }
    println!("\n== search, first page of 50, {RUNS} runs each ==");
    print_table(
        &["query", "rows (mean)", "p50 ms", "p99 ms", "≤ 200 ms"],
        &table,
    );

    let mut table = vec![];
    let now = Utc::now();
    let charts: Vec<(&str, Range, bool, bool)> = vec![
        ("30 days per hour, all tenants", Range::Month, false, false),
        ("30 days per hour, one tenant", Range::Month, true, false),
        ("30 days per hour, one queue", Range::Month, false, true),
        ("last day per minute, all", Range::Day, false, false),
        ("noisiest tenants, 30 days", Range::Month, false, false),
    ];
    for (name, range, one_tenant, one_queue) in charts {
        let mut ms = vec![];
        for i in 0..RUNS {
            let tenant = one_tenant.then(|| tenants[i % TENANTS]);
            let queue = one_queue.then_some("invoices");
            let t = Instant::now();
            if name.starts_with("noisiest") {
                stats::noisiest(&db, range, now, None, None, 5).await?;
            } else {
                stats::series(
                    &db,
                    range,
                    now,
                    queue,
                    tenant.as_ref().map(std::slice::from_ref),
                )
                .await?;
            }
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        let p99 = percentile(&ms, 99.0);
        table.push(vec![
            name.to_string(),
            dec(percentile(&ms, 50.0), 1),
            dec(p99, 1),
            verdict(p99 <= 100.0).into(),
        ]);
        verdicts.push(Verdict {
            target: format!("chart {name} p99 ≤ 100 ms"),
            measured: format!("{} ms", dec(p99, 1)),
            pass: p99 <= 100.0,
        });
    }
    println!("\n== charts over days, {RUNS} runs each ==");
    print_table(&["query", "p50 ms", "p99 ms", "≤ 100 ms"], &table);
    db.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(verdicts)
}

fn main() -> anyhow::Result<()> {
    common::bench_main(
        "history",
        "smoke sizes are too small to judge the targets; run the full mode",
        common::as_given,
        run,
    )
}
