//! The `webhooks` queue's handler: one attempt to deliver one event to one endpoint.
//!
//! The body is the event's, as recorded; `webhook-id` is the event's id, the same on every
//! attempt and for every endpoint, so a receiver can drop repeats (a worker killed mid-delivery
//! leads to one more attempt with the same id). A 2xx is delivered. A `410 Gone` disables the
//! endpoint at once, and so does a failure when nothing has been delivered to the endpoint for
//! `BACKROOM_WEBHOOK_DISABLE_AFTER_DAYS` (5); the tenant is told by email. Anything else —
//! another status, a timeout, a refused connection, an address that is not public — is retried after the next delay of the schedule
//! (`BACKROOM_WEBHOOK_RETRY_SECS`: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 10 h by default,
//! about 37 hours in all, each ±10 %), then the delivery is `failed`. Every attempt is recorded
//! on the delivery: the receiver's status, the error, the latency and the start of its answer;
//! Prometheus counts attempts by outcome (`backroom_webhook_attempts_total{outcome=delivered|
//! retry|failed|gone}`) and their latency (`backroom_webhook_attempt_seconds`).

use super::sign::signature_header;
use super::target::{self, PublicOnly};
use super::{DeliverWebhook, EXCERPT_CHARS, MAX_RESPONSE_BYTES};
use crate::config::WebhookSettings;
use crate::jobs::emails::EmailJob;
use crate::jobs::{self, WorkerContext, worker_options};
use crate::outbox;
use crate::queue::{JobError, JobMeta, WorkerOptions};
use apalis::prelude::Data;
use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng as _;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deliveries wait on the network, not the CPU: many at once. One tenant's share is bounded by
/// its per-tenant limit on this queue (`BACKROOM_TENANT_CONCURRENCY`, `webhooks=8`).
pub fn options(concurrency: Option<usize>) -> WorkerOptions {
    worker_options::<DeliverWebhook>(concurrency.unwrap_or(64))
}

pub fn deps(ctx: &WorkerContext) -> anyhow::Result<WebhookDeps> {
    let settings = ctx.settings.webhooks.clone();
    let http = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PublicOnly {
            allow_private: settings.allow_private,
        }))
        .user_agent(concat!("backroom-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?;
    Ok(WebhookDeps {
        db: ctx.db.clone(),
        http,
        settings,
    })
}

/// What the webhook worker needs.
#[derive(Clone)]
pub struct WebhookDeps {
    pub db: PgPool,
    pub http: reqwest::Client,
    pub settings: WebhookSettings,
}

/// What one attempt got.
struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    excerpt: Option<String>,
    latency_ms: i32,
}

