//! Orders and invoices. `POST /v1/orders` records the order, its lines, its invoice and the work
//! the order causes (a `sale` adjustment per line, the invoice PDF, the customer's email) in one
//! Postgres transaction, through the outbox: a committed order never misses its jobs, and an
//! order is accepted even while Redis is down (its jobs flow when Redis returns).

use super::AppState;
use super::error::{Error, Result, on_constraint};
use super::extract::{FieldErrors, Json, Tenant};
use crate::domain::{
    Currency, EmailAddress, Reason, Sku, clean_text, format_amount, parse_tax_rate, totals,
};
use crate::jobs;
use crate::jobs::emails::EmailJob;
use crate::jobs::invoices::RenderInvoice;
use crate::jobs::stock::StockAdjustmentJob;
use crate::outbox::{self, OutboxJob};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tracing::Instrument as _;
use utoipa::ToSchema;
use uuid::Uuid;

pub const MAX_LINES: usize = 500;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerInput {
    name: String,
    email: String,
    address: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineInput {
    sku: String,
    quantity: i64,
    /// Decimal string; defaults to the product's price.
    unit_price: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    /// Your own number (unique per tenant); generated when absent.
    order_number: Option<String>,
    customer: CustomerInput,
    currency: String,
    /// Decimal fraction, e.g. "0.081" for 8.1 %.
    tax_rate: String,
    lines: Vec<LineInput>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderCreated {
    order_id: Uuid,
    order_number: String,
    status: String,
    invoice_id: Uuid,
    /// The order's work (its stock sales, invoice PDF and email) as one group:
    /// `GET /v1/groups/{id}`.
    group_id: Uuid,
}

#[derive(Serialize, ToSchema)]
pub struct Customer {
    name: String,
    email: String,
    address: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderLineView {
    line_no: i32,
    sku: String,
    description: String,
    quantity: i64,
    unit_price: String,
    line_total: String,
}

#[derive(Serialize, ToSchema)]
pub struct InvoiceSummary {
    id: Uuid,
    number: Option<String>,
    status: String,
}

#[derive(Serialize, ToSchema)]
pub struct OrderView {
    id: Uuid,
    order_number: String,
    status: String,
    customer: Customer,
    currency: String,
    tax_rate: String,
    subtotal: String,
    tax: String,
    total: String,
    lines: Vec<OrderLineView>,
    invoice: InvoiceSummary,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct InvoiceView {
    id: Uuid,
    number: Option<String>,
    order_id: Uuid,
    /// pending, ready or failed.
    status: String,
    subtotal: String,
    tax: String,
    total: String,
    currency: String,
    issued_on: Option<NaiveDate>,
    /// Why the invoice failed, when it did.
    failure_reason: Option<String>,
}

struct Line {
    sku: Sku,
    quantity: i64,
    unit_price: Option<Decimal>,
}

fn parse_order_number(raw: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then(|| raw.to_string()).ok_or_else(|| {
        "must be 1 to 64 characters of letters, digits, '-', '_', '.' and '/'".into()
    })
}

fn parse_address(raw: &str) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() || text.chars().count() > 500 {
        return Err("must be 1 to 500 characters".into());
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err("must not contain control characters other than line breaks".into());
    }
    Ok(text.to_string())
}

/// Records an order and, in the same transaction, every job it causes.
#[utoipa::path(post, path = "/v1/orders", tag = "tenant", security(("tenant_key" = [])),
    request_body = OrderInput,
    responses((status = 201, body = OrderCreated),
        (status = 409, description = "The order number is taken", body = super::error::Problem),
        (status = 422, body = super::error::Problem)))]
#[tracing::instrument(skip_all)]
pub async fn create_order(
    tenant: Tenant,
    State(state): State<AppState>,
    Json(body): Json<OrderInput>,
) -> Result<(StatusCode, axum::Json<OrderCreated>)> {
    let order = check_order(&state.db, tenant.id, &body).await?;
    let order_id = Uuid::now_v7();
    let invoice_id = Uuid::now_v7();
    let placed = place_order(&state, &tenant, &order, order_id, invoice_id)
        .instrument(tracing::info_span!("db transaction", what = "place order"))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(OrderCreated {
            order_id,
            order_number: placed,
            status: "placed".into(),
            invoice_id,
            group_id: order_id,
        }),
    ))
}

