//! A tenant's webhook endpoints and their deliveries (`/v1/webhooks/...`); the deliveries
//! themselves are the `webhooks` kind (`jobs::webhooks`).
//!
//! Bounds: at most `MAX_ENDPOINTS` endpoints per tenant (409 past it), URLs of at most 2,048
//! characters on public addresses (unless `BACKROOM_WEBHOOKS_ALLOW_PRIVATE`), at most 20 event
//! types per endpoint, descriptions of at most 500 characters. A secret is shown once, when it is
//! made; a rotation keeps the old one signing for `grace_hours` (default 24, at most 168).

use super::AppState;
use super::error::{Error, Result};
use super::extract::{FieldErrors, Json, Query, Tenant};
use super::pagination::{Page, PageParams};
use crate::domain::clean_text;
use crate::jobs::webhooks::events::EventType;
use crate::jobs::webhooks::{DeliverWebhook, MAX_ENDPOINTS, sign, target};
use crate::jobs::{self, Enqueue};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

const MAX_EVENT_TYPES: usize = 20;
const MAX_DESCRIPTION: usize = 500;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointInput {
    /// Where deliveries are POSTed: `https://…` (or `http://…`).
    url: String,
    /// The event types it wants; omitted or empty: every type.
    event_types: Option<Vec<String>>,
    description: Option<String>,
    /// Default true.
    enabled: Option<bool>,
}

