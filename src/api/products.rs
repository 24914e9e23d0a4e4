//! Products (upsert, read, list) and their stock ledger, scoped to the calling tenant.

use super::AppState;
use super::error::{Error, Result};
use super::extract::{FieldErrors, Json, Query, Tenant};
use super::pagination::{Page, PageParams};
use crate::domain::{Amount, Currency, ProductName, Sku, format_amount, parse_count};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    name: String,
    /// Decimal string, e.g. "12.50".
    unit_price: String,
    /// ISO 4217, e.g. "EUR".
    currency: String,
    reorder_point: i64,
    reorder_quantity: i64,
    lead_time_days: i64,
    /// Whether stock may go below zero (default false).
    allow_negative: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ProductView {
    sku: String,
    name: String,
    unit_price: String,
    currency: String,
    reorder_point: i64,
    reorder_quantity: i64,
    lead_time_days: i32,
    allow_negative: bool,
    on_hand: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

struct ProductRow {
    sku: String,
    name: String,
    unit_price: rust_decimal::Decimal,
    currency: String,
    reorder_point: i64,
    reorder_quantity: i64,
    lead_time_days: i32,
    allow_negative: bool,
    on_hand: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ProductRow> for ProductView {
    fn from(r: ProductRow) -> Self {
        ProductView {
            unit_price: format_amount(r.unit_price, &r.currency),
            sku: r.sku,
            name: r.name,
            currency: r.currency,
            reorder_point: r.reorder_point,
            reorder_quantity: r.reorder_quantity,
            lead_time_days: r.lead_time_days,
            allow_negative: r.allow_negative,
            on_hand: r.on_hand,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MovementView {
    id: i64,
    delta: i64,
    reason: String,
    reference: Option<String>,
    idempotency_key: String,
    occurred_at: DateTime<Utc>,
    on_hand_after: i64,
}

fn sku_in_path(raw: &str) -> Result<Sku> {
    Sku::parse(raw).map_err(|_| Error::NotFound(format!("no product '{raw}'")))
}

/// Creates or replaces a product (stock on hand is kept on update).
#[utoipa::path(put, path = "/v1/products/{sku}", tag = "tenant", security(("tenant_key" = [])),
    params(("sku" = String, Path)), request_body = ProductInput,
    responses((status = 201, body = ProductView), (status = 200, body = ProductView),
        (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn put_product(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(sku): Path<String>,
    Json(body): Json<ProductInput>,
) -> Result<(StatusCode, axum::Json<ProductView>)> {
    let mut errors = FieldErrors::default();
    let sku = errors.check("sku", Sku::parse(&sku));
    let name = errors.check("name", ProductName::parse(&body.name));
    let currency = errors.check("currency", Currency::parse(&body.currency));
    let price = errors.check("unit_price", Amount::parse(&body.unit_price, currency));
    let reorder_point = errors.check(
        "reorder_point",
        parse_count(body.reorder_point, "reorder_point"),
    );
    let reorder_quantity = errors.check(
        "reorder_quantity",
        parse_count(body.reorder_quantity, "reorder_quantity"),
    );
    let lead_time = errors.check(
        "lead_time_days",
        (0..=365)
            .contains(&body.lead_time_days)
            .then_some(body.lead_time_days as i32)
            .ok_or_else(|| "must be between 0 and 365".to_string()),
    );
    errors.finish()?;
    let (sku, name, currency, price) = (
        sku.expect("checked"),
        name.expect("checked"),
        currency.expect("checked"),
        price.expect("checked"),
    );
    let row = sqlx::query!(
        r#"INSERT INTO products (tenant_id, sku, name, unit_price, currency, reorder_point,
                                 reorder_quantity, lead_time_days, allow_negative)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (tenant_id, sku) DO UPDATE SET
             name = EXCLUDED.name, unit_price = EXCLUDED.unit_price, currency = EXCLUDED.currency,
             reorder_point = EXCLUDED.reorder_point, reorder_quantity = EXCLUDED.reorder_quantity,
             lead_time_days = EXCLUDED.lead_time_days, allow_negative = EXCLUDED.allow_negative,
             updated_at = now()
           RETURNING sku, name, unit_price, currency, reorder_point, reorder_quantity,
                     lead_time_days, allow_negative, on_hand, created_at, updated_at,
                     (xmax = 0) AS "inserted!""#,
        tenant.id,
        sku.as_str(),
        name.as_str(),
        price.value(),
        currency.as_str(),
        reorder_point.expect("checked"),
        reorder_quantity.expect("checked"),
        lead_time.expect("checked"),
        body.allow_negative.unwrap_or(false)
    )
    .fetch_one(&state.db)
    .await?;
    let status = if row.inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let view = ProductView::from(ProductRow {
        sku: row.sku,
        name: row.name,
        unit_price: row.unit_price,
        currency: row.currency,
        reorder_point: row.reorder_point,
        reorder_quantity: row.reorder_quantity,
        lead_time_days: row.lead_time_days,
        allow_negative: row.allow_negative,
        on_hand: row.on_hand,
        created_at: row.created_at,
        updated_at: row.updated_at,
    });
    Ok((status, axum::Json(view)))
}

/// A product with its stock on hand.
#[utoipa::path(get, path = "/v1/products/{sku}", tag = "tenant", security(("tenant_key" = [])),
    params(("sku" = String, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn get_product(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<axum::Json<ProductView>> {
    let sku = sku_in_path(&sku)?;
    let row = sqlx::query_as!(
        ProductRow,
        r#"SELECT sku, name, unit_price, currency, reorder_point, reorder_quantity, lead_time_days,
                  allow_negative, on_hand, created_at, updated_at
           FROM products WHERE tenant_id = $1 AND sku = $2"#,
        tenant.id,
        sku.as_str()
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no product '{}'", sku.as_str())))?;
    Ok(axum::Json(row.into()))
}

/// The tenant's products, by SKU.
#[utoipa::path(get, path = "/v1/products", tag = "tenant", security(("tenant_key" = [])),
    params(PageParams), responses((status = 200, body = Page<ProductView>)))]
#[tracing::instrument(skip_all)]
pub async fn list_products(
    tenant: Tenant,
    State(state): State<AppState>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<Page<ProductView>>> {
    let page = params.parse()?;
    let rows = sqlx::query_as!(
        ProductRow,
        r#"SELECT sku, name, unit_price, currency, reorder_point, reorder_quantity, lead_time_days,
                  allow_negative, on_hand, created_at, updated_at
           FROM products WHERE tenant_id = $1 AND ($2::text IS NULL OR sku > $2)
           ORDER BY sku LIMIT $3"#,
        tenant.id,
        page.after,
        page.limit + 1
    )
    .fetch_all(&state.db)
    .await?;
    let views: Vec<ProductView> = rows.into_iter().map(Into::into).collect();
    Ok(axum::Json(Page::from_rows(views, page.limit, |p| {
        p.sku.clone()
    })))
}

/// The product's ledger, newest first.
#[utoipa::path(get, path = "/v1/products/{sku}/movements", tag = "tenant",
    security(("tenant_key" = [])), params(("sku" = String, Path), PageParams),
    responses((status = 200, body = Page<MovementView>), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn list_movements(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(sku): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<Page<MovementView>>> {
    let sku = sku_in_path(&sku)?;
    let page = params.parse()?;
    let before = match page.after.as_deref() {
        Some(raw) => Some(
            raw.parse::<i64>()
                .map_err(|_| Error::invalid("cursor", "is not a cursor from this API"))?,
        ),
        None => None,
    };
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM products WHERE tenant_id = $1 AND sku = $2) AS "exists!""#,
        tenant.id,
        sku.as_str()
    )
    .fetch_one(&state.db)
    .await?;
    if !exists {
        return Err(Error::NotFound(format!("no product '{}'", sku.as_str())));
    }
    let rows = sqlx::query_as!(
        MovementView,
        r#"SELECT id, delta, reason, reference, idempotency_key, occurred_at, on_hand_after
           FROM stock_movements
           WHERE tenant_id = $1 AND sku = $2 AND ($3::bigint IS NULL OR id < $3)
           ORDER BY id DESC LIMIT $4"#,
        tenant.id,
        sku.as_str(),
        before,
        page.limit + 1
    )
    .fetch_all(&state.db)
    .await?;
    Ok(axum::Json(Page::from_rows(rows, page.limit, |m| {
        m.id.to_string()
    })))
}
