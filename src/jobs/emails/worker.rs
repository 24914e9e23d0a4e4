//! The `emails` queue's handler.
//!
//! Every logical email has a row in `emails` (recipient, subject, status, SMTP reply, attempts,
//! a stable Message-ID) written before the first send. A job delivered twice finds the row
//! `sent` and does not send again, and a duplicate job finds another job's claim on the send and
//! leaves the email to it; the rare duplicate that slips through a crash between the SMTP answer
//! and the database update carries the same Message-ID, so receivers can drop it.
//! Transient SMTP failures (connection refused, timeouts, 4xx) retry with backoff; permanent ones
//! (5xx) fail at once with the server's reply. A per-tenant rate (emails per minute) keeps one
//! tenant from flooding the relay: over it, an email waits for its reserved turn (`throttle`).

use super::EmailJob;
use super::mailer::{Mailer, Sent, render};
use crate::domain::{EmailAddress, format_amount};
use crate::jobs::webhooks::events::{self, Event, EventType};
use crate::jobs::{JobKind, WorkerContext, worker_options};
use crate::queue::{JobError, JobMeta, WorkerOptions};
use crate::redis_conn::RedisHandle;
use anyhow::Context;
use apalis::prelude::Data;
use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;
use uuid::Uuid;

/// Sending mostly waits on the SMTP server: many at once.
pub fn options(concurrency: Option<usize>) -> WorkerOptions {
    worker_options::<EmailJob>(concurrency.unwrap_or(32))
}

/// The mailer needs `SMTP_URL`; a worker of the emails queue refuses to start without it.
pub fn deps(ctx: &WorkerContext) -> anyhow::Result<EmailDeps> {
    let smtp = ctx.settings.smtp_url.as_deref().ok_or_else(|| {
        anyhow::anyhow!("configuration error: SMTP_URL: is not set (the emails worker needs it)")
    })?;
    Ok(EmailDeps {
        db: ctx.db.clone(),
        redis: ctx.queues.redis().clone(),
        namespace: ctx.settings.redis_namespace.clone(),
        mailer: Arc::new(Mailer::new(smtp, &ctx.settings.mail_from)?),
        per_tenant_per_minute: ctx.settings.emails_per_minute,
        lease: ctx.settings.queue.lease,
    })
}

/// What the email worker needs.
#[derive(Clone)]
pub struct EmailDeps {
    pub db: PgPool,
    pub redis: RedisHandle,
    pub namespace: String,
    pub mailer: Arc<Mailer>,
    pub per_tenant_per_minute: u32,
    /// The queue's lease: a send claim lasts three of them.
    pub lease: Duration,
}

/// An email ready to send, as stored in the log.
struct Prepared {
    id: Uuid,
    recipient: String,
    subject: String,
    text: String,
    html: Option<String>,
    attachment: Option<(String, Vec<u8>)>,
    status: String,
    message_id: String,
}

