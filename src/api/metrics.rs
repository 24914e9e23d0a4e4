//! `GET /metrics`: Prometheus text. On the API port it needs the admin token; a separate
//! listener (`BACKROOM_METRICS_BIND`) serves it without credentials for a private network.
//! Queue depths and live workers are read from Redis at scrape time, and the outbox's lag and
//! failing webhook endpoints from Postgres, so any process reports the whole system (the Grafana
//! dashboard and alert rules in `ops/` read these names).

use super::AppState;
use super::error::Result;
use super::extract::Admin;
use crate::jobs::Queue;
use crate::queue::{Queues, metrics};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sqlx::PgPool;

/// Renders every metric of this process plus the system-wide gauges (queue depths, live
/// workers, outbox lag, failing webhook endpoints). A gauge whose store does not answer is left
/// at its last value rather than failing the scrape, except the queues' (Redis is the queue).
pub async fn render(queues: &Queues, db: &PgPool) -> redis::RedisResult<String> {
    let settings = queues.settings();
    // A worker beats every third of a lease; three leases without one and it counts as gone.
    let alive_since_ms = settings.clock.now_ms() - (settings.lease * 3).as_millis() as i64;
    for queue in Queue::ALL {
        let name = queue.name();
        let c = queues.counts(&queue.id()).await?;
        for (status, n) in [
            ("pending", c.pending),
            ("scheduled", c.scheduled),
            ("running", c.running),
            ("retrying", c.retrying),
            ("succeeded", c.succeeded),
            ("failed", c.failed),
            ("dead", c.dead),
        ] {
            metrics::depth(name, status, n);
        }
        let alive = queues.live_workers(&queue.id(), alive_since_ms).await?;
        metrics::workers(name, alive);
    }
    match system_gauges(db).await {
        Ok((outbox_lag, failing)) => metrics::system(outbox_lag, failing),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: could not read the outbox and webhook gauges")
        }
    }
    Ok(metrics::handle().render())
}

/// The age of the oldest unsent outbox row (0 when none; the oldest by id, through the unsent
/// rows' partial index), and the enabled webhook endpoints whose deliveries are failing. One
/// round trip.
async fn system_gauges(db: &PgPool) -> sqlx::Result<(f64, i64)> {
    let row = sqlx::query!(
        r#"SELECT
             COALESCE((SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM outbox
                       WHERE sent_at IS NULL ORDER BY id LIMIT 1), 0) AS "lag!",
             (SELECT count(*) FROM webhook_endpoints
              WHERE enabled AND failing_since IS NOT NULL) AS "failing!""#
    )
    .fetch_one(db)
    .await?;
    Ok((row.lag, row.failing))
}

fn text(body: String) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Prometheus metrics (admin).
#[utoipa::path(get, path = "/metrics", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics_admin(_: Admin, State(state): State<AppState>) -> Result<impl IntoResponse> {
    Ok(text(render(&state.queues, &state.db).await?))
}

/// The router of the credential-free metrics listener.
pub fn public_router(queues: Queues, db: PgPool) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (queues, db) = (queues.clone(), db.clone());
            async move {
                render(&queues, &db)
                    .await
                    .map(text)
                    .map_err(super::error::Error::from)
            }
        }),
    )
}
