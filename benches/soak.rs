//! Memory under soak (issue #9): the real `backroom serve` and `backroom work` processes under a
//! steady mixed load for minutes, watching whether their memory and Redis's stay flat.
//!
//! Prints figures, never asserts: each figure stands next to its target with PASS or MISS, and a
//! summary closes the run. Everything runs as in production, only co-located on one machine:
//!
//! - **Processes.** The release binary this bench was built with (`CARGO_BIN_EXE_backroom`, or
//!   `backroom` next to the bench's `deps/` directory) runs as two child processes
//!   (`common::Children`): one `backroom serve` on a free port and one `backroom work` (every
//!   queue, default concurrency, with the outbox relay), both against a fresh database and Redis
//!   namespace, with `SMTP_URL` pointing at an SMTP sink inside this bench (`common::SmtpSink`).
//!   Short retention makes "Redis memory bounded by retention" visible within the run:
//!   `BACKROOM_RETENTION_SUCCEEDED_SECS` and `BACKROOM_IDEMPOTENCY_RETENTION_SECS` are
//!   `SOAK_RETENTION_SECS` (default 60; 10 in smoke mode). Failed and dead jobs keep the
//!   default retention (7 days), so that every failure of the run is still countable at its end.
//!   The per-tenant email limit is raised (`BACKROOM_EMAILS_PER_MINUTE` 1,000,000) so that the
//!   load, not the limiter, sets the pace; other `BACKROOM_*` settings of the caller's
//!   environment pass through. Their logs (JSON, `SOAK_CHILD_LOG`, default `info`) go to
//!   `<target>/soak-logs/{serve,work}.log`; warnings and errors in them are summarised at the
//!   end.
//! - **Load** (open loop: each stream fires at its rate whatever the answers; at most
//!   `SOAK_MAX_IN_FLIGHT` (64) requests of a stream in flight, beyond that a tick is counted as
//!   skipped), on one tenant with 50 products seeded with ample stock:
//!   single stock adjustments `SOAK_SINGLE_RATE` (150 requests/s), batches of
//!   `SOAK_BATCH_SIZE` (100) adjustments `SOAK_BATCH_RATE` (1.5 requests/s) — together ~300
//!   adjustments/s, sales and receipts alternating —, orders of 1–3 lines `SOAK_ORDER_RATE`
//!   (20/s; each causes a sale adjustment per line, an invoice PDF and a customer email), and
//!   direct emails `SOAK_EMAIL_RATE` (10/s). At the start, one forecast run
//!   (`POST /v1/forecasts/runs`) for a second tenant with `SOAK_FORECAST_SKUS` (300) SKUs ×
//!   `SOAK_FORECAST_DAYS` (730) days of generated sales (`forecast::demo`, as `backroom dev`
//!   seeds its demo tenant).
//! - **Samples** every `SOAK_SAMPLE_SECS` (10 s; 5 s in smoke mode), one progress line each on
//!   stderr: VmRSS of both processes (`/proc/<pid>/status`), Redis `used_memory` (`INFO memory`:
//!   the whole server, so whatever else that Redis holds or gains during the run counts too),
//!   this run's own share of Redis (the namespace's keys found with SCAN, and the sum of their
//!   `MEMORY USAGE`), and each queue's succeeded (retained) and queued (pending + running +
//!   scheduled + retrying) counts.
//!
//! At the end: the samples as a table; each process's RSS growth after warm-up (the first 20 % of
//! the run): mean of the last quarter's samples / the first sample at or after the warm-up's end
//! − 1, target ≤ 10 %; Redis memory (`used_memory`, and this run's keys) at the end against its
//! maximum, and whether it stayed bounded: the last third's maximum ≤ 1.1 × the middle third's;
//! the load clients' requests, non-2xx answers (by status), transport errors and latencies; how
//! long the backlog took to drain after the load; failed and dead jobs; invoices and emails by
//! status in Postgres and the messages the sink received; the forecast run's outcome; the
//! warnings and errors in the children's logs, grouped. The samples are drawn as an SVG chart
//! (RSS serve, RSS worker, Redis `used_memory`, this run's Redis keys; one panel each over a
//! shared time axis) at `<target>/soak.svg` (`CARGO_TARGET_DIR`, else the target directory this
//! bench runs from); its path is printed.
//!
//! Run with `cargo bench --bench soak` (10 minutes of load, plus set-up and drain), or
//! `cargo bench --bench soak -- --smoke` (or `BENCH_SMOKE=1`) for 60 s; `SOAK_SECS` sets any
//! duration. `cargo bench` builds the release binary along with the bench; the bench itself
//! never builds anything. Needs Postgres (the server of `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432`; a database `backroom_bench_<uuid>` is created, migrated
//! and dropped) and Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`; every key lives under
//! the namespace `bench-<uuid>` and is deleted with SCAN + UNLINK at the end; on a single node
//! and a URL without a database number, the run uses the highest-numbered empty logical
//! database, so that sampling its keys does not SCAN everything else the server holds). The child
//! processes, the sink and the database and keys are cleaned up after an error or Ctrl-C too
//! (the children run in process groups of their own and are killed by the bench).

mod common;

use anyhow::Context as _;
use backroom::jobs::Queue;
use backroom::queue::{QueueCounts, QueueName, Queues};
use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

// Targets from the issue.
/// RSS after warm-up may grow at most this much (last quarter's mean vs. the warm-up's end).
const RSS_GROWTH_TARGET: f64 = 0.10;
/// Redis is bounded when the last third's maximum is at most this times the middle third's.
const REDIS_BOUND_FACTOR: f64 = 1.1;
/// The warm-up: this share of the run at its start.
const WARMUP_SHARE: f64 = 0.2;

/// Products of the load tenant.
const PRODUCTS: usize = 50;
/// Stock each product starts with, so that no sale of the run is refused.
const SEED_STOCK: i64 = 10_000_000;
/// How long the backlog may take to drain after the load before the bench stops waiting.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// How long a child gets to exit after SIGTERM (its own grace is 10 s).
const STOP_GRACE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Configuration.

struct Config {
    smoke: bool,
    duration: Duration,
    sample_every: Duration,
    single_rate: f64,
    batch_rate: f64,
    batch_size: usize,
    order_rate: f64,
    email_rate: f64,
    max_in_flight: usize,
    forecast_skus: usize,
    forecast_days: usize,
    retention_secs: u64,
    child_log: String,
}