/// The `webhooks` queue's handler.
pub async fn handle(
    job: DeliverWebhook,
    meta: Data<JobMeta>,
    deps: Data<WebhookDeps>,
) -> Result<serde_json::Value, JobError> {
    if meta.tenant != Some(job.tenant_id) {
        return Err(JobError::permanent(
            "the payload's tenant does not match the job's tenant",
        ));
    }
    let d = sqlx::query!(
        r#"SELECT d.status, d.attempts, d.event_id, e.body, p.id AS endpoint_id, p.url,
                  p.enabled, p.secret, p.previous_secret, p.previous_secret_until,
                  p.failing_since
           FROM webhook_deliveries d
           JOIN webhook_events e ON e.id = d.event_id
           JOIN webhook_endpoints p ON p.id = d.endpoint_id
           WHERE d.id = $1 AND d.tenant_id = $2"#,
        job.delivery_id,
        job.tenant_id
    )
    .fetch_optional(&deps.db)
    .await?
    .ok_or_else(|| JobError::permanent("no such delivery (its endpoint was deleted?)"))?;
    if d.status != "pending" {
        // A repeated job of a delivery that has ended: nothing to send.
        return Ok(json!({"status": d.status, "sent": false}));
    }
    if !d.enabled {
        finish(&deps.db, &job, "failed", "the endpoint is disabled").await?;
        return Err(JobError::permanent("the endpoint is disabled"));
    }
    if let Err(why) = target::check_url(&d.url, deps.settings.allow_private) {
        let why = format!("the endpoint's URL {why}");
        finish(&deps.db, &job, "failed", &why).await?;
        return Err(JobError::permanent(why));
    }

    let body = serde_json::to_vec(&d.body).expect("JSON serializes");
    let mut secrets = vec![d.secret.as_str()];
    if let (Some(previous), Some(until)) = (&d.previous_secret, d.previous_secret_until)
        && until > Utc::now()
    {
        secrets.push(previous);
    }
    let timestamp = Utc::now().timestamp();
    let attempt = send(&deps, &d.url, &d.event_id, timestamp, &secrets, body).await;

    let number = d.attempts as usize + 1;
    let delivered = attempt.status.is_some_and(|s| (200..300).contains(&s));
    let gone = attempt.status == Some(410);
    let exhausted = number > deps.settings.retry_after.len();
    let status = match () {
        _ if delivered => "delivered",
        _ if gone || exhausted => "failed",
        _ => "pending",
    };
    let outcome = match () {
        _ if delivered => "delivered",
        _ if gone => "gone",
        _ if exhausted => "failed",
        _ => "retry",
    };
    metrics::counter!("backroom_webhook_attempts_total", "outcome" => outcome).increment(1);
    metrics::histogram!("backroom_webhook_attempt_seconds")
        .record(f64::from(attempt.latency_ms) / 1000.0);
    let health = Health {
        endpoint_id: d.endpoint_id,
        failing_since: d.failing_since,
        delivered,
        gone,
    };
    // The attempt and what it does to its endpoint commit together: whoever sees a delivery
    // failed by a 410 also sees its endpoint disabled.
    let mut tx = deps.db.begin().await?;
    record_attempt(&mut tx, &job, status, &attempt).await?;
    endpoint_health(&mut tx, &deps, &job, health).await?;
    tx.commit().await?;
    let error = attempt.error.unwrap_or_default();
    match () {
        _ if delivered => Ok(json!({
            "status": attempt.status, "attempt": number, "latency_ms": attempt.latency_ms
        })),
        _ if gone => Err(JobError::permanent(
            "the receiver answered 410 Gone; the endpoint is disabled",
        )),
        _ if exhausted => Err(JobError::permanent(format!(
            "{error}; gave up after {number} attempts"
        ))),
        _ => Err(JobError::retry_after(
            error,
            jittered(deps.settings.retry_after[number - 1]),
        )),
    }
}

/// An attempt's outcome for its endpoint, and the endpoint's `failing_since` as read before it.
struct Health {
    endpoint_id: uuid::Uuid,
    failing_since: Option<DateTime<Utc>>,
    delivered: bool,
    gone: bool,
}

