//! Sales history in Postgres: imported days in, daily series out.
//!
//! `daily_sales` keeps imported history (`source = 'import'`) apart from sales the stock ledger
//! records (`source = 'ledger'`). For forecasting, a day's demand is its imported quantity when
//! the tenant imported that day, else the ledger's: a tenant that imports an export which
//! overlaps what backroom already recorded does not count those days twice.

use super::features;
use chrono::NaiveDate;
use polars::prelude::LazyFrame;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");

/// Days since 1970-01-01, the `t` of daily panels (and polars' `Date` representation).
pub fn day_number(day: NaiveDate) -> i32 {
    (day - EPOCH).num_days() as i32
}

/// The date of a day number.
pub fn date_of(day: i32) -> NaiveDate {
    EPOCH + chrono::Duration::days(i64::from(day))
}

/// One CSV field for `COPY ... (FORMAT csv)`: always quoted, quotes doubled.
pub fn csv_quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// Imported sales, summed per SKU and day (what a sales import loads).
#[derive(Debug, Default, PartialEq)]
pub struct DailyRows {
    pub skus: Vec<String>,
    pub days: Vec<NaiveDate>,
    pub quantities: Vec<i64>,
}

/// Sets the imported quantity of each (SKU, day) in `rows`, with `COPY` into a staging table.
pub async fn load_imported(
    tx: &mut PgConnection,
    tenant: Uuid,
    rows: &DailyRows,
) -> anyhow::Result<u64> {
    // The staging table is per connection (TEMP), so its statements cannot be checked at
    // compile time.
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS import_staging (sku text, day date, quantity bigint) ON COMMIT DELETE ROWS",
    )
    .execute(&mut *tx)
    .await?;
    let mut copy = tx
        .copy_in_raw("COPY import_staging (sku, day, quantity) FROM STDIN WITH (FORMAT csv)")
        .await?;
    let mut buffer = String::with_capacity(1 << 20);
    for ((sku, day), quantity) in rows.skus.iter().zip(&rows.days).zip(&rows.quantities) {
        buffer.push_str(&csv_quoted(sku));
        buffer.push_str(&format!(",{day},{quantity}\n"));
        if buffer.len() > (1 << 20) {
            copy.send(buffer.as_bytes()).await?;
            buffer.clear();
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer.as_bytes()).await?;
    }
    copy.finish().await?;
    let written = sqlx::query(
        r#"INSERT INTO daily_sales (tenant_id, sku, day, source, quantity)
           SELECT $1, sku, day, 'import', quantity FROM import_staging
           ON CONFLICT (tenant_id, sku, day, source) DO UPDATE SET quantity = EXCLUDED.quantity"#,
    )
    .bind(tenant)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("TRUNCATE import_staging")
        .execute(&mut *tx)
        .await?;
    Ok(written)
}

/// The daily demand of a tenant's SKUs over the `days` days up to `end` (inclusive), as a panel
/// without gaps. The window bounds the panel whatever the table holds: the panel starts at a
/// series' first sale, and a sale dated centuries back once made it hundreds of thousands of
/// days long per SKU.
pub async fn daily_demand(
    db: &PgPool,
    tenant: Uuid,
    skus: &[String],
    end: NaiveDate,
    days: i32,
) -> anyhow::Result<LazyFrame> {
    let start = end - chrono::Duration::days(i64::from(days.max(1)) - 1);
    let rows = sqlx::query!(
        r#"SELECT DISTINCT ON (sku, day) sku, day, quantity
           FROM daily_sales
           WHERE tenant_id = $1 AND sku = ANY($2) AND day <= $3 AND day >= $4
           ORDER BY sku, day, (source = 'import') DESC"#,
        tenant,
        skus,
        end,
        start
    )
    .fetch_all(db)
    .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut days = Vec::with_capacity(rows.len());
    let mut quantities = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(row.sku);
        days.push(day_number(row.day));
        quantities.push(row.quantity as f64);
    }
    let sales = features::panel_from_rows(ids, days, quantities)?;
    Ok(features::daily_panel(sales, day_number(end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_round_trip() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        assert_eq!(date_of(day_number(d)), d);
        assert_eq!(day_number(EPOCH), 0);
    }

    #[test]
    fn csv_fields_are_quoted() {
        assert_eq!(csv_quoted(r#"A,"B""#), r#""A,""B""""#);
    }
}
