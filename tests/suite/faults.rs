//! Issue #9: nothing is lost, and nothing happens twice, when a worker process, Redis, Postgres
//! or the SMTP relay dies mid-run. Every test drives real processes — `backroom work` children
//! SIGKILLed while they hold jobs, a private `redis-server` with an fsynced append-only file
//! killed and started again, a private Postgres crashed (postmaster and backends SIGKILLed) and
//! brought back through crash recovery, an SMTP sink frozen or stopped — and then checks the
//! business outcome rather than the queue alone: every invoice ready with gapless numbers, every
//! email delivered under its Message-ID, every forecast SKU written once, a stock ledger with one
//! row per adjustment and levels equal to the sum of their deltas.

use crate::helpers::*;
use backroom::jobs::Queue;
use backroom::queue::{JobStatus, NewJob, QueueName};
use mail_parser::MessageParser;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgPool};
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

fn queue(name: &str) -> QueueName {
    QueueName::parse(name).expect("a queue of the contract")
}

fn tenant_id(tenant: &TestTenant) -> Uuid {
    tenant.id.parse().unwrap()
}

/// A `count(*)`-like query with the tenant as `$1`.
async fn count(db: &PgPool, sql: &str, tenant: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(tenant)
        .fetch_one(db)
        .await
        .unwrap()
}

async fn place_order(app: &TestApp, key: &str, sku: &str, quantity: i64) -> Value {
    let r = app
        .post_json(
            "/v1/orders",
            Some(key),
            &json!({"customer": {"name": "Ada Lovelace", "email": "ada@example.org",
                                 "address": "12 St James's Square\nLondon"},
                    "currency": "EUR", "tax_rate": "0.2",
                    "lines": [{"sku": sku, "quantity": quantity}]}),
        )
        .await;
    assert_eq!(r.status(), 201, "the order is accepted");
    r.json().await.unwrap()
}

/// Posts adjustments in batches of 1,000; returns each one's idempotency key and delta.
async fn post_adjustments(
    app: &TestApp,
    key: &str,
    skus: usize,
    total: usize,
    prefix: &str,
) -> Vec<(String, i64)> {
    let all: Vec<(String, String, i64)> = (0..total)
        .map(|i| {
            // Mostly receipts, every third a sale: products allow negative stock, so every
            // adjustment applies and the expected levels are exact.
            let delta = if i % 3 == 2 { -2 } else { 1 + (i % 4) as i64 };
            (format!("SKU-{}", i % skus), format!("{prefix}-{i}"), delta)
        })
        .collect();
    for batch in all.chunks(1000) {
        let adjustments: Vec<Value> = batch
            .iter()
            .map(|(sku, key, delta)| {
                let reason = if *delta < 0 { "sale" } else { "receipt" };
                json!({"sku": sku, "delta": delta, "reason": reason, "idempotency_key": key})
            })
            .collect();
        let r = app
            .post_json(
                "/v1/stock-adjustments/batch",
                Some(key),
                &json!({"adjustments": adjustments}),
            )
            .await;
        assert_eq!(r.status(), 202, "the batch is accepted");
    }
    all.into_iter()
        .map(|(_, key, delta)| (key, delta))
        .collect()
}

/// The tenant's ledger, checked: one row per idempotency key, each row's `on_hand_after`
/// continuing its SKU's chain, and each product's level equal to the sum of its deltas (no batch
/// half applied, none applied twice). Returns the keys and the total level.
async fn checked_ledger(db: &PgPool, tenant: Uuid) -> (HashSet<String>, i64) {
    let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT sku, delta, on_hand_after, idempotency_key FROM stock_movements
         WHERE tenant_id = $1 ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(db)
    .await
    .unwrap();
    let mut keys = HashSet::new();
    let mut levels: HashMap<String, i64> = HashMap::new();
    for (sku, delta, after, key) in rows {
        let level = levels.entry(sku.clone()).or_default();
        *level += delta;
        assert_eq!(
            *level, after,
            "{sku}: on_hand_after breaks the chain at {key}"
        );
        assert!(keys.insert(key.clone()), "two ledger rows for key {key}");
    }
    let products: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, on_hand FROM products WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(db)
            .await
            .unwrap();
    for (sku, on_hand) in &products {
        assert_eq!(
            *on_hand,
            levels.get(sku).copied().unwrap_or(0),
            "{sku}: the level is not the sum of its deltas"
        );
    }
    (keys, products.iter().map(|(_, on_hand)| on_hand).sum())
}