/// The `emails` queue's handler.
pub async fn handle(
    job: EmailJob,
    meta: Data<JobMeta>,
    deps: Data<EmailDeps>,
) -> Result<serde_json::Value, JobError> {
    if meta.tenant != Some(job.tenant_id()) {
        return Err(JobError::permanent(
            "the payload's tenant does not match the job's tenant",
        ));
    }
    let Some(email) = prepare(&deps, &job, meta.attempt).await? else {
        return Ok(serde_json::json!({"skipped": "the tenant has no alert_email"}));
    };
    if email.status == "sent" {
        return Ok(serde_json::json!({"email_id": email.id, "status": "sent", "duplicate": true}));
    }
    if let Err(wait) = throttle(&deps, job.tenant_id(), email.id).await {
        sqlx::query!(
            "UPDATE emails SET last_error = $2 WHERE id = $1",
            email.id,
            wait.to_string()
        )
        .execute(&deps.db)
        .await?;
        return Err(wait);
    }
    if let Some(done) = claim_send(&deps, email.id, &meta).await? {
        return Ok(done);
    }

    // An earlier delivery whose send the server accepted, but which could not record it.
    if let Some(reply) = accepted_reply(&deps, email.id).await {
        record_sent(&deps, email.id, &reply).await?;
        return Ok(serde_json::json!({
            "email_id": email.id, "status": "sent", "smtp_reply": reply, "recorded_late": true,
        }));
    }
    let message = build_message(&deps.mailer, &email)
        .map_err(|e| JobError::permanent(format!("the email cannot be built: {e}")))?;
    // Fencing, right before `DATA`: a worker that stalled past its lease (frozen, cut off) may
    // have lost this job to another worker, which sends the email itself.
    let smtp = tracing::info_span!("smtp send", "otel.kind" = "client");
    match deps
        .mailer
        .send(&message, || meta.still_owned())
        .instrument(smtp)
        .await
    {
        Ok(Sent::NotOwned) => {
            // Nothing was sent: the new owner need not wait for this delivery's claim.
            sqlx::query!(
                "UPDATE emails SET sending_until = NULL
                 WHERE id = $1 AND job_id = $2 AND claim_attempt = $3 AND status <> 'sent'",
                email.id,
                meta.id,
                meta.attempt as i32
            )
            .execute(&deps.db)
            .await?;
            Err(JobError::retry(
                "another worker took this job over while this one stalled; it sends the email",
            ))
        }
        Ok(Sent::Accepted(reply)) => {
            // The server has the message: from here on, only the record of it may be retried.
            remember_accepted(&deps, email.id, &reply).await;
            record_sent(&deps, email.id, &reply).await?;
            Ok(serde_json::json!({"email_id": email.id, "status": "sent", "smtp_reply": reply}))
        }
        Err(e) => {
            let reason = e.to_string();
            let permanent = e.is_permanent();
            let give_up = permanent || meta.is_last_attempt();
            // A failure for good is recorded with its `email.failed` webhook event.
            let mut tx = deps.db.begin().await?;
            sqlx::query!(
                r#"UPDATE emails SET last_error = $2, sending_until = NULL,
                       smtp_reply = COALESCE($3, smtp_reply),
                       status = CASE WHEN $4 THEN 'failed' ELSE status END
                   WHERE id = $1"#,
                email.id,
                reason,
                e.status(),
                give_up
            )
            .execute(&mut *tx)
            .await?;
            if give_up {
                let event = Event::new(
                    job.tenant_id(),
                    EventType::EmailFailed,
                    serde_json::json!({
                        "email_id": email.id, "kind": job.kind(), "to": email.recipient,
                        "error": reason,
                    }),
                );
                events::record(&mut tx, &[event]).await?;
            }
            tx.commit().await?;
            if permanent {
                Err(JobError::permanent(format!(
                    "SMTP refused the email: {reason}"
                )))
            } else {
                Err(JobError::retry(format!("SMTP: {reason}")))
            }
        }
    }
}

