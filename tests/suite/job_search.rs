//! Searching the job history: admins by what support knows, tenants their own jobs only.

use crate::helpers::*;
use backroom::history::search::{self, Query};
use backroom::history::{self, Partitions};
use backroom::queue::{FinishedJob, JobStatus, NewJob, QueueName};
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

/// A finished job of the invoices or the stock queue (by its id's prefix).
fn finished(
    id: &str,
    tenant: Uuid,
    status: JobStatus,
    payload: Value,
    error: Option<&str>,
    at: DateTime<Utc>,
) -> FinishedJob {
    let (queue, kind) = match id.split('_').next() {
        Some("invoices") => ("invoices", "render_invoice"),
        _ => ("stock", "stock_adjustment"),
    };
    FinishedJob {
        id: id.into(),
        queue: queue.into(),
        kind: kind.into(),
        tenant: Some(tenant),
        status,
        attempts: 1,
        max_attempts: 6,
        payload: payload.to_string(),
        result: None,
        last_error: error.map(str::to_string),
        errors: "[]".into(),
        idempotency_key: None,
        group: None,
        created_at: at - TimeDelta::seconds(5),
        started_at: Some(at - TimeDelta::seconds(1)),
        finished_at: at,
    }
}

async fn found(app: &TestApp, q: &str) -> Vec<String> {
    let url = format!(
        "/admin/v1/jobs/search?limit=500&q={}",
        url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
    );
    let r = app.get(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status(), 200, "{q}");
    let body: Value = r.json().await.unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn admins_find_jobs_by_order_number_error_text_tenant_and_time_in_stable_pages() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let other = app.create_tenant("other").await;
    let (acme_id, other_id) = (
        Uuid::parse_str(&acme.id).unwrap(),
        Uuid::parse_str(&other.id).unwrap(),
    );
    let now = Utc::now();
    let six_days_ago = now - TimeDelta::days(6);
    let invoice = |order: &str| json!({"tenant_id": acme_id, "invoice_id": Uuid::new_v4(), "order_number": order});
    let mut jobs = vec![
        finished(
            "invoices_dead",
            acme_id,
            JobStatus::Dead,
            invoice("ORD-2026-000123"),
            Some("SMTP relay timed out after 30 s"),
            six_days_ago,
        ),
        finished(
            "invoices_ok",
            acme_id,
            JobStatus::Succeeded,
            invoice("ORD-2026-000124"),
            None,
            now,
        ),
        // Another tenant may use the same order number.
        finished(
            "invoices_other",
            other_id,
            JobStatus::Dead,
            invoice("ORD-2026-000123"),
            Some("SMTP relay timed out after 30 s"),
            now - TimeDelta::days(2),
        ),
    ];
    for n in 0..30 {
        jobs.push(finished(
            &format!("stock_{n:02}"),
            acme_id,
            JobStatus::Succeeded,
            json!({"sku": format!("SKU-{n}"), "delta": n, "reason": "receipt"}),
            None,
            now - TimeDelta::minutes(n),
        ));
    }
    let stored = history::store(&app.db, &jobs, &mut Partitions::default())
        .await
        .unwrap();
    assert_eq!(stored, 33);

    let week_ago = (now - TimeDelta::days(7)).date_naive();
    assert_eq!(
        found(
            &app,
            &format!(
                r#"tenant:acme kind:invoice status:dead args.order_number:ORD-2026-000123 error:"timed out" after:{week_ago}"#
            )
        )
        .await,
        ["invoices_dead"]
    );
    assert_eq!(
        found(&app, "args.order_number:ORD-2026-000123").await,
        ["invoices_other", "invoices_dead"],
        "newest first, every tenant"
    );
    assert_eq!(
        found(&app, "relay status:dead tenant:other").await,
        ["invoices_other"]
    );
    assert_eq!(found(&app, "args.delta:7").await, ["stock_07"], "a number");
    assert_eq!(found(&app, "args.sku:SKU-7").await, ["stock_07"]);
    let before = (now - TimeDelta::days(1)).date_naive();
    assert_eq!(
        found(&app, &format!("before:{before} status:dead")).await,
        ["invoices_other", "invoices_dead"]
    );
    assert!(found(&app, "tenant:nobody").await.is_empty());

    // Pages of 7 walk the 30 adjustments once each, newest first.
    let mut seen = vec![];
    let mut cursor = String::new();
    loop {
        let page: Value = app
            .get(
                &format!("/admin/v1/jobs/search?q=kind:stock_adjustment&limit=7&cursor={cursor}"),
                Some(ADMIN_TOKEN),
            )
            .await
            .json()
            .await
            .unwrap();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).map(|n| format!("stock_{n:02}")).collect();
    assert_eq!(seen, expected);

    // A bad query names `q` and says what is wrong.
    let r = app
        .get("/admin/v1/jobs/search?q=colour:red", Some(ADMIN_TOKEN))
        .await;
    let body = assert_problem(r, 422, "an unknown key").await;
    assert_eq!(problem_fields(&body), ["q"]);
    assert!(body.to_string().contains("colour"), "{body}");

    // The plans use the indexes chosen for each term (sequential scans off, as on a big table).
    let mut conn = app.db.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (q, index) in [
        ("args.order_number:ORD-2026-000123", "payload"),
        (r#"error:"timed out""#, "last_error"),
        ("tenant:acme", "tenant"),
    ] {
        let lines = search_plan(&mut conn, q).await;
        let text = lines.join("\n");
        println!("plan of {q}:\n{text}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("Index") && l.contains(index)),
            "{q}: {text}"
        );
    }
}

/// `EXPLAIN` of a search on this connection (so its settings apply).
async fn search_plan(conn: &mut sqlx::PgConnection, q: &str) -> Vec<String> {
    search::plan(conn, &Query::parse(q).unwrap()).await.unwrap()
}

/// The calling tenant's finished jobs: (id, status) pairs.
async fn list(app: &TestApp, key: &str, query: &str) -> Vec<(String, String)> {
    let r = app.get(&format!("/v1/jobs{query}"), Some(key)).await;
    assert_eq!(r.status(), 200, "{query}");
    let body: Value = r.json().await.unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_string(),
                j["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_tenant_lists_and_retries_its_own_jobs_and_never_sees_another_tenants() {
    let app = spawn_app().await;
    let a = app.create_tenant("shop-a").await;
    let b = app.create_tenant("shop-b").await;
    put_product(&app, &a.key, "SKU-1").await;
    let stock = QueueName::parse("stock").unwrap();
    let workers = app.start_workers("stock");
    wait_history_on(&app, &stock).await;
    let r = app
        .post_json(
            "/v1/stock-adjustments",
            Some(&a.key),
            &json!({"sku": "SKU-1", "delta": 1, "reason": "receipt", "idempotency_key": "a1"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let mut dead = vec![];
    for t in [&a, &b] {
        let poison = NewJob::new("stock_adjustment", &json!({"not": "an adjustment"}))
            .tenant(Uuid::parse_str(&t.id).unwrap())
            .max_attempts(1);
        dead.push(
            app.queues.push(&stock, vec![poison]).await.unwrap()[0]
                .id
                .clone(),
        );
    }
    wait_for("three jobs in the history", LIMIT, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_history")
            .fetch_one(&app.db)
            .await
            .ok()?;
        (n == 3).then_some(())
    })
    .await;

    let mine = list(&app, &a.key, "").await;
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|(id, _)| id != &dead[1]), "never B's job");
    assert_eq!(
        list(&app, &a.key, "?status=dead").await,
        [(dead[0].clone(), "dead".to_string())]
    );
    assert_eq!(
        list(&app, &a.key, "?kind=stock_adjustment&status=succeeded")
            .await
            .len(),
        1
    );
    assert_eq!(
        list(&app, &b.key, "").await,
        [(dead[1].clone(), "dead".to_string())]
    );
    // Live jobs lead the first page: each tenant's queued invoice (no invoice worker runs) and
    // scheduled sale; only its own.
    let invoices = QueueName::parse("invoices").unwrap();
    let mut live = vec![];
    for t in [&a, &b] {
        let tenant = Uuid::parse_str(&t.id).unwrap();
        let queued = NewJob::new("render_invoice", &json!({"n": 1})).tenant(tenant);
        let later = NewJob::new("stock_adjustment", &json!({"n": 2}))
            .tenant(tenant)
            .run_at(Utc::now() + TimeDelta::hours(1));
        let queued = app
            .queues
            .push(&invoices, vec![queued])
            .await
            .unwrap()
            .remove(0)
            .id;
        let later = app
            .queues
            .push(&stock, vec![later])
            .await
            .unwrap()
            .remove(0)
            .id;
        live.push((queued, later));
    }
    let live_of = |query: &'static str, key: String| {
        let app = &app;
        async move {
            let r = app.get(&format!("/v1/jobs{query}"), Some(&key)).await;
            assert_eq!(r.status(), 200);
            let body: Value = r.json().await.unwrap();
            let mut ids: Vec<String> = body["live"]["jobs"]
                .as_array()
                .unwrap_or_else(|| panic!("no live jobs in {body}"))
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    let mut mine_live = vec![live[0].0.clone(), live[0].1.clone()];
    mine_live.sort();
    assert_eq!(live_of("", a.key.clone()).await, mine_live);
    assert_eq!(
        live_of("?status=scheduled", a.key.clone()).await,
        [live[0].1.clone()]
    );
    assert_eq!(
        live_of("?kind=invoices", b.key.clone()).await,
        [live[1].0.clone()]
    );

    // Retrying: never another tenant's job (404 as if missing), not a succeeded one (409), its
    // own dead one (queued again).
    let retry = |key: &str, id: &str| {
        app.request(Method::POST, &format!("/v1/jobs/{id}/retry"), Some(key))
            .send()
    };
    assert_eq!(retry(&a.key, &dead[1]).await.unwrap().status(), 404);
    let succeeded = mine
        .iter()
        .find(|(_, s)| s == "succeeded")
        .unwrap()
        .0
        .clone();
    assert_eq!(retry(&a.key, &succeeded).await.unwrap().status(), 409);
    let r = retry(&a.key, &dead[0]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "queued");
    let b_job = app.queues.get(&dead[1]).await.unwrap().unwrap();
    assert_eq!(b_job.status, JobStatus::Dead, "B's job untouched");
    workers.stop().await;
}

#[tokio::test]
async fn counts_over_days_are_exact_add_up_by_hour_and_name_the_noisiest_tenants() {
    use backroom::history::stats;
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let other = app.create_tenant("other").await;
    let (acme_id, other_id) = (
        Uuid::parse_str(&acme.id).unwrap(),
        Uuid::parse_str(&other.id).unwrap(),
    );
    let at = Utc::now() - TimeDelta::minutes(5);
    // acme: three succeeded (waited 15 ms, ran 150 ms) and one dead; other: ten succeeded.
    let mut jobs = vec![];
    for n in 0..4 {
        let status = if n < 3 {
            JobStatus::Succeeded
        } else {
            JobStatus::Dead
        };
        let mut j = finished(&format!("stock_a{n}"), acme_id, status, json!({}), None, at);
        j.created_at = at - TimeDelta::milliseconds(165);
        j.started_at = Some(at - TimeDelta::milliseconds(150));
        jobs.push(j);
    }
    for n in 0..10 {
        jobs.push(finished(
            &format!("stock_o{n}"),
            other_id,
            JobStatus::Succeeded,
            json!({}),
            None,
            at,
        ));
    }
    let mut partitions = Partitions::default();
    assert_eq!(
        history::store(&app.db, &jobs, &mut partitions)
            .await
            .unwrap(),
        14
    );
    // The same batch stored again (a copier that died before dropping it) counts nothing.
    assert_eq!(
        history::store(&app.db, &jobs, &mut partitions)
            .await
            .unwrap(),
        0
    );

    let get = |path: String| {
        let pending = app.request(Method::GET, &path, Some(ADMIN_TOKEN)).send();
        async move { pending.await.unwrap() }
    };
    let day: Value = get("/admin/v1/stats?range=day&tenant=acme".into())
        .await
        .json()
        .await
        .unwrap();
    let series = &day["series"];
    let total = |name: &str| -> i64 {
        series[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .sum()
    };
    assert_eq!(series["at"].as_array().unwrap().len(), 24 * 60);
    assert_eq!(
        (total("succeeded"), total("dead"), total("failed")),
        (3, 1, 0)
    );
    let slot = series["succeeded"]
        .as_array()
        .unwrap()
        .iter()
        .position(|v| v.as_i64() == Some(3))
        .unwrap();
    let wait = series["wait_p50_ms"][slot].as_f64().unwrap();
    let run = series["run_p50_ms"][slot].as_f64().unwrap();
    assert!((10.0..=20.0).contains(&wait), "wait p50 {wait}");
    assert!((100.0..=200.0).contains(&run), "run p50 {run}");
    assert_eq!(
        day["noisiest"],
        json!([
            {"tenant": "other", "jobs": 10, "failures": 0},
            {"tenant": "acme", "jobs": 4, "failures": 1}
        ])
    );
    // The hour holds exactly the sum of its minutes.
    let month: Value = get("/admin/v1/stats?range=month".into())
        .await
        .json()
        .await
        .unwrap();
    let hours = month["series"]["succeeded"].as_array().unwrap();
    assert_eq!(hours.len(), 30 * 24);
    assert_eq!(hours.iter().map(|v| v.as_i64().unwrap()).sum::<i64>(), 13);

    let r = get("/admin/v1/stats?tenant=nobody".into()).await;
    assert_problem(r, 404, "an unknown tenant").await;
    let r = get("/admin/v1/stats?range=week&queue=nope".into()).await;
    let body = assert_problem(r, 422, "a bad range and queue").await;
    assert_eq!(problem_fields(&body), ["range", "queue"]);

    // Minutes are kept two days, hours as long as the history.
    let old = vec![finished(
        "stock_old",
        acme_id,
        JobStatus::Succeeded,
        json!({}),
        None,
        Utc::now() - TimeDelta::days(3),
    )];
    history::store(&app.db, &old, &mut partitions)
        .await
        .unwrap();
    stats::prune(&app.db, 30, Utc::now()).await.unwrap();
    let (minutes, hours): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE grain = 'minute' AND at < now() - interval '2 days'),
                count(*) FILTER (WHERE grain = 'hour' AND at < now() - interval '2 days')
         FROM job_stats",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        (minutes, hours),
        (0, 4),
        "its hour, in its queue and tenant and their totals"
    );

    // The dashboard draws them.
    let (cookie, _) = dashboard_session(&app, &[("token", ADMIN_TOKEN)]).await;
    let page = |path: &str| {
        let pending = app
            .client
            .get(format!("{}{path}", app.address))
            .header("cookie", &cookie)
            .send();
        async move { pending.await.unwrap().text().await.unwrap() }
    };
    let html = page("/admin/history?range=day").await;
    assert!(html.contains(r#"data-tenant="other""#), "{html}");
    let svg = page("/admin/charts/jobs.svg?metric=outcomes&range=day&tenant=acme").await;
    assert!(
        svg.starts_with("<svg") && svg.contains(r#"data-series="dead""#),
        "{svg}"
    );
    let svg = page("/admin/charts/jobs.svg?metric=wait&range=month").await;
    assert!(
        svg.contains(r#"data-series="p99""#) && svg.contains("<path"),
        "{svg}"
    );
}

/// A dashboard session's GET: the status and the body.
async fn signed_get(app: &TestApp, cookie: &str, path: &str) -> (u16, String) {
    let r = raw_client()
        .get(format!("{}{path}", app.address))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A dashboard session's JSON admin call (the CSRF token in its header).
async fn signed_call(app: &TestApp, session: &(String, String), method: Method, path: &str) -> u16 {
    raw_client()
        .request(method, format!("{}{path}", app.address))
        .header("cookie", &session.0)
        .header("x-csrf-token", &session.1)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_admin_limited_to_some_tenants_sees_nothing_of_the_others_anywhere() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let globex = app.create_tenant("globex").await;
    let (acme_id, globex_id) = (
        Uuid::parse_str(&acme.id).unwrap(),
        Uuid::parse_str(&globex.id).unwrap(),
    );
    let now = Utc::now();
    let order = json!({"order_number": "ORD-2026-000777"});
    let jobs = [
        finished(
            "invoices_acme",
            acme_id,
            JobStatus::Dead,
            order.clone(),
            Some("relay timed out"),
            now,
        ),
        finished(
            "invoices_globex",
            globex_id,
            JobStatus::Dead,
            order.clone(),
            Some("relay timed out"),
            now,
        ),
        finished(
            "stock_globex",
            globex_id,
            JobStatus::Succeeded,
            json!({"sku": "G-1"}),
            None,
            now,
        ),
    ];
    history::store(&app.db, &jobs, &mut Partitions::default())
        .await
        .unwrap();
    let acme_job = app.cancelled_job(acme_id).await;
    let globex_job = app.cancelled_job(globex_id).await;
    // A live (queued) invoice job of each tenant with the same order number.
    let invoices = QueueName::parse("invoices").unwrap();
    let mut live_ids = vec![];
    for tenant in [acme_id, globex_id] {
        let job = NewJob::new("render_invoice", &order).tenant(tenant);
        live_ids.push(
            app.queues
                .push(&invoices, vec![job])
                .await
                .unwrap()
                .remove(0)
                .id,
        );
    }
    // Audit rows about each tenant.
    for slug in ["acme", "globex"] {
        let r = app
            .send_json(
                Method::PATCH,
                &format!("/admin/v1/tenants/{slug}"),
                Some(ADMIN_TOKEN),
                &json!({"name": format!("{slug} renamed")}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }

    // A limit names existing tenants, and never an owner's.
    for (body, why) in [
        (
            json!({"email": "o@example.com", "role": "owner", "tenants": ["acme"]}),
            "owner",
        ),
        (
            json!({"email": "u@example.com", "role": "viewer", "tenants": ["acme", "nope"]}),
            "nope",
        ),
        (
            json!({"email": "e@example.com", "role": "viewer", "tenants": []}),
            "at least one",
        ),
        (
            json!({"email": "l@example.com", "role": "viewer", "tenants": ["x".repeat(100_000)]}),
            "not a tenant slug",
        ),
        (
            json!({"email": "m@example.com", "role": "viewer",
                   "tenants": (0..101).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "at most 100",
        ),
        (
            json!({"email": "n@example.com", "role": "viewer",
                   "tenants": (0..40).map(|i| format!("ghost-{i}")).collect::<Vec<_>>()}),
            "ghost-0, ghost-1, ghost-2, ghost-3, ghost-4 and 35 more",
        ),
    ] {
        let r = app
            .post_json("/admin/v1/users", Some(ADMIN_TOKEN), &body)
            .await;
        let problem = assert_problem(r, 422, why).await;
        assert_eq!(problem_fields(&problem), ["tenants"]);
    }
    let r = app
        .post_json(
            "/admin/v1/users",
            Some(ADMIN_TOKEN),
            &json!({"email": "sam@example.com", "role": "operator", "tenants": ["acme"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["user"]["tenants"], json!(["acme"]));
    let password = created["password"].as_str().unwrap().to_string();
    let sam = dashboard_session(
        &app,
        &[("email", "sam@example.com"), ("password", &password)],
    )
    .await;
    let get = |path: String| {
        let cookie = sam.0.clone();
        let app = &app;
        async move { signed_get(app, &cookie, &path).await }
    };
    let json_of = |body: &str| -> Value { serde_json::from_str(body).unwrap() };
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Search, JSON and page: the same order number and error text exist at both tenants.
    let (status, body) =
        get("/admin/v1/jobs/search?q=args.order_number:ORD-2026-000777".into()).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&json_of(&body)), ["invoices_acme"]);
    let live: Vec<String> = json_of(&body)["live"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(live, [live_ids[0].clone()], "the live side is limited too");
    let (_, body) = get("/admin/v1/jobs/search?q=tenant:globex".into()).await;
    assert!(
        ids(&json_of(&body)).is_empty(),
        "a term cannot widen the limit"
    );
    let (status, page) = get("/admin/search?q=relay".into()).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("invoices_acme") && !page.contains("invoices_globex"),
        "{page}"
    );
    let (_, page) = get("/admin/search?q=args.order_number:ORD-2026-000777".into()).await;
    assert!(
        page.contains(&live_ids[0]) && !page.contains(&live_ids[1]),
        "{page}"
    );

    // Tenant lists and pages, JSON and dashboard.
    let (_, body) = get("/admin/v1/tenants".into()).await;
    let slugs: Vec<String> = json_of(&body)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(slugs, ["acme"]);
    assert_eq!(get("/admin/v1/tenants/acme/queues".into()).await.0, 200);
    assert_eq!(get("/admin/v1/tenants/globex/queues".into()).await.0, 404);
    let (status, page) = get("/admin/tenants".into()).await;
    assert_eq!(status, 200);
    assert!(page.contains("acme") && !page.contains("globex"));
    assert_eq!(get("/admin/tenants/globex".into()).await.0, 404);
    assert!(
        !page.contains("href=\"/admin/emails\"") && page.contains("href=\"/admin/search\""),
        "the menu offers only the pages that narrow to their tenants"
    );

    // Counts and charts: only acme's dead job; globex is not even a filter.
    let (_, body) = get("/admin/v1/stats".into()).await;
    let stats = json_of(&body);
    let dead: i64 = stats["series"]["dead"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert_eq!(dead, 1);
    assert_eq!(
        stats["noisiest"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tenant"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["acme"]
    );
    let all: Value = app
        .get("/admin/v1/stats", Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let all_dead: i64 = all["series"]["dead"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert_eq!(all_dead, 2, "the unlimited token sees both");
    assert_eq!(get("/admin/v1/stats?tenant=globex".into()).await.0, 404);
    assert_eq!(
        get("/admin/charts/jobs.svg?tenant=globex".into()).await.0,
        404
    );
    let (status, page) = get("/admin/history".into()).await;
    assert_eq!(status, 200);
    assert!(!page.contains("globex"));

    // The audit log: only rows about acme.
    let (_, body) = get("/admin/v1/audit".into()).await;
    let tenants: Vec<Value> = json_of(&body)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["tenant"].clone())
        .collect();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| t == "acme"),
        "{tenants:?}"
    );
    let (_, page) = get("/admin/audit".into()).await;
    assert!(!page.contains("globex"));

    // Live jobs: acme's opens and retries; globex's does not exist for this user.
    let globex_before = app.queues.get(&globex_job).await.unwrap().unwrap();
    assert_eq!(get(format!("/admin/jobs/{acme_job}")).await.0, 200);
    assert_eq!(get(format!("/admin/jobs/{globex_job}")).await.0, 404);
    assert_eq!(
        signed_call(
            &app,
            &sam,
            Method::POST,
            &format!("/admin/v1/jobs/{globex_job}/retry")
        )
        .await,
        404
    );
    assert_eq!(
        signed_call(
            &app,
            &sam,
            Method::DELETE,
            &format!("/admin/v1/jobs/{globex_job}")
        )
        .await,
        404
    );
    assert_eq!(
        signed_call(
            &app,
            &sam,
            Method::POST,
            &format!("/admin/v1/jobs/{acme_job}/retry")
        )
        .await,
        200
    );
    let globex_after = app.queues.get(&globex_job).await.unwrap().unwrap();
    assert_eq!(
        (globex_after.status, globex_after.attempts),
        (globex_before.status, globex_before.attempts),
        "untouched"
    );
    // Deleting acme's job from its dashboard page leads back to a page this user may open.
    let r = raw_client()
        .post(format!("{}/admin/jobs/{acme_job}/discard", app.address))
        .header("cookie", &sam.0)
        .form(&[("csrf", sam.1.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to.starts_with("/admin/search"), "sent to {to}");
    assert_eq!(signed_get(&app, &sam.0, &to).await.0, 200);
    assert!(
        app.queues.get(&acme_job).await.unwrap().is_none(),
        "deleted"
    );

    // What covers every tenant is closed: the overview sends them to their tenants.
    let r = raw_client()
        .get(format!("{}/admin", app.address))
        .header("cookie", &sam.0)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/tenants");
    for path in [
        "/admin/queues/emails",
        "/admin/emails",
        "/admin/webhooks",
        "/admin/forecasts",
        "/admin/charts/throughput.svg",
        "/admin/v1/queues",
        "/admin/v1/queues/emails/jobs",
        "/admin/v1/tenants/acme/api-keys",
        "/admin/v1/users",
    ] {
        assert_eq!(get(path.to_string()).await.0, 403, "{path}");
    }
    assert_eq!(
        signed_call(&app, &sam, Method::POST, "/admin/v1/queues/emails/pause").await,
        403
    );
}

#[tokio::test]
async fn a_search_finds_live_jobs_first_by_the_same_terms_then_the_history() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let other = app.create_tenant("other").await;
    let (acme_id, other_id) = (
        Uuid::parse_str(&acme.id).unwrap(),
        Uuid::parse_str(&other.id).unwrap(),
    );
    let now = Utc::now();
    let order = |n: &str| json!({"tenant_id": acme_id, "order_number": n});
    history::store(
        &app.db,
        &[
            finished(
                "invoices_done",
                acme_id,
                JobStatus::Succeeded,
                order("ORD-9"),
                None,
                now,
            ),
            finished(
                "invoices_old",
                acme_id,
                JobStatus::Succeeded,
                order("ORD-9"),
                None,
                now - TimeDelta::days(1),
            ),
        ],
        &mut Partitions::default(),
    )
    .await
    .unwrap();
    let invoices = QueueName::parse("invoices").unwrap();
    let push = |job: NewJob| {
        let app = &app;
        let invoices = invoices.clone();
        async move {
            app.queues
                .push(&invoices, vec![job])
                .await
                .unwrap()
                .remove(0)
                .id
        }
    };
    let queued = push(NewJob::new("render_invoice", &order("ORD-9")).tenant(acme_id)).await;
    let later = push(
        NewJob::new("render_invoice", &order("ORD-9"))
            .tenant(acme_id)
            .run_at(now + TimeDelta::hours(1)),
    )
    .await;
    let elsewhere = push(NewJob::new("render_invoice", &order("ORD-10")).tenant(other_id)).await;

    let search = |q: &str| {
        let url = format!(
            "/admin/v1/jobs/search?limit=1&q={}",
            url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        );
        let app = &app;
        async move {
            let r = app.get(&url, Some(ADMIN_TOKEN)).await;
            assert_eq!(r.status(), 200, "{url}");
            r.json::<Value>().await.unwrap()
        }
    };
    let live_of = |v: &Value| -> Vec<(String, String)> {
        v["live"]["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["id"].as_str().unwrap().to_string(),
                    j["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let found = search("args.order_number:ORD-9").await;
    assert_eq!(
        live_of(&found),
        [
            (later.clone(), "scheduled".to_string()),
            (queued.clone(), "queued".to_string())
        ],
        "newest first, each with its state"
    );
    assert_eq!(found["live"]["complete"], true);
    assert_eq!(found["items"][0]["id"], "invoices_done", "then the history");
    assert_eq!(found["live"]["jobs"][0]["tenant"], "acme");
    // Every term applies to the live side as to the history.
    assert_eq!(
        live_of(&search("args.order_number:ORD-9 status:queued").await),
        [(queued.clone(), "queued".to_string())]
    );
    assert_eq!(
        live_of(&search("tenant:other kind:invoice").await),
        [(elsewhere.clone(), "queued".to_string())]
    );
    assert!(live_of(&search("kind:stock args.order_number:ORD-9").await).is_empty());
    assert!(live_of(&search(&format!("id:{queued} tenant:other")).await).is_empty());
    assert_eq!(live_of(&search(&format!("id:{queued}")).await).len(), 1);
    // A status of the live side finds nothing finished, and later pages are the history's only.
    assert!(
        search("status:queued").await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let cursor = found["next_cursor"]
        .as_str()
        .expect("a second page of the history");
    let r = app
        .get(
            &format!("/admin/v1/jobs/search?limit=1&q=args.order_number:ORD-9&cursor={cursor}"),
            Some(ADMIN_TOKEN),
        )
        .await;
    let second: Value = r.json().await.unwrap();
    assert_eq!(second["items"][0]["id"], "invoices_old");
    assert!(
        second["live"].is_null(),
        "the live jobs lead the first page only"
    );
    // The dashboard's search page shows both.
    let (cookie, _) = dashboard_session(&app, &[("token", ADMIN_TOKEN)]).await;
    let (status, page) = signed_get(&app, &cookie, "/admin/search?q=args.order_number:ORD-9").await;
    assert_eq!(status, 200);
    assert!(page.contains(&queued) && page.contains(&later) && page.contains("invoices_done"));
    assert!(!page.contains(&elsewhere));
}
