//! The noisy neighbour (issue #16, "no tenant can hurt another"): how much a quiet tenant's
//! latencies move while another tenant attacks the platform through its API.
//!
//! Prints figures next to their targets with PASS or MISS, and a summary; never asserts. It runs
//! as in production, only co-located on one machine:
//!
//! - **Processes.** The `backroom` binary this bench was built with (`CARGO_BIN_EXE_backroom`,
//!   or `backroom` next to the bench's `deps/` directory) runs as one `backroom serve` on a free
//!   port and one `backroom work` (every queue, default concurrency), against a fresh database and
//!   Redis namespace, with `SMTP_URL` pointing at an SMTP sink inside this bench. The per-tenant
//!   email limit is 600 a minute (`BACKROOM_EMAILS_PER_MINUTE`), above what tenant B sends and
//!   far below what A floods; every other `BACKROOM_*` setting of the caller's environment passes
//!   through (the server's defaults otherwise: header timeout 10 s, 4,096 connections, 1,000
//!   requests/s per tenant, 60 failed authentications a minute per address). Their logs (JSON,
//!   `NOISY_CHILD_LOG`, default `warn`) go to `<target>/noisy-logs/{serve,work}.log`.
//! - **Tenant B** (the quiet one: 50 products with ample stock) runs the same open-loop mix in
//!   both phases: single stock adjustments 20/s, batches of 100 adjustments 0.5/s, orders of 1–3
//!   lines 2/s (each: a sale per line, an invoice PDF and an email) and direct emails 2/s; at most
//!   64 requests of a kind in flight (beyond that a tick is skipped and counted). A few seconds
//!   of the mix warm the server up first, unmeasured.
//! - **Phase 1, solo**: B alone for `NOISY_SECS` (60 s; 15 s in smoke mode).
//! - **Phase 2, attack**: B again for as long, while tenant A, from the same address (127.0.0.1):
//!   floods the stock, invoices and emails queues with `NOISY_FLOOD_JOBS` jobs (100,000; 3,000
//!   in smoke mode): 60 % as batches of up to 1,000 stock adjustments, 8 % as one-line orders
//!   (3 jobs each), the rest as emails, 18 requests at once, each 429 retried after its
//!   `Retry-After` (at most 1 s); uploads hostile sales CSVs from 3 uploaders at once (a 4 MiB
//!   header without the `quantity` column, a row dated `0001-01-01`, one 1 MiB over
//!   `BACKROOM_MAX_IMPORT_BYTES`; each on a raw connection that reads the answer while sending,
//!   so that a refusal before the end of the body is heard) and stock adjustments dated
//!   `0001-01-01`; starts a forecast run every second (A has 300 SKUs × 730 days of sales
//!   history; 30 × 365 in smoke mode: a run is real work, and while it is queued or running
//!   another start is 409); holds `NOISY_SLOW_CONNECTIONS` (500;
//!   100 in smoke mode) TCP connections that send a partial request head and one more byte every
//!   3 s, never finishing (reopened when the server cuts one); and sends 100 requests a second
//!   with garbage bearer tokens (malformed strings, and well-formed `bk_` + 43 random base64url
//!   characters). Every loop stops at the end of the phase.
//! - **Enqueue-to-start** of B's jobs is read from the queue's per-job hash in Redis (through
//!   `Queues::get`; `GET /v1/jobs/{id}` does not show when a job started): `started_at` (set when a
//!   worker takes the job from the queue into its prefetch buffer) − `created_at` (the push;
//!   for an order's jobs, the outbox relay's push), whole milliseconds. The hash keeps only the
//!   last attempt's start, so for a retried job (an order's email waits for its invoice by
//!   retrying) the first attempt's end, from its error list, stands in for its start. Job ids
//!   come from the 202 answers, and for orders from the `outbox` rows of B's tenant.
//!   Enqueue-to-finish (`finished_at` − `created_at`) is shown next to it. After each phase the
//!   bench waits (at most 120 s; 30 s in smoke mode) for B's jobs to finish; A's backlog is left
//!   queued.
//!
//! `NOISY_ATTACKS` (a comma-separated list of `flood-stock`, `flood-orders`, `flood-emails`
//! (or `flood` for the three), `uploads`, `forecasts`, `slow` and `garbage`; `all` by default)
//! runs only some of A's attacks, to see what each costs B.
//!
//! Printed: B's API latency p50/p99 per request kind, 2xx/s and errors, and its enqueue-to-start
//! p50/p99 per queue, solo and under attack side by side (target: each p99 under attack ≤ 2 × its
//! solo value, for enqueue-to-start at least 5 ms since its timestamps are whole milliseconds; no
//! errors for B); A's answers by status for each attack (401, 409, 413, 422 and 429 are the
//! designed refusals; any 5xx or transport error fails) and the fate of its imports; the slow
//! connections the server cut and after how long (a figure, not judged); the cores each part
//! used in each phase (`serve`, `work`, this bench's clients, Postgres, Redis, the rest; read
//! from `/proc`; a figure); whether `serve` and `work` are still alive at the end, and the
//! warnings and errors in their logs; Redis
//! `used_memory` at the start, its maximum (sampled every second) and at the end, and this run's
//! keys (`MEMORY USAGE` of the namespace) after each phase against a bound of 256 MiB.
//!
//! Run with `cargo bench --bench noisy` (about 3 minutes plus set-up), or
//! `cargo bench --bench noisy -- --smoke` (or `BENCH_SMOKE=1`, about a minute). The bench never
//! builds anything. Needs Postgres (the server of `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432`; a database `backroom_bench_<uuid>` is created and
//! dropped) and Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`; every key lives under the
//! namespace `bench-<uuid>`, in the highest-numbered empty logical database of a single node, and
//! is deleted at the end). All traffic goes to 127.0.0.1. The children, the sink, the database
//! and the keys are cleaned up after an error or Ctrl-C too.

mod common;

use anyhow::Context as _;
use backroom::jobs::Queue;
use backroom::queue::{QueueName, Queues};
use base64::Engine as _;
use common::*;
use futures::StreamExt as _;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// B's p99s under attack may be at most this times their solo values.
const P99_FACTOR: f64 = 2.0;
/// ... and enqueue-to-start's at least this (its timestamps are whole milliseconds).
const START_FLOOR_MS: f64 = 5.0;
/// This run's Redis keys may take at most this much.
const REDIS_BOUND_MIB: f64 = 256.0;

// Tenant B's mix (requests a second) and products.
const SINGLE_RATE: f64 = 20.0;
const BATCH_RATE: f64 = 0.5;
const BATCH_SIZE: u64 = 100;
const ORDER_RATE: f64 = 2.0;
const EMAIL_RATE: f64 = 2.0;
const MAX_IN_FLIGHT: usize = 64;
const PRODUCTS: u64 = 50;
const SEED_STOCK: i64 = 10_000_000;

// Tenant A.
const GARBAGE_RATE: f64 = 100.0;
const TRICKLE: Duration = Duration::from_secs(3);
const UPLOADERS: usize = 3;
const WIDE_HEADER_BYTES: usize = 4 << 20;

struct Config {
    smoke: bool,
    phase: Duration,
    warmup: Duration,
    flood_jobs: u64,
    slow_connections: usize,
    uploads_per_uploader: usize,
    forecast_skus: usize,
    forecast_days: usize,
    /// How long B's jobs of a phase may take to finish after it.
    finish_wait: Duration,
    max_import_bytes: usize,
    /// Which of A's attacks run (`NOISY_ATTACKS`; all by default).
    attacks: Vec<AttackKind>,
}

/// One of A's attacks, as named in `NOISY_ATTACKS`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum AttackKind {
    FloodStock,
    FloodOrders,
    FloodEmails,
    Uploads,
    Forecasts,
    Slow,
    Garbage,
}