/// Writes the order and its work (the outbox rows) in one transaction; returns its number.
async fn place_order(
    state: &AppState,
    tenant: &Tenant,
    order: &CheckedOrder,
    order_id: Uuid,
    invoice_id: Uuid,
) -> Result<String> {
    let now = state.settings.queue.clock.now();
    let mut tx = state.db.begin().await?;
    let order_number = match &order.number {
        Some(n) => n.clone(),
        None => {
            let n = crate::db::next_counter(&mut tx, tenant.id, "order", now.year()).await?;
            format!("ORD-{}-{n:06}", now.year())
        }
    };
    let ids = OrderIds {
        tenant: tenant.id,
        order: order_id,
        invoice: invoice_id,
        number: &order_number,
    };
    insert_order(&mut tx, &ids, order).await?;
    outbox::add(&mut tx, &order_work(&ids, &order.lines, now)).await?;
    tx.commit().await?;
    Ok(order_number)
}

/// An order that passed every check: lines priced, totals computed.
struct CheckedOrder {
    number: Option<String>,
    customer_name: String,
    customer_email: EmailAddress,
    address: Option<String>,
    currency: Currency,
    tax_rate: Decimal,
    lines: Vec<PricedLine>,
    totals: crate::domain::Totals,
}

struct PricedLine {
    sku: Sku,
    description: String,
    quantity: i64,
    unit_price: Decimal,
}

/// Checks every field (all faults reported at once, each under its field), looks up the lines'
/// products (descriptions, and prices for lines that give none) and computes the totals.
async fn check_order(db: &sqlx::PgPool, tenant: Uuid, body: &OrderInput) -> Result<CheckedOrder> {
    let mut errors = FieldErrors::default();
    let number = match &body.order_number {
        None => Some(None),
        Some(raw) => errors
            .check("order_number", parse_order_number(raw))
            .map(Some),
    };
    let customer_name = errors.check("customer.name", clean_text(&body.customer.name, 200));
    let customer_email = errors.check("customer.email", EmailAddress::parse(&body.customer.email));
    let address = match &body.customer.address {
        None => Some(None),
        Some(raw) => errors
            .check("customer.address", parse_address(raw))
            .map(Some),
    };
    let currency = errors.check("currency", Currency::parse(&body.currency));
    let tax_rate = errors.check("tax_rate", parse_tax_rate(&body.tax_rate));
    let mut lines = check_lines(&body.lines, currency, &mut errors);
    let skus: Vec<String> = lines.iter().map(|l| l.sku.as_str().to_string()).collect();
    let products: HashMap<String, (String, Decimal, String)> = sqlx::query!(
        "SELECT sku, name, unit_price, currency FROM products WHERE tenant_id = $1 AND sku = ANY($2)",
        tenant,
        &skus
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|r| (r.sku, (r.name, r.unit_price, r.currency)))
    .collect();
    for (i, line) in lines.iter_mut().enumerate() {
        match products.get(line.sku.as_str()) {
            None => errors.push(
                &format!("lines[{i}].sku"),
                format!("no product '{}'", line.sku.as_str()),
            ),
            Some((_, price, product_currency)) if line.unit_price.is_none() => match currency {
                Some(c) if c.as_str() == product_currency => line.unit_price = Some(*price),
                Some(_) => errors.push(
                    &format!("lines[{i}].unit_price"),
                    format!("is required: the product is priced in {product_currency}"),
                ),
                None => {}
            },
            Some(_) => {}
        }
    }
    errors.finish()?;
    let (currency, tax_rate) = (currency.expect("checked"), tax_rate.expect("checked"));
    let lines: Vec<PricedLine> = lines
        .into_iter()
        .map(|l| PricedLine {
            description: products[l.sku.as_str()].0.clone(),
            unit_price: l.unit_price.expect("priced above"),
            quantity: l.quantity,
            sku: l.sku,
        })
        .collect();
    let priced: Vec<(i64, Decimal)> = lines.iter().map(|l| (l.quantity, l.unit_price)).collect();
    let totals = totals(&priced, tax_rate, currency).map_err(|e| Error::invalid("lines", e))?;
    Ok(CheckedOrder {
        number: number.expect("checked"),
        customer_name: customer_name.expect("checked"),
        customer_email: customer_email.expect("checked"),
        address: address.expect("checked"),
        currency,
        tax_rate,
        lines,
        totals,
    })
}

