//! `GET /metrics`: Prometheus text. On the API port it needs the admin token; a separate
//! listener (`BACKROOM_METRICS_BIND`) serves it without credentials for a private network.
//! Queue depths are read from Redis at scrape time, so any process reports every queue.

use super::AppState;
use super::error::Result;
use super::extract::Admin;
use crate::jobs::Queue;
use crate::queue::{Queues, metrics};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

/// Renders every metric of this process plus the current queue depths.
pub async fn render(queues: &Queues) -> redis::RedisResult<String> {
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
    }
    Ok(metrics::handle().render())
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
    Ok(text(render(&state.queues).await?))
}

/// The router of the credential-free metrics listener.
pub fn public_router(queues: Queues) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let queues = queues.clone();
            async move {
                render(&queues)
                    .await
                    .map(text)
                    .map_err(super::error::Error::from)
            }
        }),
    )
}
