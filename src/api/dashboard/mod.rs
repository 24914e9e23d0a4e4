//! The admin dashboard: server-rendered HTML from the same binary, every asset embedded.
//!
//! Pages read the same queue engine and tables as the JSON admin API. Every page needs a
//! session (else it redirects to the sign-in page); every action is a POST form carrying the
//! session's CSRF token, confirmed in the browser, and redirects back with a message so the
//! page shows the new state at once.

use super::AppState;
use super::error::{Error, Result};
use super::extract::ClientAddress;
use super::session::{self, Session};
use axum::Router;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::OnceLock;
use subtle::ConstantTimeEq;

mod documents;
mod forecasts;
mod queues;
mod tenants;
mod webhooks;

const TEMPLATES: &[(&str, &str)] = &[
    (
        "base.html",
        include_str!("../../../templates/dashboard/base.html"),
    ),
    (
        "login.html",
        include_str!("../../../templates/dashboard/login.html"),
    ),
    (
        "overview.html",
        include_str!("../../../templates/dashboard/overview.html"),
    ),
    (
        "queue.html",
        include_str!("../../../templates/dashboard/queue.html"),
    ),
    (
        "job.html",
        include_str!("../../../templates/dashboard/job.html"),
    ),
    (
        "tenants.html",
        include_str!("../../../templates/dashboard/tenants.html"),
    ),
    (
        "tenant.html",
        include_str!("../../../templates/dashboard/tenant.html"),
    ),
    (
        "emails.html",
        include_str!("../../../templates/dashboard/emails.html"),
    ),
    (
        "forecasts.html",
        include_str!("../../../templates/dashboard/forecasts.html"),
    ),
    (
        "forecast_run.html",
        include_str!("../../../templates/dashboard/forecast_run.html"),
    ),
    (
        "forecast_sku.html",
        include_str!("../../../templates/dashboard/forecast_sku.html"),
    ),
    (
        "webhooks.html",
        include_str!("../../../templates/dashboard/webhooks.html"),
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
        .route("/admin", get(queues::overview))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/assets/app.css", get(css))
        .route("/admin/assets/app.js", get(js))
        .route("/admin/charts/throughput.svg", get(queues::throughput_svg))
        .route("/admin/queues/{queue}", get(queues::queue_page))
        .route("/admin/queues/{queue}/{action}", post(queues::queue_action))
        .route("/admin/jobs", get(queues::job_lookup))
        .route("/admin/jobs/{id}", get(queues::job_page))
        .route("/admin/jobs/{id}/{action}", post(queues::job_action))
        .route("/admin/tenants", get(tenants::tenants_page))
        .route("/admin/tenants/{slug}", get(tenants::tenant_page))
        .route(
            "/admin/tenants/{slug}/rotate-key",
            post(tenants::rotate_key),
        )
        .route(
            "/admin/tenants/{slug}/queues/{queue}",
            post(tenants::tenant_queue_rules),
        )
        .route("/admin/emails", get(documents::emails_page))
        .route("/admin/forecasts", get(forecasts::forecasts_page))
        .route("/admin/forecasts/{run}", get(forecasts::forecast_run_page))
        .route(
            "/admin/forecasts/{run}/{sku}",
            get(forecasts::forecast_sku_page),
        )
        .route("/admin/invoices/{id}/pdf", get(documents::invoice_pdf))
        .route("/admin/webhooks", get(webhooks::webhooks_page))
        .route(
            "/admin/webhooks/deliveries/{id}/replay",
            post(webhooks::replay_delivery),
        )
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../assets/dashboard/app.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../assets/dashboard/app.js"),
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

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}
