//! Liveness and readiness: `/healthz` says the process is up; `/readyz` says it can do its job,
//! naming each dependency that does not answer so an operator knows where to look (the error
//! itself goes to the log: anyone can call these).

use super::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::ToSchema;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when any dependency is down.
    status: &'static str,
    /// Each dependency: `ok` or `unavailable` (the reason is logged).
    checks: BTreeMap<&'static str, String>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: BTreeMap::new(),
    })
}

/// Postgres and Redis answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Postgres and Redis answer", body = Health),
        (status = 503, description = "At least one dependency is down; `checks` names it", body = Health),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let postgres = async {
        tokio::time::timeout(
            CHECK_TIMEOUT,
            sqlx::query_scalar!("SELECT 1 AS \"one!\"").fetch_one(&state.db),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let redis = async {
        tokio::time::timeout(CHECK_TIMEOUT, state.redis.ping())
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())
    };
    let (postgres, redis) = tokio::join!(postgres, redis);
    let mut checks = BTreeMap::new();
    let mut ready = true;
    for (name, result) in [("postgres", postgres), ("redis", redis)] {
        let text = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                // The endpoint needs no credentials: the reason goes to the log, not the caller.
                tracing::warn!(dependency = name, error = %e, "readiness check failed");
                ready = false;
                "unavailable".to_string()
            }
        };
        checks.insert(name, text);
    }
    let (code, status) = if ready {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (code, Json(Health { status, checks }))
}
