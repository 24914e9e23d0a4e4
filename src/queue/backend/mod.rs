//! The worker side: an apalis `Backend` over the Redis layout described in the module docs.
//!
//! apalis polls the backend for tasks and runs them under its concurrency limit; everything
//! that talks to Redis runs in three background tasks per worker, so a slow or failing Redis
//! call never blocks a running job and a job never blocks a heartbeat:
//! - the **fetcher** takes batches (`FETCH`) as room frees up in the prefetch buffer, and when
//!   nothing is waiting blocks in `XREAD` on the wake-up stream, on a connection of its own;
//! - the **acker** records outcomes (`COMPLETE`) in batches of whatever finished meanwhile, and
//!   retries a batch until Redis takes it (outcomes are never dropped);
//! - the **keeper** refreshes the leases of every held job (`HEARTBEAT`), takes over expired
//!   leases of dead workers (`RECLAIM`), promotes due scheduled and retrying jobs (`PROMOTE`) and
//!   trims retention.
//!
//! The [`AckLayer`] wraps each job: it enforces the timeout, turns a panic into a dead job, sorts
//! the handler's [`JobError`] into retry/failed/dead, and hands the outcome to the acker.

mod ack;
mod fetch;
mod lease;

pub use ack::AckLayer;
use ack::ack_loop;
use fetch::fetch_loop;
use lease::keep_loop;

use super::client::{GROUP, int, string};
use super::job::{JobError, JobMeta};
use super::keys::QueueKeys;
use super::{QueueName, Queues, metrics, scripts};
use crate::redis_conn::RedisConn;
use apalis_core::backend::{Backend, BackendConfig, finalize::Ephemeral};
use apalis_core::error::BoxDynError;
use apalis_core::layers::{Layer, Service};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use futures::FutureExt;
use futures::future::BoxFuture;
use rand::Rng;
use redis::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How one worker process consumes one queue.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queue: QueueName,
    /// Jobs running at once (apalis' concurrency limit).
    pub concurrency: usize,
    /// Jobs fetched ahead and waiting locally (their leases are kept fresh too).
    pub prefetch: usize,
    /// Most jobs taken per fetch call.
    pub batch: usize,
    /// A job running longer fails with a retryable timeout error.
    pub job_timeout: Duration,
    /// Longest single blocking wait for new jobs (the wait ends as soon as a job arrives).
    pub block: Duration,
    /// How often due scheduled and retrying jobs are promoted.
    pub promote_every: Duration,
    /// Told of each job's final outcome before it is recorded (see [`OutcomeHook`]).
    pub on_outcome: Option<Hook>,
    /// Whether this worker tells the jobs waiting on a finished job right after recording its
    /// outcome (true). False leaves it to queue upkeep's repair, a few seconds later: what a
    /// process killed between the two leaves behind (the fault tests use it to stand there).
    pub release_children: bool,
}

/// Told of every job that reached a final outcome (`succeeded`, `failed` or `dead`, with the
/// result or the error), before the outcome is recorded in Redis. A worker that dies in between
/// runs the job again and tells again, so a hook must be idempotent per job id and attempt. It
/// handles its own failures: nothing it does changes the job's outcome.
pub trait OutcomeHook: Send + Sync + 'static {
    fn finished<'a>(
        &'a self,
        meta: &'a JobMeta,
        status: &'static str,
        detail: &'a str,
    ) -> BoxFuture<'a, ()>;
}

/// An [`OutcomeHook`] in the options.
#[derive(Clone)]
pub struct Hook(pub Arc<dyn OutcomeHook>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutcomeHook")
    }
}

impl WorkerOptions {
    pub fn new(queue: QueueName) -> Self {
        Self {
            queue,
            concurrency: 32,
            prefetch: 256,
            batch: 256,
            job_timeout: Duration::from_secs(300),
            block: Duration::from_secs(2),
            promote_every: Duration::from_millis(100),
            on_outcome: None,
            release_children: true,
        }
    }
}

/// A job as a script returned it (9 fields per job).
struct RawJob {
    entry: String,
    id: String,
    payload: Vec<u8>,
    attempts: u32,
    max_attempts: u32,
    kind: String,
    tenant: String,
    created_at_ms: i64,
    trace: String,
}

