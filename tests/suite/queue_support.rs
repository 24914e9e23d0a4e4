//! Harness for the queue engine's tests: a private Redis namespace per test, a probe job whose
//! behaviour the payload chooses, in-process workers, and worker *processes* (this test binary
//! re-run as a child) that tests can SIGKILL.

use crate::helpers::redis_url;
use apalis::prelude::*;
use backroom::queue::{
    JobError, JobMeta, JobRecord, JobStatus, NewJob, QueueName, QueueSettings, Queues,
    RedisBackend, WorkerOptions,
};
use backroom::redis_conn::{RedisConn, RedisHandle};
use serde::{Deserialize, Serialize};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

pub const QUEUE: &str = "probe";

/// What a probe job does when it runs. Every run is counted in Redis (`runs` hash, field = n),
/// and every run that completes in `done` (so tests can tell started from finished).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Probe {
    pub n: u64,
    #[serde(default)]
    pub sleep_ms: u64,
    /// "retry", "permanent", "panic", "hang", "spin" (blocking work that runs until the job is
    /// cancelled, counted by [`spinning`]), "while-broken" (a retryable failure while the
    /// namespace's `broken` key exists) or empty.
    #[serde(default)]
    pub fail: String,
    /// Fail only on the first `fail_times` attempts (0 = always).
    #[serde(default)]
    pub fail_times: u32,
}

impl Probe {
    pub fn new(n: u64) -> Self {
        Probe {
            n,
            ..Default::default()
        }
    }
}

/// A queue in a namespace of its own, with short timings for tests.
#[derive(Clone)]
pub struct TestQueue {
    pub queues: Queues,
    pub queue: QueueName,
    pub namespace: String,
    pub redis_url: String,
}

pub fn test_settings() -> QueueSettings {
    QueueSettings {
        lease: Duration::from_millis(1500),
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_millis(400),
        ..QueueSettings::default()
    }
}

impl TestQueue {
    pub fn new() -> Self {
        Self::with(test_settings(), &redis_url())
    }

    /// Another queue of the same namespace (the probe counts are shared).
    pub fn sibling(&self, queue: &str) -> Self {
        TestQueue {
            queue: QueueName::custom(queue),
            ..self.clone()
        }
    }

    pub fn with(settings: QueueSettings, url: &str) -> Self {
        let namespace = format!("test-{}", Uuid::new_v4().simple());
        let redis = RedisHandle::open(url).expect("redis url");
        TestQueue {
            queues: Queues::new(redis, &namespace, settings),
            queue: QueueName::custom(QUEUE),
            namespace,
            redis_url: url.to_string(),
        }
    }

    pub async fn push_probes(&self, probes: impl IntoIterator<Item = Probe>) -> Vec<String> {
        let jobs: Vec<NewJob> = probes
            .into_iter()
            .map(|p| NewJob::new("probe", &p).max_attempts(3))
            .collect();
        self.push(jobs).await
    }

    pub async fn push(&self, jobs: Vec<NewJob>) -> Vec<String> {
        self.queues
            .push(&self.queue, jobs)
            .await
            .expect("push")
            .into_iter()
            .map(|p| p.id)
            .collect()
    }

    pub async fn job(&self, id: &str) -> JobRecord {
        self.queues.get(id).await.expect("get").expect("job exists")
    }

    pub fn options(&self) -> WorkerOptions {
        let mut o = WorkerOptions::new(self.queue.clone());
        o.block = Duration::from_millis(500);
        o.promote_every = Duration::from_millis(20);
        o.job_timeout = Duration::from_secs(5);
        o
    }

    /// A connection of the queue's own topology (single node or cluster).
    pub async fn redis(&self) -> RedisConn {
        self.queues.redis().conn().await.expect("redis answers")
    }

    /// How many times each probe ran / finished, by n.
    /// Makes probes with `fail: "while-broken"` fail (retryably) until called with `false`.
    pub async fn set_probes_broken(&self, broken: bool) {
        let mut conn = self.redis().await;
        let key = format!("{}:broken", self.namespace);
        let _: () = if broken {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .query_async(&mut conn)
                .await
                .unwrap()
        } else {
            redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap()
        };
    }

