//! Tenant isolation: for every tenant-facing read, another tenant's id is a 404 — exactly like
//! an id that does not exist — and no tenant can queue work that touches another's rows.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn a_tenant_gets_404_for_every_kind_of_another_tenants_data() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let app = spawn_app_with(move |s| s.smtp_url = Some(url)).await;
    let a = app.create_tenant("shop-a").await;
    let b = app.create_tenant("shop-b").await;
    let r = app
        .send_json(
            Method::PUT,
            "/v1/products/TENT",
            Some(&a.key),
            &json!({"name": "Tent", "unit_price": "10.00", "currency": "EUR", "reorder_point": 0,
                    "reorder_quantity": 1, "lead_time_days": 1, "allow_negative": true}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let order: Value = app
        .post_json(
            "/v1/orders",
            Some(&a.key),
            &json!({"customer": {"name": "C", "email": "c@example.org"}, "currency": "EUR",
                    "tax_rate": "0.1", "lines": [{"sku": "TENT", "quantity": 1}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let email: Value = app
        .post_json(
            "/v1/emails",
            Some(&a.key),
            &json!({"to": "x@example.org", "subject": "Hi", "text": "Body"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let adjustment: Value = app
        .post_json(
            "/v1/stock-adjustments",
            Some(&a.key),
            &json!({"sku": "TENT", "delta": 1, "reason": "receipt", "idempotency_key": "k"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let workers = app.start_workers("stock,invoices,emails");
    let invoice_id = order["invoice_id"].as_str().unwrap();
    wait_for(
        "A's invoice to be ready",
        Duration::from_secs(60),
        || async {
            let i: Value = app
                .get(&format!("/v1/invoices/{invoice_id}"), Some(&a.key))
                .await
                .json()
                .await
                .ok()?;
            (i["status"] == "ready").then_some(())
        },
    )
    .await;

    let paths = [
        "/v1/products/TENT".to_string(),
        "/v1/products/TENT/movements".to_string(),
        format!("/v1/orders/{}", order["order_id"].as_str().unwrap()),
        format!("/v1/invoices/{invoice_id}"),
        format!("/v1/invoices/{invoice_id}/pdf"),
        format!("/v1/emails/{}", email["email_id"].as_str().unwrap()),
        format!("/v1/jobs/{}", email["job_id"].as_str().unwrap()),
        format!("/v1/jobs/{}", adjustment["job_id"].as_str().unwrap()),
    ];
    for path in &paths {
        assert_eq!(
            app.get(path, Some(&a.key)).await.status(),
            200,
            "A reads its own {path}"
        );
        let problem = assert_problem(app.get(path, Some(&b.key)).await, 404, path).await;
        assert!(
            !problem.to_string().contains("shop-a"),
            "{path} leaks nothing of A"
        );
    }
    let listed: Value = app
        .get("/v1/products", Some(&b.key))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        listed["items"].as_array().unwrap().is_empty(),
        "B lists none of A's products"
    );

    // B cannot queue work against A's rows: A's SKU is unknown to B.
    for (path, body) in [
        (
            "/v1/stock-adjustments",
            json!({"sku": "TENT", "delta": -1, "reason": "sale", "idempotency_key": "x"}),
        ),
        (
            "/v1/stock-adjustments/batch",
            json!({"adjustments": [{"sku": "TENT", "delta": -1, "reason": "sale", "idempotency_key": "y"}]}),
        ),
        (
            "/v1/orders",
            json!({"customer": {"name": "C", "email": "c@example.org"}, "currency": "EUR",
                              "tax_rate": "0", "lines": [{"sku": "TENT", "quantity": 1}]}),
        ),
    ] {
        assert_problem(app.post_json(path, Some(&b.key), &body).await, 422, path).await;
    }
    // And admin endpoints refuse tenant keys.
    assert_problem(
        app.get("/admin/v1/queues", Some(&a.key)).await,
        401,
        "tenant key on admin",
    )
    .await;
    workers.stop().await;
}
