//! Webhooks (issue #17): a real HTTP receiver started by each test (axum on port 0) that records
//! what arrives and answers as scripted, and signatures checked with an independent
//! implementation of the Standard Webhooks spec (Python's `hmac`, not ours).

use crate::helpers::*;
use crate::support;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// What the receiver answers to the next request.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// This status with a 100 KiB body.
    Large(u16),
    /// Never answers (until the test ends).
    Hang,
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    raw: String,
    body: Value,
}

/// A webhook receiver on 127.0.0.1: answers 200 unless scripted otherwise.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: &[Reply]) -> Self {
        let seen: Arc<Mutex<Vec<Received>>> = Default::default();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let (s, q) = (seen.clone(), script.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, raw: String| {
                let (seen, script) = (s.clone(), q.clone());
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    seen.lock().unwrap().push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
                        raw,
                    });
                    let reply = script.lock().unwrap().pop_front();
                    match reply.unwrap_or(Reply::Status(200)) {
                        Reply::Status(code) => {
                            (StatusCode::from_u16(code).unwrap(), "noted".into())
                        }
                        Reply::Large(code) => {
                            (StatusCode::from_u16(code).unwrap(), "x".repeat(100 * 1024))
                        }
                        Reply::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            (StatusCode::OK, "late".to_string())
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            seen,
            _server: server,
        }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        wait_for(what, LIMIT, || async {
            let seen = self.seen();
            done(&seen).then_some(seen)
        })
        .await
    }
}

