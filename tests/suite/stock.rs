//! Products and the stock ledger through the API and real workers.

use crate::helpers::*;
use backroom::queue::{NewJob, QueueName};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn product(reorder_point: i64, allow_negative: bool) -> Value {
    json!({
        "name": "Trail tent, 2 person", "unit_price": "249.90", "currency": "EUR",
        "reorder_point": reorder_point, "reorder_quantity": 20, "lead_time_days": 7,
        "allow_negative": allow_negative
    })
}

async fn put_product(app: &TestApp, key: &str, sku: &str, body: &Value) -> reqwest::Response {
    app.send_json(Method::PUT, &format!("/v1/products/{sku}"), Some(key), body)
        .await
}

fn adjustment(sku: &str, delta: i64, reason: &str, key: &str) -> Value {
    json!({"sku": sku, "delta": delta, "reason": reason, "idempotency_key": key})
}

async fn adjust(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.post_json("/v1/stock-adjustments", Some(key), body)
        .await
}

async fn job(app: &TestApp, key: &str, id: &str) -> Value {
    app.get(&format!("/v1/jobs/{id}"), Some(key))
        .await
        .json()
        .await
        .unwrap()
}

async fn wait_job_done(app: &TestApp, key: &str, id: &str) -> Value {
    wait_for(&format!("job {id} to finish"), LIMIT, || async {
        let j = job(app, key, id).await;
        matches!(j["status"].as_str(), Some("succeeded" | "failed" | "dead")).then_some(j)
    })
    .await
}

async fn on_hand(app: &TestApp, key: &str, sku: &str) -> i64 {
    let p: Value = app
        .get(&format!("/v1/products/{sku}"), Some(key))
        .await
        .json()
        .await
        .unwrap();
    p["on_hand"].as_i64().unwrap()
}

#[tokio::test]
async fn products_are_created_updated_listed_and_validated() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    let created = put_product(&app, &t.key, "TENT-2P", &product(5, false)).await;
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["unit_price"], "249.90");
    assert_eq!(body["on_hand"], 0);
    let mut changed = product(8, true);
    changed["unit_price"] = json!("199");
    let updated = put_product(&app, &t.key, "TENT-2P", &changed).await;
    assert_eq!(updated.status(), 200);
    let body: Value = updated.json().await.unwrap();
    assert_eq!(
        (body["unit_price"].as_str(), body["reorder_point"].as_i64()),
        (Some("199.00"), Some(8))
    );
    put_product(&app, &t.key, "LAMP", &product(1, false)).await;
    let list: Value = app
        .get("/v1/products?limit=1", Some(&t.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["sku"], "LAMP");
    let next = list["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .get(&format!("/v1/products?limit=1&cursor={next}"), Some(&t.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"][0]["sku"], "TENT-2P");
    assert!(rest["next_cursor"].is_null());

    let with = |field: &str, value: Value| {
        let mut p = product(5, false);
        p[field] = value;
        p
    };
    let cases = [
        (with("currency", json!("euro")), "currency"),
        (with("unit_price", json!("12.345")), "unit_price"),
        (with("unit_price", json!(12.5)), "unit_price"),
        (with("unit_price", json!("-1")), "unit_price"),
        (with("reorder_point", json!(-1)), "reorder_point"),
        (with("lead_time_days", json!(400)), "lead_time_days"),
        (with("name", json!("")), "name"),
        (with("colour", json!("green")), "colour"),
    ];
    for (body, field) in cases {
        let problem =
            assert_problem(put_product(&app, &t.key, "X1", &body).await, 422, field).await;
        assert_eq!(problem_fields(&problem), vec![field], "{body}");
    }
    let problem = assert_problem(
        put_product(&app, &t.key, "bad%20sku", &product(1, false)).await,
        422,
        "sku",
    )
    .await;
    assert_eq!(problem_fields(&problem), vec!["sku"]);
}