fn raw_jobs(values: &[Value]) -> Vec<RawJob> {
    values
        .chunks_exact(9)
        .filter_map(|v| {
            Some(RawJob {
                entry: string(&v[0])?,
                id: string(&v[1])?,
                payload: match &v[2] {
                    Value::BulkString(b) => b.clone(),
                    other => string(other).unwrap_or_default().into_bytes(),
                },
                attempts: int(&v[3])? as u32,
                max_attempts: int(&v[4])? as u32,
                kind: string(&v[5]).unwrap_or_default(),
                tenant: string(&v[6]).unwrap_or_default(),
                created_at_ms: int(&v[7]).unwrap_or(0),
                trace: string(&v[8]).unwrap_or_default(),
            })
        })
        .collect()
}

/// What happened to a job, as the acker records it.
#[derive(Debug)]
struct Outcome {
    id: String,
    entry: String,
    /// `succeeded`, `retry`, `failed` or `dead`.
    kind: &'static str,
    /// The result (JSON) or the error text.
    data: String,
    retry_at_ms: i64,
}

enum AckMsg {
    Outcome(Outcome),
    Flush(oneshot::Sender<()>),
}

/// State shared by a worker's background tasks and its shutdown handle.
struct Shared {
    queues: Queues,
    keys: QueueKeys,
    queue: QueueName,
    consumer: String,
    options: WorkerOptions,
    /// Jobs this worker holds (fetched, running or awaiting their ack): id → stream entry.
    held: Arc<Mutex<HashMap<String, String>>>,
    /// When the last heartbeat that refreshed every held job's lease began (ms, the clock's).
    renewed_ms: Arc<AtomicI64>,
    started_at_ms: i64,
    pace: Pace,
}

/// How fast this worker finishes jobs, which bounds how many it holds: no more than it finishes
/// in a quarter of a lease, never fewer than it runs at once, never more than it runs plus its
/// prefetch. A worker that dies or freezes strands at most that much until its lease ends (a
/// stock worker used to hold 1,536 jobs whatever its pace); the rest stays in the queue for the
/// other workers. The pace is measured over windows of a second in which the worker finished
/// something, or held jobs and finished nothing (then it is zero); idle windows keep the last
/// figure. Until the first measurement the bound is the configured one.
struct Pace {
    finished: std::sync::atomic::AtomicU64,
    /// (window start, finished then, jobs per second measured so far).
    window: Mutex<(Instant, u64, Option<f64>)>,
    /// Signalled when held jobs are let go, for a fetcher waiting for room.
    released: tokio::sync::Notify,
}

impl Pace {
    fn new() -> Self {
        Pace {
            finished: Default::default(),
            window: Mutex::new((Instant::now(), 0, None)),
            released: tokio::sync::Notify::new(),
        }
    }

    /// Jobs a second, refreshed when a window has passed; `held` is what the worker holds now.
    fn per_second(&self, held: usize) -> Option<f64> {
        let mut window = self.window.lock().unwrap();
        let (started, finished_then, rate) = *window;
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed < 1.0 {
            return rate;
        }
        let finished = self.finished.load(Ordering::Relaxed);
        let measured = (finished - finished_then) as f64 / elapsed;
        let rate = if measured > 0.0 || held > 0 {
            Some(rate.map_or(measured, |r| (r + measured) / 2.0))
        } else {
            rate
        };
        *window = (Instant::now(), finished, rate);
        rate
    }
}

/// A worker's hold on its jobs, as a job's [`JobMeta`] carries it: the fencing check of
/// [`JobMeta::still_owned`]. A job this worker holds is its own while the last heartbeat that
/// renewed every held job's lease is recent (under half a lease ago); after longer (the worker
/// was frozen, or Redis was out of reach) its job record in Redis says whose it is.
#[derive(Clone)]
pub(crate) struct Lease {
    queues: Queues,
    keys: QueueKeys,
    consumer: Arc<str>,
    held: Arc<Mutex<HashMap<String, String>>>,
    renewed_ms: Arc<AtomicI64>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// This worker process's name for records (see [`lease::process_name`]).
    pub(crate) fn process_name(&self) -> String {
        lease::process_name(&self.consumer)
    }

    /// Whether the process `name` (a [`Lease::process_name`]) is known to be gone.
    pub(crate) fn process_is_gone(&self, name: &str) -> bool {
        lease::process_is_gone(name, &self.consumer)
    }

