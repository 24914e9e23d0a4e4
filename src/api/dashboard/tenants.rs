//! Dashboard pages of the tenants: the list, one tenant (its keys, queue limits and pauses).

use crate::api::AppState;
use crate::api::error::{Error, Result};
use crate::api::operators::Actor;
use crate::api::operators::audit::{self, Change};
use crate::api::session::Session;
use crate::jobs::Queue;
use axum::extract::{Form, Path, Query, State};
use axum::response::Response;
use std::collections::HashMap;

use super::{Flash, Signed, back, checked, page};
use crate::api::extract::queue_named;

pub(super) async fn tenants_page(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    render_tenants(&state, &s, &actor, flash.flash, None).await
}

/// The tenants the actor sees (all, or those they are limited to).
async fn render_tenants(
    state: &AppState,
    s: &Session,
    actor: &Actor,
    flash: Option<String>,
    new_key: Option<(String, String)>,
) -> Result<Response> {
    let rows = sqlx::query!(
        r#"SELECT t.id, t.slug, t.name, t.active,
                  (SELECT count(*) FROM api_keys k WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS "keys!"
           FROM tenants t
           WHERE ($1::uuid[] IS NULL OR t.id = ANY($1))
           ORDER BY t.slug LIMIT 500"#,
        actor.tenant_scope()
    )
    .fetch_all(&state.db)
    .await?;
    let mut volume: HashMap<String, (u64, u64)> = HashMap::new();
    for queue in Queue::ALL {
        let queue = queue.id();
        for (tenant, (ok, bad)) in state.queues.tenant_volume_today(&queue).await? {
            let v = volume.entry(tenant).or_default();
            v.0 += ok;
            v.1 += bad;
        }
    }
    let tenants: Vec<minijinja::Value> = rows
        .into_iter()
        .map(|r| {
            let (ok, bad) = volume.get(&r.id.to_string()).copied().unwrap_or_default();
            minijinja::context! {
                slug => r.slug, name => r.name, active => r.active, keys => r.keys,
                jobs => ok + bad, failed => bad,
            }
        })
        .collect();
    page(
        "tenants.html",
        minijinja::context! {
            title => "Tenants", nav => "tenants", limited => actor.tenants.is_some(), csrf => s.csrf.clone(), flash, tenants,
            new_key => new_key.map(|(slug, key)| minijinja::context! { slug, key }),
        },
    )
}

pub(super) async fn rotate_key(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Path(slug): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let tenant_id = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let mut tx = state.db.begin().await?;
    let (_, key) = crate::api::tenants::add_key(&mut tx, &actor, tenant_id, &slug).await?;
    tx.commit().await?;
    // The key is shown once, on this response, never in a URL.
    render_tenants(
        &state,
        &s,
        &actor,
        None,
        Some((slug, key.expose().to_string())),
    )
    .await
}

/// One tenant's rules and load on every queue, with a form per queue to change its limit and
/// pause it.
pub(super) async fn tenant_page(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Path(slug): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    let tenant = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug)
        .fetch_optional(&state.db)
        .await?
        .filter(|id| actor.sees(Some(*id)))
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let mut queues = vec![];
    for queue in Queue::ALL {
        let queue = queue.id();
        let q = state.queues.tenant_state(&queue, tenant).await?;
        queues.push(minijinja::context! {
            queue => q.queue, limit => q.limit, own_limit => (!q.limit_is_default).then_some(q.limit.unwrap_or(0)),
            limit_is_default => q.limit_is_default, paused => q.paused, running => q.running,
            // Rates as Rust writes them (5, 2.5), not as floats render (5.0).
            rate => q.rate.map(|r| r.to_string()),
            own_rate => (!q.rate_is_default).then(|| q.rate.unwrap_or(0.0).to_string()),
            rate_is_default => q.rate_is_default,
            waiting => q.waiting,
        });
    }
    page(
        "tenant.html",
        minijinja::context! {
            title => format!("Tenant {slug}"), nav => "tenants", limited => actor.tenants.is_some(), csrf => s.csrf.clone(),
            flash => flash.flash, slug, queues,
            max_limit => crate::api::tenants::MAX_QUEUE_LIMIT,
        },
    )
}

/// Sets one queue's rules for a tenant: `limit` and `rate` (blank for the queue's default, 0 for
/// none) and `paused` (present or not).
pub(super) async fn tenant_queue_rules(
    State(state): State<AppState>,
    Signed(s, actor): Signed,
    Path((slug, queue)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let queue = queue_named(&queue)?;
    let back_to = format!("/admin/tenants/{slug}");
    let limit = match form.get("limit").map(|v| v.trim()).unwrap_or("") {
        "" => None,
        raw => match raw.parse::<u32>() {
            Ok(n) if n <= crate::api::tenants::MAX_QUEUE_LIMIT => Some(n),
            _ => {
                return Ok(back(
                    &back_to,
                    &format!(
                        "Not changed: the limit must be a whole number from 0 to {}.",
                        crate::api::tenants::MAX_QUEUE_LIMIT
                    ),
                ));
            }
        },
    };
    let rates = crate::api::tenants::QUEUE_RATES;
    // Absent (a form without the field): kept; blank: the queue's default; 0: none.
    let rate = match form.get("rate").map(|v| v.trim()) {
        None => None,
        Some("") => Some(None),
        Some(raw) => match raw.parse::<f64>() {
            Ok(r) if crate::api::tenants::is_valid_rate(r) => Some(Some(r)),
            _ => {
                return Ok(back(
                    &back_to,
                    &format!(
                        "Not changed: the rate must be 0 (none) or from {} to {} jobs a second.",
                        rates.start(),
                        rates.end()
                    ),
                ));
            }
        },
    };
    let pause = form.contains_key("paused");
    let mut tx = state.db.begin().await?;
    let tenant = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let name = queue.to_string();
    let edit = crate::api::tenants::RulesEdit {
        limits: std::collections::BTreeMap::from([(name.clone(), limit)]),
        rates: rate
            .map(|r| std::collections::BTreeMap::from([(name.clone(), r)]))
            .unwrap_or_default(),
    };
    let rules = crate::api::tenants::change_queue_rules(
        &mut tx,
        &state.queues,
        tenant,
        &edit,
        |mut paused| {
            paused.retain(|q| *q != name);
            if pause {
                paused.push(name.clone());
            }
            paused
        },
    )
    .await?;
    let change = Change::new("tenant.queue_rules", slug.as_str())
        .tenant(Some(tenant))
        .before(rules.before)
        .after(rules.after);
    audit::record(&mut tx, &actor, change).await?;
    tx.commit().await?;
    let rule = match limit {
        None => "the queue's default limit".to_string(),
        Some(0) => "no limit".to_string(),
        Some(n) => format!("at most {n} at once"),
    };
    let rate = match rate {
        None => String::new(),
        Some(None) => ", the queue's default rate".to_string(),
        Some(Some(0.0)) => ", no rate".to_string(),
        Some(Some(r)) => format!(", at most {r} started a second"),
    };
    let state_text = if pause { "paused" } else { "running" };
    Ok(back(
        &back_to,
        &format!("{slug} on {queue}: {rule}{rate}, {state_text}."),
    ))
}