// ---------------------------------------------------------------------------------------------
// Worker processes killed mid-job (stock has its own test in stock.rs).
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_worker_killed_while_rendering_invoices_leaves_every_invoice_ready_and_numbered_once() {
    let app = spawn_app().await;
    let t = app.create_tenant("printer").await;
    let tenant = tenant_id(&t);
    put_product(&app, &t.key, "A").await;
    let orders = 80;
    for n in 0..orders {
        place_order(&app, &t.key, "A", 1 + n % 3).await;
    }
    let ready = "SELECT count(*) FROM invoices WHERE tenant_id = $1 AND status = 'ready'";
    let numbered_not_stored =
        "SELECT count(*) FROM invoices WHERE tenant_id = $1 AND number IS NOT NULL AND pdf IS NULL";

    // The victim's connections carry a name, so the test can see when none of its statements is
    // still running in Postgres. One waiting for a lock that another of its (frozen)
    // transactions holds cannot commit: its client is gone by the time the lock is released.
    let victim_db_url = format!(
        "{}?application_name=invoice-victim",
        app.settings.database_url
    );
    let mut victim = WorkerProcess::spawn(&app, "invoices", &[("DATABASE_URL", victim_db_url)]);
    // Killed once some invoices are done and another holds a committed number but no PDF yet.
    // The state is judged with the victim frozen (SIGSTOP) and none of its statements in flight,
    // so what the test saw is what the kill leaves; if it was not mid-render, it goes on.
    let victim_busy = "SELECT count(*) FROM pg_stat_activity \
        WHERE datname = current_database() AND application_name = 'invoice-victim' \
        AND state = 'active' AND wait_event_type IS DISTINCT FROM 'Lock'";
    wait_for("the victim to be mid-render", LIMIT, || async {
        if count(&app.db, ready, tenant).await < 8
            || count(&app.db, numbered_not_stored, tenant).await < 1
        {
            return None;
        }
        assert!(send_signal("STOP", victim.pid()), "the victim is alive");
        wait_for(
            "the frozen victim's statements to finish",
            LIMIT,
            || async {
                let busy: i64 = sqlx::query_scalar(victim_busy)
                    .fetch_one(&app.db)
                    .await
                    .unwrap();
                (busy == 0).then_some(())
            },
        )
        .await;
        let mid_render = count(&app.db, ready, tenant).await < orders
            && count(&app.db, numbered_not_stored, tenant).await >= 1;
        if !mid_render {
            send_signal("CONT", victim.pid());
        }
        mid_render.then_some(())
    })
    .await;
    victim.kill9();
    let invoices_queue = queue(Queue::Invoices.name());
    let orphans = app
        .queues
        .list(&invoices_queue, JobStatus::Running, 100, None)
        .await
        .unwrap()
        .items;
    assert!(!orphans.is_empty(), "the victim died holding invoice jobs");
    assert!(
        count(&app.db, ready, tenant).await < orders,
        "the victim was killed mid-run"
    );
    assert!(
        count(&app.db, numbered_not_stored, tenant).await >= 1,
        "the victim died between numbering an invoice and storing its PDF"
    );
    let numbered_at_kill: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, number FROM invoices WHERE tenant_id = $1 AND number IS NOT NULL",
    )
    .bind(tenant)
    .fetch_all(&app.db)
    .await
    .unwrap();

    let _rescuer = WorkerProcess::spawn(&app, "invoices", &[]);
    let counts = wait_for("every invoice job to finish", LIMIT, || async {
        let c = app.queues.counts(&invoices_queue).await.ok()?;
        (c.succeeded + c.failed + c.dead == orders as u64).then_some(c)
    })
    .await;
    assert_eq!((counts.failed, counts.dead), (0, 0), "{counts:?}");
    assert_eq!(count(&app.db, ready, tenant).await, orders);

    let final_numbers: HashMap<Uuid, String> =
        sqlx::query_as("SELECT id, number FROM invoices WHERE tenant_id = $1 AND pdf IS NOT NULL")
            .bind(tenant)
            .fetch_all(&app.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut sequence: Vec<i64> = final_numbers
        .values()
        .map(|n| n.rsplit('-').next().unwrap().parse().unwrap())
        .collect();
    sequence.sort();
    assert_eq!(
        sequence,
        (1..=orders).collect::<Vec<_>>(),
        "numbers are gapless and each is used once"
    );
    for (id, number) in &numbered_at_kill {
        assert_eq!(
            final_numbers.get(id),
            Some(number),
            "invoice {id} was renumbered after the kill"
        );
    }
    // The jobs the victim died holding were finished by the rescuer with the number the
    // victim had already given them, and that number is the one printed in the PDF.
    for orphan in &orphans {
        let id: Uuid = orphan.payload["invoice_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let pdf: Vec<u8> = sqlx::query_scalar("SELECT pdf FROM invoices WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        let text = pdf_text(&pdf);
        assert!(
            text.contains(&final_numbers[&id]),
            "the PDF of {id} shows its number {}",
            final_numbers[&id]
        );
    }
}

fn pdf_text(pdf: &[u8]) -> String {
    let path = std::env::temp_dir().join(format!("backroom-{}.pdf", Uuid::new_v4().simple()));
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) runs");
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "pdftotext reads the PDF");
    String::from_utf8(out.stdout).unwrap()
}

/// Environment for a worker child that sends email through `smtp`.
fn mail_env(smtp: &SmtpServer) -> Vec<(&'static str, String)> {
    vec![
        ("SMTP_URL", smtp.url()),
        (
            "BACKROOM_MAIL_FROM",
            "Backroom Test <noreply@backroom.test>".into(),
        ),
        ("BACKROOM_EMAILS_PER_MINUTE", "100000".into()),
    ]
}

/// The Message-ID of each received message (without angle brackets), with how often it came.
fn received_message_ids(smtp: &SmtpServer) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for raw in smtp.messages() {
        let message = MessageParser::default()
            .parse(&raw)
            .expect("a parsable message");
        let id = message
            .message_id()
            .expect("every message has a Message-ID");
        *seen.entry(id.to_string()).or_default() += 1;
    }
    seen
}

async fn post_email(app: &TestApp, key: &str, n: usize) -> Uuid {
    let r = app
        .post_json(
            "/v1/emails",
            Some(key),
            &json!({"to": format!("reader{n}@example.org"), "subject": format!("Notice {n}"),
                    "text": format!("This is notice number {n}."),
                    "idempotency_key": format!("notice-{n}")}),
        )
        .await;
    assert_eq!(r.status(), 202, "email {n} is accepted");
    let body: Value = r.json().await.unwrap();
    body["email_id"].as_str().unwrap().parse().unwrap()
}

/// Every email of the tenant by its Message-ID (without angle brackets).
async fn message_ids(db: &PgPool, tenant: Uuid) -> HashMap<String, Uuid> {
    let rows: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT message_id, id FROM emails WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(db)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(message_id, id)| (message_id.trim_matches(['<', '>']).to_string(), id))
        .collect()
}