impl Config {
    fn from_env(smoke: bool) -> anyhow::Result<Self> {
        let secs: u64 = env_or("SOAK_SECS", if smoke { 60 } else { 600 })?;
        anyhow::ensure!(secs >= 10, "SOAK_SECS: at least 10");
        let sample: u64 = env_or("SOAK_SAMPLE_SECS", if smoke { 5 } else { 10 })?;
        anyhow::ensure!(sample >= 1, "SOAK_SAMPLE_SECS: at least 1");
        let batch_size: usize = env_or("SOAK_BATCH_SIZE", 100)?;
        anyhow::ensure!(
            (1..=1000).contains(&batch_size),
            "SOAK_BATCH_SIZE: 1..=1000 (the API's limit)"
        );
        let config = Config {
            smoke,
            duration: Duration::from_secs(secs),
            sample_every: Duration::from_secs(sample),
            single_rate: env_or("SOAK_SINGLE_RATE", 150.0)?,
            batch_rate: env_or("SOAK_BATCH_RATE", 1.5)?,
            batch_size,
            order_rate: env_or("SOAK_ORDER_RATE", 20.0)?,
            email_rate: env_or("SOAK_EMAIL_RATE", 10.0)?,
            max_in_flight: env_or("SOAK_MAX_IN_FLIGHT", 64)?,
            forecast_skus: env_or("SOAK_FORECAST_SKUS", 300)?,
            forecast_days: env_or("SOAK_FORECAST_DAYS", 730)?,
            retention_secs: env_or("SOAK_RETENTION_SECS", if smoke { 10 } else { 60 })?,
            child_log: std::env::var("SOAK_CHILD_LOG").unwrap_or_else(|_| "info".into()),
        };
        for (name, rate) in [
            ("SOAK_SINGLE_RATE", config.single_rate),
            ("SOAK_BATCH_RATE", config.batch_rate),
            ("SOAK_ORDER_RATE", config.order_rate),
            ("SOAK_EMAIL_RATE", config.email_rate),
        ] {
            anyhow::ensure!(
                rate.is_finite() && (0.0..=10_000.0).contains(&rate),
                "{name}: 0..=10000 requests/s"
            );
        }
        anyhow::ensure!(config.max_in_flight >= 1, "SOAK_MAX_IN_FLIGHT: at least 1");
        anyhow::ensure!(
            config.retention_secs >= 1,
            "SOAK_RETENTION_SECS: at least 1"
        );
        anyhow::ensure!(
            config.forecast_skus == 0 || config.forecast_days >= 120,
            "SOAK_FORECAST_DAYS: at least 120 (0 SKUs skips the forecast)"
        );
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------------
// Load clients.

/// What one load stream saw.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    transport_errors: AtomicU64,
    /// Ticks dropped because the stream already had `max_in_flight` requests out.
    skipped: AtomicU64,
    non_2xx: Mutex<BTreeMap<u16, u64>>,
    latencies_ms: Mutex<Vec<f32>>,
    /// The first few failures, verbatim (status and body, or the transport error).
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn failure(&self, what: String) {
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 3 {
            failures.push(what);
        }
    }

    fn errors(&self) -> u64 {
        self.non_2xx.lock().unwrap().values().sum::<u64>()
            + self.transport_errors.load(Ordering::Relaxed)
    }
}

/// Builds request `i` of a stream.
type MakeRequest = Arc<dyn Fn(u64) -> reqwest::RequestBuilder + Send + Sync>;

struct Stream {
    name: &'static str,
    /// Requests a second.
    rate: f64,
    /// Units of work per request (adjustments per batch; 1 otherwise).
    units: usize,
    tally: Arc<Tally>,
    join: Option<JoinHandle<()>>,
}

/// Fires `make(i)` every 1/`rate` s until `until`, at most `max_in_flight` at once; returns
/// after the last answer (or 60 s).
async fn drive(
    rate: f64,
    max_in_flight: usize,
    until: Instant,
    tally: Arc<Tally>,
    make: MakeRequest,
) {
    if rate <= 0.0 {
        return;
    }
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut i = 0u64;
    loop {
        ticks.tick().await;
        if Instant::now() >= until {
            break;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tally.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let request = make(i);
        i += 1;
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let tally = tally.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await;
                    if status.is_success() && body.is_ok() {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    } else if status.is_success() {
                        tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                        tally.failure(format!("reading the body: {:?}", body.err()));
                    } else {
                        *tally
                            .non_2xx
                            .lock()
                            .unwrap()
                            .entry(status.as_u16())
                            .or_default() += 1;
                        let text = body
                            .map(|b| {
                                String::from_utf8_lossy(&b)
                                    .chars()
                                    .take(300)
                                    .collect::<String>()
                            })
                            .unwrap_or_default();
                        tally.failure(format!("HTTP {status}: {text}"));
                    }
                }
                Err(e) => {
                    tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                    tally.failure(format!("{e:#}"));
                }
            }
            let ms = started.elapsed().as_secs_f64() * 1e3;
            tally.latencies_ms.lock().unwrap().push(ms as f32);
        });
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        permits.acquire_many(max_in_flight as u32),
    )
    .await;
}

fn sku(i: u64) -> String {
    format!("SOAK-{:03}", i % PRODUCTS as u64)
}

/// Adjustment `n` of a stream: sales and receipts of 1–3 units alternate.
fn adjustment(prefix: &str, n: u64) -> Value {
    let units = 1 + (n / 2) % 3;
    let (delta, reason) = if n.is_multiple_of(2) {
        (-(units as i64), "sale")
    } else {
        (units as i64, "receipt")
    };
    json!({
        "sku": sku(n.wrapping_mul(7)),
        "delta": delta,
        "reason": reason,
        "idempotency_key": format!("{prefix}-{n}"),
        "reference": format!("soak {prefix} {n}"),
    })
}

fn order_body(i: u64) -> Value {
    let lines: Vec<Value> = (0..1 + i % 3)
        .map(|l| json!({"sku": sku(i * 3 + l), "quantity": 1 + (i + l) % 2}))
        .collect();
    json!({
        "customer": {"name": format!("Kundin {i}"), "email": format!("kundin{i}@example.org"),
                     "address": format!("Seestrasse {}\n8002 Zürich", 1 + i % 200)},
        "currency": "EUR", "tax_rate": "0.081", "lines": lines
    })
}

fn email_body(i: u64) -> Value {
    json!({
        "to": format!("patient{i}@example.org"),
        "subject": format!("Terminbestätigung Nr. {i}"),
        "text": format!("Guten Tag,\n\nIhr Termin Nr. {i} ist bestätigt: Dienstag, 10:30.\n\nPraxis am See"),
        "html": format!("<p>Guten Tag,</p><p>Ihr Termin <b>Nr. {i}</b> ist bestätigt: Dienstag, 10:30.</p><p>Praxis am See</p>"),
        "idempotency_key": format!("soak-email-{i}"),
    })
}

