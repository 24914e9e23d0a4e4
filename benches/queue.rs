//! Throughput and latency of the queue engine (`backroom::queue`) against a real Redis.
//!
//! Prints figures, never asserts: each scenario prints a table and its target from the issue
//! with PASS or MISS, and a summary of all targets closes the run. The targets assume a release
//! build on a 2-core machine with Redis sharing the cores.
//!
//! 1. **enqueue** — batch push of N jobs with ~1 KiB JSON payloads through [`Queues::push`], by
//!    1 and by 4 concurrent pushers (jobs are built before the clock starts). Target
//!    ≥ 50,000 jobs/s.
//! 2. **drain** — N jobs already queued, then in-process apalis workers (`WorkerBuilder` over a
//!    [`RedisBackend`], no-op handler); the clock stops when `counts()` shows N finished
//!    (polled every 50 ms). Several [`WorkerOptions`] (concurrency, prefetch, batch) and worker
//!    counts are tried. Target ≥ 30,000 jobs/s.
//! 3. **idle pickup** — one idle worker blocked on an empty queue; a job is pushed whose payload
//!    carries the push instant (µs since the Unix epoch) and the handler records
//!    `now - pushed`; repeated with ~20 ms pauses. Target p99 ≤ 50 ms.
//! 4. **steady state** — one running worker while a producer pushes 50 jobs every 10 ms
//!    (5,000 jobs/s); the handler records enqueue-to-start latency per job. Target p99 ≤ 10 ms.
//! 5. **backlog** — 1,000,000 jobs queued, then drained by the best drain configuration; the
//!    rate of each successive 100,000 jobs shows whether fetch cost depends on backlog size.
//!    Target: no job ends other than succeeded, and a flat rate (the mean rate of the second
//!    half of the slices within 0.8–1.25× of the first half's).
//!
//! Next to rates, the tables give CPU per job of this process (`/proc/self/stat` utime + stime)
//! and of Redis (`INFO cpu`), Redis time by command (`INFO commandstats` deltas; commands that
//! Lua scripts run count under their own names as well as under `evalsha`), the mean batch per
//! script call, and the CPU that *other* processes used meanwhile (`/proc/stat`): on a shared
//! machine rates move with that noise, CPU per job much less. Redis figures are server-wide:
//! other clients of the same Redis add to them. The queue engine's Prometheus recorder is
//! installed, as in the server.
//!
//! 6. **memory** — the steady-state load of part 4 for 40 s with succeeded jobs kept 2 s and
//!    the queue trimmed every second (as the scheduler does, compressed in time): Redis
//!    `used_memory` each second. Target: flat (the mean of the last third within 0.8–1.25× of
//!    the first third's, after a warm-up of the retention plus 2 s).
//! 7. **fairness** — a busy tenant floods the queue with N jobs (each sleeps 5 ms, as an I/O-bound
//!    job would), then a quiet tenant pushes one job every 50 ms while the flood drains through
//!    one worker (defaults). The quiet tenant's enqueue-to-start latency is set against how long
//!    the flood takes to drain, which is what a first-in-first-out queue would have made it
//!    wait. Target: quiet p99 ≤ 250 ms while the flood drains for several seconds.
//! 9. **history** — the drain of part 2 (its best configuration) with the job history on and
//!    its copier (`backroom::history`) writing every finished job into a fresh Postgres
//!    database, against the plain drain, alternately twice; how long after the drain the copy
//!    finished. Target: ≥ 95 % of the plain rate, every job copied.
//!
//! 10. **traces** — what OpenTelemetry traces cost: parts 1 (one pusher) and 2 (defaults) run
//!     again in child processes of this bench (which log JSON as the server does) with traces off,
//!     on at sampling 1.0 and on at 0.01, nine times each in turn (costs: medians over rounds of each
//!     run against its own round's off run), exporting OTLP/HTTP to a sink in
//!     this process that counts the spans. Every push call is a traced request, so each job
//!     carries a trace and each run is a span. Targets: drain time per job at most 10 % above
//!     traces off at 1.0, 2 % at 0.01.
//!
//! 11. **link** (only when named: `cargo bench --bench queue -- link`) — a network hop away:
//!     parts 1 and 2 and the steady state again in child processes, with Redis on loopback and
//!     behind a relay in this process that delays every byte by 0, 0.25 and 1 ms each way
//!     (`common::DelayLink`: this kernel has no `netem`). Targets, against the relay with no
//!     delay: drain at 0.5 ms round trip ≥ 80 %, at 2 ms ≥ 50 %.
//!
//! Run with `cargo bench --bench queue` (full sizes: 200,000 jobs for enqueue and drain, 200
//! pickups, 10 s of steady state, a 1,000,000 backlog; a few minutes), or
//! `cargo bench --bench queue -- --smoke` (or `QUEUE_BENCH_SMOKE=1`) for tiny sizes that finish
//! in well under 30 s, e.g. in CI. Scenario names after `--` run only those, e.g.
//! `cargo bench --bench queue -- drain backlog` (handy under `perf`).
//!
//! Redis is `REDIS_URL` (default `redis://127.0.0.1:6379`), a single node since `INFO` is read
//! from it. Every key lives under a fresh namespace `bench-<uuid>` and is deleted (SCAN + UNLINK
//! of `{bench-<uuid>:*`) after each scenario and at the end, also after an error or Ctrl-C.
//! Progress of long phases goes to stderr.

mod common;

use anyhow::{Context as _, bail};
use apalis::prelude::*;
use backroom::queue::{
    GroupSpec, GroupState, JobError, NewJob, QueueCounts, QueueName, QueueSettings, Queues,
    RedisBackend, WorkerOptions,
};
use backroom::redis_conn::RedisHandle;
use common::{
    Verdict, clock_ticks, dec, delete_matching, machine_busy_ticks, percentile, print_table,
    print_table_aligned, thousands, verdict,
};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

// Targets from the issue.
const ENQUEUE_TARGET: f64 = 50_000.0;
const DRAIN_TARGET: f64 = 30_000.0;
const IDLE_P99_TARGET_MS: f64 = 50.0;
const STEADY_P99_TARGET_MS: f64 = 10.0;
/// Steady state: this many jobs every [`STEADY_TICK`] (5,000 jobs/s).
const STEADY_PER_TICK: usize = 50;
const STEADY_TICK: Duration = Duration::from_millis(10);
/// Backlog flatness: the second half of the slices may run at 0.8–1.25× the first half's rate.
const FLAT_RATIO: (f64, f64) = (0.8, 1.25);
const FAIR_P99_TARGET_MS: f64 = 250.0;
/// The quiet tenant's pace in the fairness scenario, and how long every job there takes.
const QUIET_GAP: Duration = Duration::from_millis(50);
const FAIR_WORK_MS: u64 = 5;

/// Approximate size of each job's JSON payload.
const PAYLOAD_BYTES: usize = 1024;
/// Jobs per `Queues::push` call when filling queues (it chunks further inside).
const PUSH_CALL: usize = 10_000;
/// How often drains poll `counts()`.
const POLL: Duration = Duration::from_millis(50);
/// A drain that makes no progress for this long is abandoned (and reported).
const STALL: Duration = Duration::from_secs(30);

/// How big each scenario is.
struct Sizes {
    enqueue: usize,
    drain: usize,
    pickups: usize,
    pickup_gap: Duration,
    steady: Duration,
    backlog: usize,
    slice: usize,
    memory: Duration,
    /// The busy tenant's flood in the fairness scenario, and the quiet tenant's jobs.
    flood: usize,
    quiet: usize,
    /// Workflow scenario: chains (of [`CHAIN_LENGTH`]), the fan-in's parents, idle releases.
    chains: usize,
    fan_in: usize,
    releases: usize,
}

impl Sizes {
    fn full() -> Self {
        Sizes {
            enqueue: 200_000,
            drain: 200_000,
            pickups: 200,
            pickup_gap: Duration::from_millis(20),
            steady: Duration::from_secs(10),
            backlog: 1_000_000,
            slice: 100_000,
            memory: Duration::from_secs(40),
            flood: 50_000,
            quiet: 100,
            chains: 10_000,
            fan_in: 10_000,
            releases: 200,
        }
    }

    fn smoke() -> Self {
        Sizes {
            enqueue: 5_000,
            drain: 5_000,
            pickups: 20,
            pickup_gap: Duration::from_millis(20),
            steady: Duration::from_secs(2),
            backlog: 20_000,
            slice: 5_000,
            memory: Duration::from_secs(10),
            flood: 3_000,
            quiet: 10,
            chains: 200,
            fan_in: 500,
            releases: 20,
        }
    }
}

