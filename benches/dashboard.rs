//! Dashboard overview speed with a million jobs in the queues.
//!
//! Pushes 1,000,000 jobs (spread over the five queues, a tenth of them scheduled for later),
//! signs in, then requests `GET /admin` 50 times and prints the response time percentiles
//! (measured on loopback, so they include the server's whole handling of the page). Target:
//! ≤ 100 ms. A second set of requests runs while 2 workers drain the stock queue, to show the
//! page under write load.
//!
//! `cargo bench --bench dashboard` (about a minute), or `-- --smoke` (`BENCH_SMOKE=1`): 50,000
//! jobs. Needs Postgres (`DATABASE_URL`'s server; a database `backroom_bench_<uuid>` is created
//! and dropped) and Redis (`REDIS_URL`; every key is under `bench-<uuid>` and is deleted at the
//! end).

use backroom::config::Settings;
use backroom::jobs::Queue;
use backroom::process::serve::Application;
use backroom::queue::{NewJob, QueueName};
use sqlx::Connection as _;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const TARGET_MS: f64 = 100.0;
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789-abcdefghij";
const REQUESTS: usize = 50;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn time_overview(
    client: &reqwest::Client,
    base: &str,
    cookie: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut ms = vec![];
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let r = client
            .get(format!("{base}/admin"))
            .header("cookie", cookie)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "overview answered {}", r.status());
        r.bytes().await?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

async fn run(jobs: usize) -> anyhow::Result<()> {
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut url = url::Url::parse(&server)?;
    let name = format!("backroom_bench_{}", Uuid::new_v4().simple());
    url.set_path("/postgres");
    let mut admin = sqlx::PgConnection::connect(url.as_str()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    url.set_path(&format!("/{name}"));
    let namespace = format!("bench-{}", Uuid::new_v4().simple());
    let env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", url.to_string()),
        (
            "REDIS_URL",
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ),
        ("BACKROOM_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("BACKROOM_BIND", "127.0.0.1:0".to_string()),
        ("BACKROOM_REDIS_NAMESPACE", namespace.clone()),
        ("BACKROOM_LOG", "warn".to_string()),
    ]);
    let settings = Settings::from_lookup(|k| env.get(k).cloned())?;
    let result = measure(settings.clone(), jobs).await;
    // Clean up: the namespace's keys and the database.
    if let Ok(client) = redis::Client::open(settings.redis_url.as_str())
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{{{namespace}:*"))
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let _: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    result
}

async fn measure(settings: Settings, jobs: usize) -> anyhow::Result<()> {
    let app = Application::build(settings.clone()).await?;
    backroom::db::migrate(&app.state().db).await?;
    let queues = app.state().queues.clone();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    let started = Instant::now();
    let tenant = Uuid::now_v7();
    let later = chrono::Utc::now() + chrono::Duration::hours(6);
    let per_queue = jobs / Queue::ALL.len();
    for name in Queue::ALL.map(Queue::name) {
        let queue = QueueName::parse(name).expect("known queue");
        let mut pushed = 0;
        while pushed < per_queue {
            let batch: Vec<NewJob> = (pushed..(pushed + 5_000).min(per_queue))
                .map(|i| {
                    let job = NewJob::new("bench", &serde_json::json!({"i": i})).tenant(tenant);
                    if i % 10 == 0 { job.run_at(later) } else { job }
                })
                .collect();
            pushed += batch.len();
            queues.push(&queue, batch).await?;
        }
        eprintln!(
            "  {name}: {per_queue} jobs pushed ({:.1} s so far)",
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "  {jobs} jobs in the queues ({:.0} jobs/s pushed)",
        jobs as f64 / started.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = client
        .post(format!("{base}/admin/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_string();
    let idle = time_overview(&client, &base, &cookie).await?;
    println!(
        "  GET /admin, idle queues: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target ≤ {TARGET_MS} ms) {}",
        percentile(&idle, 0.5),
        percentile(&idle, 0.99),
        idle[idle.len() - 1],
        if percentile(&idle, 0.99) <= TARGET_MS {
            "PASS"
        } else {
            "MISS"
        }
    );

    // The same while a worker process drains the stock queue (the jobs fail fast: "bench" is
    // not a stock adjustment, so they go to the dead set with their error).
    let mut work_settings = settings.clone();
    work_settings.database_max_connections = 4;
    let plan = backroom::process::work::WorkPlan::parse(Some("stock"), None)?;
    let (stop_work, work_stopped) = tokio::sync::oneshot::channel::<()>();
    let work = tokio::spawn(async move {
        backroom::process::work::run(&work_settings, plan, async move {
            let _ = work_stopped.await;
        })
        .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = time_overview(&client, &base, &cookie).await?;
    println!(
        "  GET /admin, while a worker drains the stock queue: p50 {:.1} ms, p99 {:.1} ms {}",
        percentile(&busy, 0.5),
        percentile(&busy, 0.99),
        if percentile(&busy, 0.99) <= TARGET_MS {
            "PASS"
        } else {
            "MISS"
        }
    );
    let _ = stop_work.send(());
    let _ = work.await;
    let _ = stop.send(());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke") || std::env::var("BENCH_SMOKE").is_ok();
    let jobs = if smoke { 50_000 } else { 1_000_000 };
    println!(
        "dashboard bench ({}): overview with {jobs} jobs queued",
        if smoke { "smoke" } else { "full" }
    );
    tokio::runtime::Runtime::new()?.block_on(run(jobs))
}