/// Claims the send of an email for this delivery; `Some(answer)` when this delivery must not
/// send (the job then ends with that answer), an error when it must wait.
///
/// The delivery holding the claim owns the email until it is sent or fails (a failed send lets
/// the claim go). Another job for the same email finds the claim and is done, since the owner
/// finishes the work. A later delivery of the *same* job means the owner's worker lost its lease:
/// it died, or it froze — possibly after the server's 250 and before any record of it — and may
/// yet come back and record the send. So it waits for the claim to lapse (three leases: a thawed
/// worker has recorded by then) rather than sending again at once; then any delivery may take
/// it. When the holder's process is known to be gone (it ran on this machine and its pid is no
/// more), nothing can come back: the claim is taken at once.
async fn claim_send(
    deps: &EmailDeps,
    email_id: Uuid,
    meta: &JobMeta,
) -> Result<Option<serde_json::Value>, JobError> {
    if take_claim(deps, email_id, meta, None).await? {
        return Ok(None);
    }
    let holder = sqlx::query!(
        r#"SELECT job_id, status, claim_process,
                  GREATEST(EXTRACT(EPOCH FROM sending_until - now()), 0)::float8 AS "left!"
           FROM emails WHERE id = $1"#,
        email_id
    )
    .fetch_one(&deps.db)
    .await?;
    if holder.status == "sent" || holder.job_id.as_deref() != Some(meta.id.as_str()) {
        return Ok(Some(serde_json::json!({
            "email_id": email_id, "status": "sending", "duplicate": true,
        })));
    }
    if let Some(dead) = holder.claim_process.filter(|p| meta.process_is_gone(p))
        && take_claim(deps, email_id, meta, Some(&dead)).await?
    {
        tracing::info!(%email_id, holder = %dead, "took over the send claim of a worker process that is gone");
        return Ok(None);
    }
    Err(JobError::retry_after(
        "an earlier delivery of this job, whose worker stalled or died, holds the send; \
         waiting for its claim to lapse rather than sending twice",
        Duration::from_secs_f64(holder.left + 1.0),
    ))
}

/// Takes the send claim for this delivery (three leases long) when it is free, lapsed, already
/// this delivery's, or held for this job by `dead_holder`, a process known to be gone; says
/// whether it did.
async fn take_claim(
    deps: &EmailDeps,
    email_id: Uuid,
    meta: &JobMeta,
    dead_holder: Option<&str>,
) -> sqlx::Result<bool> {
    let taken = sqlx::query_scalar!(
        r#"UPDATE emails SET attempts = attempts + 1, job_id = $2, claim_attempt = $3,
                             sending_until = now() + make_interval(secs => $4),
                             claim_process = $5
           WHERE id = $1 AND status <> 'sent'
             AND (sending_until IS NULL OR sending_until < now()
                  OR (job_id = $2 AND claim_attempt = $3)
                  OR (job_id = $2 AND claim_process = $6))
           RETURNING id"#,
        email_id,
        meta.id,
        meta.attempt as i32,
        (deps.lease * 3).as_secs_f64(),
        meta.process_name(),
        dead_holder
    )
    .fetch_optional(&deps.db)
    .await?;
    Ok(taken.is_some())
}

/// How long a delivery keeps trying to record a send the server accepted (the job's timeout is
/// 60 s) before it leaves that to the next delivery, which finds the acceptance in Redis.
const RECORD_SENT_FOR: Duration = Duration::from_secs(40);

/// Where the acceptance of an email is kept until the send is recorded in Postgres.
fn accepted_key(deps: &EmailDeps, email_id: Uuid) -> String {
    format!("{{{}:emails}}:accepted:{email_id}", deps.namespace)
}

/// Notes in Redis that the server accepted the email (for a week), so that a delivery after a
/// failed record tells "sent, not recorded" from "never sent". Best effort: Postgres is tried too.
async fn remember_accepted(deps: &EmailDeps, email_id: Uuid, reply: &str) {
    let noted: redis::RedisResult<()> = async {
        let mut conn = deps.redis.conn().await?;
        redis::cmd("SET")
            .arg(accepted_key(deps, email_id))
            .arg(reply)
            .arg("EX")
            .arg(7 * 24 * 3600)
            .query_async(&mut conn)
            .await
    }
    .await;
    if let Err(e) = noted {
        tracing::warn!(error = %e, %email_id, "could not note an accepted email in Redis");
    }
}

/// The server's reply to an earlier delivery's send of this email, if one was accepted.
async fn accepted_reply(deps: &EmailDeps, email_id: Uuid) -> Option<String> {
    let mut conn = deps.redis.conn().await.ok()?;
    redis::cmd("GET")
        .arg(accepted_key(deps, email_id))
        .query_async::<Option<String>>(&mut conn)
        .await
        .ok()
        .flatten()
}

