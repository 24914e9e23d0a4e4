//! Webhook delivery (issue #17): how fast events reach tenants' endpoints, and whether one
//! tenant's hanging endpoint slows the others.
//!
//! Prints figures next to their targets with PASS or MISS; never asserts. As in production, only
//! co-located: the `backroom` binary this bench was built with runs as one `backroom serve` and
//! one `backroom work` (every queue, default concurrency: 64 webhook deliveries at once, 8 per
//! tenant) against a fresh database and Redis namespace, with
//! `BACKROOM_WEBHOOKS_ALLOW_PRIVATE=true` so they may call the receiver on 127.0.0.1, and every
//! other setting at its default (10 s delivery timeout). The receiver is an HTTP server inside
//! this bench: it answers 200 at once on `/ok` and never on `/hang`, and notes
//! when each `webhook-id` first arrives.
//!
//! Events are `stock.adjusted`, produced the way tenants produce them: stock adjustments through
//! the batch API (`POST /v1/stock-adjustments/batch`) of `TENANTS` (10) tenants, each with one
//! endpoint. Event-to-delivery is the receiver's clock at arrival minus the event's `created_at`
//! (the ledger transaction that applied the adjustment; milliseconds, same machine), so it counts
//! the outbox relay, the queue and the delivery.
//!
//! - **Throughput**: `WEBHOOK_EVENTS` (20,000; 2,000 in smoke mode) events pushed at once, in
//!   batches of 1,000 (4 requests in flight); deliveries/s from the first push to the last
//!   delivery (target ≥ 2,000/s), and between the first and the last delivery.
//! - **Steady, healthy**: `WEBHOOK_RATE` (500) events/s for `WEBHOOK_SECS` (20 s; 5 s in smoke
//!   mode), a batch of 10 every 20 ms, tenants in turn; event-to-delivery p50/p99/max (target:
//!   p99 ≤ 250 ms).
//! - **Steady, one endpoint hanging**: the same, while an 11th tenant's endpoint never answers
//!   and that tenant adds 50 events/s; the 10 tenants' p99 (target: within 2× of the healthy
//!   phase's, and at least 10 ms of slack for a millisecond clock).
//!
//! Every phase waits (at most 120 s) for each of its healthy events to arrive, and counts
//! repeats (a `webhook-id` that arrived twice) and events never delivered.
//!
//! Run with `cargo bench --bench webhooks` (about 2 minutes plus set-up), or with `-- --smoke`
//! (`BENCH_SMOKE=1`). The bench never builds anything. Needs Postgres (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432`; a database `backroom_bench_<uuid>` is created and
//! dropped) and Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`; keys under the namespace
//! `bench-<uuid>`, deleted at the end).

mod common;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const TENANTS: usize = 10;
const BATCH: usize = 1_000;
const PUSHES_IN_FLIGHT: usize = 4;
/// Steady phases: a batch of this many every tick.
const STEADY_BATCH: usize = 10;
const HANGING_RATE: f64 = 50.0;
const DELIVERIES_PER_SEC: f64 = 2_000.0;
const P99_MS: f64 = 250.0;
const HANGING_FACTOR: f64 = 2.0;
const SLACK_MS: f64 = 10.0;
const FINISH_WAIT: Duration = Duration::from_secs(120);

/// What the receiver saw: per `webhook-id`, the first arrival and the event's `created_at`
/// (both Unix ms); and how many arrivals repeated an id.
#[derive(Default)]
struct Seen {
    first: HashMap<String, (i64, i64)>,
    repeats: u64,
}

type Shared = Arc<Mutex<Seen>>;

async fn ok(State(seen): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let now = chrono::Utc::now().timestamp_millis();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let created = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["created_at"].as_str().map(str::to_string))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map_or(now, |t| t.timestamp_millis());
    let mut seen = seen.lock().unwrap();
    let seen = &mut *seen;
    match seen.first.entry(id) {
        std::collections::hash_map::Entry::Occupied(_) => seen.repeats += 1,
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert((now, created));
        }
    }
    StatusCode::OK
}

