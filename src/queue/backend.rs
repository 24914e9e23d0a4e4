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

use super::client::{GROUP, int, string};
use super::job::{JobError, JobMeta};
use super::keys::QueueKeys;
use super::{QueueName, Queues, metrics, now_ms, scripts};
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
        }
    }
}

/// A job as a script returned it (8 fields per job).
struct RawJob {
    entry: String,
    id: String,
    payload: Vec<u8>,
    attempts: u32,
    max_attempts: u32,
    kind: String,
    tenant: String,
    created_at_ms: i64,
}

fn raw_jobs(values: &[Value]) -> Vec<RawJob> {
    values
        .chunks_exact(8)
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
    held: Mutex<HashMap<String, String>>,
    started_at_ms: i64,
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
            entry: raw.entry.clone(),
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
            metrics::finished(shared.queue.as_str(), "dead", Duration::ZERO);
            let _ = acks.send(AckMsg::Outcome(Outcome {
                id: raw.id,
                entry: raw.entry,
                kind: "dead",
                data: format!("payload does not decode as a {} job: {e}", raw.kind),
                retry_at_ms: 0,
            }));
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
        let shared = Arc::new(Shared {
            keys: queues.keys(&options.queue),
            queue: options.queue.clone(),
            queues,
            consumer,
            options,
            held: Mutex::new(HashMap::new()),
            started_at_ms: now_ms(),
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

enum Fetched {
    Jobs(Vec<RawJob>),
    /// Nothing waiting: the last id of the wake-up stream, to block on.
    Empty {
        wake: String,
    },
    Paused,
}

async fn fetch_once(shared: &Shared, count: usize) -> redis::RedisResult<Fetched> {
    let mut conn = shared.conn().await?;
    let reply: Vec<Value> = scripts::FETCH
        .key(shared.keys.stream())
        .arg(shared.keys.prefix())
        .arg(GROUP)
        .arg(&shared.consumer)
        .arg(count)
        .arg(now_ms())
        .arg(shared.queues.settings().dead_retention.as_millis() as u64)
        .invoke_async(&mut conn)
        .await?;
    Ok(match reply.first().and_then(string).as_deref() {
        Some("paused") => Fetched::Paused,
        Some("empty") => Fetched::Empty {
            wake: reply
                .get(1)
                .and_then(string)
                .unwrap_or_else(|| "0-0".into()),
        },
        _ => Fetched::Jobs(raw_jobs(&reply[1..])),
    })
}

async fn fetch_loop<Args: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Task<Args>>,
    acks: mpsc::UnboundedSender<AckMsg>,
    mut stop: watch::Receiver<bool>,
) {
    if let Err(e) = shared.queues.ensure_group(&shared.queue).await {
        tracing::warn!(error = %e, "could not create the consumer group yet");
    }
    let mut backoff = Backoff::new();
    let mut blocking: Option<RedisConn> = None;
    loop {
        // Wait for room in the prefetch buffer, then ask for as many jobs as fit.
        let room = tokio::select! {
            permit = jobs.reserve() => match permit {
                Ok(permit) => { drop(permit); jobs.capacity() }
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let count = room.clamp(1, shared.options.batch);
        // Not cancelled by `stop`: a fetch that ran in Redis must reach `held`, or its jobs
        // would sit leased to a stopped worker until the lease expires.
        match fetch_once(&shared, count).await {
            Ok(Fetched::Jobs(raws)) => {
                backoff.ok();
                for raw in raws {
                    if let Some(task) = into_task(&shared, &acks, raw)
                        && jobs.send(task).await.is_err()
                    {
                        return;
                    }
                }
            }
            Ok(Fetched::Paused) => {
                backoff.ok();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => return,
                }
            }
            Ok(Fetched::Empty { wake }) => {
                backoff.ok();
                // Block until a job is made ready: every push, promotion, retry or hand-back
                // adds to the wake-up stream.
                if blocking.is_none() {
                    match shared.queues.redis().dedicated(shared.options.block).await {
                        Ok(c) => blocking = Some(c),
                        Err(e) => {
                            let wait = backoff.delay("opening a blocking connection", &e);
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                    }
                }
                let conn = blocking.as_mut().expect("opened above");
                let mut xread = redis::cmd("XREAD");
                xread
                    .arg("BLOCK")
                    .arg(shared.options.block.as_millis() as u64)
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(shared.keys.wake())
                    .arg(&wake);
                let wait = xread.query_async::<Value>(conn);
                tokio::select! {
                    r = wait => if let Err(e) = r {
                        blocking = None;
                        let wait = backoff.delay("waiting for jobs", &e);
                        tokio::time::sleep(wait).await;
                    },
                    _ = stop.changed() => return,
                }
            }
            Err(e) => {
                let wait = backoff.delay("fetching jobs", &e);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

async fn ack_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<AckMsg>) {
    let mut backoff = Backoff::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![];
        let mut flushes = vec![];
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                AckMsg::Outcome(o) => batch.push(o),
                AckMsg::Flush(tx) => flushes.push(tx),
            }
            if batch.len() < 1000 {
                next = rx.try_recv().ok();
            }
        }
        while !batch.is_empty() {
            match complete(&shared, &batch).await {
                Ok(()) => {
                    backoff.ok();
                    shared.release_ids(batch.drain(..).map(|o| o.id));
                }
                Err(e) => tokio::time::sleep(backoff.delay("recording outcomes", &e)).await,
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

async fn complete(shared: &Shared, batch: &[Outcome]) -> redis::RedisResult<()> {
    let settings = shared.queues.settings();
    let now = now_ms();
    let mut call = scripts::COMPLETE.prepare_invoke();
    call.key(shared.keys.stream())
        .arg(shared.keys.prefix())
        .arg(GROUP)
        .arg(&shared.consumer)
        .arg(now)
        .arg(settings.succeeded_retention.as_millis() as u64)
        .arg(settings.dead_retention.as_millis() as u64)
        .arg(now / 60_000)
        .arg(batch.len());
    for o in batch {
        call.arg(&o.id)
            .arg(&o.entry)
            .arg(o.kind)
            .arg(&o.data)
            .arg(o.retry_at_ms);
    }
    let mut conn = shared.conn().await?;
    call.invoke_async::<u64>(&mut conn).await.map(|_| ())
}

async fn keep_loop<Args: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Task<Args>>,
    acks: mpsc::UnboundedSender<AckMsg>,
    mut stop: watch::Receiver<bool>,
) {
    let lease = shared.queues.settings().lease;
    let mut heartbeat = tokio::time::interval(lease / 3);
    let mut reclaim = tokio::time::interval((lease / 2).max(Duration::from_millis(50)));
    let mut promote = tokio::time::interval(shared.options.promote_every);
    let mut trim = tokio::time::interval(Duration::from_secs(60));
    for t in [&mut heartbeat, &mut reclaim, &mut promote, &mut trim] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut cursor = "0-0".to_string();
    let mut backoff = Backoff::new();
    // Reclaiming and heartbeats need the consumer group; on a fresh queue the fetcher may not
    // have created it yet, so make sure of it first (without this the first upkeep warned
    // `NOGROUP`).
    while let Err(e) = shared.queues.ensure_group(&shared.queue).await {
        let wait = backoff.delay("creating the consumer group", &e);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
    backoff.ok();
    loop {
        let result = tokio::select! {
            _ = stop.changed() => return,
            _ = heartbeat.tick() => beat(&shared).await,
            _ = reclaim.tick() => reclaim_expired(&shared, &jobs, &acks, &mut cursor).await,
            _ = promote.tick() => shared.queues.promote_due(&shared.queue).await.map(|_| ()),
            _ = trim.tick() => shared.queues.trim(&shared.queue).await.map(|_| ()),
        };
        match result {
            Ok(()) => backoff.ok(),
            Err(e) => {
                let _ = backoff.delay("queue upkeep", &e);
            }
        }
    }
}

/// Refreshes the leases of every held job and records the worker's heartbeat.
async fn beat(shared: &Shared) -> redis::RedisResult<()> {
    let held: Vec<(String, String)> = shared
        .held
        .lock()
        .unwrap()
        .iter()
        .map(|(id, entry)| (id.clone(), entry.clone()))
        .collect();
    let lease = shared.queues.settings().lease;
    let info = serde_json::json!({
        "queue": shared.queue.as_str(),
        "pid": std::process::id(),
        "started_at": super::client::ms_to_time(shared.started_at_ms),
        "concurrency": shared.options.concurrency,
        "held": held.len(),
    })
    .to_string();
    let mut call = scripts::HEARTBEAT.prepare_invoke();
    call.key(shared.keys.stream())
        .arg(shared.keys.prefix())
        .arg(GROUP)
        .arg(&shared.consumer)
        .arg(now_ms())
        .arg((lease * 3).as_millis() as u64)
        .arg(info);
    for (id, entry) in &held {
        call.arg(id).arg(entry);
    }
    let mut conn = shared.conn().await?;
    let lost: Vec<String> = call.invoke_async(&mut conn).await?;
    if !lost.is_empty() {
        tracing::warn!(
            count = lost.len(),
            "jobs were reclaimed by another worker after this one stalled past its lease"
        );
        shared.release_ids(lost);
    }
    Ok(())
}

/// Takes over jobs whose lease expired, as many as the prefetch buffer has room for.
async fn reclaim_expired<Args: DeserializeOwned + Send + 'static>(
    shared: &Shared,
    jobs: &mpsc::Sender<Task<Args>>,
    acks: &mpsc::UnboundedSender<AckMsg>,
    cursor: &mut String,
) -> redis::RedisResult<()> {
    let room = jobs.capacity().min(100);
    if room == 0 {
        return Ok(());
    }
    let settings = shared.queues.settings();
    let mut conn = shared.conn().await?;
    let reply: Vec<Value> = scripts::RECLAIM
        .key(shared.keys.stream())
        .arg(shared.keys.prefix())
        .arg(GROUP)
        .arg(&shared.consumer)
        .arg(now_ms())
        .arg(settings.lease.as_millis() as u64)
        .arg(room)
        .arg(settings.dead_retention.as_millis() as u64)
        .arg(cursor.as_str())
        .arg((settings.lease * 10).as_millis() as u64)
        .invoke_async(&mut conn)
        .await?;
    *cursor = reply
        .first()
        .and_then(string)
        .unwrap_or_else(|| "0-0".into());
    let raws = raw_jobs(&reply[1.min(reply.len())..]);
    if !raws.is_empty() {
        tracing::info!(
            count = raws.len(),
            "reclaimed jobs whose worker stopped heartbeating"
        );
    }
    for raw in raws {
        if let Some(task) = into_task(shared, acks, raw) {
            // Room was checked above and only the fetcher competes for it; if it filled the
            // buffer meanwhile, the job stays held (and leased) until there is room.
            if jobs.send(task).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// How a job's run ended.
enum Ran<R> {
    TimedOut,
    Panicked(Box<dyn std::any::Any + Send>),
    Finished(Result<R, BoxDynError>),
}

/// The backend's middleware: runs each job under its timeout and panic guard, sorts the result
/// and hands the outcome to the acker.
#[derive(Clone)]
pub struct AckLayer {
    acks: mpsc::UnboundedSender<AckMsg>,
    queue: Arc<str>,
    timeout: Duration,
    retry_base: Duration,
    retry_cap: Duration,
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    layer: AckLayer,
}

impl AckLayer {
    /// Exponential backoff with full jitter: a random delay in [d/2, d], d = base·2^(attempt-1).
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let d = exp.min(self.retry_cap).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(d / 2..=d.max(1)))
    }

    fn outcome<R: Serialize>(&self, meta: &JobMeta, ran: Ran<R>) -> Outcome {
        let (kind, data, retry_after) = match ran {
            Ran::TimedOut => ("retry", format!("timed out after {:?}", self.timeout), None),
            Ran::Panicked(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "non-string panic".into());
                ("dead", format!("panicked: {message}"), None)
            }
            Ran::Finished(Ok(value)) => (
                "succeeded",
                serde_json::to_string(&value).unwrap_or_else(|_| "null".into()),
                None,
            ),
            Ran::Finished(Err(error)) => match error.downcast_ref::<JobError>() {
                Some(JobError::Permanent { message }) => ("failed", message.clone(), None),
                Some(JobError::Retry { message, after }) => ("retry", message.clone(), *after),
                None => ("retry", error.to_string(), None),
            },
        };
        let (kind, data) = if kind == "retry" && meta.is_last_attempt() {
            (
                "dead",
                format!("{data} (attempt {} of {})", meta.attempt, meta.max_attempts),
            )
        } else {
            (kind, data)
        };
        let data = if kind == "succeeded" {
            capped_result(data)
        } else {
            capped_error(data)
        };
        let retry_at_ms = if kind == "retry" {
            let wait = retry_after.unwrap_or_else(|| self.backoff(meta.attempt));
            now_ms() + wait.as_millis() as i64
        } else {
            0
        };
        Outcome {
            id: meta.id.clone(),
            entry: meta.entry.clone(),
            kind,
            data,
            retry_at_ms,
        }
    }
}

impl<S, Args> Service<Task<Args>> for AckService<S>
where
    S: Service<Task<Args>>,
    S::Error: Into<BoxDynError>,
    S::Future: Send + 'static,
    S::Response: Serialize + Send + 'static,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<(), BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let meta = task.data().get::<JobMeta>().cloned();
        let running = self.inner.call(task);
        let layer = self.layer.clone();
        async move {
            let Some(meta) = meta else {
                return Err("a task without job metadata reached the queue backend".into());
            };
            let waited = Duration::from_millis((now_ms() - meta.created_at_ms).max(0) as u64);
            metrics::started(&layer.queue, waited);
            let span = tracing::info_span!("job", queue = %layer.queue, job_id = %meta.id,
                kind = %meta.kind, attempt = meta.attempt);
            let started = Instant::now();
            // Each job runs in a task of its own: jobs use every core, a panic is caught as the
            // task's result, and a job past its timeout is aborted rather than left running; its
            // blocking work is told to stop and waited for (`cancel`) before the retry is recorded.
            let cancel = super::cancel::Cancel::default();
            let job = tokio::spawn(tracing::Instrument::instrument(
                cancel
                    .clone()
                    .scope(async move { running.await.map_err(Into::into) }),
                span.clone(),
            ));
            let abort = job.abort_handle();
            let ran = match tokio::time::timeout(layer.timeout, job).await {
                Err(_) => {
                    abort.abort();
                    cancel.cancel();
                    if !cancel.settled(super::cancel::SETTLE).await {
                        span.in_scope(|| tracing::warn!(settle = ?super::cancel::SETTLE,
                            "a timed-out job's blocking work did not stop in time"));
                    }
                    Ran::TimedOut
                }
                Ok(Err(join)) if join.is_panic() => Ran::Panicked(join.into_panic()),
                Ok(Err(join)) => Ran::Finished(Err(Box::new(join))),
                Ok(Ok(result)) => Ran::Finished(result),
            };
            let outcome = layer.outcome(&meta, ran);
            metrics::finished(&layer.queue, outcome.kind, started.elapsed());
            if outcome.kind != "succeeded" {
                span.in_scope(|| tracing::warn!(outcome = outcome.kind, error = %outcome.data, "job did not succeed"));
            }
            layer
                .acks
                .send(AckMsg::Outcome(outcome))
                .map_err(|_| "the acker stopped".into())
        }
        .boxed()
    }
}

/// The most bytes of error text kept per attempt. An error quotes what caused it (a CSV header,
/// a server's reply) and is stored twice (last error and history) for days in the Redis that
/// every tenant shares, so one tenant's input must not decide its size.
pub const MAX_ERROR_BYTES: usize = 4096;
/// The most bytes of a job's result kept in Redis; a larger result is replaced by a note (the
/// kinds with big results, such as an import report, keep the whole of it in Postgres).
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// The start of `text`, at most `max` bytes, cut at a character boundary.
fn prefix_of(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn capped_error(error: String) -> String {
    if error.len() <= MAX_ERROR_BYTES {
        return error;
    }
    let note = format!(" … (cut: {} bytes in all)", error.len());
    format!("{}{note}", prefix_of(&error, MAX_ERROR_BYTES - note.len()))
}

fn capped_result(result: String) -> String {
    if result.len() <= MAX_RESULT_BYTES {
        return result;
    }
    serde_json::json!({
        "truncated": true,
        "bytes": result.len(),
        "note": format!("the result was larger than {MAX_RESULT_BYTES} bytes and is not kept in the queue"),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_results_are_capped_with_a_note() {
        assert_eq!(capped_error("short".into()), "short");
        let long = "é".repeat(10_000);
        let cut = capped_error(long.clone());
        assert!(cut.len() <= MAX_ERROR_BYTES, "{}", cut.len());
        assert!(cut.ends_with(&format!("(cut: {} bytes in all)", long.len())));
        assert!(cut.starts_with("éé"));

        assert_eq!(capped_result("{\"a\":1}".into()), "{\"a\":1}");
        let big = serde_json::to_string(&vec!["x"; 100_000]).unwrap();
        let note: serde_json::Value = serde_json::from_str(&capped_result(big.clone())).unwrap();
        assert_eq!(note["truncated"], true);
        assert_eq!(note["bytes"], big.len());
    }
}
