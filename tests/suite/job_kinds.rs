//! Job kinds run one at a time with `backroom::jobs::perform` (no queue, the real database),
//! and the rules every producer's job obeys, whichever producer made it.

use crate::helpers::*;
use backroom::domain::Reason;
use backroom::jobs::stock::{StockAdjustmentJob, worker as stock_worker};
use backroom::jobs::{self, JobKind, Queue};
use backroom::queue::JobError;
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

fn adjustment(
    tenant: Uuid,
    sku: &str,
    delta: i64,
    reason: Reason,
    key: &str,
) -> StockAdjustmentJob {
    StockAdjustmentJob {
        tenant_id: tenant,
        sku: sku.to_string(),
        delta,
        reason,
        idempotency_key: key.to_string(),
        reference: None,
        occurred_at: Utc::now(),
    }
}

async fn perform_stock(
    app: &TestApp,
    job: StockAdjustmentJob,
) -> Result<serde_json::Value, JobError> {
    let ledger = stock_worker::deps(&app.worker_context()).expect("the ledger starts");
    jobs::perform(stock_worker::handle, job, ledger, 1).await
}

async fn put_rope(app: &TestApp, key: &str) {
    let created = app
        .send_json(
            reqwest::Method::PUT,
            "/v1/products/ROPE",
            Some(key),
            &json!({
                "name": "Rope", "unit_price": "9.90", "currency": "EUR", "reorder_point": 0,
                "reorder_quantity": 10, "lead_time_days": 3, "allow_negative": false
            }),
        )
        .await;
    assert_eq!(created.status(), 201, "the product is created");
}

async fn on_hand(app: &TestApp, tenant: Uuid, sku: &str) -> i64 {
    sqlx::query_scalar("SELECT on_hand FROM products WHERE tenant_id = $1 AND sku = $2")
        .bind(tenant)
        .bind(sku)
        .fetch_one(&app.db)
        .await
        .expect("the product exists")
}

#[tokio::test]
async fn a_stock_job_is_performed_once_and_a_repeat_moves_nothing() {
    let app = spawn_app().await;
    let t = app.create_tenant("kinds").await;
    let tenant: Uuid = t.id.parse().unwrap();
    put_rope(&app, &t.key).await;

    let receipt = adjustment(tenant, "ROPE", 12, Reason::Receipt, "r-1");
    let done = perform_stock(&app, receipt.clone())
        .await
        .expect("the receipt applies");
    assert_eq!(
        (done["applied"].as_bool(), done["on_hand_after"].as_i64()),
        (Some(true), Some(12))
    );
    let again = perform_stock(&app, receipt)
        .await
        .expect("a repeat is no error");
    assert_eq!(
        (again["applied"].as_bool(), again["on_hand_after"].as_i64()),
        (Some(false), Some(12))
    );
    assert_eq!(on_hand(&app, tenant, "ROPE").await, 12);

    let sale = adjustment(tenant, "ROPE", -5, Reason::Sale, "s-1");
    perform_stock(&app, sale).await.expect("the sale applies");
    assert_eq!(on_hand(&app, tenant, "ROPE").await, 7);
}

/// The sign rule lives in the domain and holds for a job however it was produced (the API
/// checks it too, but an order, the outbox or a hand-made job never passed the API's check).
#[tokio::test]
async fn a_stock_job_against_the_sign_rule_fails_for_good_and_moves_nothing() {
    let app = spawn_app().await;
    let t = app.create_tenant("signs").await;
    let tenant: Uuid = t.id.parse().unwrap();
    put_rope(&app, &t.key).await;

    for (delta, reason, says) in [
        (5, Reason::Sale, "delta must be negative for a sale"),
        (-5, Reason::Receipt, "delta must be positive for a receipt"),
        (3, Reason::Damage, "delta must be negative for a damage"),
        (-1, Reason::Return, "delta must be positive for a return"),
    ] {
        let job = adjustment(
            tenant,
            "ROPE",
            delta,
            reason,
            &format!("bad-{delta}-{reason:?}"),
        );
        match perform_stock(&app, job).await {
            Err(JobError::Permanent { message }) => {
                assert!(
                    message.contains(says),
                    "{message:?} names the rule ({says})"
                )
            }
            other => panic!("{reason:?} {delta}: expected a permanent failure, got {other:?}"),
        }
    }
    assert_eq!(on_hand(&app, tenant, "ROPE").await, 0, "nothing moved");
    let movements: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stock_movements WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(movements, 0);
}

