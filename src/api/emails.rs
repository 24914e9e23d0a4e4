//! Tenant-requested emails and every email's delivery record. Addresses and subjects are parsed
//! at the door: a CR or LF anywhere a header is built from is a 422, never a sent message.
//! A tenant queues at most [`QUEUED_MINUTES`] of its sending limit ahead (429 beyond).

use super::AppState;
use super::error::{Error, Result};
use super::extract::{FieldErrors, Json, Tenant};
use super::rate_limit;
use crate::domain::{EmailAddress, IdempotencyKey, clean_text};
use crate::jobs::emails::EmailJob;
use crate::jobs::{self, Enqueue};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

const MAX_BODY_CHARS: usize = 100_000;
/// How many minutes of its sending limit (`BACKROOM_EMAILS_PER_MINUTE`) a tenant may queue at
/// once through `POST /v1/emails`; past that, requests are accepted at the sending rate.
pub const QUEUED_MINUTES: u32 = 5;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailInput {
    to: String,
    subject: String,
    text: String,
    html: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EmailAccepted {
    email_id: Uuid,
    job_id: String,
    status: String,
}

fn body_text(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if raw.chars().count() > MAX_BODY_CHARS {
        return Err(format!("must be at most {MAX_BODY_CHARS} characters"));
    }
    if raw
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_string())
}

/// Whether the tenant already sent a request with this idempotency key.
async fn seen_key(state: &AppState, tenant: Uuid, key: &str) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM emails WHERE tenant_id = $1 AND idempotency_key = $2)",
    )
    .bind(tenant)
    .bind(key)
    .fetch_one(&state.db)
    .await?)
}

/// Queues an email to one recipient.
#[utoipa::path(post, path = "/v1/emails", tag = "tenant", security(("tenant_key" = [])),
    request_body = EmailInput,
    responses((status = 202, body = EmailAccepted),
        (status = 200, description = "The idempotency key was seen before: the first email", body = EmailAccepted),
        (status = 422, body = super::error::Problem),
        (status = 429, description = "The tenant has queued 5 minutes of its sending limit; see Retry-After", body = super::error::Problem),
        (status = 503, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn send_email(
    tenant: Tenant,
    State(state): State<AppState>,
    Json(body): Json<EmailInput>,
) -> Result<(StatusCode, axum::Json<EmailAccepted>)> {
    let mut errors = FieldErrors::default();
    let to = errors.check("to", EmailAddress::parse(&body.to));
    let subject = errors.check("subject", clean_text(&body.subject, 200));
    let text = errors.check("text", body_text(&body.text));
    let html = match &body.html {
        None => Some(None),
        Some(h) => errors.check("html", body_text(h)).map(Some),
    };
    let key = match &body.idempotency_key {
        None => Some(None),
        Some(k) => errors
            .check("idempotency_key", IdempotencyKey::parse(k))
            .map(Some),
    };
    errors.finish()?;
    let key = key
        .expect("checked")
        .map(|k| format!("api:{}", k.as_str()))
        .unwrap_or_else(|| format!("api:{}", Uuid::new_v4()));
    // A tenant may queue at most a few minutes of its sending limit ahead: beyond that a flood
    // would only sit in the shared queue (and in Postgres) waiting for its turn. A repeat of an
    // accepted request gets its first answer and costs nothing of that.
    let repeat = body.idempotency_key.is_some() && seen_key(&state, tenant.id, &key).await?;
    let per_minute = state.settings.emails_per_minute;
    if !repeat
        && let Some(wait) = rate_limit::check_per_minute(
            &state.redis,
            &state.settings.redis_namespace,
            "emails",
            tenant.id,
            per_minute,
            per_minute.saturating_mul(QUEUED_MINUTES),
        )
        .await
    {
        return Err(Error::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        });
    }

    let email_id = Uuid::now_v7();
    let domain = state
        .settings
        .mail_from
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>').to_string())
        .unwrap_or_else(|| "backroom.local".into());
    let to = to.expect("checked");
    let message_id = format!("<{email_id}@{domain}>");
    // The row is committed before its job is queued, so a worker never looks for a row that is
    // not there yet; if Redis refuses the job the row is removed again (nothing half-accepted).
    let inserted = sqlx::query_scalar!(
        r#"INSERT INTO emails (id, tenant_id, kind, idempotency_key, recipient, subject, text_body,
                               html_body, message_id)
           VALUES ($1, $2, 'requested_email', $3, $4, $5, $6, $7, $8)
           ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
           RETURNING id"#,
        email_id,
        tenant.id,
        key,
        to.as_str(),
        subject.expect("checked"),
        text.expect("checked"),
        html.expect("checked"),
        message_id
    )
    .fetch_optional(&state.db)
    .await?;
    if inserted.is_none() {
        let first = sqlx::query!(
            "SELECT id, job_id, status FROM emails WHERE tenant_id = $1 AND idempotency_key = $2",
            tenant.id,
            key
        )
        .fetch_one(&state.db)
        .await?;
        // A first request that died between its row and its job: queue the job now.
        let job_id = match first.job_id {
            Some(job_id) => job_id,
            None => {
                let job_id = jobs::enqueue(&state.queues, [send_job(tenant.id, first.id)])
                    .await?
                    .remove(0)
                    .id;
                record_job(&state, first.id, &job_id).await;
                job_id
            }
        };
        return Ok((
            StatusCode::OK,
            axum::Json(EmailAccepted {
                email_id: first.id,
                job_id,
                status: first.status,
            }),
        ));
    }
    let job_id = jobs::enqueue_or_undo(
        &state.queues,
        &state.db,
        send_job(tenant.id, email_id),
        sqlx::query!("DELETE FROM emails WHERE id = $1", email_id),
    )
    .await?;
    record_job(&state, email_id, &job_id).await;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(EmailAccepted {
            email_id,
            job_id,
            status: "queued".into(),
        }),
    ))
}