#[tokio::test]
async fn a_worker_killed_mid_send_leaves_every_email_delivered_under_its_message_id() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app().await;
    let t = app.create_tenant("notices").await;
    let tenant = tenant_id(&t);
    let total = 120;
    for n in 0..total {
        post_email(&app, &t.key, n).await;
    }
    let expected = message_ids(&app.db, tenant).await;
    assert_eq!(expected.len(), total);

    let mut victim = WorkerProcess::spawn(&app, "emails", &mail_env(&smtp));
    wait_for("the first emails to arrive", LIMIT, || async {
        (smtp.messages().len() >= 5).then_some(())
    })
    .await;
    // The relay hangs, so the victim is caught holding sends it has claimed but not finished:
    // the window a crash between the SMTP conversation and the database update falls into.
    smtp.freeze();
    let in_flight = wait_for("claimed sends to hang", LIMIT, || async {
        let n = count(
            &app.db,
            "SELECT count(*) FROM emails WHERE tenant_id = $1 AND status <> 'sent'
               AND sending_until > now()",
            tenant,
        )
        .await;
        (n >= 1).then_some(n)
    })
    .await;
    victim.kill9();
    smtp.thaw();

    let _rescuer = WorkerProcess::spawn(&app, "emails", &mail_env(&smtp));
    let deadline = Instant::now() + LIMIT;
    let unsent = wait_for("every email to be sent", LIMIT * 2, || async {
        let unsent: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
            "SELECT id, status, job_id FROM emails WHERE tenant_id = $1 AND status <> 'sent'",
        )
        .bind(tenant)
        .fetch_all(&app.db)
        .await
        .unwrap();
        (unsent.is_empty() || Instant::now() > deadline).then_some(unsent)
    })
    .await;
    let received = received_message_ids(&smtp);
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    println!("{duplicates} duplicate deliveries, each under its email's own Message-ID");
    if let Some((email, status, Some(job_id))) = unsent.first() {
        let job = app
            .queues
            .get(job_id)
            .await
            .unwrap()
            .expect("the job exists");
        let arrived_anyway = expected
            .iter()
            .filter(|(message_id, id)| {
                unsent.iter().any(|(u, _, _)| u == *id) && received.contains_key(*message_id)
            })
            .count();
        panic!(
            "{} of {total} emails are not sent ({in_flight} were in flight at the kill; \
             {arrived_anyway} of them reached the relay before the kill); e.g. email {email} is \
             {status}, its job {job_id} is {:?} after {} attempts: {:?}",
            unsent.len(),
            job.status,
            job.attempts,
            job.last_error
        );
    }
    assert!(
        unsent.is_empty(),
        "emails never claimed by a job: {unsent:?}"
    );

    let unknown: Vec<_> = received
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    assert!(
        unknown.is_empty(),
        "messages under unknown Message-IDs: {unknown:?}"
    );
    let missing: Vec<_> = expected
        .keys()
        .filter(|id| !received.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "emails marked sent never arrived: {missing:?}"
    );
    assert!(
        duplicates as i64 <= in_flight,
        "only sends in flight at the kill may repeat: {duplicates} duplicates, {in_flight} in flight"
    );
}

/// Posts one email to `to` and returns its id.
async fn post_one_email(app: &TestApp, key: &str, to: &str) -> Uuid {
    let r = app
        .post_json(
            "/v1/emails",
            Some(key),
            &json!({"to": to, "subject": "Held", "text": "Caught between RCPT and DATA."}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    body["email_id"].as_str().unwrap().parse().unwrap()
}

async fn email_status(db: &PgPool, email: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
        .bind(email)
        .fetch_one(db)
        .await
        .unwrap()
}

fn smtp_file_exists(smtp: &SmtpServer, prefix: &str) -> bool {
    std::fs::read_dir(&smtp.dir).is_ok_and(|dir| {
        dir.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
    })
}

/// A worker frozen between `RCPT` and `DATA` (the server has taken the envelope) loses the job to
/// another worker, which sends the email. Thawed, the frozen worker asks whether it still owns
/// the job right before `DATA`, finds it does not, resets the transaction and sends nothing: one
/// message. (With lettre's pooled send, the ownership check came before the connection and the
/// envelope, and a thawed worker went on to `DATA`: two messages.)
#[tokio::test]
async fn a_worker_frozen_between_rcpt_and_data_sends_nothing_once_it_lost_the_job() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app().await;
    let t = app.create_tenant("fenced").await;
    let mut env = mail_env(&smtp);
    env.push(("BACKROOM_JOB_LEASE_SECS", "1".into()));
    let frozen = WorkerProcess::spawn(&app, "emails", &env);
    let email = post_one_email(&app, &t.key, "holdrcpt-fenced@example.org").await;
    wait_for("the server to hold the RCPT", LIMIT, || async {
        smtp_file_exists(&smtp, "held").then_some(())
    })
    .await;
    assert!(send_signal("STOP", frozen.pid()));
    // Another worker takes the job over once the lease is gone and, once the frozen delivery's
    // claim has lapsed too (it may only be frozen), sends the email.
    let _other = WorkerProcess::spawn(&app, "emails", &env);
    wait_for("the other worker to send the email", LIMIT, || async {
        (email_status(&app.db, email).await == "sent").then_some(())
    })
    .await;
    std::fs::write(smtp.dir.join("release"), b"").unwrap();
    assert!(send_signal("CONT", frozen.pid()));
    wait_for(
        "the thawed worker to reset its transaction",
        LIMIT,
        || async { smtp_file_exists(&smtp, "rset-").then_some(()) },
    )
    .await;
    let received = received_message_ids(&smtp);
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received.values().sum::<usize>(),
        1,
        "the email arrived once: {received:?}"
    );
}

/// A worker killed mid-send (its claim on the email taken, the server holding its `RCPT`) is
/// known to be gone by a worker started on the same machine: that one takes the job over at once
/// and the send claim too, instead of waiting for the claim to lapse (three leases, 30 s here).
#[tokio::test]
async fn a_killed_workers_send_claim_is_taken_at_once_by_its_successor_on_the_same_machine() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app().await;
    let t = app.create_tenant("successor").await;
    let mut env = mail_env(&smtp);
    env.push(("BACKROOM_JOB_LEASE_SECS", "10".into()));
    let mut victim = WorkerProcess::spawn(&app, "emails", &env);
    let email = post_one_email(&app, &t.key, "holdrcpt-successor@example.org").await;
    wait_for("the server to hold the RCPT", LIMIT, || async {
        smtp_file_exists(&smtp, "held").then_some(())
    })
    .await;
    victim.kill9();
    std::fs::write(smtp.dir.join("release"), b"").unwrap();
    let started = Instant::now();
    let _successor = WorkerProcess::spawn(&app, "emails", &env);
    wait_for("the successor to send the email", LIMIT, || async {
        (email_status(&app.db, email).await == "sent").then_some(())
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "sent {took:?} after the successor started: within one lease (10 s), not the claim's 30 s"
    );
    assert_eq!(received_message_ids(&smtp).values().sum::<usize>(), 1);
}

