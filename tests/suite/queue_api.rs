//! The job and queue endpoints read and repair the real queues.

use crate::helpers::*;
use backroom::queue::{NewJob, QueueName};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn push(app: &TestApp, queue: &str, tenant: &str, n: u64) -> String {
    let job = NewJob::new("test", &json!({"n": n})).tenant(Uuid::parse_str(tenant).unwrap());
    app.queues
        .push(&QueueName::parse(queue).unwrap(), vec![job])
        .await
        .unwrap()
        .remove(0)
        .id
}

async fn admin(app: &TestApp, method: Method, path: &str) -> reqwest::Response {
    app.request(method, path, Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenant_sees_its_own_jobs_and_nobody_elses() {
    let app = spawn_app().await;
    let a = app.create_tenant("shop-a").await;
    let b = app.create_tenant("shop-b").await;
    let id = push(&app, "stock", &a.id, 1).await;

    let response = app.get(&format!("/v1/jobs/{id}"), Some(&a.key)).await;
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["status"], "queued");
    assert_eq!(job["kind"], "test");
    assert_eq!(job["attempts"], 0);
    assert!(
        job.get("payload").is_none(),
        "tenants get the fate, not the internals"
    );

    for (path, key, why) in [
        (
            format!("/v1/jobs/{id}"),
            b.key.as_str(),
            "another tenant's job",
        ),
        (
            "/v1/jobs/stock_00000000000000000000000000000000".into(),
            a.key.as_str(),
            "unknown id",
        ),
        (
            "/v1/jobs/not-a-job-id".into(),
            a.key.as_str(),
            "malformed id",
        ),
    ] {
        assert_problem(app.get(&path, Some(key)).await, 404, why).await;
    }
    assert_problem(
        app.get(&format!("/v1/jobs/{id}"), None).await,
        401,
        "no key",
    )
    .await;
}

#[tokio::test]
async fn admins_see_queue_counts_and_job_pages() {
    let app = spawn_app().await;
    let t = app.create_tenant("shop").await;
    for n in 0..3 {
        push(&app, "stock", &t.id, n).await;
    }
    let queues: Value = admin(&app, Method::GET, "/admin/v1/queues")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = queues["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "stock",
            "invoices",
            "emails",
            "forecasts",
            "imports",
            "webhooks"
        ]
    );
    let stock = &queues["items"][0];
    assert_eq!(stock["pending"], 3);
    assert_eq!(stock["running"], 0);
    assert_eq!(stock["processed_per_minute"].as_array().unwrap().len(), 60);

    let page: Value = admin(
        &app,
        Method::GET,
        "/admin/v1/queues/stock/jobs?status=queued&limit=2",
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["payload"], json!({"n": 0}));
    assert_eq!(page["items"][0]["tenant_id"], t.id.as_str());
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let rest: Value = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/queues/stock/jobs?status=queued&limit=2&cursor={cursor}"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["payload"], json!({"n": 2}));
    assert!(rest["next_cursor"].is_null());

    let bad = admin(&app, Method::GET, "/admin/v1/queues/stock/jobs?status=lost").await;
    let problem = assert_problem(bad, 422, "bad status").await;
    assert_eq!(problem_fields(&problem), vec!["status"]);
    assert_problem(
        admin(&app, Method::GET, "/admin/v1/queues/nope/jobs").await,
        404,
        "unknown queue",
    )
    .await;
    assert_problem(
        app.get("/admin/v1/queues", Some(&t.key)).await,
        401,
        "tenant key",
    )
    .await;
}

#[tokio::test]
async fn admins_pause_resume_retry_and_discard() {
    let app = spawn_app().await;
    let t = app.create_tenant("shop").await;
    let id = push(&app, "emails", &t.id, 1).await;

    let paused: Value = admin(&app, Method::POST, "/admin/v1/queues/emails/pause")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(paused, json!({"name": "emails", "paused": true}));
    let counts = app
        .queues
        .counts(&QueueName::parse("emails").unwrap())
        .await
        .unwrap();
    assert!(counts.paused);
    admin(&app, Method::POST, "/admin/v1/queues/emails/resume").await;
    assert!(
        !app.queues
            .counts(&QueueName::parse("emails").unwrap())
            .await
            .unwrap()
            .paused
    );

    let conflict = admin(&app, Method::POST, &format!("/admin/v1/jobs/{id}/retry")).await;
    assert_problem(conflict, 409, "a queued job cannot be retried").await;
    app.queues
        .cancel(&id, "cancelled for the test")
        .await
        .unwrap();
    let retried = admin(&app, Method::POST, &format!("/admin/v1/jobs/{id}/retry")).await;
    assert_eq!(retried.status(), 200);
    let job: Value = app
        .get(&format!("/v1/jobs/{id}"), Some(&t.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "queued");
    assert_eq!(job["last_error"], "cancelled for the test");

    let bulk: Value = admin(&app, Method::POST, "/admin/v1/queues/emails/retry-dead")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bulk, json!({"retried": 0}));

    assert_eq!(
        admin(&app, Method::DELETE, &format!("/admin/v1/jobs/{id}"))
            .await
            .status(),
        204
    );
    assert_problem(
        admin(&app, Method::DELETE, &format!("/admin/v1/jobs/{id}")).await,
        404,
        "gone",
    )
    .await;
    assert_problem(
        app.get(&format!("/v1/jobs/{id}"), Some(&t.key)).await,
        404,
        "gone for the tenant",
    )
    .await;
}

#[tokio::test]
async fn metrics_need_the_admin_token_and_report_queue_depths() {
    let app = spawn_app().await;
    let t = app.create_tenant("shop").await;
    push(&app, "imports", &t.id, 1).await;
    assert_problem(
        app.get("/metrics", None).await,
        401,
        "metrics without a token",
    )
    .await;
    let response = app.get("/metrics", Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#"backroom_queue_jobs{queue="imports",status="pending"} 1"#),
        "{text}"
    );
    assert!(text.contains("backroom_jobs_pushed_total"), "{text}");
}
