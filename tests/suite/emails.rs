//! Emails over a real SMTP server (aiosmtpd): delivery, refusals, outages, duplicates, header
//! injection, per-tenant limits.

use crate::helpers::*;
use backroom::queue::{NewJob, QueueName};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

async fn send(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.post_json("/v1/emails", Some(key), body).await
}

/// Sends a plain email to `to` and returns its id once the API has accepted it.
async fn send_accepted(app: &TestApp, key: &str, to: &str, subject: &str) -> String {
    let r = send(
        app,
        key,
        &json!({"to": to, "subject": subject, "text": "Body"}),
    )
    .await;
    assert_eq!(r.status(), 202, "the email to {to} is accepted");
    let accepted: Value = r.json().await.unwrap();
    accepted["email_id"].as_str().unwrap().to_string()
}

async fn email(app: &TestApp, key: &str, id: &str) -> Value {
    app.get(&format!("/v1/emails/{id}"), Some(key))
        .await
        .json()
        .await
        .unwrap()
}

async fn wait_email(app: &TestApp, key: &str, id: &str, status: &str) -> Value {
    wait_for(&format!("email {id} to be {status}"), LIMIT, || async {
        let e = email(app, key, id).await;
        (e["status"] == status).then_some(e)
    })
    .await
}

/// Starts the app with workers for `emails` sending to `smtp_url`.
async fn app_with_smtp(smtp_url: &str, per_minute: u32) -> (TestApp, Workers) {
    let url = smtp_url.to_string();
    let app = spawn_app_with(move |s| {
        s.smtp_url = Some(url);
        s.emails_per_minute = per_minute;
        s.mail_from = "Backroom Test <noreply@backroom.test>".into();
    })
    .await;
    let workers = app.start_workers("emails");
    (app, workers)
}

