//! The admin dashboard: server-rendered HTML from the same binary, every asset embedded.
//!
//! Pages read the same queue engine and tables as the JSON admin API. Every page needs a
//! session (else it redirects to the sign-in page); every action is a POST form carrying the
//! session's CSRF token, confirmed in the browser, and redirects back with a message so the
//! page shows the new state at once.

use super::AppState;
use super::charts;
use super::error::{Error, Result};
use super::extract::ClientAddress;
use super::session::{self, Session};
use crate::domain::format_amount;
use crate::jobs::Queue;
use crate::queue::{ActionOutcome, JobRecord, JobStatus, QueueName};
use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::OnceLock;
use subtle::ConstantTimeEq;
use uuid::Uuid;

const TEMPLATES: &[(&str, &str)] = &[
    (
        "base.html",
        include_str!("../../templates/dashboard/base.html"),
    ),
    (
        "login.html",
        include_str!("../../templates/dashboard/login.html"),
    ),
    (
        "overview.html",
        include_str!("../../templates/dashboard/overview.html"),
    ),
    (
        "queue.html",
        include_str!("../../templates/dashboard/queue.html"),
    ),
    (
        "job.html",
        include_str!("../../templates/dashboard/job.html"),
    ),
    (
        "tenants.html",
        include_str!("../../templates/dashboard/tenants.html"),
    ),
    (
        "tenant.html",
        include_str!("../../templates/dashboard/tenant.html"),
    ),
    (
        "emails.html",
        include_str!("../../templates/dashboard/emails.html"),
    ),
    (
        "forecasts.html",
        include_str!("../../templates/dashboard/forecasts.html"),
    ),
    (
        "forecast_run.html",
        include_str!("../../templates/dashboard/forecast_run.html"),
    ),
    (
        "forecast_sku.html",
        include_str!("../../templates/dashboard/forecast_sku.html"),
    ),
];

fn env() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .expect("dashboard templates parse");
        }
        env
    })
}

fn page(name: &str, context: minijinja::Value) -> Result<Response> {
    let html = env()
        .get_template(name)
        .and_then(|t| t.render(context))
        .map_err(|e| Error::Internal(anyhow::anyhow!("rendering {name}: {e:#}")))?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response())
}

/// A signed-in admin; pages without one redirect to the sign-in page.
pub struct Signed(Session);

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> std::result::Result<Self, Response> {
        match session::from_headers(state, &parts.headers).await {
            Ok(Some(s)) => Ok(Signed(s)),
            Ok(None) if parts.method.is_safe() => Err(Redirect::to("/admin/login").into_response()),
            Ok(None) => Err(Error::Unauthorized("sign in first".into()).into_response()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A form with the CSRF field checked against the session.
fn checked(session: &Session, form: &HashMap<String, String>) -> Result<()> {
    session.check_csrf(form.get("csrf").map(String::as_str))
}

fn back(to: &str, flash: &str) -> Response {
    let encoded: String = url::form_urlencoded::byte_serialize(flash.as_bytes()).collect();
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}flash={encoded}")).into_response()
}

#[derive(Deserialize, Default)]
struct Flash {
    flash: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/assets/app.css", get(css))
        .route("/admin/assets/app.js", get(js))
        .route("/admin/charts/throughput.svg", get(throughput_svg))
        .route("/admin/queues/{queue}", get(queue_page))
        .route("/admin/queues/{queue}/{action}", post(queue_action))
        .route("/admin/jobs", get(job_lookup))
        .route("/admin/jobs/{id}", get(job_page))
        .route("/admin/jobs/{id}/{action}", post(job_action))
        .route("/admin/tenants", get(tenants_page))
        .route("/admin/tenants/{slug}", get(tenant_page))
        .route("/admin/tenants/{slug}/rotate-key", post(rotate_key))
        .route(
            "/admin/tenants/{slug}/queues/{queue}",
            post(tenant_queue_rules),
        )
        .route("/admin/emails", get(emails_page))
        .route("/admin/forecasts", get(forecasts_page))
        .route("/admin/forecasts/{run}", get(forecast_run_page))
        .route("/admin/forecasts/{run}/{sku}", get(forecast_sku_page))
        .route("/admin/invoices/{id}/pdf", get(invoice_pdf))
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../assets/dashboard/app.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../assets/dashboard/app.js"),
    )
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    if session::from_headers(&state, &headers).await?.is_some() {
        return Ok(Redirect::to("/admin").into_response());
    }
    page("login.html", minijinja::context! { title => "Sign in" })
}

async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    let presented =
        super::extract::admin_digest(form.get("token").map(String::as_str).unwrap_or(""));
    if !bool::from(presented.ct_eq(&state.admin_token_digest)) {
        // Wrong tokens count against the address, as on the JSON API.
        super::extract::throttled(&state, address, None)?;
        state.auth_failures.failed(address);
        let mut response = page(
            "login.html",
            minijinja::context! { title => "Sign in", error => "That token is not the admin token." },
        )?;
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(response);
    }
    let (_, cookie) = session::create(&state, session::is_https(&headers)).await?;
    let mut response = Redirect::to("/admin").into_response();
    session::set_cookie(response.headers_mut(), &cookie);
    Ok(response)
}

