//! Sales imports and forecast runs end to end: the imports and forecasts workers on real Redis
//! and Postgres, the API that starts and reports runs, the nightly start from several
//! schedulers at once, and the analysts' `backroom forecast backtest` command.

use crate::helpers::*;
use backroom::forecast::demo;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

async fn product(app: &TestApp, key: &str, sku: &str) {
    let r = app
        .send_json(
            Method::PUT,
            &format!("/v1/products/{sku}"),
            Some(key),
            &json!({"name": format!("Product {sku}"), "unit_price": "5.00", "currency": "EUR",
                    "reorder_point": 5, "reorder_quantity": 10, "lead_time_days": 4}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn upload(app: &TestApp, key: &str, csv: &str) -> Value {
    let r = app.upload_sales(key, csv.to_string()).await;
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

/// `GET /v1/sales/imports/{id}` of an accepted upload.
async fn import_view(app: &TestApp, key: &str, accepted: &Value) -> Value {
    let id = accepted["import_id"].as_str().unwrap();
    app.get(&format!("/v1/sales/imports/{id}"), Some(key))
        .await
        .json()
        .await
        .unwrap()
}

/// Waits until the import job of an accepted upload has `status`; returns the job.
async fn wait_import(app: &TestApp, key: &str, accepted: &Value, status: &str) -> Value {
    wait_job(app, key, accepted["job_id"].as_str().unwrap(), status).await
}

async fn wait_job(app: &TestApp, key: &str, job_id: &str, status: &str) -> Value {
    wait_for(&format!("job {job_id} to be {status}"), LIMIT, || async {
        let j: Value = app
            .get(&format!("/v1/jobs/{job_id}"), Some(key))
            .await
            .json()
            .await
            .ok()?;
        (j["status"] == status).then_some(j)
    })
    .await
}

async fn imported_total(app: &TestApp, tenant: &str) -> (i64, i64) {
    let tenant: uuid::Uuid = tenant.parse().unwrap();
    sqlx::query_as::<_, (i64, i64)>(
        "SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM daily_sales WHERE tenant_id = $1 AND source = 'import'",
    )
    .bind(tenant)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_import_loads_good_rows_reports_bad_ones_and_is_idempotent() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("importer").await;
    product(&app, &tenant.key, "MUG-1").await;
    product(&app, &tenant.key, "TEE-2").await;
    let _workers = app.start_workers("imports");
    let csv = "date,sku,quantity,store\n\
               2026-10-01,MUG-1,3,north\n\
               2026-10-01,MUG-1,2,south\n\
               2026-10-02,TEE-2,7,north\n\
               2026-02-30,MUG-1,1,north\n\
               2026-10-03,GHOST,1,north\n\
               2026-10-03,TEE-2,-2,north\n\
               2026-10-04,TEE-2,many,north\n";
    let accepted = upload(&app, &tenant.key, csv).await;
    let job = wait_import(&app, &tenant.key, &accepted, "succeeded").await;
    let report = &job["result"];
    assert_eq!(report["rows"], 7);
    assert_eq!(report["rows_loaded"], 3);
    assert_eq!(report["rows_rejected"], 4);
    assert_eq!(report["days_written"], 2);
    let errors: Vec<(u64, String)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (5, "date".to_string()),
            (6, "sku".to_string()),
            (7, "quantity".to_string()),
            (8, "quantity".to_string())
        ]
    );
    // The import's own record carries the same report.
    let view = import_view(&app, &tenant.key, &accepted).await;
    assert_eq!(view["status"], "loaded");
    assert_eq!(view["report"]["rows_rejected"], 4);
    assert_eq!(imported_total(&app, &tenant.id).await, (2, 12));

    // The same file again: the history does not double.
    let again = upload(&app, &tenant.key, csv).await;
    wait_job(
        &app,
        &tenant.key,
        again["job_id"].as_str().unwrap(),
        "succeeded",
    )
    .await;
    assert_eq!(imported_total(&app, &tenant.id).await, (2, 12));
}

#[tokio::test]
async fn an_unreadable_import_fails_with_the_reason_and_bad_requests_are_refused() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("badimports").await;
    let _workers = app.start_workers("imports");
    let accepted = upload(&app, &tenant.key, "day,item,qty\n2026-10-01,A,1\n").await;
    let job = wait_import(&app, &tenant.key, &accepted, "failed").await;
    assert!(
        job["last_error"]
            .as_str()
            .unwrap()
            .contains("missing column `date`"),
        "{job}"
    );
    let r = app
        .request(Method::POST, "/v1/sales/import", Some(&tenant.key))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(r, 415, "CSV only").await;
    let r = app
        .post_json(
            "/v1/forecasts/runs",
            Some(&tenant.key),
            &json!({"horizon_days": 0, "skus": ["NOPE"]}),
        )
        .await;
    let body = assert_problem(r, 422, "bad horizon and unknown SKU").await;
    assert_eq!(problem_fields(&body), ["horizon_days", "skus[0]"]);
}

/// A tenant with generated history for `n` SKUs.
async fn tenant_with_history(app: &TestApp, slug: &str, n: usize, days: usize) -> TestTenant {
    let tenant = app.create_tenant(slug).await;
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let skus = demo::generate(n, days, yesterday, 11);
    demo::load(&app.db, tenant.id.parse().unwrap(), &skus)
        .await
        .unwrap();
    tenant
}

#[tokio::test]
async fn a_forecast_run_fans_out_and_serves_forecasts_with_reorder_advice() {
    let app = spawn_app().await;
    let tenant = tenant_with_history(&app, "forecaster", 40, 240).await;
    // A product sold for 24 days: two weekly seasons, which its backtests (each cutting 14 days
    // off) cannot hold, so it gets the run's seasonal choice for the longer products.
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let mut young = demo::generate(1, 24, yesterday, 5);
    young[0].sku = "SKU-YOUNG".into();
    demo::load(&app.db, tenant.id.parse().unwrap(), &young)
        .await
        .unwrap();
    let _workers = app.start_workers("forecasts");
    let r = app
        .post_json(
            "/v1/forecasts/runs",
            Some(&tenant.key),
            &json!({"horizon_days": 14}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    let run = wait_for("the run to succeed", LIMIT, || async {
        let run: Value = app
            .get(&format!("/v1/forecasts/runs/{run_id}"), Some(&tenant.key))
            .await
            .json()
            .await
            .ok()?;
        assert_ne!(run["status"], "failed", "{run}");
        (run["status"] == "succeeded").then_some(run)
    })
    .await;
    assert_eq!(run["skus_total"], 41);
    assert_eq!(run["skus_done"], 41);
    let counted: i64 = run["models"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(counted, 41, "{run}");
    assert!(run["backtest"]["mase"].as_f64().unwrap() > 0.0);
    let f: Value = app
        .get("/v1/products/SKU-YOUNG/forecast", Some(&tenant.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(f["chosen_by"], "pooled", "{f}");
    assert!(
        f["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("hold two seasons"),
        "{f}"
    );

    let f: Value = app
        .get("/v1/products/SKU-00002/forecast", Some(&tenant.key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(f["run_id"], run_id.as_str());
    let points = f["points"].as_array().unwrap();
    assert_eq!(points.len(), 14);
    let tomorrow = chrono::Utc::now().date_naive();
    assert_eq!(points[0]["date"], tomorrow.to_string());
    for p in points {
        let (lo, y, hi) = (
            p["lower"].as_f64().unwrap(),
            p["yhat"].as_f64().unwrap(),
            p["upper"].as_f64().unwrap(),
        );
        assert!(lo <= y && y <= hi && lo >= 0.0, "{p}");
    }
    assert!(f["scores"].as_object().unwrap().len() >= 5, "{f}");
    assert!(f["reorder"]["reorder_point"].as_i64().unwrap() >= 0);
    assert!(f["reorder"].get("stockout_date").is_some());
    // Another tenant sees none of it.
    let other = app.create_tenant("nosy").await;
    let r = app
        .get(&format!("/v1/forecasts/runs/{run_id}"), Some(&other.key))
        .await;
    assert_eq!(r.status(), 404);
    let r = app
        .get("/v1/products/SKU-00002/forecast", Some(&other.key))
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn several_schedulers_start_one_nightly_run_per_tenant_and_it_emails_a_digest() {
    let app = spawn_app().await;
    let a = tenant_with_history(&app, "night-a", 12, 120).await;
    let _b = tenant_with_history(&app, "night-b", 12, 120).await;
    let _quiet = app.create_tenant("night-quiet").await;
    sqlx::query("UPDATE tenants SET alert_email = 'buyer@night-a.example' WHERE slug = 'night-a'")
        .execute(&app.db)
        .await
        .unwrap();
    let night = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let starts = (0..4).map(|_| {
        let (db, queues) = (app.db.clone(), app.queues.clone());
        tokio::spawn(async move {
            backroom::jobs::forecasts::start_nightly(&db, &queues, night, 7)
                .await
                .unwrap()
        })
    });
    let mut started = 0;
    for s in starts {
        started += s.await.unwrap();
    }
    assert_eq!(started, 2, "one run for each tenant with history");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM forecast_runs WHERE night = $1")
        .bind(night)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(runs, 2);

    let _workers = app.start_workers("forecasts");
    let tenant_a: uuid::Uuid = a.id.parse().unwrap();
    wait_for("night-a's run to finish", LIMIT, || async {
        let status: String = sqlx::query_scalar(
            "SELECT status FROM forecast_runs WHERE tenant_id = $1 AND night = $2",
        )
        .bind(tenant_a)
        .bind(night)
        .fetch_one(&app.db)
        .await
        .ok()?;
        (status == "succeeded").then_some(())
    })
    .await;
    // The finished nightly run queued the tenant's reorder digest through the outbox.
    let digests: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE tenant_id = $1 AND kind = 'reorder_digest'",
    )
    .bind(tenant_a)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(digests, 1);
}

#[tokio::test]
async fn the_backtest_command_scores_models_and_the_chosen_mix() {
    let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let skus = demo::generate(30, 300, yesterday, 5);
    let mut csv = String::from("series_id,period,value\n");
    // Rows in reverse order: the command sorts them.
    for s in skus.iter().rev() {
        for (t, q) in s.daily.iter().enumerate().rev() {
            let day = s.first_day + chrono::Duration::days(t as i64);
            csv.push_str(&format!("{},{day},{q}\n", s.sku));
        }
    }
    let path = std::env::temp_dir().join(format!("backtest-{}.csv", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, csv).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_backroom"))
        .args(["forecast", "backtest", "--csv"])
        .arg(&path)
        .args(["--season", "7", "--horizon", "28", "--json"])
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["series"], 30);
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    for model in [
        "seasonal_naive",
        "theta",
        "mstl_ets",
        "croston_sba",
        "tsb",
        "global_tweedie",
        "theta_ets_mean",
        "ets",
        "ets_mstl_mean",
    ] {
        assert!(
            report["models"][model]["mase"].as_f64().is_some(),
            "{model}: {report}"
        );
        assert!(
            report["models"][model]["smape"].as_f64().is_some(),
            "{model}: {report}"
        );
    }
    let chosen = report["chosen"]["mase"].as_f64().unwrap();
    let naive = report["models"]["seasonal_naive"]["mase"].as_f64().unwrap();
    assert!(
        chosen < naive,
        "chosen mix {chosen} vs seasonal naive {naive}"
    );
    let counted: u64 = report["chosen"]["models"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, 30);
    // Interval coverage and the demand classes are reported too.
    let coverage = report["chosen"]["coverage"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&coverage), "{coverage}");
    let by_class: u64 = report["chosen"]["classes"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|models| models.as_object().unwrap().values())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_class, 30);
}

#[tokio::test]
async fn two_scheduler_processes_start_one_run_per_tenant_and_night() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncBufReadExt;
    let app = spawn_app().await;
    tenant_with_history(&app, "twice", 5, 60).await;
    // Both schedulers tick every second; each tick tries to start the night's runs.
    let spawn = |ticks: Arc<AtomicUsize>| {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_backroom"))
            .arg("schedule")
            .envs(app.child_env())
            .env("BACKROOM_LOG", "info")
            .env("BACKROOM_FORECAST_CRON", "* * * * * *")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("backroom schedule starts");
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("nightly forecast runs started") {
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        child
    };
    let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let _first = spawn(a.clone());
    let _second = spawn(b.clone());
    wait_for("both schedulers to tick three times", LIMIT, || async {
        (a.load(Ordering::SeqCst) >= 3 && b.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    let per_night: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM forecast_runs WHERE trigger = 'schedule' GROUP BY tenant_id, night",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(!per_night.is_empty(), "the schedulers started a run");
    assert!(per_night.iter().all(|n| *n == 1), "{per_night:?}");
}

#[tokio::test]
async fn old_runs_are_pruned_beyond_the_retention() {
    let app = spawn_app().await;
    let t = tenant_with_history(&app, "keeper", 3, 60).await;
    let tenant: uuid::Uuid = t.id.parse().unwrap();
    let mut runs = vec![];
    for _ in 0..3 {
        let run = backroom::jobs::forecasts::create_run(
            &app.db,
            tenant,
            backroom::jobs::forecasts::Trigger::Cli,
            7,
            None,
            app.settings.queue.clock.today(),
        )
        .await
        .unwrap();
        backroom::jobs::forecasts::run_in_process(
            &app.db,
            &Default::default(),
            tenant,
            run,
            |_, _| {},
        )
        .await
        .unwrap();
        runs.push(run);
    }
    let pruned = backroom::jobs::forecasts::prune_runs(&app.db, 2)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM forecast_runs ORDER BY created_at")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(left, runs[1..], "the oldest run went, with its results");
    let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM forecast_points WHERE run_id = $1")
        .bind(runs[0])
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orphans, 0);
}

#[tokio::test]
async fn a_nightly_run_emails_the_tenant_its_reorder_digest() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let app = spawn_app_with(move |s| s.smtp_url = Some(url)).await;
    let t = tenant_with_history(&app, "digest", 20, 120).await;
    sqlx::query("UPDATE tenants SET alert_email = 'buyer@digest.example' WHERE slug = 'digest'")
        .execute(&app.db)
        .await
        .unwrap();
    let _workers = app.start_workers("forecasts,emails");
    let night = chrono::Utc::now().date_naive();
    let started = backroom::jobs::forecasts::start_nightly(&app.db, &app.queues, night, 14)
        .await
        .unwrap();
    assert_eq!(started, 1);
    let message = wait_for("the reorder digest to arrive", LIMIT, || async {
        smtp.messages().into_iter().next()
    })
    .await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&message)
        .unwrap();
    let to = parsed
        .to()
        .unwrap()
        .first()
        .unwrap()
        .address()
        .unwrap()
        .to_string();
    assert_eq!(to, "buyer@digest.example");
    let subject = parsed.subject().unwrap().to_string();
    let text = parsed.body_text(0).unwrap().to_string();
    let html = parsed.body_html(0).unwrap().to_string();
    // Every SKU due to reorder in the run is listed, with its order quantity.
    let tenant: uuid::Uuid = t.id.parse().unwrap();
    let due: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, order_quantity FROM forecast_results WHERE tenant_id = $1 AND on_hand <= reorder_point",
    )
    .bind(tenant)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(!due.is_empty(), "the generated stock leaves some SKUs due");
    assert!(
        subject.starts_with(&format!("{} SKUs due to reorder", due.len())),
        "{subject}"
    );
    for (sku, quantity) in &due {
        assert!(text.contains(&format!("{sku} (")), "{sku} in the text body");
        assert!(
            text.contains(&format!("order {quantity},")),
            "{sku}'s order in the text body"
        );
        assert!(html.contains(sku.as_str()), "{sku} in the HTML body");
    }
}

/// Postgres `jsonb` cannot store U+0000; a NUL byte in an upload used to make the import job
/// retry until it died (found by scripts/fuzz-api). Now the bad cell is reported like any other.
#[tokio::test]
async fn an_upload_with_nul_bytes_is_reported_not_retried() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("nul").await;
    product(&app, &tenant.key, "MUG-1").await;
    let _workers = app.start_workers("imports");
    let csv = "date,sku,quantity\n2026-10-01,MUG-1,3\n2026-10-01,A\0B,3\n";
    let accepted = upload(&app, &tenant.key, csv).await;
    let job = wait_import(&app, &tenant.key, &accepted, "succeeded").await;
    assert_eq!(job["attempts"], 1, "no retry: {job}");
    let view = import_view(&app, &tenant.key, &accepted).await;
    assert_eq!(view["status"], "loaded", "{view}");
    assert_eq!(view["report"]["rows_loaded"], 1);
    let error = &view["report"]["errors"][0];
    assert_eq!(
        (error["line"].as_u64(), error["field"].as_str()),
        (Some(3), Some("sku"))
    );
    assert_eq!(error["value"], "A\u{FFFD}B");
}

#[tokio::test]
async fn imports_and_batches_over_their_limits_are_refused_at_the_door() {
    let app = spawn_app_with(|s| {
        s.max_import_rows = 3;
        s.max_import_bytes = 200;
    })
    .await;
    let tenant = app.create_tenant("limits").await;
    product(&app, &tenant.key, "MUG-1").await;
    let send = |csv: String| app.upload_sales(&tenant.key, csv);
    // Three rows (the last without a newline) pass; four are one too many.
    let three = "date,sku,quantity\n2026-10-01,MUG-1,1\n2026-10-02,MUG-1,1\n2026-10-03,MUG-1,1";
    assert_eq!(send(three.to_string()).await.status(), 202);
    let four = format!("{three}\n2026-10-04,MUG-1,1\n");
    let refused = assert_problem(send(four).await, 422, "too many rows").await;
    assert_eq!(refused["errors"][0]["field"], "body", "{refused}");
    let big = format!("date,sku,quantity\n{}", "x".repeat(300));
    assert_problem(send(big).await, 413, "too many bytes").await;
    // An upload that declares more than the limit is answered before its body is sent.
    let mut raw = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/sales/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: text/csv\r\nContent-Length: 1000000000\r\n\r\n",
        tenant.key
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("BACKROOM_MAX_IMPORT_BYTES") {
            match tokio::io::AsyncReadExt::read(&mut raw, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("answered without the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("BACKROOM_MAX_IMPORT_BYTES"), "{answer}");
    // A stock batch holds at most 1,000 adjustments.
    let batch: Vec<Value> = (0..1001)
        .map(|i| json!({"sku": "MUG-1", "delta": 1, "reason": "receipt", "idempotency_key": format!("k{i}")}))
        .collect();
    let r = app
        .post_json(
            "/v1/stock-adjustments/batch",
            Some(&tenant.key),
            &json!({ "adjustments": batch }),
        )
        .await;
    let problem = assert_problem(r, 422, "a batch of 1,001").await;
    assert_eq!(problem["errors"][0]["field"], "adjustments");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM sales_imports")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(queued, 1, "only the import within the limits was stored");

    // One tenant's oversized declarations hold nothing: with three of them still connected
    // (more than its UPLOADS_PER_TENANT reading slots), another tenant's upload and its own
    // next one are both accepted.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut raw = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
        )
        .await
        .expect("answered without the body")
        .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 413"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(raw);
    }
    let other = app.create_tenant("limits-neighbour").await;
    product(&app, &other.key, "MUG-1").await;
    let r = app.upload_sales(&other.key, three.to_string()).await;
    assert_eq!(r.status(), 202, "the neighbour's upload");
    assert_eq!(
        send(three.to_string()).await.status(),
        202,
        "its own next upload"
    );
    drop(held);
}