/// Whether `received` carries a valid signature made with `secret`, checked by Python's `hmac`
/// (an independent implementation of the spec's "v1,<base64 HMAC-SHA256>").
fn signed_with(received: &Received, secret: &str) -> bool {
    let script = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts, header = sys.argv[1:5]
body = sys.stdin.buffer.read()
key = base64.b64decode(secret.removeprefix("whsec_"))
expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
print("ok" if any(s == "v1," + expected for s in header.split(" ")) else "no")
"#;
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            secret,
            &received.id,
            &received.timestamp,
            &received.signature,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(received.raw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

/// An app whose webhooks may go to loopback, retried after 0.2 s (three times), cut after 1 s.
async fn webhook_app() -> TestApp {
    spawn_app_with(|s| {
        s.webhooks.allow_private = true;
        s.webhooks.retry_after = vec![Duration::from_millis(200); 3];
        s.webhooks.timeout = Duration::from_secs(1);
    })
    .await
}

/// Creates an endpoint; returns its id and secret.
async fn create_endpoint(app: &TestApp, key: &str, url: &str, types: &[&str]) -> (String, String) {
    let r = app
        .post_json(
            "/v1/webhooks/endpoints",
            Some(key),
            &json!({"url": url, "event_types": types, "description": "the ERP"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    (
        body["endpoint"]["id"].as_str().unwrap().to_string(),
        body["secret"].as_str().unwrap().to_string(),
    )
}

async fn put_product(app: &TestApp, key: &str, sku: &str, reorder_point: i64) {
    let r = app
        .send_json(
            reqwest::Method::PUT,
            &format!("/v1/products/{sku}"),
            Some(key),
            &json!({"name": format!("Article {sku}"), "unit_price": "12.50", "currency": "EUR",
                    "reorder_point": reorder_point, "reorder_quantity": 10, "lead_time_days": 3,
                    "allow_negative": true}),
        )
        .await;
    assert!(r.status().is_success());
}

async fn adjust(app: &TestApp, key: &str, sku: &str, delta: i64, n: usize) {
    let reason = if delta < 0 { "sale" } else { "receipt" };
    let r = app
        .post_json(
            "/v1/stock-adjustments",
            Some(key),
            &json!({"sku": sku, "delta": delta, "reason": reason,
                    "idempotency_key": format!("adj-{n}")}),
        )
        .await;
    assert_eq!(r.status(), 202);
}

/// An order of one `sku` (an invoice, its email, a sale); returns the answer.
async fn order(app: &TestApp, key: &str, sku: &str) -> Value {
    let r = app
        .post_json(
            "/v1/orders",
            Some(key),
            &json!({"customer": {"name": "Ada", "email": "ada@example.org", "address": "London"},
                    "currency": "EUR", "tax_rate": "0.2",
                    "lines": [{"sku": sku, "quantity": 1}]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn deliveries(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/v1/webhooks/deliveries{query}"), Some(key))
        .await;
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

async fn wait_for_delivery(app: &TestApp, key: &str, status: &str) -> Value {
    wait_for(&format!("a {status} delivery"), LIMIT, || async {
        deliveries(app, key, "")
            .await
            .into_iter()
            .find(|d| d["status"] == status)
    })
    .await
}

#[tokio::test]
async fn every_event_arrives_once_signed_verifiably_with_its_own_id() {
    let smtp = support::smtp::SmtpServer::start().await;
    let smtp_url = smtp.url();
    let app = spawn_app_with(move |s| {
        s.webhooks.allow_private = true;
        s.smtp_url = Some(smtp_url);
        s.emails_per_minute = 10_000;
    })
    .await;
    let t = app.create_tenant("erp").await;
    let receiver = Receiver::start(&[]).await;
    let types = [
        "stock.adjusted",
        "stock.low",
        "invoice.ready",
        "email.sent",
        "email.failed",
    ];
    let (_, secret) = create_endpoint(&app, &t.key, &receiver.url, &types).await;
    let _workers = app.start_workers("stock,invoices,emails,webhooks");

    put_product(&app, &t.key, "SKU-1", 5).await;
    adjust(&app, &t.key, "SKU-1", 10, 1).await;
    adjust(&app, &t.key, "SKU-1", -8, 2).await;
    order(&app, &t.key, "SKU-1").await;
    // One email the server takes, one it refuses for good (the sink answers 550 to "reject…").
    for to in ["ops@example.org", "reject-me@example.org"] {
        let email = app
            .post_json(
                "/v1/emails",
                Some(&t.key),
                &json!({"to": to, "subject": "Hello", "text": "Hi"}),
            )
            .await;
        assert_eq!(email.status(), 202);
    }

    // Two adjustments and the order's sale; one crossing below 5; the invoice; two emails sent
    // (the order's invoice email and the requested one) and one failed.
    let count = |seen: &[Received], t: &str| seen.iter().filter(|r| r.body["type"] == t).count();
    let seen = receiver
        .wait_for("every event", |seen| {
            count(seen, "stock.adjusted") >= 3
                && count(seen, "stock.low") >= 1
                && count(seen, "invoice.ready") >= 1
                && count(seen, "email.sent") >= 2
                && count(seen, "email.failed") >= 1
        })
        .await;
    for (kind, n) in [
        ("stock.adjusted", 3),
        ("stock.low", 1),
        ("invoice.ready", 1),
        ("email.sent", 2),
        ("email.failed", 1),
    ] {
        assert_eq!(count(&seen, kind), n, "{kind} once each: {seen:#?}");
    }
    let mut ids = std::collections::HashSet::new();
    for r in &seen {
        assert!(signed_with(r, &secret), "a valid signature: {r:?}");
        assert!(!signed_with(r, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(
            r.id.starts_with("msg_") && ids.insert(r.id.clone()),
            "one id per event"
        );
        assert_eq!(r.body["id"], r.id.as_str());
        assert_eq!(r.body["version"], 1);
        let age = chrono::Utc::now().timestamp() - r.timestamp.parse::<i64>().unwrap();
        assert!((0..60).contains(&age), "a current timestamp");
    }
    let failed = seen
        .iter()
        .find(|r| r.body["type"] == "email.failed")
        .unwrap();
    assert_eq!(failed.body["data"]["to"], "reject-me@example.org");
    assert!(
        failed.body["data"]["error"]
            .as_str()
            .unwrap()
            .contains("550"),
        "{failed:?}"
    );
    let low = seen.iter().find(|r| r.body["type"] == "stock.low").unwrap();
    assert_eq!(low.body["data"]["on_hand"], 2);
    let invoice = seen
        .iter()
        .find(|r| r.body["type"] == "invoice.ready")
        .unwrap();
    let pdf = app
        .get(
            invoice.body["data"]["pdf_url"].as_str().unwrap(),
            Some(&t.key),
        )
        .await;
    assert_eq!(pdf.status(), 200, "the event links to the PDF");
    let listed = deliveries(&app, &t.key, "?status=delivered").await;
    assert_eq!(listed.len(), seen.len());
    assert!(listed.iter().all(|d| d["attempts"] == 1));
}

#[tokio::test]
async fn a_failing_receiver_gets_three_attempts_under_one_id_then_the_delivery_succeeds() {
    let app = webhook_app().await;
    let t = app.create_tenant("flaky").await;
    let receiver = Receiver::start(&[Reply::Status(500), Reply::Status(500)]).await;
    let (endpoint, _) = create_endpoint(&app, &t.key, &receiver.url, &["stock.adjusted"]).await;
    let _workers = app.start_workers("stock,webhooks");
    put_product(&app, &t.key, "SKU-1", 0).await;
    adjust(&app, &t.key, "SKU-1", 3, 1).await;

    let delivered = wait_for_delivery(&app, &t.key, "delivered").await;
    assert_eq!(delivered["attempts"], 3);
    assert_eq!(delivered["response_status"], 200);
    assert_eq!(delivered["endpoint_id"], endpoint.as_str());
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|r| r.id == seen[0].id),
        "one webhook-id: {seen:?}"
    );
    let filtered = deliveries(&app, &t.key, "?event_type=stock.low").await;
    assert!(filtered.is_empty());
    // Each test runs in a process of its own, so the process's counters are this test's.
    let metrics = app
        .get("/metrics", Some(ADMIN_TOKEN))
        .await
        .text()
        .await
        .unwrap();
    for line in [
        r#"backroom_webhook_attempts_total{outcome="retry"} 2"#,
        r#"backroom_webhook_attempts_total{outcome="delivered"} 1"#,
        "backroom_webhook_attempt_seconds_count 3",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn a_hanging_receiver_is_cut_at_the_timeout_and_tried_again() {
    let app = webhook_app().await;
    let t = app.create_tenant("slow").await;
    let receiver = Receiver::start(&[Reply::Hang]).await;
    create_endpoint(&app, &t.key, &receiver.url, &["stock.adjusted"]).await;
    let _workers = app.start_workers("stock,webhooks");
    put_product(&app, &t.key, "SKU-1", 0).await;
    let started = Instant::now();
    adjust(&app, &t.key, "SKU-1", 3, 1).await;

    let delivered = wait_for_delivery(&app, &t.key, "delivered").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the first attempt waited the timeout"
    );
    assert_eq!(delivered["attempts"], 2);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].id, seen[1].id);
}

#[tokio::test]
async fn gone_disables_the_endpoint_at_once() {
    let app = webhook_app().await;
    let t = app.create_tenant("gone").await;
    let receiver = Receiver::start(&[Reply::Large(410)]).await;
    let (endpoint, _) = create_endpoint(&app, &t.key, &receiver.url, &["stock.adjusted"]).await;
    let _workers = app.start_workers("stock,webhooks");
    put_product(&app, &t.key, "SKU-1", 0).await;
    adjust(&app, &t.key, "SKU-1", 3, 1).await;

    let failed = wait_for_delivery(&app, &t.key, "failed").await;
    assert_eq!(failed["attempts"], 1, "not retried");
    assert_eq!(failed["response_status"], 410);
    let excerpt = failed["response_excerpt"].as_str().unwrap();
    assert_eq!(excerpt.len(), 2048, "a 100 KiB answer is kept to its start");
    let shown: Value = app
        .get(&format!("/v1/webhooks/endpoints/{endpoint}"), Some(&t.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["enabled"], false);
    assert!(shown["disabled_reason"].as_str().unwrap().contains("410"));
    // Later events are not delivered to it.
    adjust(&app, &t.key, "SKU-1", 3, 2).await;
    wait_for("the second adjustment to apply", LIMIT, || async {
        let level: i64 = sqlx::query_scalar("SELECT on_hand FROM products WHERE sku = 'SKU-1'")
            .fetch_one(&app.db)
            .await
            .ok()?;
        (level == 6).then_some(())
    })
    .await;
    assert_eq!(deliveries(&app, &t.key, "").await.len(), 1);
    assert_eq!(receiver.seen().len(), 1);
}

#[tokio::test]
async fn a_rotated_secret_keeps_signing_beside_the_new_one_during_the_grace_period() {
    let app = webhook_app().await;
    let t = app.create_tenant("rotating").await;
    let receiver = Receiver::start(&[]).await;
    let (endpoint, old) = create_endpoint(&app, &t.key, &receiver.url, &["stock.adjusted"]).await;
    let r = app
        .post_json(
            &format!("/v1/webhooks/endpoints/{endpoint}/rotate-secret"),
            Some(&t.key),
            &json!({"grace_hours": 24}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let new = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new, old);
    let _workers = app.start_workers("stock,webhooks");
    put_product(&app, &t.key, "SKU-1", 0).await;
    adjust(&app, &t.key, "SKU-1", 3, 1).await;
    let seen = receiver.wait_for("a delivery", |s| !s.is_empty()).await;
    assert_eq!(seen[0].signature.split(' ').count(), 2);
    assert!(signed_with(&seen[0], &old), "the old secret still verifies");
    assert!(signed_with(&seen[0], &new), "the new secret verifies");
    let too_long = app
        .post_json(
            &format!("/v1/webhooks/endpoints/{endpoint}/rotate-secret"),
            Some(&t.key),
            &json!({"grace_hours": 1000}),
        )
        .await;
    assert_problem(too_long, 422, "grace").await;
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let app = spawn_app().await;
    let t = app.create_tenant("careful").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://localhost:8080/",
        "ftp://example.com/",
    ] {
        let r = app
            .post_json("/v1/webhooks/endpoints", Some(&t.key), &json!({"url": url}))
            .await;
        let body = assert_problem(r, 422, url).await;
        assert_eq!(problem_fields(&body), vec!["url"], "{url}");
    }
    let r = app
        .post_json(
            "/v1/webhooks/endpoints",
            Some(&t.key),
            &json!({"url": "https://hooks.example.com/in", "event_types": ["stock.nope"]}),
        )
        .await;
    let body = assert_problem(r, 422, "event type").await;
    assert_eq!(problem_fields(&body), vec!["event_types"]);

    // Saved while allowed, then delivered by workers that do not allow it: refused, not sent.
    let receiver = Receiver::start(&[]).await;
    let allowing = webhook_app().await;
    let u = allowing.create_tenant("on-prem").await;
    create_endpoint(&allowing, &u.key, &receiver.url, &[]).await;
    let mut strict = allowing.settings.clone();
    strict.webhooks.allow_private = false;
    strict.database_max_connections = 4;
    let workers = support::app::InProcessWorkers::start(&strict, "stock,webhooks", None).unwrap();
    put_product(&allowing, &u.key, "SKU-1", 0).await;
    adjust(&allowing, &u.key, "SKU-1", 3, 1).await;
    let failed = wait_for_delivery(&allowing, &u.key, "failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{failed}"
    );
    assert!(receiver.seen().is_empty(), "nothing was sent");
    workers.stop().await.unwrap();
}

#[tokio::test]
async fn a_tenant_cannot_see_change_or_replay_anothers_endpoints_or_deliveries() {
    let app = webhook_app().await;
    let a = app.create_tenant("tenant-a").await;
    let b = app.create_tenant("tenant-b").await;
    // Four failures: every attempt of the schedule (the first and three retries).
    let receiver = Receiver::start(&[Reply::Status(503); 4]).await;
    let (endpoint, _) = create_endpoint(&app, &a.key, &receiver.url, &["stock.adjusted"]).await;
    let _workers = app.start_workers("stock,webhooks");
    put_product(&app, &a.key, "SKU-1", 0).await;
    adjust(&app, &a.key, "SKU-1", 3, 1).await;
    let failed = wait_for_delivery(&app, &a.key, "failed").await;
    assert_eq!(failed["attempts"], 4);
    assert_eq!(failed["response_status"], 503);
    let delivery = failed["id"].as_str().unwrap();

    let path = format!("/v1/webhooks/endpoints/{endpoint}");
    assert_eq!(app.get(&path, Some(&b.key)).await.status(), 404);
    for (method, path, body) in [
        (
            reqwest::Method::PATCH,
            path.clone(),
            json!({"enabled": true}),
        ),
        (reqwest::Method::DELETE, path.clone(), json!({})),
        (
            reqwest::Method::POST,
            format!("{path}/rotate-secret"),
            json!({}),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/webhooks/deliveries/{delivery}/retry"),
            json!({}),
        ),
    ] {
        let r = app
            .send_json(method.clone(), &path, Some(&b.key), &body)
            .await;
        assert_eq!(r.status(), 404, "{method} {path}");
    }
    let listed: Value = app
        .get("/v1/webhooks/endpoints", Some(&b.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]));
    assert!(deliveries(&app, &b.key, "").await.is_empty());
    let filtered = deliveries(&app, &b.key, &format!("?endpoint_id={endpoint}")).await;
    assert!(filtered.is_empty());
    // The owner can replay it: one more attempt under the same id.
    let r = app
        .post_json(
            &format!("/v1/webhooks/deliveries/{delivery}/retry"),
            Some(&a.key),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let delivered = wait_for_delivery(&app, &a.key, "delivered").await;
    assert_eq!(delivered["id"], delivery);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|r| r.id == seen[0].id));
}

/// An event is written in the transaction of its change: a ledger batch that rolls back (here a
/// trigger refuses the level's update, after the event rows were written) sends nothing; once it
/// commits, the event goes out once.
#[tokio::test]
async fn a_change_that_rolls_back_sends_no_event() {
    let app = webhook_app().await;
    let t = app.create_tenant("rollback").await;
    let receiver = Receiver::start(&[]).await;
    create_endpoint(&app, &t.key, &receiver.url, &["stock.adjusted"]).await;
    put_product(&app, &t.key, "SKU-1", 0).await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF EXISTS (SELECT 1 FROM refusing) THEN RAISE EXCEPTION 'refused'; END IF;
              RETURN NEW; END $$;
         CREATE TABLE refusing (x int);
         INSERT INTO refusing VALUES (1);
         CREATE TRIGGER refuse BEFORE UPDATE ON products FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let _workers = app.start_workers("stock,webhooks");
    adjust(&app, &t.key, "SKU-1", 3, 1).await;
    wait_for("the batch to be refused", LIMIT, || async {
        let jobs = app
            .queues
            .list(
                &backroom::jobs::Queue::Stock.id(),
                backroom::queue::JobStatus::Retrying,
                10,
                None,
            )
            .await
            .ok()?;
        (!jobs.items.is_empty()).then_some(())
    })
    .await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 0, "no event of a rolled-back change");
    sqlx::query("DELETE FROM refusing")
        .execute(&app.db)
        .await
        .unwrap();
    let seen = receiver
        .wait_for("the event once applied", |s| !s.is_empty())
        .await;
    assert_eq!(seen[0].body["type"], "stock.adjusted");
    assert_eq!(seen[0].body["data"]["on_hand_after"], 3);
}

/// A worker SIGKILLed while its delivery waits on the receiver: the delivery is attempted once
/// more, by the next worker, under the same `webhook-id`, and ends delivered.
#[tokio::test]
async fn a_worker_killed_mid_delivery_leads_to_one_more_attempt_under_the_same_id() {
    let app = webhook_app().await;
    let t = app.create_tenant("killed").await;
    let receiver = Receiver::start(&[Reply::Hang]).await;
    create_endpoint(&app, &t.key, &receiver.url, &["stock.adjusted"]).await;
    let env = [
        ("BACKROOM_WEBHOOKS_ALLOW_PRIVATE", "true".to_string()),
        ("BACKROOM_WEBHOOK_TIMEOUT_SECS", "60".to_string()),
    ];
    let mut first = WorkerProcess::spawn(&app, "stock,webhooks", &env);
    put_product(&app, &t.key, "SKU-1", 0).await;
    adjust(&app, &t.key, "SKU-1", 3, 1).await;
    receiver
        .wait_for("the first attempt", |s| s.len() == 1)
        .await;
    first.kill9();
    let _second = WorkerProcess::spawn(&app, "webhooks", &env);
    let delivered = wait_for_delivery(&app, &t.key, "delivered").await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2, "one more attempt");
    assert_eq!(seen[0].id, seen[1].id);
    assert_eq!(
        delivered["attempts"], 1,
        "the killed attempt never recorded an outcome"
    );
}

/// Every kind's final outcome is an event (`job.succeeded` with the result, `job.failed` with
/// the error), and an outcome told twice — a worker that died after recording the event and
/// before recording the outcome runs the job again — is delivered once.
#[tokio::test]
async fn job_outcomes_are_events_and_an_outcome_told_twice_is_delivered_once() {
    let app = webhook_app().await;
    let t = app.create_tenant("jobs").await;
    let receiver = Receiver::start(&[]).await;
    create_endpoint(
        &app,
        &t.key,
        &receiver.url,
        &["job.succeeded", "job.failed", "job.dead"],
    )
    .await;
    let r = app
        .send_json(
            reqwest::Method::PUT,
            "/v1/products/SKU-1",
            Some(&t.key),
            &json!({"name": "Strict", "unit_price": "1.00", "currency": "EUR",
                    "reorder_point": 0, "reorder_quantity": 1, "lead_time_days": 1,
                    "allow_negative": false}),
        )
        .await;
    assert!(r.status().is_success());
    let _workers = app.start_workers("stock,webhooks");
    adjust(&app, &t.key, "SKU-1", 1, 1).await;
    adjust(&app, &t.key, "SKU-1", -5, 2).await;
    // A job of this tenant whose payload no worker can read: dead at once.
    let unreadable = backroom::queue::NewJob::new("stock_adjustment", &json!({"n": 1}))
        .tenant(t.id.parse().unwrap());
    let stock = backroom::jobs::Queue::Stock.id();
    let dead_id = app.queues.push(&stock, vec![unreadable]).await.unwrap()[0]
        .id
        .clone();
    let seen = receiver.wait_for("three outcomes", |s| s.len() >= 3).await;
    let of = |kind: &str| {
        seen.iter()
            .find(|r| r.body["type"] == kind)
            .unwrap()
            .clone()
    };
    let succeeded = of("job.succeeded");
    assert_eq!(succeeded.body["data"]["queue"], "stock");
    assert_eq!(succeeded.body["data"]["status"], "succeeded");
    assert_eq!(succeeded.body["data"]["result"]["on_hand_after"], 1);
    let failed = of("job.failed");
    assert!(
        failed.body["data"]["error"]
            .as_str()
            .unwrap()
            .contains("insufficient"),
        "{failed:?}"
    );
    let dead = of("job.dead");
    assert_eq!(dead.body["data"]["job_id"], json!(dead_id));
    assert_eq!(dead.body["data"]["status"], "dead");
    assert!(dead.body["data"]["error"].is_string(), "{dead:?}");
    assert_eq!(seen.len(), 3, "the deliveries' own outcomes are not events");

    use backroom::queue::OutcomeHook as _;
    let hook = backroom::jobs::webhooks::job_events::JobEvents::new(app.db.clone());
    let tenant: uuid::Uuid = t.id.parse().unwrap();
    let meta = backroom::queue::JobMeta::outside_queue(
        "stock:told-twice",
        "stock",
        "stock_adjustment",
        Some(tenant),
        1,
        5,
    );
    hook.finished(&meta, "succeeded", "{}").await;
    hook.finished(&meta, "succeeded", "{}").await;
    let deliveries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE event_id = 'msg_job_stock:told-twice_1'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(deliveries, 1);
    let seen = receiver
        .wait_for("the told-twice event", |s| s.len() >= 4)
        .await;
    assert_eq!(seen[3].id, "msg_job_stock:told-twice_1");
}

/// The delivery body is documented in the OpenAPI document, with every event type there is.
#[tokio::test]
async fn the_openapi_document_describes_the_event_body_and_every_type() {
    let app = spawn_app().await;
    let spec: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let schemas = &spec["components"]["schemas"];
    let body = &schemas["WebhookEvent"];
    for field in ["type", "id", "created_at", "version", "data"] {
        assert!(body["properties"][field].is_object(), "{field} in {body}");
    }
    let mut documented: Vec<String> = schemas["WebhookEventType"]["enum"]
        .as_array()
        .expect("the types as an enum")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let mut known: Vec<String> = backroom::jobs::webhooks::events::EventType::ALL
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    documented.sort();
    known.sort();
    assert_eq!(documented, known);
}

/// The bounds of the endpoints API, per field, and per tenant: a tenant at its 20 endpoints gets
/// 409, and another tenant still creates its own.
#[tokio::test]
async fn endpoint_inputs_are_bounded_and_one_tenants_cap_is_its_own() {
    let app = spawn_app().await;
    let a = app.create_tenant("many").await;
    let b = app.create_tenant("few").await;
    let url = "https://hooks.example.com/in";
    let all_types: Vec<&str> = std::iter::repeat_n("stock.adjusted", 21).collect();
    let cases = [
        (
            json!({"url": format!("https://example.com/{}", "a".repeat(2048))}),
            "url",
        ),
        (json!({"url": url, "event_types": all_types}), "event_types"),
        (
            json!({"url": url, "description": "d".repeat(501)}),
            "description",
        ),
    ];
    for (body, field) in cases {
        let r = app
            .post_json("/v1/webhooks/endpoints", Some(&a.key), &body)
            .await;
        let problem = assert_problem(r, 422, field).await;
        assert_eq!(problem_fields(&problem), vec![field]);
    }
    for _ in 0..20 {
        create_endpoint(&app, &a.key, url, &[]).await;
    }
    let over = app
        .post_json("/v1/webhooks/endpoints", Some(&a.key), &json!({"url": url}))
        .await;
    assert_problem(over, 409, "at most 20").await;
    create_endpoint(&app, &b.key, url, &[]).await;
    let listed: Value = app
        .get("/v1/webhooks/endpoints", Some(&b.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

/// One tenant's endpoint that never answers holds at most that tenant's share of the webhook
/// workers (`webhooks=8`): with 10 slots and 30 of its deliveries hanging, another tenant's
/// delivery still goes out at once, well before the first hanging one times out. (Without the
/// per-tenant limit all 10 slots hang for the whole timeout.)
#[tokio::test]
async fn a_hanging_endpoint_of_one_tenant_leaves_anothers_deliveries_on_time() {
    let app = spawn_app_with(|s| {
        s.webhooks.allow_private = true;
        s.webhooks.retry_after = vec![Duration::from_secs(60)];
        s.webhooks.timeout = Duration::from_secs(5);
    })
    .await;
    let a = app.create_tenant("hanging").await;
    let b = app.create_tenant("healthy").await;
    let stuck = Receiver::start(&[Reply::Hang; 40]).await;
    let fine = Receiver::start(&[]).await;
    create_endpoint(&app, &a.key, &stuck.url, &["stock.adjusted"]).await;
    create_endpoint(&app, &b.key, &fine.url, &["stock.adjusted"]).await;
    put_product(&app, &a.key, "SKU-1", 0).await;
    put_product(&app, &b.key, "SKU-1", 0).await;
    let mut settings = app.settings.clone();
    settings.database_max_connections = 8;
    let workers =
        support::app::InProcessWorkers::start(&settings, "stock,webhooks", Some(10)).unwrap();
    let adjustments: Vec<Value> = (0..30)
        .map(|n| {
            json!({"sku": "SKU-1", "delta": 1, "reason": "receipt",
                         "idempotency_key": format!("a-{n}")})
        })
        .collect();
    let r = app
        .post_json(
            "/v1/stock-adjustments/batch",
            Some(&a.key),
            &json!({"adjustments": adjustments}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let first_hang = Instant::now();
    stuck
        .wait_for("the hanging tenant's share", |s| s.len() >= 8)
        .await;

    let sent = Instant::now();
    adjust(&app, &b.key, "SKU-1", 1, 1).await;
    fine.wait_for("the other tenant's delivery", |s| s.len() == 1)
        .await;
    let took = sent.elapsed();
    assert!(
        first_hang.elapsed() < Duration::from_secs(5),
        "measured before any hanging delivery timed out"
    );
    assert_eq!(
        stuck.seen().len(),
        8,
        "the hanging tenant holds 8 slots, not all 10"
    );
    assert!(
        took < Duration::from_secs(2),
        "the other tenant waited {took:?}"
    );
    workers.stop().await.unwrap();
}

/// The ends of longer work are events: an import (loaded, with its counts; or failed, with the
/// reason), a forecast run (its model mix and the SKUs to reorder, as stored) and an invoice
/// that could not be made.
#[tokio::test]
async fn imports_forecast_runs_and_failed_invoices_are_events() {
    let app = spawn_app_with(|s| {
        s.webhooks.allow_private = true;
        s.invoice_font_dir = Some("/nonexistent/fonts".into());
        s.queue.retry_base = Duration::from_millis(20);
        s.queue.retry_cap = Duration::from_millis(100);
    })
    .await;
    let t = app.create_tenant("ends").await;
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    // More SKUs due to reorder than an event lists: every product out of stock.
    let skus = backroom::forecast::demo::generate(105, 90, yesterday, 7);
    backroom::forecast::demo::load(&app.db, t.id.parse().unwrap(), &skus)
        .await
        .unwrap();
    sqlx::query("UPDATE products SET on_hand = 0 WHERE tenant_id = $1::uuid")
        .bind(&t.id)
        .execute(&app.db)
        .await
        .unwrap();
    put_product(&app, &t.key, "SKU-X", 0).await;
    let receiver = Receiver::start(&[]).await;
    let types = ["import.finished", "forecast.run.finished", "invoice.failed"];
    create_endpoint(&app, &t.key, &receiver.url, &types).await;
    let _workers = app.start_workers("imports,forecasts,invoices,webhooks");

    let upload = |csv: &'static str| {
        let app = &app;
        let key = t.key.clone();
        async move {
            let r = app.upload_sales(&key, csv).await;
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["import_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let loaded = upload("date,sku,quantity\n2026-10-01,SKU-X,3\n2026-10-02,SKU-X,x\n").await;
    let failed = upload("day,sku,quantity\n2026-10-01,SKU-X,3\n").await;
    let r = app
        .post_json(
            "/v1/forecasts/runs",
            Some(&t.key),
            &json!({"horizon_days": 7}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let run_id = r.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let invoice_id = order(&app, &t.key, "SKU-X").await["invoice_id"]
        .as_str()
        .unwrap()
        .to_string();

    let count = |seen: &[Received], t: &str| seen.iter().filter(|r| r.body["type"] == t).count();
    let seen = receiver
        .wait_for("every end", |seen| {
            count(seen, "import.finished") >= 2
                && count(seen, "forecast.run.finished") >= 1
                && count(seen, "invoice.failed") >= 1
        })
        .await;
    let data = |t: &str, key: &str, value: &str| {
        seen.iter()
            .find(|r| r.body["type"] == t && r.body["data"][key] == value)
            .map(|r| r.body["data"].clone())
            .unwrap_or_else(|| panic!("a {t} with {key} = {value}: {seen:#?}"))
    };
    let import = data("import.finished", "import_id", &loaded);
    assert_eq!(import["status"], "loaded");
    assert_eq!(
        (
            &import["rows"],
            &import["rows_loaded"],
            &import["rows_rejected"]
        ),
        (&json!(2), &json!(1), &json!(1))
    );
    let import = data("import.finished", "import_id", &failed);
    assert_eq!(import["status"], "failed");
    assert!(
        import["error"].as_str().unwrap().contains("date"),
        "{import}"
    );

    let run = data("forecast.run.finished", "run_id", &run_id);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["trigger"], "api");
    let skus_total = run["skus_total"].as_i64().unwrap();
    assert!(skus_total >= 105, "{run}");
    let mix: i64 = run["models"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert_eq!(mix, skus_total, "every SKU's model counted: {run}");
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT sku FROM forecast_results WHERE run_id = $1::uuid AND on_hand <= reorder_point
         ORDER BY stockout_date NULLS LAST, sku",
    )
    .bind(&run_id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let listed: Vec<&str> = run["reorder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sku"].as_str().unwrap())
        .collect();
    assert!(due.len() > 100, "{} due", due.len());
    assert_eq!(
        listed,
        due[..100],
        "the 100 most urgent SKUs to reorder, in order"
    );
    assert_eq!(run["reorder_count"], due.len(), "and how many in all");

    let invoice = data("invoice.failed", "invoice_id", &invoice_id);
    assert!(
        invoice["reason"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/fonts"),
        "{invoice}"
    );
    assert_eq!(
        count(&seen, "invoice.failed"),
        1,
        "once, on the last attempt"
    );
}

/// An endpoint that fails without a success for `BACKROOM_WEBHOOK_DISABLE_AFTER_DAYS` (5) is
/// disabled at its next failure and its tenant told once by email; another tenant's healthy
/// endpoint is untouched; enabling it again starts afresh.
#[tokio::test]
async fn an_endpoint_failing_for_days_is_disabled_and_its_tenant_told_once_by_email() {
    let smtp = support::smtp::SmtpServer::start().await;
    let smtp_url = smtp.url();
    let app = spawn_app_with(move |s| {
        s.webhooks.allow_private = true;
        s.webhooks.retry_after = vec![Duration::from_millis(300); 10];
        s.webhooks.timeout = Duration::from_secs(1);
        s.smtp_url = Some(smtp_url);
    })
    .await;
    let t = app.create_tenant("broken").await;
    let other = app.create_tenant("healthy").await;
    let r = app
        .send_json(
            reqwest::Method::PATCH,
            "/admin/v1/tenants/broken",
            Some(ADMIN_TOKEN),
            &json!({"alert_email": "dev@broken.example"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let failing = Receiver::start(&[Reply::Status(500); 30]).await;
    let healthy = Receiver::start(&[]).await;
    let (endpoint, _) = create_endpoint(&app, &t.key, &failing.url, &["stock.adjusted"]).await;
    let (fine, _) = create_endpoint(&app, &other.key, &healthy.url, &["stock.adjusted"]).await;
    let _workers = app.start_workers("stock,webhooks,emails");
    for (key, n) in [(&t.key, 1), (&other.key, 2)] {
        put_product(&app, key, "SKU-1", 0).await;
        adjust(&app, key, "SKU-1", 3, n).await;
    }
    let view = |key: String, id: String| {
        let app = &app;
        async move {
            app.get(&format!("/v1/webhooks/endpoints/{id}"), Some(&key))
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };

    let first = wait_for("the first failure to start the clock", LIMIT, || async {
        let v = view(t.key.clone(), endpoint.clone()).await;
        (!v["failing_since"].is_null()).then_some(v)
    })
    .await;
    assert_eq!(first["enabled"], true, "one failure disables nothing");
    // Six days without a success pass (the clock moved by hand).
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since = failing_since - interval '6 days' WHERE id = $1::uuid",
    )
    .bind(&endpoint)
    .execute(&app.db)
    .await
    .unwrap();
    let disabled = wait_for("the next failure to disable it", LIMIT, || async {
        let v = view(t.key.clone(), endpoint.clone()).await;
        (v["enabled"] == false).then_some(v)
    })
    .await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("no delivery succeeded for 5 days"),
        "{disabled}"
    );
    assert!(!disabled["disabled_at"].is_null());
    let failed = wait_for_delivery(&app, &t.key, "failed").await;
    assert!(failed["attempts"].as_i64().unwrap() >= 2, "{failed}");

    let notices = || {
        smtp.messages()
            .into_iter()
            .map(|m| String::from_utf8_lossy(&m).into_owned())
            .filter(|m| m.contains("Subject: A webhook endpoint was disabled"))
            .collect::<Vec<_>>()
    };
    let told = wait_for("the tenant's email", LIMIT, || async {
        let n = notices();
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert!(told[0].contains("To: dev@broken.example"), "{}", told[0]);
    assert!(
        told[0].contains(&endpoint),
        "names the endpoint: {}",
        told[0]
    );

    // The other tenant's endpoint delivered and stays healthy.
    let fine_view = view(other.key.clone(), fine.clone()).await;
    assert_eq!(fine_view["enabled"], true);
    assert!(fine_view["failing_since"].is_null(), "{fine_view}");
    assert_eq!(
        deliveries(&app, &other.key, "?status=delivered")
            .await
            .len(),
        1
    );

    // Enabled again by its tenant: the clock starts afresh.
    let r = app
        .send_json(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/endpoints/{endpoint}"),
            Some(&t.key),
            &json!({"enabled": true}),
        )
        .await;
    let enabled: Value = r.json().await.unwrap();
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["failing_since"].is_null() && enabled["disabled_reason"].is_null());
    assert_eq!(notices().len(), 1, "one email per disabling");
}

/// Events are kept (listed, replayable) for 30 days, then pruned with their deliveries — never
/// one whose delivery is still pending.
#[tokio::test]
async fn old_events_are_pruned_with_their_deliveries_unless_one_is_pending() {
    let app = webhook_app().await;
    let t = app.create_tenant("old").await;
    let receiver = Receiver::start(&[]).await;
    create_endpoint(&app, &t.key, &receiver.url, &["stock.adjusted"]).await;
    let _workers = app.start_workers("stock,webhooks");
    put_product(&app, &t.key, "SKU-1", 0).await;
    adjust(&app, &t.key, "SKU-1", 3, 1).await;
    adjust(&app, &t.key, "SKU-1", 4, 2).await;
    wait_for("both deliveries", LIMIT, || async {
        let done = deliveries(&app, &t.key, "?status=delivered").await;
        (done.len() == 2).then_some(())
    })
    .await;
    let keep = Duration::from_secs(30 * 24 * 3600);
    let prune = || backroom::jobs::webhooks::events::prune(&app.db, keep);
    assert_eq!(prune().await.unwrap(), 0, "nothing is old yet");

    // A month passes; one of the two is being delivered again.
    sqlx::query("UPDATE webhook_events SET created_at = now() - interval '31 days'")
        .execute(&app.db)
        .await
        .unwrap();
    let again: String = sqlx::query_scalar(
        "UPDATE webhook_deliveries SET status = 'pending'
         WHERE id = (SELECT id FROM webhook_deliveries ORDER BY id LIMIT 1) RETURNING id::text",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(prune().await.unwrap(), 1);
    let left = deliveries(&app, &t.key, "").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["id"], again.as_str(), "the pending one stays");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 1);
}

/// A group that completes (a stock batch) is one `group.completed` event with its counts; told
/// twice (a process that stopped between telling and marking it told), it is delivered once.
#[tokio::test]
async fn a_completed_group_is_one_event_even_when_told_twice() {
    let app = webhook_app().await;
    let t = app.create_tenant("batches").await;
    let receiver = Receiver::start(&[]).await;
    create_endpoint(&app, &t.key, &receiver.url, &["group.completed"]).await;
    put_product(&app, &t.key, "SKU-1", 0).await;
    let batch: Vec<Value> = (0..4)
        .map(|i| json!({"sku": "SKU-1", "delta": 1, "reason": "receipt", "idempotency_key": format!("g-{i}")}))
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
    let group = accepted["group_id"].as_str().unwrap().to_string();
    let _workers = app.start_workers("stock,webhooks");
    let seen = receiver
        .wait_for("the group's event", |s| !s.is_empty())
        .await;
    let event = &seen[0].body;
    assert_eq!(event["type"], "group.completed");
    assert_eq!(event["data"]["group_id"], json!(group));
    assert_eq!(event["data"]["state"], "succeeded");
    assert_eq!(
        (
            event["data"]["total"].as_u64(),
            event["data"]["succeeded"].as_u64()
        ),
        (Some(4), Some(4))
    );

    let view = app
        .queues
        .group(&group.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let hook = backroom::jobs::webhooks::group_events::GroupEvents::hook(app.db.clone());
    hook.completed(&view).await;
    let deliveries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE event_id = $1")
            .bind(format!("msg_group_{}", group.replace('-', "")))
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(deliveries, 1, "the repeat recorded nothing new");
}