/// One drain configuration: how many workers (each with its own Redis connections, as separate
/// processes would have) and their [`WorkerOptions`].
#[derive(Debug, Clone, Copy)]
struct DrainConfig {
    label: &'static str,
    workers: usize,
    concurrency: usize,
    prefetch: usize,
    batch: usize,
}

const DRAIN_CONFIGS: &[DrainConfig] = &[
    DrainConfig {
        label: "defaults",
        workers: 1,
        concurrency: 32,
        prefetch: 256,
        batch: 256,
    },
    DrainConfig {
        label: "small",
        workers: 1,
        concurrency: 8,
        prefetch: 64,
        batch: 64,
    },
    DrainConfig {
        label: "large",
        workers: 1,
        concurrency: 128,
        prefetch: 1024,
        batch: 512,
    },
    DrainConfig {
        label: "two-defaults",
        workers: 2,
        concurrency: 32,
        prefetch: 256,
        batch: 256,
    },
    DrainConfig {
        label: "two-large",
        workers: 2,
        concurrency: 128,
        prefetch: 1024,
        batch: 512,
    },
];

/// The job: when it was pushed, and padding up to [`PAYLOAD_BYTES`] of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    pushed_us: u64,
    pad: String,
    /// Milliseconds the handler sleeps (a stand-in for I/O).
    #[serde(default)]
    work_ms: u64,
    /// Not reported to the recorder (the busy tenant's jobs in the fairness scenario).
    #[serde(default)]
    unrecorded: bool,
}

/// Where the handler reports enqueue-to-start latencies (µs); `None` in throughput runs.
#[derive(Clone)]
struct Recorder(Option<mpsc::UnboundedSender<u64>>);

/// The job handler: nothing but (in latency scenarios) reporting when it started.
async fn handle(job: Payload, recorder: Data<Recorder>) -> Result<(), JobError> {
    if let Recorder(Some(tx)) = &*recorder
        && !job.unrecorded
    {
        let _ = tx.send(now_us().saturating_sub(job.pushed_us));
    }
    if job.work_ms > 0 {
        tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
    }
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Everything the scenarios share.
struct Env {
    url: String,
    namespace: String,
    smoke: bool,
    sizes: Sizes,
    /// Scenarios to run (empty: all).
    only: Vec<String>,
    /// For `INFO` and key cleanup (not used by the queue code under test).
    admin: MultiplexedConnection,
    /// Clock ticks per second of `/proc/self/stat`.
    clk_tck: f64,
    pad: String,
}

impl Env {
    fn selected(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    /// A queue client with a Redis connection of its own.
    fn queues(&self) -> anyhow::Result<Queues> {
        Ok(Queues::new(
            RedisHandle::open(&self.url)?,
            &self.namespace,
            QueueSettings::default(),
        ))
    }

    fn queue(&self, name: &str) -> QueueName {
        QueueName::custom(name)
    }

    fn payload(&self) -> NewJob {
        NewJob::new(
            "bench",
            &Payload {
                pushed_us: now_us(),
                pad: self.pad.clone(),
                work_ms: 0,
                unrecorded: false,
            },
        )
    }

    /// `n` copies of one job (serialized once: building must not dominate the fills).
    fn jobs(&self, n: usize) -> Vec<NewJob> {
        let template = self.payload();
        vec![template; n]
    }

    /// Deletes every key of one queue (or of the whole namespace with `None`).
    async fn delete_keys(&self, queue: Option<&QueueName>) -> anyhow::Result<u64> {
        let pattern = match queue {
            Some(q) => format!("{{{}:{}}}:*", self.namespace, q),
            None => format!("{{{}:*", self.namespace),
        };
        delete_matching(&mut self.admin.clone(), &pattern).await
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut conn = self.admin.clone();
        let (cpu, memory, stats): (String, String, String) = redis::pipe()
            .cmd("INFO")
            .arg("cpu")
            .cmd("INFO")
            .arg("memory")
            .cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        let field = |info: &str, name: &str| -> f64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let redis_s = field(&cpu, "used_cpu_sys") + field(&cpu, "used_cpu_user");
        let mut commands = HashMap::new();
        for line in stats.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let mut calls = 0;
            let mut usec = 0;
            for kv in rest.split(',') {
                match kv.split_once('=') {
                    Some(("calls", v)) => calls = v.parse().unwrap_or(0),
                    Some(("usec", v)) => usec = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
            commands.insert(name.to_string(), (calls, usec));
        }
        Ok(Snapshot {
            at: Instant::now(),
            process_s: process_cpu_seconds(self.clk_tck),
            machine_s: machine_busy_ticks() / self.clk_tck,
            redis_s,
            redis_memory: field(&memory, "used_memory"),
            commands,
        })
    }
}

/// CPU counters at one instant.
struct Snapshot {
    at: Instant,
    process_s: f64,
    /// CPU time used by everything on the machine (`/proc/stat`).
    machine_s: f64,
    redis_s: f64,
    /// Redis `used_memory`, bytes.
    redis_memory: f64,
    /// `INFO commandstats`: command → (calls, µs).
    commands: HashMap<String, (u64, u64)>,
}

/// What happened between two snapshots.
struct Usage {
    wall_s: f64,
    process_s: f64,
    redis_s: f64,
    /// CPU used by other processes (neither this one nor Redis): noise from a shared machine.
    other_s: f64,
    /// (command, calls, µs), most Redis time first.
    commands: Vec<(String, u64, u64)>,
}

impl Snapshot {
    fn until(&self, later: &Snapshot) -> Usage {
        let mut commands: Vec<(String, u64, u64)> = later
            .commands
            .iter()
            .map(|(name, &(calls, usec))| {
                let (c0, u0) = self.commands.get(name).copied().unwrap_or((0, 0));
                (
                    name.clone(),
                    calls.saturating_sub(c0),
                    usec.saturating_sub(u0),
                )
            })
            .filter(|(_, calls, _)| *calls > 0)
            .collect();
        commands.sort_by_key(|c| std::cmp::Reverse(c.2));
        Usage {
            wall_s: (later.at - self.at).as_secs_f64(),
            process_s: later.process_s - self.process_s,
            redis_s: later.redis_s - self.redis_s,
            other_s: ((later.machine_s - self.machine_s)
                - (later.process_s - self.process_s)
                - (later.redis_s - self.redis_s))
                .max(0.0),
            commands,
        }
    }
}

impl Usage {
    /// CPU of other processes, in % of one core.
    fn other_pct(&self) -> f64 {
        self.other_s * 100.0 / self.wall_s.max(1e-9)
    }

    fn command(&self, name: &str) -> (u64, u64) {
        self.commands
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, c, u)| (*c, *u))
            .unwrap_or((0, 0))
    }

    /// Prints Redis time by command, per job.
    fn print_commands(&self, jobs: u64, top: usize) {
        let jobs = jobs.max(1) as f64;
        let headers = ["command", "calls/job", "µs/job", "µs/call"];
        let mut table: Vec<Vec<String>> = vec![];
        for (name, calls, usec) in self.commands.iter().take(top) {
            table.push(vec![
                name.clone(),
                dec(*calls as f64 / jobs, 3),
                dec(*usec as f64 / jobs, 2),
                dec(*usec as f64 / (*calls).max(1) as f64, 2),
            ]);
        }
        print_table(&headers, &table);
        println!(
            "  (Redis CPU {:.2} µs/job overall; evalsha includes the commands its scripts run)",
            self.redis_s * 1e6 / jobs
        );
    }
}

/// This process's CPU time (user + system, all threads) from `/proc/self/stat`.
fn process_cpu_seconds(clk_tck: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start with field 3 (state);
    // utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clk_tck
}

/// Running in-process workers, each a `WorkerBuilder` + [`RedisBackend`] in a task of its own.
struct Workers {
    stops: Vec<oneshot::Sender<()>>,
    joins: Vec<JoinHandle<Result<(), WorkerError>>>,
}

impl Workers {
    fn start(
        env: &Env,
        options: &WorkerOptions,
        count: usize,
        recorder: Recorder,
    ) -> anyhow::Result<Self> {
        Self::start_with(env, QueueSettings::default(), options, count, recorder)
    }

    /// Like [`Workers::start`], with the queue settings (retention, lease) given.
    fn start_with(
        env: &Env,
        settings: QueueSettings,
        options: &WorkerOptions,
        count: usize,
        recorder: Recorder,
    ) -> anyhow::Result<Self> {
        let mut workers = Workers {
            stops: vec![],
            joins: vec![],
        };
        for _ in 0..count {
            let queues = Queues::new(
                RedisHandle::open(&env.url)?,
                &env.namespace,
                settings.clone(),
            );
            let backend: RedisBackend<Payload> = RedisBackend::new(queues, options.clone());
            let worker = WorkerBuilder::new(backend.consumer())
                .backend(backend)
                .data(recorder.clone())
                .concurrency(options.concurrency)
                .build(handle);
            let (tx, rx) = oneshot::channel::<()>();
            workers
                .joins
                .push(tokio::spawn(worker.run_until(async move {
                    let _ = rx.await;
                    Ok::<(), std::io::Error>(())
                })));
            workers.stops.push(tx);
        }
        Ok(workers)
    }

    /// Graceful stop: unstarted jobs go back to the queue, outcomes are flushed.
    async fn stop(self) -> anyhow::Result<()> {
        for tx in self.stops {
            let _ = tx.send(());
        }
        for join in self.joins {
            tokio::time::timeout(Duration::from_secs(30), join)
                .await
                .context("a worker did not stop within 30 s")?
                .context("a worker task panicked")?
                .context("a worker ended with an error")?;
        }
        Ok(())
    }
}

fn options(queue: &QueueName, config: &DrainConfig) -> WorkerOptions {
    let mut o = WorkerOptions::new(queue.clone());
    o.concurrency = config.concurrency;
    o.prefetch = config.prefetch;
    o.batch = config.batch;
    o
}

/// A `\r`-updated progress line on stderr, redrawn at most every 250 ms.
struct Progress<'a> {
    label: &'a str,
    total: u64,
    start: Instant,
    drawn: Option<Instant>,
}

