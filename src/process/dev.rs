//! `backroom dev`: the whole system in one process for a laptop.
//!
//! It fills in what a laptop lacks (an admin token, a loopback bind address, readable logs),
//! applies migrations, makes sure a demo tenant exists with a fresh API key, prints how to use
//! it, and runs the API, the workers and the outbox relay until Ctrl-C.

use super::serve::{Application, shutdown_signal};
use super::{schedule, work};
use crate::config::Settings;
use crate::domain::{TenantName, TenantSlug};
use crate::{api, db, telemetry};
use anyhow::Context;
use rand::RngCore;

const DEMO_SLUG: &str = "demo";
const DEMO_OWNER: &str = "owner@demo.backroom.test";

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
    telemetry::init(
        settings.log_format,
        &settings.log_filter,
        settings.traces.as_ref(),
    );

    let app = Application::build(settings.clone()).await?;
    let pool = app.state().db.clone();
    db::migrate(&pool).await?;
    let demo_key = demo_tenant_key(&pool).await?;
    let owner_password = demo_owner_password(&pool).await?;
    let seeded = seed_demo_sales(&app.state().db, &app.state().queues, &settings).await?;

    let base = format!("http://127.0.0.1:{}", app.port());
    print_banner(
        &base,
        &owner_password,
        settings.admin_token.as_deref(),
        &demo_key,
    );
    if seeded {
        // The demo's traffic goes through the real API once it answers, so every dashboard page
        // has something to show within a minute.
        let (base, key) = (base.clone(), demo_key.clone());
        let queues = app.state().queues.clone();
        tokio::spawn(async move {
            if let Err(e) = demo_traffic(&base, &key, &queues).await {
                tracing::warn!(error = %e, "the demo's sample traffic did not go through");
            }
        });
    }

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
/// and queues a forecast run so the dashboard has forecasts to show. Says whether it did (a
/// demo tenant that already has products is left as it is).
async fn seed_demo_sales(
    pool: &sqlx::PgPool,
    queues: &crate::queue::Queues,
    settings: &Settings,
) -> anyhow::Result<bool> {
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
        return Ok(false);
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
        crate::jobs::forecasts::Trigger::Api {
            min_gap: std::time::Duration::ZERO,
        },
        settings.forecast.horizon_days,
        None,
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the demo forecast: {e}"))?;
    println!(
        "  demo data      {DEMO_SKUS} SKUs x {DEMO_DAYS} days of sales; forecast run {run_id} queued"
    );
    Ok(true)
}

/// How to use the running demo: where to sign in, the demo tenant's key, three requests to copy,
/// and where the emails go.
fn print_banner(base: &str, owner_password: &str, admin_token: Option<&str>, key: &str) {
    let auth = format!("-H 'Authorization: Bearer {key}'");
    let json = "-H 'Content-Type: application/json'";
    println!();
    println!("  backroom dev is running");
    println!("  dashboard      {base}/admin");
    println!("  sign in as     {DEMO_OWNER} / {owner_password}  (an owner)");
    match admin_token {
        Some(token) => println!("  admin token    {token}"),
        None => println!(
            "  admin token    turned off: sign in as an admin user (backroom admin create)"
        ),
    }
    println!("  API            {base}  (contract: GET {base}/openapi.json)");
    println!("  demo tenant    '{DEMO_SLUG}', API key {key}");
    match std::env::var("BACKROOM_DEMO_MAIL_DIR") {
        Ok(dir) => println!("  emails         each one the demo sends is a .eml file in {dir}"),
        Err(_) => println!("  emails         sent to SMTP_URL"),
    }
    println!();
    println!("  try:");
    println!("  # receive 5 of SKU-00001 into stock");
    println!(
        "  curl {auth} {json} -d '{{\"sku\":\"SKU-00001\",\"delta\":5,\"reason\":\"receipt\",\"idempotency_key\":\"try-1\"}}' {base}/v1/stock-adjustments"
    );
    println!("  # an order: its invoice PDF is at /v1/invoices/<invoice_id>/pdf a moment later");
    println!(
        "  curl {auth} {json} -d '{{\"customer\":{{\"name\":\"Ada Lovelace\",\"email\":\"ada@example.com\"}},\"currency\":\"EUR\",\"tax_rate\":\"0.081\",\"lines\":[{{\"sku\":\"SKU-00002\",\"quantity\":2}}]}}' {base}/v1/orders"
    );
    println!("  curl {auth} -o invoice.pdf {base}/v1/invoices/<invoice_id>/pdf");
    println!(
        "  # the forecast of SKU-00001 (ready once the queued run has finished, within a minute or two)"
    );
    println!("  curl {auth} {base}/v1/products/SKU-00001/forecast");
    println!();
}

/// The demo's own client of its API: the demo tenant's key on every request, and any answer
/// but a 2xx an error.
struct DemoApi {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl DemoApi {
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let answer = request.bearer_auth(&self.key).send().await?;
        Ok(answer.error_for_status()?.json().await?)
    }

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }
}