    pub async fn counts(&self, which: &str) -> std::collections::HashMap<u64, u64> {
        let mut conn = self.redis().await;
        redis::cmd("HGETALL")
            .arg(format!("{}:{which}", self.namespace))
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Waits until every id has `status`, or panics naming the stragglers.
    pub async fn wait_all(&self, ids: &[String], status: JobStatus, limit: Duration) {
        let mut pending: Vec<String> = ids.to_vec();
        let started = std::time::Instant::now();
        while !pending.is_empty() {
            let mut still = vec![];
            for id in pending {
                let done = self
                    .queues
                    .get(&id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|j| j.status == status);
                if !done {
                    still.push(id);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if started.elapsed() > limit {
                let sample = self.job(&pending[0]).await;
                panic!(
                    "{} of {} jobs are not {status:?} after {limit:?}; e.g. {} is {:?} ({:?})",
                    pending.len(),
                    ids.len(),
                    sample.id,
                    sample.status,
                    sample.last_error
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

static GAUGE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local now = redis.call('HINCRBY', ARGV[1] .. ':inflight', ARGV[2], ARGV[3])
if now > tonumber(redis.call('HGET', ARGV[1] .. ':most', ARGV[2]) or '0') then
  redis.call('HSET', ARGV[1] .. ':most', ARGV[2], now)
end
",
    )
});

/// The probe handler.
pub async fn run_probe(
    probe: Probe,
    meta: Data<JobMeta>,
    ns: Data<ProbeNamespace>,
) -> Result<u64, JobError> {
    let mut conn = ns.conn.clone();
    let _: () = redis::cmd("HINCRBY")
        .arg(format!("{}:runs", ns.namespace))
        .arg(probe.n)
        .arg(1)
        .query_async(&mut conn)
        .await?;
    // A tenant's jobs count how many of them run at each moment, and the most ever, across every
    // worker process (`inflight` and `most` hashes, by tenant). Jobs without a tenant skip it, so
    // the timing of the engine's other tests is as it was.
    let gauge = meta
        .tenant
        .filter(|_| probe.sleep_ms > 0)
        .map(|t| t.to_string());
    if let Some(tenant) = &gauge {
        let _: () = GAUGE
            .arg(&ns.namespace)
            .arg(tenant)
            .arg(1)
            .invoke_async(&mut conn)
            .await?;
    }
    if probe.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(probe.sleep_ms)).await;
    }
    if let Some(tenant) = &gauge {
        let _: () = GAUGE
            .arg(&ns.namespace)
            .arg(tenant)
            .arg(-1)
            .invoke_async(&mut conn)
            .await?;
    }
    let flagged: bool = redis::cmd("EXISTS")
        .arg(format!("{}:broken", ns.namespace))
        .query_async(&mut conn)
        .await?;
    if probe.fail == "while-broken" && flagged {
        return Err(JobError::retry("the probe's dependency is broken"));
    }
    let failing = probe.fail_times == 0 || meta.attempt <= probe.fail_times;
    if failing {
        match probe.fail.as_str() {
            "retry" => {
                return Err(JobError::retry(format!(
                    "transient failure of probe {}",
                    probe.n
                )));
            }
            "permanent" => return Err(JobError::permanent("probe refused for good")),
            "panic" => panic!("probe {} panicked on purpose", probe.n),
            "hang" => std::future::pending::<()>().await,
            "spin" => {
                let n = probe.n;
                let _ = backroom::queue::cancel::spawn_blocking(move |cancel| {
                    spin_gauge(n, |g| {
                        g.started += 1;
                        g.now += 1;
                        g.most = g.most.max(g.now);
                    });
                    while !cancel.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    spin_gauge(n, |g| g.now -= 1);
                })
                .await;
                return Err(JobError::retry("the spin was cancelled"));
            }
            _ => {}
        }
    }
    let _: () = redis::cmd("HINCRBY")
        .arg(format!("{}:done", ns.namespace))
        .arg(probe.n)
        .arg(1)
        .query_async(&mut conn)
        .await?;
    Ok(probe.n * 2)
}

/// Blocking spins of a probe in this process: started in all, running now, most at once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Spinning {
    pub started: u32,
    pub now: u32,
    pub most: u32,
}

static SPINNING: std::sync::Mutex<Option<std::collections::HashMap<u64, Spinning>>> =
    std::sync::Mutex::new(None);

fn spin_gauge(n: u64, change: impl FnOnce(&mut Spinning)) {
    let mut all = SPINNING.lock().unwrap();
    change(all.get_or_insert_default().entry(n).or_default());
}

/// How probe `n`'s blocking spins went in this process.
pub fn spinning(n: u64) -> Spinning {
    let mut all = SPINNING.lock().unwrap();
    all.get_or_insert_default()
        .get(&n)
        .copied()
        .unwrap_or_default()
}

#[derive(Clone)]
pub struct ProbeNamespace {
    pub namespace: String,
    pub conn: RedisConn,
}

/// An in-process worker; stops gracefully with [`RunningWorker::stop`].
pub struct RunningWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.join)
            .await
            .expect("worker stops within 20 s")
            .expect("worker task did not panic");
    }
}