/// A change to an endpoint: only the fields given change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointChange {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    description: Option<String>,
    /// Enabling an endpoint the platform disabled (410 Gone) clears the reason.
    enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointView {
    id: Uuid,
    url: String,
    description: String,
    /// Empty: every type.
    event_types: Vec<String>,
    enabled: bool,
    /// Why the platform disabled it (a `410 Gone`, or failing for days), if it did.
    disabled_reason: Option<String>,
    /// When the platform disabled it, if it did.
    disabled_at: Option<DateTime<Utc>>,
    /// Since when no attempt has succeeded (absent while the last attempt succeeded).
    failing_since: Option<DateTime<Utc>>,
    /// While a rotated-out secret still signs alongside the new one: until when.
    previous_secret_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A new endpoint, with its signing secret: shown this once.
#[derive(Serialize, ToSchema)]
pub struct EndpointCreated {
    endpoint: EndpointView,
    /// `whsec_…`: verify deliveries with it (Standard Webhooks).
    secret: String,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// How long the old secret keeps signing alongside the new one (default 24, at most 168).
    grace_hours: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct SecretRotated {
    /// The new secret, shown this once.
    secret: String,
    previous_secret_until: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    id: Uuid,
    endpoint_id: Uuid,
    /// The event's id: the `webhook-id` header of every attempt.
    event_id: String,
    event_type: String,
    /// `pending`, `delivered` or `failed`.
    status: String,
    attempts: i32,
    /// The receiver's status code on the last attempt (none when no answer came).
    response_status: Option<i32>,
    last_error: Option<String>,
    latency_ms: Option<i32>,
    /// The start of the receiver's last answer (at most 2,048 characters).
    response_excerpt: Option<String>,
    created_at: DateTime<Utc>,
    last_attempt_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryFilter {
    endpoint_id: Option<String>,
    event_type: Option<String>,
    /// `pending`, `delivered` or `failed`.
    status: Option<String>,
    /// Items per page, 1..=500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The body of every webhook delivery, POSTed to the tenant's endpoint (documented here; not
/// served). Headers: `webhook-id` (= `id`, the same on every attempt), `webhook-timestamp` (Unix
/// seconds), `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per secret in
/// use, space-separated; Standard Webhooks). `data` by type:
/// - `stock.adjusted`: `sku`, `delta`, `reason`, `on_hand_after`, `idempotency_key`,
///   `reference`, `movement_id`, `occurred_at`
/// - `stock.low`: `sku`, `on_hand`, `reorder_point`, `idempotency_key` (of the adjustment)
/// - `invoice.ready`: `invoice_id`, `order_id`, `number`, `total`, `currency`, `pdf_url`
/// - `invoice.failed`: `invoice_id`, `order_id`, `reason`
/// - `email.sent`: `email_id`, `kind`, `to`, `message_id`
/// - `email.failed`: `email_id`, `kind`, `to`, `error`
/// - `job.succeeded` / `job.failed` / `job.dead`: `job_id`, `queue`, `kind`, `status`,
///   `attempts`, `max_attempts`, and `result` (succeeded) or `error`
/// - `import.finished`: `import_id`, `status` (`loaded` or `failed`), `rows`, `rows_loaded`,
///   `rows_rejected`, `days_written`, `skus`, `first_day`, `last_day`, `error`
/// - `forecast.run.finished`: `run_id`, `status` (`succeeded` or `failed`), `trigger`,
///   `skus_total`, `models` (SKUs per chosen model), `reorder` (`sku`, `on_hand`,
///   `reorder_point`, `order_quantity`, `stockout_date`; most urgent first, at most 100),
///   `reorder_count`, `error`
#[derive(Serialize, ToSchema)]
pub struct WebhookEvent {
    r#type: WebhookEventType,
    /// `msg_…`: the event's id, also its `webhook-id`.
    id: String,
    created_at: DateTime<Utc>,
    /// The version of this shape (1).
    version: u32,
    data: serde_json::Value,
}

/// The event types (the same list as `jobs::webhooks::events::EventType`; a test checks it).
#[derive(Serialize, ToSchema)]
pub enum WebhookEventType {
    #[serde(rename = "stock.adjusted")]
    StockAdjusted,
    #[serde(rename = "stock.low")]
    StockLow,
    #[serde(rename = "invoice.ready")]
    InvoiceReady,
    #[serde(rename = "invoice.failed")]
    InvoiceFailed,
    #[serde(rename = "email.sent")]
    EmailSent,
    #[serde(rename = "email.failed")]
    EmailFailed,
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.dead")]
    JobDead,
    #[serde(rename = "import.finished")]
    ImportFinished,
    #[serde(rename = "forecast.run.finished")]
    ForecastRunFinished,
    #[serde(rename = "group.completed")]
    GroupCompleted,
}

/// Checks event type names: known, at most 20, each once.
fn event_types(raw: &[String]) -> std::result::Result<Vec<String>, String> {
    if raw.len() > MAX_EVENT_TYPES {
        return Err(format!("at most {MAX_EVENT_TYPES} event types"));
    }
    let mut types = vec![];
    for name in raw {
        let t = EventType::parse(name)
            .ok_or_else(|| format!("'{name}' is not an event type ({})", EventType::names()))?;
        if !types.contains(&t.name().to_string()) {
            types.push(t.name().to_string());
        }
    }
    Ok(types)
}

fn endpoint_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| Error::NotFound(format!("no webhook endpoint '{raw}'")))
}

/// Creates an endpoint; its secret is in the answer, and only there.
#[utoipa::path(post, path = "/v1/webhooks/endpoints", tag = "tenant", security(("tenant_key" = [])),
    request_body = EndpointInput,
    responses((status = 201, body = EndpointCreated),
        (status = 409, description = "The tenant has the most endpoints allowed", body = super::error::Problem),
        (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn create_endpoint(
    tenant: Tenant,
    State(state): State<AppState>,
    Json(body): Json<EndpointInput>,
) -> Result<(StatusCode, axum::Json<EndpointCreated>)> {
    let mut errors = FieldErrors::default();
    let allow_private = state.settings.webhooks.allow_private;
    let url = errors.check("url", target::check_url(&body.url, allow_private));
    let types = errors.check(
        "event_types",
        event_types(body.event_types.as_deref().unwrap_or_default()),
    );
    let description = match body.description.as_deref() {
        None | Some("") => Some(String::new()),
        Some(d) => errors.check("description", clean_text(d, MAX_DESCRIPTION)),
    };
    errors.finish()?;
    let (url, types) = (url.expect("checked"), types.expect("checked"));
    let secret = sign::new_secret();
    let id = Uuid::now_v7();
    // Counted and inserted under the tenant's row lock, so two creations cannot both pass the cap.
    let mut tx = state.db.begin().await?;
    sqlx::query!("SELECT id FROM tenants WHERE id = $1 FOR UPDATE", tenant.id)
        .fetch_one(&mut *tx)
        .await?;
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM webhook_endpoints WHERE tenant_id = $1"#,
        tenant.id
    )
    .fetch_one(&mut *tx)
    .await?;
    if count >= MAX_ENDPOINTS {
        return Err(Error::Conflict {
            detail: format!("a tenant may have at most {MAX_ENDPOINTS} webhook endpoints"),
            field: None,
        });
    }
    let endpoint = sqlx::query_as!(
        EndpointView,
        r#"INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, enabled, secret)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING id, url, description, event_types, enabled, disabled_reason, disabled_at, failing_since,
                     previous_secret_until, created_at, updated_at"#,
        id,
        tenant.id,
        url.as_str(),
        description.expect("checked"),
        &types,
        body.enabled.unwrap_or(true),
        secret
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(EndpointCreated { endpoint, secret }),
    ))
}

/// The tenant's endpoints (without secrets), oldest first.
#[utoipa::path(get, path = "/v1/webhooks/endpoints", tag = "tenant", security(("tenant_key" = [])),
    responses((status = 200, body = Vec<EndpointView>)))]