impl<'a> Progress<'a> {
    fn new(label: &'a str, total: u64) -> Self {
        Progress {
            label,
            total,
            start: Instant::now(),
            drawn: None,
        }
    }

    fn update(&mut self, done: u64) {
        if self
            .drawn
            .is_some_and(|at| at.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.drawn = Some(Instant::now());
        let rate = done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r  {}: {} / {} ({}/s)      ",
            self.label,
            thousands(done as f64),
            thousands(self.total as f64),
            thousands(rate)
        );
        let _ = std::io::stderr().flush();
    }
}

impl Drop for Progress<'_> {
    /// Clears the line.
    fn drop(&mut self) {
        if self.drawn.is_some() {
            eprint!("\r{:100}\r", "");
            let _ = std::io::stderr().flush();
        }
    }
}

/// Awaits `work` while a progress line shows `done` of `total`.
async fn with_progress<F: Future>(label: &str, total: u64, done: &AtomicU64, work: F) -> F::Output {
    tokio::pin!(work);
    let mut progress = Progress::new(label, total);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => progress.update(done.load(Ordering::Relaxed)),
        }
    }
}

/// Pushes `n` jobs with `pushers` concurrent tasks (all on one `Queues`, as one process would),
/// [`PUSH_CALL`] jobs per call; returns the time and CPU of the pushes. With `prebuild` every
/// job exists before the clock starts; otherwise each call's jobs are built right before it.
async fn push_jobs(
    env: &Env,
    queues: &Queues,
    queue: &QueueName,
    n: usize,
    pushers: usize,
    prebuild: bool,
    label: &str,
) -> anyhow::Result<Usage> {
    queues.ensure_group(queue).await?;
    let share = n.div_ceil(pushers);
    let call = PUSH_CALL.min(share).max(1);
    let mut left = n;
    let plans: Vec<Vec<usize>> = (0..pushers)
        .map(|_| {
            let mine = share.min(left);
            left -= mine;
            let mut calls = vec![call; mine / call];
            if !mine.is_multiple_of(call) {
                calls.push(mine % call);
            }
            calls
        })
        .collect();
    let prebuilt: Vec<Vec<Vec<NewJob>>> = plans
        .iter()
        .map(|calls| {
            if prebuild {
                calls.iter().rev().map(|&c| env.jobs(c)).collect()
            } else {
                vec![]
            }
        })
        .collect();
    let template = env.payload();
    let done = Arc::new(AtomicU64::new(0));
    let before = env.snapshot().await?;
    let mut tasks = vec![];
    for (calls, mut built) in plans.into_iter().zip(prebuilt) {
        let (queues, queue, done, template) = (
            queues.clone(),
            queue.clone(),
            done.clone(),
            template.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for c in calls {
                // Prebuilt calls are stored last-first.
                let mut jobs = built.pop().unwrap_or_else(|| vec![template.clone(); c]);
                // Each call stands for a request: with traces on (a `traces` child run) its jobs
                // continue its span, as an API request's would; otherwise this is nothing.
                let request = tracing::info_span!(target: "backroom::bench", "request");
                if let Some(trace) = backroom::telemetry::traces::traceparent_of(&request) {
                    for job in &mut jobs {
                        job.trace = Some(trace.clone());
                    }
                }
                let pushed = queues.push(&queue, jobs).await?;
                done.fetch_add(pushed.len() as u64, Ordering::Relaxed);
            }
            Ok::<(), redis::RedisError>(())
        }));
    }
    let results = with_progress(label, n as u64, &done, futures::future::join_all(tasks)).await;
    let after = env.snapshot().await?;
    for r in results {
        r.context("a pusher panicked")?.context("push failed")?;
    }
    Ok(before.until(&after))
}

/// Polls `counts()` until `target` jobs finished (succeeded, failed or dead), calling `each`
/// with every reading; fails after [`STALL`] without progress.
async fn wait_finished(
    queues: &Queues,
    queue: &QueueName,
    target: u64,
    label: &str,
    mut each: impl AsyncFnMut(&QueueCounts) -> anyhow::Result<()>,
) -> anyhow::Result<QueueCounts> {
    let mut progress = Progress::new(label, target);
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(POLL).await;
        let counts = queues.counts(queue).await?;
        let finished = counts.succeeded + counts.failed + counts.dead;
        each(&counts).await?;
        progress.update(finished);
        if finished >= target {
            return Ok(counts);
        }
        if finished > last.0 {
            last = (finished, Instant::now());
        } else if last.1.elapsed() > STALL {
            bail!("{label}: stalled at {finished} of {target} finished jobs: {counts:?}");
        }
    }
}

/// Latencies in µs, summarised.
struct Latencies {
    sorted: Vec<f64>,
}

impl Latencies {
    fn new(us: Vec<u64>) -> Self {
        let mut sorted: Vec<f64> = us.into_iter().map(|u| u as f64).collect();
        sorted.sort_by(f64::total_cmp);
        Latencies { sorted }
    }

    /// The q-quantile (nearest rank), in ms.
    fn ms(&self, q: f64) -> f64 {
        percentile(&self.sorted, q * 100.0) / 1000.0
    }