#[tokio::test]
async fn a_worker_killed_mid_forecast_run_leaves_the_run_finished_with_each_sku_once() {
    let app = spawn_app().await;
    let t = app.create_tenant("forecaster").await;
    let tenant = tenant_id(&t);
    let skus = 1000;
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let history = backroom::forecast::demo::generate(skus, 120, yesterday, 7);
    backroom::forecast::demo::load(&app.db, tenant, &history)
        .await
        .unwrap();
    let horizon = 7;
    let r = app
        .post_json(
            "/v1/forecasts/runs",
            Some(&t.key),
            &json!({"horizon_days": horizon}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let run_id: Uuid = r.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let progress = || async {
        sqlx::query_as::<_, (String, i32, i32)>(
            "SELECT status, chunks_done, chunks_total FROM forecast_runs WHERE id = $1",
        )
        .bind(run_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };

    let mut victim = WorkerProcess::spawn(&app, "forecasts", &[]);
    // Killed once it has finished a chunk and holds the next ones (between the two it may
    // briefly hold none, and a kill then would test nothing).
    wait_for(
        "the victim to finish a chunk and hold more",
        LIMIT,
        || async {
            let (_, done, _) = progress().await;
            let running = app
                .queues
                .counts(&queue(Queue::Forecasts.name()))
                .await
                .unwrap()
                .running;
            (done >= 1 && running > 0).then_some(())
        },
    )
    .await;
    victim.kill9();
    let (status, done, total) = progress().await;
    assert_eq!(status, "running");
    assert!(
        done < total,
        "killed mid-run: {done} of {total} chunks done"
    );
    let held = app
        .queues
        .counts(&queue(Queue::Forecasts.name()))
        .await
        .unwrap();
    assert!(held.running > 0, "the victim died holding chunks: {held:?}");

    let _rescuer = WorkerProcess::spawn(&app, "forecasts", &[]);
    let finished = wait_for("the run to finish", LIMIT, || async {
        let (status, done, total) = progress().await;
        assert_ne!(status, "failed", "the run failed");
        (status == "succeeded").then_some((done, total))
    })
    .await;
    assert_eq!(finished.0, finished.1, "chunks_done = chunks_total");
    let chunk_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM forecast_chunks WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(chunk_rows, finished.1 as i64, "each chunk recorded once");
    let per_sku: Vec<(String, i64)> = sqlx::query_as(
        "SELECT p.sku, (SELECT count(*) FROM forecast_results r WHERE r.run_id = $1 AND r.sku = p.sku)
         FROM products p WHERE p.tenant_id = $2",
    )
    .bind(run_id)
    .bind(tenant)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(per_sku.len(), skus);
    let wrong: Vec<_> = per_sku.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        wrong.is_empty(),
        "SKUs without exactly one result: {wrong:?}"
    );
    let points: i64 = sqlx::query_scalar("SELECT count(*) FROM forecast_points WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(points, (skus * horizon) as i64, "a point per SKU and day");
}

// ---------------------------------------------------------------------------------------------
// Redis and Postgres restarted under load.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redis_killed_and_restarted_mid_run_loses_nothing_and_repeats_nothing() {
    let redis_dir = ScratchDir::new("redis-aof");
    let port = free_port();
    let mut redis = RedisServer::start_durable(port, &redis_dir.path).await;
    let app = spawn_app_with({
        let url = redis.url();
        move |s| s.redis_url = url
    })
    .await;
    let t = app.create_tenant("steadfast").await;
    let tenant = tenant_id(&t);
    let skus = 5;
    for s in 0..skus {
        put_product(&app, &t.key, &format!("SKU-{s}")).await;
    }
    let mut expected = post_adjustments(&app, &t.key, skus, 5000, "before").await;
    let (mut ordered, mut units_sold) = (0, 0);
    for n in 0..10 {
        place_order(&app, &t.key, &format!("SKU-{}", n % skus), 1).await;
        (ordered, units_sold) = (ordered + 1, units_sold + 1);
    }

    let movements = "SELECT count(*) FROM stock_movements WHERE tenant_id = $1";
    let mut worker = WorkerProcess::spawn(&app, "stock,invoices", &[]);
    wait_for("the worker to apply some adjustments", LIMIT, || async {
        (count(&app.db, movements, tenant).await >= 500).then_some(())
    })
    .await;
    redis.kill();

    // While Redis is down, a direct enqueue is refused with a hint to come back...
    let direct = app
        .post_json(
            "/v1/stock-adjustments",
            Some(&t.key),
            &json!({"sku": "SKU-0", "delta": 1, "reason": "receipt", "idempotency_key": "down"}),
        )
        .await;
    let retry_after = direct.headers().get("retry-after").cloned();
    let problem = assert_problem(direct, 503, "a direct enqueue while Redis is down").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("redis"),
        "{problem}"
    );
    assert!(
        retry_after.is_some_and(|v| v.to_str().unwrap().parse::<u64>().is_ok_and(|s| s > 0)),
        "the 503 says when to retry"
    );
    // ...while orders are taken: their work waits in the outbox.
    for n in 0..10 {
        place_order(&app, &t.key, &format!("SKU-{}", n % skus), 2).await;
        (ordered, units_sold) = (ordered + 1, units_sold + 2);
    }
    // The outage outlasts the worker's leases, so its leases expire while Redis is away.
    tokio::time::sleep(CHILD_LEASE * 2).await;
    assert!(worker.is_running(), "the worker survives the outage");

    assert!(
        count(&app.db, movements, tenant).await < expected.len() as i64,
        "work remains that the worker can only fetch once Redis is back"
    );
    let _redis = RedisServer::start_durable(port, &redis_dir.path).await;
    let after = app
        .post_json(
            "/v1/stock-adjustments",
            Some(&t.key),
            &json!({"sku": "SKU-0", "delta": 1, "reason": "receipt", "idempotency_key": "up"}),
        )
        .await;
    assert_eq!(after.status(), 202, "the API reconnects by itself");
    expected.push(("up".into(), 1));

    let stock_queue = queue(Queue::Stock.name());
    let stock_jobs = (expected.len() + ordered) as u64;
    let counts = wait_for("every stock job to finish", LIMIT, || async {
        let c = app.queues.counts(&stock_queue).await.ok()?;
        (c.succeeded + c.failed + c.dead == stock_jobs).then_some(c)
    })
    .await;
    assert_eq!((counts.failed, counts.dead), (0, 0), "{counts:?}");
    let invoices_queue = queue(Queue::Invoices.name());
    let counts = wait_for("every invoice job to finish", LIMIT, || async {
        let c = app.queues.counts(&invoices_queue).await.ok()?;
        (c.succeeded + c.failed + c.dead == ordered as u64).then_some(c)
    })
    .await;
    assert_eq!((counts.failed, counts.dead), (0, 0), "{counts:?}");
    let ready = "SELECT count(*) FROM invoices WHERE tenant_id = $1 AND status = 'ready'";
    assert_eq!(count(&app.db, ready, tenant).await, ordered as i64);
    assert!(worker.is_running(), "the same worker did all of it");

    let (keys, level) = checked_ledger(&app.db, tenant).await;
    assert_eq!(
        keys.len(),
        stock_jobs as usize,
        "one ledger row per adjustment"
    );
    for (key, _) in &expected {
        assert!(keys.contains(key), "adjustment {key} is in the ledger");
    }
    let expected_level = expected.iter().map(|(_, d)| d).sum::<i64>() - units_sold;
    assert_eq!(
        level, expected_level,
        "stock moved exactly once per adjustment"
    );
}

/// Whether the Redis server on `port` is still loading its data (it answers `LOADING`).
async fn redis_is_loading(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading))
}