#[tracing::instrument(skip_all)]
pub async fn list_endpoints(
    tenant: Tenant,
    State(state): State<AppState>,
) -> Result<axum::Json<Vec<EndpointView>>> {
    let rows = sqlx::query_as!(
        EndpointView,
        r#"SELECT id, url, description, event_types, enabled, disabled_reason, disabled_at, failing_since,
                  previous_secret_until, created_at, updated_at
           FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY created_at, id"#,
        tenant.id
    )
    .fetch_all(&state.db)
    .await?;
    Ok(axum::Json(rows))
}

/// One endpoint (without its secret).
#[utoipa::path(get, path = "/v1/webhooks/endpoints/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = EndpointView), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn get_endpoint(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<EndpointView>> {
    let id = endpoint_id(&id)?;
    sqlx::query_as!(
        EndpointView,
        r#"SELECT id, url, description, event_types, enabled, disabled_reason, disabled_at, failing_since,
                  previous_secret_until, created_at, updated_at
           FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2"#,
        id,
        tenant.id
    )
    .fetch_optional(&state.db)
    .await?
    .map(axum::Json)
    .ok_or_else(|| Error::NotFound(format!("no webhook endpoint '{id}'")))
}

/// Changes an endpoint's URL, event types, description or whether it is enabled.
#[utoipa::path(patch, path = "/v1/webhooks/endpoints/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)), request_body = EndpointChange,
    responses((status = 200, body = EndpointView), (status = 404, body = super::error::Problem),
        (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn update_endpoint(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<EndpointChange>,
) -> Result<axum::Json<EndpointView>> {
    let id = endpoint_id(&id)?;
    let mut errors = FieldErrors::default();
    let allow_private = state.settings.webhooks.allow_private;
    let url = match &body.url {
        None => Some(None),
        Some(u) => errors
            .check("url", target::check_url(u, allow_private))
            .map(|u| Some(u.to_string())),
    };
    let types = match &body.event_types {
        None => Some(None),
        Some(t) => errors.check("event_types", event_types(t)).map(Some),
    };
    let description = match body.description.as_deref() {
        None => Some(None),
        Some("") => Some(Some(String::new())),
        Some(d) => errors
            .check("description", clean_text(d, MAX_DESCRIPTION))
            .map(Some),
    };
    errors.finish()?;
    let types = types.expect("checked");
    sqlx::query_as!(
        EndpointView,
        r#"UPDATE webhook_endpoints
           SET url = coalesce($3, url), event_types = coalesce($4, event_types),
               description = coalesce($5, description), enabled = coalesce($6, enabled),
               disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END,
               disabled_at = CASE WHEN $6 THEN NULL ELSE disabled_at END,
               failing_since = CASE WHEN $6 AND NOT enabled THEN NULL ELSE failing_since END,
               updated_at = now()
           WHERE id = $1 AND tenant_id = $2
           RETURNING id, url, description, event_types, enabled, disabled_reason, disabled_at, failing_since,
                     previous_secret_until, created_at, updated_at"#,
        id,
        tenant.id,
        url.expect("checked"),
        types.as_deref(),
        description.expect("checked"),
        body.enabled
    )
    .fetch_optional(&state.db)
    .await?
    .map(axum::Json)
    .ok_or_else(|| Error::NotFound(format!("no webhook endpoint '{id}'")))
}

/// Deletes an endpoint and its deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/endpoints/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn delete_endpoint(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let id = endpoint_id(&id)?;
    let deleted = sqlx::query!(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2",
        id,
        tenant.id
    )
    .execute(&state.db)
    .await?;
    if deleted.rows_affected() == 0 {
        return Err(Error::NotFound(format!("no webhook endpoint '{id}'")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a new secret; the old one keeps signing alongside it for the grace period, so the
/// receiver can switch without missing a delivery.
#[utoipa::path(post, path = "/v1/webhooks/endpoints/{id}/rotate-secret", tag = "tenant",
    security(("tenant_key" = [])), params(("id" = String, Path)), request_body = Option<RotateInput>,
    responses((status = 200, body = SecretRotated), (status = 404, body = super::error::Problem),
        (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn rotate_secret(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<axum::Json<SecretRotated>> {
    let id = endpoint_id(&id)?;
    // The body is optional: none (or `{}`) keeps the default grace period.
    let input: RotateInput = if body.iter().all(u8::is_ascii_whitespace) {
        RotateInput::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(format!("the body is not a rotation: {e}")))?
    };
    let grace = input.grace_hours.unwrap_or(24);
    if grace > 168 {
        return Err(Error::invalid("grace_hours", "must be at most 168"));
    }
    let secret = sign::new_secret();
    let until = Utc::now() + chrono::Duration::hours(i64::from(grace));
    let rotated = sqlx::query!(
        "UPDATE webhook_endpoints
         SET previous_secret = secret, previous_secret_until = $3, secret = $4, updated_at = now()
         WHERE id = $1 AND tenant_id = $2",
        id,
        tenant.id,
        until,
        secret
    )
    .execute(&state.db)
    .await?;
    if rotated.rows_affected() == 0 {
        return Err(Error::NotFound(format!("no webhook endpoint '{id}'")));
    }
    Ok(axum::Json(SecretRotated {
        secret,
        previous_secret_until: until,
    }))
}

/// The tenant's deliveries, newest first, filtered by endpoint, event type and status.
#[utoipa::path(get, path = "/v1/webhooks/deliveries", tag = "tenant", security(("tenant_key" = [])),
    params(DeliveryFilter),
    responses((status = 200, body = Page<DeliveryView>), (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn list_deliveries(
    tenant: Tenant,
    State(state): State<AppState>,
    Query(filter): Query<DeliveryFilter>,
) -> Result<axum::Json<Page<DeliveryView>>> {
    let mut errors = FieldErrors::default();
    let page = PageParams {
        limit: filter.limit.clone(),
        cursor: filter.cursor.clone(),
    }
    .parse_into(&mut errors);
    let endpoint = match filter.endpoint_id.as_deref() {
        None | Some("") => Some(None),
        Some(raw) => errors
            .check(
                "endpoint_id",
                Uuid::parse_str(raw).map_err(|_| "is not an endpoint id".into()),
            )
            .map(Some),
    };
    let event_type = match filter.event_type.as_deref() {
        None | Some("") => Some(None),
        Some(raw) => errors
            .check("event_type", event_types(&[raw.to_string()]))
            .map(|t| t.into_iter().next()),
    };
    let status = match filter.status.as_deref() {
        None | Some("") => Some(None),
        Some(s @ ("pending" | "delivered" | "failed")) => Some(Some(s.to_string())),
        Some(_) => errors
            .check::<Option<String>>("status", Err("must be pending, delivered or failed".into())),
    };
    errors.finish()?;
    let page = page.expect("checked");
    let before = match page.after.as_deref() {
        Some(raw) => Some(
            Uuid::parse_str(raw)
                .map_err(|_| Error::invalid("cursor", "is not a cursor from this API"))?,
        ),
        None => None,
    };
    let rows = sqlx::query_as!(
        DeliveryView,
        r#"SELECT id, endpoint_id, event_id, event_type, status, attempts, response_status,
                  last_error, latency_ms, response_excerpt, created_at, last_attempt_at,
                  delivered_at
           FROM webhook_deliveries
           WHERE tenant_id = $1 AND ($2::uuid IS NULL OR endpoint_id = $2)
             AND ($3::text IS NULL OR event_type = $3) AND ($4::text IS NULL OR status = $4)
             AND ($5::uuid IS NULL OR id < $5)
           ORDER BY id DESC LIMIT $6"#,
        tenant.id,
        endpoint.expect("checked"),
        event_type.expect("checked"),
        status.expect("checked"),
        before,
        page.limit + 1
    )
    .fetch_all(&state.db)
    .await?;
    Ok(axum::Json(Page::from_rows(rows, page.limit, |d| {
        d.id.to_string()
    })))
}

/// Delivers again: a failed delivery gets one more attempt (and the retries after it), a
/// delivered one is sent once more under the same `webhook-id`.
#[utoipa::path(post, path = "/v1/webhooks/deliveries/{id}/retry", tag = "tenant",
    security(("tenant_key" = [])), params(("id" = String, Path)),
    responses((status = 202, body = DeliveryView), (status = 404, body = super::error::Problem),
        (status = 409, description = "The delivery is still pending", body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn retry_delivery(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<DeliveryView>)> {
    let id =
        Uuid::parse_str(&id).map_err(|_| Error::NotFound(format!("no webhook delivery '{id}'")))?;
    let view = replay(&state, tenant.id, id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)))
}

/// Queues a delivery that has ended (delivered or failed) again, with a fresh count of
/// attempts; the tenant's API and the dashboard's replay button both come here. `Conflict` while
/// the delivery is still pending.
pub(crate) async fn replay(state: &AppState, tenant_id: Uuid, id: Uuid) -> Result<DeliveryView> {
    let current = sqlx::query_scalar!(
        "SELECT status FROM webhook_deliveries WHERE id = $1 AND tenant_id = $2",
        id,
        tenant_id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no webhook delivery '{id}'")))?;
    if current == "pending" {
        return Err(Error::Conflict {
            detail: "the delivery is still pending: its next attempt is queued".into(),
            field: None,
        });
    }
    // Back to pending with a fresh count, then queued; if Redis refuses the job, the delivery
    // goes back to what it was (nothing half-done).
    let view = sqlx::query_as!(
        DeliveryView,
        r#"UPDATE webhook_deliveries SET status = 'pending', attempts = 0
           WHERE id = $1 AND tenant_id = $2 AND status <> 'pending'
           RETURNING id, endpoint_id, event_id, event_type, status, attempts, response_status,
                     last_error, latency_ms, response_excerpt, created_at, last_attempt_at,
                     delivered_at"#,
        id,
        tenant_id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::Conflict {
        detail: "the delivery is still pending: its next attempt is queued".into(),
        field: None,
    })?;
    let job = DeliverWebhook {
        tenant_id,
        delivery_id: id,
    };
    if let Err(e) = jobs::enqueue(&state.queues, [Enqueue::new(&job)]).await {
        sqlx::query!(
            "UPDATE webhook_deliveries SET status = $3 WHERE id = $1 AND tenant_id = $2",
            id,
            tenant_id,
            current
        )
        .execute(&state.db)
        .await?;
        return Err(e.into());
    }
    Ok(view)
}
