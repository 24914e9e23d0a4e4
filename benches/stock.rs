//! Stock ledger throughput and stock-adjustment intake, against the real server and workers.
//!
//! Prints figures, never asserts: each figure stands next to its target (from the issues) with
//! PASS or MISS, and a summary closes the run. The targets assume a release build on 2 cores
//! with Postgres and Redis on the same machine.
//!
//! Everything runs as in production, only co-located: the HTTP API (`Application::build` on
//! 127.0.0.1:0) and the `stock` workers (`process::work::run` with plan "stock", which includes the
//! outbox relay) run in this process, each with its own Postgres pool and Redis connections.
//!
//! 1. **batch, end to end** — a tenant and 50 products created over HTTP (stock seeded so that
//!    no adjustment is refused), then 4 clients POST `/v1/stock-adjustments/batch` with 1,000
//!    adjustments per request (100,000 in all) while the workers run. The clock runs from the
//!    first request until the `stock` queue's succeeded count (`Queues::counts`, polled every
//!    20 ms) covers them all. Target ≥ 10,000 adjustments/s. Then the ledger is checked: each
//!    product's SUM(delta) over its movements must equal its `on_hand` (OK or MISMATCH).
//! 2. **batch, split** — the same volume again in two halves: the intake alone (workers
//!    stopped), then the drain of that backlog alone, to show which half limits part 1.
//!    **2b. the ledger alone** — no queue, no HTTP, on a tenant of its own: `apply_batch` of
//!    64, 256 and 1,000 adjustments (20 batches each), then a `StockLedger` fed by 512
//!    concurrent callers (the stock worker's concurrency), over TCP and again over the
//!    server's Unix socket when there is one. sqlx 0.9.0 does not set `TCP_NODELAY`;
//!    `db::pool` sets it, and this pair shows what TCP still costs after that.
//! 3. **single intake** — `wrk` (2 threads, 64 connections, 10 s after a 2 s warm-up,
//!    `--latency`) POSTs `/v1/stock-adjustments` with a unique idempotency key per request
//!    (thread id + counter), workers stopped. Target ≥ 10,000 requests/s with p99 ≤ 20 ms. A
//!    ladder of lighter endpoints under the same load shows where a request's time goes:
//!    `/healthz` (HTTP stack only), `/readyz` (one Postgres query + one Redis PING), `/v1/me`
//!    (API-key lookup + one query). Then the workers drain what `wrk` queued and the ledger is
//!    checked again, against the succeeded count too.
//! 4. **traces** — part 1 again in child processes of this bench, with OpenTelemetry traces off,
//!    on at sampling 1.0 and on at 0.01 (nine times each, in turn; costs are medians over rounds of each
//!    run against its own round's off run), exporting OTLP/HTTP to a sink
//!    in this process that counts the spans: each batch request is a traced request, its jobs
//!    and their runs and the ledger's transactions spans of its trace. Targets: time per
//!    adjustment at most 10 % above traces off at 1.0, 2 % at 0.01. `cargo bench --bench stock
//!    -- traces` runs this part alone.
//! 5. **link** (only `cargo bench --bench stock -- link`) — part 1 again in child processes with
//!    Redis and Postgres on loopback and behind relays in this process that delay every byte by
//!    0, 0.25 and 1 ms each way (`common::DelayLink`: this kernel has no `netem`). Targets, against
//!    the relay with no delay: at 0.5 ms round trip ≥ 80 %, at 2 ms ≥ 50 %.
//!
//! Next to rates, tables give CPU per adjustment (or request) of this process (API, workers and
//! load clients together), of Postgres (every `postgres` process), of Redis, of `wrk`, and of
//! anything else on the machine (`/proc`), plus Postgres transactions per unit
//! (`pg_stat_database`) and Redis commands per unit (`INFO commandstats`).
//!
//! Run with `cargo bench --bench stock` (about three minutes), or
//! `cargo bench --bench stock -- --smoke` (or `BENCH_SMOKE=1`) for small sizes that finish in
//! well under 30 s. Needs Postgres (the server of `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432`; a database `backroom_bench_<uuid>` is created, migrated
//! and dropped; a `?host=/var/run/postgresql` query in `DATABASE_URL` makes everything use the
//! Unix socket), Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`; every key lives under the
//! namespace `bench-<uuid>` and is deleted with SCAN + UNLINK at the end, also after an error or
//! Ctrl-C) and `wrk` for part 3 (skipped with a note when it is missing). Progress goes to
//! stderr; `BACKROOM_LOG` sets the log filter (default `info`, as in production).

mod common;

use anyhow::{Context as _, bail};
use backroom::config::Settings;
use backroom::queue::{QueueCounts, QueueName};
use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use uuid::Uuid;

// Targets from the issues.
const BATCH_TARGET: f64 = 10_000.0;
const SINGLE_TARGET_RPS: f64 = 10_000.0;
const SINGLE_P99_TARGET_MS: f64 = 20.0;

const PRODUCTS: usize = 50;
/// Adjustments per batch request (the API's maximum).
const BATCH: usize = 1000;
/// Concurrent callers of the ledger in part 2b: the stock worker's default concurrency.
const LEDGER_CALLERS: usize = 512;
/// Stock each product starts with, so that no sale in the run is refused.
const SEED_STOCK: i64 = 1_000_000;
const POLL: Duration = Duration::from_millis(20);
/// A wait that sees no progress for this long is abandoned.
const STALL: Duration = Duration::from_secs(60);

struct Sizes {
    /// Adjustments in part 1 and again in part 2.
    batch_total: usize,
    batch_clients: usize,
    wrk_warmup_s: u64,
    wrk_s: u64,
    ladder_s: u64,
    wrk_threads: usize,
    wrk_connections: usize,
}

impl Sizes {
    fn full() -> Self {
        Sizes {
            batch_total: 100_000,
            batch_clients: 4,
            wrk_warmup_s: 2,
            wrk_s: 10,
            ladder_s: 5,
            wrk_threads: 2,
            wrk_connections: 64,
        }
    }