async fn hang() -> StatusCode {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    StatusCode::OK
}

/// Starts the receiver on 127.0.0.1; returns its base URL.
async fn receiver(seen: Shared) -> anyhow::Result<String> {
    let app = axum::Router::new()
        .route("/ok", axum::routing::post(ok))
        .route("/hang", axum::routing::post(hang))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(base)
}

struct Tenant {
    key: String,
}

struct Ctx {
    http: reqwest::Client,
    base: String,
    tenants: Vec<Tenant>,
    hanging: Tenant,
    seen: Shared,
}

/// Creates a tenant with one product and one endpoint (`stock.adjusted`) at `url`.
async fn tenant(
    http: &reqwest::Client,
    base: &str,
    slug: &str,
    url: &str,
) -> anyhow::Result<Tenant> {
    let (_, key) = create_tenant(http, base, slug, slug).await?;
    http.put(format!("{base}/v1/products/SKU-1"))
        .bearer_auth(&key)
        .json(
            &json!({"name": "Article", "unit_price": "1.00", "currency": "EUR",
                      "reorder_point": 0, "reorder_quantity": 1, "lead_time_days": 1}),
        )
        .send()
        .await?
        .error_for_status()?;
    http.post(format!("{base}/v1/webhooks/endpoints"))
        .bearer_auth(&key)
        .json(&json!({"url": url, "event_types": ["stock.adjusted"]}))
        .send()
        .await?
        .error_for_status()
        .context("creating the endpoint")?;
    Ok(Tenant { key })
}

/// Pushes `n` receipts in one batch for the healthy tenant `tenant` (or the hanging one for
/// `None`), keys `<prefix>-<i>`.
async fn push(ctx: &Ctx, tenant: Option<usize>, prefix: &str, n: usize) -> anyhow::Result<()> {
    let key = match tenant {
        Some(t) => &ctx.tenants[t].key,
        None => &ctx.hanging.key,
    };
    let adjustments: Vec<Value> = (0..n)
        .map(|i| {
            json!({"sku": "SKU-1", "delta": 1, "reason": "receipt",
                   "idempotency_key": format!("{prefix}-{i}")})
        })
        .collect();
    let r = ctx
        .http
        .post(format!("{}/v1/stock-adjustments/batch", ctx.base))
        .bearer_auth(key)
        .json(&json!({ "adjustments": adjustments }))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "the batch was refused: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
    Ok(())
}

/// What one phase measured.
struct Phase {
    events: usize,
    arrived: usize,
    repeats: u64,
    /// Event-to-delivery, ms, sorted.
    latencies: Vec<f64>,
    /// From the first push to the last delivery.
    wall: Duration,
    /// From the first delivery to the last (Unix ms).
    delivering_ms: i64,
}

impl Phase {
    fn p(&self, q: f64) -> f64 {
        percentile(&self.latencies, q)
    }

    /// "p50 … ms, p99 … ms (arrived of events)".
    fn latency(&self) -> String {
        format!(
            "p50 {} ms, p99 {} ms ({} of {})",
            dec(self.p(0.5), 0),
            dec(self.p(0.99), 0),
            self.arrived,
            self.events
        )
    }
}

/// Starts a phase: forgets what the receiver saw.
fn reset(ctx: &Ctx) {
    *ctx.seen.lock().unwrap() = Seen::default();
}

/// Ends a phase of `events` healthy events pushed from `started`: waits for them to arrive (at
/// most [`FINISH_WAIT`]) and reads what the receiver saw.
async fn finish(ctx: &Ctx, events: usize, started: Instant) -> Phase {
    let all = wait_until(FINISH_WAIT, "", async || {
        Ok(ctx.seen.lock().unwrap().first.len() >= events)
    })
    .await;
    let wall = started.elapsed();
    if all.is_err() {
        eprintln!(
            "    not every event arrived within {} s",
            FINISH_WAIT.as_secs()
        );
    }
    let seen = ctx.seen.lock().unwrap();
    let mut latencies: Vec<f64> = seen
        .first
        .values()
        .map(|(at, created)| (at - created) as f64)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let arrivals = seen.first.values().map(|v| v.0);
    let delivering_ms = arrivals.clone().max().unwrap_or(0) - arrivals.min().unwrap_or(0);
    Phase {
        events,
        arrived: seen.first.len(),
        repeats: seen.repeats,
        latencies,
        wall,
        delivering_ms,
    }
}

