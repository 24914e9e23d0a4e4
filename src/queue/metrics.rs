//! Prometheus metrics of the queues, through the `metrics` facade.
//!
//! Counters and histograms are per process (each `serve` and `work` process exposes its own);
//! queue depths are read from Redis at scrape time, so any process reports the whole queue.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (e.g. by an embedding test); keep ours
        // rendering what it records either way.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub fn pushed(queue: &str, n: u64) {
    counter!("backroom_jobs_pushed_total", "queue" => queue.to_string()).increment(n);
}

pub fn started(queue: &str, waited: Duration) {
    counter!("backroom_jobs_started_total", "queue" => queue.to_string()).increment(1);
    histogram!("backroom_job_wait_seconds", "queue" => queue.to_string())
        .record(waited.as_secs_f64());
}

/// `outcome`: succeeded, retry, failed or dead. Failures (retry, failed, dead) are also counted
/// per tenant, so an operator sees whose jobs fail; successes are not (one series per tenant and
/// queue would be the bulk of the scrape for nothing an alert needs).
pub fn finished(queue: &str, tenant: Option<uuid::Uuid>, outcome: &'static str, took: Duration) {
    counter!("backroom_jobs_finished_total", "queue" => queue.to_string(), "outcome" => outcome)
        .increment(1);
    if let Some(tenant) = tenant
        && outcome != "succeeded"
    {
        counter!("backroom_tenant_jobs_failed_total", "queue" => queue.to_string(),
            "tenant" => tenant.to_string(), "outcome" => outcome)
        .increment(1);
    }
    histogram!("backroom_job_duration_seconds", "queue" => queue.to_string())
        .record(took.as_secs_f64());
}

pub fn depth(queue: &str, status: &'static str, n: u64) {
    gauge!("backroom_queue_jobs", "queue" => queue.to_string(), "status" => status).set(n as f64);
}

/// Worker processes of a queue whose heartbeat is recent (read at scrape time).
pub fn workers(queue: &str, n: u64) {
    gauge!("backroom_queue_workers", "queue" => queue.to_string()).set(n as f64);
}

/// Gauges read from Postgres at scrape time: the age of the oldest unsent outbox row (seconds,
/// 0 when none) and the enabled webhook endpoints whose deliveries are failing.
pub fn system(outbox_lag_secs: f64, webhook_endpoints_failing: i64) {
    gauge!("backroom_outbox_oldest_unsent_seconds").set(outbox_lag_secs);
    gauge!("backroom_webhook_endpoints_failing").set(webhook_endpoints_failing as f64);
}
