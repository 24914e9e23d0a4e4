//! The acker and the [`AckLayer`]: the layer runs each job under its timeout, turns a panic into
//! a dead job and sorts the handler's `JobError` into retry/failed/dead; the acker records the
//! outcomes (`COMPLETE`) in batches and retries a batch until Redis takes it.

use super::*;
use crate::telemetry::traces;

/// Outcomes per `COMPLETE` call. Redis serves no other client while a script runs: a call of
/// 1,000 outcomes (a flood's ledger batches finishing) held every tenant's calls for up to
/// 15 ms in the noisy-neighbour bench. The drain bench's calls average 20–70 outcomes, so the
/// cap costs a drain nothing.
const ACK_BATCH: usize = 100;

pub(super) async fn ack_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<AckMsg>) {
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
            if batch.len() < ACK_BATCH {
                next = rx.try_recv().ok();
            }
        }
        while !batch.is_empty() {
            match complete(&shared, &batch).await {
                Ok(parents) => {
                    if !parents.is_empty() && shared.options.release_children {
                        // Their children are told off the ack path; a failure here is repaired
                        // by queue upkeep (`Queues::repair_dependencies`).
                        let queues = shared.queues.clone();
                        let queue = shared.queue.clone();
                        tokio::spawn(async move {
                            let parents = parents.into_iter().map(|p| (queue.clone(), p)).collect();
                            if let Err(e) = queues.settle(parents).await {
                                tracing::warn!(queue = %queue, error = %e,
                                    "telling waiting jobs their parents finished failed; upkeep will redo it");
                            }
                        });
                    }
                    backoff.ok();
                    shared.finished(batch.len());
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

/// Records a batch of outcomes; returns the ids of finished jobs that other jobs wait for.
pub(super) async fn complete(
    shared: &Shared,
    batch: &[Outcome],
) -> redis::RedisResult<Vec<String>> {
    let settings = shared.queues.settings();
    let now = settings.clock.now_ms();
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
    let reply: Vec<redis::Value> = call.invoke_async(&mut conn).await?;
    Ok(reply
        .iter()
        .skip(1)
        .filter_map(crate::queue::client::string)
        .collect())
}

/// How a job's run ended.
pub(super) enum Ran<R> {
    TimedOut,
    Panicked(Box<dyn std::any::Any + Send>),
    Finished(Result<R, BoxDynError>),
}

/// The backend's middleware: runs each job under its timeout and panic guard, sorts the result
/// and hands the outcome to the acker.
#[derive(Clone)]
pub struct AckLayer {
    pub(super) acks: mpsc::UnboundedSender<AckMsg>,
    pub(super) queue: Arc<str>,
    pub(super) timeout: Duration,
    pub(super) retry_base: Duration,
    pub(super) retry_cap: Duration,
    pub(super) clock: crate::clock::Clock,
    pub(super) hook: Option<Hook>,
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
            self.clock.now_ms() + wait.as_millis() as i64
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
            // Fencing: a job fetched before this worker stalled past its lease may be another
            // worker's by now; it is not started (and its outcome is the new owner's to report).
            if !meta.still_owned().await {
                tracing::warn!(queue = %layer.queue, job_id = %meta.id,
                    "not starting a job another worker took over while this one stalled");
                return Ok(());
            }
            let waited = Duration::from_millis((layer.clock.now_ms() - meta.created_at_ms).max(0) as u64);
            metrics::started(&layer.queue, waited);
            // Each run is a span of the trace the job was enqueued in (traces on), so its retries
            // are spans of the same trace; its id is in every log line of the run. The run of an
            // unsampled trace makes no OpenTelemetry spans at all.
            let (span, unsampled) = traces::span_for(meta.trace.as_deref(), || {
                tracing::info_span!("job", queue = %layer.queue, job_id = %meta.id,
                    kind = %meta.kind, attempt = meta.attempt,
                    tenant = %meta.tenant.map(|t| t.to_string()).unwrap_or_default(),
                    trace_id = meta.trace.as_deref().and_then(traces::trace_id_of),
                    "otel.name" = %format_args!("job {}", meta.kind), "otel.kind" = "consumer")
            });
            let started = Instant::now();
            // Each job runs in a task of its own: jobs use every core, a panic is caught as the
            // task's result, and a job past its timeout is aborted rather than left running; its
            // blocking work is told to stop and waited for (`cancel`) before the retry is recorded.
            let cancel = crate::queue::cancel::Cancel::default();
            let job = tokio::spawn(tracing::Instrument::instrument(
                traces::in_trace(
                    unsampled.clone(),
                    cancel
                        .clone()
                        .scope(async move { running.await.map_err(Into::into) }),
                ),
                span.clone(),
            ));
            let abort = job.abort_handle();
            let ran = match tokio::time::timeout(layer.timeout, job).await {
                Err(_) => {
                    abort.abort();
                    cancel.cancel();
                    if !cancel.settled(crate::queue::cancel::SETTLE).await {
                        span.in_scope(|| tracing::warn!(settle = ?crate::queue::cancel::SETTLE,
                            "a timed-out job's blocking work did not stop in time"));
                    }
                    Ran::TimedOut
                }
                Ok(Err(join)) if join.is_panic() => Ran::Panicked(join.into_panic()),
                Ok(Err(join)) => Ran::Finished(Err(Box::new(join))),
                Ok(Ok(result)) => Ran::Finished(result),
            };
            let outcome = layer.outcome(&meta, ran);
            metrics::finished(&layer.queue, meta.tenant, outcome.kind, started.elapsed());
            if traces::makes_spans(&unsampled) {
                traces::set_outcome(&span, outcome.kind);
            }
            if outcome.kind != "succeeded" {
                span.in_scope(|| tracing::warn!(outcome = outcome.kind, error = %outcome.data, "job did not succeed"));
            }
            if let Some(hook) = &layer.hook
                && outcome.kind != "retry"
            {
                tracing::Instrument::instrument(
                    traces::in_trace(
                        unsampled,
                        hook.0.finished(&meta, outcome.kind, &outcome.data),
                    ),
                    span,
                )
                .await;
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