    fn smoke() -> Self {
        Sizes {
            batch_total: 5_000,
            batch_clients: 4,
            wrk_warmup_s: 1,
            wrk_s: 2,
            ladder_s: 1,
            wrk_threads: 2,
            wrk_connections: 64,
        }
    }
}

/// Everything a scenario needs.
struct Ctx {
    sizes: Sizes,
    smoke: bool,
    names: Names,
    settings: Settings,
    /// The bench's own pool, for checks and statistics (not the one under test).
    db: PgPool,
    /// Queries the bench ran on its own pool (subtracted from Postgres' transaction counts).
    own_tx: AtomicI64,
    redis: redis::aio::MultiplexedConnection,
    http: reqwest::Client,
    clk_tck: f64,
    server: Server,
    queue: QueueName,
    tenant_id: Uuid,
    key: String,
}

impl Ctx {
    async fn counts(&self) -> anyhow::Result<QueueCounts> {
        Ok(self.server.queues.counts(&self.queue).await?)
    }

    fn cpu(&self) -> Cpu {
        Cpu::now(self.clk_tck)
    }

    /// Transactions (committed or rolled back) of the bench database so far, without the
    /// bench's own; callers stop the workers first (see [`common::pg_transactions`]).
    async fn pg_transactions(&self) -> anyhow::Result<i64> {
        pg_transactions(&self.server.db, &self.db, &self.own_tx).await
    }

    /// Counts one query of the bench's own on its pool (see [`Ctx::pg_transactions`]).
    fn own_query(&self) {
        self.own_tx.fetch_add(1, Ordering::Relaxed);
    }

    /// `INFO commandstats`: command → calls.
    async fn redis_calls(&self) -> anyhow::Result<HashMap<String, u64>> {
        let mut conn = self.redis.clone();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        Ok(stats
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect())
    }

    /// Counters now (Postgres first: settling its counts takes a second).
    async fn stats(&self) -> anyhow::Result<Stats> {
        let pg_tx = self.pg_transactions().await?;
        let redis = self.redis_calls().await?;
        Ok(Stats {
            cpu: self.cpu(),
            pg_tx,
            redis,
        })
    }

    /// Statistics since `before`, with CPU up to `end` (read when the measured work ended;
    /// workers must be stopped by now, see [`Ctx::pg_transactions`]).
    async fn stats_since(&self, before: &Stats, end: Cpu) -> anyhow::Result<Usage> {
        let cpu = end.since(&before.cpu);
        let after = self.stats().await?;
        let mut redis: Vec<(String, u64)> = after
            .redis
            .iter()
            .map(|(name, &calls)| {
                let old = before.redis.get(name).copied().unwrap_or(0);
                (name.clone(), calls.saturating_sub(old))
            })
            .filter(|(name, calls)| *calls > 0 && name != "info")
            .collect();
        redis.sort_by_key(|(_, calls)| std::cmp::Reverse(*calls));
        Ok(Usage {
            cpu,
            pg_tx: after.pg_tx - before.pg_tx,
            redis,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base)
    }

    async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.url(path))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await?)
    }
}

/// Counters at one instant.
struct Stats {
    cpu: Cpu,
    pg_tx: i64,
    redis: HashMap<String, u64>,
}

/// What happened between two [`Stats`].
struct Usage {
    cpu: CpuUse,
    pg_tx: i64,
    /// (command, calls), most calls first.
    redis: Vec<(String, u64)>,
}

impl Usage {
    /// "evalsha 1.00, hgetall 0.01" per unit: the top Redis commands.
    fn redis_per(&self, units: f64) -> String {
        let parts: Vec<String> = self
            .redis
            .iter()
            .take(3)
            .map(|(name, calls)| format!("{name} {:.2}", *calls as f64 / units.max(1.0)))
            .collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc.

/// CPU seconds used so far, by who.
#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    /// This process (API, workers, load clients).
    process: f64,
    /// Children this process has waited for (`wrk`).
    children: f64,
    postgres: f64,
    redis: f64,
    /// Every CPU's non-idle time.
    machine: f64,
}

/// CPU used between two [`Cpu`] readings.
#[derive(Clone, Copy)]
struct CpuUse {
    wall: f64,
    process: f64,
    children: f64,
    postgres: f64,
    redis: f64,
    other: f64,
}

impl Cpu {
    fn now(clk_tck: f64) -> Self {
        let own = proc_stat("self");
        let (postgres, redis) = postgres_and_redis_ticks();
        let (process, children) = own
            .map(|(_, f)| (f[0] + f[1], f[2] + f[3]))
            .unwrap_or((0.0, 0.0));
        Cpu {
            at: Instant::now(),
            process: process / clk_tck,
            children: children / clk_tck,
            postgres: postgres / clk_tck,
            redis: redis / clk_tck,
            machine: machine_busy_ticks() / clk_tck,
        }
    }

    fn since(&self, earlier: &Cpu) -> CpuUse {
        let process = self.process - earlier.process;
        let children = self.children - earlier.children;
        let postgres = (self.postgres - earlier.postgres).max(0.0);
        let redis = self.redis - earlier.redis;
        let machine = self.machine - earlier.machine;
        CpuUse {
            wall: (self.at - earlier.at).as_secs_f64(),
            process,
            children,
            postgres,
            redis,
            other: (machine - process - children - postgres - redis).max(0.0),
        }
    }
}

impl CpuUse {
    /// Cells "µs per unit" for process, Postgres, Redis, children, other.
    fn per_unit_us(&self, units: f64) -> [String; 5] {
        let us = |s: f64| dec(s * 1e6 / units.max(1.0), 1);
        [
            us(self.process),
            us(self.postgres),
            us(self.redis),
            us(self.children),
            us(self.other),
        ]
    }

