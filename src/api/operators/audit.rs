//! The audit log: one row per change made through the dashboard, the JSON admin API or the CLI,
//! naming the actor, the action, its target and tenant, a short before/after, the request id and
//! the client's address. A change kept in Postgres writes its row in the same transaction; a
//! change kept in Redis (a queue action) writes it once Redis has applied it. The table refuses
//! updates and deletes (see its migration).

use super::Actor;
use crate::api::AppState;
use crate::api::error::{Result, current_request_id};
use crate::api::extract::{FieldErrors, Query};
use crate::api::pagination::{Page, PageParams};
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The longest before/after kept per row, in bytes of JSON; a longer one is replaced by a note.
const MAX_DETAIL_BYTES: usize = 4096;

/// One change, as the caller describes it.
pub struct Change {
    /// A dotted name such as `job.retry`, `queue.pause`, `tenant.update`, `user.create`.
    pub action: &'static str,
    /// What was changed: a job id, a queue, a tenant slug, an API key id, a user's email.
    pub target: String,
    pub tenant_id: Option<Uuid>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Change {
    pub fn new(action: &'static str, target: impl Into<String>) -> Change {
        Change {
            action,
            target: target.into(),
            tenant_id: None,
            before: None,
            after: None,
        }
    }

    pub fn tenant(mut self, tenant_id: Option<Uuid>) -> Change {
        self.tenant_id = tenant_id;
        self
    }

    pub fn before(mut self, before: Value) -> Change {
        self.before = Some(before);
        self
    }

    pub fn after(mut self, after: Value) -> Change {
        self.after = Some(after);
        self
    }
}

fn bounded(detail: Option<Value>) -> Option<Value> {
    detail.map(|v| {
        if v.to_string().len() > MAX_DETAIL_BYTES {
            serde_json::json!({ "note": "too long to keep" })
        } else {
            v
        }
    })
}

/// Writes one audit row on `conn` (inside the change's transaction when there is one).
pub async fn record(conn: &mut PgConnection, actor: &Actor, change: Change) -> sqlx::Result<()> {
    let address = actor.address.map(|a| a.to_string());
    sqlx::query!(
        "INSERT INTO admin_audit
           (actor, actor_user_id, action, target, tenant_id, before, after, request_id,
            client_address)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::inet)",
        actor.name,
        actor.user_id,
        change.action,
        change.target,
        change.tenant_id,
        bounded(change.before),
        bounded(change.after),
        current_request_id(),
        address
    )
    .execute(conn)
    .await
    .map(|_| ())
}

/// Writes one audit row in a transaction of its own (for changes kept outside Postgres).
pub async fn record_alone(state: &AppState, actor: &Actor, change: Change) -> Result<()> {
    let mut conn = state.db.acquire().await?;
    record(&mut conn, actor, change).await?;
    Ok(())
}

/// One audit row.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `user:<email>`, `token` or `cli:<os user>`.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub tenant: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub request_id: Option<String>,
    pub client_address: Option<String>,
}

/// Filters of the audit log; every one optional.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    /// Exactly as shown: `user:ann@example.com`, `token`, `cli:root`.
    pub actor: Option<String>,
    /// e.g. `job.retry`.
    pub action: Option<String>,
    /// A tenant's slug.
    pub tenant: Option<String>,
    /// Only rows at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only rows before this time (RFC 3339).
    pub until: Option<String>,
    /// Items per page, 1..=500 (default 50).
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl AuditFilter {
    fn nonempty(v: &Option<String>) -> Option<String> {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }
}

/// Reads a page of the audit log, newest first; an actor limited to some tenants reads only the
/// rows about those tenants.
pub async fn page_of(
    state: &AppState,
    actor: &Actor,
    filter: &AuditFilter,
) -> Result<Page<AuditEntry>> {
    let mut errors = FieldErrors::default();
    let page = PageParams {
        limit: filter.limit.clone(),
        cursor: filter.cursor.clone(),
    }
    .parse_into(&mut errors);
    let time = |field: &str, raw: &Option<String>, errors: &mut FieldErrors| {
        AuditFilter::nonempty(raw).and_then(|raw| {
            errors.check(
                field,
                DateTime::parse_from_rfc3339(&raw)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| "must be an RFC 3339 time such as 2026-12-01T00:00:00Z".into()),
            )
        })
    };
    let since = time("since", &filter.since, &mut errors);
    let until = time("until", &filter.until, &mut errors);
    let before_id = page.as_ref().and_then(|p| p.after.as_deref()).map(|raw| {
        errors.check(
            "cursor",
            raw.parse::<i64>()
                .map_err(|_| "is not a cursor from this API".to_string()),
        )
    });
    errors.finish()?;
    let page = page.expect("checked");
    let before_id = before_id.flatten();
    let tenant = AuditFilter::nonempty(&filter.tenant);
    let rows = sqlx::query!(
        r#"SELECT a.id, a.at, a.actor, a.action, a.target, t.slug AS "tenant?", a.before, a.after,
                  a.request_id, host(a.client_address) AS client_address
           FROM admin_audit a LEFT JOIN tenants t ON t.id = a.tenant_id
           WHERE ($1::text IS NULL OR a.actor = $1)
             AND ($2::text IS NULL OR a.action = $2)
             AND ($3::text IS NULL OR a.tenant_id = (SELECT id FROM tenants WHERE slug = $3))
             AND ($4::timestamptz IS NULL OR a.at >= $4)
             AND ($5::timestamptz IS NULL OR a.at < $5)
             AND ($6::bigint IS NULL OR a.id < $6)
             AND ($8::uuid[] IS NULL OR a.tenant_id = ANY($8))
           ORDER BY a.id DESC
           LIMIT $7"#,
        AuditFilter::nonempty(&filter.actor),
        AuditFilter::nonempty(&filter.action),
        tenant,
        since,
        until,
        before_id,
        page.limit + 1,
        actor.tenant_scope()
    )
    .fetch_all(&state.db)
    .await?;
    let entries = rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
            tenant: r.tenant,
            before: r.before,
            after: r.after,
            request_id: r.request_id,
            client_address: r.client_address,
        })
        .collect();
    Ok(Page::from_rows(entries, page.limit, |e| e.id.to_string()))
}

/// The audit log, newest first: every change made by an admin user, the admin token or the CLI.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "admin", security(("admin_token" = [])),
    params(AuditFilter),
    responses((status = 200, body = Page<AuditEntry>), (status = 422, body = crate::api::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn list_audit(
    crate::api::extract::Admin(actor): crate::api::extract::Admin,
    State(state): State<AppState>,
    Query(filter): Query<AuditFilter>,
) -> Result<axum::Json<Page<AuditEntry>>> {
    page_of(&state, &actor, &filter).await.map(axum::Json)
}
