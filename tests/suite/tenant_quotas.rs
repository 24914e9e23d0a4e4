//! Per-tenant rules through the HTTP API: an admin pauses or limits one tenant's queue, a tenant
//! hits its quotas on expensive work, and dates outside the accepted window are refused — each
//! while another tenant's work goes on untouched.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

async fn product(app: &TestApp, key: &str, sku: &str) {
    let r = app
        .send_json(
            Method::PUT,
            &format!("/v1/products/{sku}"),
            Some(key),
            &json!({"name": "Mug", "unit_price": "5.00", "currency": "EUR",
                    "reorder_point": 5, "reorder_quantity": 10, "lead_time_days": 4}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn receipt(app: &TestApp, key: &str, idem: &str) -> String {
    let r = app
        .post_json(
            "/v1/stock-adjustments",
            Some(key),
            &json!({"sku": "MUG", "delta": 5, "reason": "receipt", "idempotency_key": idem}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    body["job_id"].as_str().unwrap().to_string()
}

async fn job_status(app: &TestApp, key: &str, id: &str) -> String {
    let j: Value = app
        .get(&format!("/v1/jobs/{id}"), Some(key))
        .await
        .json()
        .await
        .unwrap();
    j["status"].as_str().unwrap().to_string()
}

async fn patch_tenant(app: &TestApp, slug: &str, body: &Value) -> reqwest::Response {
    app.send_json(
        Method::PATCH,
        &format!("/admin/v1/tenants/{slug}"),
        Some(ADMIN_TOKEN),
        body,
    )
    .await
}

async fn queue_rule(app: &TestApp, slug: &str, queue: &str) -> Value {
    let states: Value = app
        .get(
            &format!("/admin/v1/tenants/{slug}/queues"),
            Some(ADMIN_TOKEN),
        )
        .await
        .json()
        .await
        .unwrap();
    states
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["queue"] == queue)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn an_admin_pauses_one_tenants_queue_through_restarts_while_another_flows() {
    let app = spawn_app().await;
    let (held, other) = (
        app.create_tenant("held").await,
        app.create_tenant("other").await,
    );
    product(&app, &held.key, "MUG").await;
    product(&app, &other.key, "MUG").await;

    let r = patch_tenant(
        &app,
        "held",
        &json!({"paused_queues": ["stock"], "queue_limits": {"invoices": 2}, "queue_rates": {"emails": 2.5}}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let workers = app.start_workers("stock");
    let waiting = receipt(&app, &held.key, "r-1").await;
    let flowing = receipt(&app, &other.key, "r-1").await;
    wait_for("the other tenant's job", LIMIT, || async {
        (job_status(&app, &other.key, &flowing).await == "succeeded").then_some(())
    })
    .await;
    assert_eq!(job_status(&app, &held.key, &waiting).await, "paused");
    // Every worker process copies the rules from Postgres at start: a restart keeps them.
    workers.stop().await;
    let workers = app.start_workers("stock");
    let again = receipt(&app, &other.key, "r-2").await;
    wait_for("the other tenant's second job", LIMIT, || async {
        (job_status(&app, &other.key, &again).await == "succeeded").then_some(())
    })
    .await;
    assert_eq!(job_status(&app, &held.key, &waiting).await, "paused");
    let stock = queue_rule(&app, "held", "stock").await;
    assert_eq!(
        (stock["paused"].clone(), stock["waiting"].clone()),
        (json!(true), json!(1))
    );
    let invoices = queue_rule(&app, "held", "invoices").await;
    assert_eq!(
        (
            invoices["limit"].clone(),
            invoices["limit_is_default"].clone()
        ),
        (json!(2), json!(false))
    );
    let forecasts = queue_rule(&app, "held", "forecasts").await;
    assert_eq!(
        (
            forecasts["limit"].clone(),
            forecasts["limit_is_default"].clone()
        ),
        (json!(2), json!(true))
    );
    assert_eq!(queue_rule(&app, "other", "stock").await["paused"], false);
    let emails = queue_rule(&app, "held", "emails").await;
    assert_eq!(
        (emails["rate"].clone(), emails["rate_is_default"].clone()),
        (json!(2.5), json!(false))
    );
    assert_eq!(
        queue_rule(&app, "other", "emails").await["rate"],
        Value::Null
    );

    let r = patch_tenant(
        &app,
        "held",
        &json!({"paused_queues": [], "queue_limits": {"invoices": null}, "queue_rates": {"emails": null}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_for("the resumed tenant's job", LIMIT, || async {
        (job_status(&app, &held.key, &waiting).await == "succeeded").then_some(())
    })
    .await;
    assert_eq!(
        queue_rule(&app, "held", "invoices").await["limit_is_default"],
        true
    );
    assert_eq!(
        queue_rule(&app, "held", "emails").await["rate"],
        Value::Null
    );
    workers.stop().await;

    let r = patch_tenant(
        &app,
        "held",
        &json!({"paused_queues": ["nope"], "queue_limits": {"stock": 1_000_000, "mail": 1},
            "queue_rates": {"stock": -1, "mail": 1}}),
    )
    .await;
    let body = assert_problem(r, 422, "unknown queues and a limit too large").await;
    let mut fields = problem_fields(&body);
    fields.sort();
    assert_eq!(
        fields,
        [
            "paused_queues[0]",
            "queue_limits.mail",
            "queue_limits.stock",
            "queue_rates.mail",
            "queue_rates.stock"
        ]
    );
}

#[tokio::test]
async fn a_tenant_at_its_quotas_gets_409_and_another_tenant_does_not() {
    let app = spawn_app().await;
    let (busy, quiet) = (
        app.create_tenant("busy").await,
        app.create_tenant("quiet").await,
    );
    product(&app, &busy.key, "MUG").await;
    product(&app, &quiet.key, "MUG").await;
    // No workers: what is accepted stays queued.
    let start = |key: String| {
        let app = &app;
        async move {
            app.post_json("/v1/forecasts/runs", Some(&key), &json!({}))
                .await
        }
    };
    let first = start(busy.key.clone()).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let body = assert_problem(start(busy.key.clone()).await, 409, "a second run").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(first["run_id"].as_str().unwrap()),
        "{body}"
    );
    assert_eq!(start(quiet.key.clone()).await.status(), 202);

    let upload = |key: String| {
        let app = &app;
        async move {
            app.upload_sales(&key, "date,sku,quantity\n2026-11-01,MUG,1\n")
                .await
        }
    };
    for _ in 0..3 {
        assert_eq!(upload(busy.key.clone()).await.status(), 202);
    }
    assert_problem(
        upload(busy.key.clone()).await,
        409,
        "a fourth queued import",
    )
    .await;
    assert_eq!(upload(quiet.key.clone()).await.status(), 202);
}

#[tokio::test]
async fn dates_before_the_window_are_refused_and_the_stored_csv_is_dropped_once_loaded() {
    let app = spawn_app().await;
    let t = app.create_tenant("dated").await;
    product(&app, &t.key, "MUG").await;
    let r = app
        .post_json(
            "/v1/stock-adjustments",
            Some(&t.key),
            &json!({"sku": "MUG", "delta": -1, "reason": "sale", "idempotency_key": "old",
                    "occurred_at": "0001-01-01T00:00:00Z"}),
        )
        .await;
    let body = assert_problem(r, 422, "a sale dated in year 1").await;
    assert_eq!(problem_fields(&body), ["occurred_at"]);

    let _workers = app.start_workers("imports");
    let r = app
        .upload_sales(
            &t.key,
            "date,sku,quantity\n0001-01-01,MUG,1\n2026-11-01,MUG,2\n",
        )
        .await;
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    let import_id = accepted["import_id"].as_str().unwrap().to_string();
    let view = wait_for("the import to load", LIMIT, || async {
        let v: Value = app
            .get(&format!("/v1/sales/imports/{import_id}"), Some(&t.key))
            .await
            .json()
            .await
            .ok()?;
        (v["status"] == "loaded").then_some(v)
    })
    .await;
    assert_eq!(view["report"]["rows_rejected"], 1);
    assert_eq!(view["report"]["errors"][0]["line"], 2);
    let kept: Option<Vec<u8>> = sqlx::query_scalar("SELECT body FROM sales_imports WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&import_id).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(kept.is_none(), "the CSV is dropped once loaded");
}

#[tokio::test]
async fn a_tenant_starts_one_run_on_demand_a_minute_and_another_tenant_is_not_held() {
    let app = spawn_app().await;
    let (eager, other) = (
        app.create_tenant("eager").await,
        app.create_tenant("other").await,
    );
    let _workers = app.start_workers("forecasts");
    let start = |key: String| {
        let app = &app;
        async move {
            app.post_json("/v1/forecasts/runs", Some(&key), &json!({}))
                .await
        }
    };
    let first = start(eager.key.clone()).await;
    assert_eq!(first.status(), 202);
    let run_id = first.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A tenant without sales finishes its run at once: it is no longer busy, only too recent.
    wait_for("the first run to finish", LIMIT, || async {
        let run: Value = app
            .get(&format!("/v1/forecasts/runs/{run_id}"), Some(&eager.key))
            .await
            .json()
            .await
            .unwrap();
        (!["queued", "running"].contains(&run["status"].as_str().unwrap())).then_some(())
    })
    .await;
    let again = start(eager.key.clone()).await;
    let wait: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_problem(again, 429, "a second run within the gap").await;
    assert_eq!(start(other.key.clone()).await.status(), 202);
}