#[tokio::test]
async fn adjustments_are_validated_at_the_door() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    put_product(&app, &t.key, "TENT", &product(5, false)).await;
    let with = |field: &str, value: Value| {
        let mut a = adjustment("TENT", -1, "sale", "k1");
        a[field] = value;
        a
    };
    let future = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    let cases = [
        (with("delta", json!(0)), "delta", "zero delta"),
        (with("delta", json!(3)), "delta", "a sale that adds stock"),
        (with("reason", json!("theft")), "reason", "unknown reason"),
        (
            with("idempotency_key", json!("")),
            "idempotency_key",
            "empty key",
        ),
        (
            with("idempotency_key", json!("k".repeat(129))),
            "idempotency_key",
            "long key",
        ),
        (with("sku", json!("NOPE")), "sku", "unknown SKU"),
        (
            with("occurred_at", json!("yesterday")),
            "occurred_at",
            "bad timestamp",
        ),
        (
            with("occurred_at", json!(future)),
            "occurred_at",
            "future timestamp",
        ),
        (with("delta", json!("-1")), "delta", "delta as a string"),
        (with("extra", json!(1)), "extra", "unknown field"),
    ];
    for (body, field, why) in cases {
        let problem = assert_problem(adjust(&app, &t.key, &body).await, 422, why).await;
        assert_eq!(problem_fields(&problem), vec![field], "{why}");
    }
    let mut missing = adjustment("TENT", -1, "sale", "k1");
    missing.as_object_mut().unwrap().remove("idempotency_key");
    let problem = assert_problem(adjust(&app, &t.key, &missing).await, 422, "missing key").await;
    assert_eq!(problem_fields(&problem), vec!["idempotency_key"]);
    let counts = app
        .queues
        .counts(&QueueName::parse("stock").unwrap())
        .await
        .unwrap();
    assert_eq!(counts.pending, 0, "nothing invalid was queued");

    // A batch is all or nothing, with every bad item named.
    let batch = json!({"adjustments": [
        adjustment("TENT", 5, "receipt", "b1"),
        adjustment("TENT", 0, "receipt", "b2"),
        adjustment("NOPE", 1, "receipt", "b3"),
        adjustment("TENT", 1, "receipt", "b1"),
    ]});
    let problem = assert_problem(
        app.post_json("/v1/stock-adjustments/batch", Some(&t.key), &batch)
            .await,
        422,
        "bad batch",
    )
    .await;
    assert_eq!(
        problem_fields(&problem),
        vec![
            "adjustments[1].delta",
            "adjustments[2].sku",
            "adjustments[3].idempotency_key"
        ]
    );
    let empty = app
        .post_json(
            "/v1/stock-adjustments/batch",
            Some(&t.key),
            &json!({"adjustments": []}),
        )
        .await;
    assert_problem(empty, 422, "empty batch").await;
    let counts = app
        .queues
        .counts(&QueueName::parse("stock").unwrap())
        .await
        .unwrap();
    assert_eq!(counts.pending, 0, "nothing of a bad batch was queued");
}

#[tokio::test]
async fn a_repeated_key_returns_the_first_job_and_moves_stock_once() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    put_product(&app, &t.key, "TENT", &product(0, false)).await;
    let body = adjustment("TENT", 7, "receipt", "delivery-42");
    let first = adjust(&app, &t.key, &body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = adjust(&app, &t.key, &body).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["job_id"], first["job_id"]);

    let workers = app.start_workers("stock");
    let done = wait_job_done(&app, &t.key, first["job_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"]["on_hand_after"], 7);
    let third: Value = adjust(&app, &t.key, &body).await.json().await.unwrap();
    assert_eq!(
        (third["job_id"].clone(), third["status"].clone()),
        (first["job_id"].clone(), json!("succeeded"))
    );
    assert_eq!(on_hand(&app, &t.key, "TENT").await, 7);
    workers.stop().await;
}

