//! The HTTP API: tenant intake (`/v1/...`), admin endpoints (`/admin/...`), health, and the
//! OpenAPI document generated from the same handler annotations that route requests, so the
//! spec cannot drift from the code.
//!
//! [`router`] is a plain factory (no socket) so tests can call it directly; `startup` binds it.

mod charts;
mod dashboard;
pub mod emails;
pub mod error;
pub mod extract;
pub mod forecasts;
mod health;
pub mod jobs;
pub mod metrics;
mod middleware;
pub mod orders;
pub mod pagination;
pub mod products;
pub mod session;
pub mod stock;
pub mod tenants;

use crate::config::Settings;
use crate::queue::Queues;
use crate::redis_conn::RedisHandle;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use error::Error;
use sqlx::PgPool;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub redis: RedisHandle,
    pub queues: Queues,
    pub settings: Arc<Settings>,
    pub admin_token_digest: [u8; 32],
}

impl AppState {
    pub fn new(db: PgPool, redis: RedisHandle, settings: Settings) -> Self {
        Self {
            admin_token_digest: extract::admin_digest(&settings.admin_token),
            queues: Queues::new(
                redis.clone(),
                &settings.redis_namespace,
                settings.queue.clone(),
            ),
            db,
            redis,
            settings: Arc::new(settings),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "backroom",
        description = "Job-queue platform for multi-tenant inventory and order businesses."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "tenant", description = "Calls made with a tenant API key"),
        (name = "admin", description = "Calls made with the admin token"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme("tenant_key", bearer("A tenant API key"));
        components.add_security_scheme(
            "admin_token",
            bearer("The admin token (BACKROOM_ADMIN_TOKEN)"),
        );
    }
}

/// Every route with its OpenAPI description.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(tenants::me))
        .routes(routes!(tenants::create_tenant, tenants::list_tenants))
        .routes(routes!(tenants::update_tenant))
        .routes(routes!(tenants::create_api_key, tenants::list_api_keys))
        .routes(routes!(tenants::revoke_api_key))
        .routes(routes!(products::put_product, products::get_product))
        .routes(routes!(products::list_products))
        .routes(routes!(products::list_movements))
        .routes(routes!(stock::create_adjustment))
        .routes(routes!(stock::create_batch))
        .routes(routes!(orders::create_order))
        .routes(routes!(orders::get_order))
        .routes(routes!(orders::get_invoice))
        .routes(routes!(orders::get_invoice_pdf))
        .routes(routes!(emails::send_email))
        .routes(routes!(emails::get_email))
        .routes(routes!(forecasts::import_sales))
        .routes(routes!(forecasts::get_import))
        .routes(routes!(forecasts::create_run))
        .routes(routes!(forecasts::get_run))
        .routes(routes!(forecasts::get_product_forecast))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::list_queues))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::retry_job))
        .routes(routes!(jobs::discard_job))
        .routes(routes!(jobs::pause_queue))
        .routes(routes!(jobs::resume_queue))
        .routes(routes!(jobs::retry_dead))
        .routes(routes!(metrics::metrics_admin))
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

pub fn router(state: AppState) -> Router {
    let (router, spec) = routes().split_for_parts();
    let spec = Arc::new(spec);
    router
        .route(
            "/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move { axum::Json(spec.as_ref().clone()) }
            }),
        )
        .merge(dashboard::router())
        .fallback(|| async { Error::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(state)
}