/// A Redis restarted with its data answers `LOADING` until it has read it. The external fault
/// run saw 500s then; every request meanwhile is a 503 with `Retry-After`, and the API serves
/// again by itself once Redis is up.
#[tokio::test]
async fn requests_while_redis_loads_its_data_are_503_with_retry_after_never_500() {
    let redis_dir = ScratchDir::new("redis-loading");
    let port = free_port();
    let mut redis = RedisServer::start_durable(port, &redis_dir.path).await;
    // Enough data that loading it takes a while: three million small keys, rewritten to the AOF.
    let client = redis::Client::open(redis.url()).unwrap();
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(Some(LIMIT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .unwrap();
    for part in 0..30 {
        redis::cmd("DEBUG")
            .arg("POPULATE")
            .arg(100_000)
            .arg(format!("filler-{part}"))
            .query_async::<()>(&mut conn)
            .await
            .expect("DEBUG POPULATE (the test's own server enables it)");
    }
    redis::cmd("BGREWRITEAOF")
        .query_async::<String>(&mut conn)
        .await
        .unwrap();
    wait_for("the AOF rewrite to finish", LIMIT, || {
        let mut conn = conn.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(&mut conn)
                .await
                .ok()?;
            let idle = info.contains("aof_rewrite_in_progress:0")
                && info.contains("aof_rewrite_scheduled:0");
            idle.then_some(())
        }
    })
    .await;

    let app = spawn_app_with({
        let url = redis.url();
        move |s| s.redis_url = url
    })
    .await;
    let t = app.create_tenant("patient").await;
    put_product(&app, &t.key, "SKU-0").await;
    redis.kill();
    let _redis = RedisServer::start_loading(port, &redis_dir.path).await;

    let (mut while_loading, mut statuses) = (0, HashMap::<u16, usize>::new());
    let started = Instant::now();
    for n in 0.. {
        assert!(
            started.elapsed() < LIMIT,
            "the API serves again within {LIMIT:?}"
        );
        let loading_before = redis_is_loading(port).await;
        let response = app
            .post_json(
                "/v1/stock-adjustments",
                Some(&t.key),
                &json!({"sku": "SKU-0", "delta": 1, "reason": "receipt", "idempotency_key": format!("load-{n}")}),
            )
            .await;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").is_some();
        let loading_after = redis_is_loading(port).await;
        *statuses.entry(status).or_default() += 1;
        assert!(
            status == 202 || (status == 503 && retry_after),
            "request {n}: {status} (retry-after: {retry_after})"
        );
        if loading_before && loading_after {
            while_loading += 1;
            assert_eq!(
                status, 503,
                "request {n} was sent and answered while Redis loaded"
            );
        }
        if !loading_before && !loading_after && status == 202 {
            break;
        }
    }
    assert!(
        while_loading > 0,
        "some requests were answered while Redis loaded its data: {statuses:?}"
    );
}

/// A transaction elsewhere holding one tenant's product locked (as a worker frozen mid-batch
/// would) stalls only that tenant's stock: the ledger writer's batch gives up on the lock after
/// the worker's lock timeout, the other tenants' shares apply at once, and the locked tenant's
/// adjustments retry and apply once the lock is gone. Before the timeout, the one writer waited
/// on the lock, and every tenant's stock with it.
#[tokio::test]
async fn a_product_held_locked_elsewhere_stalls_only_its_own_tenants_stock() {
    let app = spawn_app().await;
    let locked = app.create_tenant("locked").await;
    let free = app.create_tenant("free").await;
    for t in [&locked, &free] {
        put_product(&app, &t.key, "SKU-0").await;
    }
    // A session of its own (no timeouts), holding the locked tenant's product row.
    let mut holder = sqlx::PgConnection::connect(&app.settings.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM products WHERE tenant_id = $1 AND sku = 'SKU-0' FOR UPDATE")
        .bind(tenant_id(&locked))
        .execute(&mut holder)
        .await
        .unwrap();

    let _workers = app.start_workers("stock");
    let level = "SELECT coalesce(sum(on_hand), 0)::bigint FROM products WHERE tenant_id = $1";
    let post = |t: &TestTenant, n: usize| {
        let key = format!("{}-{n}", t.slug);
        app.post_json(
            "/v1/stock-adjustments",
            Some(&t.key),
            &json!({"sku": "SKU-0", "delta": 1, "reason": "receipt", "idempotency_key": key}),
        )
    };
    // The locked tenant's adjustments first, in the writer's way; then the free tenant's.
    for n in 0..3 {
        assert_eq!(post(&locked, n).await.status(), 202);
    }
    for n in 0..5 {
        assert_eq!(post(&free, n).await.status(), 202);
    }
    wait_for(
        "the free tenant's stock to move while the other's is locked",
        Duration::from_secs(20),
        || async { (count(&app.db, level, tenant_id(&free)).await == 5).then_some(()) },
    )
    .await;
    assert_eq!(count(&app.db, level, tenant_id(&locked)).await, 0);

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    wait_for(
        "the locked tenant's stock to move once released",
        LIMIT,
        || async { (count(&app.db, level, tenant_id(&locked)).await == 3).then_some(()) },
    )
    .await;
    let (keys, total) = checked_ledger(&app.db, tenant_id(&locked)).await;
    assert_eq!((keys.len(), total), (3, 3), "each adjustment applied once");
}

/// A worker frozen (SIGSTOP) in the middle of a ledger transaction holds row locks that every
/// other worker's batches need. With adjustments arriving steadily, the others must keep applying
/// them: never 5 s without one while some wait (the server ends the frozen session's idle
/// transaction, releasing its locks, well before; without that bound the stall lasted as long
/// as the freeze). Thawed, the frozen worker applies nothing twice.
#[tokio::test]
async fn a_worker_frozen_mid_transaction_never_stops_the_others_for_five_seconds() {
    let app = spawn_app().await;
    let t = app.create_tenant("steady").await;
    let skus = 8;
    for s in 0..skus {
        put_product(&app, &t.key, &format!("SKU-{s}")).await;
    }
    let mut frozen = WorkerProcess::spawn(&app, "stock", &[]);
    let _live = WorkerProcess::spawn(&app, "stock", &[]);

    // Steady arrivals: a batch of 40 adjustments every 50 ms, until told to stop.
    let feeding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let feeder = {
        let (feeding, client, url, key) = (
            feeding.clone(),
            app.client.clone(),
            format!("{}/v1/stock-adjustments/batch", app.address),
            t.key.clone(),
        );
        tokio::spawn(async move {
            let mut posted = 0usize;
            while feeding.load(std::sync::atomic::Ordering::Relaxed) {
                let adjustments: Vec<Value> = (posted..posted + 40)
                    .map(|i| {
                        json!({"sku": format!("SKU-{}", i % skus), "delta": 1,
                                    "reason": "receipt", "idempotency_key": format!("k-{i}")})
                    })
                    .collect();
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"adjustments": adjustments}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                posted += 40;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            posted
        })
    };
    let applied = || {
        count(
            &app.db,
            "SELECT count(*) FROM stock_movements WHERE tenant_id = $1",
            tenant_id(&t),
        )
    };
    wait_for("the workers to apply adjustments", LIMIT, || async {
        (applied().await > 200).then_some(())
    })
    .await;

    // Freeze the worker until it is caught holding a transaction (its session idle in one).
    let idle_in_transaction =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
        AND state = 'idle in transaction' AND state_change < now() - interval '200 milliseconds'";
    let mut caught = false;
    for attempt in 0..100 {
        assert!(send_signal("STOP", frozen.pid()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle: i64 = sqlx::query_scalar(idle_in_transaction)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if idle > 0 {
            caught = true;
            break;
        }
        assert!(send_signal("CONT", frozen.pid()));
        tokio::time::sleep(Duration::from_millis(7 * (attempt % 5) + 3)).await;
    }
    assert!(caught, "the worker was never frozen inside a transaction");

    // Frozen for 8 s, four leases: the longest time without a new ledger row must stay short.
    let frozen_at = Instant::now();
    let (mut last_count, mut last_change, mut longest) =
        (applied().await, Instant::now(), Duration::ZERO);
    while frozen_at.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = applied().await;
        if now > last_count {
            (last_count, last_change) = (now, Instant::now());
        }
        longest = longest.max(last_change.elapsed());
    }
    assert!(send_signal("CONT", frozen.pid()));
    eprintln!("longest time without a new ledger row behind the frozen worker: {longest:?}");
    feeding.store(false, std::sync::atomic::Ordering::Relaxed);
    let posted = feeder.await.unwrap();
    assert!(
        longest < Duration::from_secs(5),
        "no adjustment applied for {longest:?} behind a frozen worker's locks"
    );
    wait_for("every adjustment to apply", LIMIT, || async {
        (applied().await == posted as i64).then_some(())
    })
    .await;
    let (keys, total) = checked_ledger(&app.db, tenant_id(&t)).await;
    assert_eq!(
        (keys.len(), total),
        (posted, posted as i64),
        "each applied once"
    );
    frozen.kill9();
}

/// "Jobs were reclaimed by another worker" must mean that: a worker that was never stopped,
/// working 20,000 jobs with heartbeats every two thirds of a second, never logs it. (It did
/// when its own acks crossed a heartbeat: the jobs had just finished, and were counted as lost.)
#[tokio::test]
async fn a_busy_worker_that_never_stalled_never_says_its_jobs_were_reclaimed() {
    let app = spawn_app().await;
    let t = app.create_tenant("busy").await;
    let skus = 20;
    for s in 0..skus {
        put_product(&app, &t.key, &format!("SKU-{s}")).await;
    }
    let expected = post_adjustments(&app, &t.key, skus, 20_000, "busy").await;
    let scratch = ScratchDir::new("busy-worker");
    let log = scratch.path.join("work.log");
    let env = [
        ("BACKROOM_LOG", "info".to_string()),
        ("BACKROOM_LOG_FORMAT", "json".to_string()),
    ];
    let mut worker = WorkerProcess::spawn_logged(&app, "stock", &env, &log);
    let movements = "SELECT count(*) FROM stock_movements WHERE tenant_id = $1";
    wait_for("every adjustment to apply", LIMIT, || async {
        (count(&app.db, movements, tenant_id(&t)).await == expected.len() as i64).then_some(())
    })
    .await;
    assert!(worker.is_running(), "the worker never stopped");
    worker.kill9();
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines.contains("workers running"),
        "the log is the worker's: {lines:.500}"
    );
    let false_alarms: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("reclaimed by another worker"))
        .collect();
    assert!(false_alarms.is_empty(), "{false_alarms:?}");
}

#[tokio::test]
async fn postgres_crashed_and_restarted_mid_run_applies_every_adjustment_exactly_once() {
    let mut postgres = PostgresServer::start().await;
    let app = spawn_app_on(&postgres.server_url(), |_| {}).await;
    let t = app.create_tenant("durable").await;
    let tenant = tenant_id(&t);
    let skus = 10;
    for s in 0..skus {
        put_product(&app, &t.key, &format!("SKU-{s}")).await;
    }
    let total = 20_000;
    let expected = post_adjustments(&app, &t.key, skus, total, "adj").await;

    let movements = "SELECT count(*) FROM stock_movements WHERE tenant_id = $1";
    let mut worker = WorkerProcess::spawn(&app, "stock", &[]);
    wait_for("the worker to apply some batches", LIMIT, || async {
        (count(&app.db, movements, tenant).await >= 1000).then_some(())
    })
    .await;
    postgres.crash();
    let stock_queue = queue(Queue::Stock.name());
    let at_crash = app.queues.counts(&stock_queue).await.unwrap();
    assert!(
        at_crash.succeeded < total as u64,
        "the crash came mid-run: {at_crash:?}"
    );

    // While Postgres is down the API says so (503 with Retry-After, not a 500) and the worker's
    // jobs fail their batches and wait to retry.
    let down = app.get("/v1/products/SKU-0", Some(&t.key)).await;
    assert!(down.headers().contains_key("retry-after"), "{down:?}");
    assert_problem(down, 503, "a read while Postgres is down").await;
    wait_for("batches to fail and their jobs to retry", LIMIT, || async {
        let c = app.queues.counts(&stock_queue).await.ok()?;
        (c.retrying > 0).then_some(())
    })
    .await;

    postgres.start_again().await;
    assert!(
        postgres.log().contains("automatic recovery in progress"),
        "Postgres came back through crash recovery:\n{}",
        postgres.log()
    );
    let counts = wait_for("every adjustment to finish", LIMIT, || async {
        let c = app.queues.counts(&stock_queue).await.ok()?;
        (c.succeeded + c.failed + c.dead == total as u64).then_some(c)
    })
    .await;
    assert_eq!(
        (counts.failed, counts.dead),
        (0, 0),
        "{counts:?}\n{}",
        postgres.log()
    );
    assert!(worker.is_running(), "the worker survives the crash");

    let (keys, level) = checked_ledger(&app.db, tenant).await;
    assert_eq!(keys.len(), total, "one ledger row per adjustment");
    let expected_keys: HashSet<String> = expected.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, expected_keys);
    assert_eq!(level, expected.iter().map(|(_, d)| d).sum::<i64>());
}