#[tokio::test]
async fn a_requested_email_arrives_with_its_headers_and_both_bodies() {
    let smtp = SmtpServer::start().await;
    let (app, workers) = app_with_smtp(&smtp.url(), 100).await;
    let t = app.create_tenant("clinic").await;
    let response = send(
        &app,
        &t.key,
        &json!({
            "to": "patient@example.org",
            "subject": "Rendez-vous confirmé — Zürich",
            "text": "Bonjour,\nvotre rendez-vous est confirmé.",
            "html": "<p>Bonjour,<br>votre rendez-vous est <b>confirmé</b>.</p>",
            "idempotency_key": "appt-1"
        }),
    )
    .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["email_id"].as_str().unwrap();
    assert!(accepted["job_id"].as_str().unwrap().starts_with("emails_"));
    let sent = wait_email(&app, &t.key, id, "sent").await;
    assert!(
        sent["smtp_reply"].as_str().unwrap().starts_with("250"),
        "{sent}"
    );
    assert_eq!(sent["attempts"], 1);

    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    let message = MessageParser::default().parse(&messages[0]).unwrap();
    assert_eq!(message.subject(), Some("Rendez-vous confirmé — Zürich"));
    assert_eq!(
        message.to().unwrap().first().unwrap().address(),
        Some("patient@example.org")
    );
    assert_eq!(
        message.from().unwrap().first().unwrap().address(),
        Some("noreply@backroom.test")
    );
    assert_eq!(
        format!("<{}>", message.message_id().unwrap()),
        sent["message_id"].as_str().unwrap()
    );
    assert!(
        message
            .body_text(0)
            .unwrap()
            .contains("votre rendez-vous est confirmé")
    );
    assert!(message.body_html(0).unwrap().contains("<b>confirmé</b>"));

    // The same idempotency key: the first email, not a second message.
    let again = send(
        &app,
        &t.key,
        &json!({"to": "patient@example.org", "subject": "x", "text": "y", "idempotency_key": "appt-1"}),
    )
    .await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["email_id"], accepted["email_id"]);
    workers.stop().await;
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test]
async fn header_injection_is_refused_at_the_door() {
    let app = spawn_app().await;
    let t = app.create_tenant("clinic").await;
    let base = json!({"to": "a@example.org", "subject": "Hello", "text": "Body"});
    let with = |field: &str, value: &str| {
        let mut b = base.clone();
        b[field] = json!(value);
        b
    };
    let cases = [
        (with("to", "a@example.org\r\nBcc: victim@example.net"), "to"),
        (with("to", "a@example.org, b@example.net"), "to"),
        (with("to", "Name <a@example.org>"), "to"),
        (
            with("subject", "Hello\r\nBcc: victim@example.net"),
            "subject",
        ),
        (with("subject", "Hello\nX-Injected: 1"), "subject"),
        (with("subject", ""), "subject"),
        (with("text", " "), "text"),
        (with("text", "nul \u{0} byte"), "text"),
    ];
    for (body, field) in cases {
        let problem = assert_problem(send(&app, &t.key, &body).await, 422, field).await;
        assert_eq!(problem_fields(&problem), vec![field], "{body}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM emails")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing refused was recorded or queued");
}

#[tokio::test]
async fn a_permanent_refusal_fails_at_once_with_the_servers_reply() {
    let smtp = SmtpServer::start().await;
    let (app, workers) = app_with_smtp(&smtp.url(), 100).await;
    let t = app.create_tenant("clinic").await;
    let accepted: Value = send(
        &app,
        &t.key,
        &json!({"to": "reject-me@example.org", "subject": "Hi", "text": "Body"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let failed = wait_email(
        &app,
        &t.key,
        accepted["email_id"].as_str().unwrap(),
        "failed",
    )
    .await;
    assert_eq!(failed["attempts"], 1, "a 5xx is not retried");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("mailbox unavailable"),
        "{failed}"
    );
    // The job's outcome is recorded in Redis just after the email's row: wait for it.
    let job_path = format!("/v1/jobs/{}", accepted["job_id"].as_str().unwrap());
    wait_for(
        "the job to be recorded failed",
        Duration::from_secs(10),
        || async {
            let job: Value = app.get(&job_path, Some(&t.key)).await.json().await.ok()?;
            (job["status"] == "failed").then_some(())
        },
    )
    .await;
    assert!(smtp.messages().is_empty());
    workers.stop().await;
}

#[tokio::test]
async fn an_smtp_outage_delays_email_and_it_goes_out_once_when_the_server_returns() {
    let port = free_port();
    let (app, workers) = app_with_smtp(&format!("smtp://127.0.0.1:{port}"), 100).await;
    let t = app.create_tenant("clinic").await;
    let accepted: Value = send(
        &app,
        &t.key,
        &json!({"to": "someone@example.org", "subject": "Later", "text": "Body"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = accepted["email_id"].as_str().unwrap();
    // While nothing listens, attempts fail and the email stays queued (not lost, not failed).
    let waiting = wait_for("a failed attempt", LIMIT, || async {
        let e = email(&app, &t.key, id).await;
        (e["attempts"].as_i64() >= Some(1) && e["last_error"].is_string()).then_some(e)
    })
    .await;
    assert_eq!(waiting["status"], "queued");

    let smtp = SmtpServer::start_on(port).await;
    wait_email(&app, &t.key, id, "sent").await;
    assert_eq!(smtp.messages().len(), 1);
    workers.stop().await;
    assert_eq!(smtp.messages().len(), 1, "delivered once");
}

#[tokio::test]
async fn the_same_email_job_delivered_twice_sends_one_message() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with({
        let url = smtp.url();
        move |s| s.smtp_url = Some(url)
    })
    .await;
    let t = app.create_tenant("clinic").await;
    let accepted: Value = send(
        &app,
        &t.key,
        &json!({"to": "once@example.org", "subject": "Once", "text": "Body"}),
    )
    .await
    .json()
    .await
    .unwrap();
    // A second delivery of the same logical email (as after a crash), queued before any worker.
    let payload = json!({"type": "requested", "tenant_id": t.id, "email_id": accepted["email_id"]});
    let tenant = uuid::Uuid::parse_str(&t.id).unwrap();
    app.queues
        .push(
            &QueueName::parse("emails").unwrap(),
            vec![NewJob::new("requested_email", &payload).tenant(tenant)],
        )
        .await
        .unwrap();
    let workers = app.start_workers("emails");
    let emails = QueueName::parse("emails").unwrap();
    wait_for("both jobs to finish", LIMIT, || async {
        (app.queues.counts(&emails).await.ok()?.succeeded == 2).then_some(())
    })
    .await;
    workers.stop().await;
    assert_eq!(smtp.messages().len(), 1, "one message for two deliveries");
}

#[tokio::test]
async fn a_tenant_over_its_sending_limit_waits_its_turn() {
    let smtp = SmtpServer::start().await;
    let (app, workers) = app_with_smtp(&smtp.url(), 2).await;
    let t = app.create_tenant("clinic").await;
    let other = app.create_tenant("shop").await;
    let mut ids = vec![];
    for i in 0..3 {
        let accepted: Value = send(
            &app,
            &t.key,
            &json!({"to": format!("p{i}@example.org"), "subject": "Hi", "text": "Body"}),
        )
        .await
        .json()
        .await
        .unwrap();
        ids.push(accepted["email_id"].as_str().unwrap().to_string());
    }
    let throttled = wait_for("the third email to be held back", LIMIT, || async {
        let mut sent = 0;
        let mut held = None;
        for id in &ids {
            let e = email(&app, &t.key, id).await;
            if e["status"] == "sent" {
                sent += 1;
            } else if e["last_error"]
                .as_str()
                .is_some_and(|m| m.contains("limit"))
            {
                held = Some(e);
            }
        }
        (sent == 2).then_some(held).flatten()
    })
    .await;
    assert_eq!(throttled["status"], "queued");
    // Another tenant is not held back by the first one's flood.
    let id = send_accepted(&app, &other.key, "x@example.org", "Hi").await;
    wait_email(&app, &other.key, &id, "sent").await;
    workers.stop().await;
}

#[tokio::test]
async fn a_backlog_over_the_limit_drains_at_the_limit_each_email_waiting_once() {
    let smtp = SmtpServer::start().await;
    // 60 a minute: 60 go at once, then one a second.
    let (app, workers) = app_with_smtp(&smtp.url(), 60).await;
    let t = app.create_tenant("clinic").await;
    let started = std::time::Instant::now();
    let mut ids = vec![];
    for i in 0..70 {
        ids.push(send_accepted(&app, &t.key, &format!("p{i}@example.org"), "Hi").await);
    }
    let sending = started.elapsed();
    let mut jobs = vec![];
    let mut sent_at = vec![];
    for id in &ids {
        let e = wait_email(&app, &t.key, id, "sent").await;
        jobs.push(e["job_id"].as_str().unwrap().to_string());
        let at = e["sent_at"].as_str().unwrap();
        sent_at.push(chrono::DateTime::parse_from_rfc3339(at).unwrap());
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "drained in {:?}",
        started.elapsed()
    );
    // 60 go at once and one more for each second the requests took; the rest wait, once each.
    let mut waited = 0;
    for job in &jobs {
        let j: Value = app
            .get(&format!("/v1/jobs/{job}"), Some(&t.key))
            .await
            .json()
            .await
            .unwrap();
        let attempts = j["attempts"].as_u64().unwrap();
        assert!(attempts <= 2, "job {job} took {attempts} attempts");
        waited += usize::from(attempts == 2);
    }
    let expected = 10usize.saturating_sub(sending.as_secs() as usize);
    assert!(
        (1..=10).contains(&waited) && waited + 2 >= expected,
        "{waited} emails waited their turn (the requests took {sending:?})"
    );
    // Those that waited went about a second apart, not together at the next minute.
    sent_at.sort();
    for pair in sent_at[sent_at.len() - waited..].windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= chrono::Duration::milliseconds(300),
            "emails over the limit went {gap} apart"
        );
    }
    workers.stop().await;
}

#[tokio::test]
async fn a_tenant_queues_at_most_five_minutes_of_its_sending_limit_and_another_is_unaffected() {
    let smtp = SmtpServer::start().await;
    // 2 a minute: 10 may wait at once; then one every 30 s.
    let (app, workers) = app_with_smtp(&smtp.url(), 2).await;
    let t = app.create_tenant("clinic").await;
    let other = app.create_tenant("shop").await;
    let body =
        |i: usize| json!({"to": format!("p{i}@example.org"), "subject": "Hi", "text": "Body"});
    for i in 0..10 {
        assert_eq!(
            send(&app, &t.key, &body(i)).await.status(),
            202,
            "email {i}"
        );
    }
    let refused = send(&app, &t.key, &body(10)).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "Retry-After {wait}");
    let problem: Value = refused.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("retry after"));
    // Nothing of the refused email was kept.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE tenant_id = $1::uuid")
        .bind(&t.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 10);
    // The other tenant's budget is its own.
    send_accepted(&app, &other.key, "x@example.org", "Hi").await;
    // A repeat of an accepted request is answered as the first time, limit or not.
    let keyed = |i: usize| {
        let mut b = body(i);
        b["idempotency_key"] = json!(format!("visit-{i}"));
        b
    };
    let refused = send(&app, &t.key, &keyed(11)).await;
    assert_eq!(refused.status(), 429, "a new key is over the limit");
    let other_first = send(&app, &other.key, &keyed(0)).await;
    assert_eq!(other_first.status(), 202);
    let first: Value = other_first.json().await.unwrap();
    for _ in 0..12 {
        send(&app, &other.key, &body(0)).await;
    }
    let repeat = send(&app, &other.key, &keyed(0)).await;
    assert_eq!(repeat.status(), 200, "the repeat of an accepted email");
    let repeat: Value = repeat.json().await.unwrap();
    assert_eq!(repeat["email_id"], first["email_id"]);
    workers.stop().await;
}

#[tokio::test]
async fn an_order_sends_the_customer_the_invoice_pdf_and_low_stock_reaches_the_tenant() {
    let smtp = SmtpServer::start().await;
    let (app, workers) = app_with_smtp(&smtp.url(), 100).await;
    let t = app.create_tenant("outdoor").await;
    app.send_json(
        reqwest::Method::PATCH,
        "/admin/v1/tenants/outdoor",
        Some(ADMIN_TOKEN),
        &json!({"alert_email": "stock@outdoor.example"}),
    )
    .await;
    app.send_json(
        reqwest::Method::PUT,
        "/v1/products/TENT",
        Some(&t.key),
        &json!({"name": "Tent <Deluxe> & Co", "unit_price": "100.00", "currency": "EUR",
                "reorder_point": 5, "reorder_quantity": 10, "lead_time_days": 3}),
    )
    .await;
    let receipt = app
        .post_json(
            "/v1/stock-adjustments",
            Some(&t.key),
            &json!({"sku": "TENT", "delta": 6, "reason": "receipt", "idempotency_key": "in-1",
                    "occurred_at": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(receipt.status(), 202);
    let other_workers = app.start_workers("stock,invoices");
    let created: Value = app
        .post_json(
            "/v1/orders",
            Some(&t.key),
            &json!({"customer": {"name": "Zoë Müller", "email": "zoe@example.ch"},
                    "currency": "EUR", "tax_rate": "0.077", "lines": [{"sku": "TENT", "quantity": 2}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let messages = wait_for("the invoice and the alert emails", LIMIT, || async {
        let m = smtp.messages();
        (m.len() >= 2).then_some(m)
    })
    .await;
    let parsed: Vec<_> = messages
        .iter()
        .map(|m| MessageParser::default().parse(m).unwrap())
        .collect();
    let invoice_mail = parsed
        .iter()
        .find(|m| m.to().unwrap().first().unwrap().address() == Some("zoe@example.ch"))
        .expect("the customer got the invoice");
    let invoice: Value = app
        .get(
            &format!("/v1/invoices/{}", created["invoice_id"].as_str().unwrap()),
            Some(&t.key),
        )
        .await
        .json()
        .await
        .unwrap();
    let number = invoice["number"].as_str().unwrap();
    assert_eq!(
        invoice_mail.subject().unwrap(),
        format!("Invoice {number} from Tenant outdoor")
    );
    assert!(
        invoice_mail.body_text(0).unwrap().contains("215.40"),
        "the email shows the stored total"
    );
    let attachment = invoice_mail.attachments().next().expect("a PDF attachment");
    assert_eq!(
        attachment.attachment_name(),
        Some(format!("{number}.pdf").as_str())
    );
    let pdf = attachment.contents();
    assert!(pdf.starts_with(b"%PDF"));
    let path = std::env::temp_dir().join(format!("{}.pdf", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, pdf).unwrap();
    let text = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(number),
        "the attached PDF opens"
    );

    let alert = parsed
        .iter()
        .find(|m| m.to().unwrap().first().unwrap().address() == Some("stock@outdoor.example"))
        .expect("the tenant got the low-stock alert");
    assert!(alert.subject().unwrap().starts_with("Low stock: TENT at 4"));
    let html = alert.body_html(0).unwrap();
    assert!(
        html.contains("Tent &lt;Deluxe&gt; &amp; Co"),
        "HTML escapes product names: {html}"
    );
    assert!(
        alert.body_text(0).unwrap().contains("Tent <Deluxe> & Co"),
        "text keeps them as they are"
    );
    other_workers.stop().await;
    workers.stop().await;
}

/// A relay that stops answering one conversation (it holds one tenant's `RCPT`) costs that send
/// at most the mailer's step limit (15 s): the job fails with a timeout and is retried, and the
/// held conversation's message never goes out twice. Meanwhile another tenant's email goes out
/// through another connection of the same worker.
#[tokio::test]
async fn a_relay_holding_one_tenants_send_times_it_out_and_another_tenants_email_goes_out() {
    let smtp = SmtpServer::start().await;
    let (app, workers) = app_with_smtp(&smtp.url(), 100).await;
    let (held, other) = (
        app.create_tenant("held").await,
        app.create_tenant("other").await,
    );
    let held_id = send_accepted(&app, &held.key, "holdrcpt-held@example.org", "Held").await;
    let dir = smtp.dir.clone();
    wait_for("the relay to hold the RCPT", LIMIT, || {
        let held = dir.join("held");
        async move { held.exists().then_some(()) }
    })
    .await;
    let started = std::time::Instant::now();

    let other_id = send_accepted(&app, &other.key, "reader@example.org", "Meanwhile").await;
    wait_email(&app, &other.key, &other_id, "sent").await;
    let other_took = started.elapsed();
    assert!(
        other_took < Duration::from_secs(10),
        "the other tenant's email waited {other_took:?} behind a held conversation"
    );

    let timed_out = wait_for("the held send to time out", LIMIT, || async {
        let e = email(&app, &held.key, &held_id).await;
        e["last_error"]
            .as_str()
            .is_some_and(|err| err.contains("did not answer RCPT"))
            .then_some(e)
    })
    .await;
    let held_for = started.elapsed();
    assert!(
        held_for >= Duration::from_secs(14) && held_for < Duration::from_secs(30),
        "the held step ended after {held_for:?}: {timed_out}"
    );
    assert_eq!(
        timed_out["status"], "queued",
        "a timeout is retried, not failed"
    );
    // Released, the retry goes out, once.
    std::fs::write(smtp.dir.join("release"), b"").unwrap();
    wait_email(&app, &held.key, &held_id, "sent").await;
    workers.stop().await;
    assert_eq!(smtp.messages().len(), 2, "one message for each email");
}

/// An order of one mug for Ana.
fn mug_order() -> Value {
    json!({"customer": {"name": "Ana", "email": "ana@example.com"},
           "currency": "EUR", "tax_rate": "0.1", "lines": [{"sku": "MUG", "quantity": 1}]})
}

/// An order's email waits in the queue (`waiting`) for its invoice rather than polling it: it
/// starts only once the invoice is ready, on its first attempt, with no "not ready" retries.
#[tokio::test]
async fn an_orders_email_waits_for_its_invoice_and_goes_out_on_its_first_attempt() {
    let smtp = SmtpServer::start().await;
    let (app, workers) = app_with_smtp(&smtp.url(), 100).await;
    let t = app.create_tenant("shop").await;
    put_product(&app, &t.key, "MUG").await;
    let created: Value = app
        .post_json("/v1/orders", Some(&t.key), &mug_order())
        .await
        .json()
        .await
        .unwrap();
    let email_job: String = wait_for("the order's email job to be relayed", LIMIT, || async {
        sqlx::query_scalar::<_, String>(
            "SELECT job_id FROM outbox WHERE kind = 'invoice_email' AND sent_at IS NOT NULL",
        )
        .fetch_optional(&app.db)
        .await
        .unwrap()
    })
    .await;
    // No invoice worker runs yet: the email worker has nothing to do.
    let held: Value = app
        .get(&format!("/v1/jobs/{email_job}"), Some(&t.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(held["status"], "waiting", "{held}");
    assert!(smtp.messages().is_empty());

    let invoice_workers = app.start_workers("invoices");
    wait_for("the invoice email", LIMIT, || async {
        (!smtp.messages().is_empty()).then_some(())
    })
    .await;
    let job: Value = wait_for("the email job to succeed", LIMIT, || async {
        let j: Value = app
            .get(&format!("/v1/jobs/{email_job}"), Some(&t.key))
            .await
            .json()
            .await
            .ok()?;
        (j["status"] == "succeeded").then_some(j)
    })
    .await;
    assert_eq!(
        job["attempts"], 1,
        "no retries while the invoice rendered: {job}"
    );
    assert!(job["last_error"].is_null(), "{job}");
    let invoice: Value = app
        .get(
            &format!("/v1/invoices/{}", created["invoice_id"].as_str().unwrap()),
            Some(&t.key),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(invoice["status"], "ready");

    // The order's work (its sale, PDF and email) is one group with the order's id.
    let group = created["group_id"].as_str().unwrap();
    assert_eq!(group, created["order_id"].as_str().unwrap());
    let stock_workers = app.start_workers("stock");
    let done: Value = wait_for("the order's group to complete", LIMIT, || async {
        let g: Value = app
            .get(&format!("/v1/groups/{group}"), Some(&t.key))
            .await
            .json()
            .await
            .ok()?;
        (g["state"] == "succeeded").then_some(g)
    })
    .await;
    assert_eq!(
        (done["total"].as_u64(), done["succeeded"].as_u64()),
        (Some(3), Some(3))
    );
    stock_workers.stop().await;
    invoice_workers.stop().await;
    workers.stop().await;
}

/// Many orders placed while every worker runs: each order's email still waits for its invoice
/// (no email job retries over an invoice that is not ready).
#[tokio::test]
async fn orders_placed_while_every_worker_runs_send_each_email_after_its_invoice() {
    const ORDERS: usize = 40;
    let smtp = SmtpServer::start().await;
    let (app, workers) = app_with_smtp(&smtp.url(), 10_000).await;
    let t = app.create_tenant("shop").await;
    put_product(&app, &t.key, "MUG").await;
    let more = app.start_workers("invoices,stock");
    for _ in 0..ORDERS {
        let r = app
            .post_json("/v1/orders", Some(&t.key), &mug_order())
            .await;
        assert_eq!(r.status(), 201);
    }
    wait_for("every invoice email", LIMIT, || async {
        (smtp.messages().len() >= ORDERS).then_some(())
    })
    .await;
    let job_ids: Vec<String> =
        sqlx::query_scalar("SELECT job_id FROM outbox WHERE kind = 'invoice_email'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(job_ids.len(), ORDERS);
    for id in job_ids {
        let job = app.queues.get(&id).await.unwrap().expect("the email job");
        assert_eq!(job.attempts, 1, "{id}: {:?}", job.errors);
    }
    more.stop().await;
    workers.stop().await;
}