    fn print(&self) {
        print_table(
            &["samples", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            &[vec![
                self.sorted.len().to_string(),
                dec(self.ms(0.5), 2),
                dec(self.ms(0.9), 2),
                dec(self.ms(0.99), 2),
                dec(self.ms(1.0), 2),
            ]],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. enqueue

async fn scenario_enqueue(env: &Env) -> anyhow::Result<Verdict> {
    let n = env.sizes.enqueue;
    println!(
        "\n== 1. enqueue: batch push of {} jobs, ~{PAYLOAD_BYTES} B payloads ==",
        thousands(n as f64)
    );
    let mut rows = vec![];
    for pushers in [1, 4] {
        let queue = env.queue(if pushers == 1 {
            "enqueue-one"
        } else {
            "enqueue-four"
        });
        let queues = env.queues()?;
        let run = push_jobs(
            env,
            &queues,
            &queue,
            n,
            pushers,
            true,
            &format!("enqueue x{pushers}"),
        )
        .await?;
        let counts = queues.counts(&queue).await?;
        if counts.pending != n as u64 {
            bail!("enqueue: {} jobs pending after pushing {n}", counts.pending);
        }
        env.delete_keys(Some(&queue)).await?;
        rows.push((pushers, run));
    }
    let headers = [
        "pushers",
        "jobs/s",
        "wall s",
        "client µs/job",
        "redis µs/job",
        "jobs/call",
        "other CPU %",
    ];
    let mut table: Vec<Vec<String>> = vec![];
    for (pushers, usage) in &rows {
        table.push(vec![
            pushers.to_string(),
            thousands(n as f64 / usage.wall_s),
            dec(usage.wall_s, 2),
            dec(usage.process_s * 1e6 / n as f64, 2),
            dec(usage.redis_s * 1e6 / n as f64, 2),
            dec(n as f64 / usage.command("evalsha").0.max(1) as f64, 0),
            dec(usage.other_pct(), 0),
        ]);
    }
    print_table(&headers, &table);
    println!("  Redis time by command (1 pusher):");
    rows[0].1.print_commands(n as u64, 6);
    let best = rows
        .iter()
        .map(|(_, usage)| n as f64 / usage.wall_s)
        .fold(0.0, f64::max);
    println!(
        "  target ≥ {} jobs/s: best {} jobs/s  {}",
        thousands(ENQUEUE_TARGET),
        thousands(best),
        verdict(best >= ENQUEUE_TARGET)
    );
    Ok(Verdict {
        target: format!("enqueue ≥ {} jobs/s", thousands(ENQUEUE_TARGET)),
        measured: format!("{} jobs/s", thousands(best)),
        pass: best >= ENQUEUE_TARGET,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. drain

struct DrainRow {
    config: DrainConfig,
    rate: f64,
    wall_s: f64,
    usage: Usage,
    errors: u64,
}

/// Queues `n` jobs, then drains them with `config`'s workers.
async fn drain_once(env: &Env, config: &DrainConfig, n: usize) -> anyhow::Result<DrainRow> {
    Ok(drain_copying(env, config, n, None).await?.0)
}

/// Like [`drain_once`]; with `history`, the queue's job history is on and a copier writes it
/// into that database while the workers drain. Returns also, then, how long after the drain the
/// copy finished and how many rows it holds.
async fn drain_copying(
    env: &Env,
    config: &DrainConfig,
    n: usize,
    history: Option<&sqlx::PgPool>,
) -> anyhow::Result<(DrainRow, Option<(f64, i64)>)> {
    let queue = env.queue(&format!(
        "drain-{}{}",
        config.label,
        if history.is_some() { "-history" } else { "" }
    ));
    let queues = env.queues()?;
    let (stop_copier, stopped) = tokio::sync::watch::channel(false);
    let copier = match history {
        Some(db) => {
            queues
                .set_history_cap(&queue, backroom::queue::HISTORY_CAP)
                .await?;
            Some(tokio::spawn(backroom::history::run_copier(
                db.clone(),
                queues.clone(),
                vec![queue.clone()],
                30,
                stopped,
            )))
        }
        None => None,
    };
    push_jobs(
        env,
        &queues,
        &queue,
        n,
        2,
        false,
        &format!("queueing for {}", config.label),
    )
    .await?;
    let before = env.snapshot().await?;
    let workers = Workers::start(
        env,
        &options(&queue, config),
        config.workers,
        Recorder(None),
    )?;
    let counts = wait_finished(
        &queues,
        &queue,
        n as u64,
        &format!("draining {}", config.label),
        async |_| Ok(()),
    )
    .await;
    let after = env.snapshot().await?;
    let drained = Instant::now();
    workers.stop().await?;
    let counts = counts?;
    let usage = before.until(&after);
    let mut copied = None;
    if let (Some(db), Some(copier)) = (history, copier) {
        let rows = loop {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_history")
                .fetch_one(db)
                .await?;
            if rows >= n as i64 || drained.elapsed() > Duration::from_secs(120) {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        copied = Some((drained.elapsed().as_secs_f64(), rows));
        let _ = stop_copier.send(true);
        let _ = copier.await;
        sqlx::query("TRUNCATE job_history").execute(db).await?;
    }
    env.delete_keys(Some(&queue)).await?;
    Ok((
        DrainRow {
            config: *config,
            rate: n as f64 / usage.wall_s,
            wall_s: usage.wall_s,
            errors: counts.failed + counts.dead + counts.retrying,
            usage,
        },
        copied,
    ))
}

// ---------------------------------------------------------------------------------------------
// 9. job history

/// The drain with the job history copied into Postgres against the plain drain, alternately
/// (plain, copying, plain, copying) so that machine noise falls on both alike; best of each.
async fn scenario_history(env: &Env, config: &DrainConfig) -> anyhow::Result<Verdict> {
    let n = env.sizes.drain;
    println!(
        "\n== 9. history: drain {} jobs plain and with the job history copied into Postgres ({}) ==",
        thousands(n as f64),
        config.label
    );
    let names = common::Names::new();
    let db = names.create_database().await?;
    let mut plain: Vec<DrainRow> = vec![];
    let mut copying: Vec<(DrainRow, f64, i64)> = vec![];
    for _ in 0..2 {
        plain.push(drain_copying(env, config, n, None).await?.0);
        let (row, copied) = drain_copying(env, config, n, Some(&db)).await?;
        let (after_s, rows) = copied.expect("copying was on");
        copying.push((row, after_s, rows));
    }
    db.close().await;
    names.cleanup().await;
    let mut table = vec![];
    for r in &plain {
        table.push(vec![
            "plain".into(),
            thousands(r.rate),
            dec(r.usage.redis_s * 1e6 / n as f64, 2),
            dec(r.usage.process_s * 1e6 / n as f64, 2),
            "—".into(),
            "—".into(),
        ]);
    }
    for (r, after_s, rows) in &copying {
        table.push(vec![
            "history on".into(),
            thousands(r.rate),
            dec(r.usage.redis_s * 1e6 / n as f64, 2),
            dec(r.usage.process_s * 1e6 / n as f64, 2),
            thousands(*rows as f64),
            dec(*after_s, 2),
        ]);
    }
    print_table(
        &[
            "run",
            "jobs/s",
            "redis µs/job",
            "client µs/job",
            "rows copied",
            "copy done after drain (s)",
        ],
        &table,
    );
    let best_plain = plain.iter().map(|r| r.rate).fold(0.0, f64::max);
    let best_copying = copying.iter().map(|r| r.0.rate).fold(0.0, f64::max);
    let all_copied = copying.iter().all(|(_, _, rows)| *rows == n as i64);
    let ratio = best_copying / best_plain;
    println!(
        "  client CPU includes the copier (same process); target: drain with the history on \
         ≥ 95 % of plain and every job copied: {:.1} %, copied {}  {}",
        ratio * 100.0,
        if all_copied { "all" } else { "NOT all" },
        verdict(ratio >= 0.95 && all_copied)
    );
    Ok(Verdict {
        target: "drain with job history ≥ 95 % of plain, every job copied".into(),
        measured: format!(
            "{} vs {} jobs/s ({:.1} %)",
            thousands(best_copying),
            thousands(best_plain),
            ratio * 100.0
        ),
        pass: ratio >= 0.95 && all_copied,
    })
}

async fn scenario_drain(env: &Env) -> anyhow::Result<(Verdict, DrainConfig)> {
    let n = env.sizes.drain;
    println!(
        "\n== 2. drain: {} queued jobs, no-op handler, in-process workers ==",
        thousands(n as f64)
    );
    let mut rows = vec![];
    for config in DRAIN_CONFIGS {
        rows.push(drain_once(env, config, n).await?);
    }
    let headers = [
        "config",
        "workers",
        "conc",
        "prefetch",
        "batch",
        "jobs/s",
        "wall s",
        "client µs/job",
        "redis µs/job",
        "script µs/job",
        "jobs/read",
        "jobs/ack",
        "errors",
        "other CPU %",
    ];
    let mut table: Vec<Vec<String>> = vec![];
    for r in &rows {
        let c = &r.config;
        let (_, script_us) = r.usage.command("evalsha");
        // A FETCH runs one XREADGROUP, or two when it moves jobs from the ready lists; every
        // COMPLETE that records successes runs one HINCRBY.
        let (fetches, _) = r.usage.command("xreadgroup");
        let (acks, _) = r.usage.command("hincrby");
        table.push(vec![
            c.label.to_string(),
            c.workers.to_string(),
            c.concurrency.to_string(),
            c.prefetch.to_string(),
            c.batch.to_string(),
            thousands(r.rate),
            dec(r.wall_s, 2),
            dec(r.usage.process_s * 1e6 / n as f64, 2),
            dec(r.usage.redis_s * 1e6 / n as f64, 2),
            dec(script_us as f64 / n as f64, 2),
            dec(n as f64 / fetches.max(1) as f64, 1),
            dec(n as f64 / acks.max(1) as f64, 1),
            r.errors.to_string(),
            dec(r.usage.other_pct(), 0),
        ]);
    }
    print_table(&headers, &table);
    let best = rows
        .iter()
        .max_by(|a, b| a.rate.total_cmp(&b.rate))
        .expect("at least one drain configuration");
    println!(
        "  client = this process's CPU, redis = Redis CPU, script = wall time inside EVALSHA \
         (grows when Redis is preempted),\n  \
         jobs/read and jobs/ack = mean jobs per XREADGROUP and per COMPLETE script call,\n  \
         other CPU = CPU used by other processes on the machine meanwhile (% of one core)"
    );
    // What the CPU cost per job allows, whatever else the machine is doing.
    let redis_us = best.usage.redis_s * 1e6 / n as f64;
    let client_us = best.usage.process_s * 1e6 / n as f64;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    println!(
        "  ceilings from the best configuration's CPU per job: Redis (one thread, {redis_us:.1} \
         µs/job) {} jobs/s; all {cores} cores shared by Redis and workers ({:.1} µs/job) {} jobs/s",
        thousands(1e6 / redis_us),
        redis_us + client_us,
        thousands(cores * 1e6 / (redis_us + client_us))
    );
    println!(
        "  Redis time by command, best configuration ({}):",
        best.config.label
    );
    best.usage.print_commands(n as u64, 12);
    println!(
        "  target ≥ {} jobs/s: best {} jobs/s ({})  {}",
        thousands(DRAIN_TARGET),
        thousands(best.rate),
        best.config.label,
        verdict(best.rate >= DRAIN_TARGET)
    );
    Ok((
        Verdict {
            target: format!("drain ≥ {} jobs/s", thousands(DRAIN_TARGET)),
            measured: format!("{} jobs/s ({})", thousands(best.rate), best.config.label),
            pass: best.rate >= DRAIN_TARGET,
        },
        best.config,
    ))
}

// ---------------------------------------------------------------------------------------------
// 3. idle pickup

async fn scenario_idle(env: &Env) -> anyhow::Result<Verdict> {
    let n = env.sizes.pickups;
    println!(
        "\n== 3. idle pickup: {n} single jobs pushed to an idle queue, {} ms apart ==",
        env.sizes.pickup_gap.as_millis()
    );
    let queue = env.queue("idle");
    let queues = env.queues()?;
    queues.ensure_group(&queue).await?;
    let mut o = WorkerOptions::new(queue.clone());
    o.block = Duration::from_secs(5);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = Workers::start(env, &o, 1, Recorder(Some(tx)))?;
    // Let the worker reach its blocking wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = vec![];
    let mut lost = 0;
    let mut progress = Progress::new("pickups", n as u64);
    let outcome: anyhow::Result<()> = async {
        for i in 0..n {
            queues.push(&queue, vec![env.payload()]).await?;
            match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
                Ok(Some(us)) => samples.push(us),
                _ => lost += 1,
            }
            progress.update(i as u64 + 1);
            tokio::time::sleep(env.sizes.pickup_gap).await;
        }
        Ok(())
    }
    .await;
    drop(progress);
    workers.stop().await?;
    outcome?;
    env.delete_keys(Some(&queue)).await?;
    let lat = Latencies::new(samples);
    lat.print();
    if lost > 0 {
        println!("  {lost} jobs did not start within 2 s (not in the figures)");
    }
    let p99 = lat.ms(0.99);
    let pass = lost == 0 && p99 <= IDLE_P99_TARGET_MS;
    println!(
        "  target p99 ≤ {IDLE_P99_TARGET_MS} ms: {p99:.2} ms  {}",
        verdict(pass)
    );
    Ok(Verdict {
        target: format!("idle pickup p99 ≤ {IDLE_P99_TARGET_MS} ms"),
        measured: format!("p99 {p99:.2} ms, max {:.2} ms", lat.ms(1.0)),
        pass,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. steady state

async fn scenario_steady(env: &Env) -> anyhow::Result<Verdict> {
    Ok(steady(env).await?.0)
}

/// The steady scenario; returns its verdict and its enqueue-to-start p99 in ms.
async fn steady(env: &Env) -> anyhow::Result<(Verdict, f64)> {
    let duration = env.sizes.steady;
    let target_rate = STEADY_PER_TICK as f64 / STEADY_TICK.as_secs_f64();
    println!(
        "\n== 4. steady state: {STEADY_PER_TICK} jobs every {} ms ({} jobs/s) for {} s, one worker (defaults) ==",
        STEADY_TICK.as_millis(),
        thousands(target_rate),
        duration.as_secs()
    );
    let queue = env.queue("steady");
    let queues = env.queues()?;
    queues.ensure_group(&queue).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = Workers::start(
        env,
        &WorkerOptions::new(queue.clone()),
        1,
        Recorder(Some(tx)),
    )?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let ticks = (duration.as_secs_f64() / STEADY_TICK.as_secs_f64()).round() as usize;
    let mut tick = tokio::time::interval(STEADY_TICK);
    // Burst: a late push is followed by catch-up pushes, so the mean rate stays on target.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let before = env.snapshot().await?;
    let start = Instant::now();
    let mut pushed = 0usize;
    let mut samples = Vec::with_capacity(ticks * STEADY_PER_TICK);
    // How long each push call takes: part of every job's enqueue-to-start time.
    let mut push_calls = Vec::with_capacity(ticks);
    let mut progress = Progress::new("steady", (ticks * STEADY_PER_TICK) as u64);
    let outcome: anyhow::Result<()> = async {
        for _ in 0..ticks {
            tick.tick().await;
            let call = Instant::now();
            let jobs: Vec<NewJob> = (0..STEADY_PER_TICK).map(|_| env.payload()).collect();
            pushed += queues.push(&queue, jobs).await?.len();
            push_calls.push(call.elapsed().as_micros() as u64);
            while let Ok(us) = rx.try_recv() {
                samples.push(us);
            }
            progress.update(pushed as u64);
        }
        Ok(())
    }
    .await;
    let produced_for = start.elapsed();
    drop(progress);
    // Collect the stragglers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while samples.len() < pushed && outcome.is_ok() {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(us)) => samples.push(us),
            _ => break,
        }
    }
    let after = env.snapshot().await?;
    workers.stop().await?;
    outcome?;
    env.delete_keys(Some(&queue)).await?;

    let usage = before.until(&after);
    let rate = pushed as f64 / produced_for.as_secs_f64();
    let missing = pushed.saturating_sub(samples.len());
    println!(
        "  achieved {} jobs/s ({} jobs); CPU meanwhile, in % of one core: this process {:.0}, \
         Redis {:.0}, other processes {:.0}",
        thousands(rate),
        thousands(pushed as f64),
        usage.process_s * 100.0 / usage.wall_s,
        usage.redis_s * 100.0 / usage.wall_s,
        usage.other_pct()
    );
    let lat = Latencies::new(samples);
    lat.print();
    let calls = Latencies::new(push_calls);
    println!(
        "  of which the push call itself ({STEADY_PER_TICK} jobs, from building the jobs to \
         the reply): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        calls.ms(0.5),
        calls.ms(0.99),
        calls.ms(1.0)
    );
    if missing > 0 {
        println!("  {missing} jobs did not start within 10 s after the producer stopped");
    }
    let p99 = lat.ms(0.99);
    let pass = missing == 0 && p99 <= STEADY_P99_TARGET_MS && rate >= 0.95 * target_rate;
    println!(
        "  target p99 ≤ {STEADY_P99_TARGET_MS} ms at {} jobs/s: {p99:.2} ms at {} jobs/s  {}",
        thousands(target_rate),
        thousands(rate),
        verdict(pass)
    );
    let verdict = Verdict {
        target: format!(
            "steady enqueue-to-start p99 ≤ {STEADY_P99_TARGET_MS} ms at {} jobs/s",
            thousands(target_rate)
        ),
        measured: format!("p99 {p99:.2} ms at {} jobs/s", thousands(rate)),
        pass,
    };
    Ok((verdict, p99))
}

// ---------------------------------------------------------------------------------------------
// 5. backlog

/// One slice of the backlog drain.
struct Slice {
    from: u64,
    to: u64,
    usage: Usage,
    /// Jobs still queued (not yet fetched) when the slice began.
    queued_at_start: u64,
}

async fn scenario_backlog(env: &Env, config: &DrainConfig) -> anyhow::Result<Verdict> {
    let n = env.sizes.backlog;
    let slice = env.sizes.slice as u64;
    println!(
        "\n== 5. backlog: {} queued jobs drained by {} ({} worker(s), concurrency {}, prefetch {}, batch {}) ==",
        thousands(n as f64),
        config.label,
        config.workers,
        config.concurrency,
        config.prefetch,
        config.batch
    );
    let queue = env.queue("backlog");
    let queues = env.queues()?;
    let empty = env.snapshot().await?;
    let took = push_jobs(env, &queues, &queue, n, 2, false, "queueing backlog")
        .await?
        .wall_s;
    println!(
        "  queued in {:.1} s ({} jobs/s, 2 pushers, jobs built on the fly)",
        took,
        thousands(n as f64 / took)
    );

    let mut slices: Vec<Slice> = vec![];
    let mut mark = (0u64, env.snapshot().await?, n as u64);
    let queued_memory = mark.1.redis_memory;
    let workers = Workers::start(
        env,
        &options(&queue, config),
        config.workers,
        Recorder(None),
    )?;
    let counts = wait_finished(
        &queues,
        &queue,
        n as u64,
        "draining backlog",
        async |counts: &QueueCounts| {
            let done = counts.succeeded + counts.failed + counts.dead;
            if done >= mark.0 + slice || done >= n as u64 {
                let now = env.snapshot().await?;
                slices.push(Slice {
                    from: mark.0,
                    to: done,
                    usage: mark.1.until(&now),
                    queued_at_start: mark.2,
                });
                mark = (done, now, counts.pending);
            }
            Ok(())
        },
    )
    .await;
    workers.stop().await?;
    let counts = counts?;
    let drained = env.snapshot().await?;
    env.delete_keys(Some(&queue)).await?;

    let headers = [
        "jobs",
        "queued at start",
        "secs",
        "jobs/s",
        "client µs/job",
        "redis µs/job",
        "script µs/job",
        "XREADGROUP µs/job",
        "other CPU %",
    ];
    let mut table: Vec<Vec<String>> = vec![];
    for s in &slices {
        let jobs = (s.to - s.from).max(1) as f64;
        table.push(vec![
            format!("{}–{}", thousands(s.from as f64), thousands(s.to as f64)),
            thousands(s.queued_at_start as f64),
            dec(s.usage.wall_s, 2),
            thousands(jobs / s.usage.wall_s),
            dec(s.usage.process_s * 1e6 / jobs, 2),
            dec(s.usage.redis_s * 1e6 / jobs, 2),
            dec(s.usage.command("evalsha").1 as f64 / jobs, 2),
            dec(s.usage.command("xreadgroup").1 as f64 / jobs, 2),
            dec(s.usage.other_pct(), 0),
        ]);
    }
    print_table(&headers, &table);
    let per_job = |bytes: f64| bytes / n as f64;
    println!(
        "  Redis memory: {:.0} B/job while queued, {:.0} B/job once succeeded (kept for the \
         succeeded retention, 24 h by default)",
        per_job(queued_memory - empty.redis_memory),
        per_job(drained.redis_memory - empty.redis_memory)
    );
    let total_s: f64 = slices.iter().map(|s| s.usage.wall_s).sum();
    let errors = counts.failed + counts.dead + counts.retrying;
    let unfinished = (n as u64).saturating_sub(counts.succeeded);
    println!(
        "  total {:.1} s, {} jobs/s; succeeded {}, failed {}, dead {}, retrying {}, left {}",
        total_s,
        thousands(n as f64 / total_s),
        thousands(counts.succeeded as f64),
        counts.failed,
        counts.dead,
        counts.retrying,
        counts.pending + counts.running
    );
    // Flatness: mean rate of the first half of the slices (largest backlog) against the second.
    let rate_of = |part: &[Slice]| {
        let jobs: u64 = part.iter().map(|s| s.to - s.from).sum();
        let secs: f64 = part.iter().map(|s| s.usage.wall_s).sum();
        jobs as f64 / secs
    };
    let half = slices.len() / 2;
    let ratio = if half > 0 {
        rate_of(&slices[half..]) / rate_of(&slices[..half])
    } else {
        f64::NAN
    };
    let flat = ratio >= FLAT_RATIO.0 && ratio <= FLAT_RATIO.1;
    let pass = errors == 0 && unfinished == 0 && flat;
    println!(
        "  target: no errors and a flat rate (second half / first half within {}–{}): errors {}, ratio {:.2}  {}",
        FLAT_RATIO.0,
        FLAT_RATIO.1,
        errors + unfinished,
        ratio,
        verdict(pass)
    );
    Ok(Verdict {
        target: format!(
            "{} queued jobs drain without errors, flat fetch cost",
            thousands(n as f64)
        ),
        measured: format!(
            "{} errors, {} jobs/s, 2nd/1st half rate {:.2}",
            errors + unfinished,
            thousands(n as f64 / total_s),
            ratio
        ),
        pass,
    })
}

// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// 6. memory

async fn scenario_memory(env: &Env) -> anyhow::Result<Verdict> {
    let duration = env.sizes.memory;
    let retention = Duration::from_secs(2);
    let rate = STEADY_PER_TICK as f64 / STEADY_TICK.as_secs_f64();
    println!(
        "\n== 6. memory: {} jobs/s for {} s, succeeded jobs kept {} s, trimmed every second ==",
        thousands(rate),
        duration.as_secs(),
        retention.as_secs()
    );
    let settings = QueueSettings {
        succeeded_retention: retention,
        ..QueueSettings::default()
    };
    let queue = env.queue("memory");
    let queues = Queues::new(
        RedisHandle::open(&env.url)?,
        &env.namespace,
        settings.clone(),
    );
    queues.ensure_group(&queue).await?;
    let workers = Workers::start_with(
        env,
        settings,
        &WorkerOptions::new(queue.clone()),
        1,
        Recorder(None),
    )?;
    let empty = env.snapshot().await?.redis_memory;
    let mut tick = tokio::time::interval(STEADY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut next_sample = Duration::from_secs(1);
    let mut samples: Vec<f64> = vec![];
    let mut pushed = 0usize;
    let outcome: anyhow::Result<()> = async {
        while start.elapsed() < duration {
            tick.tick().await;
            let jobs: Vec<NewJob> = (0..STEADY_PER_TICK).map(|_| env.payload()).collect();
            pushed += queues.push(&queue, jobs).await?.len();
            if start.elapsed() >= next_sample {
                queues.trim(&queue).await?;
                samples.push(env.snapshot().await?.redis_memory - empty);
                next_sample += Duration::from_secs(1);
            }
        }
        Ok(())
    }
    .await;
    workers.stop().await?;
    outcome?;
    env.delete_keys(Some(&queue)).await?;

    let mb: Vec<f64> = samples.iter().map(|b| b / 1e6).collect();
    let top = mb.iter().copied().fold(f64::MIN, f64::max).max(0.001);
    let bars = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let line: String = mb
        .iter()
        .map(|v| bars[((v.max(0.0) / top) * 7.0).round() as usize])
        .collect();
    println!(
        "  {} jobs pushed; Redis memory above the empty queue, MB per second (max {top:.1} MB):",
        thousands(pushed as f64)
    );
    println!("  {line}");
    let warm = (retention.as_secs() + 2) as usize;
    let steady = &mb[warm.min(mb.len())..];
    let third = (steady.len() / 3).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (first, last) = (
        mean(&steady[..third.min(steady.len())]),
        mean(&steady[steady.len().saturating_sub(third)..]),
    );
    let ratio = last / first.max(1e-9);
    let pass = steady.len() >= 3 && (0.8..=1.25).contains(&ratio);
    println!(
        "  after warm-up: first third {first:.1} MB, last third {last:.1} MB (×{ratio:.2})  {}",
        verdict(pass)
    );
    Ok(Verdict {
        target: "memory flat under steady load".into(),
        measured: format!("{first:.1} MB → {last:.1} MB (×{ratio:.2})"),
        pass,
    })
}

// ---------------------------------------------------------------------------------------------
// 7. fairness

async fn scenario_fairness(env: &Env) -> anyhow::Result<Verdict> {
    let (flood, quiet) = (env.sizes.flood, env.sizes.quiet);
    println!(
        "\n== 7. fairness: a busy tenant's {} jobs ({FAIR_WORK_MS} ms each) queued, then a quiet tenant's {quiet} \
         jobs {} ms apart, one worker (defaults) ==",
        thousands(flood as f64),
        QUIET_GAP.as_millis()
    );
    let queue = env.queue("fairness");
    let queues = env.queues()?;
    queues.ensure_group(&queue).await?;
    let (busy, calm) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let job = |tenant, unrecorded| {
        NewJob::new(
            "bench",
            &Payload {
                pushed_us: now_us(),
                pad: String::new(),
                work_ms: FAIR_WORK_MS,
                unrecorded,
            },
        )
        .tenant(tenant)
    };
    for start in (0..flood).step_by(PUSH_CALL) {
        let n = PUSH_CALL.min(flood - start);
        queues.push(&queue, vec![job(busy, true); n]).await?;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let workers = Workers::start(
        env,
        &WorkerOptions::new(queue.clone()),
        1,
        Recorder(Some(tx)),
    )?;
    let mut samples = vec![];
    let mut progress = Progress::new("quiet jobs", quiet as u64);
    let outcome: anyhow::Result<(Duration, u64)> = async {
        let mut busy_left_at_last_push = 0;
        for i in 0..quiet {
            tokio::time::sleep(QUIET_GAP).await;
            queues.push(&queue, vec![job(calm, false)]).await?;
            busy_left_at_last_push = queues.counts(&queue).await?.pending;
            while let Ok(us) = rx.try_recv() {
                samples.push(us);
            }
            progress.update(i as u64 + 1);
        }
        drop(progress);
        let deadline = Instant::now() + Duration::from_secs(30);
        while samples.len() < quiet {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some(us)) => samples.push(us),
                _ => break,
            }
        }
        let counts = wait_finished(
            &queues,
            &queue,
            (flood + quiet) as u64,
            "flood",
            async |_| Ok(()),
        )
        .await?;
        if counts.succeeded != (flood + quiet) as u64 {
            bail!("not every job succeeded: {counts:?}");
        }
        Ok((started.elapsed(), busy_left_at_last_push))
    }
    .await;
    workers.stop().await?;
    let (drained_in, busy_left) = outcome?;
    env.delete_keys(Some(&queue)).await?;
    let missing = quiet.saturating_sub(samples.len());
    let lat = Latencies::new(samples);
    println!("  the quiet tenant's jobs, enqueue to start:");
    lat.print();
    let rate = flood as f64 / drained_in.as_secs_f64();
    println!(
        "  the flood drained in {:.1} s ({} jobs/s); at the quiet tenant's last push {} jobs were \
         still waiting, about {:.1} s of work that first-in-first-out would have put first",
        drained_in.as_secs_f64(),
        thousands(rate),
        thousands(busy_left as f64),
        busy_left as f64 / rate
    );
    if missing > 0 {
        println!("  {missing} quiet jobs did not start within 30 s");
    }
    let p99 = lat.ms(0.99);
    let pass = missing == 0 && p99 <= FAIR_P99_TARGET_MS;
    println!(
        "  target quiet tenant p99 ≤ {FAIR_P99_TARGET_MS} ms behind a flood: {p99:.2} ms  {}",
        verdict(pass)
    );
    Ok(Verdict {
        target: format!("quiet tenant p99 ≤ {FAIR_P99_TARGET_MS} ms behind another's flood"),
        measured: format!(
            "p99 {p99:.2} ms while {} flood jobs drained in {:.1} s",
            thousands(flood as f64),
            drained_in.as_secs_f64()
        ),
        pass,
    })
}

const SCENARIOS: [&str; 11] = [
    "enqueue", "drain", "idle", "steady", "backlog", "memory", "fairness", "workflow", "history",
    "traces", "link",
];

// ---------------------------------------------------------------------------------------------
// 8. workflow: jobs that wait for jobs

const CHAIN_LENGTH: usize = 10;
/// Idle release latency target: from the last parent's start (its handler does nothing, so its
/// end is microseconds later) to its child's start.
const RELEASE_P99_TARGET_MS: f64 = 5.0;

/// A job of the workflow scenario: it reports its start as an absolute time (`pushed_us` 0).
fn stamped(env: &Env) -> NewJob {
    NewJob::new(
        "bench",
        &Payload {
            pushed_us: 0,
            pad: env.pad.clone(),
            work_ms: 0,
            unrecorded: false,
        },
    )
}

async fn scenario_workflow(env: &Env, config: &DrainConfig) -> anyhow::Result<Vec<Verdict>> {
    let chains = env.sizes.chains;
    let total = chains * CHAIN_LENGTH + env.sizes.fan_in + 1;
    println!(
        "\n== 8. workflow: {chains} chains of {CHAIN_LENGTH} and a fan-in of {} into one job \
         ({total} jobs), then {} idle releases ==",
        env.sizes.fan_in, env.sizes.releases
    );
    let queue = env.queue("workflow");
    let queues = env.queues()?;
    queues.ensure_group(&queue).await?;

    // The backlog: level by level, each chain's job waiting for the one before it; every job of
    // it one group.
    let group = uuid::Uuid::now_v7();
    queues
        .open_group(GroupSpec {
            id: group,
            tenant: None,
            total: total as u64,
            follow_up: None,
        })
        .await?;
    let mut progress = Progress::new("pushing the workflows", total as u64);
    let mut level: Vec<String> = vec![];
    let mut pushed = 0;
    for _ in 0..CHAIN_LENGTH {
        let mut jobs = vec![];
        for c in 0..chains {
            let job = env.payload().in_group(group);
            jobs.push(match level.get(c) {
                Some(parent) => job.depends_on([parent]),
                None => job,
            });
        }
        level = queues
            .push(&queue, jobs)
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect();
        pushed += chains;
        progress.update(pushed as u64);
    }
    let fan_in: Vec<NewJob> = env
        .jobs(env.sizes.fan_in)
        .into_iter()
        .map(|j| j.in_group(group))
        .collect();
    let parents: Vec<String> = queues
        .push(&queue, fan_in)
        .await?
        .into_iter()
        .map(|p| p.id)
        .collect();
    queues
        .push(
            &queue,
            vec![env.payload().depends_on(&parents).in_group(group)],
        )
        .await?;
    drop(progress);
    let waiting = queues.counts(&queue).await?.waiting;

    let workers = Workers::start(
        env,
        &options(&queue, config),
        config.workers,
        Recorder(None),
    )?;
    let started = Instant::now();
    let outcome = wait_finished(
        &queues,
        &queue,
        total as u64,
        "workflow drain",
        async |_| Ok(()),
    )
    .await;
    let elapsed = started.elapsed();
    // The group has noted every member once the last one's outcome is told.
    let group_view = async {
        loop {
            let view = queues.group(&group).await?;
            if let Some(v) = view.filter(|v| v.state != GroupState::Running) {
                return anyhow::Ok(v);
            }
            anyhow::ensure!(
                started.elapsed() < elapsed + Duration::from_secs(30),
                "the group did not complete within 30 s of the drain"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    .await;
    let group_lag = started.elapsed().saturating_sub(elapsed);
    workers.stop().await?;
    let counts = outcome?;
    let group_view = group_view?;
    let rate = total as f64 / elapsed.as_secs_f64();
    env.delete_keys(Some(&queue)).await?;
    print_table(
        &[
            "jobs",
            "held at start",
            "succeeded",
            "seconds",
            "jobs/s",
            "group counted",
            "group done after",
        ],
        &[vec![
            total.to_string(),
            waiting.to_string(),
            counts.succeeded.to_string(),
            dec(elapsed.as_secs_f64(), 2),
            dec(rate, 0),
            group_view.succeeded.to_string(),
            format!("+{} ms", group_lag.as_millis()),
        ]],
    );

    // Idle release: one parent and its child at a time, on an idle worker.
    let mut o = WorkerOptions::new(queue.clone());
    o.block = Duration::from_secs(5);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = Workers::start(env, &o, 1, Recorder(Some(tx)))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = vec![];
    let mut lost = 0;
    let mut progress = Progress::new("releases", env.sizes.releases as u64);
    let measured: anyhow::Result<()> = async {
        for i in 0..env.sizes.releases {
            let parent = queues.push(&queue, vec![stamped(env)]).await?.remove(0).id;
            queues
                .push(&queue, vec![stamped(env).depends_on([parent])])
                .await?;
            let mut stamps = vec![];
            while stamps.len() < 2 {
                match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
                    Ok(Some(us)) => stamps.push(us),
                    _ => break,
                }
            }
            match stamps[..] {
                [parent_start, child_start] => {
                    samples.push(child_start.saturating_sub(parent_start))
                }
                _ => lost += 1,
            }
            progress.update(i as u64 + 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
    .await;
    drop(progress);
    workers.stop().await?;
    measured?;
    env.delete_keys(Some(&queue)).await?;
    let lat = Latencies::new(samples);
    println!("  release: the parent's start to its child's start");
    lat.print();
    let p99 = lat.ms(0.99);
    let pass = lost == 0 && p99 <= RELEASE_P99_TARGET_MS;
    println!(
        "  target p99 ≤ {RELEASE_P99_TARGET_MS} ms: {p99:.2} ms  {}",
        verdict(pass)
    );
    Ok(vec![
        Verdict {
            target: format!("workflow drain ({chains}×{CHAIN_LENGTH} chains + fan-in), jobs/s"),
            measured: format!("{rate:.0} jobs/s"),
            pass: counts.succeeded == total as u64,
        },
        Verdict {
            target: format!("(check) one group of all {total} jobs counts each once"),
            measured: format!(
                "{} succeeded, {} pending, {:?}",
                group_view.succeeded, group_view.pending, group_view.state
            ),
            pass: group_view.succeeded == total as u64 && group_view.state == GroupState::Succeeded,
        },
        Verdict {
            target: format!("idle release p99 ≤ {RELEASE_P99_TARGET_MS} ms"),
            measured: format!("p99 {p99:.2} ms, max {:.2} ms, {lost} lost", lat.ms(1.0)),
            pass,
        },
    ])
}

/// Runs the selected scenarios in order. Without the drain scenario, the backlog is drained
/// with the default options.
async fn run_all(env: &Env) -> anyhow::Result<Vec<Verdict>> {
    let mut verdicts = vec![];
    let mut best = DRAIN_CONFIGS[0];
    if env.selected("enqueue") {
        verdicts.push(scenario_enqueue(env).await?);
    }
    if env.selected("drain") {
        let (drain, config) = scenario_drain(env).await?;
        verdicts.push(drain);
        best = config;
    }
    if env.selected("idle") {
        verdicts.push(scenario_idle(env).await?);
    }
    if env.selected("steady") {
        verdicts.push(scenario_steady(env).await?);
    }
    if env.selected("backlog") {
        verdicts.push(scenario_backlog(env, &best).await?);
    }
    if env.selected("memory") {
        verdicts.push(scenario_memory(env).await?);
    }
    if env.selected("fairness") {
        verdicts.push(scenario_fairness(env).await?);
    }
    if env.selected("workflow") {
        verdicts.extend(scenario_workflow(env, &best).await?);
    }
    if env.selected("history") {
        verdicts.push(scenario_history(env, &best).await?);
    }
    if env.selected("traces") {
        verdicts.extend(scenario_traces(env).await?);
    }
    if env.only.iter().any(|s| s == "link") {
        verdicts.extend(scenario_link(env).await?);
    }
    Ok(verdicts)
}

// ---------------------------------------------------------------------------------------------
// 10. traces

/// What a `traces` child run measures: the enqueue (1 pusher) and the drain (defaults) of
/// parts 1 and 2, as figures for its parent.
async fn traces_child(env: &Env) -> anyhow::Result<()> {
    let n = env.sizes.drain;
    let queues = env.queues()?;
    let queue = env.queue("traces-enqueue");
    let enqueue = push_jobs(env, &queues, &queue, n, 1, true, "enqueue").await?;
    env.delete_keys(Some(&queue)).await?;
    let drain = drain_once(env, &DRAIN_CONFIGS[0], n).await?;
    anyhow::ensure!(drain.errors == 0, "{} jobs did not succeed", drain.errors);
    let mut figures = serde_json::json!({
        "enqueue": n as f64 / enqueue.wall_s,
        "drain": drain.rate,
        "drain_process_us": drain.usage.process_s * 1e6 / n as f64,
        "drain_redis_us": drain.usage.redis_s * 1e6 / n as f64,
    });
    if std::env::var_os(common::LINK_CHILD).is_some() {
        figures["steady_p99_ms"] = steady(env).await?.1.into();
    }
    common::print_traces_result(&figures);
    Ok(())
}

/// A network hop away (#24), only when asked for (`cargo bench --bench queue -- link`): parts 1
/// (one pusher) and 2 (defaults) and the steady state in child processes of this bench, with
/// Redis straight on loopback and behind a relay that delays every byte by 0, 0.25 and 1 ms each
/// way (0.5 and 2 ms round trips), two rounds (one in smoke mode).
async fn scenario_link(env: &Env) -> anyhow::Result<Vec<Verdict>> {
    let rounds = if env.smoke { 1 } else { 2 };
    println!(
        "\n== 11. a network hop away: enqueue (1 pusher), drain (defaults) of {} jobs and the steady state with Redis behind a delaying relay, child processes, medians of {rounds} rounds ==",
        thousands(env.sizes.drain as f64),
    );
    let args: Vec<&str> = if env.smoke { vec!["--smoke"] } else { vec![] };
    let url = env.url.clone();
    // The queue bench needs no Postgres; the link to it is made and not used.
    let pg = url::Url::parse(
        &std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
    )?;
    let runs = tokio::task::spawn_blocking(move || common::linked_runs(&args, rounds, &url, &pg))
        .await??;
    let mut verdicts = common::link_verdicts(&runs, "drain", "drain", "jobs/s");
    verdicts.extend(common::link_verdicts(
        &runs,
        "enqueue",
        "enqueue, 1 pusher",
        "jobs/s",
    ));
    let rows: Vec<Vec<String>> = common::LINKS
        .iter()
        .map(|(label, _)| {
            vec![
                label.to_string(),
                dec(common::traced_median(&runs, label, "steady_p99_ms"), 2),
            ]
        })
        .collect();
    print_table(&["link", "steady enqueue-to-start p99 ms"], &rows);
    Ok(verdicts)
}

/// What traces cost the queue: parts 1 (one pusher) and 2 (defaults) in child processes of
/// this bench with traces off, on at sampling 1.0 and on at 0.01, nine times each in turn, exporting
/// to an OTLP/HTTP sink here. Every push call is a traced request, so every job carries a trace
/// and each run is a span (at 1.0, one span per job is exported).
async fn scenario_traces(env: &Env) -> anyhow::Result<Vec<Verdict>> {
    println!(
        "\n== 10. traces: enqueue (1 pusher) and drain (defaults) of {} jobs with traces off and on, child processes, {} rounds; costs are medians over rounds of each run against its own round's off run ==",
        thousands(env.sizes.drain as f64),
        common::traced_rounds(env.smoke)
    );
    let args: Vec<&str> = if env.smoke { vec!["--smoke"] } else { vec![] };
    let rounds = common::traced_rounds(env.smoke);
    let runs = tokio::task::spawn_blocking(move || common::traced_runs(&args, rounds)).await??;
    let mean = |mode: &str, key: &str| common::traced_median(&runs, mode, key);
    let mut rows = vec![];
    for (mode, _) in common::TRACE_MODES {
        let spans: u64 = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.spans)
            .sum();
        rows.push(vec![
            mode.to_string(),
            thousands(mean(mode, "enqueue")),
            format!("{:+.1} %", common::traced_cost(&runs, mode, "enqueue")),
            thousands(mean(mode, "drain")),
            format!("{:+.1} %", common::traced_cost(&runs, mode, "drain")),
            dec(mean(mode, "drain_process_us"), 2),
            dec(mean(mode, "drain_redis_us"), 2),
            thousands(spans as f64 / rounds as f64),
        ]);
    }
    print_table(
        &[
            "traces",
            "enqueue jobs/s",
            "cost",
            "drain jobs/s",
            "cost",
            "drain µs/job (this process)",
            "redis µs/job",
            "spans exported per run",
        ],
        &rows,
    );
    Ok(common::traced_verdicts(&runs, "drain", "drain"))
}

fn main() -> anyhow::Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke")
        || std::env::var("QUEUE_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0");
    // Other flags (cargo passes `--bench`) are ignored; plain words pick scenarios.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(unknown) = only.iter().find(|a| !SCENARIOS.contains(&a.as_str())) {
        bail!("unknown scenario {unknown:?}; choose from {SCENARIOS:?}");
    }
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // A `traces` child logs as production does (JSON, `BACKROOM_LOG`, default info) and exports
    // when told to.
    if common::is_traces_child() {
        let filter = std::env::var("BACKROOM_LOG").unwrap_or_else(|_| "info".into());
        common::init_telemetry(backroom::config::LogFormat::Json, &filter)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async move {
        // As in the server: the queue engine's Prometheus metrics are recorded (a per-job cost).
        backroom::queue::metrics::handle();
        let admin = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        // Pad the payload so that its JSON is about PAYLOAD_BYTES long.
        let bare = serde_json::to_vec(&Payload {
            pushed_us: now_us(),
            pad: String::new(),
            work_ms: 0,
            unrecorded: false,
        })?
        .len();
        let pad: String = "abcdefghijklmnopqrstuvwxyz0123456789"
            .chars()
            .cycle()
            .take(PAYLOAD_BYTES.saturating_sub(bare))
            .collect();
        let env = Env {
            namespace: format!("bench-{}", uuid::Uuid::new_v4().simple()),
            url,
            smoke,
            only,
            sizes: if smoke { Sizes::smoke() } else { Sizes::full() },
            admin,
            clk_tck: clock_ticks(),
            pad,
        };
        println!(
            "queue benchmark ({} mode): Redis {}, namespace {}, {} CPUs, payload {} B",
            if env.smoke { "smoke" } else { "full" },
            env.url,
            env.namespace,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            env.payload().payload.len()
        );
        let started = Instant::now();
        let run = async {
            if common::is_traces_child() {
                traces_child(&env).await.map(|()| vec![])
            } else {
                run_all(&env).await
            }
        };
        let outcome = tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        let deleted = env.delete_keys(None).await;
        match deleted {
            Ok(n) if n > 0 => eprintln!("cleanup: deleted {n} leftover keys"),
            Ok(_) => {}
            Err(e) => eprintln!("cleanup of {{{}:* failed: {e}", env.namespace),
        }
        let verdicts = outcome?;
        println!(
            "\n== summary ({} mode, {:.0} s) ==",
            if env.smoke { "smoke" } else { "full" },
            started.elapsed().as_secs_f64()
        );
        let headers = ["target", "measured", "verdict"];
        let mut table: Vec<Vec<String>> = vec![];
        for v in &verdicts {
            table.push(vec![
                v.target.clone(),
                v.measured.clone(),
                verdict(v.pass).to_string(),
            ]);
        }
        print_table_aligned(&headers, &table, 3);
        if env.smoke {
            println!("  (smoke sizes are too small to judge the targets; run the full mode)");
        }
        Ok(())
    });
    drop(runtime);
    backroom::telemetry::shutdown();
    outcome
}