// ---------------------------------------------------------------------------------------------
// The SMTP relay going away.
// ---------------------------------------------------------------------------------------------

/// emails.rs has the relay that is down from the start; here it dies after the workers' pool
/// has connections to it, and several emails wait for it.
/// The external fault run saw an email go out twice when Postgres was away for a few seconds
/// right after the SMTP server's `250`: recording "sent" failed, the whole job was retried, and
/// the email was sent again. Now only the record is retried. Here Postgres refuses exactly that
/// record (a trigger raising `admin_shutdown`, as a server going down does) until the server has
/// the message; then it takes it.
#[tokio::test]
async fn postgres_refusing_the_sent_record_after_the_smtp_250_still_sends_once() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with({
        let url = smtp.url();
        move |s| {
            s.smtp_url = Some(url);
            s.mail_from = "Backroom Test <noreply@backroom.test>".into();
            s.emails_per_minute = 1000;
            s.queue.retry_base = Duration::from_millis(200);
            s.queue.retry_cap = Duration::from_millis(500);
        }
    })
    .await;
    let t = app.create_tenant("recorded").await;
    sqlx::raw_sql(
        r#"CREATE FUNCTION refuse_sent() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'the database system is shutting down' USING ERRCODE = '57P01'; END $$;
           CREATE TRIGGER refuse_sent BEFORE UPDATE ON emails FOR EACH ROW
           WHEN (NEW.status = 'sent') EXECUTE FUNCTION refuse_sent();"#,
    )
    .execute(&app.db)
    .await
    .unwrap();
    let _workers = app.start_workers("emails");
    let email = post_email(&app, &t.key, 1).await;
    wait_for("the SMTP server to have the message", LIMIT, || async {
        (!smtp.messages().is_empty()).then_some(())
    })
    .await;
    let status = "SELECT status FROM emails WHERE id = $1";
    let unrecorded: String = sqlx::query_scalar(status)
        .bind(email)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_ne!(
        unrecorded, "sent",
        "the record is refused while the trigger stands"
    );

    sqlx::raw_sql("DROP TRIGGER refuse_sent ON emails; DROP FUNCTION refuse_sent();")
        .execute(&app.db)
        .await
        .unwrap();
    wait_for("the send to be recorded", LIMIT, || async {
        let now: String = sqlx::query_scalar(status)
            .bind(email)
            .fetch_one(&app.db)
            .await
            .ok()?;
        (now == "sent").then_some(())
    })
    .await;
    let received = received_message_ids(&smtp);
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received.values().all(|&n| n == 1),
        "sent once: {received:?}"
    );
}