/// Every event pushed at once, in batches of [`BATCH`] over the tenants.
async fn throughput(ctx: &Arc<Ctx>, events: usize) -> anyhow::Result<Phase> {
    reset(ctx);
    eprintln!("  throughput: {events} events at once");
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(PUSHES_IN_FLIGHT));
    let mut pushes = tokio::task::JoinSet::new();
    for (i, first) in (0..events).step_by(BATCH).enumerate() {
        let (ctx, gate) = (ctx.clone(), gate.clone());
        let n = BATCH.min(events - first);
        pushes.spawn(async move {
            let _slot = gate.acquire().await?;
            push(&ctx, Some(i % TENANTS), &format!("burst-{i}"), n).await
        });
    }
    while let Some(done) = pushes.join_next().await {
        done??;
    }
    eprintln!("    pushed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(finish(ctx, events, started).await)
}

/// `rate` healthy events a second for `length`, a batch of [`STEADY_BATCH`] per tick, tenants
/// in turn; with `hanging`, the hanging tenant's [`HANGING_RATE`] beside them.
async fn steady(
    ctx: &Arc<Ctx>,
    name: &str,
    rate: f64,
    length: Duration,
    hanging: bool,
) -> anyhow::Result<Phase> {
    reset(ctx);
    eprintln!(
        "  {name}: {rate} events/s for {} s{}",
        length.as_secs(),
        if hanging {
            ", one endpoint hanging"
        } else {
            ""
        }
    );
    let tick = Duration::from_secs_f64(STEADY_BATCH as f64 / rate);
    let ticks = (length.as_secs_f64() / tick.as_secs_f64()).round() as usize;
    let hang_every = (rate / HANGING_RATE).round().max(1.0) as usize;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut pushes = tokio::task::JoinSet::new();
    for i in 0..ticks {
        interval.tick().await;
        let ctx_ = ctx.clone();
        let prefix = format!("{name}-{i}");
        pushes.spawn(async move { push(&ctx_, Some(i % TENANTS), &prefix, STEADY_BATCH).await });
        if hanging && i % hang_every == 0 {
            let ctx_ = ctx.clone();
            let prefix = format!("{name}-hang-{i}");
            pushes.spawn(async move { push(&ctx_, None, &prefix, STEADY_BATCH).await });
        }
    }
    while let Some(done) = pushes.join_next().await {
        done??;
    }
    Ok(finish(ctx, ticks * STEADY_BATCH, started).await)
}

