//! Dashboard pages of forecast runs: the runs, one run, one SKU's forecast chart.

use crate::api::AppState;
use crate::api::charts;
use crate::api::error::{Error, Result};
use axum::extract::{Path, State};
use axum::response::Response;
use uuid::Uuid;

use super::{Signed, page, time};

/// Days of sales history drawn before a forecast.
const CHART_HISTORY_DAYS: i64 = 90;

fn score(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "—".into())
}

/// Forecast runs of every tenant, newest first.
pub(super) async fn forecasts_page(
    State(state): State<AppState>,
    Signed(s, _): Signed,
) -> Result<Response> {
    let runs: Vec<minijinja::Value> = sqlx::query!(
        r#"SELECT r.id, t.slug, r.trigger, r.status, r.skus_total, r.skus_done, r.horizon_days,
                  r.created_at, r.finished_at, r.error,
                  (SELECT avg(mase) FROM forecast_results f WHERE f.run_id = r.id) AS mase,
                  (SELECT avg(rmsse) FROM forecast_results f WHERE f.run_id = r.id) AS rmsse,
                  (SELECT string_agg(model || ' ' || n, ', ' ORDER BY n DESC)
                     FROM (SELECT model, count(*) AS n FROM forecast_results f WHERE f.run_id = r.id GROUP BY model) m) AS mix
           FROM forecast_runs r JOIN tenants t ON t.id = r.tenant_id
           ORDER BY r.created_at DESC LIMIT 100"#
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| {
        let percent = if r.skus_total > 0 {
            100 * r.skus_done / r.skus_total
        } else if r.status == "succeeded" {
            100
        } else {
            0
        };
        minijinja::context! {
            id => r.id.to_string(), tenant => r.slug, trigger => r.trigger, status => r.status,
            skus_total => r.skus_total, skus_done => r.skus_done, percent,
            horizon => r.horizon_days, created_at => time(r.created_at),
            finished_at => r.finished_at.map(time), error => r.error,
            mase => score(r.mase), rmsse => score(r.rmsse), mix => r.mix.unwrap_or_default(),
        }
    })
    .collect();
    page(
        "forecasts.html",
        minijinja::context! { title => "Forecasts", nav => "forecasts", csrf => s.csrf, runs },
    )
}

fn run_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| Error::NotFound(format!("no forecast run '{raw}'")))
}