/// Builds the JSON body of request `i` of a stream.
type MakeBody = Arc<dyn Fn(u64) -> Value + Send + Sync>;

/// The four load streams, started now and running until `until`.
fn start_load(ctx: &Ctx, until: Instant) -> Vec<Stream> {
    let c = &ctx.config;
    let post = |path: &str, body: MakeBody| -> MakeRequest {
        let (http, url, key) = (ctx.http.clone(), ctx.url(path), ctx.key.clone());
        Arc::new(move |i| http.post(&url).bearer_auth(&key).json(&body(i)))
    };
    let n = c.batch_size as u64;
    let specs: [(&'static str, f64, usize, MakeRequest); 4] = [
        (
            "stock single",
            c.single_rate,
            1,
            post(
                "/v1/stock-adjustments",
                Arc::new(|i| adjustment("single", i)),
            ),
        ),
        (
            "stock batch",
            c.batch_rate,
            c.batch_size,
            post(
                "/v1/stock-adjustments/batch",
                Arc::new(move |i| {
                    let adjustments: Vec<Value> =
                        (0..n).map(|j| adjustment("batch", i * n + j)).collect();
                    json!({ "adjustments": adjustments })
                }),
            ),
        ),
        (
            "orders",
            c.order_rate,
            1,
            post("/v1/orders", Arc::new(order_body)),
        ),
        (
            "emails",
            c.email_rate,
            1,
            post("/v1/emails", Arc::new(email_body)),
        ),
    ];
    specs
        .into_iter()
        .map(|(name, rate, units, make)| {
            let tally = Arc::new(Tally::default());
            let join = tokio::spawn(drive(rate, c.max_in_flight, until, tally.clone(), make));
            Stream {
                name,
                rate,
                units,
                tally,
                join: Some(join),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Set-up.

/// Everything the run needs.
struct Ctx {
    config: Config,
    names: Names,
    /// The bench's own pool (set-up and checks), not one under test.
    db: PgPool,
    redis: redis::aio::MultiplexedConnection,
    queues: Queues,
    http: reqwest::Client,
    base: String,
    key: String,
    forecast_key: Option<String>,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn counts(&self) -> anyhow::Result<Vec<(&'static str, QueueCounts)>> {
        let mut all = vec![];
        for name in Queue::ALL.map(Queue::name) {
            let queue = QueueName::parse(name).expect("known queue");
            all.push((name, self.queues.counts(&queue).await?));
        }
        Ok(all)
    }
}

/// Starts the sink and the two processes (see [`Children::start`]) with the run's retention,
/// email limit and log filter.
async fn start_processes(
    config: &Config,
    names: &Names,
    queues: &Queues,
) -> anyhow::Result<Children> {
    let binary = backroom_binary("build it with `cargo build --release`")?;
    let retention = config.retention_secs.to_string();
    let env = [
        (
            "BACKROOM_MAIL_FROM",
            "Praxis am See <praxis@backroom.bench>".into(),
        ),
        ("BACKROOM_EMAILS_PER_MINUTE", "1000000".into()),
        ("BACKROOM_RETENTION_SUCCEEDED_SECS", retention.clone()),
        ("BACKROOM_IDEMPOTENCY_RETENTION_SECS", retention),
        ("BACKROOM_LOG", config.child_log.clone()),
    ];
    Children::start(
        "soak",
        &binary,
        names,
        queues,
        &env,
        Duration::from_secs(30),
    )
    .await
}

/// The load tenant with its products and stock, and the forecast tenant with its history.
async fn create_tenants(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (_http, _url) = (ctx.http.clone(), ctx.url("/admin/v1/tenants"));
    let create = |slug: &'static str| {
        let (http, base) = (ctx.http.clone(), ctx.base.clone());
        async move { create_tenant(&http, &base, slug, &format!("Soak {slug}")).await }
    };
    let (_, key) = create("soak-shop").await?;
    ctx.key = key;
    for i in 0..PRODUCTS as u64 {
        ctx.http
            .put(ctx.url(&format!("/v1/products/{}", sku(i))))
            .bearer_auth(&ctx.key)
            .json(&json!({
                "name": format!("Product {i}"), "unit_price": "9.90", "currency": "EUR",
                "reorder_point": 0, "reorder_quantity": 10, "lead_time_days": 3,
                "allow_negative": false
            }))
            .send()
            .await?
            .error_for_status()?;
    }
    let seed: Vec<Value> = (0..PRODUCTS as u64)
        .map(|i| {
            json!({"sku": sku(i), "delta": SEED_STOCK, "reason": "receipt",
                   "idempotency_key": format!("seed-{i}")})
        })
        .collect();
    ctx.http
        .post(ctx.url("/v1/stock-adjustments/batch"))
        .bearer_auth(&ctx.key)
        .json(&json!({ "adjustments": seed }))
        .send()
        .await?
        .error_for_status()?;
    let stock = QueueName::parse("stock").expect("known queue");
    let timeout = "the seed stock was not applied within 60 s";
    wait_until(Duration::from_secs(60), timeout, async || {
        let c = ctx.queues.counts(&stock).await?;
        Ok(c.succeeded + c.failed + c.dead >= PRODUCTS as u64)
    })
    .await?;

    if ctx.config.forecast_skus > 0 {
        let (id, key) = create("soak-forecast").await?;
        let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
        let skus = backroom::forecast::demo::generate(
            ctx.config.forecast_skus,
            ctx.config.forecast_days,
            yesterday,
            2026,
        );
        backroom::forecast::demo::load(&ctx.db, id, &skus)
            .await
            .context("while loading the forecast tenant's sales history")?;
        ctx.forecast_key = Some(key);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The forecast run.

#[derive(Default, Clone)]
struct ForecastOutcome {
    run_id: String,
    status: String,
    skus_done: i64,
    skus_total: i64,
    /// Seconds from the request to a final status.
    seconds: Option<f64>,
    error: Option<String>,
}

/// Starts the forecast run and follows it (every 2 s) until it ends or `until`.
fn start_forecast(
    ctx: &Ctx,
    until: Instant,
) -> Option<(Arc<Mutex<ForecastOutcome>>, JoinHandle<()>)> {
    let key = ctx.forecast_key.clone()?;
    let (http, base) = (ctx.http.clone(), ctx.base.clone());
    let outcome = Arc::new(Mutex::new(ForecastOutcome::default()));
    let shared = outcome.clone();
    let join = tokio::spawn(async move {
        let started = Instant::now();
        let accepted = async {
            let r = http
                .post(format!("{base}/v1/forecasts/runs"))
                .bearer_auth(&key)
                .json(&json!({"horizon_days": 28}))
                .send()
                .await?;
            let status = r.status();
            let body: Value = r.json().await?;
            anyhow::ensure!(status.as_u16() == 202, "HTTP {status}: {body}");
            body["run_id"]
                .as_str()
                .map(str::to_string)
                .context("no run_id")
        }
        .await;
        let run_id = match accepted {
            Ok(id) => id,
            Err(e) => {
                shared.lock().unwrap().error = Some(format!("starting the run: {e:#}"));
                return;
            }
        };
        shared.lock().unwrap().run_id = run_id.clone();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let Ok(r) = http
                .get(format!("{base}/v1/forecasts/runs/{run_id}"))
                .bearer_auth(&key)
                .send()
                .await
            else {
                continue;
            };
            let Ok(run) = r.json::<Value>().await else {
                continue;
            };
            let mut o = shared.lock().unwrap();
            o.status = run["status"].as_str().unwrap_or("?").to_string();
            o.skus_done = run["skus_done"].as_i64().unwrap_or(0);
            o.skus_total = run["skus_total"].as_i64().unwrap_or(0);
            if matches!(o.status.as_str(), "succeeded" | "failed") {
                o.seconds = Some(started.elapsed().as_secs_f64());
                if o.status == "failed" {
                    o.error = Some(run.to_string());
                }
                return;
            }
        }
    });
    Some((outcome, join))
}

// ---------------------------------------------------------------------------------------------
// Samples.

#[derive(Clone)]
struct Sample {
    /// Seconds since the load started.
    t: f64,
    serve_kib: u64,
    work_kib: u64,
    /// Redis `used_memory`: the whole server.
    redis_bytes: u64,
    /// This run's keys (the namespace) and their `MEMORY USAGE`; `None` when the Redis is too
    /// big to SCAN every sample.
    ns_keys: Option<u64>,
    ns_bytes: Option<u64>,
    /// How long taking the sample took (SCAN and `MEMORY USAGE` cost the most).
    took_ms: f64,
    queues: Vec<(&'static str, QueueCounts)>,
    /// 2xx answers so far, all streams.
    ok: u64,
    /// Non-2xx answers and transport errors so far, all streams.
    errors: u64,
}

impl Sample {
    fn serve_mib(&self) -> f64 {
        self.serve_kib as f64 / 1024.0
    }
    fn work_mib(&self) -> f64 {
        self.work_kib as f64 / 1024.0
    }
    fn redis_mib(&self) -> f64 {
        self.redis_bytes as f64 / MIB
    }
    fn ns_mib(&self) -> Option<f64> {
        self.ns_bytes.map(|b| b as f64 / MIB)
    }
    fn queue(&self, name: &str) -> QueueCounts {
        self.queues
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }
}

fn queued(c: &QueueCounts) -> u64 {
    c.pending + c.running + c.scheduled + c.retrying
}

/// One sample: `t` and both RSS figures first (they are instant), then Redis and the queues.
async fn take_sample(
    ctx: &Ctx,
    running: &Children,
    streams: &[Stream],
    start: Instant,
) -> anyhow::Result<Sample> {
    let begun = Instant::now();
    let t = (begun - start).as_secs_f64();
    let serve_kib = vm_rss_kib(running.serve.pid()).unwrap_or(0);
    let work_kib = vm_rss_kib(running.work.pid()).unwrap_or(0);
    let mut redis = ctx.redis.clone();
    let redis_bytes = redis_used_memory(&mut redis).await?;
    let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut redis).await?;
    let (ns_keys, ns_bytes) = if dbsize <= 2_000_000 {
        let (keys, bytes) = namespace_memory(&mut redis, &ctx.names.namespace).await?;
        (Some(keys), Some(bytes))
    } else {
        (None, None)
    };
    let queues = ctx.counts().await?;
    Ok(Sample {
        t,
        serve_kib,
        work_kib,
        redis_bytes,
        ns_keys,
        ns_bytes,
        took_ms: begun.elapsed().as_secs_f64() * 1e3,
        queues,
        ok: streams
            .iter()
            .map(|s| s.tally.ok.load(Ordering::Relaxed))
            .sum(),
        errors: streams.iter().map(|s| s.tally.errors()).sum(),
    })
}

/// "stock 1,234/5" per queue with any activity: succeeded (retained) / queued.
fn queue_cells(s: &Sample) -> String {
    s.queues
        .iter()
        .filter(|(_, c)| c.succeeded + queued(c) + c.failed + c.dead > 0)
        .map(|(n, c)| format!("{n} {}/{}", thousands(c.succeeded as f64), queued(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn progress_line(s: &Sample, previous: Option<&Sample>) -> String {
    let rate = previous
        .filter(|p| s.t > p.t)
        .map(|p| (s.ok - p.ok) as f64 / (s.t - p.t))
        .unwrap_or(0.0);
    format!(
        "  [soak {:>6.1} s] RSS serve {:.1} MiB, work {:.1} MiB; Redis {:.1} MiB, this run's {} keys {} MiB; \
         succeeded/queued: {}; requests {} ok ({:.0}/s), {} errors; sampled in {:.0} ms",
        s.t,
        s.serve_mib(),
        s.work_mib(),
        s.redis_mib(),
        s.ns_keys.map_or("?".into(), |k| thousands(k as f64)),
        s.ns_mib().map_or("?".into(), |m| dec(m, 1)),
        queue_cells(s),
        thousands(s.ok as f64),
        rate,
        s.errors,
        s.took_ms
    )
}

// ---------------------------------------------------------------------------------------------
// Analysis.

struct Growth {
    warm_t: f64,
    warm: f64,
    last_quarter_mean: f64,
    growth: f64,
}

/// RSS growth after warm-up: mean of the samples in the last quarter over the first sample at
/// or after the warm-up's end, minus one.
fn growth(samples: &[Sample], duration: f64, value: impl Fn(&Sample) -> f64) -> Option<Growth> {
    let warm = samples
        .iter()
        .find(|s| s.t >= WARMUP_SHARE * duration - 1e-6)?;
    let last: Vec<f64> = samples
        .iter()
        .filter(|s| s.t >= 0.75 * duration - 1e-6)
        .map(&value)
        .collect();
    if last.is_empty() {
        return None;
    }
    let mean = last.iter().sum::<f64>() / last.len() as f64;
    Some(Growth {
        warm_t: warm.t,
        warm: value(warm),
        last_quarter_mean: mean,
        growth: mean / value(warm) - 1.0,
    })
}

struct Bound {
    end: f64,
    max: f64,
    max_t: f64,
    middle_max: f64,
    last_max: f64,
}

impl Bound {
    fn ratio(&self) -> f64 {
        self.last_max / self.middle_max
    }
    fn pass(&self) -> bool {
        self.ratio() <= REDIS_BOUND_FACTOR
    }
}

/// A memory series at the end, its maximum, and the maxima of the middle and last thirds
/// (samples without a value are left out).
fn bound(
    samples: &[Sample],
    duration: f64,
    value: impl Fn(&Sample) -> Option<f64>,
) -> Option<Bound> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| value(s).map(|v| (s.t, v)))
        .collect();
    let max_in = |from: f64, to: f64| {
        points
            .iter()
            .filter(|(t, _)| *t >= from - 1e-6 && *t <= to + 1e-6)
            .map(|(_, v)| *v)
            .reduce(f64::max)
    };
    let (max_t, max) = points
        .iter()
        .copied()
        .reduce(|a, b| if b.1 > a.1 { b } else { a })?;
    Some(Bound {
        end: points.last()?.1,
        max,
        max_t,
        middle_max: max_in(duration / 3.0, 2.0 * duration / 3.0 - 1e-3)?,
        last_max: max_in(2.0 * duration / 3.0, duration)?,
    })
}

fn print_samples(samples: &[Sample]) {
    let active: Vec<&str> = Queue::ALL
        .map(Queue::name)
        .iter()
        .copied()
        .filter(|q| {
            samples.iter().any(|s| {
                let c = s.queue(q);
                c.succeeded + queued(&c) + c.failed + c.dead > 0
            })
        })
        .collect();
    let mut headers: Vec<String> = [
        "t (s)",
        "serve RSS MiB",
        "work RSS MiB",
        "Redis MiB",
        "run keys",
        "run keys MiB",
    ]
    .map(String::from)
    .to_vec();
    for q in &active {
        headers.push(format!("{q} succ/queued"));
    }
    headers.push("failed+dead".into());
    headers.push("req ok".into());
    headers.push("req errors".into());
    let rows: Vec<Vec<String>> = samples
        .iter()
        .map(|s| {
            let mut row = vec![
                dec(s.t, 0),
                dec(s.serve_mib(), 1),
                dec(s.work_mib(), 1),
                dec(s.redis_mib(), 1),
                s.ns_keys.map_or("?".into(), |k| thousands(k as f64)),
                s.ns_mib().map_or("?".into(), |m| dec(m, 2)),
            ];
            for q in &active {
                let c = s.queue(q);
                row.push(format!("{}/{}", thousands(c.succeeded as f64), queued(&c)));
            }
            row.push(
                s.queues
                    .iter()
                    .map(|(_, c)| c.failed + c.dead)
                    .sum::<u64>()
                    .to_string(),
            );
            row.push(thousands(s.ok as f64));
            row.push(s.errors.to_string());
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    print_table_aligned(&headers, &rows, 0);
}

/// A warning or error of a child's JSON log, for [`log_findings`]: "[kind] message; outcome: …;
/// error: …".
fn describe_event(v: &Value) -> String {
    // backroom's JSON logs carry the event's fields at the top level (tracing-subscriber's
    // default puts them under "fields"; both are read).
    let field = |name: &str| {
        v.get(name)
            .or_else(|| v["fields"].get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut what = field("message").unwrap_or_default();
    if let Some(kind) = v["span"]["kind"].as_str() {
        what = format!("[{kind}] {what}");
    }
    for name in ["outcome", "error"] {
        if let Some(value) = field(name) {
            let _ = write!(
                what,
                "; {name}: {}",
                value.chars().take(160).collect::<String>()
            );
        }
    }
    what
}

// ---------------------------------------------------------------------------------------------
// The chart.

/// 1, 2 or 5 × 10^k, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let exp = raw.max(1e-9).log10().floor();
    let base = 10f64.powf(exp);
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * base)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A sample's value in one series (MiB), if it has one.
type SeriesOf = fn(&Sample) -> Option<f64>;

/// One panel of the chart: a series and, for the RSS panels, the growth target.
struct Panel {
    title: &'static str,
    colour: &'static str,
    value: SeriesOf,
    /// Draw the "+10 % over the warm-up value" line.
    growth_target: bool,
}

/// An SVG line chart of RSS serve, RSS worker, Redis `used_memory` and this run's Redis keys
/// (MiB) over time, one panel each on a shared time axis (each from 0, so a panel's slope is its
/// relative growth), with the warm-up shaded and each process's +10 % line from its value at the
/// warm-up's end.
fn chart_svg(samples: &[Sample], duration: f64, title: &str) -> String {
    const W: f64 = 960.0;
    const PANEL_H: f64 = 150.0;
    const GAP: f64 = 44.0;
    let (left, right, top) = (70.0, 250.0, 56.0);
    let panels = [
        Panel {
            title: "RSS of backroom serve",
            colour: "#1f77b4",
            value: |s| Some(s.serve_mib()),
            growth_target: true,
        },
        Panel {
            title: "RSS of backroom work",
            colour: "#d62728",
            value: |s| Some(s.work_mib()),
            growth_target: true,
        },
        Panel {
            title: "Redis used_memory (the whole server)",
            colour: "#2ca02c",
            value: |s| Some(s.redis_mib()),
            growth_target: false,
        },
        Panel {
            title: "Redis: this run's keys (MEMORY USAGE)",
            colour: "#9467bd",
            value: Sample::ns_mib,
            growth_target: false,
        },
    ];
    let plot_w = W - left - right;
    let h = top + panels.len() as f64 * (PANEL_H + GAP) + 20.0;
    let x_max = duration.max(samples.last().map_or(1.0, |s| s.t)).max(1.0);
    let x_step = nice_step(x_max / 10.0);
    let x = |t: f64| left + t / x_max * plot_w;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12"><rect width="{W}" height="{h}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{left}" y="42" fill="#555555">MiB over seconds since the load started; grey: warm-up ({:.0} %); dashed: warm-up value + {:.0} % (the RSS target)</text>"##,
        WARMUP_SHARE * 100.0,
        RSS_GROWTH_TARGET * 100.0
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = top + i as f64 * (PANEL_H + GAP) + 16.0;
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| (panel.value)(s).map(|v| (s.t, v)))
            .collect();
        let target = panel
            .growth_target
            .then(|| growth(samples, duration, |s| (panel.value)(s).unwrap_or(0.0)))
            .flatten();
        let top_value = points
            .iter()
            .map(|p| p.1)
            .chain(target.iter().map(|g| g.warm * (1.0 + RSS_GROWTH_TARGET)))
            .fold(0.0, f64::max)
            .max(0.01);
        let y_step = nice_step(top_value / 4.0);
        let y_max = (top_value / y_step).ceil() * y_step;
        let y = |v: f64| top + PANEL_H - v / y_max * PANEL_H;
        let _ = writeln!(
            svg,
            r#"<text x="{left}" y="{:.1}" font-weight="bold">{}</text>"#,
            top - 6.0,
            escape(panel.title)
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{:.1}" height="{PANEL_H}" fill="#f0f0f0"/>"##,
            x(WARMUP_SHARE * duration) - left
        );
        let mut v = 0.0;
        while v <= y_max + 1e-9 {
            let label = if y_step < 1.0 { dec(v, 1) } else { dec(v, 0) };
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                left + plot_w,
                y(v),
                y(v),
                left - 6.0,
                y(v) + 4.0
            );
            v += y_step;
        }
        let mut t = 0.0;
        while t <= x_max + 1e-9 {
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{top}" y2="{:.1}" stroke="#eeeeee"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                x(t),
                x(t),
                top + PANEL_H,
                x(t),
                top + PANEL_H + 15.0,
                dec(t, 0)
            );
            t += x_step;
        }
        let _ = writeln!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#444444"/>"##
        );
        if let Some(g) = &target {
            let limit = g.warm * (1.0 + RSS_GROWTH_TARGET);
            let _ = writeln!(
                svg,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{}" stroke-dasharray="5 4" stroke-opacity="0.7"/>"#,
                x(g.warm_t),
                left + plot_w,
                y(limit),
                y(limit),
                panel.colour
            );
        }
        let coords: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            panel.colour,
            coords.join(" ")
        );
        for (t, v) in &points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                x(*t),
                y(*v),
                panel.colour
            );
        }
        // On the right: start, peak and end, and the growth against the target.
        let lx = left + plot_w + 14.0;
        let mut lines = vec![];
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
            lines.push(format!(
                "start {} · end {} MiB",
                dec(first.1, 1),
                dec(last.1, 1)
            ));
            lines.push(format!("peak {} MiB", dec(peak, 1)));
        }
        if let Some(g) = &target {
            lines.push(format!("growth after warm-up {:+.1} %", g.growth * 100.0));
            lines.push(format!(
                "(target ≤ {:.0} %: {})",
                RSS_GROWTH_TARGET * 100.0,
                verdict(g.growth <= RSS_GROWTH_TARGET)
            ));
        } else if let Some(b) = bound(samples, duration, panel.value) {
            lines.push(format!("last third / middle third max × {:.3}", b.ratio()));
            lines.push(format!(
                "(bounded if ≤ × {REDIS_BOUND_FACTOR}: {})",
                verdict(b.pass())
            ));
        }
        for (j, line) in lines.iter().enumerate() {
            let _ = writeln!(
                svg,
                r##"<text x="{lx}" y="{:.1}" fill="#333333">{}</text>"##,
                top + 16.0 + j as f64 * 18.0,
                escape(line)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

// ---------------------------------------------------------------------------------------------

async fn run(names: Names, config: Config) -> anyhow::Result<Vec<Verdict>> {
    let redis = redis_connection(&names.redis_url).await?;
    let redis_before = redis_used_memory(&mut redis.clone()).await?;
    let db = names.create_database().await?;
    let queues = names.queues()?;
    println!(
        "soak benchmark ({} mode): {} CPUs, Postgres {}, Redis {} (namespace {}, used_memory {:.1} MiB before the run)",
        if config.smoke { "smoke" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        names.db_name,
        names.redis_url,
        names.namespace,
        redis_before as f64 / MIB
    );
    println!(
        "  load for {} s: single adjustments {}/s, batches {}/s × {} (≈ {:.0} adjustments/s), orders {}/s, emails {}/s; forecast of {} SKUs × {} days at the start; retention {} s; a sample every {} s",
        config.duration.as_secs(),
        config.single_rate,
        config.batch_rate,
        config.batch_size,
        config.single_rate + config.batch_rate * config.batch_size as f64,
        config.order_rate,
        config.email_rate,
        config.forecast_skus,
        config.forecast_days,
        config.retention_secs,
        config.sample_every.as_secs()
    );
    let mut running = start_processes(&config, &names, &queues).await?;
    let mut ctx = Ctx {
        config,
        names,
        db,
        redis,
        queues,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: running.base(),
        key: String::new(),
        forecast_key: None,
    };
    eprintln!("  creating tenants, products, stock and sales history");
    create_tenants(&mut ctx).await?;

    // The load.
    let duration = ctx.config.duration.as_secs_f64();
    eprintln!("  load running for {duration:.0} s");
    let start = Instant::now();
    let until = start + ctx.config.duration;
    let mut streams = start_load(&ctx, until);
    let forecast = start_forecast(&ctx, until + DRAIN_LIMIT);
    let mut samples: Vec<Sample> = vec![];
    let mut next = start;
    loop {
        running.check_alive()?;
        let sample = take_sample(&ctx, &running, &streams, start).await?;
        eprintln!("{}", progress_line(&sample, samples.last()));
        samples.push(sample);
        if next >= until {
            break;
        }
        next = (next + ctx.config.sample_every).min(until);
        tokio::time::sleep_until(next.into()).await;
    }
    for stream in &mut streams {
        if let Some(join) = stream.join.take() {
            let _ = join.await;
        }
    }
    let load_secs = start.elapsed().as_secs_f64();

    // The drain: how long the workers need for what the load left queued.
    let left = samples
        .last()
        .map_or(0, |s| s.queues.iter().map(|(_, c)| queued(c)).sum::<u64>());
    let drain_started = Instant::now();
    let mut drained = None;
    while drain_started.elapsed() < DRAIN_LIMIT {
        running.check_alive()?;
        let counts = ctx.counts().await?;
        if counts.iter().all(|(_, c)| queued(c) == 0) {
            drained = Some(drain_started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let final_counts = ctx.counts().await?;
    let forecast = match forecast {
        Some((outcome, join)) => {
            if drained.is_some() {
                let _ = tokio::time::timeout(Duration::from_secs(5), join).await;
            } else {
                join.abort();
            }
            Some(outcome.lock().unwrap().clone())
        }
        None => None,
    };
    let sink_received = running.sink.received();
    let sink_connections = running.sink.connections();
    let by_status = |table: &'static str| {
        let db = ctx.db.clone();
        async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT status, count(*) FROM {table} GROUP BY status ORDER BY status"
            )))
            .fetch_all(&db)
            .await?;
            anyhow::Ok(
                rows.iter()
                    .map(|(s, n)| format!("{s} {}", thousands(*n as f64)))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
    };
    let invoices = by_status("invoices").await?;
    let emails = by_status("emails").await?;

    // Stop the processes (gracefully; the guards kill them on any early return).
    let (stops, logs) = running.stop(STOP_GRACE).await?;

    let outcome = Outcome {
        redis_before,
        samples,
        streams,
        load_secs,
        left,
        drained,
        final_counts,
        forecast,
        sink_received,
        sink_connections,
        invoices,
        emails,
        stops,
        logs,
    };
    let verdicts = report(&ctx.config, &outcome);
    let svg_path = target_dir().join("soak.svg");
    let title = format!(
        "backroom soak: memory over {:.0} s of mixed load ({} mode)",
        duration,
        if ctx.config.smoke { "smoke" } else { "full" }
    );
    std::fs::write(&svg_path, chart_svg(&outcome.samples, duration, &title))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    println!("\n  chart: {}", svg_path.display());
    ctx.db.close().await;
    Ok(verdicts)
}

/// What a run measured, for [`report`].
struct Outcome {
    /// Redis `used_memory` before the bench created anything.
    redis_before: u64,
    samples: Vec<Sample>,
    streams: Vec<Stream>,
    load_secs: f64,
    /// Jobs queued when the load stopped.
    left: u64,
    /// Seconds the backlog took to drain after the load (`None`: not within `DRAIN_LIMIT`).
    drained: Option<f64>,
    final_counts: Vec<(&'static str, QueueCounts)>,
    forecast: Option<ForecastOutcome>,
    sink_received: u64,
    sink_connections: u64,
    /// "status count, …" of the invoices and emails tables.
    invoices: String,
    emails: String,
    /// How each child stopped.
    stops: Vec<String>,
    logs: PathBuf,
}

/// Prints the samples and the findings; returns the verdicts for the summary.
fn report(config: &Config, o: &Outcome) -> Vec<Verdict> {
    let Outcome {
        redis_before,
        samples,
        streams,
        load_secs,
        left,
        drained,
        final_counts,
        forecast,
        sink_received,
        sink_connections,
        invoices,
        emails,
        stops,
        logs,
    } = o;
    let (left, drained, load_secs) = (*left, *drained, *load_secs);
    let duration = config.duration.as_secs_f64();
    println!(
        "\n== samples (every {} s; succ = succeeded jobs still retained, queued = pending + running + scheduled + retrying) ==",
        config.sample_every.as_secs()
    );
    print_samples(samples);

    let mut verdicts = vec![];
    println!(
        "\n== memory (warm-up = first {:.0} % of the run; target: RSS growth after it ≤ {:.0} %) ==",
        WARMUP_SHARE * 100.0,
        RSS_GROWTH_TARGET * 100.0
    );
    for (name, value) in [
        ("serve", Sample::serve_mib as fn(&Sample) -> f64),
        ("work", Sample::work_mib),
    ] {
        let peak = samples.iter().map(value).fold(0.0, f64::max);
        match growth(samples, duration, value) {
            Some(g) => {
                let pass = g.growth <= RSS_GROWTH_TARGET;
                println!(
                    "  RSS {name}: {:.1} MiB at {:.0} s (warm-up end), last-quarter mean {:.1} MiB, growth {:+.1} % (target ≤ {:.0} %)  {}   [start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB]",
                    g.warm,
                    g.warm_t,
                    g.last_quarter_mean,
                    g.growth * 100.0,
                    RSS_GROWTH_TARGET * 100.0,
                    verdict(pass),
                    samples.first().map_or(0.0, value),
                    peak,
                    samples.last().map_or(0.0, value)
                );
                verdicts.push(Verdict {
                    target: format!(
                        "RSS {name} growth after warm-up ≤ {:.0} %",
                        RSS_GROWTH_TARGET * 100.0
                    ),
                    measured: format!(
                        "{:+.1} % ({:.1} → {:.1} MiB)",
                        g.growth * 100.0,
                        g.warm,
                        g.last_quarter_mean
                    ),
                    pass,
                });
            }
            None => println!("  RSS {name}: too few samples to judge"),
        }
    }
    let redis_series: [(&str, &str, SeriesOf); 2] = [
        ("Redis used_memory", "(the whole server)", |s| {
            Some(s.redis_mib())
        }),
        (
            "Redis, this run's keys",
            "(MEMORY USAGE of the namespace)",
            Sample::ns_mib,
        ),
    ];
    for (name, what, value) in redis_series {
        let Some(b) = bound(samples, duration, value) else {
            println!("  {name}: too few samples to judge");
            continue;
        };
        let pass = b.pass();
        println!(
            "  {name} {what}: {:.2} MiB at the end, max {:.2} MiB at {:.0} s; max of the middle third {:.2} MiB, of the last third {:.2} MiB (× {:.3}; bounded if ≤ × {REDIS_BOUND_FACTOR})  {}",
            b.end,
            b.max,
            b.max_t,
            b.middle_max,
            b.last_max,
            b.ratio(),
            verdict(pass)
        );
        verdicts.push(Verdict {
            target: format!(
                "{name} bounded (last third max ≤ {REDIS_BOUND_FACTOR} × middle third max)"
            ),
            measured: format!(
                "× {:.3} ({:.2} vs {:.2} MiB; end {:.2}, max {:.2})",
                b.ratio(),
                b.last_max,
                b.middle_max,
                b.end,
                b.max
            ),
            pass,
        });
    }
    let keys: Vec<u64> = samples.iter().filter_map(|s| s.ns_keys).collect();
    if let (Some(first), Some(last), Some(peak)) = (keys.first(), keys.last(), keys.iter().max()) {
        println!(
            "  this run's keys: {} at the start, peak {}, {} at the end",
            thousands(*first as f64),
            thousands(*peak as f64),
            thousands(*last as f64)
        );
    }
    println!(
        "  Redis used_memory before the run: {:.1} MiB (whatever else that server holds counts in used_memory too)",
        *redis_before as f64 / MIB
    );

    println!("\n== load clients ({load_secs:.0} s) ==");
    let mut rows = vec![];
    let mut total_errors = 0;
    for s in streams.iter() {
        let t = &s.tally;
        let mut lat: Vec<f64> = t
            .latencies_ms
            .lock()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        lat.sort_by(f64::total_cmp);
        let ok = t.ok.load(Ordering::Relaxed);
        let non_2xx = t.non_2xx.lock().unwrap().clone();
        total_errors += t.errors();
        rows.push(vec![
            s.name.to_string(),
            format!("{}/s", s.rate),
            dec(ok as f64 / duration, 1),
            thousands(t.sent.load(Ordering::Relaxed) as f64),
            thousands(ok as f64),
            thousands((ok * s.units as u64) as f64),
            if non_2xx.is_empty() {
                "0".into()
            } else {
                non_2xx
                    .iter()
                    .map(|(code, n)| format!("{code}×{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            t.transport_errors.load(Ordering::Relaxed).to_string(),
            t.skipped.load(Ordering::Relaxed).to_string(),
            dec(percentile(&lat, 50.0), 1),
            dec(percentile(&lat, 99.0), 1),
            dec(lat.last().copied().unwrap_or(f64::NAN), 0),
        ]);
    }
    print_table(
        &[
            "stream",
            "target",
            "2xx/s",
            "sent",
            "2xx",
            "units",
            "non-2xx",
            "transport err",
            "skipped",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
        &rows,
    );
    for s in streams.iter() {
        for f in s.tally.failures.lock().unwrap().iter() {
            println!("  {}: e.g. {f}", s.name);
        }
    }
    verdicts.push(Verdict {
        target: "load clients: no non-2xx answers or transport errors".into(),
        measured: format!("{total_errors} errors"),
        pass: total_errors == 0,
    });

    println!("\n== after the load ==");
    match drained {
        Some(secs) => println!(
            "  backlog at the end of the load: {} jobs, drained in {secs:.1} s",
            thousands(left as f64)
        ),
        None => println!(
            "  backlog at the end of the load: {} jobs, NOT drained within {} s (still queued: {})",
            thousands(left as f64),
            DRAIN_LIMIT.as_secs(),
            final_counts
                .iter()
                .filter(|(_, c)| queued(c) > 0)
                .map(|(n, c)| format!("{n} {}", queued(c)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    verdicts.push(Verdict {
        target: format!(
            "(check) workers keep up: backlog drained within {} s",
            DRAIN_LIMIT.as_secs()
        ),
        measured: drained.map_or("not drained".into(), |s| {
            format!("{} jobs in {s:.1} s", thousands(left as f64))
        }),
        pass: drained.is_some(),
    });
    let failed: Vec<String> = final_counts
        .iter()
        .filter(|(_, c)| c.failed + c.dead > 0)
        .map(|(n, c)| format!("{n}: {} failed, {} dead", c.failed, c.dead))
        .collect();
    println!(
        "  failed/dead jobs: {}",
        if failed.is_empty() {
            "none".to_string()
        } else {
            failed.join("; ")
        }
    );
    verdicts.push(Verdict {
        target: "(check) no failed or dead jobs".into(),
        measured: if failed.is_empty() {
            "none".into()
        } else {
            failed.join("; ")
        },
        pass: failed.is_empty(),
    });
    let orders_ok = streams
        .iter()
        .find(|s| s.name == "orders")
        .map_or(0, |s| s.tally.ok.load(Ordering::Relaxed));
    let emails_ok = streams
        .iter()
        .find(|s| s.name == "emails")
        .map_or(0, |s| s.tally.ok.load(Ordering::Relaxed));
    println!("  invoices in Postgres: {invoices}");
    println!("  emails in Postgres: {emails}");
    println!(
        "  SMTP sink: {} messages over {} connections (accepted: {} orders + {} emails = {})",
        thousands(*sink_received as f64),
        sink_connections,
        thousands(orders_ok as f64),
        thousands(emails_ok as f64),
        thousands((orders_ok + emails_ok) as f64)
    );
    if let Some(f) = &forecast {
        println!(
            "  forecast run {}: {} ({} of {} SKUs){}{}",
            f.run_id,
            if f.status.is_empty() { "?" } else { &f.status },
            f.skus_done,
            f.skus_total,
            f.seconds
                .map(|s| format!(", finished {s:.1} s after the request"))
                .unwrap_or_default(),
            f.error
                .as_ref()
                .map(|e| format!("; {e}"))
                .unwrap_or_default()
        );
        verdicts.push(Verdict {
            target: "(check) the forecast run succeeds".into(),
            measured: format!(
                "{}{}",
                if f.status.is_empty() { "?" } else { &f.status },
                f.seconds
                    .map(|s| format!(" in {s:.1} s"))
                    .unwrap_or_default()
            ),
            pass: f.status == "succeeded",
        });
    }
    println!("  stopped: {}", stops.join("; "));
    for log in ["serve.log", "work.log"] {
        let path = logs.join(log);
        let (found, other) = log_findings(&path, describe_event);
        let total: u64 = found.iter().map(|(_, n)| n).sum();
        println!(
            "  {}: {} warnings/errors{}",
            path.display(),
            total,
            if other > 0 {
                format!(", {other} lines that are not JSON")
            } else {
                String::new()
            }
        );
        for ((level, message), n) in found.iter().take(6) {
            println!("    {n:>6} × {level} {message}");
        }
        if log == "work.log" {
            // An order's email waits for its invoice job in the queue: it should never run
            // early and retry over an invoice that is not ready (about 1,200 such retries per
            // 1,200 invoices when it polled).
            let not_ready: u64 = found
                .iter()
                .filter(|((_, message), _)| message.contains("invoice is not ready"))
                .map(|(_, n)| n)
                .sum();
            verdicts.push(Verdict {
                target: "(check) no order email retried over an invoice not ready yet".into(),
                measured: format!("{not_ready} retries"),
                pass: not_ready == 0,
            });
        }
    }

    verdicts
}

fn main() -> anyhow::Result<()> {
    bench_main(
        "soak",
        "a 60 s smoke run shows the shape, not the verdicts: the warm-up and the forecast fill \
         the first part, and the workers trim the finished-job sets once a minute, so this run's \
         Redis keys cannot level off within 60 s; run the full mode",
        // A logical database of its own, so that sampling this run's keys stays cheap.
        in_own_redis_database,
        |names, smoke| async move { run(names, Config::from_env(smoke)?).await },
    )
}