pub async fn spawn_worker(tq: &TestQueue, options: WorkerOptions) -> RunningWorker {
    let backend: RedisBackend<Probe> = RedisBackend::new(tq.queues.clone(), options.clone());
    let ns = ProbeNamespace {
        namespace: tq.namespace.clone(),
        conn: tq.redis().await,
    };
    let worker = WorkerBuilder::new(backend.consumer())
        .backend(backend)
        .data(ns)
        .concurrency(options.concurrency)
        .build(run_probe);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(async move {
        worker
            .run_until(async move {
                let _ = rx.await;
                Ok::<(), std::io::Error>(())
            })
            .await
            .expect("worker runs without error");
    });
    RunningWorker {
        stop: Some(tx),
        join,
    }
}

const CHILD_ENV: &str = "BACKROOM_PROBE_CHILD";

/// A worker in a separate process (this test binary, running `child_worker_process`).
pub struct ChildWorker {
    child: Child,
}

impl ChildWorker {
    pub fn spawn(tq: &TestQueue, concurrency: usize, prefetch: usize) -> Self {
        Self::spawn_with(tq, concurrency, prefetch, true)
    }

    /// A worker process that leaves the jobs waiting on its finished jobs to queue upkeep (as a
    /// process killed right after recording an outcome does).
    pub fn spawn_not_releasing_children(tq: &TestQueue, concurrency: usize) -> Self {
        Self::spawn_with(tq, concurrency, concurrency, false)
    }

    fn spawn_with(tq: &TestQueue, concurrency: usize, prefetch: usize, release: bool) -> Self {
        let settings = tq.queues.settings();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "queue_support::child_worker_process",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .env("PROBE_REDIS_URL", &tq.redis_url)
            .env("PROBE_NAMESPACE", &tq.namespace)
            .env("PROBE_LEASE_MS", settings.lease.as_millis().to_string())
            .env("PROBE_CONCURRENCY", concurrency.to_string())
            .env("PROBE_PREFETCH", prefetch.to_string())
            .env("PROBE_RELEASE_CHILDREN", if release { "1" } else { "0" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child worker");
        ChildWorker { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL without reaping: the process stays a zombie (its `/proc` entry remains), as a
    /// worker on another machine looks from here, so only its leases tell it is gone.
    pub fn kill9_unreaped(&mut self) {
        let _ = self.child.kill();
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        crate::helpers::terminate(&mut self.child)
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Entry point of the child worker processes spawned by [`ChildWorker`]; does nothing when run
/// as an ordinary test.
#[test]
#[ignore = "entry point for worker processes that queue tests spawn and kill"]
fn child_worker_process() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let env = |k: &str| std::env::var(k).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let settings = QueueSettings {
            lease: Duration::from_millis(env("PROBE_LEASE_MS").parse().unwrap()),
            ..test_settings()
        };
        let url = env("PROBE_REDIS_URL");
        let tq = TestQueue {
            queues: Queues::new(
                RedisHandle::open(&url).unwrap(),
                &env("PROBE_NAMESPACE"),
                settings,
            ),
            queue: QueueName::custom(QUEUE),
            namespace: env("PROBE_NAMESPACE"),
            redis_url: url,
        };
        let mut options = tq.options();
        options.concurrency = env("PROBE_CONCURRENCY").parse().unwrap();
        options.prefetch = env("PROBE_PREFETCH").parse().unwrap();
        options.release_children = env("PROBE_RELEASE_CHILDREN") == "1";
        let worker = spawn_worker(&tq, options).await;
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        worker.stop().await;
    });
}