/// Each line's own fields (its product is looked up after).
fn check_lines(
    input: &[LineInput],
    currency: Option<Currency>,
    errors: &mut FieldErrors,
) -> Vec<Line> {
    if input.is_empty() || input.len() > MAX_LINES {
        errors.push("lines", format!("must hold 1 to {MAX_LINES} lines"));
    }
    let mut lines = vec![];
    for (i, line) in input.iter().enumerate() {
        let sku = errors.check(&format!("lines[{i}].sku"), Sku::parse(&line.sku));
        let quantity = errors.check(
            &format!("lines[{i}].quantity"),
            (1..=1_000_000)
                .contains(&line.quantity)
                .then_some(line.quantity)
                .ok_or_else(|| "must be between 1 and 1000000".to_string()),
        );
        let unit_price = match &line.unit_price {
            None => Some(None),
            Some(raw) => errors
                .check(
                    &format!("lines[{i}].unit_price"),
                    crate::domain::Amount::parse(raw, currency),
                )
                .map(|a| Some(a.value())),
        };
        if let (Some(sku), Some(quantity), Some(unit_price)) = (sku, quantity, unit_price) {
            lines.push(Line {
                sku,
                quantity,
                unit_price,
            });
        }
    }
    lines
}

/// Who and what a new order is.
struct OrderIds<'a> {
    tenant: Uuid,
    order: Uuid,
    invoice: Uuid,
    number: &'a str,
}

/// The order, its lines and its invoice (not yet numbered).
async fn insert_order(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ids: &OrderIds<'_>,
    order: &CheckedOrder,
) -> Result<()> {
    let totals = &order.totals;
    sqlx::query!(
        r#"INSERT INTO orders (id, tenant_id, order_number, customer_name, customer_email,
                               customer_address, currency, tax_rate, subtotal, tax, total)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"#,
        ids.order,
        ids.tenant,
        ids.number,
        order.customer_name,
        order.customer_email.as_str(),
        order.address,
        order.currency.as_str(),
        order.tax_rate,
        totals.subtotal,
        totals.tax,
        totals.total
    )
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        on_constraint(e, "orders_order_number_key", || Error::Conflict {
            detail: format!("an order numbered '{}' exists", ids.number),
            field: Some("order_number".into()),
        })
    })?;
    let lines = &order.lines;
    let line_nos: Vec<i32> = (1..=lines.len() as i32).collect();
    let skus: Vec<String> = lines.iter().map(|l| l.sku.as_str().to_string()).collect();
    let descriptions: Vec<String> = lines.iter().map(|l| l.description.clone()).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    let prices: Vec<Decimal> = lines.iter().map(|l| l.unit_price).collect();
    sqlx::query!(
        r#"INSERT INTO order_lines (tenant_id, order_id, line_no, sku, description, quantity, unit_price, line_total)
           SELECT $1, $2, * FROM UNNEST($3::int[], $4::text[], $5::text[], $6::bigint[], $7::numeric[], $8::numeric[])"#,
        ids.tenant,
        ids.order,
        &line_nos,
        &skus,
        &descriptions,
        &quantities,
        &prices,
        &totals.line_totals
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        r#"INSERT INTO invoices (id, tenant_id, order_id, currency, subtotal, tax, total)
           VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
        ids.invoice,
        ids.tenant,
        ids.order,
        order.currency.as_str(),
        totals.subtotal,
        totals.tax,
        totals.total
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The work an order causes, for the outbox: a `sale` adjustment per line, the invoice PDF and
/// the customer's email; one queue group whose id is the order's.
fn order_work(ids: &OrderIds<'_>, lines: &[PricedLine], now: DateTime<Utc>) -> Vec<OutboxJob> {
    let mut work: Vec<OutboxJob> = lines
        .iter()
        .zip(1..)
        .map(|(line, no)| {
            let adjustment = StockAdjustmentJob {
                tenant_id: ids.tenant,
                sku: line.sku.as_str().to_string(),
                delta: -line.quantity,
                reason: Reason::Sale,
                idempotency_key: format!("order:{}:{no}", ids.order),
                reference: Some(ids.number.to_string()),
                occurred_at: now,
            };
            jobs::outbox_job(&adjustment, adjustment.idempotency_key.clone())
        })
        .collect();
    let render = RenderInvoice {
        tenant_id: ids.tenant,
        invoice_id: ids.invoice,
        order_number: Some(ids.number.to_string()),
    };
    let render = jobs::outbox_job(&render, format!("invoice:{}", ids.invoice));
    let email = EmailJob::Invoice {
        tenant_id: ids.tenant,
        invoice_id: ids.invoice,
        order_number: Some(ids.number.to_string()),
    };
    // The email waits for its PDF in the queue (`waiting`), rather than polling it with retries.
    let email = jobs::outbox_job(&email, format!("invoice-email:{}", ids.invoice)).after(&render);
    work.push(render);
    work.push(email);
    outbox::group(ids.order, work)
}

fn uuid_in_path(raw: &str, what: &str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| Error::NotFound(format!("no {what} '{raw}'")))
}