/// A job's rows are scoped by the tenant its payload names: the same idempotency key in two
/// tenants is two movements, each on its own tenant's product.
#[tokio::test]
async fn a_performed_job_touches_only_its_own_tenants_rows() {
    let app = spawn_app().await;
    let a = app.create_tenant("kinds-a").await;
    let b = app.create_tenant("kinds-b").await;
    let (ta, tb): (Uuid, Uuid) = (a.id.parse().unwrap(), b.id.parse().unwrap());
    for key in [&a.key, &b.key] {
        put_rope(&app, key).await;
    }
    perform_stock(&app, adjustment(tb, "ROPE", 4, Reason::Receipt, "same-key"))
        .await
        .expect("B's receipt applies");
    // The same idempotency key in A is A's own: it applies, not "already applied".
    let done = perform_stock(&app, adjustment(ta, "ROPE", 9, Reason::Receipt, "same-key"))
        .await
        .expect("A's receipt applies");
    assert_eq!(done["applied"].as_bool(), Some(true));
    assert_eq!(
        (
            on_hand(&app, ta, "ROPE").await,
            on_hand(&app, tb, "ROPE").await
        ),
        (9, 4)
    );
}

#[test]
fn every_kind_declares_its_queue_and_a_bounded_run() {
    use backroom::jobs::invoices::RenderInvoice;
    use backroom::jobs::webhooks::DeliverWebhook;
    use backroom::jobs::{emails::EmailJob, forecasts::ForecastJob, imports::SalesImport};
    let declared = [
        (
            StockAdjustmentJob::QUEUE,
            StockAdjustmentJob::MAX_ATTEMPTS,
            StockAdjustmentJob::TIMEOUT,
        ),
        (
            RenderInvoice::QUEUE,
            RenderInvoice::MAX_ATTEMPTS,
            RenderInvoice::TIMEOUT,
        ),
        (EmailJob::QUEUE, EmailJob::MAX_ATTEMPTS, EmailJob::TIMEOUT),
        (
            ForecastJob::QUEUE,
            ForecastJob::MAX_ATTEMPTS,
            ForecastJob::TIMEOUT,
        ),
        (
            SalesImport::QUEUE,
            SalesImport::MAX_ATTEMPTS,
            SalesImport::TIMEOUT,
        ),
        (
            DeliverWebhook::QUEUE,
            DeliverWebhook::MAX_ATTEMPTS,
            DeliverWebhook::TIMEOUT,
        ),
    ];
    let queues: Vec<Queue> = declared.iter().map(|d| d.0).collect();
    assert_eq!(
        queues,
        Queue::ALL,
        "one kind per queue, in the list's order"
    );
    for (queue, attempts, timeout) in declared {
        assert!((1..=20).contains(&attempts), "{queue}: attempts bounded");
        assert!(
            timeout.as_secs() > 0 && timeout.as_secs() <= 3600,
            "{queue}: timeout bounded"
        );
    }
}