/// The send job of a stored email (keyed by the email: queued once however often asked).
fn send_job(tenant_id: Uuid, email_id: Uuid) -> Enqueue<EmailJob> {
    let job = EmailJob::Requested {
        tenant_id,
        email_id,
    };
    Enqueue::new(&job).key(format!("email:{email_id}"))
}

/// Records the job that sends a stored email. Once the job is queued the email is accepted, so
/// a failure here is logged, not answered: the row is the record and the job is on its way (the
/// worker records its id when it claims the send, and a repeated request finds the job by its
/// key). Answering 503 here told a client "not accepted" about an email that went out.
async fn record_job(state: &AppState, email_id: Uuid, job_id: &str) {
    let recorded = sqlx::query!(
        "UPDATE emails SET job_id = $2 WHERE id = $1",
        email_id,
        job_id
    )
    .execute(&state.db)
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, %email_id, job_id, "email accepted; recording its job id failed");
    }
}

/// An email's delivery status.
#[utoipa::path(get, path = "/v1/emails/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = EmailRecord), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(email_id = %id))]
pub async fn get_email(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<EmailRecord>> {
    let not_found = || Error::NotFound(format!("no email '{id}'"));
    let email_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let record = sqlx::query_as!(
        EmailRecord,
        r#"SELECT id, kind, recipient AS "to", subject, status, attempts, smtp_reply, last_error,
                  message_id, job_id, created_at, sent_at
           FROM emails WHERE id = $1 AND tenant_id = $2"#,
        email_id,
        tenant.id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(not_found)?;
    Ok(axum::Json(record))
}

/// An email's delivery record, for `GET /v1/emails/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EmailRecord {
    pub id: Uuid,
    pub kind: String,
    pub to: String,
    pub subject: String,
    /// queued, sent or failed.
    pub status: String,
    pub attempts: i32,
    pub smtp_reply: Option<String>,
    pub last_error: Option<String>,
    pub message_id: String,
    pub job_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}
