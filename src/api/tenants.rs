//! Tenants and their API keys (admin), and `GET /v1/me` (the tenant a key belongs to).
//!
//! A key is shown exactly once, in the response that creates it; the database keeps its hash.
//! Rotation adds a key without revoking the old ones, so a tenant can roll keys over with no
//! downtime and revoke the old key when every client has moved.

use super::AppState;
use super::error::{Error, Result, on_constraint};
use super::extract::{Admin, FieldErrors, Json, Query, Tenant};
use super::operators::Actor;
use super::operators::audit::{self, Change};
use super::pagination::{Page, PageParams};
use crate::domain::{ApiKey, EmailAddress, TenantName, TenantSlug, TimeZoneName};
use crate::jobs::Queue;
use crate::queue::{TenantQueueState, TenantRules};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Display name, 1..=200 characters.
    name: String,
    /// URL-safe handle: 2..=63 of `a-z`, `0-9`, `-`.
    slug: String,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedTenant {
    id: Uuid,
    slug: String,
    name: String,
    /// Shown once; store it now.
    api_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct TenantView {
    id: Uuid,
    slug: String,
    name: String,
    alert_email: Option<String>,
    timezone: String,
    active: bool,
    created_at: DateTime<Utc>,
}

/// Settings to change; absent fields stay as they are, `alert_email: null` clears the address.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    alert_email: Option<Option<String>>,
    timezone: Option<String>,
    active: Option<bool>,
    /// Per queue, the most of this tenant's jobs that run at once across every worker (0: no
    /// limit; `null`: back to the queue's default, `BACKROOM_TENANT_CONCURRENCY`). Queues not
    /// named keep their current rule.
    #[schema(value_type = Option<Object>, example = json!({"invoices": 2, "forecasts": null}))]
    queue_limits: Option<BTreeMap<String, Option<u32>>>,
    /// Per queue, the most of this tenant's jobs that start per second across every worker, with
    /// a burst of one second's worth (0: no rate; `null`: back to the queue's default,
    /// `BACKROOM_TENANT_JOB_RATES`). Queues not named keep their current rule.
    #[schema(value_type = Option<Object>, example = json!({"stock": 500, "invoices": null}))]
    queue_rates: Option<BTreeMap<String, Option<f64>>>,
    /// The queues this tenant is paused on (the whole list; `[]` resumes every queue). Paused
    /// jobs stay queued and show as `paused`; other tenants' jobs flow.
    paused_queues: Option<Vec<String>>,
}

/// The most a per-tenant queue limit may be.
pub const MAX_QUEUE_LIMIT: u32 = 100_000;

/// The range of a per-tenant job rate (jobs per second), besides 0 for none.
pub const QUEUE_RATES: std::ops::RangeInclusive<f64> = 0.001..=1_000_000.0;

/// Whether `rate` may be a tenant's job rate: 0 (none) or within `QUEUE_RATES`.
pub fn is_valid_rate(rate: f64) -> bool {
    rate == 0.0 || QUEUE_RATES.contains(&rate)
}

/// Tells "absent" (`None`) from "null" (`Some(None)`).
fn double_option<'de, D, T>(de: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

#[derive(Serialize, ToSchema)]
pub struct CreatedApiKey {
    id: Uuid,
    /// Shown once; store it now.
    api_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    id: Uuid,
    /// The key's first characters, to tell keys apart.
    prefix: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    id: Uuid,
    slug: String,
    name: String,
}

/// Creates a tenant and its first API key.
#[utoipa::path(post, path = "/admin/v1/tenants", tag = "admin", security(("admin_token" = [])),
    request_body = NewTenant,
    responses(
        (status = 201, body = CreatedTenant),
        (status = 409, description = "The slug is taken", body = super::error::Problem),
        (status = 422, body = super::error::Problem),
    ))]