    pub(crate) async fn still_owned(&self, id: &str, entry: &str) -> bool {
        // A heartbeat that found the job another's has let it go.
        if !self.held.lock().unwrap().contains_key(id) {
            return false;
        }
        let settings = self.queues.settings();
        let since = settings.clock.now_ms() - self.renewed_ms.load(Ordering::Relaxed);
        if since < (settings.lease / 2).as_millis() as i64 {
            return true;
        }
        let owner: redis::RedisResult<(Option<String>, Option<String>)> = async {
            let mut conn = self.queues.redis().conn().await?;
            redis::cmd("HMGET")
                .arg(self.keys.job(id))
                .arg("worker")
                .arg("entry")
                .query_async(&mut conn)
                .await
        }
        .await;
        match owner {
            Ok((worker, held_entry)) => {
                let owned = worker.as_deref() == Some(&*self.consumer)
                    && held_entry.as_deref() == Some(entry);
                if !owned {
                    self.held.lock().unwrap().remove(id);
                }
                owned
            }
            Err(_) => true,
        }
    }
}

impl Shared {
    fn hold(&self, id: &str, entry: &str) {
        self.held
            .lock()
            .unwrap()
            .insert(id.to_string(), entry.to_string());
    }

    fn release_ids(&self, ids: impl IntoIterator<Item = String>) {
        let mut held = self.held.lock().unwrap();
        for id in ids {
            held.remove(&id);
        }
        self.pace.released.notify_one();
    }

    /// Counts jobs whose outcome is recorded, for the pace.
    fn finished(&self, count: usize) {
        self.pace
            .finished
            .fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Most jobs this worker may hold now (see [`Pace`]).
    fn hold_limit(&self) -> usize {
        let held = self.held.lock().unwrap().len();
        let (running, most) = (
            self.options.concurrency.max(1),
            self.options.concurrency + self.options.prefetch,
        );
        let quarter_lease = self.queues.settings().lease.as_secs_f64() / 4.0;
        match self.pace.per_second(held) {
            Some(rate) => {
                ((rate * quarter_lease).ceil() as usize).clamp(running, most.max(running))
            }
            None => most,
        }
    }

    /// How many more jobs to take now: the room in the prefetch buffer (`buffer_room`), within
    /// [`Shared::hold_limit`].
    fn room(&self, buffer_room: usize) -> usize {
        let held = self.held.lock().unwrap().len();
        buffer_room.min(self.hold_limit().saturating_sub(held))
    }

    fn lease(&self) -> Lease {
        Lease {
            queues: self.queues.clone(),
            keys: self.keys.clone(),
            consumer: self.consumer.as_str().into(),
            held: self.held.clone(),
            renewed_ms: self.renewed_ms.clone(),
        }
    }

    fn meta(&self, raw: &RawJob) -> JobMeta {
        JobMeta {
            id: raw.id.clone(),
            queue: self.queue.to_string(),
            kind: raw.kind.clone(),
            tenant: uuid::Uuid::parse_str(&raw.tenant).ok(),
            attempt: raw.attempts,
            max_attempts: raw.max_attempts,
            created_at_ms: raw.created_at_ms,
            trace: Some(raw.trace.clone()).filter(|t| !t.is_empty()),
            entry: raw.entry.clone(),
            lease: Some(self.lease()),
        }
    }

    async fn conn(&self) -> redis::RedisResult<RedisConn> {
        self.queues.redis().conn().await
    }
}

/// Backs off after a Redis error: 50 ms doubling to 5 s; logs the first error of a streak.
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn new() -> Self {
        Self { failures: 0 }
    }

    fn ok(&mut self) {
        if self.failures > 0 {
            tracing::info!("redis is answering again");
        }
        self.failures = 0;
    }

    fn delay(&mut self, what: &str, e: &redis::RedisError) -> Duration {
        if self.failures == 0 {
            tracing::warn!(error = %e, "{what} failed; retrying with backoff");
        }
        self.failures += 1;
        Duration::from_millis((50u64 << self.failures.min(7)).min(5_000))
    }
}

