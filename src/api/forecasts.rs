//! Sales history imports and demand forecasts: upload a sales CSV, start a forecast run, follow
//! its progress, read a product's latest forecast with its reorder advice.
//!
//! Uploads and runs are rows first and jobs second (like emails): the row is committed, then the
//! job is pushed with an idempotency key naming the row; if Redis refuses the push the row is
//! removed again and the caller gets a 503, so nothing is half-accepted.

use super::AppState;
use super::error::{Error, Result};
use super::extract::{FieldErrors, Json, Tenant};
use crate::domain::Sku;
use crate::jobs::forecasts;
use crate::jobs::imports::{self, upload};
use crate::jobs::{self, Enqueue};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Serialize, ToSchema)]
pub struct ImportAccepted {
    import_id: Uuid,
    job_id: String,
    status: String,
}

/// Upload daily sales history as CSV (`date,sku,quantity`; extra columns are ignored). The rows
/// are validated and loaded by an `imports` job; its result (and `GET /v1/sales/imports/{id}`)
/// lists every rejected row with its line, field and reason.
#[utoipa::path(post, path = "/v1/sales/import", tag = "tenant", security(("tenant_key" = [])),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 202, body = ImportAccepted),
        (status = 409, description = "Too many of this tenant's imports wait to be loaded", body = super::error::Problem),
        (status = 413, body = super::error::Problem), (status = 415, body = super::error::Problem),
        (status = 422, body = super::error::Problem),
        (status = 429, description = "This tenant's uploads already being read", body = super::error::Problem),
        (status = 503, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn import_sales(
    tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, axum::Json<ImportAccepted>)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("text/csv") {
        return Err(Error::UnsupportedMediaType(format!(
            "expected `Content-Type: text/csv`, got `{content_type}`"
        )));
    }
    // An upload that says it is too large is refused before a byte of it is read or stored
    // (otherwise a tenant could make the database write and delete the whole limit each time).
    let max_bytes = state.settings.max_import_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large(max_bytes));
    }
    // At most this many of one tenant's uploads are read at once per API process, so that one
    // tenant's parallel uploads do not take every connection and the database's write capacity.
    let _reading = state.uploads.start(tenant.id).await?;
    let import_id = Uuid::now_v7();
    let mut tx = state.db.begin().await?;
    // A cap on a tenant's imports waiting to be loaded or still arriving
    // (`BACKROOM_MAX_QUEUED_IMPORTS`): the imports queue is shared, so one tenant's hundred
    // uploads must not stand in front of everyone's. The lock makes the count and the insert one
    // step for concurrent uploads. Uploads that stopped arriving an hour ago (a process that died
    // mid-upload) are removed here.
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('sales-import:' || $1::uuid::text, 0))",
        tenant.id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM sales_imports WHERE tenant_id = $1 AND status = 'receiving' AND created_at < now() - interval '1 hour'",
        tenant.id
    )
    .execute(&mut *tx)
    .await?;
    let queued = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM sales_imports WHERE tenant_id = $1 AND status IN ('receiving', 'queued') AND created_at > now() - interval '6 hours'"#,
        tenant.id
    )
    .fetch_one(&mut *tx)
    .await?;
    let max_queued = state.settings.max_queued_imports;
    if queued >= i64::from(max_queued) {
        return Err(Error::Conflict {
            detail: format!(
                "{queued} imports of this tenant are still waiting to be loaded (at most {max_queued}, BACKROOM_MAX_QUEUED_IMPORTS); upload again when one has finished"
            ),
            field: None,
        });
    }
    sqlx::query!(
        "INSERT INTO sales_imports (id, tenant_id, status, body_sha256) VALUES ($1, $2, 'receiving', '')",
        import_id,
        tenant.id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Removes the upload if this request ends before it is queued (a refusal below, or the client
    // going away, which drops this future).
    let mut unfinished = UnfinishedUpload {
        db: state.db.clone(),
        import_id: Some(import_id),
    };
    let written = match receive(&state, import_id, body).await {
        Ok(written) => written,
        Err(e) => {
            unfinished.remove().await;
            return Err(e);
        }
    };
    sqlx::query!(
        "UPDATE sales_imports SET status = 'queued', body_sha256 = $2 WHERE id = $1",
        import_id,
        written.sha256
    )
    .execute(&state.db)
    .await?;
    unfinished.import_id = None;
    let job = imports::SalesImport {
        tenant_id: tenant.id,
        import_id,
    };
    let pushed = jobs::enqueue_or_undo(
        &state.queues,
        &state.db,
        Enqueue::new(&job).key(format!("import:{import_id}")),
        sqlx::query!("DELETE FROM sales_imports WHERE id = $1", import_id),
    )
    .await?;
    sqlx::query!(
        "UPDATE sales_imports SET job_id = $2 WHERE id = $1",
        import_id,
        pushed
    )
    .execute(&state.db)
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(ImportAccepted {
            import_id,
            job_id: pushed,
            status: "queued".into(),
        }),
    ))
}