/// An order with its lines and its invoice's status.
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = OrderView), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn get_order(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<OrderView>> {
    let order_id = uuid_in_path(&id, "order")?;
    let o = sqlx::query!(
        r#"SELECT o.id, o.order_number, o.status, o.customer_name, o.customer_email,
                  o.customer_address, o.currency, o.tax_rate, o.subtotal, o.tax, o.total,
                  o.created_at, i.id AS invoice_id, i.number AS invoice_number,
                  i.status AS invoice_status
           FROM orders o JOIN invoices i ON i.order_id = o.id
           WHERE o.id = $1 AND o.tenant_id = $2"#,
        order_id,
        tenant.id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no order '{id}'")))?;
    let lines = sqlx::query!(
        r#"SELECT line_no, sku, description, quantity, unit_price, line_total
           FROM order_lines WHERE order_id = $1 AND tenant_id = $2 ORDER BY line_no"#,
        order_id,
        tenant.id
    )
    .fetch_all(&state.db)
    .await?;
    let money = |d: Decimal| format_amount(d, &o.currency);
    Ok(axum::Json(OrderView {
        id: o.id,
        order_number: o.order_number,
        status: o.status,
        customer: Customer {
            name: o.customer_name,
            email: o.customer_email,
            address: o.customer_address,
        },
        tax_rate: o.tax_rate.normalize().to_string(),
        subtotal: money(o.subtotal),
        tax: money(o.tax),
        total: money(o.total),
        lines: lines
            .into_iter()
            .map(|l| OrderLineView {
                line_no: l.line_no,
                sku: l.sku,
                description: l.description,
                quantity: l.quantity,
                unit_price: money(l.unit_price),
                line_total: money(l.line_total),
            })
            .collect(),
        invoice: InvoiceSummary {
            id: o.invoice_id,
            number: o.invoice_number,
            status: o.invoice_status,
        },
        currency: o.currency,
        created_at: o.created_at,
    }))
}

/// An invoice's status and totals.
#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = InvoiceView), (status = 404, body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(invoice_id = %id))]
pub async fn get_invoice(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<InvoiceView>> {
    let invoice_id = uuid_in_path(&id, "invoice")?;
    let i = sqlx::query!(
        r#"SELECT id, number, order_id, status, subtotal, tax, total, currency, issued_on,
                  failure_reason
           FROM invoices WHERE id = $1 AND tenant_id = $2"#,
        invoice_id,
        tenant.id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no invoice '{id}'")))?;
    Ok(axum::Json(InvoiceView {
        subtotal: format_amount(i.subtotal, &i.currency),
        tax: format_amount(i.tax, &i.currency),
        total: format_amount(i.total, &i.currency),
        id: i.id,
        number: i.number,
        order_id: i.order_id,
        status: i.status,
        currency: i.currency,
        issued_on: i.issued_on,
        failure_reason: i.failure_reason,
    }))
}

/// The invoice PDF, once it is ready.
#[utoipa::path(get, path = "/v1/invoices/{id}/pdf", tag = "tenant", security(("tenant_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "The PDF", content_type = "application/pdf", body = Vec<u8>),
        (status = 404, body = super::error::Problem),
        (status = 409, description = "Not ready yet (or failed)", body = super::error::Problem)))]
#[tracing::instrument(skip_all, fields(invoice_id = %id))]
pub async fn get_invoice_pdf(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    let invoice_id = uuid_in_path(&id, "invoice")?;
    let i = sqlx::query!(
        "SELECT number, status, pdf, failure_reason FROM invoices WHERE id = $1 AND tenant_id = $2",
        invoice_id,
        tenant.id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no invoice '{id}'")))?;
    match (i.status.as_str(), i.pdf, i.number) {
        ("ready", Some(pdf), Some(number)) => Ok((
            [
                (header::CONTENT_TYPE, "application/pdf".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{number}.pdf\""),
                ),
            ],
            pdf,
        )),
        ("failed", _, _) => Err(Error::Conflict {
            detail: format!(
                "the invoice failed: {}",
                i.failure_reason.unwrap_or_default()
            ),
            field: None,
        }),
        _ => Err(Error::Conflict {
            detail: "the invoice is still being prepared; retry shortly".into(),
            field: None,
        }),
    }
}