/// Decodes a fetched job into an apalis task, or dead-letters it when its payload does not
/// decode (a poison job never reaches a handler and never stops the worker).
fn into_task<Args: DeserializeOwned>(
    shared: &Shared,
    acks: &mpsc::UnboundedSender<AckMsg>,
    raw: RawJob,
) -> Option<Task<Args>> {
    shared.hold(&raw.id, &raw.entry);
    match serde_json::from_slice::<Args>(&raw.payload) {
        Ok(args) => {
            let meta = shared.meta(&raw);
            Some(
                TaskBuilder::new(args)
                    .task_id(TaskId::from_string(raw.id))
                    .data(meta)
                    .build(),
            )
        }
        Err(e) => {
            tracing::warn!(job_id = %raw.id, error = %e, "poison payload: dead-lettered");
            let meta = shared.meta(&raw);
            metrics::finished(shared.queue.as_str(), meta.tenant, "dead", Duration::ZERO);
            let outcome = Outcome {
                id: raw.id,
                entry: raw.entry,
                kind: "dead",
                data: format!("payload does not decode as a {} job: {e}", raw.kind),
                retry_at_ms: 0,
            };
            // Told like every other outcome: the hook first, then the record (see `AckLayer`).
            match shared.options.on_outcome.clone() {
                Some(hook) => {
                    let acks = acks.clone();
                    tokio::spawn(async move {
                        hook.0.finished(&meta, outcome.kind, &outcome.data).await;
                        let _ = acks.send(AckMsg::Outcome(outcome));
                    });
                }
                None => {
                    let _ = acks.send(AckMsg::Outcome(outcome));
                }
            }
            None
        }
    }
}

/// An apalis backend for one queue. Build a worker with
/// `WorkerBuilder::new(backend.consumer()).backend(backend).concurrency(n).build(handler)`.
pub struct RedisBackend<Args> {
    shared: Arc<Shared>,
    jobs_rx: mpsc::Receiver<Task<Args>>,
    jobs_tx: Option<mpsc::Sender<Task<Args>>>,
    acks_tx: mpsc::UnboundedSender<AckMsg>,
    acks_rx: Option<mpsc::UnboundedReceiver<AckMsg>>,
    stop: watch::Sender<bool>,
    /// The fetcher and the keeper.
    tasks: Vec<JoinHandle<()>>,
    acker: Option<JoinHandle<()>>,
    closing: Option<BoxFuture<'static, ()>>,
    _args: PhantomData<fn() -> Args>,
}

/// Lets the process that runs a worker hand its jobs back when a shutdown deadline passes.
#[derive(Clone)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
}

impl WorkerHandle {
    /// Returns every job this worker still holds to the queue (for a shutdown that cannot wait
    /// any longer); returns how many were handed back.
    pub async fn hand_back_all(&self) -> redis::RedisResult<u64> {
        let held: Vec<(String, String)> = self
            .shared
            .held
            .lock()
            .unwrap()
            .iter()
            .map(|(id, entry)| (id.clone(), entry.clone()))
            .collect();
        release(&self.shared, &held).await
    }

    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }

    /// How many jobs the worker holds right now.
    pub fn held(&self) -> usize {
        self.shared.held.lock().unwrap().len()
    }
}

impl<Args> RedisBackend<Args>
where
    Args: DeserializeOwned + Send + 'static,
{
    pub fn new(queues: Queues, options: WorkerOptions) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let consumer = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (jobs_tx, jobs_rx) = mpsc::channel(options.prefetch.max(1));
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let started_at_ms = queues.settings().clock.now_ms();
        let shared = Arc::new(Shared {
            keys: queues.keys(&options.queue),
            queue: options.queue.clone(),
            queues,
            consumer,
            options,
            held: Arc::new(Mutex::new(HashMap::new())),
            renewed_ms: Arc::new(AtomicI64::new(started_at_ms)),
            started_at_ms,
            pace: Pace::new(),
        });
        Self {
            shared,
            jobs_rx,
            jobs_tx: Some(jobs_tx),
            acks_tx,
            acks_rx: Some(acks_rx),
            stop: watch::channel(false).0,
            tasks: vec![],
            acker: None,
            closing: None,
            _args: PhantomData,
        }
    }

    /// This worker's unique identity (also its consumer name in Redis).
    pub fn consumer(&self) -> String {
        self.shared.consumer.clone()
    }

    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            shared: self.shared.clone(),
        }
    }

    fn start(&mut self) {
        let (Some(jobs_tx), Some(acks_rx)) = (self.jobs_tx.take(), self.acks_rx.take()) else {
            return;
        };
        tracing::info!(queue = %self.shared.queue, worker = %self.shared.consumer, "worker starting");
        self.tasks.push(tokio::spawn(fetch_loop(
            self.shared.clone(),
            jobs_tx.clone(),
            self.acks_tx.clone(),
            self.stop.subscribe(),
        )));
        self.tasks.push(tokio::spawn(keep_loop(
            self.shared.clone(),
            jobs_tx,
            self.acks_tx.clone(),
            self.stop.subscribe(),
        )));
        self.acker = Some(tokio::spawn(ack_loop(self.shared.clone(), acks_rx)));
    }
}

