//! `backroom dev`: the whole system in one process for a laptop.
//!
//! It fills in what a laptop lacks (an admin token, a loopback bind address, readable logs),
//! applies migrations, makes sure a demo tenant exists with a fresh API key, prints how to use
//! it, and runs the API, the workers and the outbox relay until Ctrl-C.

use super::serve::{Application, shutdown_signal};
use super::{schedule, work};
use crate::config::Settings;
use crate::domain::{ApiKey, TenantName, TenantSlug};
use crate::{api, db, telemetry};
use anyhow::Context;
use rand::RngCore;

const DEMO_SLUG: &str = "demo";

pub async fn run() -> anyhow::Result<()> {
    let generated_token = {
        let mut bytes = [0u8; 18];
        rand::rng().fill_bytes(&mut bytes);
        format!("dev-{}", hex::encode(bytes))
    };
    let settings = Settings::from_lookup(|name| {
        let set = std::env::var(name).ok().filter(|v| !v.is_empty());
        set.or_else(|| match name {
            "BACKROOM_ADMIN_TOKEN" => Some(generated_token.clone()),
            "BACKROOM_BIND" => Some("127.0.0.1:8080".into()),
            "BACKROOM_LOG_FORMAT" => Some("pretty".into()),
            _ => None,
        })
    })?;
    telemetry::init(settings.log_format, &settings.log_filter);

    let app = Application::build(settings.clone()).await?;
    let pool = app.state().db.clone();
    db::migrate(&pool).await?;
    let demo_key = demo_tenant_key(&pool).await?;
    seed_demo_sales(&app.state().db, &app.state().queues, &settings).await?;

    let base = format!("http://127.0.0.1:{}", app.port());
    println!();
    println!("  backroom dev is running");
    println!("  API            {base}  (contract: GET {base}/openapi.json)");
    println!("  dashboard      {base}/admin  (sign in with the admin token)");
    println!("  admin token    {}", settings.admin_token);
    println!("  demo tenant    '{DEMO_SLUG}', API key {}", demo_key);
    println!();
    println!(
        "  try:  curl -H 'Authorization: Bearer {}' {base}/v1/me",
        demo_key
    );
    println!();

    // One shutdown signal for the API and the workers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let plan = if settings.smtp_url.is_some() {
        work::WorkPlan::parse(None, None)?
    } else {
        tracing::warn!("SMTP_URL is not set: emails stay queued until a worker with SMTP runs");
        work::WorkPlan::parse(Some("stock,invoices,forecasts,imports"), None)?
    };
    let work = work::run(&settings, plan, stopped(stop_rx.clone()));
    let schedule = schedule::run(&settings, stopped(stop_rx.clone()));
    let serve = app.run_until(stopped(stop_rx));
    let (served, worked, scheduled) = tokio::join!(serve, work, schedule);
    served.and(worked).and(scheduled)
}

/// SKUs and days of generated sales history the demo tenant starts with.
const DEMO_SKUS: usize = 300;
const DEMO_DAYS: usize = 730;

/// Gives a demo tenant without products two years of generated sales for a few hundred SKUs,
/// and queues a forecast run so the dashboard has forecasts to show.
async fn seed_demo_sales(
    pool: &sqlx::PgPool,
    queues: &crate::queue::Queues,
    settings: &Settings,
) -> anyhow::Result<()> {
    let tenant_id = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", DEMO_SLUG)
        .fetch_one(pool)
        .await?;
    let products = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM products WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_one(pool)
    .await?;
    if products > 0 {
        return Ok(());
    }
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let skus = crate::forecast::demo::generate(DEMO_SKUS, DEMO_DAYS, yesterday, 2026);
    crate::forecast::demo::load(pool, tenant_id, &skus)
        .await
        .context("while loading the demo sales history")?;
    let (run_id, _) = crate::jobs::forecasts::start_run(
        pool,
        queues,
        tenant_id,
        crate::jobs::forecasts::Trigger::Api,
        settings.forecast.horizon_days,
        None,
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the demo forecast: {e}"))?;
    println!(
        "  demo data      {DEMO_SKUS} SKUs x {DEMO_DAYS} days of sales; forecast run {run_id} queued"
    );
    Ok(())
}

/// Creates the demo tenant, or gives the existing one a new key (keys are shown only once).
async fn demo_tenant_key(pool: &sqlx::PgPool) -> anyhow::Result<String> {
    let slug = TenantSlug::parse(DEMO_SLUG).map_err(anyhow::Error::msg)?;
    let name = TenantName::parse("Demo Outdoor Supply").map_err(anyhow::Error::msg)?;
    let existing = sqlx::query_scalar!("SELECT id FROM tenants WHERE slug = $1", DEMO_SLUG)
        .fetch_optional(pool)
        .await
        .context("while looking up the demo tenant")?;
    let key = match existing {
        None => api::tenants::create_tenant_with_key(pool, &slug, &name)
            .await
            .context("while creating the demo tenant")?
            .api_key()
            .to_string(),
        Some(tenant_id) => {
            let key = ApiKey::generate();
            let mut conn = pool.acquire().await?;
            api::tenants::insert_key(&mut conn, tenant_id, &key)
                .await
                .context("while adding a demo API key")?;
            key.expose().to_string()
        }
    };
    Ok(key)
}