/// Keeps the endpoint's health with each attempt: a success clears `failing_since`, the first
/// failure sets it; the usual attempt, a success of a healthy endpoint, writes nothing. A `410
/// Gone`, or a failure with nothing delivered for `BACKROOM_WEBHOOK_DISABLE_AFTER_DAYS`, disables
/// the endpoint and queues the email that tells the tenant, both in one transaction, once per
/// disabling (the update re-checks both conditions, so a success meanwhile wins).
async fn endpoint_health(
    tx: &mut PgConnection,
    deps: &WebhookDeps,
    job: &DeliverWebhook,
    h: Health,
) -> sqlx::Result<()> {
    let endpoint_id = h.endpoint_id;
    if h.delivered {
        if h.failing_since.is_some() {
            sqlx::query!(
                "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND tenant_id = $2",
                endpoint_id,
                job.tenant_id
            )
            .execute(&mut *tx)
            .await?;
        }
        return Ok(());
    }
    let after = TimeDelta::from_std(deps.settings.disable_after).unwrap_or(TimeDelta::MAX);
    let overdue = h
        .failing_since
        .is_some_and(|since| Utc::now() - since > after);
    if !h.gone && !overdue {
        if h.failing_since.is_none() {
            sqlx::query!(
                "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now())
                 WHERE id = $1 AND tenant_id = $2",
                endpoint_id,
                job.tenant_id
            )
            .execute(&mut *tx)
            .await?;
        }
        return Ok(());
    }
    let disabled = sqlx::query_scalar!(
        r#"UPDATE webhook_endpoints
           SET failing_since = coalesce(failing_since, now()),
               enabled = false, disabled_at = now(), updated_at = now(),
               disabled_reason = CASE WHEN $3 THEN 'the receiver answered 410 Gone'
                   ELSE 'no delivery succeeded for ' || $4::float8 || ' days' END
           WHERE id = $1 AND tenant_id = $2 AND enabled
             AND ($3 OR failing_since < now() - make_interval(secs => $4::float8 * 86400))
           RETURNING disabled_at AS "disabled_at!""#,
        endpoint_id,
        job.tenant_id,
        h.gone,
        deps.settings.disable_after.as_secs_f64() / 86_400.0
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(at) = disabled {
        tracing::warn!(endpoint = %endpoint_id, gone = h.gone, "webhook endpoint disabled");
        let email = EmailJob::WebhookDisabled {
            tenant_id: job.tenant_id,
            endpoint_id,
            disabled_at: at.timestamp_micros(),
        };
        let key = format!("webhook-disabled:{endpoint_id}:{}", at.timestamp_micros());
        outbox::add(tx, &[jobs::outbox_job(&email, key)]).await?;
    }
    Ok(())
}

/// One POST, its answer read up to [`MAX_RESPONSE_BYTES`], all within the client's timeout. With
/// traces on, the request carries the delivery's `traceparent`, so a traced receiver continues it.
#[tracing::instrument(name = "webhook call", skip_all, fields(otel.kind = "client", status = tracing::field::Empty))]
async fn send(
    deps: &WebhookDeps,
    url: &str,
    id: &str,
    timestamp: i64,
    secrets: &[&str],
    body: Vec<u8>,
) -> Attempt {
    let signature = signature_header(secrets, id, timestamp, &body);
    let started = Instant::now();
    let mut request = deps
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    if let Some(traceparent) = crate::telemetry::traces::current_traceparent() {
        request = request.header("traceparent", traceparent);
    }
    let sent = request.body(body).send().await;
    let mut attempt = Attempt {
        status: None,
        error: None,
        excerpt: None,
        latency_ms: 0,
    };
    match sent {
        Ok(mut response) => {
            let status = response.status();
            attempt.status = Some(status.as_u16());
            tracing::Span::current().record("status", status.as_u16());
            let mut read = Vec::new();
            while read.len() < MAX_RESPONSE_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        let room = MAX_RESPONSE_BYTES - read.len();
                        read.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        attempt.error = Some(describe(&e, deps.settings.timeout));
                        break;
                    }
                }
            }
            let text: String = String::from_utf8_lossy(&read)
                .chars()
                .take(EXCERPT_CHARS)
                .collect();
            attempt.excerpt = Some(text);
            if !status.is_success() {
                attempt.error = Some(format!("the receiver answered {status}"));
            }
        }
        Err(e) => attempt.error = Some(describe(&e, deps.settings.timeout)),
    }
    attempt.latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    attempt
}

/// What went wrong, for the tenant: the kind of failure and its innermost cause.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs_f64());
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let what = if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    format!("{what}: {cause}")
}

/// `delay` ± 10 %.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.9..=1.1))
}

async fn record_attempt(
    db: &mut PgConnection,
    job: &DeliverWebhook,
    status: &str,
    attempt: &Attempt,
) -> sqlx::Result<()> {
    sqlx::query!(
        r#"UPDATE webhook_deliveries
           SET attempts = attempts + 1, status = $3, response_status = $4, last_error = $5,
               latency_ms = $6, response_excerpt = $7, last_attempt_at = now(),
               delivered_at = CASE WHEN $3 = 'delivered' THEN now() END
           WHERE id = $1 AND tenant_id = $2"#,
        job.delivery_id,
        job.tenant_id,
        status,
        attempt.status.map(i32::from),
        attempt.error,
        attempt.latency_ms,
        attempt.excerpt
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Ends a delivery without an attempt.
async fn finish(db: &PgPool, job: &DeliverWebhook, status: &str, why: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE webhook_deliveries SET status = $3, last_error = $4
         WHERE id = $1 AND tenant_id = $2 AND status = 'pending'",
        job.delivery_id,
        job.tenant_id,
        status,
        why
    )
    .execute(db)
    .await
    .map(|_| ())
}