#[derive(Debug, thiserror::Error)]
#[error("queue backend: {0}")]
pub struct BackendError(String);

impl<Args> Backend for RedisBackend<Args>
where
    Args: DeserializeOwned + Send + 'static,
{
    type Task = Task<Args>;
    type Error = BackendError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.start();
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.start();
        match self.jobs_rx.poll_recv(cx) {
            Poll::Ready(Some(task)) => Poll::Ready(Some(Ok(task))),
            // The fetcher only stops on shutdown; until then there is always more to wait for.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            let _ = self.stop.send(true);
            let shared = self.shared.clone();
            let fetch_and_keep = std::mem::take(&mut self.tasks);
            let acker = self.acker.take();
            let mut jobs_rx = std::mem::replace(&mut self.jobs_rx, mpsc::channel(1).1);
            let acks = self.acks_tx.clone();
            self.closing = Some(
                async move {
                    // No more fetching: jobs still in the prefetch buffer are dropped here and
                    // handed back below with everything else this worker holds.
                    jobs_rx.close();
                    while jobs_rx.recv().await.is_some() {}
                    for t in fetch_and_keep {
                        let _ = t.await;
                    }
                    // Every finished job's outcome reaches Redis before the worker exits...
                    let (done_tx, done_rx) = oneshot::channel();
                    if acks.send(AckMsg::Flush(done_tx)).is_ok() {
                        let _ = done_rx.await;
                    }
                    if let Some(t) = acker {
                        t.abort();
                    }
                    // ...and what it held without finishing goes back to the queue at once.
                    let handle = WorkerHandle { shared: shared.clone() };
                    match handle.hand_back_all().await {
                        Ok(n) if n > 0 => tracing::info!(count = n, "handed unstarted jobs back"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not hand jobs back; their leases will expire"),
                    }
                    deregister(&shared).await;
                    tracing::info!(queue = %shared.queue, worker = %shared.consumer, "worker stopped");
                }
                .boxed(),
            );
        }
        match self.closing.as_mut().expect("set above").poll_unpin(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Args> BackendConfig for RedisBackend<Args> {
    type Args = Args;
    type Id = String;
    type Kind = Ephemeral;
    type Config = WorkerOptions;
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        &self.shared.options
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        AckLayer {
            acks: self.acks_tx.clone(),
            queue: self.shared.queue.to_string().into(),
            timeout: self.shared.options.job_timeout,
            retry_base: self.shared.queues.settings().retry_base,
            retry_cap: self.shared.queues.settings().retry_cap,
            clock: self.shared.queues.settings().clock.clone(),
            hook: self.shared.options.on_outcome.clone(),
        }
    }
}

/// Hands jobs back to the queue unchanged (used for unstarted jobs at shutdown).
async fn release(shared: &Shared, jobs: &[(String, String)]) -> redis::RedisResult<u64> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let mut conn = shared.conn().await?;
    let mut released = 0;
    for chunk in jobs.chunks(500) {
        let mut call = scripts::RELEASE.prepare_invoke();
        call.key(shared.keys.stream())
            .arg(shared.keys.prefix())
            .arg(GROUP)
            .arg(&shared.consumer);
        for (id, entry) in chunk {
            call.arg(id).arg(entry);
        }
        released += call.invoke_async::<u64>(&mut conn).await?;
    }
    shared.release_ids(jobs.iter().map(|(id, _)| id.clone()));
    Ok(released)
}

/// Removes the worker from the queue's live list.
async fn deregister(shared: &Shared) {
    if let Ok(mut conn) = shared.conn().await {
        let _: redis::RedisResult<()> = redis::pipe()
            .cmd("ZREM")
            .arg(shared.keys.workers())
            .arg(&shared.consumer)
            .cmd("DEL")
            .arg(shared.keys.worker(&shared.consumer))
            .query_async(&mut conn)
            .await;
    }
}