/// The demo's first traffic, through the API: a few orders (invoices and emails), receipts,
/// an email the SMTP sink refuses (a failed job), one it defers on the last attempt (a dead job,
/// to try the dashboard's Retry on), a sales import with a broken header (a failed import), and
/// a webhook endpoint whose host never resolves (failing deliveries).
async fn demo_traffic(base: &str, key: &str, queues: &crate::queue::Queues) -> anyhow::Result<()> {
    use serde_json::json;
    let api = DemoApi {
        client: reqwest::Client::new(),
        base: base.to_string(),
        key: key.to_string(),
    };
    for n in 1..=3 {
        api.post(
            "/v1/orders",
            json!({
                "customer": {"name": format!("Demo customer {n}"), "email": format!("customer{n}@example.com")},
                "currency": "EUR", "tax_rate": "0.081",
                "lines": [{"sku": format!("SKU-0000{n}"), "quantity": n}, {"sku": "SKU-00010", "quantity": 1}],
            }),
        )
        .await?;
    }
    for n in 1..=5 {
        api.post(
            "/v1/stock-adjustments",
            json!({"sku": format!("SKU-0000{n}"), "delta": 10, "reason": "receipt",
                   "idempotency_key": format!("demo-receipt-{n}")}),
        )
        .await?;
    }
    api.post(
        "/v1/emails",
        json!({"to": "reject-demo@example.com", "subject": "Refused by the sink",
               "text": "The demo's SMTP sink refuses recipients starting with 'reject'."}),
    )
    .await?;
    api.post(
        "/v1/webhooks/endpoints",
        json!({"url": "https://hooks.example.invalid/backroom",
               "description": "demo: a host that never resolves"}),
    )
    .await?;
    let broken = api
        .client
        .post(format!("{base}/v1/sales/import"))
        .header("content-type", "text/csv")
        .body("day,product,units\n2026-01-01,SKU-00001,3\n");
    api.send(broken).await?;
    dead_demo_email(&api, queues).await
}

/// An email to a recipient the sink always defers (451), sent by a job allowed one attempt: it
/// goes to the dead set at once, with the server's reply as its error.
async fn dead_demo_email(api: &DemoApi, queues: &crate::queue::Queues) -> anyhow::Result<()> {
    use crate::jobs::emails::EmailJob;
    let me = api.get("/v1/me").await?;
    let tenant_id: uuid::Uuid = me["id"]
        .as_str()
        .context("GET /v1/me names the tenant")?
        .parse()?;
    // Accepted through the API with its own job (which keeps retrying, deferred), and sent once
    // more by a job that may try once.
    let accepted = api
        .post(
            "/v1/emails",
            serde_json::json!({"to": "tempfail-demo@example.com", "subject": "Deferred by the sink",
                               "text": "The demo's SMTP sink defers recipients starting with 'tempfail'."}),
        )
        .await?;
    let email_id: uuid::Uuid = accepted["email_id"]
        .as_str()
        .context("the email's id")?
        .parse()?;
    // Once its own job's first attempt has been deferred (and let go of the send), so the two
    // jobs do not meet mid-send.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while api.get(&format!("/v1/emails/{email_id}")).await?["last_error"].is_null() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the deferred email was never tried"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let job = EmailJob::Requested {
        tenant_id,
        email_id,
    };
    crate::jobs::enqueue(queues, [crate::jobs::Enqueue::new(&job).max_attempts(1)]).await?;
    Ok(())
}

/// The demo's owner: created on the first run, given a new password on each (shown only once).
async fn demo_owner_password(pool: &sqlx::PgPool) -> anyhow::Result<String> {
    use api::operators::{Actor, Role, users};
    let password = users::generate_password();
    let exists = sqlx::query_scalar!("SELECT id FROM admin_users WHERE email = $1", DEMO_OWNER)
        .fetch_optional(pool)
        .await?
        .is_some();
    let mut tx = pool.begin().await?;
    let done = if exists {
        users::reset_password(&mut tx, &Actor::cli(), DEMO_OWNER, &password).await
    } else {
        users::create(
            &mut tx,
            &Actor::cli(),
            DEMO_OWNER,
            Role::Owner,
            &password,
            None,
        )
        .await
    };
    done.map_err(|e| anyhow::anyhow!("while preparing the demo owner: {e}"))?;
    tx.commit().await?;
    Ok(password)
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
        None => {
            api::tenants::create_tenant_with_key(pool, &api::operators::Actor::cli(), &slug, &name)
                .await
                .context("while creating the demo tenant")?
                .api_key()
                .to_string()
        }
        Some(tenant_id) => {
            let mut tx = pool.begin().await?;
            let (_, key) =
                api::tenants::add_key(&mut tx, &api::operators::Actor::cli(), tenant_id, DEMO_SLUG)
                    .await
                    .context("while adding a demo API key")?;
            tx.commit().await?;
            key.expose().to_string()
        }
    };
    Ok(key)
}