#[tokio::test]
async fn the_same_adjustment_delivered_twice_moves_stock_once() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    put_product(&app, &t.key, "TENT", &product(0, false)).await;
    // Two deliveries of one logical adjustment (as after a crash): two queue jobs carrying the
    // same idempotency key, bypassing the API's own dedupe.
    let payload = json!({
        "tenant_id": t.id, "sku": "TENT", "delta": 4, "reason": "receipt",
        "idempotency_key": "po-7", "reference": null, "occurred_at": chrono::Utc::now()
    });
    let tenant = uuid::Uuid::parse_str(&t.id).unwrap();
    let jobs: Vec<NewJob> = (0..2)
        .map(|_| NewJob::new("stock_adjustment", &payload).tenant(tenant))
        .collect();
    let ids: Vec<String> = app
        .queues
        .push(&QueueName::parse("stock").unwrap(), jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    let workers = app.start_workers("stock");
    let a = wait_job_done(&app, &t.key, &ids[0]).await;
    let b = wait_job_done(&app, &t.key, &ids[1]).await;
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    let applied: Vec<bool> = [&a, &b]
        .iter()
        .map(|j| j["result"]["applied"].as_bool().unwrap())
        .collect();
    assert_eq!(
        applied.iter().filter(|x| **x).count(),
        1,
        "exactly one delivery moved stock"
    );
    assert_eq!(a["result"]["movement_id"], b["result"]["movement_id"]);
    assert_eq!(on_hand(&app, &t.key, "TENT").await, 4);
    workers.stop().await;
}