#[tracing::instrument(skip_all)]
pub async fn create_tenant(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Json(body): Json<NewTenant>,
) -> Result<(StatusCode, axum::Json<CreatedTenant>)> {
    let mut errors = FieldErrors::default();
    let name = errors.check("name", TenantName::parse(&body.name));
    let slug = errors.check("slug", TenantSlug::parse(&body.slug));
    errors.finish()?;
    let (name, slug) = (name.expect("checked"), slug.expect("checked"));
    let created = create_tenant_with_key(&state.db, &actor, &slug, &name)
        .await
        .map_err(|e| {
            on_constraint(e, "tenants_slug_key", || Error::Conflict {
                detail: format!("a tenant with slug '{}' exists", slug.as_str()),
                field: Some("slug".into()),
            })
        })?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Inserts a tenant, a first key and the audit row in one transaction (also used by `backroom
/// tenant create`).
pub async fn create_tenant_with_key(
    db: &sqlx::PgPool,
    actor: &Actor,
    slug: &TenantSlug,
    name: &TenantName,
) -> std::result::Result<CreatedTenant, sqlx::Error> {
    let id = Uuid::now_v7();
    let key = ApiKey::generate();
    let mut tx = db.begin().await?;
    sqlx::query!(
        "INSERT INTO tenants (id, slug, name) VALUES ($1, $2, $3)",
        id,
        slug.as_str(),
        name.as_str()
    )
    .execute(&mut *tx)
    .await?;
    let key_id = insert_key(&mut tx, id, &key).await?;
    let change = Change::new("tenant.create", slug.as_str())
        .tenant(Some(id))
        .after(json!({ "name": name.as_str(), "api_key": key_id, "prefix": key.display_prefix() }));
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(CreatedTenant {
        id,
        slug: slug.as_str().into(),
        name: name.as_str().into(),
        api_key: key.expose().into(),
    })
}

impl CreatedTenant {
    pub fn api_key(&self) -> &str {
        &self.api_key
    }
}

/// Adds a key to a tenant with its audit row, inside `tx`; returns the key's id and the key.
pub async fn add_key(
    tx: &mut sqlx::PgConnection,
    actor: &Actor,
    tenant_id: Uuid,
    slug: &str,
) -> std::result::Result<(Uuid, ApiKey), sqlx::Error> {
    let key = ApiKey::generate();
    let id = insert_key(tx, tenant_id, &key).await?;
    let change = Change::new("api_key.create", id.to_string())
        .tenant(Some(tenant_id))
        .after(json!({ "tenant": slug, "prefix": key.display_prefix() }));
    audit::record(tx, actor, change).await?;
    Ok((id, key))
}

/// Stores a new key for a tenant and returns its id.
pub async fn insert_key(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    key: &ApiKey,
) -> std::result::Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    let hash = key.hash();
    sqlx::query!(
        "INSERT INTO api_keys (id, tenant_id, key_hash, prefix) VALUES ($1, $2, $3, $4)",
        id,
        tenant_id,
        hash.as_bytes(),
        key.display_prefix()
    )
    .execute(tx)
    .await?;
    Ok(id)
}

/// Lists tenants, oldest first.
#[utoipa::path(get, path = "/admin/v1/tenants", tag = "admin", security(("admin_token" = [])),
    params(PageParams),
    responses((status = 200, body = Page<TenantView>)))]
#[tracing::instrument(skip_all)]
pub async fn list_tenants(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<Page<TenantView>>> {
    let page = params.parse()?;
    let after = match page.after.as_deref() {
        Some(raw) => Some(
            Uuid::parse_str(raw)
                .map_err(|_| Error::invalid("cursor", "is not a cursor from this API"))?,
        ),
        None => None,
    };
    let rows = sqlx::query_as!(
        TenantView,
        r#"SELECT id, slug, name, alert_email, timezone, active, created_at
           FROM tenants
           WHERE ($1::uuid IS NULL OR id > $1) AND ($3::uuid[] IS NULL OR id = ANY($3))
           ORDER BY id LIMIT $2"#,
        after,
        page.limit + 1,
        actor.tenant_scope()
    )
    .fetch_all(&state.db)
    .await?;
    Ok(axum::Json(Page::from_rows(rows, page.limit, |t| {
        t.id.to_string()
    })))
}

/// Changes a tenant's settings.
#[utoipa::path(patch, path = "/admin/v1/tenants/{slug}", tag = "admin",
    security(("admin_token" = [])), request_body = TenantPatch,
    params(("slug" = String, Path)),
    responses(
        (status = 200, body = TenantView),
        (status = 404, body = super::error::Problem),
        (status = 422, body = super::error::Problem),
        (status = 503, body = super::error::Problem),
    ))]
