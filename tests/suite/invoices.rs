//! Orders, the outbox and invoice PDFs, end to end: real workers, real PDFs read back with
//! poppler's `pdftotext` and checked with `qpdf --check`.

use crate::helpers::*;
use backroom::queue::QueueName;
use reqwest::Method;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(90);

async fn product(app: &TestApp, key: &str, sku: &str, name: &str, price: &str) {
    let r = app
        .send_json(
            Method::PUT,
            &format!("/v1/products/{sku}"),
            Some(key),
            &json!({"name": name, "unit_price": price, "currency": "EUR", "reorder_point": 0,
                    "reorder_quantity": 10, "lead_time_days": 3, "allow_negative": true}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn order(app: &TestApp, key: &str, lines: Vec<Value>) -> Value {
    let r = app
        .post_json(
            "/v1/orders",
            Some(key),
            &json!({
                "customer": {"name": "Łukasz Żółć", "email": "lukasz@example.pl",
                             "address": "ul. Piotrkowska 12\n90-001 Łódź"},
                "currency": "EUR", "tax_rate": "0.081", "lines": lines
            }),
        )
        .await;
    assert_eq!(r.status(), 201, "order accepted");
    r.json().await.unwrap()
}

async fn wait_invoice(app: &TestApp, key: &str, id: &str, status: &str) -> Value {
    wait_for(&format!("invoice {id} to be {status}"), LIMIT, || async {
        let i: Value = app
            .get(&format!("/v1/invoices/{id}"), Some(key))
            .await
            .json()
            .await
            .ok()?;
        (i["status"] == status).then_some(i)
    })
    .await
}

/// Text of the PDF (or of one page) as poppler extracts it.
fn pdf_text(pdf: &[u8], page: Option<usize>) -> String {
    let path = std::env::temp_dir().join(format!("backroom-{}.pdf", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, pdf).unwrap();
    let mut cmd = Command::new("pdftotext");
    cmd.arg("-layout");
    if let Some(p) = page {
        cmd.args(["-f", &p.to_string(), "-l", &p.to_string()]);
    }
    let out = cmd
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) runs");
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "pdftotext failed");
    String::from_utf8(out.stdout).unwrap()
}

fn qpdf_check(pdf: &[u8]) {
    let path = std::env::temp_dir().join(format!("backroom-{}.pdf", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new("qpdf")
        .arg("--check")
        .arg(&path)
        .output()
        .expect("qpdf runs");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "qpdf --check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn page_count(pdf: &[u8]) -> usize {
    let text = pdf_text(pdf, None);
    text.matches('\u{c}').count().max(1)
}

#[tokio::test]
async fn an_order_becomes_a_correct_invoice_pdf_and_its_stock_moves() {
    let app = spawn_app().await;
    let seller = app
        .create_tenant_raw(&json!({"name": "Kinésithérapie Lefèvre", "slug": "kine"}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let key = seller["api_key"].as_str().unwrap().to_string();
    product(&app, &key, "TENT-ZH", "Zelt Zürich 2P", "249.90").await;
    product(&app, &key, "LAMP-LDZ", "Lampa Łódź", "19.95").await;
    product(&app, &key, "GIFT", "Gutschein €50", "50.00").await;
    let created = order(
        &app,
        &key,
        vec![
            json!({"sku": "TENT-ZH", "quantity": 2}),
            json!({"sku": "LAMP-LDZ", "quantity": 3}),
            json!({"sku": "GIFT", "quantity": 1, "unit_price": "45.00"}),
        ],
    )
    .await;
    let invoice_id = created["invoice_id"].as_str().unwrap();
    let pending: Value = app
        .get(&format!("/v1/invoices/{invoice_id}/pdf"), Some(&key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        pending["status"], 409,
        "the PDF is not served while pending"
    );

    let workers = app.start_workers("stock,invoices");
    let invoice = wait_invoice(&app, &key, invoice_id, "ready").await;
    // 2 × 249.90 + 3 × 19.95 + 45.00 = 604.65; tax 8.1 % = 48.97665 → 48.98; total 653.63.
    assert_eq!(invoice["subtotal"], "604.65");
    assert_eq!(invoice["tax"], "48.98");
    assert_eq!(invoice["total"], "653.63");
    let number = invoice["number"].as_str().unwrap().to_string();
    assert!(
        number.starts_with("INV-") && number.ends_with("-000001"),
        "{number}"
    );

    let response = app
        .get(&format!("/v1/invoices/{invoice_id}/pdf"), Some(&key))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/pdf");
    let pdf = response.bytes().await.unwrap().to_vec();
    assert!(pdf.starts_with(b"%PDF"));
    qpdf_check(&pdf);
    let text = pdf_text(&pdf, None);
    for expected in [
        "Kinésithérapie Lefèvre",
        number.as_str(),
        "Łukasz Żółć",
        "90-001 Łódź",
        "TENT-ZH",
        "Zelt Zürich 2P",
        "Lampa Łódź",
        "Gutschein €50",
        "499.80",
        "59.85",
        "45.00",
        "604.65",
        "48.98",
        "653.63",
        "Page 1 of 1",
    ] {
        assert!(
            text.contains(expected),
            "the PDF text lacks {expected:?}:\n{text}"
        );
    }
    if let Ok(path) = std::env::var("BACKROOM_SAMPLE_PDF") {
        std::fs::write(path, &pdf).unwrap();
    }

    // The order's sale adjustments moved the stock.
    let order: Value = app
        .get(
            &format!("/v1/orders/{}", created["order_id"].as_str().unwrap()),
            Some(&key),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(order["invoice"]["status"], "ready");
    assert_eq!(order["lines"][0]["line_total"], "499.80");
    wait_for("the order's stock to move", LIMIT, || async {
        let p: Value = app
            .get("/v1/products/LAMP-LDZ", Some(&key))
            .await
            .json()
            .await
            .ok()?;
        (p["on_hand"] == -3).then_some(())
    })
    .await;
    // Support finds the order's finished invoice job (and its sales) by the order's number.
    let number = created["order_number"].as_str().unwrap();
    let found = wait_for("the order's jobs in the job history", LIMIT, || async {
        let page: Value = app
            .get(
                &format!("/admin/v1/jobs/search?q=args.order_number:{number}"),
                Some(ADMIN_TOKEN),
            )
            .await
            .json()
            .await
            .ok()?;
        let items = page["items"].as_array()?.clone();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["kind"], "render_invoice");
    assert_eq!(found[0]["tenant"], "kine");
    let sales = wait_for(
        "the order's three sales in the job history",
        LIMIT,
        || async {
            let page: Value = app
                .get(
                    &format!("/admin/v1/jobs/search?q=args.reference:{number}"),
                    Some(ADMIN_TOKEN),
                )
                .await
                .json()
                .await
                .ok()?;
            (page["items"].as_array()?.len() == 3).then_some(page)
        },
    )
    .await;
    assert!(
        sales["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["kind"] == "stock_adjustment")
    );
    workers.stop().await;
}

#[tokio::test]
async fn a_long_order_flows_over_pages_with_the_header_repeated() {
    let app = spawn_app().await;
    let t = app.create_tenant("bulk").await;
    for i in 0..5 {
        product(
            &app,
            &t.key,
            &format!("PART-{i}"),
            &format!("Spare part no. {i}"),
            "1.10",
        )
        .await;
    }
    let lines: Vec<Value> = (0..150)
        .map(|i| json!({"sku": format!("PART-{}", i % 5), "quantity": i + 1}))
        .collect();
    let created = order(&app, &t.key, lines).await;
    let workers = app.start_workers("invoices");
    let invoice_id = created["invoice_id"].as_str().unwrap();
    wait_invoice(&app, &t.key, invoice_id, "ready").await;
    let pdf = app
        .get(&format!("/v1/invoices/{invoice_id}/pdf"), Some(&t.key))
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    qpdf_check(&pdf);
    let pages = page_count(&pdf);
    assert!(pages >= 4, "150 lines span several pages, got {pages}");
    for page in 1..=pages {
        let text = pdf_text(&pdf, Some(page));
        assert!(
            text.contains("Description") && text.contains("Unit price"),
            "page {page} repeats the header"
        );
        assert!(
            text.contains(&format!("Page {page} of {pages}")),
            "page {page} is numbered"
        );
    }
    let all = pdf_text(&pdf, None);
    // Σ (i+1) × 1.10 for i < 150 = 11325 × 1.10 = 12457.50
    assert!(all.contains("12457.50"), "subtotal");
    assert_eq!(
        all.matches("Spare part no.").count(),
        150,
        "every line once"
    );
    workers.stop().await;
}

#[tokio::test]
async fn invoice_numbers_are_gapless_and_assigned_once_even_if_the_job_runs_twice() {
    let app = spawn_app().await;
    let t = app.create_tenant("shop").await;
    product(&app, &t.key, "A", "Article", "10.00").await;
    let mut invoices = vec![];
    for _ in 0..4 {
        let created = order(&app, &t.key, vec![json!({"sku": "A", "quantity": 1})]).await;
        invoices.push(created["invoice_id"].as_str().unwrap().to_string());
    }
    // A second delivery of the first invoice's job.
    let tenant = uuid::Uuid::parse_str(&t.id).unwrap();
    let duplicate = backroom::queue::NewJob::new(
        "render_invoice",
        &json!({"tenant_id": t.id, "invoice_id": invoices[0]}),
    )
    .tenant(tenant);
    app.queues
        .push(&QueueName::parse("invoices").unwrap(), vec![duplicate])
        .await
        .unwrap();
    let workers = app.start_workers("invoices");
    let mut numbers = vec![];
    for id in &invoices {
        let i = wait_invoice(&app, &t.key, id, "ready").await;
        numbers.push(i["number"].as_str().unwrap().to_string());
    }
    let invoices_queue = QueueName::parse("invoices").unwrap();
    wait_for("the duplicate job to finish", LIMIT, || async {
        (app.queues.counts(&invoices_queue).await.ok()?.succeeded == 5).then_some(())
    })
    .await;
    let mut suffixes: Vec<u32> = numbers
        .iter()
        .map(|n| n.rsplit('-').next().unwrap().parse().unwrap())
        .collect();
    suffixes.sort();
    assert_eq!(
        suffixes,
        vec![1, 2, 3, 4],
        "gapless, each number once: {numbers:?}"
    );
    let again: Value = app
        .get(&format!("/v1/invoices/{}", invoices[0]), Some(&t.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["number"], numbers[0], "the re-run did not renumber");
    workers.stop().await;
}

#[tokio::test]
async fn an_order_is_accepted_while_redis_is_down_and_its_work_flows_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let port = redis.port;
    let url = redis.url();
    let app = spawn_app_with(move |s| s.redis_url = url).await;
    let t = app.create_tenant("shop").await;
    product(&app, &t.key, "A", "Article", "10.00").await;
    redis.kill();

    let created = order(&app, &t.key, vec![json!({"sku": "A", "quantity": 2})]).await;
    let direct = app
        .post_json(
            "/v1/stock-adjustments",
            Some(&t.key),
            &json!({"sku": "A", "delta": 1, "reason": "receipt", "idempotency_key": "r1"}),
        )
        .await;
    let problem = assert_problem(direct, 503, "a direct enqueue while Redis is down").await;
    assert!(problem["detail"].as_str().unwrap().contains("redis"));
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(unsent, 3, "stock, invoice and email wait in the outbox");

    let _redis_again = RedisServer::start_on(port).await;
    let workers = app.start_workers("stock,invoices");
    wait_invoice(
        &app,
        &t.key,
        created["invoice_id"].as_str().unwrap(),
        "ready",
    )
    .await;
    wait_for("the sale to move stock", LIMIT, || async {
        let p: Value = app
            .get("/v1/products/A", Some(&t.key))
            .await
            .json()
            .await
            .ok()?;
        (p["on_hand"] == -2).then_some(())
    })
    .await;
    workers.stop().await;
}

#[tokio::test]
async fn two_relays_at_once_enqueue_every_outbox_row_exactly_once() {
    let app = spawn_app().await;
    let t = app.create_tenant("shop").await;
    product(&app, &t.key, "A", "Article", "1.00").await;
    for _ in 0..40 {
        order(&app, &t.key, vec![json!({"sku": "A", "quantity": 1})]).await;
    }
    let rows = 40 * 3;
    let relay = |n| {
        let (db, queues) = (app.db.clone(), app.queues.clone());
        tokio::spawn(async move {
            let mut moved = 0;
            loop {
                let m = backroom::outbox::relay_once(&db, &queues, n).await.unwrap();
                if m == 0 {
                    return moved;
                }
                moved += m;
            }
        })
    };
    let (a, b) = (relay(7), relay(5));
    let moved = a.await.unwrap() + b.await.unwrap();
    assert_eq!(moved, rows, "each row relayed by exactly one relay");
    // Pending, or waiting for another job (an order's email waits for its invoice).
    let jobs_in_queues = || async {
        let mut n = 0;
        for q in ["stock", "invoices", "emails"] {
            let c = app
                .queues
                .counts(&QueueName::parse(q).unwrap())
                .await
                .unwrap();
            n += c.pending + c.waiting;
        }
        n
    };
    let queued = jobs_in_queues().await;
    assert_eq!(queued, rows as u64, "one job per outbox row");
    let emails = app
        .queues
        .counts(&QueueName::parse("emails").unwrap())
        .await
        .unwrap();
    assert_eq!(
        (emails.pending, emails.waiting),
        (0, 40),
        "each email waits for its invoice"
    );
    // A row relayed again (a crash between push and commit) maps to the job it created.
    sqlx::query(
        "UPDATE outbox SET sent_at = NULL WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 10)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(
        backroom::outbox::relay_once(&app.db, &app.queues, 100)
            .await
            .unwrap(),
        10
    );
    assert_eq!(jobs_in_queues().await, queued, "no duplicate jobs");
}

#[tokio::test]
async fn a_bad_font_path_retries_then_fails_the_invoice_with_the_reason() {
    let app = spawn_app_with(|s| {
        s.invoice_font_dir = Some("/nonexistent/fonts".into());
        s.queue.retry_base = Duration::from_millis(20);
        s.queue.retry_cap = Duration::from_millis(100);
    })
    .await;
    let t = app.create_tenant("shop").await;
    product(&app, &t.key, "A", "Article", "1.00").await;
    let created = order(&app, &t.key, vec![json!({"sku": "A", "quantity": 1})]).await;
    let workers = app.start_workers("invoices");
    let invoice_id = created["invoice_id"].as_str().unwrap();
    let failed = wait_invoice(&app, &t.key, invoice_id, "failed").await;
    assert!(
        failed["failure_reason"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/fonts"),
        "{failed}"
    );
    let pdf = app
        .get(&format!("/v1/invoices/{invoice_id}/pdf"), Some(&t.key))
        .await;
    assert_problem(pdf, 409, "the PDF of a failed invoice").await;
    workers.stop().await;
}