async fn logout(
    State(state): State<AppState>,
    Signed(s): Signed,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let cookie = session::destroy(&state, &s).await?;
    let mut response = Redirect::to("/admin/login").into_response();
    session::set_cookie(response.headers_mut(), &cookie);
    Ok(response)
}

async fn overview(
    State(state): State<AppState>,
    Signed(s): Signed,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    let mut queues = vec![];
    let mut workers = vec![];
    let now = Utc::now();
    for queue in Queue::ALL {
        let (name, queue) = (queue.name(), queue.id());
        let (c, per_minute, live) = tokio::try_join!(
            state.queues.counts(&queue),
            state.queues.processed_per_minute(&queue, 60),
            state.queues.workers(&queue)
        )?;
        let finished: u64 = per_minute.iter().sum();
        let failed_hour = failure_count(&state, &queue).await?;
        queues.push(minijinja::context! {
            name, pending => c.pending, scheduled => c.scheduled, running => c.running,
            retrying => c.retrying, dead => c.dead, failed => c.failed, succeeded => c.succeeded,
            paused => c.paused,
            failure_rate => if finished == 0 { "—".to_string() } else {
                format!("{:.1} %", 100.0 * failed_hour as f64 / finished as f64)
            },
        });
        for w in live {
            workers.push(minijinja::context! {
                id => w.id, queue => name,
                age => (now - w.last_heartbeat).num_seconds().max(0),
                in_flight => w.in_flight,
                concurrency => w.info.get("concurrency").cloned().unwrap_or_default().to_string(),
            });
        }
    }
    page(
        "overview.html",
        minijinja::context! {
            title => "Overview", nav => "overview", csrf => s.csrf, flash => flash.flash,
            queues, workers,
        },
    )
}

/// Failed outcomes in the last hour (from the per-minute stats).
async fn failure_count(state: &AppState, queue: &QueueName) -> Result<u64> {
    let keys = state.queues.keys(queue);
    let this_minute = Utc::now().timestamp() / 60;
    let mut pipe = redis::pipe();
    for m in 0..60 {
        pipe.cmd("HGET")
            .arg(keys.stats_minute(this_minute - m))
            .arg("failed");
    }
    let mut conn = state.redis.conn().await?;
    let failed: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
    Ok(failed.into_iter().flatten().sum())
}

async fn throughput_svg(State(state): State<AppState>, Signed(_): Signed) -> Result<Response> {
    let mut total = vec![0u64; 60];
    for queue in Queue::ALL {
        let queue = queue.id();
        for (slot, n) in total
            .iter_mut()
            .zip(state.queues.processed_per_minute(&queue, 60).await?)
        {
            *slot += n;
        }
    }
    let svg = charts::bars(
        &total,
        ["-60 min", "-30 min", "now"],
        "Jobs finished per minute",
    );
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response())
}

fn queue_name(raw: &str) -> Result<QueueName> {
    Queue::parse(raw)
        .map(Queue::id)
        .ok_or_else(|| Error::NotFound(format!("no queue '{raw}'")))
}

/// Tenant slugs by id, for showing jobs.
async fn tenant_slugs(state: &AppState) -> Result<HashMap<Uuid, String>> {
    Ok(sqlx::query!("SELECT id, slug FROM tenants")
        .fetch_all(&state.db)
        .await?
        .into_iter()
        .map(|r| (r.id, r.slug))
        .collect())
}