#[tracing::instrument(skip_all)]
pub async fn update_tenant(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Json(body): Json<TenantPatch>,
) -> Result<axum::Json<TenantView>> {
    let mut errors = FieldErrors::default();
    let name = body
        .name
        .as_deref()
        .and_then(|n| errors.check("name", TenantName::parse(n)));
    let alert_email = match &body.alert_email {
        None => None,
        Some(None) => Some(None),
        Some(Some(raw)) => errors
            .check("alert_email", EmailAddress::parse(raw))
            .map(Some),
    };
    let timezone = body
        .timezone
        .as_deref()
        .and_then(|t| errors.check("timezone", TimeZoneName::parse(t)));
    for (queue, limit) in body.queue_limits.iter().flatten() {
        if Queue::parse(queue).is_none() {
            errors.push(
                &format!("queue_limits.{queue}"),
                format!("is not a queue (one of: {})", Queue::names()),
            );
        } else if limit.is_some_and(|n| n > MAX_QUEUE_LIMIT) {
            errors.push(
                &format!("queue_limits.{queue}"),
                format!("must be at most {MAX_QUEUE_LIMIT}"),
            );
        }
    }
    for (queue, rate) in body.queue_rates.iter().flatten() {
        if Queue::parse(queue).is_none() {
            errors.push(
                &format!("queue_rates.{queue}"),
                format!("is not a queue (one of: {})", Queue::names()),
            );
        } else if rate.is_some_and(|r| !is_valid_rate(r)) {
            errors.push(
                &format!("queue_rates.{queue}"),
                format!(
                    "must be 0 (no rate) or from {} to {} jobs per second",
                    QUEUE_RATES.start(),
                    QUEUE_RATES.end()
                ),
            );
        }
    }
    for (i, queue) in body.paused_queues.iter().flatten().enumerate() {
        if Queue::parse(queue).is_none() {
            errors.push(
                &format!("paused_queues[{i}]"),
                format!("is not a queue (one of: {})", Queue::names()),
            );
        }
    }
    errors.finish()?;
    let new_alert_email = alert_email.clone().flatten();
    let mut tx = state.db.begin().await?;
    let before = sqlx::query_as!(
        TenantView,
        "SELECT id, slug, name, alert_email, timezone, active, created_at
         FROM tenants WHERE slug = $1 FOR UPDATE",
        slug
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let row = sqlx::query_as!(
        TenantView,
        r#"UPDATE tenants SET
             name = COALESCE($2, name),
             alert_email = CASE WHEN $3 THEN $4 ELSE alert_email END,
             timezone = COALESCE($5, timezone),
             active = COALESCE($6, active),
             updated_at = now()
           WHERE slug = $1
           RETURNING id, slug, name, alert_email, timezone, active, created_at"#,
        slug,
        name.as_ref().map(TenantName::as_str),
        alert_email.is_some(),
        new_alert_email.as_ref().map(EmailAddress::as_str),
        timezone.as_ref().map(TimeZoneName::as_str),
        body.active
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let mut change = Change::new("tenant.update", slug.as_str())
        .tenant(Some(row.id))
        .before(json!(before))
        .after(json!(row));
    if body.queue_limits.is_some() || body.queue_rates.is_some() || body.paused_queues.is_some() {
        let change_to = RulesEdit {
            limits: body.queue_limits.clone().unwrap_or_default(),
            rates: body.queue_rates.clone().unwrap_or_default(),
        };
        let paused = body.paused_queues.clone();
        let rules = change_queue_rules(&mut tx, &state.queues, row.id, &change_to, |current| {
            paused.unwrap_or(current)
        })
        .await?;
        change = change
            .before(json!({ "tenant": before, "rules": rules.before }))
            .after(json!({ "tenant": row, "rules": rules.after }));
    }
    audit::record(&mut tx, &actor, change).await?;
    tx.commit().await?;
    state.lookups.clear();
    Ok(axum::Json(row))
}

/// A tenant's per-queue rules before and after a change, for the audit log.
pub struct RulesChange {
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

/// Per queue, a tenant's limits and rates to set (`Some`) or return to the default (`None`);
/// queues not named keep theirs.
#[derive(Debug, Default)]
pub struct RulesEdit {
    pub limits: BTreeMap<String, Option<u32>>,
    pub rates: BTreeMap<String, Option<f64>>,
}

/// Applies `edit` to a tenant's own values, by queue.
fn edited<T: Clone>(current: &mut BTreeMap<String, T>, edit: &BTreeMap<String, Option<T>>) {
    for (queue, value) in edit {
        match value {
            Some(v) => current.insert(queue.clone(), v.clone()),
            None => current.remove(queue),
        };
    }
}

/// Changes a tenant's per-queue rules inside `tx` (which the caller commits): `edit` sets or
/// resets the named queues' limits and rates, `paused` maps the paused list to the new one.
/// Redis is told before the commit, so a Redis that cannot be told changes nothing (503). The
/// JSON admin API and the dashboard both change rules here.
pub async fn change_queue_rules(
    tx: &mut sqlx::PgConnection,
    queues: &crate::queue::Queues,
    tenant: Uuid,
    edit: &RulesEdit,
    paused: impl FnOnce(Vec<String>) -> Vec<String>,
) -> Result<RulesChange> {
    let current = sqlx::query!(
        "SELECT queue_limits, queue_rates, paused_queues FROM tenants WHERE id = $1 FOR UPDATE",
        tenant
    )
    .fetch_one(&mut *tx)
    .await?;
    let before = json!({ "queue_limits": current.queue_limits, "queue_rates": current.queue_rates,
        "paused_queues": current.paused_queues });
    let mut rules = TenantRules {
        limits: serde_json::from_value(current.queue_limits).unwrap_or_default(),
        rates: serde_json::from_value(current.queue_rates).unwrap_or_default(),
        paused: paused(current.paused_queues.clone()),
    };
    edited(&mut rules.limits, &edit.limits);
    edited(&mut rules.rates, &edit.rates);
    rules.paused.sort();
    rules.paused.dedup();
    sqlx::query!(
        "UPDATE tenants SET queue_limits = $2, queue_rates = $3, paused_queues = $4 WHERE id = $1",
        tenant,
        serde_json::to_value(&rules.limits).expect("limits serialize"),
        serde_json::to_value(&rules.rates).expect("rates serialize"),
        &rules.paused
    )
    .execute(&mut *tx)
    .await?;
    queues
        .apply_tenant_rules(&Queue::ALL.map(Queue::id), tenant, &rules)
        .await?;
    Ok(RulesChange {
        before,
        after: json!({ "queue_limits": rules.limits, "queue_rates": rules.rates,
            "paused_queues": rules.paused }),
    })
}

/// A tenant's concurrency limit, pause and load on every queue.
#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/queues", tag = "admin",
    security(("admin_token" = [])), params(("slug" = String, Path)),
    responses((status = 200, body = Vec<TenantQueueState>), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn tenant_queues(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<axum::Json<Vec<TenantQueueState>>> {
    let tenant = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug)
        .fetch_optional(&state.db)
        .await?
        .filter(|id| actor.sees(Some(*id)))
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let mut states = vec![];
    for queue in Queue::ALL {
        states.push(state.queues.tenant_state(&queue.id(), tenant).await?);
    }
    Ok(axum::Json(states))
}

/// Adds an API key to a tenant (rotation: older keys stay valid until revoked).
#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/api-keys", tag = "admin",
    security(("admin_token" = [])), params(("slug" = String, Path)),
    responses((status = 201, body = CreatedApiKey), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn create_api_key(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<(StatusCode, axum::Json<CreatedApiKey>)> {
    let mut tx = state.db.begin().await?;
    let tenant_id = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let (id, key) = add_key(&mut tx, &actor, tenant_id, &slug).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedApiKey {
            id,
            api_key: key.expose().into(),
        }),
    ))
}

/// Lists a tenant's keys (prefixes only).
#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/api-keys", tag = "admin",
    security(("admin_token" = [])), params(("slug" = String, Path)),
    responses((status = 200, body = Vec<ApiKeyView>), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn list_api_keys(
    _: Admin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<axum::Json<Vec<ApiKeyView>>> {
    let tenant_id = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let keys = sqlx::query_as!(
        ApiKeyView,
        "SELECT id, prefix, created_at, revoked_at FROM api_keys WHERE tenant_id = $1 ORDER BY id",
        tenant_id
    )
    .fetch_all(&state.db)
    .await?;
    Ok(axum::Json(keys))
}

/// Revokes an API key at once. Revoking a revoked key is a no-op.
#[utoipa::path(delete, path = "/admin/v1/api-keys/{id}", tag = "admin",
    security(("admin_token" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn revoke_api_key(
    Admin(actor): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let not_found = || Error::NotFound(format!("no API key '{id}'"));
    let key_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let mut tx = state.db.begin().await?;
    let found = sqlx::query!(
        r#"UPDATE api_keys k SET revoked_at = COALESCE(k.revoked_at, now())
           FROM api_keys old WHERE k.id = $1 AND old.id = k.id
           RETURNING k.tenant_id, old.revoked_at AS "was_revoked_at""#,
        key_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    // Revoking a revoked key changes nothing and writes no audit row.
    if let Some(row) = &found
        && row.was_revoked_at.is_none()
    {
        let change = Change::new("api_key.revoke", id.as_str())
            .tenant(Some(row.tenant_id))
            .after(json!({ "revoked": true }));
        audit::record(&mut tx, &actor, change).await?;
    }
    tx.commit().await?;
    // Other processes hear of it from the trigger's NOTIFY; this one forgets at once.
    state.lookups.clear();
    found.map(|_| StatusCode::NO_CONTENT).ok_or_else(not_found)
}

/// The tenant this API key belongs to.
#[utoipa::path(get, path = "/v1/me", tag = "tenant", security(("tenant_key" = [])),
    responses((status = 200, body = Me), (status = 401, body = super::error::Problem)))]
pub async fn me(tenant: Tenant, State(state): State<AppState>) -> Result<axum::Json<Me>> {
    let name = sqlx::query_scalar!("SELECT name FROM tenants WHERE id = $1", tenant.id)
        .fetch_one(&state.db)
        .await?;
    Ok(axum::Json(Me {
        id: tenant.id,
        slug: tenant.slug,
        name,
    }))
}
