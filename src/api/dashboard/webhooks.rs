//! Dashboard page of webhook deliveries: every tenant's endpoints with their health, the latest
//! deliveries (by tenant, status, failing endpoints only), and a replay button — the same replay
//! as `POST /v1/webhooks/deliveries/{id}/retry`.

use crate::api::AppState;
use crate::api::error::{Error, Result};
use crate::api::operators::audit::{self, Change};
use crate::api::webhooks::replay;
use axum::extract::{Form, Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use std::collections::HashMap;
use uuid::Uuid;

use super::{Signed, back, checked, page, time};

/// Rows shown per table.
const SHOWN: i64 = 100;

#[derive(Deserialize, Default)]
pub(super) struct Filters {
    /// A tenant's slug.
    tenant: Option<String>,
    /// `pending`, `delivered` or `failed`.
    status: Option<String>,
    /// Any value: only endpoints failing or disabled by the platform, and their deliveries.
    failing: Option<String>,
    flash: Option<String>,
}

pub(super) async fn webhooks_page(
    State(state): State<AppState>,
    Signed(s, _): Signed,
    Query(f): Query<Filters>,
) -> Result<Response> {
    let tenant = f.tenant.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let status = f
        .status
        .as_deref()
        .filter(|s| ["pending", "delivered", "failed"].contains(s));
    let failing = f.failing.as_deref().is_some_and(|v| !v.is_empty());
    let endpoints: Vec<minijinja::Value> = sqlx::query!(
        r#"SELECT p.id, t.slug, p.url, p.description, p.enabled, p.disabled_reason, p.failing_since,
                  c.delivered AS "delivered!", c.failed AS "failed!", c.pending AS "pending!"
           FROM webhook_endpoints p JOIN tenants t ON t.id = p.tenant_id
           CROSS JOIN LATERAL (
               SELECT count(*) FILTER (WHERE status = 'delivered' AND recent) AS delivered,
                      count(*) FILTER (WHERE status = 'failed' AND recent) AS failed,
                      count(*) FILTER (WHERE status = 'pending') AS pending
               FROM (SELECT status, created_at > now() - interval '1 day' AS recent
                     FROM webhook_deliveries d WHERE d.endpoint_id = p.id) d) c
           WHERE ($1::text IS NULL OR t.slug = $1)
             AND (NOT $2 OR p.failing_since IS NOT NULL OR p.disabled_at IS NOT NULL)
           ORDER BY p.failing_since NULLS LAST, t.slug, p.created_at
           LIMIT $3"#,
        tenant,
        failing,
        SHOWN
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| {
        minijinja::context! {
            id => r.id.to_string(), tenant => r.slug, url => r.url, description => r.description,
            enabled => r.enabled, disabled_reason => r.disabled_reason,
            failing_since => r.failing_since.map(time), delivered => r.delivered,
            failed => r.failed, pending => r.pending,
        }
    })
    .collect();
    let deliveries: Vec<minijinja::Value> = sqlx::query!(
        r#"SELECT d.id, t.slug, p.url, d.event_type, d.event_id, d.status, d.attempts,
                  d.response_status, d.latency_ms, d.last_error, d.created_at, d.last_attempt_at
           FROM webhook_deliveries d
           JOIN tenants t ON t.id = d.tenant_id
           JOIN webhook_endpoints p ON p.id = d.endpoint_id
           WHERE ($1::text IS NULL OR t.slug = $1) AND ($2::text IS NULL OR d.status = $2)
             AND (NOT $3 OR p.failing_since IS NOT NULL OR p.disabled_at IS NOT NULL)
           ORDER BY d.created_at DESC, d.id DESC
           LIMIT $4"#,
        tenant,
        status,
        failing,
        SHOWN
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| {
        minijinja::context! {
            id => r.id.to_string(), tenant => r.slug, url => r.url, event_type => r.event_type,
            event_id => r.event_id, status => r.status, attempts => r.attempts,
            response_status => r.response_status, latency_ms => r.latency_ms,
            error => r.last_error.unwrap_or_default(), created_at => time(r.created_at),
            last_attempt_at => r.last_attempt_at.map(time),
        }
    })
    .collect();
    page(
        "webhooks.html",
        minijinja::context! {
            title => "Webhooks", nav => "webhooks", csrf => s.csrf, flash => f.flash,
            tenant => tenant.unwrap_or(""), status => status.unwrap_or(""), failing,
            statuses => ["pending", "delivered", "failed"], endpoints, deliveries,
        },
    )
}

/// Replays one delivery (of any tenant: the admin's view), then back to the page it came from.
pub(super) async fn replay_delivery(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let to = form
        .get("back")
        .filter(|b| b.starts_with("/admin/webhooks"))
        .map(String::as_str)
        .unwrap_or("/admin/webhooks");
    let id = Uuid::parse_str(&id).map_err(|_| Error::NotFound(format!("no delivery '{id}'")))?;
    let tenant = sqlx::query_scalar!("SELECT tenant_id FROM webhook_deliveries WHERE id = $1", id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no delivery '{id}'")))?;
    Ok(match replay(&state, tenant, id).await {
        Ok(_) => {
            let change = Change::new("webhook_delivery.replay", id.to_string())
                .tenant(Some(tenant))
                .after(serde_json::json!({ "status": "pending" }));
            audit::record_alone(&state, &actor, change).await?;
            back(to, "Delivery queued again.")
        }
        Err(Error::Conflict { detail, .. }) => back(to, &format!("Not possible: {detail}.")),
        Err(e) => return Err(e),
    })
}