#[derive(Deserialize, Default)]
struct QueueFilters {
    status: Option<String>,
    tenant: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    cursor: Option<String>,
    flash: Option<String>,
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

async fn queue_page(
    State(state): State<AppState>,
    Signed(s): Signed,
    Path(queue): Path<String>,
    Query(f): Query<QueueFilters>,
) -> Result<Response> {
    let queue = queue_name(&queue)?;
    let status = match f.status.as_deref().filter(|s| !s.is_empty()) {
        None => JobStatus::Queued,
        Some(raw) => {
            JobStatus::parse(raw).ok_or_else(|| Error::invalid("status", "is not a job status"))?
        }
    };
    let slugs = tenant_slugs(&state).await?;
    let tenant_filter = f.tenant.clone().filter(|t| !t.is_empty());
    let kind_filter = f.kind.clone().filter(|k| !k.is_empty());
    let since = f
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").ok())
        .map(|t| t.and_utc());
    let filtering = tenant_filter.is_some() || kind_filter.is_some() || since.is_some();
    // With filters, look through a larger page and keep what matches.
    let limit = if filtering { 500 } else { 50 };
    let listed = state
        .queues
        .list(&queue, status, limit, f.cursor.as_deref())
        .await?;
    let counts = state.queues.counts(&queue).await?;
    let jobs: Vec<minijinja::Value> = listed
        .items
        .into_iter()
        .filter(|j| {
            let slug = j.tenant.and_then(|t| slugs.get(&t));
            tenant_filter.as_ref().is_none_or(|t| slug == Some(t))
                && kind_filter.as_ref().is_none_or(|k| &j.kind == k)
                && since.is_none_or(|s| j.created_at >= s)
        })
        .map(|j| {
            minijinja::context! {
                id => j.id, kind => j.kind,
                tenant => j.tenant.and_then(|t| slugs.get(&t).cloned()).unwrap_or_default(),
                attempts => j.attempts, max_attempts => j.max_attempts,
                created_at => time(j.created_at), last_error => j.last_error.unwrap_or_default(),
            }
        })
        .collect();
    page(
        "queue.html",
        minijinja::context! {
            title => format!("Queue {queue}"), nav => "overview", csrf => s.csrf, flash => f.flash,
            queue => queue.as_str(), paused => counts.paused, status => status.as_str(),
            statuses => ["queued", "scheduled", "running", "retrying", "succeeded", "failed", "dead"],
            tenant => f.tenant.unwrap_or_default(), kind => f.kind.unwrap_or_default(),
            since => f.since.unwrap_or_default(), jobs, next_cursor => listed.next_cursor,
        },
    )
}

async fn queue_action(
    State(state): State<AppState>,
    Signed(s): Signed,
    Path((queue, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let queue = queue_name(&queue)?;
    let flash = match action.as_str() {
        "pause" => {
            state.queues.pause(&queue).await?;
            format!("Queue {queue} paused.")
        }
        "resume" => {
            state.queues.resume(&queue).await?;
            format!("Queue {queue} resumed.")
        }
        "retry-dead" => format!(
            "{} dead jobs re-queued.",
            state.queues.retry_all_dead(&queue).await?
        ),
        "discard-dead" => format!(
            "{} dead jobs deleted.",
            state.queues.discard_all_dead(&queue).await?
        ),
        other => return Err(Error::NotFound(format!("no action '{other}'"))),
    };
    Ok(back(&format!("/admin/queues/{queue}"), &flash))
}

#[derive(Deserialize, Default)]
struct Lookup {
    id: Option<String>,
    tenant: Option<String>,
    key: Option<String>,
    queue: Option<String>,
}

async fn job_lookup(
    State(state): State<AppState>,
    Signed(_): Signed,
    Query(l): Query<Lookup>,
) -> Result<Response> {
    if let Some(id) = l.id.filter(|i| !i.trim().is_empty()) {
        return Ok(Redirect::to(&format!("/admin/jobs/{}", id.trim())).into_response());
    }
    let (Some(slug), Some(key)) = (l.tenant, l.key) else {
        return Err(Error::invalid(
            "id",
            "give a job id, or a tenant and an idempotency key",
        ));
    };
    let tenant = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug.trim())
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let queue = queue_name(l.queue.as_deref().unwrap_or("stock"))?;
    // Stock adjustments are keyed by tenant; other kinds by what caused them.
    let found = state
        .queues
        .find_by_idempotency_key(
            &queue,
            crate::workers::stock::StockAdjustmentJob::KIND,
            &format!("{tenant}:{}", key.trim()),
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("no job with key '{key}' for '{slug}'")))?;
    Ok(Redirect::to(&format!("/admin/jobs/{found}")).into_response())
}

async fn job_page(
    State(state): State<AppState>,
    Signed(s): Signed,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    let job: JobRecord = state
        .queues
        .get(&id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no job '{id}'")))?;
    let slugs = tenant_slugs(&state).await?;
    let mut timeline = vec![minijinja::context! { at => time(job.created_at), what => "accepted" }];
    if let Some(errors) = job.errors.as_array() {
        for e in errors {
            let at = e["at"]
                .as_i64()
                .and_then(DateTime::from_timestamp_millis)
                .map(time)
                .unwrap_or_default();
            timeline.push(minijinja::context! {
                at, what => format!("attempt {} failed", e["attempt"]),
                error => e["error"].as_str().unwrap_or_default(),
            });
        }
    }
    if let Some(t) = job.started_at {
        timeline.push(minijinja::context! { at => time(t), what => format!("attempt {} started", job.attempts) });
    }
    if let Some(t) = job.finished_at {
        timeline.push(
            minijinja::context! { at => time(t), what => format!("ended {}", job.status.as_str()) },
        );
    }
    // Oldest first ("%Y-%m-%d %H:%M:%S" sorts as text; the sort is stable for equal times).
    timeline.sort_by_key(|e| e.get_attr("at").map(|v| v.to_string()).unwrap_or_default());
    page(
        "job.html",
        minijinja::context! {
            title => format!("Job {id}"), nav => "overview", csrf => s.csrf, flash => flash.flash,
            tenant => job.tenant.and_then(|t| slugs.get(&t).cloned()).unwrap_or_default(),
            payload => serde_json::to_string_pretty(&job.payload).unwrap_or_default(),
            result => job.result.as_ref().map(|r| serde_json::to_string_pretty(r).unwrap_or_default()),
            timeline,
            job => minijinja::context! {
                id => job.id, queue => job.queue, kind => job.kind, status => job.status.as_str(),
                attempts => job.attempts, max_attempts => job.max_attempts,
                idempotency_key => job.idempotency_key, worker => job.worker,
            },
        },
    )
}

async fn job_action(
    State(state): State<AppState>,
    Signed(s): Signed,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let outcome = match action.as_str() {
        "retry" => state.queues.retry(&id).await?,
        "discard" => state.queues.discard(&id).await?,
        other => return Err(Error::NotFound(format!("no action '{other}'"))),
    };
    Ok(match (action.as_str(), outcome) {
        ("retry", ActionOutcome::Done) => back(&format!("/admin/jobs/{id}"), "Job re-queued."),
        (_, ActionOutcome::Done) => {
            let queue = id.split('_').next().unwrap_or("stock");
            back(
                &format!("/admin/queues/{queue}"),
                &format!("Job {id} deleted."),
            )
        }
        (_, ActionOutcome::Missing) => back("/admin", &format!("Job {id} no longer exists.")),
        (_, ActionOutcome::Refused(status)) => back(
            &format!("/admin/jobs/{id}"),
            &format!("Not possible: the job is {}.", status.as_str()),
        ),
    })
}

async fn tenants_page(
    State(state): State<AppState>,
    Signed(s): Signed,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    render_tenants(&state, &s, flash.flash, None).await
}

async fn render_tenants(
    state: &AppState,
    s: &Session,
    flash: Option<String>,
    new_key: Option<(String, String)>,
) -> Result<Response> {
    let rows = sqlx::query!(
        r#"SELECT t.id, t.slug, t.name, t.active,
                  (SELECT count(*) FROM api_keys k WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS "keys!"
           FROM tenants t ORDER BY t.slug LIMIT 500"#
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
            title => "Tenants", nav => "tenants", csrf => s.csrf.clone(), flash, tenants,
            new_key => new_key.map(|(slug, key)| minijinja::context! { slug, key }),
        },
    )
}

async fn rotate_key(
    State(state): State<AppState>,
    Signed(s): Signed,
    Path(slug): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let tenant_id = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let key = crate::domain::ApiKey::generate();
    let mut conn = state.db.acquire().await?;
    super::tenants::insert_key(&mut conn, tenant_id, &key).await?;
    // The key is shown once, on this response, never in a URL.
    render_tenants(&state, &s, None, Some((slug, key.expose().to_string()))).await
}

/// One tenant's rules and load on every queue, with a form per queue to change its limit and
/// pause it.
async fn tenant_page(
    State(state): State<AppState>,
    Signed(s): Signed,
    Path(slug): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    let tenant = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", slug)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no tenant '{slug}'")))?;
    let mut queues = vec![];
    for queue in Queue::ALL {
        let queue = queue.id();
        let q = state.queues.tenant_state(&queue, tenant).await?;
        queues.push(minijinja::context! {
            queue => q.queue, limit => q.limit, own_limit => (!q.limit_is_default).then_some(q.limit.unwrap_or(0)),
            limit_is_default => q.limit_is_default, paused => q.paused, running => q.running,
            waiting => q.waiting,
        });
    }
    page(
        "tenant.html",
        minijinja::context! {
            title => format!("Tenant {slug}"), nav => "tenants", csrf => s.csrf.clone(),
            flash => flash.flash, slug, queues,
            max_limit => super::tenants::MAX_QUEUE_LIMIT,
        },
    )
}

