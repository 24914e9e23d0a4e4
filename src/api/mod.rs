//! The HTTP API: tenant intake (`/v1/...`), admin endpoints (`/admin/...`), health, and the
//! OpenAPI document generated from the same handler annotations that route requests, so the
//! spec cannot drift from the code.
//!
//! [`router`] is a plain factory (no socket) so tests can call it directly; `process::serve` binds it.

pub mod auth_throttle;
mod charts;
mod dashboard;
pub mod emails;
pub mod error;
pub mod extract;
pub mod forecasts;
mod health;
pub mod history;
mod inflight;
pub mod jobs;
pub mod lookups;
pub mod metrics;
mod middleware;
pub mod operators;
pub mod orders;
pub mod pagination;
pub mod products;
pub mod rate_limit;
pub mod session;
pub mod stock;
pub mod tenants;
pub mod webhooks;

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
    /// SHA-256 of the bootstrap admin token; `None` when the token is turned off.
    pub admin_token_digest: Option<[u8; 32]>,
    pub lookups: lookups::Lookups,
    /// Sales uploads being received, per tenant.
    pub uploads: Arc<inflight::PerTenant>,
    /// Job history reads (`GET /v1/jobs`) under way, per tenant.
    pub history_reads: Arc<inflight::PerTenant>,
    /// Failed authentications per client address (`auth_throttle`).
    pub auth_failures: Arc<auth_throttle::AuthThrottle>,
    /// Uncached API key lookups in flight: at most a quarter of the pool, so a flood of unknown
    /// keys cannot take the connections other requests need.
    pub key_lookups: Arc<tokio::sync::Semaphore>,
    /// Each tenant's requests handled at once (`BACKROOM_TENANT_REQUESTS_IN_FLIGHT`).
    pub requests: Arc<inflight::PerTenant>,
}

impl AppState {
    pub fn new(db: PgPool, redis: RedisHandle, settings: Settings) -> Self {
        Self {
            admin_token_digest: settings.admin_token.as_deref().map(extract::admin_digest),
            lookups: lookups::Lookups::default(),
            uploads: Arc::new(inflight::PerTenant::new(
                inflight::UPLOADS_PER_TENANT,
                std::time::Duration::ZERO,
            )),
            history_reads: Arc::new(inflight::PerTenant::new(
                inflight::HISTORY_READS_PER_TENANT,
                std::time::Duration::ZERO,
            )),
            auth_failures: Arc::new(auth_throttle::AuthThrottle::new(
                settings.auth_failures_per_minute,
            )),
            requests: Arc::new(inflight::PerTenant::new(
                settings.tenant_requests_in_flight,
                inflight::REQUEST_TURN_WAIT,
            )),
            key_lookups: Arc::new(tokio::sync::Semaphore::new(
                (settings.database_max_connections as usize / 4).max(1),
            )),
            queues: Queues::new(
                redis.clone(),
                &settings.redis_namespace,
                settings.queue.clone(),
            )
            .with_group_hook(crate::jobs::webhooks::group_events::GroupEvents::hook(
                db.clone(),
            )),
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
    components(schemas(webhooks::WebhookEvent, webhooks::WebhookEventType)),
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
        .routes(routes!(tenants::tenant_queues))
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
        .routes(routes!(webhooks::create_endpoint, webhooks::list_endpoints))
        .routes(routes!(
            webhooks::get_endpoint,
            webhooks::update_endpoint,
            webhooks::delete_endpoint
        ))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::retry_delivery))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::retry_own_job))
        .routes(routes!(history::list_tenant_jobs))
        .routes(routes!(history::search_jobs))
        .routes(routes!(history::job_stats))
        .routes(routes!(jobs::get_group))
        .routes(routes!(jobs::list_queues))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::retry_job))
        .routes(routes!(jobs::discard_job))
        .routes(routes!(jobs::pause_queue))
        .routes(routes!(jobs::resume_queue))
        .routes(routes!(jobs::retry_dead))
        .routes(routes!(metrics::metrics_admin))
        .routes(routes!(
            operators::users::create_user,
            operators::users::list_users
        ))
        .routes(routes!(operators::users::disable_user))
        .routes(routes!(operators::users::reset_user_password))
        .routes(routes!(operators::audit::list_audit))
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes_and_spec().1
}

fn routes_and_spec() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut spec) = routes().split_for_parts();
    document_problems(&mut spec);
    (router, spec)
}

/// Problems are `application/problem+json`, and some can come from any operation of a kind
/// (they are raised by extractors and middleware, not by the handler): 401 and 503 on every
/// secured call, 429 on tenant calls, 400/413/415/422 on calls with a body, 400/422 on calls with
/// query parameters and 404 on calls with path parameters. This documents them all in one place.
fn document_problems(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{Operation, ParameterIn};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    const PROBLEM: &str = "application/problem+json";
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    PROBLEM,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build(),
        )
    };
    let fix = |op: &mut Operation| {
        for response in op.responses.responses.values_mut() {
            if let RefOr::T(response) = response
                && let Some(content) = response.content.shift_remove("application/json")
            {
                let is_problem = matches!(&content.schema,
                    Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"));
                let key = if is_problem {
                    PROBLEM
                } else {
                    "application/json"
                };
                response.content.insert(key.to_string(), content);
            }
        }
        let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
        let with_body = op.request_body.is_some();
        let params_in = |place: ParameterIn| {
            op.parameters
                .iter()
                .flatten()
                .any(|p| p.parameter_in == place)
        };
        let (with_query, with_path) = (params_in(ParameterIn::Query), params_in(ParameterIn::Path));
        let mut add = |status: &str, description: &str| {
            op.responses
                .responses
                .entry(status.to_string())
                .or_insert_with(|| problem(description));
        };
        if secured {
            add("401", "Missing or invalid credentials");
            add(
                "429",
                "Too many requests (the tenant's rate, or failed authentications from this address); retry after `Retry-After`",
            );
            add(
                "503",
                "Postgres or Redis is unavailable; retry after `Retry-After`",
            );
        }
        if with_body {
            add("400", "The body is not well-formed");
            add("408", "The body stopped arriving before it was complete");
            add("413", "The body is too large");
            add("415", "The body's content type is not the one expected");
            add("422", "A field is invalid (named in `errors`)");
        }
        if with_query {
            add("400", "The query string is malformed");
            add("422", "A query parameter is invalid (named in `errors`)");
        }
        if with_path {
            add("404", "No such resource for this caller");
        }
    };
    for item in spec.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            fix(op);
        }
    }
}

pub fn router(state: AppState) -> Router {
    let (router, spec) = routes_and_spec();
    let spec = Arc::new(spec);
    router
        .route(
            "/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move { axum::Json(spec.as_ref().clone()) }
            }),
        )
        .merge(
            dashboard::router().layer(axum::middleware::from_fn_with_state(
                state.settings.cookie_secure,
                dashboard::security_headers,
            )),
        )
        .fallback(|| async { Error::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.settings.connections.header_timeout,
            middleware::body_idle_timeout,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.settings.request_timeout,
            middleware::deadline,
        ))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(state)
}