/// One run: its model mix as a chart and every SKU, those due to reorder first.
pub(super) async fn forecast_run_page(
    State(state): State<AppState>,
    Signed(s, _): Signed,
    Path(run): Path<String>,
) -> Result<Response> {
    let id = run_id(&run)?;
    let head = sqlx::query!(
        r#"SELECT t.slug, r.status, r.trigger, r.skus_total, r.skus_done, r.horizon_days, r.history_end
           FROM forecast_runs r JOIN tenants t ON t.id = r.tenant_id WHERE r.id = $1"#,
        id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no forecast run '{run}'")))?;
    let rows = sqlx::query!(
        r#"SELECT sku, model, chosen_by, mase, rmsse, on_hand, reorder_point, order_quantity,
                  stockout_date, (on_hand <= reorder_point) AS "due!"
           FROM forecast_results WHERE run_id = $1
           ORDER BY (on_hand <= reorder_point) DESC, stockout_date NULLS LAST, sku
           LIMIT 2000"#,
        id
    )
    .fetch_all(&state.db)
    .await?;
    let mut mix: std::collections::BTreeMap<String, u64> = Default::default();
    for r in &rows {
        *mix.entry(r.model.clone()).or_default() += 1;
    }
    let due = rows.iter().filter(|r| r.due).count();
    let skus: Vec<minijinja::Value> = rows
        .into_iter()
        .map(|r| {
            minijinja::context! {
                sku => r.sku, model => r.model, chosen_by => r.chosen_by, mase => score(r.mase),
                rmsse => score(r.rmsse), on_hand => r.on_hand, reorder_point => r.reorder_point,
                order => r.order_quantity, stockout => r.stockout_date.map(|d| d.to_string()),
                due => r.due,
            }
        })
        .collect();
    let names: Vec<&String> = mix.keys().collect();
    let chart = (!mix.is_empty()).then(|| {
        let counts: Vec<u64> = mix.values().copied().collect();
        let first = names.first().map(|s| s.as_str()).unwrap_or("");
        let middle = names.get(names.len() / 2).map(|s| s.as_str()).unwrap_or("");
        let last = names.last().map(|s| s.as_str()).unwrap_or("");
        charts::bars(&counts, [first, middle, last], "SKUs per chosen model")
    });
    page(
        "forecast_run.html",
        minijinja::context! {
            title => "Forecast run", nav => "forecasts", csrf => s.csrf, run => run,
            tenant => head.slug, status => head.status, trigger => head.trigger,
            skus_total => head.skus_total, skus_done => head.skus_done,
            horizon => head.horizon_days, history_end => head.history_end.to_string(),
            mix => mix.iter().map(|(k, v)| minijinja::context! { model => k, n => v }).collect::<Vec<_>>(),
            chart => chart.map(minijinja::Value::from_safe_string), skus, due,
        },
    )
}

/// One SKU of a run: recent sales, the forecast and its interval band, the chosen model and
/// every model's backtest scores.
pub(super) async fn forecast_sku_page(
    State(state): State<AppState>,
    Signed(s, _): Signed,
    Path((run, sku)): Path<(String, String)>,
) -> Result<Response> {
    let id = run_id(&run)?;
    let not_found = || Error::NotFound(format!("no forecast for '{sku}' in run '{run}'"));
    let r = sqlx::query!(
        r#"SELECT f.tenant_id, f.model, f.chosen_by, f.fallback_reason, f.scores, f.on_hand,
                  f.reorder_point, f.order_quantity, f.stockout_date, f.history_days,
                  fr.history_end, t.slug
           FROM forecast_results f JOIN forecast_runs fr ON fr.id = f.run_id
           JOIN tenants t ON t.id = f.tenant_id
           WHERE f.run_id = $1 AND f.sku = $2"#,
        id,
        sku
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(not_found)?;
    let history: Vec<(chrono::NaiveDate, f64)> = sqlx::query!(
        r#"SELECT day, quantity FROM (
               SELECT DISTINCT ON (day) day, quantity FROM daily_sales
               WHERE tenant_id = $1 AND sku = $2 AND day > $3::date - $4::int AND day <= $3
               ORDER BY day, (source = 'import') DESC) s ORDER BY day"#,
        r.tenant_id,
        sku,
        r.history_end,
        CHART_HISTORY_DAYS as i32
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|h| (h.day, h.quantity as f64))
    .collect();
    // Days without a row sold nothing: draw them as zero.
    let start = r.history_end - chrono::Duration::days(CHART_HISTORY_DAYS - 1);
    let mut daily = vec![];
    let mut known = history.into_iter().peekable();
    for i in 0..CHART_HISTORY_DAYS {
        let day = start + chrono::Duration::days(i);
        let v = match known.peek() {
            Some((d, v)) if *d == day => {
                let v = *v;
                known.next();
                v
            }
            _ => 0.0,
        };
        daily.push((day, v));
    }
    let days: Vec<charts::ForecastDay> = sqlx::query!(
        "SELECT day, yhat, lower, upper FROM forecast_points WHERE run_id = $1 AND sku = $2 ORDER BY day",
        id,
        sku
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|p| charts::ForecastDay {
        day: p.day,
        yhat: p.yhat,
        lower: p.lower,
        upper: p.upper,
    })
    .collect();
    let chart = charts::forecast(
        &daily,
        &days,
        &format!("{sku}: sales and {} forecast", r.model),
    );
    let scores: Vec<minijinja::Value> = r
        .scores
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(model, v)| {
                    minijinja::context! {
                        model => model, chosen => *model == r.model,
                        mase => score(v["mase"].as_f64()), rmsse => score(v["rmsse"].as_f64()),
                        smape => score(v["smape"].as_f64()),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    page(
        "forecast_sku.html",
        minijinja::context! {
            title => format!("Forecast {sku}"), nav => "forecasts", csrf => s.csrf, run => run,
            tenant => r.slug, sku => sku, model => r.model, chosen_by => r.chosen_by,
            fallback_reason => r.fallback_reason, on_hand => r.on_hand,
            reorder_point => r.reorder_point, order => r.order_quantity,
            stockout => r.stockout_date.map(|d| d.to_string()), history_days => r.history_days,
            chart => minijinja::Value::from_safe_string(chart), scores,
            points => days.iter().map(|d| minijinja::context! {
                day => d.day.to_string(), yhat => format!("{:.1}", d.yhat),
                lower => format!("{:.1}", d.lower), upper => format!("{:.1}", d.upper),
            }).collect::<Vec<_>>(),
        },
    )
}