/// Nothing is half-accepted: the fault run saw `POST /v1/emails` answer 503 for an email that
/// was stored and queued (and went out). Once its job is queued an email is accepted, whatever
/// happens to the bookkeeping after. Here Postgres refuses the API's note of the job's id.
#[tokio::test]
async fn an_email_whose_job_is_queued_is_accepted_even_if_noting_the_job_fails() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_mailing_to(&smtp).await;
    let t = app.create_tenant("accepted").await;
    // Refuses an update that changes only the job id (the API's note; the worker's claim also
    // counts an attempt).
    sqlx::raw_sql(
        r#"CREATE FUNCTION refuse_note() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'the database system is shutting down' USING ERRCODE = '57P01'; END $$;
           CREATE TRIGGER refuse_note BEFORE UPDATE ON emails FOR EACH ROW
           WHEN (NEW.job_id IS DISTINCT FROM OLD.job_id AND NEW.attempts = OLD.attempts)
           EXECUTE FUNCTION refuse_note();"#,
    )
    .execute(&app.db)
    .await
    .unwrap();
    let email = post_email(&app, &t.key, 1).await;
    let _workers = app.start_workers("emails");
    wait_for("the accepted email to be sent", LIMIT, || async {
        let status: String = sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
            .bind(email)
            .fetch_one(&app.db)
            .await
            .ok()?;
        (status == "sent").then_some(())
    })
    .await;
    assert_eq!(received_message_ids(&smtp).len(), 1);
}