/// Sets one queue's rules for a tenant: `limit` (blank for the queue's default, 0 for none) and
/// `paused` (present or not).
async fn tenant_queue_rules(
    State(state): State<AppState>,
    Signed(s): Signed,
    Path((slug, queue)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    checked(&s, &form)?;
    let queue = queue_name(&queue)?;
    let back_to = format!("/admin/tenants/{slug}");
    let limit = match form.get("limit").map(|v| v.trim()).unwrap_or("") {
        "" => None,
        raw => match raw.parse::<u32>() {
            Ok(n) if n <= super::tenants::MAX_QUEUE_LIMIT => Some(n),
            _ => {
                return Ok(back(
                    &back_to,
                    &format!(
                        "Not changed: the limit must be a whole number from 0 to {}.",
                        super::tenants::MAX_QUEUE_LIMIT
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
    let limits = std::collections::BTreeMap::from([(name.clone(), limit)]);
    super::tenants::change_queue_rules(&mut tx, &state.queues, tenant, &limits, |mut paused| {
        paused.retain(|q| *q != name);
        if pause {
            paused.push(name.clone());
        }
        paused
    })
    .await?;
    tx.commit().await?;
    let rule = match limit {
        None => "the queue's default limit".to_string(),
        Some(0) => "no limit".to_string(),
        Some(n) => format!("at most {n} at once"),
    };
    let state_text = if pause { "paused" } else { "running" };
    Ok(back(
        &back_to,
        &format!("{slug} on {queue}: {rule}, {state_text}."),
    ))
}

async fn emails_page(State(state): State<AppState>, Signed(s): Signed) -> Result<Response> {
    let emails: Vec<minijinja::Value> = sqlx::query!(
        r#"SELECT e.created_at, t.slug, e.kind, e.recipient, e.subject, e.status, e.smtp_reply, e.last_error
           FROM emails e JOIN tenants t ON t.id = e.tenant_id ORDER BY e.created_at DESC LIMIT 100"#
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| {
        minijinja::context! {
            created_at => time(r.created_at), tenant => r.slug, kind => r.kind,
            recipient => r.recipient, subject => r.subject, status => r.status,
            reply => r.smtp_reply.or(r.last_error).unwrap_or_default(),
        }
    })
    .collect();
    let invoices: Vec<minijinja::Value> = sqlx::query!(
        r#"SELECT i.id, i.number, t.slug, i.status, i.failure_reason, i.total, i.currency, i.issued_on
           FROM invoices i JOIN tenants t ON t.id = i.tenant_id ORDER BY i.created_at DESC LIMIT 100"#
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| {
        minijinja::context! {
            id => r.id.to_string(), number => r.number, tenant => r.slug, status => r.status,
            reason => r.failure_reason, total => format_amount(r.total, &r.currency),
            currency => r.currency, issued_on => r.issued_on.map(|d| d.to_string()),
        }
    })
    .collect();
    page(
        "emails.html",
        minijinja::context! { title => "Emails & invoices", nav => "emails", csrf => s.csrf, emails, invoices },
    )
}

async fn invoice_pdf(
    State(state): State<AppState>,
    Signed(_): Signed,
    Path(id): Path<String>,
) -> Result<Response> {
    let invoice_id =
        Uuid::parse_str(&id).map_err(|_| Error::NotFound(format!("no invoice '{id}'")))?;
    let row = sqlx::query!(
        "SELECT number, pdf FROM invoices WHERE id = $1 AND status = 'ready'",
        invoice_id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no ready invoice '{id}'")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "inline; filename=\"{}.pdf\"",
                    row.number.unwrap_or_default()
                ),
            ),
        ],
        row.pdf.unwrap_or_default(),
    )
        .into_response())
}

/// Days of sales history drawn before a forecast.
const CHART_HISTORY_DAYS: i64 = 90;

fn score(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "—".into())
}

/// Forecast runs of every tenant, newest first.
async fn forecasts_page(State(state): State<AppState>, Signed(s): Signed) -> Result<Response> {
    let runs: Vec<minijinja::Value> = sqlx::query!(
        r#"SELECT r.id, t.slug, r.trigger, r.status, r.skus_total, r.skus_done, r.horizon_days,
                  r.created_at, r.finished_at, r.error,
                  (SELECT avg(mase) FROM forecast_results f WHERE f.run_id = r.id) AS mase,
                  (SELECT avg(rmsse) FROM forecast_results f WHERE f.run_id = r.id) AS rmsse,
                  (SELECT string_agg(model || ' ' || n, ', ' ORDER BY n DESC)
                     FROM (SELECT model, count(*) AS n FROM forecast_results f WHERE f.run_id = r.id GROUP BY model) m) AS mix
           FROM forecast_runs r JOIN tenants t ON t.id = r.tenant_id
           ORDER BY r.created_at DESC LIMIT 100"#
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| {
        let percent = if r.skus_total > 0 {
            100 * r.skus_done / r.skus_total
        } else if r.status == "succeeded" {
            100
        } else {
            0
        };
        minijinja::context! {
            id => r.id.to_string(), tenant => r.slug, trigger => r.trigger, status => r.status,
            skus_total => r.skus_total, skus_done => r.skus_done, percent,
            horizon => r.horizon_days, created_at => time(r.created_at),
            finished_at => r.finished_at.map(time), error => r.error,
            mase => score(r.mase), rmsse => score(r.rmsse), mix => r.mix.unwrap_or_default(),
        }
    })
    .collect();
    page(
        "forecasts.html",
        minijinja::context! { title => "Forecasts", nav => "forecasts", csrf => s.csrf, runs },
    )
}

fn run_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| Error::NotFound(format!("no forecast run '{raw}'")))
}