/// Records the email as sent, retrying with backoff for [`RECORD_SENT_FOR`] while Postgres is
/// out of reach, rather than failing the job (a retried job would send it again).
async fn record_sent(deps: &EmailDeps, email_id: Uuid, reply: &str) -> Result<(), JobError> {
    let deadline = tokio::time::Instant::now() + RECORD_SENT_FOR;
    let mut wait = Duration::from_millis(100);
    loop {
        let recorded = record_sent_once(&deps.db, email_id, reply).await;
        match recorded {
            Ok(_) => {
                if let Ok(mut conn) = deps.redis.conn().await {
                    let _: redis::RedisResult<()> = redis::cmd("DEL")
                        .arg(accepted_key(deps, email_id))
                        .query_async(&mut conn)
                        .await;
                }
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() + wait < deadline => {
                tracing::warn!(error = %e, %email_id, "the email was sent; recording it failed, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Marks the email sent, with its `email.sent` webhook event, in one transaction (once: an email
/// already recorded sent is left as it is).
async fn record_sent_once(db: &sqlx::PgPool, email_id: Uuid, reply: &str) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let sent = sqlx::query!(
        "UPDATE emails SET status = 'sent', smtp_reply = $2, sent_at = now(), last_error = NULL, sending_until = NULL
         WHERE id = $1 AND status <> 'sent'
         RETURNING tenant_id, kind, recipient, message_id",
        email_id,
        reply
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = sent {
        let event = Event::new(
            row.tenant_id,
            EventType::EmailSent,
            serde_json::json!({
                "email_id": email_id, "kind": row.kind, "to": row.recipient,
                "message_id": row.message_id,
            }),
        );
        events::record(&mut tx, &[event]).await?;
    }
    tx.commit().await
}

fn build_message(mailer: &Mailer, email: &Prepared) -> anyhow::Result<Message> {
    let to: Mailbox = email.recipient.parse().context("recipient")?;
    let builder = Message::builder()
        .from(mailer.from.clone())
        .to(to)
        .subject(email.subject.clone())
        .message_id(Some(email.message_id.clone()));
    let body = match &email.html {
        Some(html) => MultiPart::alternative_plain_html(email.text.clone(), html.clone()),
        None => MultiPart::mixed().singlepart(SinglePart::plain(email.text.clone())),
    };
    let body = match &email.attachment {
        Some((filename, bytes)) => MultiPart::mixed().multipart(body).singlepart(
            Attachment::new(filename.clone())
                .body(bytes.clone(), ContentType::parse("application/pdf")?),
        ),
        None => body,
    };
    Ok(builder.multipart(body)?)
}

/// KEYS[1]: the tenant's sending schedule (when its next send may go, ms of Redis's clock);
/// KEYS[2]: this email's reserved turn. ARGV[1]: ms between sends; ARGV[2]: how far the schedule
/// may run ahead of now and still send at once (the burst). Returns 0 when the email may go now,
/// else the ms until its turn, which is then reserved: the email's next delivery goes at once.
const RESERVE_TURN: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local held = tonumber(redis.call('GET', KEYS[2]))
if held then
  if held <= now + 1000 then
    redis.call('DEL', KEYS[2])
    return 0
  end
  return held - now
end
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', next_tat - now + 60000)
local turn = tat - tonumber(ARGV[2])
if turn <= now then
  return 0
end
redis.call('SET', KEYS[2], string.format('%d', turn), 'PX', turn - now + 86400000)
return turn - now
"#;

static RESERVE_TURN_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RESERVE_TURN));

/// Holds each tenant to its sending limit: a minute's worth may go at once, then one every
/// `60 / limit` seconds. An email over the limit is given its turn (reserved in Redis) and waits
/// for it in one retry, instead of trying again every minute: a backlog drains at the limit in
/// order, and however long it is, waiting costs an email one attempt.
async fn throttle(deps: &EmailDeps, tenant: Uuid, email_id: Uuid) -> Result<(), JobError> {
    let per_minute = deps.per_tenant_per_minute;
    if per_minute == 0 {
        return Ok(());
    }
    let interval_ms = 60_000 / u64::from(per_minute);
    let schedule = format!("{{{}:ratelimit}}:emails-sent:{tenant}", deps.namespace);
    let turn = format!("{{{}:ratelimit}}:emails-turn:{email_id}", deps.namespace);
    let mut conn = deps.redis.conn().await?;
    let wait_ms: u64 = RESERVE_TURN_SCRIPT
        .key(schedule)
        .key(turn)
        .arg(interval_ms)
        .arg(interval_ms * u64::from(per_minute - 1))
        .invoke_async(&mut conn)
        .await?;
    if wait_ms > 0 {
        let wait = Duration::from_millis(wait_ms + 250);
        return Err(JobError::retry_after(
            format!(
                "tenant over its limit of {per_minute} emails a minute: this email's turn comes in {} s",
                wait.as_secs().max(1)
            ),
            wait,
        ));
    }
    Ok(())
}

/// Finds or creates the email's log row (with its content).
async fn prepare(
    deps: &EmailDeps,
    job: &EmailJob,
    attempt: u32,
) -> Result<Option<Prepared>, JobError> {
    match job {
        EmailJob::Requested {
            tenant_id,
            email_id,
        } => load(&deps.db, *tenant_id, *email_id, None)
            .await?
            .map(Some)
            .ok_or_else(|| JobError::permanent("no such email (deleted?)")),
        EmailJob::Invoice {
            tenant_id,
            invoice_id,
            ..
        } => prepare_invoice(deps, *tenant_id, *invoice_id, attempt)
            .await
            .map(Some),
        EmailJob::LowStock {
            tenant_id,
            sku,
            on_hand,
            reorder_point,
            crossing,
        } => prepare_low_stock(deps, *tenant_id, sku, *on_hand, *reorder_point, crossing).await,
        EmailJob::ReorderDigest { tenant_id, run_id } => {
            prepare_reorder_digest(deps, *tenant_id, *run_id).await
        }
        EmailJob::WebhookDisabled {
            tenant_id,
            endpoint_id,
            disabled_at,
        } => prepare_webhook_disabled(deps, *tenant_id, *endpoint_id, *disabled_at).await,
    }
}

async fn load(
    db: &PgPool,
    tenant_id: Uuid,
    email_id: Uuid,
    attachment: Option<(String, Vec<u8>)>,
) -> sqlx::Result<Option<Prepared>> {
    let row = sqlx::query!(
        r#"SELECT id, recipient, subject, text_body, html_body, status, message_id
           FROM emails WHERE id = $1 AND tenant_id = $2"#,
        email_id,
        tenant_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Prepared {
        id: r.id,
        recipient: r.recipient,
        subject: r.subject,
        text: r.text_body.unwrap_or_default(),
        html: r.html_body,
        attachment,
        status: r.status,
        message_id: r.message_id,
    }))
}

/// Writes the log row for a system email (once per idempotency key) and returns it.
#[allow(clippy::too_many_arguments)]
async fn record(
    deps: &EmailDeps,
    tenant_id: Uuid,
    kind: &str,
    key: &str,
    recipient: &str,
    subject: &str,
    (text, html): (String, String),
    attachment: Option<(String, Vec<u8>)>,
) -> Result<Prepared, JobError> {
    let id = Uuid::now_v7();
    sqlx::query!(
        r#"INSERT INTO emails (id, tenant_id, kind, idempotency_key, recipient, subject, text_body,
                               html_body, message_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (tenant_id, idempotency_key) DO NOTHING"#,
        id,
        tenant_id,
        kind,
        key,
        recipient,
        subject,
        text,
        html,
        deps.mailer.message_id(id)
    )
    .execute(&deps.db)
    .await?;
    let existing = sqlx::query_scalar!(
        "SELECT id FROM emails WHERE tenant_id = $1 AND idempotency_key = $2",
        tenant_id,
        key
    )
    .fetch_one(&deps.db)
    .await?;
    load(&deps.db, tenant_id, existing, attachment)
        .await?
        .ok_or_else(|| JobError::retry("the email row vanished"))
}

/// The longest an invoice email waits between looks at its invoice.
const MAX_INVOICE_WAIT: Duration = Duration::from_secs(60);

async fn prepare_invoice(
    deps: &EmailDeps,
    tenant_id: Uuid,
    invoice_id: Uuid,
    attempt: u32,
) -> Result<Prepared, JobError> {
    let i = sqlx::query!(
        r#"SELECT i.number, i.status, i.pdf, i.issued_on, i.currency, i.subtotal, i.tax, i.total,
                  o.order_number, o.customer_name, o.customer_email, t.name AS seller
           FROM invoices i JOIN orders o ON o.id = i.order_id JOIN tenants t ON t.id = i.tenant_id
           WHERE i.id = $1 AND i.tenant_id = $2"#,
        invoice_id,
        tenant_id
    )
    .fetch_optional(&deps.db)
    .await?
    .ok_or_else(|| JobError::permanent("no such invoice"))?;
    let (Some(number), Some(pdf), "ready") = (i.number, i.pdf, i.status.as_str()) else {
        if i.status == "failed" {
            return Err(JobError::permanent(
                "the invoice failed; there is nothing to send",
            ));
        }
        // The email is queued with the invoice, so under a backlog it waits for the render:
        // 2 s, doubling per attempt up to a minute, so the attempts cover minutes of backlog.
        let wait =
            Duration::from_secs(2u64 << attempt.saturating_sub(1).min(5)).min(MAX_INVOICE_WAIT);
        return Err(JobError::retry_after("the invoice is not ready yet", wait));
    };
    let recipient = EmailAddress::parse(&i.customer_email)
        .map_err(|e| JobError::permanent(format!("customer email {e}")))?;
    let money = |d| format_amount(d, &i.currency);
    let bodies = rendered(
        "invoice",
        minijinja::context! {
            customer_name => i.customer_name,
            order_number => i.order_number,
            number => number,
            issued_on => i.issued_on.map(|d| d.to_string()).unwrap_or_default(),
            subtotal => money(i.subtotal),
            tax => money(i.tax),
            total => money(i.total),
            currency => i.currency,
            seller => i.seller,
        },
    )?;
    record(
        deps,
        tenant_id,
        "invoice_email",
        &format!("invoice-email:{invoice_id}"),
        recipient.as_str(),
        &format!("Invoice {number} from {}", i.seller),
        bodies,
        Some((format!("{number}.pdf"), pdf)),
    )
    .await
}

async fn prepare_low_stock(
    deps: &EmailDeps,
    tenant_id: Uuid,
    sku: &str,
    on_hand: i64,
    reorder_point: i64,
    crossing: &str,
) -> Result<Option<Prepared>, JobError> {
    let t = sqlx::query!(
        r#"SELECT t.name AS seller, t.alert_email, p.name, p.reorder_quantity, p.lead_time_days
           FROM tenants t JOIN products p ON p.tenant_id = t.id
           WHERE t.id = $1 AND p.sku = $2"#,
        tenant_id,
        sku
    )
    .fetch_optional(&deps.db)
    .await?
    .ok_or_else(|| JobError::permanent("the product no longer exists"))?;
    let Some(alert_email) = t.alert_email else {
        return Ok(None);
    };
    let bodies = rendered(
        "low_stock",
        minijinja::context! {
            seller => t.seller, sku => sku, name => t.name, on_hand => on_hand,
            reorder_point => reorder_point, reorder_quantity => t.reorder_quantity,
            lead_time_days => t.lead_time_days,
        },
    )?;
    record(
        deps,
        tenant_id,
        "low_stock_alert",
        &format!("low-stock:{sku}:{crossing}"),
        &alert_email,
        &format!("Low stock: {sku} at {on_hand} (reorder point {reorder_point})"),
        bodies,
        None,
    )
    .await
    .map(Some)
}

/// The digest of a forecast run's SKUs due to reorder (none due: no email).
async fn prepare_reorder_digest(
    deps: &EmailDeps,
    tenant_id: Uuid,
    run_id: Uuid,
) -> Result<Option<Prepared>, JobError> {
    let tenant = sqlx::query!(
        "SELECT name, alert_email FROM tenants WHERE id = $1",
        tenant_id
    )
    .fetch_optional(&deps.db)
    .await?
    .ok_or_else(|| JobError::permanent("the tenant no longer exists"))?;
    let Some(alert_email) = tenant.alert_email else {
        return Ok(None);
    };
    let due = sqlx::query!(
        r#"SELECT r.sku, p.name, r.on_hand, r.reorder_point, r.order_quantity, r.stockout_date, r.model
           FROM forecast_results r JOIN products p ON p.tenant_id = r.tenant_id AND p.sku = r.sku
           WHERE r.run_id = $1 AND r.tenant_id = $2 AND r.on_hand <= r.reorder_point
           ORDER BY r.stockout_date NULLS LAST, r.sku"#,
        run_id,
        tenant_id
    )
    .fetch_all(&deps.db)
    .await?;
    if due.is_empty() {
        return Ok(None);
    }
    let rows: Vec<minijinja::Value> = due
        .iter()
        .map(|r| {
            minijinja::context! {
                sku => r.sku, name => r.name, on_hand => r.on_hand,
                reorder_point => r.reorder_point, order_quantity => r.order_quantity,
                stockout_date => r.stockout_date.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                model => r.model,
            }
        })
        .collect();
    let bodies = rendered(
        "reorder_digest",
        minijinja::context! { seller => tenant.name, count => due.len(), rows => rows },
    )?;
    record(
        deps,
        tenant_id,
        "reorder_digest",
        &format!("reorder-digest:{run_id}"),
        &alert_email,
        &format!("{} SKUs due to reorder at {}", due.len(), tenant.name),
        bodies,
        None,
    )
    .await
    .map(Some)
}

/// An email's text and HTML bodies from its templates; a template that fails to render fails
/// the email for good (retrying renders the same).
fn rendered(template: &str, context: minijinja::Value) -> Result<(String, String), JobError> {
    render(template, context).map_err(|e| JobError::permanent(format!("template: {e:#}")))
}

/// "Your webhook endpoint was disabled": to the tenant's `alert_email`, once per disabling.
async fn prepare_webhook_disabled(
    deps: &EmailDeps,
    tenant_id: Uuid,
    endpoint_id: Uuid,
    disabled_at: i64,
) -> Result<Option<Prepared>, JobError> {
    let row = sqlx::query!(
        r#"SELECT t.name AS seller, t.alert_email, p.url, p.description, p.disabled_reason,
                  p.failing_since
           FROM tenants t JOIN webhook_endpoints p ON p.tenant_id = t.id
           WHERE t.id = $1 AND p.id = $2"#,
        tenant_id,
        endpoint_id
    )
    .fetch_optional(&deps.db)
    .await?
    .ok_or_else(|| JobError::permanent("the webhook endpoint no longer exists"))?;
    let Some(alert_email) = row.alert_email else {
        return Ok(None);
    };
    let bodies = rendered(
        "webhook_disabled",
        minijinja::context! {
            seller => row.seller, url => row.url, description => row.description,
            endpoint_id => endpoint_id.to_string(),
            reason => row.disabled_reason.unwrap_or_else(|| "disabled by the platform".into()),
            failing_since => row.failing_since.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
        },
    )?;
    record(
        deps,
        tenant_id,
        "webhook_disabled",
        &format!("webhook-disabled:{endpoint_id}:{disabled_at}"),
        &alert_email,
        "A webhook endpoint was disabled",
        bodies,
        None,
    )
    .await
    .map(Some)
}