fn too_large(max_bytes: usize) -> Error {
    Error::PayloadTooLarge(format!(
        "a sales import may be at most {max_bytes} bytes (BACKROOM_MAX_IMPORT_BYTES)"
    ))
}

/// Writes the request body to the import's parts, refusing it as soon as it is over the size
/// (413) or row (422) limit, or stalls (408).
async fn receive(state: &AppState, import_id: Uuid, body: Body) -> Result<upload::Written> {
    let max_bytes = state.settings.max_import_bytes;
    let max_rows = state.settings.max_import_rows;
    let mut writer = upload::UploadWriter::new(import_id);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if crate::api::extract::body_stalled(&e) {
                Error::RequestTimeout("the upload stopped arriving".into())
            } else {
                Error::BadRequest(format!("could not read the upload: {e}"))
            }
        })?;
        if writer.bytes() + chunk.len() > max_bytes {
            return Err(too_large(max_bytes));
        }
        writer.write(&state.db, &chunk).await?;
        // A header line longer than the import job accepts is refused here, before the rest of
        // the file is stored: a part is written once a MiB has arrived, and the chunk that takes
        // the first line past 4 KiB is far smaller than that, so none has been yet.
        let max_header = imports::validate::MAX_HEADER_BYTES;
        if writer.header_bytes() > max_header {
            let why = imports::validate::header_too_long(&format!("over {max_header} bytes"));
            return Err(Error::invalid("body", why));
        }
        // Lines, not bytes, bound the validator's work and the report (the header is not a row;
        // a last line without a newline is).
        let rows = writer.lines().saturating_sub(1);
        if rows > max_rows {
            return Err(Error::invalid(
                "body",
                format!(
                    "a sales import may hold at most {max_rows} rows (BACKROOM_MAX_IMPORT_ROWS); this one has more"
                ),
            ));
        }
    }
    Ok(writer.finish(&state.db).await?)
}

/// An upload row that must go if its request ends before the upload is queued.
struct UnfinishedUpload {
    db: sqlx::PgPool,
    import_id: Option<Uuid>,
}

impl UnfinishedUpload {
    async fn remove(&mut self) {
        if let Some(id) = self.import_id.take() {
            remove_upload(&self.db, id).await;
        }
    }
}

async fn remove_upload(db: &sqlx::PgPool, id: Uuid) {
    if let Err(e) = sqlx::query!("DELETE FROM sales_imports WHERE id = $1", id)
        .execute(db)
        .await
    {
        tracing::warn!(error = %e, import_id = %id, "could not remove an unfinished upload; it is removed an hour on");
    }
}

