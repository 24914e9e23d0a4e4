//! The admin dashboard: server-rendered HTML from the same binary, every asset embedded.
//!
//! Pages read the same queue engine and tables as the JSON admin API. Every page needs a
//! session (else it redirects to the sign-in page); every action is a POST form carrying the
//! session's CSRF token, confirmed in the browser, and redirects back with a message so the
//! page shows the new state at once.

use super::AppState;
use super::error::{Error, Result};
use super::extract::ClientAddress;
use super::operators::{Actor, users};
use super::session::{self, Session};
use crate::config::CookieSecure;
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

mod audit;
mod documents;
mod forecasts;
mod history;
mod queues;
mod search;
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
    (
        "audit.html",
        include_str!("../../../templates/dashboard/audit.html"),
    ),
    (
        "search.html",
        include_str!("../../../templates/dashboard/search.html"),
    ),
    (
        "history.html",
        include_str!("../../../templates/dashboard/history.html"),
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

/// A signed-in admin whose role allows the request; pages without one redirect to the sign-in
/// page, and a change the role does not allow is 403 (`operators::required_role`).
pub struct Signed(Session, Actor);

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> std::result::Result<Self, Response> {
        let address = super::extract::client_address(parts, state);
        match session::from_headers(state, &parts.headers, address).await {
            Ok(Some((s, actor))) => match actor.allow(&parts.method, parts.uri.path()) {
                Ok(()) => Ok(Signed(s, actor)),
                Err(e) => Err(e.into_response()),
            },
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

/// A page's invalid filters as one line to show on it (where the JSON API answers 422).
fn invalid_text(errors: &[super::error::FieldError]) -> String {
    let why: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    why.join("; ")
}

/// `path` with `pairs` as its query string.
fn link(path: &str, pairs: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{path}?{query}")
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
        .route("/admin/audit", get(audit::audit_page))
        .route("/admin/search", get(search::search_page))
        .route("/admin/history", get(history::history_page))
        .route("/admin/charts/jobs.svg", get(history::jobs_svg))
        .route(
            "/admin/webhooks/deliveries/{id}/replay",
            post(webhooks::replay_delivery),
        )
}

/// Headers on every dashboard response: no framing, no sniffing, no referrer; on HTML pages a
/// content security policy that allows only our own script and styles (no inline script
/// anywhere) and, when served over TLS, HSTS.
pub async fn security_headers(
    State(secure): State<CookieSecure>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let over_tls = session::is_secure(secure, req.headers());
    let mut response = next.run(req).await;
    let html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"));
    let h = response.headers_mut();
    let mut set = |name: &'static str, value: &'static str| {
        h.insert(name, header::HeaderValue::from_static(value));
    };
    set("x-frame-options", "DENY");
    set("x-content-type-options", "nosniff");
    set("referrer-policy", "no-referrer");
    if html {
        set(
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        );
    }
    if over_tls {
        set("strict-transport-security", "max-age=31536000");
    }
    response
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

async fn login_page(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
) -> Result<Response> {
    if session::from_headers(&state, &headers, address)
        .await?
        .is_some()
    {
        return Ok(Redirect::to("/admin").into_response());
    }
    page("login.html", minijinja::context! { title => "Sign in" })
}

/// Signs in with an email and password (an admin user) or with the admin token.
async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let refused = |error: &str| -> Result<Response> {
        let mut response = page(
            "login.html",
            minijinja::context! { title => "Sign in", error => error, email => field("email") },
        )?;
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        Ok(response)
    };
    // Failed sign-ins count against the address, as on the JSON API; a throttled address may
    // not try a password, while the right admin token always passes.
    let credential = if !field("email").trim().is_empty() {
        super::extract::throttled(&state, address, None)?;
        match users::sign_in(&state, field("email"), field("password")).await {
            Ok(user) => session::Credential::User {
                id: user.id,
                version: user.credential_version,
            },
            Err(Error::Unauthorized(_)) => {
                state.auth_failures.failed(address);
                return refused("That email and password do not match.");
            }
            Err(e) => return Err(e),
        }
    } else if super::extract::is_admin_token(&state, field("token")) {
        session::Credential::Token {
            fingerprint: session::token_fingerprint(&state).expect("the token is on"),
        }
    } else {
        super::extract::throttled(&state, address, None)?;
        state.auth_failures.failed(address);
        return refused("That token is not the admin token.");
    };
    let (_, cookie) = session::create(&state, credential, &headers).await?;
    let mut response = Redirect::to("/admin").into_response();
    session::set_cookie(response.headers_mut(), &cookie);
    Ok(response)
}

async fn logout(
    State(state): State<AppState>,
    Signed(s, _): Signed,
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
