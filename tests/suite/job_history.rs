//! The job history: finished jobs copied from Redis into Postgres exactly once, by one copier
//! per queue, with nothing left in Redis when no copier runs, and old days dropped whole.

use crate::helpers::*;
use backroom::history::{self, Partitions};
use backroom::queue::{HISTORY_CAP, JobStatus, NewJob, QueueName};
use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

async fn history_rows(app: &TestApp) -> Vec<(String, String, Option<Uuid>)> {
    sqlx::query_as("SELECT id, status, tenant_id FROM job_history ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

async fn list_len(app: &TestApp, queue: &QueueName) -> i64 {
    let mut conn = app.queues.redis().conn().await.unwrap();
    redis::cmd("LLEN")
        .arg(app.queues.keys(queue).history())
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Pushes `n` jobs of `tenant` that cannot run soon, then cancels them (they end `failed`).
async fn ended_jobs(app: &TestApp, queue: &QueueName, tenant: Uuid, n: usize) -> Vec<String> {
    let later = Utc::now() + TimeDelta::hours(1);
    let jobs = (0..n)
        .map(|i| {
            NewJob::new("test", &json!({"n": i}))
                .tenant(tenant)
                .run_at(later)
        })
        .collect();
    let ids: Vec<String> = app
        .queues
        .push(queue, jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    for id in &ids {
        app.queues.cancel(id, "ended for the test").await.unwrap();
    }
    ids
}

#[tokio::test]
async fn every_finished_job_reaches_the_history_once_with_its_record() {
    let app = spawn_app().await;
    let t = app.create_tenant("shop").await;
    let tenant = Uuid::parse_str(&t.id).unwrap();
    put_product(&app, &t.key, "SKU-1").await;
    let stock = QueueName::parse("stock").unwrap();
    let workers = app.start_workers("stock");
    // The work process switches the history on before its workers start.
    wait_history_on(&app, &stock).await;

    let mut ok = vec![];
    for n in 0..3 {
        let r = app
            .post_json(
                "/v1/stock-adjustments",
                Some(&t.key),
                &json!({"sku": "SKU-1", "delta": 2, "reason": "receipt", "idempotency_key": format!("k{n}")}),
            )
            .await;
        assert_eq!(r.status(), 202);
        ok.push(
            r.json::<Value>().await.unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // A payload the stock worker cannot read dies at once with its error.
    let poison = NewJob::new("stock_adjustment", &json!({"not": "an adjustment"}))
        .tenant(tenant)
        .max_attempts(1);
    let dead = app.queues.push(&stock, vec![poison]).await.unwrap()[0]
        .id
        .clone();
    let cancelled = ended_jobs(&app, &stock, tenant, 1).await.remove(0);

    let rows = wait_for("five finished jobs in the history", LIMIT, || async {
        let rows = history_rows(&app).await;
        (rows.len() == 5).then_some(rows)
    })
    .await;
    let status_of = |id: &str| {
        rows.iter()
            .find(|r| r.0 == id)
            .map(|r| r.1.clone())
            .unwrap_or_else(|| panic!("{id} is in the history"))
    };
    for id in &ok {
        assert_eq!(status_of(id), "succeeded");
    }
    assert_eq!(status_of(&dead), "dead");
    assert_eq!(status_of(&cancelled), "failed");
    assert!(rows.iter().all(|r| r.2 == Some(tenant)));

    // The whole record: payload, result, errors and timings.
    let row: (
        Value,
        Option<Value>,
        i32,
        Option<chrono::DateTime<Utc>>,
        chrono::DateTime<Utc>,
    ) = sqlx::query_as(
        "SELECT payload, result, attempts, started_at, finished_at FROM job_history WHERE id = $1",
    )
    .bind(&ok[0])
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(row.0["sku"], "SKU-1");
    assert!(row.1.is_some(), "the result is kept");
    assert_eq!(row.2, 1);
    assert!(row.3.is_some_and(|started| started <= row.4));
    let (last_error, errors): (Option<String>, Value) =
        sqlx::query_as("SELECT last_error, errors FROM job_history WHERE id = $1")
            .bind(&dead)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(last_error.is_some_and(|e| !e.is_empty()));
    assert_eq!(errors.as_array().unwrap().len(), 1);

    // Copied, then dropped from Redis.
    wait_for("the history list to empty", LIMIT, || async {
        (list_len(&app, &stock).await == 0).then_some(())
    })
    .await;
    // Storing a batch again (a copier that died before dropping it) adds nothing.
    let ids: Vec<String> = ok.iter().chain([&dead, &cancelled]).cloned().collect();
    let jobs = app.queues.finished_jobs(&stock, &ids).await.unwrap();
    assert_eq!(jobs.len(), 5);
    let added = history::store(&app.db, &jobs, &mut Partitions::default())
        .await
        .unwrap();
    assert_eq!(added, 0);
    assert_eq!(history_rows(&app).await.len(), 5);
    workers.stop().await;
}

#[tokio::test]
async fn a_copier_that_loses_its_lease_cannot_drop_what_it_did_not_copy() {
    let app = spawn_app().await;
    let queue = QueueName::parse("emails").unwrap();
    let tenant = Uuid::new_v4();
    // The history is on; a copier takes the lease, and ten jobs end.
    app.queues
        .set_history_cap(&queue, HISTORY_CAP)
        .await
        .unwrap();
    let lease = Duration::from_millis(300);
    assert!(app.queues.history_lease(&queue, "a", lease).await.unwrap());
    assert!(!app.queues.history_lease(&queue, "b", lease).await.unwrap());
    let ids = ended_jobs(&app, &queue, tenant, 10).await;
    assert_eq!(list_len(&app, &queue).await, 10);

    // `a` stores its batch, then stalls past its lease before dropping it.
    let a = app.queues.history_peek(&queue, 1000).await.unwrap();
    assert_eq!(a.read, 10);
    assert_eq!(a.jobs.len(), 10);
    assert!(a.jobs.iter().all(|j| j.status == JobStatus::Failed));
    let mut partitions = Partitions::default();
    assert_eq!(
        history::store(&app.db, &a.jobs, &mut partitions)
            .await
            .unwrap(),
        10
    );
    wait_for("the lease to pass to b", LIMIT, || async {
        app.queues
            .history_lease(&queue, "b", lease)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    assert!(
        app.queues
            .history_lease(&queue, "b", Duration::from_secs(30))
            .await
            .unwrap()
    );
    // `b` copies the same jobs again (nothing is stored twice) and drops them; `a` then may not
    // drop anything, though two more jobs have ended meanwhile.
    let b = app.queues.history_peek(&queue, 1000).await.unwrap();
    assert_eq!(
        history::store(&app.db, &b.jobs, &mut partitions)
            .await
            .unwrap(),
        0
    );
    assert!(app.queues.history_drop(&queue, "b", &b).await.unwrap());
    let more = ended_jobs(&app, &queue, tenant, 2).await;
    assert!(!app.queues.history_drop(&queue, "a", &a).await.unwrap());
    assert_eq!(list_len(&app, &queue).await, 2, "the two new ones wait");
    let stored = history_rows(&app).await;
    assert_eq!(stored.len(), 10);
    assert!(ids.iter().all(|id| stored.iter().any(|r| &r.0 == id)));
    let c = app.queues.history_peek(&queue, 1000).await.unwrap();
    let mut waiting: Vec<_> = c.jobs.iter().map(|j| j.id.clone()).collect();
    waiting.sort();
    let mut expected = more.clone();
    expected.sort();
    assert_eq!(waiting, expected);
}

#[tokio::test]
async fn with_the_history_off_nothing_waits_and_with_it_on_no_more_than_its_cap() {
    let app = spawn_app().await;
    let queue = QueueName::parse("invoices").unwrap();
    ended_jobs(&app, &queue, Uuid::new_v4(), 20).await;
    let mut conn = app.queues.redis().conn().await.unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(app.queues.keys(&queue).history())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    // With room for 3 (as if every copier had stopped with the list full), the later ones are
    // not kept; switched off, the list is gone.
    app.queues.set_history_cap(&queue, 3).await.unwrap();
    ended_jobs(&app, &queue, Uuid::new_v4(), 5).await;
    assert_eq!(list_len(&app, &queue).await, 3);
    app.queues.set_history_cap(&queue, 0).await.unwrap();
    assert_eq!(list_len(&app, &queue).await, 0);
}

#[tokio::test]
async fn days_past_the_retention_are_dropped_whole() {
    let app = spawn_app().await;
    let queue = QueueName::parse("emails").unwrap();
    app.queues
        .set_history_cap(&queue, HISTORY_CAP)
        .await
        .unwrap();
    ended_jobs(&app, &queue, Uuid::new_v4(), 4).await;
    let batch = app.queues.history_peek(&queue, 1000).await.unwrap();
    let mut jobs = batch.jobs;
    // Two of them ended 40 days ago.
    for j in jobs.iter_mut().take(2) {
        j.finished_at = Utc::now() - TimeDelta::days(40);
    }
    let mut partitions = Partitions::default();
    history::store(&app.db, &jobs, &mut partitions)
        .await
        .unwrap();
    assert_eq!(history_rows(&app).await.len(), 4);
    let today = Utc::now().date_naive();
    let dropped = history::prune(&app.db, 30, today).await.unwrap();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(history_rows(&app).await.len(), 2);
    assert!(history::prune(&app.db, 30, today).await.unwrap().is_empty());
}