impl Drop for UnfinishedUpload {
    fn drop(&mut self) {
        // The task holds no `UnfinishedUpload`: a runtime shutting down drops the task unrun,
        // and that must not spawn another (it did, recursing until the stack overflowed).
        if let Some(id) = self.import_id.take() {
            let db = self.db.clone();
            tokio::spawn(async move { remove_upload(&db, id).await });
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ImportView {
    import_id: Uuid,
    status: String,
    job_id: Option<String>,
    /// The validation report once loaded: rows, rows loaded and rejected, and each error.
    #[schema(value_type = Option<Object>)]
    report: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    loaded_at: Option<DateTime<Utc>>,
}

/// A sales import and its validation report.
#[utoipa::path(get, path = "/v1/sales/imports/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ImportView), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn get_import(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<ImportView>> {
    let not_found = || Error::NotFound(format!("no sales import '{id}'"));
    let import_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let row = sqlx::query!(
        "SELECT status, job_id, report, created_at, loaded_at FROM sales_imports WHERE id = $1 AND tenant_id = $2",
        import_id,
        tenant.id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(not_found)?;
    Ok(axum::Json(ImportView {
        import_id,
        status: row.status,
        job_id: row.job_id,
        report: row.report,
        created_at: row.created_at,
        loaded_at: row.loaded_at,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// Days to forecast, 1..=365 (default 28).
    horizon_days: Option<i64>,
    /// Only these SKUs (default: every product with sales history).
    skus: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct RunAccepted {
    run_id: Uuid,
    job_id: String,
    status: String,
}

/// Start a forecast run for the calling tenant now.
#[utoipa::path(post, path = "/v1/forecasts/runs", tag = "tenant", security(("tenant_key" = [])),
    request_body = RunInput,
    responses((status = 202, body = RunAccepted),
        (status = 409, description = "A run of this tenant is still queued or running", body = super::error::Problem),
        (status = 422, body = super::error::Problem),
        (status = 429, description = "This tenant started a run on demand less than `BACKROOM_FORECAST_RUN_GAP_SECS` ago; `Retry-After` says when the next may start", body = super::error::Problem),
        (status = 503, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn create_run(
    tenant: Tenant,
    State(state): State<AppState>,
    Json(body): Json<RunInput>,
) -> Result<(StatusCode, axum::Json<RunAccepted>)> {
    let mut errors = FieldErrors::default();
    let horizon = body.horizon_days.unwrap_or(28);
    if !(1..=365).contains(&horizon) {
        errors.push("horizon_days", "must be between 1 and 365");
    }
    let mut skus = None;
    if let Some(list) = &body.skus {
        if list.is_empty() {
            errors.push("skus", "must name at least one SKU when given");
        }
        if list.len() > 100_000 {
            errors.push("skus", "may name at most 100000 SKUs");
        }
        let mut parsed: Vec<(usize, String)> = vec![];
        for (i, raw) in list.iter().enumerate().take(100_000) {
            if let Some(sku) = errors.check(&format!("skus[{i}]"), Sku::parse(raw)) {
                parsed.push((i, sku.as_str().to_string()));
            }
        }
        if !parsed.is_empty() {
            let names: Vec<String> = parsed.iter().map(|(_, s)| s.clone()).collect();
            let known: HashSet<String> = sqlx::query_scalar!(
                "SELECT sku FROM products WHERE tenant_id = $1 AND sku = ANY($2)",
                tenant.id,
                &names
            )
            .fetch_all(&state.db)
            .await?
            .into_iter()
            .collect();
            for (i, sku) in &parsed {
                if !known.contains(sku) {
                    errors.push(&format!("skus[{i}]"), format!("no product '{sku}'"));
                }
            }
        }
        let mut parsed: Vec<String> = parsed.into_iter().map(|(_, s)| s).collect();
        parsed.sort();
        parsed.dedup();
        skus = Some(parsed);
    }
    errors.finish()?;
    let (run_id, job_id) = forecasts::start_run(
        &state.db,
        &state.queues,
        tenant.id,
        forecasts::Trigger::Api {
            min_gap: state.settings.forecast.run_gap,
        },
        horizon as i32,
        skus,
    )
    .await
    .map_err(|e| match e {
        forecasts::StartError::Database(e) => Error::from(e),
        forecasts::StartError::Queue(e) => Error::from(e),
        forecasts::StartError::AlreadyRan => {
            Error::Internal(anyhow::anyhow!("an API run cannot collide with a night"))
        }
        forecasts::StartError::TooSoon(wait) => Error::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        },
        forecasts::StartError::Busy(active) => Error::Conflict {
            detail: format!(
                "forecast run {active} is still queued or running; start another when it has finished"
            ),
            field: None,
        },
    })?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RunAccepted {
            run_id,
            job_id,
            status: "queued".into(),
        }),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct BacktestSummary {
    /// Mean over SKUs of the chosen models' backtest MASE.
    mase: Option<f64>,
    /// Mean over SKUs of the chosen models' backtest RMSSE.
    rmsse: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct RunView {
    run_id: Uuid,
    status: String,
    trigger: String,
    horizon_days: i32,
    skus_total: i32,
    skus_done: i32,
    /// SKUs per chosen model.
    models: BTreeMap<String, i64>,
    backtest: BacktestSummary,
    error: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

/// A forecast run's progress and outcome.
#[utoipa::path(get, path = "/v1/forecasts/runs/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = RunView), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn get_run(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<RunView>> {
    let not_found = || Error::NotFound(format!("no forecast run '{id}'"));
    let run_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let run = sqlx::query!(
        r#"SELECT status, trigger, horizon_days, skus_total, skus_done, error, created_at,
                  started_at, finished_at
           FROM forecast_runs WHERE id = $1 AND tenant_id = $2"#,
        run_id,
        tenant.id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(not_found)?;
    let models = forecasts::runs::model_mix(&state.db, tenant.id, run_id).await?;
    let backtest = sqlx::query!(
        r#"SELECT avg(mase) AS mase, avg(rmsse) AS rmsse FROM forecast_results WHERE run_id = $1 AND tenant_id = $2"#,
        run_id,
        tenant.id
    )
    .fetch_one(&state.db)
    .await?;
    Ok(axum::Json(RunView {
        run_id,
        status: run.status,
        trigger: run.trigger,
        horizon_days: run.horizon_days,
        skus_total: run.skus_total,
        skus_done: run.skus_done,
        models,
        backtest: BacktestSummary {
            mase: backtest.mase,
            rmsse: backtest.rmsse,
        },
        error: run.error,
        created_at: run.created_at,
        started_at: run.started_at,
        finished_at: run.finished_at,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ForecastPoint {
    date: NaiveDate,
    yhat: f64,
    lower: f64,
    upper: f64,
}

#[derive(Serialize, ToSchema)]
pub struct ReorderView {
    on_hand: i64,
    reorder_point: i64,
    stockout_date: Option<NaiveDate>,
    suggested_order_quantity: i64,
    /// Whether stock on hand was at or below the reorder point when the forecast was made.
    due: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ScoreView {
    mase: Option<f64>,
    rmsse: Option<f64>,
    smape: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct ProductForecast {
    sku: String,
    run_id: Uuid,
    model: String,
    /// `backtest` (every model scored), `classifier` (model picked from the series'
    /// descriptors, then checked against the baseline), `pooled` (two seasons of history that
    /// its backtests cannot hold: the run's choice for its longer series) or `fallback` (the
    /// model failed, or the history is too short to backtest).
    chosen_by: String,
    fallback_reason: Option<String>,
    generated_at: DateTime<Utc>,
    horizon_days: i32,
    points: Vec<ForecastPoint>,
    backtest: ScoreView,
    /// Backtest scores of every model tried.
    #[schema(value_type = Object)]
    scores: serde_json::Value,
    reorder: ReorderView,
}

/// The latest forecast of a product, with its reorder advice.
#[utoipa::path(get, path = "/v1/products/{sku}/forecast", tag = "tenant", security(("tenant_key" = [])),
    params(("sku" = String, Path)),
    responses((status = 200, body = ProductForecast), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn get_product_forecast(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<axum::Json<ProductForecast>> {
    let not_found = || Error::NotFound(format!("no product '{sku}'"));
    let sku = Sku::parse(&sku).map_err(|_| not_found())?;
    let row = sqlx::query!(
        r#"SELECT r.run_id, r.model, r.chosen_by, r.fallback_reason, r.generated_at, r.mase,
                  r.rmsse, r.smape, r.scores, r.on_hand, r.reorder_point, r.order_quantity,
                  r.stockout_date, fr.horizon_days
           FROM forecast_results r JOIN forecast_runs fr ON fr.id = r.run_id
           WHERE r.tenant_id = $1 AND r.sku = $2
           ORDER BY r.generated_at DESC LIMIT 1"#,
        tenant.id,
        sku.as_str()
    )
    .fetch_optional(&state.db)
    .await?;
    let Some(row) = row else {
        let exists = sqlx::query_scalar!(
            "SELECT 1 AS one FROM products WHERE tenant_id = $1 AND sku = $2",
            tenant.id,
            sku.as_str()
        )
        .fetch_optional(&state.db)
        .await?;
        return Err(match exists {
            None => not_found(),
            Some(_) => Error::NotFound(format!(
                "product '{}' has no forecast yet (POST /v1/forecasts/runs to make one)",
                sku.as_str()
            )),
        });
    };
    let points = sqlx::query_as!(
        ForecastPoint,
        r#"SELECT day AS date, yhat, lower, upper FROM forecast_points
           WHERE run_id = $1 AND sku = $2 ORDER BY day"#,
        row.run_id,
        sku.as_str()
    )
    .fetch_all(&state.db)
    .await?;
    Ok(axum::Json(ProductForecast {
        sku: sku.as_str().to_string(),
        run_id: row.run_id,
        model: row.model,
        chosen_by: row.chosen_by,
        fallback_reason: row.fallback_reason,
        generated_at: row.generated_at,
        horizon_days: row.horizon_days,
        points,
        backtest: ScoreView {
            mase: row.mase,
            rmsse: row.rmsse,
            smape: row.smape,
        },
        scores: row.scores,
        reorder: ReorderView {
            on_hand: row.on_hand,
            reorder_point: row.reorder_point,
            stockout_date: row.stockout_date,
            suggested_order_quantity: row.order_quantity,
            due: row.on_hand <= row.reorder_point,
        },
    }))
}