impl AttackKind {
    const ALL: [AttackKind; 7] = [
        AttackKind::FloodStock,
        AttackKind::FloodOrders,
        AttackKind::FloodEmails,
        AttackKind::Uploads,
        AttackKind::Forecasts,
        AttackKind::Slow,
        AttackKind::Garbage,
    ];

    fn name(self) -> &'static str {
        match self {
            AttackKind::FloodStock => "flood-stock",
            AttackKind::FloodOrders => "flood-orders",
            AttackKind::FloodEmails => "flood-emails",
            AttackKind::Uploads => "uploads",
            AttackKind::Forecasts => "forecasts",
            AttackKind::Slow => "slow",
            AttackKind::Garbage => "garbage",
        }
    }

    /// `NOISY_ATTACKS`: a comma-separated list of attack names, `flood` (its three parts) or
    /// `all` (the default).
    fn from_env() -> anyhow::Result<Vec<AttackKind>> {
        let list = std::env::var("NOISY_ATTACKS").unwrap_or_else(|_| "all".into());
        let mut kinds = vec![];
        for name in list.split(',').map(str::trim) {
            match name {
                "all" => kinds.extend(AttackKind::ALL),
                "flood" => kinds.extend(&AttackKind::ALL[..3]),
                _ => kinds.push(
                    AttackKind::ALL
                        .into_iter()
                        .find(|a| a.name() == name)
                        .with_context(|| {
                            let names = AttackKind::ALL.map(AttackKind::name).join(", ");
                            format!("NOISY_ATTACKS: {name:?} is none of all, flood, {names}")
                        })?,
                ),
            }
        }
        Ok(kinds)
    }
}