/// A delivery that finds the SMTP server accepted this email on an earlier delivery (noted in
/// Redis when the "sent" record could not be written) records it and does not send it again.
#[tokio::test]
async fn an_email_accepted_earlier_but_not_recorded_is_recorded_not_sent_again() {
    use backroom::jobs::emails::{EmailJob, worker as email_worker};
    let smtp = SmtpServer::start().await;
    let app = spawn_app_mailing_to(&smtp).await;
    let t = app.create_tenant("accepted").await;
    let posted = app
        .post_json(
            "/v1/emails",
            Some(&t.key),
            &json!({"to": "reader@example.org", "subject": "Notice", "text": "Hello.",
                    "idempotency_key": "notice-1"}),
        )
        .await;
    assert_eq!(posted.status(), 202);
    let body: serde_json::Value = posted.json().await.unwrap();
    let email_id: Uuid = body["email_id"].as_str().unwrap().parse().unwrap();

    let mut conn = redis::Client::open(app.settings.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!(
        "{{{}:emails}}:accepted:{email_id}",
        app.settings.redis_namespace
    );
    redis::cmd("SET")
        .arg(&key)
        .arg("250 2.0.0 OK earlier")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let job = EmailJob::Requested {
        tenant_id: t.id.parse().unwrap(),
        email_id,
    };
    let deps = email_worker::deps(&app.worker_context()).expect("the mailer is configured");
    let done = jobs::perform(email_worker::handle, job, deps, 2)
        .await
        .expect("the job succeeds");
    assert_eq!(done["recorded_late"], true, "{done}");
    let (status, reply): (String, Option<String>) =
        sqlx::query_as("SELECT status, smtp_reply FROM emails WHERE id = $1")
            .bind(email_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), reply.as_deref()),
        ("sent", Some("250 2.0.0 OK earlier"))
    );
    assert!(smtp.messages().is_empty(), "nothing was sent again");
    let left: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, None, "the note goes once the record is written");
}

/// A later delivery of an email's job finds the send claimed by an earlier delivery of the same
/// job, whose worker stalled past its lease (frozen, maybe right after the server's 250): it does
/// not send, it waits for the claim to lapse; by then the stalled delivery has recorded the send,
/// and the retry sends nothing. (It used to take the claim over and send at once: the storm bench
/// saw emails sent twice as the lease of a frozen worker ran out.)
#[tokio::test]
async fn a_redelivered_email_job_waits_for_a_stalled_delivery_instead_of_sending_again() {
    use backroom::jobs::emails::{EmailJob, worker as email_worker};
    use backroom::queue::JobMeta;
    let smtp = SmtpServer::start().await;
    let app = spawn_app_mailing_to(&smtp).await;
    let t = app.create_tenant("stalled").await;
    let posted = app
        .post_json(
            "/v1/emails",
            Some(&t.key),
            &json!({"to": "reader@example.org", "subject": "Notice", "text": "Hello."}),
        )
        .await;
    assert_eq!(posted.status(), 202);
    let body: serde_json::Value = posted.json().await.unwrap();
    let email_id: Uuid = body["email_id"].as_str().unwrap().parse().unwrap();
    let job_id = body["job_id"].as_str().unwrap().to_string();
    let tenant: Uuid = t.id.parse().unwrap();
    // The first delivery claimed the send, and its worker stalled.
    sqlx::query(
        "UPDATE emails SET job_id = $2, claim_attempt = 1,
                           sending_until = now() + interval '20 seconds' WHERE id = $1",
    )
    .bind(email_id)
    .bind(&job_id)
    .execute(&app.db)
    .await
    .unwrap();

    let job = EmailJob::Requested {
        tenant_id: tenant,
        email_id,
    };
    let deps = email_worker::deps(&app.worker_context()).expect("the mailer is configured");
    let delivery = |attempt| {
        JobMeta::outside_queue(
            job_id.clone(),
            "emails",
            "requested_email",
            Some(tenant),
            attempt,
            8,
        )
    };
    let waited = jobs::perform_as(email_worker::handle, job.clone(), deps.clone(), delivery(2))
        .await
        .expect_err("the second delivery waits");
    match waited {
        JobError::Retry {
            after: Some(after), ..
        } => assert!(
            (15..=22).contains(&after.as_secs()),
            "it waits for the claim: {after:?}"
        ),
        other => panic!("a retry after the claim, got {other:?}"),
    }
    assert!(smtp.messages().is_empty(), "nothing was sent");

    // The stalled delivery comes back and records its send; the retry then sends nothing.
    sqlx::query("UPDATE emails SET status = 'sent', sent_at = now() WHERE id = $1")
        .bind(email_id)
        .execute(&app.db)
        .await
        .unwrap();
    let done = jobs::perform_as(email_worker::handle, job, deps, delivery(3))
        .await
        .expect("the retry finds the email sent");
    assert_eq!(done["duplicate"], true, "{done}");
    assert!(smtp.messages().is_empty(), "nothing was sent twice");
}