#[tokio::test]
async fn insufficient_stock_is_a_permanent_failure_that_changes_nothing() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    put_product(&app, &t.key, "TENT", &product(0, false)).await;
    put_product(&app, &t.key, "GIFTCARD", &product(0, true)).await;
    let workers = app.start_workers("stock");
    let r: Value = adjust(&app, &t.key, &adjustment("TENT", 2, "receipt", "in"))
        .await
        .json()
        .await
        .unwrap();
    wait_job_done(&app, &t.key, r["job_id"].as_str().unwrap()).await;

    let r: Value = adjust(&app, &t.key, &adjustment("TENT", -5, "sale", "oversell"))
        .await
        .json()
        .await
        .unwrap();
    let failed = wait_job_done(&app, &t.key, r["job_id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["attempts"], 1, "not retried");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .starts_with("insufficient_stock"),
        "{failed}"
    );
    assert_eq!(on_hand(&app, &t.key, "TENT").await, 2);
    let movements: Value = app
        .get("/v1/products/TENT/movements", Some(&t.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(movements["items"].as_array().unwrap().len(), 1);

    let r: Value = adjust(&app, &t.key, &adjustment("GIFTCARD", -3, "sale", "neg"))
        .await
        .json()
        .await
        .unwrap();
    let ok = wait_job_done(&app, &t.key, r["job_id"].as_str().unwrap()).await;
    assert_eq!(
        ok["result"]["on_hand_after"], -3,
        "allow_negative lets stock go below zero"
    );
    workers.stop().await;
}

#[tokio::test]
async fn tenants_cannot_touch_each_others_products() {
    let app = spawn_app().await;
    let a = app.create_tenant("shop-a").await;
    let b = app.create_tenant("shop-b").await;
    put_product(&app, &a.key, "TENT", &product(0, false)).await;
    assert_problem(
        app.get("/v1/products/TENT", Some(&b.key)).await,
        404,
        "foreign product",
    )
    .await;
    assert_problem(
        app.get("/v1/products/TENT/movements", Some(&b.key)).await,
        404,
        "foreign ledger",
    )
    .await;
    let problem = assert_problem(
        adjust(&app, &b.key, &adjustment("TENT", 1, "receipt", "x")).await,
        422,
        "adjusting a foreign SKU",
    )
    .await;
    assert_eq!(problem_fields(&problem), vec!["sku"]);
    let listed: Value = app
        .get("/v1/products", Some(&b.key))
        .await
        .json()
        .await
        .unwrap();
    assert!(listed["items"].as_array().unwrap().is_empty());
    // B's product of the same SKU is B's own.
    assert_eq!(
        put_product(&app, &b.key, "TENT", &product(0, false))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn a_low_stock_alert_fires_once_per_crossing() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    put_product(&app, &t.key, "TENT", &product(10, false)).await;
    let workers = app.start_workers("stock");
    let steps = [
        (20, "receipt"),
        (-15, "sale"),
        (-1, "sale"),
        (10, "receipt"),
        (-5, "sale"),
        (-1, "sale"),
    ];
    for (i, (delta, reason)) in steps.into_iter().enumerate() {
        let r: Value = adjust(
            &app,
            &t.key,
            &adjustment("TENT", delta, reason, &format!("s{i}")),
        )
        .await
        .json()
        .await
        .unwrap();
        let done = wait_job_done(&app, &t.key, r["job_id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded");
    }
    // 20 → 5 (crosses below 10: alert) → 4 → 14 (back above) → 9 (crosses again: alert) → 8.
    let alerts: Vec<(i64,)> = sqlx::query_as(
        "SELECT (payload->>'on_hand')::bigint FROM outbox WHERE kind = 'low_stock_alert' ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(alerts, vec![(5,), (9,)]);
    // The relay moved them to the emails queue.
    let emails = QueueName::parse("emails").unwrap();
    wait_for("the alerts to reach the emails queue", LIMIT, || async {
        (app.queues.counts(&emails).await.ok()?.pending == 2).then_some(())
    })
    .await;
    workers.stop().await;
}

#[tokio::test]
async fn movements_are_paged_newest_first_and_sales_feed_daily_history() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    put_product(&app, &t.key, "TENT", &product(0, false)).await;
    let workers = app.start_workers("stock");
    let mut receipt = adjustment("TENT", 100, "receipt", "in");
    receipt["occurred_at"] = json!("2026-11-01T08:00:00Z");
    let mut batch = vec![receipt];
    for i in 0..5 {
        let mut sale = adjustment("TENT", -(i + 1), "sale", &format!("sale-{i}"));
        sale["occurred_at"] = json!(format!("2026-11-{:02}T10:00:00Z", 10 + i % 2));
        batch.push(sale);
    }
    let accepted: Value = app
        .post_json(
            "/v1/stock-adjustments/batch",
            Some(&t.key),
            &json!({"adjustments": batch}),
        )
        .await
        .json()
        .await
        .unwrap();
    for j in accepted["jobs"].as_array().unwrap() {
        wait_job_done(&app, &t.key, j["job_id"].as_str().unwrap()).await;
    }
    let page: Value = app
        .get("/v1/products/TENT/movements?limit=4", Some(&t.key))
        .await
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    let ids: Vec<i64> = items.iter().map(|m| m["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert_eq!(
        items[0]["on_hand_after"],
        on_hand(&app, &t.key, "TENT").await
    );
    let next = page["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .get(
            &format!("/v1/products/TENT/movements?limit=4&cursor={next}"),
            Some(&t.key),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert_eq!(on_hand(&app, &t.key, "TENT").await, 100 - 15);

    let sales: Vec<(chrono::NaiveDate, i64)> = sqlx::query_as(
        "SELECT day, quantity FROM daily_sales WHERE sku = 'TENT' AND source = 'ledger' ORDER BY day",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    // Sales 1..=5 alternate between the 10th (1, 3, 5) and the 11th (2, 4).
    assert_eq!(sales, vec![(d("2026-11-10"), 9), (d("2026-11-11"), 6)]);
    workers.stop().await;
}

/// Checks the ledger's invariants for every product of the tenant: one row per key, each row's
/// `on_hand_after` = previous + delta, the level equals the sum of deltas, and products without
/// `allow_negative` never went below zero.
async fn assert_ledger_consistent(app: &TestApp, tenant_id: &str) -> usize {
    let tenant = uuid::Uuid::parse_str(tenant_id).unwrap();
    let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT sku, delta, on_hand_after, idempotency_key FROM stock_movements WHERE tenant_id = $1 ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut keys = std::collections::HashSet::new();
    let mut running: HashMap<String, i64> = HashMap::new();
    for (sku, delta, after, key) in &rows {
        assert!(keys.insert(key.clone()), "two ledger rows for key {key}");
        let level = running.entry(sku.clone()).or_default();
        *level += delta;
        assert_eq!(
            *level, *after,
            "{sku}: on_hand_after breaks the chain at key {key}"
        );
    }
    let products: Vec<(String, i64, bool)> =
        sqlx::query_as("SELECT sku, on_hand, allow_negative FROM products WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&app.db)
            .await
            .unwrap();
    for (sku, level, allow_negative) in products {
        assert_eq!(
            level,
            running.get(&sku).copied().unwrap_or(0),
            "{sku}: level ≠ sum of deltas"
        );
        if !allow_negative {
            let min: Option<i64> = sqlx::query_scalar(
                "SELECT min(on_hand_after) FROM stock_movements WHERE tenant_id = $1 AND sku = $2",
            )
            .bind(tenant)
            .bind(&sku)
            .fetch_one(&app.db)
            .await
            .unwrap();
            assert!(min.unwrap_or(0) >= 0, "{sku} went below zero");
        }
    }
    rows.len()
}

#[tokio::test]
async fn eight_concurrent_workers_never_lose_an_update() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    for s in 0..20 {
        put_product(&app, &t.key, &format!("SKU-{s}"), &product(3, s % 4 == 0)).await;
    }
    let workers: Vec<Workers> = (0..8).map(|_| app.start_workers("stock")).collect();
    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let total = 8 * 5_000;
    let mut job_ids = vec![];
    for chunk in 0..total / 1000 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| {
                let sku = format!("SKU-{}", next() % 20);
                let magnitude = (next() % 9 + 1) as i64;
                let (delta, reason) = if next() % 2 == 0 {
                    (magnitude, "receipt")
                } else {
                    (-magnitude, "sale")
                };
                adjustment(&sku, delta, reason, &format!("k-{chunk}-{i}"))
            })
            .collect();
        let accepted: Value = app
            .post_json(
                "/v1/stock-adjustments/batch",
                Some(&t.key),
                &json!({"adjustments": batch}),
            )
            .await
            .json()
            .await
            .unwrap();
        job_ids.extend(
            accepted["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["job_id"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(job_ids.len(), total);
    let stock = QueueName::parse("stock").unwrap();
    let counts = wait_for(
        "40,000 adjustments to finish",
        Duration::from_secs(240),
        || async {
            let c = app.queues.counts(&stock).await.ok()?;
            (c.succeeded + c.failed == total as u64).then_some(c)
        },
    )
    .await;
    assert_eq!(counts.dead, 0);
    let rows = assert_ledger_consistent(&app, &t.id).await;
    assert_eq!(
        rows as u64, counts.succeeded,
        "one ledger row per succeeded adjustment"
    );
    assert!(
        counts.failed > 0,
        "some sales met insufficient stock (the test exercises rejection)"
    );
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn a_worker_killed_holding_a_batch_applies_every_adjustment_exactly_once() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    for s in 0..10 {
        put_product(&app, &t.key, &format!("SKU-{s}"), &product(0, true)).await;
    }
    let total = 6_000;
    for chunk in 0..total / 1000 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| {
                adjustment(
                    &format!("SKU-{}", i % 10),
                    1 + (i % 3) as i64,
                    "receipt",
                    &format!("k-{chunk}-{i}"),
                )
            })
            .collect();
        let r = app
            .post_json(
                "/v1/stock-adjustments/batch",
                Some(&t.key),
                &json!({"adjustments": batch}),
            )
            .await;
        assert_eq!(r.status(), 202);
    }
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_backroom"))
            .args(["work", "--queues", "stock"])
            .envs(app.child_env())
            .env("BACKROOM_JOB_LEASE_SECS", "2")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("backroom work starts")
    };
    let mut victim = spawn();
    wait_for("the worker to apply some adjustments", LIMIT, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_movements")
            .fetch_one(&app.db)
            .await
            .ok()?;
        (n >= 500).then_some(())
    })
    .await;
    victim.kill().unwrap();
    victim.wait().unwrap();
    let stock = QueueName::parse("stock").unwrap();
    let held = app.queues.counts(&stock).await.unwrap();
    assert!(
        held.running > 0,
        "the victim died holding leased adjustments: {held:?}"
    );

    let mut rescuer = spawn();
    let counts = wait_for(
        "every adjustment to be applied",
        Duration::from_secs(120),
        || async {
            let c = app.queues.counts(&stock).await.ok()?;
            (c.succeeded == total as u64).then_some(c)
        },
    )
    .await;
    rescuer.kill().unwrap();
    rescuer.wait().unwrap();
    assert_eq!((counts.failed, counts.dead), (0, 0));
    assert_eq!(
        assert_ledger_consistent(&app, &t.id).await,
        total,
        "exactly one row per adjustment"
    );
    let expected: i64 = (0..1000).map(|i| 1 + (i % 3) as i64).sum::<i64>() * (total / 1000) as i64;
    let level: i64 = sqlx::query_scalar("SELECT sum(on_hand)::bigint FROM products")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(level, expected);
}

/// A batch is one group: `GET /v1/groups/{id}` counts its jobs by outcome and ends
/// `completed_with_failures` when one adjustment is refused; the same batch sent again answers
/// with the same group; another tenant cannot see it.
#[tokio::test]
async fn a_batch_is_one_group_with_one_status() {
    let app = spawn_app().await;
    let t = app.create_tenant("outdoor").await;
    let other = app.create_tenant("rival").await;
    put_product(&app, &t.key, "TENT", &product(0, false)).await;
    let _workers = app.start_workers("stock");
    let receipt: Value = adjust(&app, &t.key, &adjustment("TENT", 10, "receipt", "in"))
        .await
        .json()
        .await
        .unwrap();
    wait_job_done(&app, &t.key, receipt["job_id"].as_str().unwrap()).await;
    let mut batch = vec![];
    for i in 0..5 {
        batch.push(adjustment("TENT", -1, "sale", &format!("sale-{i}")));
    }
    // More than there is: refused for good.
    batch.push(adjustment("TENT", -1000, "sale", "too-many"));
    let body = json!({"adjustments": batch});
    let accepted: Value = app
        .post_json("/v1/stock-adjustments/batch", Some(&t.key), &body)
        .await
        .json()
        .await
        .unwrap();
    let group = accepted["group_id"]
        .as_str()
        .expect("the batch has a group")
        .to_string();
    let path = format!("/v1/groups/{group}");
    let first: Value = app.get(&path, Some(&t.key)).await.json().await.unwrap();
    assert_eq!(first["total"], 6);
    let job = job(
        &app,
        &t.key,
        accepted["jobs"][0]["job_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(job["group_id"].as_str(), Some(group.as_str()));

    let done = wait_for("the batch's group to complete", LIMIT, || async {
        let g: Value = app.get(&path, Some(&t.key)).await.json().await.unwrap();
        (g["state"] != "running").then_some(g)
    })
    .await;
    assert_eq!(done["state"], "completed_with_failures");
    assert_eq!(
        (done["succeeded"].as_u64(), done["failed"].as_u64()),
        (Some(5), Some(1))
    );
    assert_eq!(done["pending"], 0);
    assert!(done["finished_at"].is_string());

    let again: Value = app
        .post_json("/v1/stock-adjustments/batch", Some(&t.key), &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["group_id"].as_str(),
        Some(group.as_str()),
        "a batch sent again keeps its group"
    );
    assert_eq!(app.get(&path, Some(&other.key)).await.status(), 404);
    assert_eq!(
        app.get("/v1/groups/not-a-group", Some(&t.key))
            .await
            .status(),
        404
    );
    assert_eq!(on_hand(&app, &t.key, "TENT").await, 5);
}