impl Config {
    fn from_env(smoke: bool) -> anyhow::Result<Self> {
        let secs: u64 = env_or("NOISY_SECS", if smoke { 15 } else { 60 })?;
        anyhow::ensure!(secs >= 5, "NOISY_SECS: at least 5");
        let config = Config {
            smoke,
            phase: Duration::from_secs(secs),
            warmup: Duration::from_secs(if smoke { 2 } else { 5 }),
            flood_jobs: env_or("NOISY_FLOOD_JOBS", if smoke { 3_000 } else { 100_000 })?,
            slow_connections: env_or("NOISY_SLOW_CONNECTIONS", if smoke { 100 } else { 500 })?,
            uploads_per_uploader: if smoke { 4 } else { 40 },
            forecast_skus: if smoke { 30 } else { 300 },
            forecast_days: if smoke { 365 } else { 730 },
            finish_wait: Duration::from_secs(if smoke { 30 } else { 120 }),
            max_import_bytes: env_or("BACKROOM_MAX_IMPORT_BYTES", 64 << 20)?,
            attacks: AttackKind::from_env()?,
        };
        anyhow::ensure!(
            (100..=1_000_000).contains(&config.flood_jobs),
            "NOISY_FLOOD_JOBS: 100..=1000000"
        );
        anyhow::ensure!(
            config.slow_connections <= 5_000,
            "NOISY_SLOW_CONNECTIONS: at most 5000"
        );
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// What one kind of request saw.
#[derive(Default)]
struct Tally {
    /// Answers by status; 0 is a transport error.
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// Ticks dropped because `MAX_IN_FLIGHT` requests were out.
    skipped: AtomicU64,
    latencies_ms: Mutex<Vec<f64>>,
    /// Job ids from the 2xx answers.
    job_ids: Mutex<Vec<String>>,
    /// The first few unexpected answers, verbatim.
    examples: Mutex<Vec<String>>,
    /// Every non-2xx answer is unexpected (tenant B); otherwise only 5xx and transport errors.
    strict: bool,
}

impl Tally {
    fn new(strict: bool) -> Arc<Self> {
        Arc::new(Tally {
            strict,
            ..Tally::default()
        })
    }

    fn count(&self, which: impl Fn(u16) -> bool) -> u64 {
        let statuses = self.statuses.lock().unwrap();
        statuses
            .iter()
            .filter(|(s, _)| which(**s))
            .map(|(_, n)| n)
            .sum()
    }

    fn ok(&self) -> u64 {
        self.count(|s| (200..300).contains(&s))
    }

    fn failures(&self) -> u64 {
        self.count(|s| s == 0 || s >= 500)
    }

    fn statuses_text(&self) -> String {
        let statuses = self.statuses.lock().unwrap();
        if statuses.is_empty() {
            return "-".into();
        }
        statuses
            .iter()
            .map(|(s, n)| match s {
                0 => format!("transport×{n}"),
                s => format!("{s}×{n}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Counts an answer that took since `started`; keeps the first few unexpected ones.
    fn record(&self, status: u16, started: Instant, text: &[u8]) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        *self.statuses.lock().unwrap().entry(status).or_default() += 1;
        self.latencies_ms.lock().unwrap().push(ms);
        let ok = (200..300).contains(&status);
        if !ok && (self.strict || status == 0 || status >= 500) {
            let mut examples = self.examples.lock().unwrap();
            if examples.len() < 3 {
                let text: String = String::from_utf8_lossy(text).chars().take(300).collect();
                examples.push(format!("{status}: {text}"));
            }
        }
    }

    fn sorted_latencies(&self) -> Vec<f64> {
        let mut lat = self.latencies_ms.lock().unwrap().clone();
        lat.sort_by(f64::total_cmp);
        lat
    }
}

struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<Duration>,
}

/// Sends `request` and records its status (0: transport error) and latency in `tally`.
async fn send(tally: &Tally, request: reqwest::RequestBuilder) -> Answer {
    let started = Instant::now();
    let (status, text, retry_after) = match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .map(Duration::from_secs);
            match r.bytes().await {
                Ok(body) => (status, body.to_vec(), retry_after),
                Err(e) => (
                    0,
                    format!("reading the body: {}", chain(&e)).into_bytes(),
                    None,
                ),
            }
        }
        Err(e) => (0, chain(&e).into_bytes(), None),
    };
    tally.record(status, started, &text);
    let ok = (200..300).contains(&status);
    Answer {
        status,
        body: if ok {
            serde_json::from_slice(&text).unwrap_or(Value::Null)
        } else {
            Value::Null
        },
        retry_after,
    }
}

/// An error and its sources, one after the other.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Builds request `i` of a stream.
type MakeRequest = Arc<dyn Fn(u64) -> reqwest::RequestBuilder + Send + Sync>;
/// The job ids in a 2xx answer.
type JobIds = fn(&Value) -> Vec<String>;

fn job_id(v: &Value) -> Vec<String> {
    v["job_id"]
        .as_str()
        .map(str::to_string)
        .into_iter()
        .collect()
}

fn batch_job_ids(v: &Value) -> Vec<String> {
    v["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["job_id"].as_str().map(str::to_string))
        .collect()
}

fn no_job_ids(_: &Value) -> Vec<String> {
    vec![]
}

/// Open loop: fires `make(i)` every 1/`rate` s until `until`, at most `max_in_flight` at once;
/// returns after the last answer (or 60 s).
async fn drive(
    rate: f64,
    max_in_flight: usize,
    until: Instant,
    tally: Arc<Tally>,
    make: MakeRequest,
    ids: JobIds,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    for i in 0.. {
        ticks.tick().await;
        if Instant::now() >= until {
            break;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tally.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (request, tally) = (make(i), tally.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let answer = send(&tally, request).await;
            let found = ids(&answer.body);
            tally.job_ids.lock().unwrap().extend(found);
        });
    }
    let all = max_in_flight as u32;
    let _ = tokio::time::timeout(Duration::from_secs(60), permits.acquire_many(all)).await;
}

/// Closed loop: sends requests 0..`count`, `concurrency` at once, until `until`; a 429 is sent
/// again after its `Retry-After` (at most 1 s).
async fn flood(
    count: u64,
    concurrency: usize,
    until: Instant,
    tally: Arc<Tally>,
    make: MakeRequest,
) {
    let next = Arc::new(AtomicU64::new(0));
    let senders: Vec<JoinHandle<()>> = (0..concurrency)
        .map(|_| {
            let (next, tally, make) = (next.clone(), tally.clone(), make.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    loop {
                        if Instant::now() >= until {
                            return;
                        }
                        let answer = send(&tally, make(i)).await;
                        if answer.status != 429 {
                            break;
                        }
                        let wait = answer.retry_after.unwrap_or(Duration::from_secs(1));
                        tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        let _ = sender.await;
    }
}

fn sku(i: u64) -> String {
    format!("B-{:03}", i % PRODUCTS)
}

/// Adjustment `n` of B's stream `prefix`: sales and receipts of 1–3 units alternate.
fn adjustment(prefix: &str, n: u64) -> Value {
    let units = 1 + (n / 2) % 3;
    let (delta, reason) = if n.is_multiple_of(2) {
        (-(units as i64), "sale")
    } else {
        (units as i64, "receipt")
    };
    json!({"sku": sku(n.wrapping_mul(7)), "delta": delta, "reason": reason,
           "idempotency_key": format!("{prefix}-{n}")})
}

fn order_body(i: u64) -> Value {
    let lines: Vec<Value> = (0..1 + i % 3)
        .map(|l| json!({"sku": sku(i * 3 + l), "quantity": 1 + (i + l) % 2}))
        .collect();
    json!({
        "customer": {"name": format!("Kundin {i}"), "email": format!("kundin{i}@example.org")},
        "currency": "EUR", "tax_rate": "0.081", "lines": lines
    })
}

fn email_body(prefix: &str, i: u64) -> Value {
    json!({
        "to": format!("patient{i}@example.org"),
        "subject": format!("Terminbestätigung Nr. {i}"),
        "text": format!("Guten Tag,\n\nIhr Termin Nr. {i} ist bestätigt.\n\nPraxis am See"),
        "idempotency_key": format!("{prefix}-email-{i}"),
    })
}

/// POST of `body(i)` to `path` with `key`.
fn post(
    http: &reqwest::Client,
    url: String,
    key: &str,
    body: impl Fn(u64) -> Value + Send + Sync + 'static,
) -> MakeRequest {
    let (http, key) = (http.clone(), key.to_string());
    Arc::new(move |i| http.post(&url).bearer_auth(&key).json(&body(i)))
}

// ---------------------------------------------------------------------------------------------
// Set-up.

struct Ctx {
    config: Config,
    /// The bench's own pool (set-up and reading the outbox).
    db: PgPool,
    redis: redis::aio::MultiplexedConnection,
    namespace: String,
    queues: Queues,
    base: String,
    port: u16,
    /// Separate clients, so that B and A share no connection pool.
    b_http: reqwest::Client,
    a_http: reqwest::Client,
    b_key: String,
    b_id: Uuid,
    a_key: String,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// `serve` and `work`, and how each that exited during the run ended.
struct Running {
    children: Children,
    /// When a child was first seen gone, and how it ended.
    exits: BTreeMap<String, String>,
}

impl Running {
    /// Notes a child that has exited (`when` says where in the run).
    fn check(&mut self, when: &str) {
        for child in [&mut self.children.serve, &mut self.children.work] {
            if let Some(status) = child.exited() {
                self.exits
                    .entry(child.name.clone())
                    .or_insert_with(|| format!("exited ({status}), seen {when}"));
            }
        }
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    // Idle connections go well before the server's idle cut (the header timeout), so that no
    // request races a closing connection.
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(3))
        .build()?)
}

/// Starts the sink, `serve` and `work` (see [`Children::start`]) with the per-tenant email limit
/// and the log filter; waits until the API is ready and the workers heartbeat.
async fn start_processes(names: &Names, queues: &Queues) -> anyhow::Result<Running> {
    let binary = backroom_binary("build it first")?;
    let env = [
        (
            "BACKROOM_MAIL_FROM",
            "Praxis <praxis@backroom.bench>".into(),
        ),
        ("BACKROOM_EMAILS_PER_MINUTE", "600".into()),
        (
            "BACKROOM_LOG",
            std::env::var("NOISY_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ];
    let children = Children::start(
        "noisy",
        &binary,
        names,
        queues,
        &env,
        Duration::from_secs(60),
    )
    .await?;
    Ok(Running {
        children,
        exits: BTreeMap::new(),
    })
}

/// PUT a product of `key`'s tenant.
async fn put_product(ctx: &Ctx, key: &str, sku: &str, allow_negative: bool) -> anyhow::Result<()> {
    ctx.b_http
        .put(ctx.url(&format!("/v1/products/{sku}")))
        .bearer_auth(key)
        .json(
            &json!({"name": format!("Product {sku}"), "unit_price": "9.90", "currency": "EUR",
                      "reorder_point": 0, "reorder_quantity": 10, "lead_time_days": 3,
                      "allow_negative": allow_negative}),
        )
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// B with its products and stock; A with products it may oversell and a sales history.
async fn create_tenants(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (b_id, b_key) = create_tenant(&ctx.b_http, &ctx.base, "quiet-b", "Quiet B").await?;
    let (a_id, a_key) = create_tenant(&ctx.b_http, &ctx.base, "noisy-a", "Noisy A").await?;
    (ctx.b_id, ctx.b_key, ctx.a_key) = (b_id, b_key.clone(), a_key.clone());
    for i in 0..PRODUCTS {
        put_product(ctx, &b_key, &sku(i), false).await?;
        put_product(ctx, &a_key, &format!("A-{i:03}"), true).await?;
    }
    let seed: Vec<Value> = (0..PRODUCTS)
        .map(|i| {
            json!({"sku": sku(i), "delta": SEED_STOCK, "reason": "receipt",
                        "idempotency_key": format!("seed-{i}")})
        })
        .collect();
    ctx.b_http
        .post(ctx.url("/v1/stock-adjustments/batch"))
        .bearer_auth(&b_key)
        .json(&json!({ "adjustments": seed }))
        .send()
        .await?
        .error_for_status()?;
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let skus = backroom::forecast::demo::generate(
        ctx.config.forecast_skus,
        ctx.config.forecast_days,
        yesterday,
        16,
    );
    backroom::forecast::demo::load(&ctx.db, a_id, &skus)
        .await
        .context("loading A's sales history")?;
    let stock = QueueName::parse("stock").expect("known queue");
    let timeout = "B's seed stock not applied in 60 s";
    wait_until(Duration::from_secs(60), timeout, async || {
        let c = ctx.queues.counts(&stock).await?;
        Ok(c.succeeded + c.failed + c.dead >= PRODUCTS)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Tenant B.

/// B's four streams, running until `until`; `prefix` keeps idempotency keys apart per phase.
fn start_b(
    ctx: &Ctx,
    prefix: &'static str,
    until: Instant,
) -> Vec<(&'static str, Arc<Tally>, JoinHandle<()>)> {
    let (http, key) = (&ctx.b_http, &ctx.b_key);
    let streams: [(&'static str, f64, MakeRequest, JobIds); 4] = [
        (
            "stock single",
            SINGLE_RATE,
            post(http, ctx.url("/v1/stock-adjustments"), key, move |i| {
                adjustment(&format!("{prefix}-single"), i)
            }),
            job_id,
        ),
        (
            "stock batch",
            BATCH_RATE,
            post(
                http,
                ctx.url("/v1/stock-adjustments/batch"),
                key,
                move |i| {
                    let all: Vec<Value> = (0..BATCH_SIZE)
                        .map(|j| adjustment(&format!("{prefix}-batch"), i * BATCH_SIZE + j))
                        .collect();
                    json!({ "adjustments": all })
                },
            ),
            batch_job_ids,
        ),
        (
            "orders",
            ORDER_RATE,
            post(http, ctx.url("/v1/orders"), key, order_body),
            no_job_ids,
        ),
        (
            "emails",
            EMAIL_RATE,
            post(http, ctx.url("/v1/emails"), key, move |i| {
                email_body(prefix, i)
            }),
            job_id,
        ),
    ];
    streams
        .into_iter()
        .map(|(name, rate, make, ids)| {
            let tally = Tally::new(true);
            let join = tokio::spawn(drive(rate, MAX_IN_FLIGHT, until, tally.clone(), make, ids));
            (name, tally, join)
        })
        .collect()
}

async fn outbox_mark(db: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(id), 0)::bigint FROM outbox")
            .fetch_one(db)
            .await?,
    )
}

/// B's jobs of one phase, by queue: enqueue-to-start and enqueue-to-finish (ms).
#[derive(Default)]
struct Starts {
    start_ms: BTreeMap<String, Vec<f64>>,
    finish_ms: BTreeMap<String, Vec<f64>>,
    /// Jobs (by queue) not started, started but not finished, or failed/dead by the deadline;
    /// "outbox" counts order rows not yet relayed, "missing" job ids Redis does not know.
    unfinished: BTreeMap<String, u64>,
}

/// The job ids of B's orders of a phase (`outbox`: after its first row, up to its last): its
/// outbox rows once relayed (or by `deadline`; those not relayed yet count as "outbox" in
/// `starts.unfinished`).
async fn order_jobs(
    ctx: &Ctx,
    outbox: (i64, i64),
    deadline: Instant,
    starts: &mut Starts,
) -> anyhow::Result<Vec<String>> {
    loop {
        let rows: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT job_id FROM outbox WHERE tenant_id = $1 AND id > $2 AND id <= $3",
        )
        .bind(ctx.b_id)
        .bind(outbox.0)
        .bind(outbox.1)
        .fetch_all(&ctx.db)
        .await?;
        let unrelayed = rows.iter().filter(|r| r.is_none()).count() as u64;
        if unrelayed == 0 || Instant::now() >= deadline {
            let jobs = rows.into_iter().flatten().collect();
            if unrelayed > 0 {
                starts.unfinished.insert("outbox".into(), unrelayed);
            }
            return Ok(jobs);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until B's jobs of a phase have finished (or `deadline`) and reads their timestamps.
async fn b_starts(
    ctx: &Ctx,
    streams: &[(&'static str, Arc<Tally>, JoinHandle<()>)],
    outbox: (i64, i64),
    deadline: Instant,
) -> anyhow::Result<Starts> {
    let mut pending: Vec<String> = streams
        .iter()
        .flat_map(|(_, t, _)| t.job_ids.lock().unwrap().clone())
        .collect();
    let mut starts = Starts::default();
    pending.extend(order_jobs(ctx, outbox, deadline, &mut starts).await?);
    loop {
        let last = Instant::now() >= deadline;
        let records: Vec<_> = futures::stream::iter(pending.clone())
            .map(|id| async move { (ctx.queues.get(&id).await, id) })
            .buffered(64)
            .collect()
            .await;
        pending.clear();
        for (record, id) in records {
            let Some(job) = record? else {
                *starts.unfinished.entry("missing".into()).or_default() += 1;
                continue;
            };
            let created = job.created_at.timestamp_millis();
            // The hash keeps the last attempt's start; a retried job's first attempt ended at its
            // first error (an upper bound of when it started; the last 25 errors are kept).
            let start = match job.errors[0]["at"].as_i64() {
                Some(at) if job.attempts > 1 => Some(at),
                _ => job.started_at.map(|t| t.timestamp_millis()),
            };
            let finish = job.finished_at.map(|t| t.timestamp_millis());
            let failed = matches!(job.status.as_str(), "failed" | "dead");
            if finish.is_none() && !failed && !last {
                pending.push(id);
                continue;
            }
            if let Some(start) = start {
                let by_queue = starts.start_ms.entry(job.queue.clone()).or_default();
                by_queue.push((start - created) as f64);
            }
            match (finish, failed) {
                (Some(finish), false) => {
                    let by_queue = starts.finish_ms.entry(job.queue).or_default();
                    by_queue.push((finish - created) as f64);
                }
                _ => {
                    let what = if failed {
                        job.status.as_str()
                    } else {
                        "not finished"
                    };
                    let key = format!("{} {what}", job.queue);
                    *starts.unfinished.entry(key).or_default() += 1;
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for v in starts
        .start_ms
        .values_mut()
        .chain(starts.finish_ms.values_mut())
    {
        v.sort_by(f64::total_cmp);
    }
    Ok(starts)
}

// ---------------------------------------------------------------------------------------------
// Tenant A.

/// The slow connections: each sends a partial request head and a byte every `TRICKLE`.
#[derive(Default)]
struct Slow {
    opened: AtomicU64,
    /// Closed by the server, and after how long (s).
    cut: AtomicU64,
    cut_after_s: Mutex<Vec<f64>>,
    /// What the server said before closing: its status line, "closed" or "reset".
    replies: Mutex<BTreeMap<String, u64>>,
    connect_failed: AtomicU64,
    open_at_end: AtomicU64,
}

impl Slow {
    fn open_now(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
            - self.cut.load(Ordering::Relaxed)
            - self.open_at_end.load(Ordering::Relaxed)
    }
}

/// One slot of the slow connections: connects, trickles until the server cuts it, reconnects;
/// until `until` (and at most 200 connections).
async fn slow_slot(port: u16, until: Instant, slow: Arc<Slow>) {
    for _ in 0..200 {
        if Instant::now() >= until {
            return;
        }
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
            slow.connect_failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        slow.opened.fetch_add(1, Ordering::Relaxed);
        let opened = Instant::now();
        let head = b"POST /v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
        let mut cut = stream
            .write_all(head)
            .await
            .err()
            .map(|_| "reset".to_string());
        let mut next = opened + TRICKLE;
        let mut buf = [0u8; 512];
        while cut.is_none() {
            tokio::select! {
                read = stream.read(&mut buf) => {
                    cut = Some(match read {
                        Ok(0) => "closed".into(),
                        Ok(n) => first_line(&buf[..n]),
                        Err(_) => "reset".into(),
                    });
                }
                _ = tokio::time::sleep_until(next.min(until).into()) => {
                    if Instant::now() >= until {
                        slow.open_at_end.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    if stream.write_all(b"a").await.is_err() {
                        cut = Some("reset".into());
                    }
                    next += TRICKLE;
                }
            }
        }
        slow.cut.fetch_add(1, Ordering::Relaxed);
        slow.cut_after_s
            .lock()
            .unwrap()
            .push(opened.elapsed().as_secs_f64());
        *slow
            .replies
            .lock()
            .unwrap()
            .entry(cut.unwrap_or_default())
            .or_default() += 1;
    }
}

fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().next().unwrap_or("").to_string()
}

/// A random-looking well-formed key: `bk_` and 43 base64url characters.
fn fake_key() -> String {
    let mut bytes = Uuid::new_v4().into_bytes().to_vec();
    bytes.extend(Uuid::new_v4().into_bytes());
    format!(
        "bk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The garbage `Authorization` header of request `i`.
fn garbage_authorization(i: u64) -> String {
    match i % 6 {
        0 => fake_key(),
        1 => format!("Bearer {}", fake_key()),
        2 => "Bearer bk_".into(),
        3 => format!("Bearer {}!", &fake_key()[..45]),
        4 => format!("Bearer {}", "A".repeat(4096)),
        _ => "Basic bm9pc3k6bmVpZ2hib3Vy".into(),
    }
}

/// The hostile sales CSVs: a multi-MB header without `quantity`, a row dated 0001-01-01, and
/// one over the size limit.
fn hostile_csvs(max_import_bytes: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut wide = b"date,sku".to_vec();
    for i in 0.. {
        if wide.len() >= WIDE_HEADER_BYTES {
            break;
        }
        wide.extend(format!(",c{i}").as_bytes());
    }
    wide.extend(b"\n2025-01-01,A-000\n");
    let ancient = b"date,sku,quantity\n0001-01-01,A-000,5\n2025-01-01,A-001,2\n".to_vec();
    // Long rows (an extra column), so that the size limit comes before the row limit.
    let row = format!("2025-01-01,A-000,1,{}\n", "x".repeat(200));
    let mut big = b"date,sku,quantity,note\n".to_vec();
    while big.len() <= max_import_bytes + (1 << 20) {
        big.extend(row.as_bytes());
    }
    vec![
        ("import: 4 MiB header", wide),
        ("import: 0001-01-01 row", ancient),
        ("import: over the limit", big),
    ]
}

/// Uploads a sales CSV over a connection of its own, reading the answer while sending, so that a
/// refusal before the end of the body (413, 429: the server answers and closes) is heard rather
/// than lost to a broken pipe.
async fn raw_upload(port: u16, key: &str, body: &'static [u8], tally: &Tally) -> Answer {
    let started = Instant::now();
    let stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(stream) => stream,
        Err(e) => {
            tally.record(0, started, chain(&e).as_bytes());
            return Answer {
                status: 0,
                body: Value::Null,
                retry_after: None,
            };
        }
    };
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /v1/sales/import HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let sending = tokio::spawn(async move {
        if write.write_all(head.as_bytes()).await.is_ok() {
            let _ = write.write_all(body).await;
        }
        write
    });
    let mut answer = vec![];
    let read = tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut answer)).await;
    sending.abort();
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 0 {
        let error = match read {
            Ok(Ok(_)) => "closed without an answer".to_string(),
            Ok(Err(e)) => chain(&e),
            Err(_) => "no answer within 60 s".to_string(),
        };
        tally.record(0, started, error.as_bytes());
    } else {
        tally.record(status, started, text.as_bytes());
    }
    let json = text.split_once("\r\n\r\n").map_or("", |(_, json)| json);
    Answer {
        status,
        body: serde_json::from_str(json).unwrap_or(Value::Null),
        retry_after: None,
    }
}

/// A's flood batch `i` of `size` receipts of one unit.
fn a_batch(size: u64, i: u64) -> Value {
    let all: Vec<Value> = (0..size)
        .map(|j| {
            json!({"sku": format!("A-{:03}", j % PRODUCTS), "delta": 1, "reason": "receipt",
                   "idempotency_key": format!("flood-{i}-{j}")})
        })
        .collect();
    json!({ "adjustments": all })
}

/// A's flood order `i`: one line, so three jobs (a sale, an invoice, an email).
fn a_order(i: u64) -> Value {
    json!({"customer": {"name": "Spam", "email": format!("spam{i}@example.org")},
           "currency": "EUR", "tax_rate": "0.2",
           "lines": [{"sku": format!("A-{:03}", i % PRODUCTS), "quantity": 1}]})
}

fn a_email(i: u64) -> Value {
    json!({"to": format!("spam{i}@example.org"), "subject": "Spam", "text": "Spam."})
}

struct Attack {
    /// (what, jobs per accepted request, answers).
    tallies: Vec<(&'static str, u64, Arc<Tally>)>,
    slow: Arc<Slow>,
    joins: Vec<JoinHandle<()>>,
}

/// Everything A does, until `until`.
fn start_attack(ctx: &Ctx, until: Instant) -> Attack {
    let mut attack = Attack {
        tallies: vec![],
        slow: Arc::new(Slow::default()),
        joins: vec![],
    };
    let runs = |kind| ctx.config.attacks.contains(&kind);
    start_floods(ctx, until, &mut attack);
    if runs(AttackKind::Uploads) {
        start_hostile(ctx, until, &mut attack);
    }
    if runs(AttackKind::Forecasts) {
        start_forecast_runs(ctx, until, &mut attack);
    }
    if runs(AttackKind::Garbage) {
        start_garbage(ctx, until, &mut attack);
    }
    let slow_connections = match runs(AttackKind::Slow) {
        true => ctx.config.slow_connections,
        false => 0,
    };
    for _ in 0..slow_connections {
        let slow = attack.slow.clone();
        attack
            .joins
            .push(tokio::spawn(slow_slot(ctx.port, until, slow)));
    }
    attack
}

/// The flood: 60 % of `NOISY_FLOOD_JOBS` as stock adjustments in batches, 8 % as one-line orders
/// (3 jobs each), the rest as emails.
fn start_floods(ctx: &Ctx, until: Instant, attack: &mut Attack) {
    let c = &ctx.config;
    let (http, key) = (&ctx.a_http, ctx.a_key.as_str());
    let stock_jobs = c.flood_jobs * 6 / 10;
    let batches = stock_jobs.div_ceil(1000);
    let batch = stock_jobs / batches;
    let orders = c.flood_jobs * 8 / 100;
    let emails = c.flood_jobs - batches * batch - orders * 3;
    let floods: [(&'static str, u64, u64, usize, MakeRequest); 3] = [
        (
            "flood: stock batches",
            batch,
            batches,
            2,
            post(
                http,
                ctx.url("/v1/stock-adjustments/batch"),
                key,
                move |i| a_batch(batch, i),
            ),
        ),
        (
            "flood: orders",
            3,
            orders,
            8,
            post(http, ctx.url("/v1/orders"), key, a_order),
        ),
        (
            "flood: emails",
            1,
            emails,
            8,
            post(http, ctx.url("/v1/emails"), key, a_email),
        ),
    ];
    let kinds = [
        AttackKind::FloodStock,
        AttackKind::FloodOrders,
        AttackKind::FloodEmails,
    ];
    for ((name, units, count, concurrency, make), kind) in floods.into_iter().zip(kinds) {
        if !c.attacks.contains(&kind) {
            continue;
        }
        let tally = Tally::new(false);
        attack.joins.push(tokio::spawn(flood(
            count,
            concurrency,
            until,
            tally.clone(),
            make,
        )));
        attack.tallies.push((name, units, tally));
    }
}

/// Hostile uploads (3 at once, in turn) and stock adjustments dated 0001-01-01.
fn start_hostile(ctx: &Ctx, until: Instant, attack: &mut Attack) {
    let c = &ctx.config;
    let (http, key) = (&ctx.a_http, ctx.a_key.as_str());
    // Leaked once, so that each upload sends the same bytes without copying them.
    let csvs: &'static [(&str, Vec<u8>)] =
        Box::leak(hostile_csvs(c.max_import_bytes).into_boxed_slice());
    let hostile: Vec<(&'static str, Arc<Tally>)> = csvs
        .iter()
        .map(|(name, _)| *name)
        .chain(["stock: dated 0001-01-01"])
        .map(|name| (name, Tally::new(false)))
        .collect();
    for u in 0..UPLOADERS {
        let (http, key, hostile) = (http.clone(), key.to_string(), hostile.clone());
        let adjust_url = ctx.url("/v1/stock-adjustments");
        let (uploads, port) = (c.uploads_per_uploader, ctx.port);
        attack.joins.push(tokio::spawn(async move {
            for k in 0..uploads * hostile.len() {
                if Instant::now() >= until {
                    return;
                }
                let n = (u + k) % hostile.len();
                let tally = &hostile[n].1;
                let answer = match csvs.get(n) {
                    Some((_, csv)) => raw_upload(port, &key, csv, tally).await,
                    None => {
                        let request = http.post(&adjust_url).bearer_auth(&key).json(&json!({
                            "sku": "A-000", "delta": 1, "reason": "receipt",
                            "idempotency_key": format!("ancient-{u}-{k}"),
                            "occurred_at": "0001-01-01T00:00:00Z"}));
                        send(tally, request).await
                    }
                };
                tally.job_ids.lock().unwrap().extend(job_id(&answer.body));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    attack
        .tallies
        .extend(hostile.into_iter().map(|(name, t)| (name, 0, t)));
}

/// Forecast runs, one a second.
fn start_forecast_runs(ctx: &Ctx, until: Instant, attack: &mut Attack) {
    let runs = Tally::new(false);
    let (http, key, url, tally) = (
        ctx.a_http.clone(),
        ctx.a_key.clone(),
        ctx.url("/v1/forecasts/runs"),
        runs.clone(),
    );
    let count = ctx.config.phase.as_secs() + 1;
    attack.joins.push(tokio::spawn(async move {
        for _ in 0..count {
            if Instant::now() >= until {
                return;
            }
            send(
                &tally,
                http.post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"horizon_days": 28})),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }));
    attack.tallies.push(("forecast runs", 0, runs));
}

/// Requests with garbage bearer tokens, `GARBAGE_RATE` a second.
fn start_garbage(ctx: &Ctx, until: Instant, attack: &mut Attack) {
    let garbage = Tally::new(false);
    let (http, url) = (ctx.a_http.clone(), ctx.url("/v1/products"));
    let make: MakeRequest = Arc::new(move |i| {
        http.get(&url)
            .header("authorization", garbage_authorization(i))
    });
    attack.joins.push(tokio::spawn(drive(
        GARBAGE_RATE,
        32,
        until,
        garbage.clone(),
        make,
        no_job_ids,
    )));
    attack.tallies.push(("garbage tokens", 0, garbage));
}

// ---------------------------------------------------------------------------------------------
// Phases.

struct Redis {
    start: u64,
    max: u64,
    end: u64,
    /// (when, keys, bytes) of this run's namespace.
    namespace: Vec<(&'static str, u64, u64)>,
}

impl Redis {
    async fn sample(&mut self, ctx: &Ctx) -> anyhow::Result<u64> {
        let used = redis_used_memory(&mut ctx.redis.clone()).await?;
        self.max = self.max.max(used);
        self.end = used;
        Ok(used)
    }

    async fn namespace(&mut self, ctx: &Ctx, when: &'static str) -> anyhow::Result<()> {
        let (keys, bytes) = namespace_memory(&mut ctx.redis.clone(), &ctx.namespace).await?;
        self.namespace.push((when, keys, bytes));
        self.sample(ctx).await?;
        Ok(())
    }
}

struct Phase {
    secs: f64,
    /// Cores used on average during the phase, by part.
    cpu: Vec<(String, f64)>,
    streams: Vec<(&'static str, Arc<Tally>, JoinHandle<()>)>,
    starts: Starts,
}

/// B's mix for `duration` (with A's attack when `attack`), then B's jobs' timestamps.
async fn phase(
    ctx: &Ctx,
    running: &mut Running,
    redis: &mut Redis,
    name: &'static str,
    duration: Duration,
    attack: bool,
) -> anyhow::Result<(Phase, Option<Attack>)> {
    eprintln!("  {name}: {} s", duration.as_secs());
    let outbox_from = outbox_mark(&ctx.db).await?;
    let processes = [
        ("serve", running.children.serve.pid().to_string()),
        ("work", running.children.work.pid().to_string()),
        ("this bench (B's and A's clients)", "self".to_string()),
    ];
    let cpu_from = CpuReading::now(&processes);
    let start = Instant::now();
    let until = start + duration;
    let streams = start_b(ctx, name, until);
    let attack = attack.then(|| start_attack(ctx, until));
    let done = |a: &Option<Attack>| {
        streams.iter().all(|(_, _, j)| j.is_finished())
            && a.iter().flat_map(|a| &a.joins).all(JoinHandle::is_finished)
    };
    let mut tick = 0u64;
    while !done(&attack) && start.elapsed() < duration + Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let t = start.elapsed().as_secs_f64();
        running.check(&format!("{t:.0} s into {name}"));
        let used = redis.sample(ctx).await?;
        if tick.is_multiple_of(5) {
            let b_ok: u64 = streams.iter().map(|(_, t, _)| t.ok()).sum();
            let b_errors: u64 = streams
                .iter()
                .map(|(_, t, _)| t.count(|s| !(200..300).contains(&s)))
                .sum();
            let mut queued = 0;
            for q in Queue::ALL.map(Queue::name) {
                let c = ctx
                    .queues
                    .counts(&QueueName::parse(q).expect("known"))
                    .await?;
                queued += c.pending + c.scheduled + c.retrying + c.running;
            }
            let a = attack.as_ref().map_or(String::new(), |a| {
                let all = |f: fn(u16) -> bool| -> u64 {
                    a.tallies.iter().map(|(_, _, t)| t.count(f)).sum()
                };
                format!(
                    "; A {} 2xx, {} 4xx, {} 5xx/transport; slow connections {} open, {} cut",
                    all(|s| (200..300).contains(&s)),
                    all(|s| (400..500).contains(&s)),
                    all(|s| s == 0 || s >= 500),
                    a.slow.open_now(),
                    a.slow.cut.load(Ordering::Relaxed)
                )
            });
            eprintln!(
                "  [{name} {t:>5.0} s] B {b_ok} ok, {b_errors} errors{a}; jobs queued {}; Redis {:.1} MiB",
                thousands(queued as f64),
                used as f64 / MIB
            );
        }
    }
    let secs = start.elapsed().as_secs_f64().min(duration.as_secs_f64());
    let cpu = CpuReading::now(&processes).cores_since(&cpu_from);
    let outbox_to = outbox_mark(&ctx.db).await?;
    if let Some(a) = &attack {
        a.joins.iter().for_each(JoinHandle::abort);
    }
    if name == "warm-up" {
        return Ok((
            Phase {
                secs,
                cpu,
                streams,
                starts: Starts::default(),
            },
            attack,
        ));
    }
    eprintln!("  {name}: waiting for B's jobs to finish");
    let deadline = Instant::now() + ctx.config.finish_wait;
    let starts = b_starts(ctx, &streams, (outbox_from, outbox_to), deadline).await?;
    running.check(&format!("after {name}"));
    Ok((
        Phase {
            secs,
            cpu,
            streams,
            starts,
        },
        attack,
    ))
}

// ---------------------------------------------------------------------------------------------
// Report.

fn ms(v: f64) -> String {
    if v.is_nan() { "-".into() } else { dec(v, 1) }
}

/// Target: `attack` ≤ max(P99_FACTOR × `solo`, `floor`); returns (target, pass).
fn judge(solo: f64, attack: f64, floor: f64) -> (f64, bool) {
    let limit = (P99_FACTOR * solo).max(floor);
    (limit, !attack.is_nan() && attack <= limit)
}

/// What a run measured, for [`report`].
struct Outcome {
    solo: Phase,
    under: Phase,
    attack: Attack,
    /// A's accepted imports by file and job status.
    import_fates: Vec<String>,
    redis: Redis,
    /// How a child that exited during the run ended.
    exits: BTreeMap<String, String>,
    /// How each child stopped at the end.
    stops: Vec<String>,
    /// Each child's log, summarised.
    logs: BTreeMap<&'static str, String>,
}

/// Prints the tables; returns the verdicts for the summary.
fn report(config: &Config, o: &Outcome) -> Vec<Verdict> {
    let mut verdicts = report_b_api(&o.solo, &o.under);
    verdicts.extend(report_b_jobs(config, &o.solo, &o.under));
    verdicts.extend(report_a(&o.attack, &o.import_fates));
    report_slow(config, &o.attack.slow);
    report_cpu(config, &o.solo, &o.under);
    verdicts.extend(report_processes_and_redis(o));
    verdicts
}

/// Where the machine's CPU went in each phase (a figure, not judged): on a shared machine
/// whatever A's attack makes busy is taken from B.
fn report_cpu(config: &Config, solo: &Phase, under: &Phase) {
    let attacks = config.attacks.iter().map(|a| a.name()).collect::<Vec<_>>();
    println!(
        "\n== CPU, cores used on average (this machine: {}; attacks run: {}) ==",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        attacks.join(", ")
    );
    let rows: Vec<Vec<String>> = solo
        .cpu
        .iter()
        .zip(&under.cpu)
        .map(|((part, s), (_, a))| vec![part.clone(), dec(*s, 2), dec(*a, 2)])
        .collect();
    print_table_aligned(&["part", "solo", "under attack"], &rows, 1);
}

/// Tenant B's API latency per request kind, solo and under attack.
fn report_b_api(solo: &Phase, under: &Phase) -> Vec<Verdict> {
    let mut verdicts = vec![];
    println!(
        "\n== tenant B: API latency per request kind (solo {:.0} s, then under attack {:.0} s; target: p99 under attack ≤ {P99_FACTOR} × solo) ==",
        solo.secs, under.secs
    );
    let mut rows = vec![];
    let mut b_errors = 0;
    for ((name, s, _), (_, a, _)) in solo.streams.iter().zip(&under.streams) {
        let (ls, la) = (s.sorted_latencies(), a.sorted_latencies());
        let (s99, a99) = (percentile(&ls, 99.0), percentile(&la, 99.0));
        let (limit, pass) = judge(s99, a99, 0.0);
        let errors =
            |t: &Tally| t.count(|s| !(200..300).contains(&s)) + t.skipped.load(Ordering::Relaxed);
        b_errors += errors(a);
        rows.push(vec![
            name.to_string(),
            dec(s.ok() as f64 / solo.secs, 1),
            ms(percentile(&ls, 50.0)),
            ms(s99),
            errors(s).to_string(),
            dec(a.ok() as f64 / under.secs, 1),
            ms(percentile(&la, 50.0)),
            ms(a99),
            errors(a).to_string(),
            format!("≤ {}", ms(limit)),
            verdict(pass).into(),
        ]);
        verdicts.push(Verdict {
            target: format!("B {name}: API p99 under attack ≤ {P99_FACTOR} × solo"),
            measured: format!("{} ms vs {} ms solo", ms(a99), ms(s99)),
            pass,
        });
    }
    print_table(
        &[
            "request",
            "solo 2xx/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "attack 2xx/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "target",
            "verdict",
        ],
        &rows,
    );
    for (phase, p) in [("solo", solo), ("attack", under)] {
        for (name, t, _) in &p.streams {
            for e in t.examples.lock().unwrap().iter() {
                println!("  B {name} ({phase}): e.g. {e}");
            }
        }
    }
    verdicts.push(Verdict {
        target: "B under attack: no errors or skipped requests".into(),
        measured: b_errors.to_string(),
        pass: b_errors == 0,
    });
    verdicts
}

/// Tenant B's enqueue-to-start (and -finish) per queue, solo and under attack, and its jobs left
/// unfinished.
fn report_b_jobs(config: &Config, solo: &Phase, under: &Phase) -> Vec<Verdict> {
    let mut verdicts = vec![];
    println!(
        "\n== tenant B: enqueue-to-start per queue (ms; first attempt; target: p99 under attack ≤ {P99_FACTOR} × solo, at least {START_FLOOR_MS} ms); enqueue-to-finish alongside =="
    );
    let mut rows = vec![];
    for q in ["stock", "invoices", "emails"] {
        let get = |p: &Phase, finish: bool| {
            let by = if finish {
                &p.starts.finish_ms
            } else {
                &p.starts.start_ms
            };
            by.get(q).cloned().unwrap_or_default()
        };
        let (s, a) = (get(solo, false), get(under, false));
        let (s99, a99) = (percentile(&s, 99.0), percentile(&a, 99.0));
        let (limit, pass) = judge(s99, a99, START_FLOOR_MS);
        rows.push(vec![
            q.to_string(),
            thousands(s.len() as f64),
            ms(percentile(&s, 50.0)),
            ms(s99),
            ms(percentile(&get(solo, true), 99.0)),
            thousands(a.len() as f64),
            ms(percentile(&a, 50.0)),
            ms(a99),
            ms(percentile(&get(under, true), 99.0)),
            format!("≤ {}", ms(limit)),
            verdict(pass).into(),
        ]);
        verdicts.push(Verdict {
            target: format!("B {q} jobs: enqueue-to-start p99 under attack ≤ {P99_FACTOR} × solo"),
            measured: format!("{} ms vs {} ms solo", ms(a99), ms(s99)),
            pass,
        });
    }
    print_table(
        &[
            "queue",
            "solo jobs",
            "p50",
            "p99",
            "finish p99",
            "attack jobs",
            "p50",
            "p99",
            "finish p99",
            "target",
            "verdict",
        ],
        &rows,
    );
    let unfinished = |p: &Phase| match p.starts.unfinished.is_empty() {
        true => "none".to_string(),
        false => p
            .starts
            .unfinished
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let all_done = solo.starts.unfinished.is_empty() && under.starts.unfinished.is_empty();
    println!(
        "  B's jobs not finished within {} s after the phase: solo {}; attack {}",
        config.finish_wait.as_secs(),
        unfinished(solo),
        unfinished(under)
    );
    verdicts.push(Verdict {
        target: format!(
            "(check) every B job succeeds within {} s of its phase",
            config.finish_wait.as_secs()
        ),
        measured: format!(
            "unfinished: solo {}; attack {}",
            unfinished(solo),
            unfinished(under)
        ),
        pass: all_done,
    });
    verdicts
}

/// Tenant A's answers by status for each attack, and the fate of its imports.
fn report_a(attack: &Attack, import_fates: &[String]) -> Vec<Verdict> {
    let mut verdicts = vec![];
    println!(
        "\n== tenant A: answers by status (designed refusals: 401, 409, 413, 422, 429; 5xx and transport errors fail) =="
    );
    let mut rows = vec![];
    let mut a_failures = 0;
    for (name, units, t) in &attack.tallies {
        a_failures += t.failures();
        rows.push(vec![
            name.to_string(),
            thousands(t.count(|_| true) as f64),
            t.statuses_text(),
            match units {
                0 => "-".into(),
                units => thousands((t.ok() * units) as f64),
            },
            t.failures().to_string(),
        ]);
    }
    print_table(
        &[
            "attack",
            "requests",
            "answers",
            "jobs accepted",
            "5xx/transport",
        ],
        &rows,
    );
    for (name, _, t) in &attack.tallies {
        for e in t.examples.lock().unwrap().iter() {
            println!("  A {name}: e.g. {e}");
        }
    }
    println!("  A's accepted imports, by job status at the end:");
    for fate in import_fates {
        println!("    {fate}");
    }
    verdicts.push(Verdict {
        target: "A: no 5xx answers or transport errors".into(),
        measured: a_failures.to_string(),
        pass: a_failures == 0,
    });
    verdicts
}

/// The slow connections the server cut, and after how long (a figure, not judged).
fn report_slow(config: &Config, s: &Slow) {
    let mut cut = s.cut_after_s.lock().unwrap().clone();
    cut.sort_by(f64::total_cmp);
    let replies: Vec<String> = s
        .replies
        .lock()
        .unwrap()
        .iter()
        .map(|(r, n)| format!("\"{r}\" ×{n}"))
        .collect();
    println!(
        "\n== slow connections ({} at once, a byte every {} s; the server's BACKROOM_HEADER_TIMEOUT_SECS {}, BACKROOM_MAX_CONNECTIONS {}) ==",
        config.slow_connections,
        TRICKLE.as_secs(),
        std::env::var("BACKROOM_HEADER_TIMEOUT_SECS").unwrap_or_else(|_| "default (10)".into()),
        std::env::var("BACKROOM_MAX_CONNECTIONS").unwrap_or_else(|_| "default (4096)".into()),
    );
    print_table(
        &[
            "opened",
            "cut by the server",
            "cut after p50 s",
            "min s",
            "max s",
            "open at the end",
            "connect failures",
        ],
        &[vec![
            thousands(s.opened.load(Ordering::Relaxed) as f64),
            thousands(cut.len() as f64),
            ms(percentile(&cut, 50.0)),
            ms(cut.first().copied().unwrap_or(f64::NAN)),
            ms(cut.last().copied().unwrap_or(f64::NAN)),
            thousands(s.open_at_end.load(Ordering::Relaxed) as f64),
            s.connect_failed.load(Ordering::Relaxed).to_string(),
        ]],
    );
    println!(
        "  what the server sent before cutting: {}",
        if replies.is_empty() {
            "-".into()
        } else {
            replies.join(", ")
        }
    );
}

/// Whether `serve` and `work` lived to the end, their logs, and Redis's memory.
fn report_processes_and_redis(o: &Outcome) -> Vec<Verdict> {
    let Outcome {
        redis,
        exits,
        stops,
        logs,
        ..
    } = o;
    let mut verdicts = vec![];
    println!("\n== processes and Redis ==");
    for name in ["serve", "work"] {
        let how = exits.get(name).map_or("alive to the end", String::as_str);
        println!("  {name}: {how}; its log: {}", logs[name]);
    }
    println!("  stopped: {}", stops.join("; "));
    verdicts.push(Verdict {
        target: "serve and work alive to the end (no exit, no restart)".into(),
        measured: match exits.is_empty() {
            true => "both alive".into(),
            false => exits
                .iter()
                .map(|(n, h)| format!("{n} {h}"))
                .collect::<Vec<_>>()
                .join("; "),
        },
        pass: exits.is_empty(),
    });
    println!(
        "  Redis used_memory (the whole server): {:.1} MiB at the start, max {:.1} MiB, {:.1} MiB at the end",
        redis.start as f64 / MIB,
        redis.max as f64 / MIB,
        redis.end as f64 / MIB
    );
    let rows: Vec<Vec<String>> = redis
        .namespace
        .iter()
        .map(|(when, keys, bytes)| {
            vec![
                when.to_string(),
                thousands(*keys as f64),
                dec(*bytes as f64 / MIB, 1),
            ]
        })
        .collect();
    print_table(&["this run's keys", "keys", "MiB"], &rows);
    let peak = redis.namespace.iter().map(|n| n.2).max().unwrap_or(0) as f64 / MIB;
    verdicts.push(Verdict {
        target: format!("this run's Redis keys ≤ {REDIS_BOUND_MIB} MiB"),
        measured: format!(
            "peak {peak:.1} MiB (used_memory {:.1} → max {:.1} MiB)",
            redis.start as f64 / MIB,
            redis.max as f64 / MIB
        ),
        pass: peak <= REDIS_BOUND_MIB,
    });
    verdicts
}

/// How many warnings and errors a child's JSON log holds, the most frequent first, and how many
/// lines are not JSON (a panic's message, for one).
fn log_summary(path: &Path) -> String {
    let describe = |v: &Value| {
        let error = v["error"].as_str().unwrap_or("").chars().take(80);
        let message = v["message"].as_str().unwrap_or("");
        format!("{message}: {}", error.collect::<String>())
    };
    let (found, other) = log_findings(path, describe);
    let total: u64 = found.iter().map(|f| f.1).sum();
    let top: Vec<String> = found
        .iter()
        .take(3)
        .map(|((level, what), n)| format!("{n} × {level} {what}"))
        .collect();
    format!(
        "{} ({total} warnings/errors{}{}; {other} lines not JSON)",
        path.display(),
        if top.is_empty() { "" } else { ", " },
        top.join(", ")
    )
}

/// A's accepted imports by file and job status ("import: 4 MiB header: failed 2 (e.g. …)").
async fn import_fates(ctx: &Ctx, attack: &Attack) -> anyhow::Result<Vec<String>> {
    let mut fates = vec![];
    for (name, _, tally) in attack.tallies.iter().filter(|t| t.0.starts_with("import")) {
        let ids = tally.job_ids.lock().unwrap().clone();
        let mut by: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for id in ids {
            let (status, note) = match ctx.queues.get(&id).await? {
                Some(job) => {
                    let note = match (&job.last_error, &job.result) {
                        (Some(e), _) => e.chars().take(120).collect(),
                        (None, Some(r)) => format!("{} rows rejected", r["rows_rejected"]),
                        _ => String::new(),
                    };
                    (job.status.as_str().to_string(), note)
                }
                None => ("missing".into(), String::new()),
            };
            by.entry(status).or_insert((0, note)).0 += 1;
        }
        let by: Vec<String> = by
            .iter()
            .map(|(s, (n, note))| match note.is_empty() {
                true => format!("{s} {n}"),
                false => format!("{s} {n} (e.g. {note})"),
            })
            .collect();
        if !by.is_empty() {
            fates.push(format!("{name}: {}", by.join("; ")));
        }
    }
    Ok(fates)
}

// ---------------------------------------------------------------------------------------------

/// Everything before the phases: Redis, the database, `serve` and `work`, the tenants.
async fn set_up(names: &Names, config: Config) -> anyhow::Result<(Ctx, Running, Redis)> {
    let redis_conn = redis_connection(&names.redis_url).await?;
    let start_memory = redis_used_memory(&mut redis_conn.clone()).await?;
    let db = names.create_database().await?;
    println!(
        "noisy-neighbour benchmark ({} mode): {} CPUs, Postgres {}, Redis {} (namespace {}); phases of {} s; A floods {} jobs and holds {} slow connections",
        if config.smoke { "smoke" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        names.db_name,
        names.redis_url,
        names.namespace,
        config.phase.as_secs(),
        thousands(config.flood_jobs as f64),
        config.slow_connections
    );
    let queues = names.queues()?;
    let running = start_processes(names, &queues).await?;
    let mut ctx = Ctx {
        queues,
        config,
        db,
        redis: redis_conn,
        namespace: names.namespace.clone(),
        base: running.children.base(),
        port: running.children.port,
        b_http: client()?,
        a_http: client()?,
        b_key: String::new(),
        b_id: Uuid::nil(),
        a_key: String::new(),
    };
    eprintln!("  creating the tenants, their products, B's stock and A's sales history");
    create_tenants(&mut ctx).await?;
    let mut redis = Redis {
        start: start_memory,
        max: start_memory,
        end: start_memory,
        namespace: vec![],
    };
    redis.namespace(&ctx, "after set-up").await?;
    Ok((ctx, running, redis))
}

async fn run(names: Names, config: Config) -> anyhow::Result<Vec<Verdict>> {
    let (ctx, mut running, mut redis) = set_up(&names, config).await?;
    let warmup = ctx.config.warmup;
    phase(&ctx, &mut running, &mut redis, "warm-up", warmup, false).await?;
    let (solo, _) = phase(
        &ctx,
        &mut running,
        &mut redis,
        "solo",
        ctx.config.phase,
        false,
    )
    .await?;
    redis.namespace(&ctx, "after solo").await?;
    let (under, attack) = phase(
        &ctx,
        &mut running,
        &mut redis,
        "attack",
        ctx.config.phase,
        true,
    )
    .await?;
    let attack = attack.expect("the attack phase attacks");
    redis.namespace(&ctx, "after the attack").await?;
    let import_fates = import_fates(&ctx, &attack).await?;
    running.check("at the end");

    let Running { children, exits } = running;
    let (stops, logs) = children.stop(Duration::from_secs(20)).await?;
    let logs = ["serve", "work"]
        .map(|name| (name, log_summary(&logs.join(format!("{name}.log")))))
        .into();
    let outcome = Outcome {
        solo,
        under,
        attack,
        import_fates,
        redis,
        exits,
        stops,
        logs,
    };
    let verdicts = report(&ctx.config, &outcome);
    ctx.db.close().await;
    Ok(verdicts)
}

fn main() -> anyhow::Result<()> {
    bench_main(
        "noisy",
        SMOKE_NOTE,
        // A logical database of its own, so that measuring this run's keys stays cheap.
        in_own_redis_database,
        |names, smoke| async move { run(names, Config::from_env(smoke)?).await },
    )
}