#[tokio::test]
async fn emails_waiting_for_a_relay_that_died_go_out_once_each_when_it_returns() {
    let mut first = SmtpServer::start().await;
    let port = first.port;
    let app = spawn_app_with({
        let url = first.url();
        move |s| {
            s.smtp_url = Some(url);
            s.mail_from = "Backroom Test <noreply@backroom.test>".into();
            s.emails_per_minute = 1000;
            // Eight attempts span several seconds, longer than the outage.
            s.queue.retry_base = Duration::from_millis(500);
            s.queue.retry_cap = Duration::from_secs(2);
        }
    })
    .await;
    let workers = app.start_workers("emails");
    let t = app.create_tenant("relay").await;
    let tenant = tenant_id(&t);
    let status = |id: Uuid| {
        let db = app.db.clone();
        async move {
            sqlx::query_as::<_, (String, i32, Option<String>)>(
                "SELECT status, attempts, last_error FROM emails WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let warm_up = post_email(&app, &t.key, 0).await;
    wait_for("the first email to be sent", LIMIT, || async {
        (status(warm_up).await.0 == "sent").then_some(())
    })
    .await;

    first.stop();
    let mut waiting = vec![];
    for n in 1..=5 {
        waiting.push(post_email(&app, &t.key, n).await);
    }
    for &id in &waiting {
        let (state, _, _) = wait_for("a failed attempt", LIMIT, || async {
            let s = status(id).await;
            (s.1 >= 1 && s.2.is_some()).then_some(s)
        })
        .await;
        assert_eq!(
            state, "queued",
            "a transient failure keeps the email queued"
        );
    }

    let second = SmtpServer::start_on(port).await;
    for &id in &waiting {
        wait_for("the email to be sent", LIMIT, || async {
            (status(id).await.0 == "sent").then_some(())
        })
        .await;
    }
    workers.stop().await;

    let ids = message_ids(&app.db, tenant).await;
    let id_of = |email: Uuid| ids.iter().find(|(_, e)| **e == email).unwrap().0.clone();
    assert_eq!(
        received_message_ids(&first),
        HashMap::from([(id_of(warm_up), 1)])
    );
    let expected: HashMap<String, usize> = waiting.iter().map(|&e| (id_of(e), 1)).collect();
    assert_eq!(
        received_message_ids(&second),
        expected,
        "each waiting email arrived once, under its Message-ID"
    );
}

// ---------------------------------------------------------------------------------------------
// Poison payloads on the real queues.
// ---------------------------------------------------------------------------------------------

/// The engine's own tests (queue_engine.rs) cover poison, panicking and hanging probe jobs; this
/// pushes undecodable payloads onto every real queue, worked by one real `backroom work`
/// process, and then checks that process still does real work on each queue.
#[tokio::test]
async fn undecodable_payloads_on_every_queue_go_dead_and_the_worker_keeps_working_them_all() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app().await;
    let t = app.create_tenant("poisoned").await;
    let tenant = tenant_id(&t);
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let history = backroom::forecast::demo::generate(3, 60, yesterday, 3);
    backroom::forecast::demo::load(&app.db, tenant, &history)
        .await
        .unwrap();
    put_product(&app, &t.key, "PLAIN").await;

    let mut worker = WorkerProcess::spawn(
        &app,
        "stock,invoices,emails,forecasts,imports",
        &mail_env(&smtp),
    );
    let kinds = [
        (Queue::Stock.name(), "stock_adjustment"),
        (Queue::Invoices.name(), "render_invoice"),
        (Queue::Emails.name(), "requested_email"),
        (Queue::Forecasts.name(), "forecast_plan"),
        (Queue::Imports.name(), "sales_import"),
    ];
    let mut poison = vec![];
    for (name, kind) in kinds {
        let jobs = vec![
            NewJob::raw(kind, b"\xff\xfe not JSON at all".to_vec()).tenant(tenant),
            NewJob::raw(kind, br#"{"unexpected": "shape"}"#.to_vec()).tenant(tenant),
        ];
        for pushed in app.queues.push(&queue(name), jobs).await.unwrap() {
            poison.push((name, pushed.id));
        }
    }
    for (name, id) in &poison {
        let job = wait_for(&format!("{name} poison {id} to go dead"), LIMIT, || async {
            let job = app.queues.get(id).await.ok()??;
            (job.status == JobStatus::Dead).then_some(job)
        })
        .await;
        let reason = job.last_error.unwrap_or_default();
        assert!(
            reason.contains("does not decode"),
            "{name}: the dead job says why: {reason}"
        );
        // The tenant can read its dead job, non-UTF-8 payload and all.
        let seen: Value = app
            .get(&format!("/v1/jobs/{id}"), Some(&t.key))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(seen["status"], "dead", "{seen}");
    }
    assert!(worker.is_running(), "poison never takes the worker down");

    // Real work on every queue afterwards.
    let adjusted: Value = app
        .post_json(
            "/v1/stock-adjustments",
            Some(&t.key),
            &json!({"sku": "PLAIN", "delta": 4, "reason": "receipt", "idempotency_key": "after"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let order = place_order(&app, &t.key, "PLAIN", 1).await;
    let mail = post_email(&app, &t.key, 1).await;
    let import = app
        .upload_sales(&t.key, format!("date,sku,quantity\n{yesterday},PLAIN,3\n"))
        .await;
    assert_eq!(import.status(), 202);
    let import: Value = import.json().await.unwrap();
    let run = app
        .post_json(
            "/v1/forecasts/runs",
            Some(&t.key),
            &json!({"horizon_days": 7, "skus": [history[0].sku]}),
        )
        .await;
    assert_eq!(run.status(), 202);
    let run: Value = run.json().await.unwrap();

    for job_id in [&adjusted["job_id"], &import["job_id"], &run["job_id"]] {
        let job_id = job_id.as_str().expect("a job id");
        wait_for(&format!("job {job_id} to succeed"), LIMIT, || async {
            let job = app.queues.get(job_id).await.ok()??;
            assert!(
                !matches!(job.status, JobStatus::Dead | JobStatus::Failed),
                "{job:?}"
            );
            (job.status == JobStatus::Succeeded).then_some(())
        })
        .await;
    }
    let invoice_id: Uuid = order["invoice_id"].as_str().unwrap().parse().unwrap();
    wait_for("the order's invoice to be ready", LIMIT, || async {
        let status: String = sqlx::query_scalar("SELECT status FROM invoices WHERE id = $1")
            .bind(invoice_id)
            .fetch_one(&app.db)
            .await
            .ok()?;
        (status == "ready").then_some(())
    })
    .await;
    let run_id: Uuid = run["run_id"].as_str().unwrap().parse().unwrap();
    wait_for("the forecast run to succeed", LIMIT, || async {
        let status: String = sqlx::query_scalar("SELECT status FROM forecast_runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&app.db)
            .await
            .ok()?;
        assert_ne!(status, "failed");
        (status == "succeeded").then_some(())
    })
    .await;
    wait_for("the requested email to be sent", LIMIT, || async {
        let status: String = sqlx::query_scalar("SELECT status FROM emails WHERE id = $1")
            .bind(mail)
            .fetch_one(&app.db)
            .await
            .ok()?;
        (status == "sent").then_some(())
    })
    .await;
    assert!(worker.is_running());
}