/// One run: its model mix as a chart and every SKU, those due to reorder first.
async fn forecast_run_page(
    State(state): State<AppState>,
    Signed(s): Signed,
    Path(run): Path<String>,
) -> Result<Response> {
    let id = run_id(&run)?;
    let head = sqlx::query!(
        r#"SELECT t.slug, r.status, r.trigger, r.skus_total, r.skus_done, r.horizon_days, r.history_end
           FROM forecast_runs r JOIN tenants t ON t.id = r.tenant_id WHERE r.id = $1"#,
        id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no forecast run '{run}'")))?;
    let rows = sqlx::query!(
        r#"SELECT sku, model, chosen_by, mase, rmsse, on_hand, reorder_point, order_quantity,
                  stockout_date, (on_hand <= reorder_point) AS "due!"
           FROM forecast_results WHERE run_id = $1
           ORDER BY (on_hand <= reorder_point) DESC, stockout_date NULLS LAST, sku
           LIMIT 2000"#,
        id
    )
    .fetch_all(&state.db)
    .await?;
    let mut mix: std::collections::BTreeMap<String, u64> = Default::default();
    for r in &rows {
        *mix.entry(r.model.clone()).or_default() += 1;
    }
    let due = rows.iter().filter(|r| r.due).count();
    let skus: Vec<minijinja::Value> = rows
        .into_iter()
        .map(|r| {
            minijinja::context! {
                sku => r.sku, model => r.model, chosen_by => r.chosen_by, mase => score(r.mase),
                rmsse => score(r.rmsse), on_hand => r.on_hand, reorder_point => r.reorder_point,
                order => r.order_quantity, stockout => r.stockout_date.map(|d| d.to_string()),
                due => r.due,
            }
        })
        .collect();
    let names: Vec<&String> = mix.keys().collect();
    let chart = (!mix.is_empty()).then(|| {
        let counts: Vec<u64> = mix.values().copied().collect();
        let first = names.first().map(|s| s.as_str()).unwrap_or("");
        let middle = names.get(names.len() / 2).map(|s| s.as_str()).unwrap_or("");
        let last = names.last().map(|s| s.as_str()).unwrap_or("");
        charts::bars(&counts, [first, middle, last], "SKUs per chosen model")
    });
    page(
        "forecast_run.html",
        minijinja::context! {
            title => "Forecast run", nav => "forecasts", csrf => s.csrf, run => run,
            tenant => head.slug, status => head.status, trigger => head.trigger,
            skus_total => head.skus_total, skus_done => head.skus_done,
            horizon => head.horizon_days, history_end => head.history_end.to_string(),
            mix => mix.iter().map(|(k, v)| minijinja::context! { model => k, n => v }).collect::<Vec<_>>(),
            chart => chart.map(minijinja::Value::from_safe_string), skus, due,
        },
    )
}

/// One SKU of a run: recent sales, the forecast and its interval band, the chosen model and
/// every model's backtest scores.
async fn forecast_sku_page(
    State(state): State<AppState>,
    Signed(s): Signed,
    Path((run, sku)): Path<(String, String)>,
) -> Result<Response> {
    let id = run_id(&run)?;
    let not_found = || Error::NotFound(format!("no forecast for '{sku}' in run '{run}'"));
    let r = sqlx::query!(
        r#"SELECT f.tenant_id, f.model, f.chosen_by, f.fallback_reason, f.scores, f.on_hand,
                  f.reorder_point, f.order_quantity, f.stockout_date, f.history_days,
                  fr.history_end, t.slug
           FROM forecast_results f JOIN forecast_runs fr ON fr.id = f.run_id
           JOIN tenants t ON t.id = f.tenant_id
           WHERE f.run_id = $1 AND f.sku = $2"#,
        id,
        sku
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(not_found)?;
    let history: Vec<(chrono::NaiveDate, f64)> = sqlx::query!(
        r#"SELECT day, quantity FROM (
               SELECT DISTINCT ON (day) day, quantity FROM daily_sales
               WHERE tenant_id = $1 AND sku = $2 AND day > $3::date - $4::int AND day <= $3
               ORDER BY day, (source = 'import') DESC) s ORDER BY day"#,
        r.tenant_id,
        sku,
        r.history_end,
        CHART_HISTORY_DAYS as i32
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|h| (h.day, h.quantity as f64))
    .collect();
    // Days without a row sold nothing: draw them as zero.
    let start = r.history_end - chrono::Duration::days(CHART_HISTORY_DAYS - 1);
    let mut daily = vec![];
    let mut known = history.into_iter().peekable();
    for i in 0..CHART_HISTORY_DAYS {
        let day = start + chrono::Duration::days(i);
        let v = match known.peek() {
            Some((d, v)) if *d == day => {
                let v = *v;
                known.next();
                v
            }
            _ => 0.0,
        };
        daily.push((day, v));
    }
    let days: Vec<charts::ForecastDay> = sqlx::query!(
        "SELECT day, yhat, lower, upper FROM forecast_points WHERE run_id = $1 AND sku = $2 ORDER BY day",
        id,
        sku
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|p| charts::ForecastDay {
        day: p.day,
        yhat: p.yhat,
        lower: p.lower,
        upper: p.upper,
    })
    .collect();
    let chart = charts::forecast(
        &daily,
        &days,
        &format!("{sku}: sales and {} forecast", r.model),
    );
    let scores: Vec<minijinja::Value> = r
        .scores
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(model, v)| {
                    minijinja::context! {
                        model => model, chosen => *model == r.model,
                        mase => score(v["mase"].as_f64()), rmsse => score(v["rmsse"].as_f64()),
                        smape => score(v["smape"].as_f64()),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    page(
        "forecast_sku.html",
        minijinja::context! {
            title => format!("Forecast {sku}"), nav => "forecasts", csrf => s.csrf, run => run,
            tenant => r.slug, sku => sku, model => r.model, chosen_by => r.chosen_by,
            fallback_reason => r.fallback_reason, on_hand => r.on_hand,
            reorder_point => r.reorder_point, order => r.order_quantity,
            stockout => r.stockout_date.map(|d| d.to_string()), history_days => r.history_days,
            chart => minijinja::Value::from_safe_string(chart), scores,
            points => days.iter().map(|d| minijinja::context! {
                day => d.day.to_string(), yhat => format!("{:.1}", d.yhat),
                lower => format!("{:.1}", d.lower), upper => format!("{:.1}", d.upper),
            }).collect::<Vec<_>>(),
        },
    )
}