    /// "process 140 %, postgres 45 %, …" of one core.
    fn percents(&self) -> String {
        let pct = |s: f64| s * 100.0 / self.wall.max(1e-9);
        format!(
            "bench process {:.0} %, postgres {:.0} %, redis {:.0} %, wrk {:.0} %, other {:.0} % (of one core; 200 % = both)",
            pct(self.process),
            pct(self.postgres),
            pct(self.redis),
            pct(self.children),
            pct(self.other)
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up and waiting.

async fn setup(names: Names, smoke: bool) -> anyhow::Result<Ctx> {
    let db = names.create_database().await?;

    let env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", names.database_url()),
        ("REDIS_URL", names.redis_url.clone()),
        ("BACKROOM_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("BACKROOM_BIND", "127.0.0.1:0".to_string()),
        ("BACKROOM_REDIS_NAMESPACE", names.namespace.clone()),
        ("BACKROOM_SHUTDOWN_GRACE_SECS", "10".to_string()),
        // The per-tenant rate limiter runs on every request but never refuses one here.
        ("BACKROOM_TENANT_RATE_PER_SECOND", "1000000".to_string()),
        ("BACKROOM_TENANT_RATE_BURST", "1000000".to_string()),
    ]);
    let settings = Settings::from_lookup(|k| env.get(k).cloned())?;
    let redis = redis::Client::open(names.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {}", names.redis_url))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let server = Server::start(&settings).await?;

    let (tenant_id, key) =
        create_tenant_with_products(&http, &server.base, "bench-outdoor").await?;
    Ok(Ctx {
        sizes: if smoke { Sizes::smoke() } else { Sizes::full() },
        smoke,
        names,
        settings,
        db,
        own_tx: AtomicI64::new(0),
        redis,
        http,
        clk_tck: clock_ticks(),
        server,
        queue: QueueName::parse("stock").expect("known queue"),
        tenant_id,
        key,
    })
}

/// A tenant and its products, over HTTP as a client would create them; returns (id, API key).
async fn create_tenant_with_products(
    http: &reqwest::Client,
    base: &str,
    slug: &str,
) -> anyhow::Result<(Uuid, String)> {
    let name = format!("Bench Outdoor ({slug})");
    let (tenant_id, key) = create_tenant(http, base, slug, &name).await?;
    for i in 0..PRODUCTS {
        http.put(format!("{base}/v1/products/{}", sku(i)))
            .bearer_auth(&key)
            .json(&json!({
                "name": format!("Product {i}"), "unit_price": "9.90", "currency": "EUR",
                "reorder_point": 0, "reorder_quantity": 10, "lead_time_days": 3,
                "allow_negative": false
            }))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok((tenant_id, key))
}

fn sku(i: usize) -> String {
    format!("SKU-{i:03}")
}

/// Waits until the stock queue has finished (succeeded, failed or dead) `target` jobs in all,
/// printing progress every second. `accepted` counts what the load clients got accepted so far,
/// and `failure` holds their error, if any (which ends the wait).
async fn wait_finished(
    ctx: &Ctx,
    label: &str,
    target: u64,
    started: Instant,
    accepted: Option<&AtomicUsize>,
    failure: &Mutex<Option<String>>,
) -> anyhow::Result<(Duration, QueueCounts)> {
    let mut last_done = 0;
    let mut last_change = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(error) = failure.lock().unwrap().take() {
            bail!("{label}: a load client failed: {error}");
        }
        let counts = ctx.counts().await?;
        let done = counts.succeeded + counts.failed + counts.dead;
        if done >= target {
            return Ok((started.elapsed(), counts));
        }
        if done != last_done {
            last_done = done;
            last_change = Instant::now();
        } else if last_change.elapsed() > STALL {
            bail!("{label}: no progress for {STALL:?} ({done} of {target} finished: {counts:?})");
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let accepted = accepted
                .map(|a| {
                    format!(
                        "accepted {:>9}  ",
                        thousands(a.load(Ordering::Relaxed) as f64)
                    )
                })
                .unwrap_or_default();
            eprintln!(
                "  [{label}] {:>5.1} s  {accepted}finished {:>9} of {}  (queued {}, running {}, retrying {}, failed {}, dead {})",
                started.elapsed().as_secs_f64(),
                thousands(done as f64),
                thousands(target as f64),
                counts.pending,
                counts.running,
                counts.retrying,
                counts.failed,
                counts.dead
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Batch request bodies of 1,000 adjustments each, keys `<prefix>-<n>`, mixing receipts and
/// sales over every product.
fn batch_bodies(prefix: &str, total: usize) -> Vec<Vec<u8>> {
    (0..total.div_ceil(BATCH))
        .map(|b| {
            let adjustments: Vec<Value> = (b * BATCH..((b + 1) * BATCH).min(total))
                .map(|i| {
                    let (delta, reason) = if i % 4 == 0 {
                        (-(1 + (i % 3) as i64), "sale")
                    } else {
                        (1 + (i % 5) as i64, "receipt")
                    };
                    json!({"sku": sku(i * 7 % PRODUCTS), "delta": delta, "reason": reason,
                           "idempotency_key": format!("{prefix}-{i}")})
                })
                .collect();
            serde_json::to_vec(&json!({ "adjustments": adjustments })).expect("JSON")
        })
        .collect()
}

/// `clients` concurrent clients POST the bodies (each body once); returns each request's
/// latency in ms (sorted) and when the last client finished. Counts accepted adjustments in
/// `accepted`; the first error lands in `failure`.
fn spawn_batch_clients(
    ctx: &Ctx,
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
    accepted: Arc<AtomicUsize>,
    failure: Arc<Mutex<Option<String>>>,
) -> JoinHandle<(Vec<f64>, Instant)> {
    let url = ctx.url("/v1/stock-adjustments/batch");
    let (http, key) = (ctx.http.clone(), ctx.key.clone());
    tokio::spawn(async move {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (url, http, key, bodies, next, accepted, failure) = (
                url.clone(),
                http.clone(),
                key.clone(),
                bodies.clone(),
                next.clone(),
                accepted.clone(),
                failure.clone(),
            );
            tasks.spawn(async move {
                let mut latencies = vec![];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else {
                        return latencies;
                    };
                    let sent = Instant::now();
                    let outcome = async {
                        let response = http
                            .post(&url)
                            .bearer_auth(&key)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await?;
                        let status = response.status();
                        let text = response.bytes().await?;
                        if status != reqwest::StatusCode::ACCEPTED {
                            bail!(
                                "batch {i}: HTTP {status}: {}",
                                String::from_utf8_lossy(&text[..text.len().min(300)])
                            );
                        }
                        anyhow::Ok(())
                    }
                    .await;
                    if let Err(e) = outcome {
                        failure.lock().unwrap().get_or_insert(format!("{e:#}"));
                        return latencies;
                    }
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    accepted.fetch_add(BATCH, Ordering::Relaxed);
                }
            });
        }
        let mut all = vec![];
        while let Some(done) = tasks.join_next().await {
            all.extend(done.unwrap_or_default());
        }
        all.sort_by(f64::total_cmp);
        (all, Instant::now())
    })
}

/// SUM(delta) per product against `on_hand`: (products, movements, mismatching products).
async fn check_ledger(ctx: &Ctx) -> anyhow::Result<(i64, i64, i64)> {
    ctx.own_query();
    Ok(sqlx::query_as(
        "SELECT count(*), COALESCE(SUM(m.n), 0)::bigint,
                count(*) FILTER (WHERE p.on_hand <> COALESCE(m.total, 0))
         FROM products p
         LEFT JOIN (SELECT tenant_id, sku, SUM(delta) AS total, count(*) AS n
                    FROM stock_movements GROUP BY tenant_id, sku) m USING (tenant_id, sku)
         WHERE p.tenant_id = $1",
    )
    .bind(ctx.tenant_id)
    .fetch_one(&ctx.db)
    .await?)
}

/// Prints and returns "OK"/"MISMATCH" for the ledger, and whether it matched.
async fn print_ledger_check(ctx: &Ctx, expect_movements: Option<u64>) -> anyhow::Result<bool> {
    let (products, movements, mismatched) = check_ledger(ctx).await?;
    let count_ok = expect_movements.is_none_or(|n| n == movements as u64);
    let ok = mismatched == 0 && count_ok;
    println!(
        "  ledger check: {products} products, {} movements{}; SUM(delta) = on_hand for {} of {products} products: {}",
        thousands(movements as f64),
        expect_movements
            .map(|n| format!(" (expected {})", thousands(n as f64)))
            .unwrap_or_default(),
        products - mismatched,
        if ok { "OK" } else { "MISMATCH" }
    );
    Ok(ok)
}

/// Ledger transactions and movements of adjustments whose keys start with `prefix`: each
/// transaction stamps its rows with one `recorded_at`.
async fn ledger_batches(ctx: &Ctx, prefix: &str) -> anyhow::Result<(i64, i64)> {
    ctx.own_query();
    Ok(sqlx::query_as(
        "SELECT count(*), count(DISTINCT recorded_at) FROM stock_movements
         WHERE tenant_id = $1 AND idempotency_key LIKE $2",
    )
    .bind(ctx.tenant_id)
    .bind(format!("{prefix}-%"))
    .fetch_one(&ctx.db)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Part 1 and 2: batches.

async fn seed_stock(ctx: &Ctx) -> anyhow::Result<()> {
    let adjustments: Vec<Value> = (0..PRODUCTS)
        .map(|i| {
            json!({"sku": sku(i), "delta": SEED_STOCK, "reason": "receipt",
                   "idempotency_key": format!("seed-{i}")})
        })
        .collect();
    let response = ctx
        .post_json(
            "/v1/stock-adjustments/batch",
            &json!({ "adjustments": adjustments }),
        )
        .await?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        bail!("seeding stock: HTTP {}", response.status());
    }
    let none = Mutex::new(None);
    wait_finished(ctx, "seed", PRODUCTS as u64, Instant::now(), None, &none).await?;
    Ok(())
}

/// Part 1; returns its rate (adjustments/s) and this process's CPU µs per adjustment.
async fn part_batch_e2e(ctx: &Ctx, verdicts: &mut Vec<Verdict>) -> anyhow::Result<(f64, f64)> {
    let n = ctx.sizes.batch_total;
    let clients = ctx.sizes.batch_clients;
    println!(
        "\n== 1. batch intake to committed ledger, end to end ({} adjustments, {} per request, {clients} clients, workers running) ==",
        thousands(n as f64),
        BATCH
    );
    let workers = Workers::start(&ctx.settings, "stock", None)?;
    seed_stock(ctx).await?;
    let bodies = Arc::new(batch_bodies("e2e", n));
    let base = ctx.counts().await?;
    let base_done = base.succeeded + base.failed + base.dead;
    let before = ctx.stats().await?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let failure = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let intake = spawn_batch_clients(ctx, bodies, clients, accepted.clone(), failure.clone());
    let waited = wait_finished(
        ctx,
        "e2e",
        base_done + n as u64,
        started,
        Some(&accepted),
        &failure,
    )
    .await;
    let (latencies, intake_done) = intake.await?;
    let intake_s = (intake_done - started).as_secs_f64();
    let end = ctx.cpu();
    workers.stop().await?;
    let (elapsed, counts) = waited?;
    let usage = ctx.stats_since(&before, end).await?;

    let secs = elapsed.as_secs_f64();
    let rate = n as f64 / secs;
    let failed = counts.failed + counts.dead - base.failed - base.dead;
    let (movements, transactions) = ledger_batches(ctx, "e2e").await?;
    print_table(
        &[
            "adjustments",
            "intake secs",
            "end-to-end secs",
            "adjustments/s",
            "batch p50 ms",
            "batch p99 ms",
            "failed/dead",
            "ledger txns",
            "adj./txn",
        ],
        &[vec![
            thousands(n as f64),
            dec(intake_s, 2),
            dec(secs, 2),
            thousands(rate),
            dec(percentile(&latencies, 50.0), 1),
            dec(percentile(&latencies, 99.0), 1),
            failed.to_string(),
            thousands(transactions as f64),
            dec(movements as f64 / transactions.max(1) as f64, 0),
        ]],
    );
    print_usage_per(&usage, n as f64, "adjustment");
    let ok = print_ledger_check(ctx, None).await?;
    let pass = rate >= BATCH_TARGET && failed == 0 && ok;
    println!(
        "  end-to-end rate {} adjustments/s (target ≥ {})  {}",
        thousands(rate),
        thousands(BATCH_TARGET),
        verdict(pass)
    );
    verdicts.push(Verdict {
        target: format!(
            "batch intake → committed ledger ≥ {} adjustments/s",
            thousands(BATCH_TARGET)
        ),
        measured: format!(
            "{} adjustments/s ({} in {:.1} s), ledger {}",
            thousands(rate),
            thousands(n as f64),
            secs,
            if ok { "OK" } else { "MISMATCH" }
        ),
        pass,
    });
    Ok((rate, usage.cpu.process * 1e6 / n as f64))
}

/// CPU per unit and Postgres/Redis calls per unit.
fn print_usage_per(usage: &Usage, units: f64, unit: &str) {
    let [process, postgres, redis, children, other] = usage.cpu.per_unit_us(units);
    print_table(
        &[
            &format!("CPU µs per {unit}:"),
            "bench process",
            "postgres",
            "redis",
            "wrk",
            "other",
            "pg txns",
            "redis calls",
        ],
        &[vec![
            String::new(),
            process,
            postgres,
            redis,
            children,
            other,
            dec(usage.pg_tx as f64 / units.max(1.0), 3),
            usage.redis_per(units),
        ]],
    );
    println!("  {}", usage.cpu.percents());
}

async fn part_batch_split(ctx: &Ctx, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    let n = ctx.sizes.batch_total;
    let clients = ctx.sizes.batch_clients;
    println!(
        "\n== 2. the same, split: batch intake alone (workers stopped), then the drain alone =="
    );
    let bodies = Arc::new(batch_bodies("split", n));
    let base = ctx.counts().await?;
    let base_done = base.succeeded + base.failed + base.dead;

    let before = ctx.stats().await?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let failure = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let (latencies, done) =
        spawn_batch_clients(ctx, bodies, clients, accepted.clone(), failure.clone()).await?;
    let intake = (done - started).as_secs_f64();
    if let Some(e) = failure.lock().unwrap().take() {
        bail!("split intake: {e}");
    }
    let intake_usage = ctx.stats_since(&before, ctx.cpu()).await?;

    let before = ctx.stats().await?;
    let started = Instant::now();
    let workers = Workers::start(&ctx.settings, "stock", None)?;
    let none = Mutex::new(None);
    let (elapsed, counts) =
        wait_finished(ctx, "drain", base_done + n as u64, started, None, &none).await?;
    let end = ctx.cpu();
    workers.stop().await?;
    let drain_usage = ctx.stats_since(&before, end).await?;
    let drain = elapsed.as_secs_f64();
    let failed = counts.failed + counts.dead - base.failed - base.dead;
    let (movements, transactions) = ledger_batches(ctx, "split").await?;

    print_table(
        &[
            "phase",
            "secs",
            "adjustments/s",
            "batch p50 ms",
            "batch p99 ms",
            "failed/dead",
            "adj./ledger txn",
        ],
        &[
            vec![
                "intake only".into(),
                dec(intake, 2),
                thousands(n as f64 / intake),
                dec(percentile(&latencies, 50.0), 1),
                dec(percentile(&latencies, 99.0), 1),
                "-".into(),
                "-".into(),
            ],
            vec![
                "drain only".into(),
                dec(drain, 2),
                thousands(n as f64 / drain),
                "-".into(),
                "-".into(),
                failed.to_string(),
                dec(movements as f64 / transactions.max(1) as f64, 0),
            ],
            vec![
                "both, one after the other".into(),
                dec(intake + drain, 2),
                thousands(n as f64 / (intake + drain)),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        ],
    );
    println!("  intake only:");
    print_usage_per(&intake_usage, n as f64, "adjustment");
    println!("  drain only:");
    print_usage_per(&drain_usage, n as f64, "adjustment");
    let ok = print_ledger_check(ctx, None).await?;
    verdicts.push(Verdict {
        target: "(info) batch intake alone / drain alone".into(),
        measured: format!(
            "{} / {} adjustments/s, ledger {}",
            thousands(n as f64 / intake),
            thousands(n as f64 / drain),
            if ok { "OK" } else { "MISMATCH" }
        ),
        pass: ok,
    });
    Ok(())
}

/// The ledger writer without the queue, on a tenant of its own (so the checks of the other
/// parts are untouched): `apply_batch` by batch size, then `StockLedger` fed by as many
/// concurrent callers as the stock worker runs jobs at once. Over TCP as configured, and again
/// over the server's Unix socket when there is one: a socket has no Nagle algorithm, so the
/// difference is what the missing `TCP_NODELAY` on sqlx 0.9.0's sockets costs.
async fn part_ledger_alone(ctx: &Ctx, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    println!(
        "\n== 2b. the ledger alone, no queue: jobs::stock::ledger::apply_batch by batch size, then StockLedger with {LEDGER_CALLERS} concurrent callers =="
    );
    let (tenant_id, _) =
        create_tenant_with_products(&ctx.http, &ctx.server.base, "bench-ledger").await?;
    let configured_socket = ctx
        .names
        .pg
        .query_pairs()
        .any(|(k, v)| k == "host" && v.starts_with('/'));
    let mut transports = vec![(
        if configured_socket {
            "DATABASE_URL (a Unix socket)"
        } else {
            "TCP"
        },
        ctx.names.database_url(),
    )];
    if !configured_socket {
        transports.extend(ctx.names.unix_socket_url().map(|url| ("Unix socket", url)));
    }
    let mut rows = vec![];
    let mut rates = vec![];
    for (transport, url) in transports {
        rates.push((
            transport,
            ledger_runs(ctx, tenant_id, transport, &url, &mut rows).await?,
        ));
    }
    print_table(
        &[
            "ledger",
            "adjustments",
            "ms/txn",
            "adjustments/s",
            "process µs/adj.",
            "postgres µs/adj.",
        ],
        &rows,
    );
    if rates.len() == 1 && !configured_socket {
        println!("  (no Unix socket at /var/run/postgresql for this server: TCP only)");
    }
    let measured: Vec<String> = rates
        .iter()
        .map(|(t, r)| format!("{} adjustments/s over {t}", thousands(*r)))
        .collect();
    verdicts.push(Verdict {
        target: format!("(info) ledger alone, StockLedger with {LEDGER_CALLERS} callers"),
        measured: measured.join("; "),
        pass: rates[0].1 >= BATCH_TARGET,
    });
    Ok(())
}

/// Part 2b over one transport: adds its table rows, returns the `StockLedger` rate.
async fn ledger_runs(
    ctx: &Ctx,
    tenant_id: Uuid,
    transport: &str,
    url: &str,
    rows: &mut Vec<Vec<String>>,
) -> anyhow::Result<f64> {
    use backroom::domain::{Delta, IdempotencyKey, Reason, Sku};
    use backroom::jobs::stock::ledger::{Adjustment, StockLedger, apply_batch};
    // The worker's own pool (default size, with its TCP_NODELAY fix).
    let pool = backroom::db::pool(
        url,
        ctx.settings.database_max_connections,
        backroom::db::Role::Worker,
    )?;
    let tag: String = transport
        .chars()
        .filter(char::is_ascii_alphabetic)
        .collect();
    let adjustment = |prefix: &str, i: usize| -> anyhow::Result<Adjustment> {
        Ok(Adjustment {
            tenant_id,
            sku: Sku::parse(&sku(i * 7 % PRODUCTS)).map_err(anyhow::Error::msg)?,
            delta: Delta::parse(1 + (i % 5) as i64).map_err(anyhow::Error::msg)?,
            reason: Reason::Receipt,
            idempotency_key: IdempotencyKey::parse(&format!("{tag}-{prefix}-{i}"))
                .map_err(anyhow::Error::msg)?,
            reference: None,
            occurred_at: chrono::Utc::now(),
        })
    };
    let batches = if ctx.smoke { 3 } else { 20 };
    for size in [64, 256, 1000] {
        let items = (0..size * batches)
            .map(|i| adjustment(&format!("direct{size}"), i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let before = ctx.cpu();
        let started = Instant::now();
        for chunk in items.chunks(size) {
            let refs: Vec<(&Adjustment, &str)> = chunk.iter().map(|a| (a, "bench")).collect();
            apply_batch(&pool, &refs).await?;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = ctx.cpu().since(&before);
        rows.push(vec![
            format!("{transport}: apply_batch × {size}"),
            thousands(items.len() as f64),
            dec(secs * 1e3 / batches as f64, 2),
            thousands(items.len() as f64 / secs),
            dec(cpu.process * 1e6 / items.len() as f64, 1),
            dec(cpu.postgres * 1e6 / items.len() as f64, 1),
        ]);
    }
    // StockLedger as the worker uses it: each caller awaits its adjustment's outcome.
    let n = if ctx.smoke { 5_000 } else { 50_000 };
    let ledger = StockLedger::start(pool.clone());
    let items = Arc::new(
        (0..n)
            .map(|i| adjustment("ledger", i))
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let before = ctx.cpu();
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..LEDGER_CALLERS {
        let (ledger, items, next) = (ledger.clone(), items.clone(), next.clone());
        callers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(a) = items.get(i) else {
                    return anyhow::Ok(());
                };
                ledger
                    .apply(a.clone(), "bench")
                    .await
                    .map_err(anyhow::Error::msg)?;
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = ctx.cpu().since(&before);
    drop(ledger);
    pool.close().await;
    ctx.own_query();
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT recorded_at) FROM stock_movements
         WHERE tenant_id = $1 AND idempotency_key LIKE $2",
    )
    .bind(tenant_id)
    .bind(format!("{tag}-ledger-%"))
    .fetch_one(&ctx.db)
    .await?;
    let rate = n as f64 / secs;
    rows.push(vec![
        format!(
            "{transport}: StockLedger, {LEDGER_CALLERS} callers (avg batch {:.0})",
            n as f64 / transactions.max(1) as f64
        ),
        thousands(n as f64),
        dec(secs * 1e3 / transactions.max(1) as f64, 2),
        thousands(rate),
        dec(cpu.process * 1e6 / n as f64, 1),
        dec(cpu.postgres * 1e6 / n as f64, 1),
    ]);
    Ok(rate)
}

// ---------------------------------------------------------------------------------------------
// Part 3: single adjustments with wrk.

/// The wrk script: POST one adjustment with a unique idempotency key (run label, thread id,
/// counter). Arguments after `--`: API key, run label, number of products.
const WRK_SCRIPT: &str = r#"
local next_thread = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  key, run, skus = args[1], args[2], tonumber(args[3])
  counter = 0
  headers = {}
  headers["Authorization"] = "Bearer " .. key
  headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"sku":"SKU-%03d","delta":1,"reason":"receipt","idempotency_key":"%s-%d-%d"}',
    counter % skus, run, tid, counter)
  return wrk.format("POST", "/v1/stock-adjustments", headers, body)
end
"#;

/// What wrk printed, parsed.
struct WrkRun {
    requests: u64,
    rps: f64,
    /// p50, p75, p90, p99 in ms.
    latency_ms: [f64; 4],
    non_2xx: u64,
    socket_errors: Option<String>,
}

/// wrk's "1.23ms" / "850.00us" / "1.02s" / "1.5m" in ms.
fn wrk_duration_ms(raw: &str) -> Option<f64> {
    let split = raw.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = raw.split_at(split);
    let value: f64 = value.parse().ok()?;
    Some(match unit {
        "us" => value / 1e3,
        "ms" => value,
        "s" => value * 1e3,
        "m" => value * 60e3,
        "h" => value * 3600e3,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkRun> {
    let mut latency = [f64::NAN; 4];
    let mut run = WrkRun {
        requests: 0,
        rps: 0.0,
        latency_ms: latency,
        non_2xx: 0,
        socket_errors: None,
    };
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [p @ ("50%" | "75%" | "90%" | "99%"), value] => {
                let slot = ["50%", "75%", "90%", "99%"]
                    .iter()
                    .position(|q| q == p)
                    .expect("listed");
                latency[slot] = wrk_duration_ms(value).unwrap_or(f64::NAN);
            }
            ["Requests/sec:", value] => run.rps = value.parse()?,
            [n, "requests", "in", ..] => run.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse()?,
            ["Socket", "errors:", ..] => run.socket_errors = Some(line.to_string()),
            _ => {}
        }
    }
    run.latency_ms = latency;
    if run.requests == 0 {
        bail!("wrk made no requests:\n{out}");
    }
    Ok(run)
}

/// One wrk run against `path`; `post_label` selects the POST script with that run label.
async fn wrk(
    ctx: &Ctx,
    script: &std::path::Path,
    path: &str,
    post_label: Option<&str>,
    secs: u64,
) -> anyhow::Result<WrkRun> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.arg(format!("-t{}", ctx.sizes.wrk_threads))
        .arg(format!("-c{}", ctx.sizes.wrk_connections))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("--timeout")
        .arg("10s");
    match post_label {
        Some(label) => {
            cmd.arg("-s")
                .arg(script)
                .arg(ctx.url(path))
                .arg("--")
                .arg(&ctx.key)
                .arg(label)
                .arg(PRODUCTS.to_string());
        }
        None => {
            cmd.arg("-H")
                .arg(format!("Authorization: Bearer {}", ctx.key))
                .arg(ctx.url(path));
        }
    }
    let output = cmd.output().await.context("running wrk")?;
    let out = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {out}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&out)
}

fn wrk_available() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

async fn part_single(ctx: &Ctx, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    let s = &ctx.sizes;
    println!(
        "\n== 3. single-adjustment intake: wrk, {} threads, {} connections, {} s after a {} s warm-up, workers stopped ==",
        s.wrk_threads, s.wrk_connections, s.wrk_s, s.wrk_warmup_s
    );
    if !wrk_available() {
        println!("  wrk is not installed (apt-get install -y wrk): skipped");
        verdicts.push(Verdict {
            target: format!(
                "single intake ≥ {} req/s, p99 ≤ {} ms",
                thousands(SINGLE_TARGET_RPS),
                SINGLE_P99_TARGET_MS
            ),
            measured: "not measured (no wrk)".into(),
            pass: false,
        });
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("backroom-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("adjust.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let outcome = single_runs(ctx, &script, verdicts).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn single_runs(
    ctx: &Ctx,
    script: &std::path::Path,
    verdicts: &mut Vec<Verdict>,
) -> anyhow::Result<()> {
    let s = &ctx.sizes;
    let post = "/v1/stock-adjustments";
    eprintln!("  [wrk] warm-up {} s", s.wrk_warmup_s);
    wrk(ctx, script, post, Some("warmup"), s.wrk_warmup_s).await?;

    // The ladder: the same load on endpoints doing less, then the adjustment itself.
    let steps: [(&str, &str, Option<&str>, u64); 4] = [
        ("GET /healthz (HTTP only)", "/healthz", None, s.ladder_s),
        (
            "GET /readyz (1 pg query + 1 redis PING)",
            "/readyz",
            None,
            s.ladder_s,
        ),
        (
            "GET /v1/me (key lookup + 1 pg query)",
            "/v1/me",
            None,
            s.ladder_s,
        ),
        ("POST /v1/stock-adjustments", post, Some("main"), s.wrk_s),
    ];
    let mut rows = vec![];
    let mut main = None;
    for (label, path, post_label, secs) in steps {
        eprintln!("  [wrk] {label}, {secs} s");
        let before = ctx.stats().await?;
        let run = wrk(ctx, script, path, post_label, secs).await?;
        let usage = ctx.stats_since(&before, ctx.cpu()).await?;
        let n = run.requests as f64;
        let [process, postgres, redis, children, other] = usage.cpu.per_unit_us(n);
        rows.push(vec![
            label.to_string(),
            thousands(run.rps),
            dec(run.latency_ms[0], 2),
            dec(run.latency_ms[2], 2),
            dec(run.latency_ms[3], 2),
            run.non_2xx.to_string(),
            process,
            postgres,
            redis,
            children,
            other,
            dec(usage.pg_tx as f64 / n, 2),
            usage.redis_per(n),
        ]);
        if post_label.is_some() {
            main = Some((run, usage));
        }
    }
    print_table(
        &[
            "endpoint",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "non-2xx",
            "µs/req: server",
            "postgres",
            "redis",
            "wrk",
            "other",
            "pg txns/req",
            "redis calls/req",
        ],
        &rows,
    );
    let (run, usage) = main.expect("the POST step ran");
    println!("  POST run: {}", usage.cpu.percents());
    if let Some(errors) = &run.socket_errors {
        println!("  wrk: {errors}");
    }
    let p99 = run.latency_ms[3];
    let pass_rps = run.rps >= SINGLE_TARGET_RPS && run.non_2xx == 0;
    let pass_p99 = p99 <= SINGLE_P99_TARGET_MS;
    println!(
        "  requests/s {} (target ≥ {})  {}",
        thousands(run.rps),
        thousands(SINGLE_TARGET_RPS),
        verdict(pass_rps)
    );
    println!(
        "  p99 {:.2} ms (target ≤ {} ms)  {}   [p50 {:.2} ms, p75 {:.2} ms, p90 {:.2} ms; {} requests, {} non-2xx]",
        p99,
        SINGLE_P99_TARGET_MS,
        verdict(pass_p99),
        run.latency_ms[0],
        run.latency_ms[1],
        run.latency_ms[2],
        thousands(run.requests as f64),
        run.non_2xx
    );
    verdicts.push(Verdict {
        target: format!(
            "single-adjustment intake ≥ {} req/s",
            thousands(SINGLE_TARGET_RPS)
        ),
        measured: format!("{} req/s", thousands(run.rps)),
        pass: pass_rps,
    });
    verdicts.push(Verdict {
        target: format!("single-adjustment intake p99 ≤ {SINGLE_P99_TARGET_MS} ms"),
        measured: format!("p99 {p99:.2} ms (p50 {:.2} ms)", run.latency_ms[0]),
        pass: pass_p99,
    });
    Ok(())
}

/// Drains whatever is still queued (what wrk pushed) and checks the ledger against the queue.
async fn drain_and_check(ctx: &Ctx, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    let counts = ctx.counts().await?;
    let queued = counts.pending + counts.running + counts.retrying + counts.scheduled;
    println!(
        "\n== final: drain the {} queued single adjustments, check the ledger ==",
        thousands(queued as f64)
    );
    let target = counts.succeeded + counts.failed + counts.dead + queued;
    let started = Instant::now();
    let workers = Workers::start(&ctx.settings, "stock", None)?;
    let none = Mutex::new(None);
    let (elapsed, counts) = wait_finished(ctx, "drain", target, started, None, &none).await?;
    workers.stop().await?;
    println!(
        "  drained {} in {:.2} s ({} adjustments/s); queue: succeeded {}, failed {}, dead {}",
        thousands(queued as f64),
        elapsed.as_secs_f64(),
        thousands(queued as f64 / elapsed.as_secs_f64()),
        thousands(counts.succeeded as f64),
        counts.failed,
        counts.dead
    );
    let ok = print_ledger_check(ctx, Some(counts.succeeded)).await?;
    verdicts.push(Verdict {
        target: "(check) ledger: SUM(delta) = on_hand, one movement per succeeded job".into(),
        measured: if ok { "OK" } else { "MISMATCH" }.into(),
        pass: ok,
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------

async fn run(names: Names, smoke: bool) -> anyhow::Result<Vec<Verdict>> {
    let ctx = setup(names, smoke).await?;
    println!(
        "stock benchmark ({} mode): {} CPUs, Postgres {}, Redis {} (namespace {}), tenant {}",
        if ctx.smoke { "smoke" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        ctx.names.db_name,
        ctx.names.redis_url,
        ctx.names.namespace,
        ctx.tenant_id
    );
    let mut verdicts = vec![];
    if is_traces_child() {
        let (rate, process_us) = part_batch_e2e(&ctx, &mut verdicts).await?;
        print_traces_result(&json!({"rate": rate, "process_us": process_us}));
    } else if std::env::args().skip(1).any(|a| a == "traces") {
        part_traces(&ctx, &mut verdicts)?;
    } else if std::env::args().skip(1).any(|a| a == "link") {
        part_link(&ctx, &mut verdicts)?;
    } else {
        part_batch_e2e(&ctx, &mut verdicts).await?;
        part_batch_split(&ctx, &mut verdicts).await?;
        part_ledger_alone(&ctx, &mut verdicts).await?;
        part_single(&ctx, &mut verdicts).await?;
        drain_and_check(&ctx, &mut verdicts).await?;
        part_traces(&ctx, &mut verdicts)?;
    }
    ctx.server.stop().await?;
    ctx.db.close().await;
    Ok(verdicts)
}

/// Part 5, only when asked for (`cargo bench --bench stock -- link`): part 1 (batch intake to
/// committed ledger) in child processes of this bench with Redis and Postgres on loopback and
/// behind relays that delay every byte by 0, 0.25 and 1 ms each way (0.5 and 2 ms round trips;
/// `common::DelayLink`), two rounds (one in smoke mode).
fn part_link(ctx: &Ctx, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    let rounds = if ctx.smoke { 1 } else { 2 };
    println!(
        "\n== 5. a network hop away: part 1 with Redis and Postgres behind a delaying relay, child processes, medians of {rounds} rounds =="
    );
    let args: &[&str] = if ctx.smoke { &["--smoke"] } else { &[] };
    let runs = linked_runs(args, rounds, &ctx.names.redis_url, &ctx.names.pg)?;
    verdicts.extend(link_verdicts(
        &runs,
        "rate",
        "stock end to end",
        "adjustments/s",
    ));
    Ok(())
}

/// Part 4: what traces cost part 1 (batch intake to committed ledger): the same part in child
/// processes of this bench, with traces off, on at sampling 1.0 and on at 0.01, nine times each in
/// turn, exporting to an OTLP/HTTP sink here. Each request of the batch clients is a traced
/// request; its jobs, their runs and the ledger's transactions are spans of its trace.
fn part_traces(ctx: &Ctx, verdicts: &mut Vec<Verdict>) -> anyhow::Result<()> {
    println!(
        "\n== 4. traces: part 1 with traces off and on (OTLP/HTTP to a sink here), child processes, 9 rounds (2 in smoke mode); costs are medians over rounds of each run against its own round's off run =="
    );
    let args: &[&str] = if ctx.smoke { &["--smoke"] } else { &[] };
    let rounds = traced_rounds(ctx.smoke);
    let runs = traced_runs(args, rounds)?;
    let mut rows = vec![];
    for (mode, _) in TRACE_MODES {
        let rate = traced_median(&runs, mode, "rate");
        let spans: u64 = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.spans)
            .sum();
        rows.push(vec![
            mode.to_string(),
            thousands(rate),
            dec(traced_median(&runs, mode, "process_us"), 1),
            format!("{:+.1} %", traced_cost(&runs, mode, "rate")),
            thousands(spans as f64 / rounds as f64),
        ]);
    }
    print_table(
        &[
            "traces",
            "adjustments/s",
            "this process µs/adj.",
            "cost (time/adj. vs off)",
            "spans exported per run",
        ],
        &rows,
    );
    verdicts.extend(traced_verdicts(&runs, "rate", "stock end to end"));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    bench_main("stock", SMOKE_NOTE, as_given, run)
}