async fn run(names: Names, smoke: bool) -> anyhow::Result<Vec<Verdict>> {
    let events: usize = env_or("WEBHOOK_EVENTS", if smoke { 2_000 } else { 20_000 })?;
    let rate: f64 = env_or("WEBHOOK_RATE", 500.0)?;
    let secs: u64 = env_or("WEBHOOK_SECS", if smoke { 5 } else { 20 })?;
    anyhow::ensure!(
        events > 0 && rate > 0.0 && secs > 0,
        "WEBHOOK_*: positive values"
    );
    let _db = names.create_database().await?;
    let queues = names.queues()?;
    let binary = backroom_binary("build it with `cargo bench --bench webhooks --no-run`")?;
    let env = [
        ("BACKROOM_WEBHOOKS_ALLOW_PRIVATE", "true".to_string()),
        (
            "BACKROOM_LOG",
            std::env::var("WEBHOOK_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ];
    let mut children = Children::start(
        "webhooks",
        &binary,
        &names,
        &queues,
        &env,
        Duration::from_secs(120),
    )
    .await?;
    println!(
        "webhook benchmark ({} mode): {} CPUs; {TENANTS} tenants, {events} events at once, then {rate}/s for {secs} s healthy and with one endpoint hanging",
        if smoke { "smoke" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let seen: Shared = Arc::default();
    let url = receiver(seen.clone()).await?;
    let http = reqwest::Client::new();
    let base = children.base();
    let mut tenants = vec![];
    for t in 0..TENANTS {
        tenants.push(tenant(&http, &base, &format!("hooks-{t}"), &format!("{url}/ok")).await?);
    }
    let hanging = tenant(&http, &base, "hooks-hanging", &format!("{url}/hang")).await?;
    let ctx = Arc::new(Ctx {
        http,
        base,
        tenants,
        hanging,
        seen,
    });

    // A short warm-up, not measured.
    steady(&ctx, "warm-up", rate, Duration::from_secs(2), false).await?;
    let burst = throughput(&ctx, events).await?;
    children.check_alive()?;
    let length = Duration::from_secs(secs);
    let healthy = steady(&ctx, "healthy", rate, length, false).await?;
    children.check_alive()?;
    let with_hang = steady(&ctx, "hanging", rate, length, true).await?;
    children.check_alive()?;
    let (stops, _) = children.stop(Duration::from_secs(20)).await?;

    let per_sec = |p: &Phase| p.arrived as f64 / p.wall.as_secs_f64();
    let sustained = |p: &Phase| p.arrived as f64 / (p.delivering_ms.max(1) as f64 / 1000.0);
    println!("\n== phases ==");
    let rows: Vec<Vec<String>> = [
        ("throughput", &burst),
        ("healthy", &healthy),
        ("hanging", &with_hang),
    ]
    .into_iter()
    .map(|(name, p)| {
        vec![
            name.to_string(),
            thousands(p.events as f64),
            thousands(p.arrived as f64),
            p.repeats.to_string(),
            thousands(per_sec(p)),
            thousands(sustained(p)),
            dec(p.p(0.50), 0),
            dec(p.p(0.99), 0),
            dec(p.latencies.last().copied().unwrap_or(0.0), 0),
        ]
    })
    .collect();
    print_table(
        &[
            "phase",
            "events",
            "delivered",
            "repeats",
            "/s (push→last)",
            "/s (first→last)",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
        &rows,
    );
    println!("  stopped: {}", stops.join("; "));

    let bound = (healthy.p(0.99) * HANGING_FACTOR).max(healthy.p(0.99) + SLACK_MS);
    Ok(vec![
        Verdict {
            target: format!(
                "{} events delivered, from the first push to the last delivery, ≥ {} /s",
                thousands(events as f64),
                thousands(DELIVERIES_PER_SEC)
            ),
            measured: format!(
                "{} /s ({} of {} in {:.1} s)",
                thousands(per_sec(&burst)),
                burst.arrived,
                burst.events,
                burst.wall.as_secs_f64()
            ),
            pass: burst.arrived == burst.events && per_sec(&burst) >= DELIVERIES_PER_SEC,
        },
        Verdict {
            target: format!("event-to-delivery p99 at {rate} events/s ≤ {P99_MS} ms"),
            measured: healthy.latency(),
            pass: healthy.arrived == healthy.events && healthy.p(0.99) <= P99_MS,
        },
        Verdict {
            target: format!(
                "with one tenant's endpoint hanging, the others' p99 ≤ {HANGING_FACTOR}× healthy ({} ms)",
                dec(bound, 0)
            ),
            measured: with_hang.latency(),
            pass: with_hang.arrived == with_hang.events && with_hang.p(0.99) <= bound,
        },
        Verdict {
            target: "no event delivered twice to a healthy endpoint".into(),
            measured: format!(
                "{} repeats",
                burst.repeats + healthy.repeats + with_hang.repeats
            ),
            pass: burst.repeats + healthy.repeats + with_hang.repeats == 0,
        },
    ])
}

fn main() -> anyhow::Result<()> {
    bench_main("webhooks", SMOKE_NOTE, as_given, run)
}
