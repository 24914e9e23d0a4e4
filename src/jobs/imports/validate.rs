//! Validating a sales CSV: every bad row is reported with its line number, the field at fault
//! and why, and the good rows are still loaded, summed per SKU and day.

use crate::domain::DateWindow;
use crate::forecast::csv_file::{CsvFileError, text_columns};
use crate::forecast::history::{self, DailyRows};
use chrono::NaiveDate;
use polars::prelude::*;
use serde::{Deserialize, Serialize};

/// At most this many row errors are listed in a report; all are counted.
pub const MAX_LISTED_ERRORS: usize = 1000;

/// One bad cell: the file's line number (the header is line 1), the column and the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowError {
    pub line: u64,
    pub field: String,
    pub value: String,
    pub message: String,
}

/// What an import did, kept on the job and on the import.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    pub rows: u64,
    pub rows_loaded: u64,
    pub rows_rejected: u64,
    /// Distinct (SKU, day) pairs written.
    pub days_written: u64,
    pub skus: u64,
    pub first_day: Option<NaiveDate>,
    pub last_day: Option<NaiveDate>,
    pub errors: Vec<RowError>,
    /// Whether `errors` lists only the first [`MAX_LISTED_ERRORS`].
    pub errors_truncated: bool,
}

/// A file that cannot be read at all (no header, a missing column): the import fails as a
/// whole with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnreadableFile(pub String);

/// Validates a sales CSV against the tenant's SKUs and the current date; returns the good rows
/// summed per SKU and day, and the report.
pub fn validate(
    csv: &[u8],
    known_skus: &[String],
    today: NaiveDate,
    dates: DateWindow,
) -> Result<(DailyRows, ImportReport), UnreadableFile> {
    let frame = read_csv(csv)?;
    let checked = checks(frame, known_skus, today, dates);
    let bad = checked
        .clone()
        .filter(col("good").not())
        .select([
            col("line"),
            col("date_raw"),
            col("sku"),
            col("quantity_raw"),
            col("date_error"),
            col("sku_error"),
            col("quantity_error"),
        ])
        .collect()
        .map_err(polars_failure)?;
    let good = checked
        .filter(col("good"))
        .group_by([col("sku"), col("day")])
        .agg([col("quantity").sum(), col("line").count().alias("rows")])
        .sort(["sku", "day"], SortMultipleOptions::default())
        .collect()
        .map_err(polars_failure)?;

    let mut report = ImportReport {
        rows: (frame_height(&good, "rows")? + bad.height() as u64),
        rows_rejected: bad.height() as u64,
        ..Default::default()
    };
    report.rows_loaded = report.rows - report.rows_rejected;
    collect_errors(&bad, &mut report).map_err(polars_failure)?;

    let rows = good_rows(&good)?;
    report.days_written = rows.skus.len() as u64;
    let mut distinct = rows.skus.clone();
    distinct.dedup();
    report.skus = distinct.len() as u64;
    report.first_day = rows.days.iter().min().copied();
    report.last_day = rows.days.iter().max().copied();
    Ok((rows, report))
}

/// The checks of every row, as one polars query: each row's line number, its raw and parsed
/// cells, an error per column (or null), and whether it is good.
fn checks(
    frame: DataFrame,
    known_skus: &[String],
    today: NaiveDate,
    dates: DateWindow,
) -> LazyFrame {
    let today_days = history::day_number(today);
    let oldest_days = history::day_number(dates.oldest_day(today));
    let too_old = format!(
        "is more than {} days in the past (BACKROOM_MAX_PAST_DAYS)",
        dates.past_days
    );
    let known = Series::new("known".into(), known_skus);
    let trimmed = |name: &str| col(name).str().strip_chars(lit(NULL));
    frame
        .lazy()
        .select([
            col("line").cast(DataType::UInt64),
            trimmed("date").alias("date_raw"),
            trimmed("sku").alias("sku"),
            trimmed("quantity").alias("quantity_raw"),
        ])
        .with_columns([
            col("date_raw")
                .str()
                .to_date(StrptimeOptions {
                    format: Some("%Y-%m-%d".into()),
                    strict: false,
                    exact: true,
                    cache: true,
                })
                .cast(DataType::Int32)
                .alias("day"),
            col("quantity_raw")
                .cast(DataType::Float64)
                .alias("quantity"),
        ])
        .with_columns([
            when(col("date_raw").is_null().or(col("date_raw").eq(lit(""))))
                .then(lit("is missing"))
                .when(col("day").is_null())
                .then(lit("is not a date in the form YYYY-MM-DD"))
                .when(col("day").gt(lit(today_days)))
                .then(lit("is in the future"))
                .when(col("day").lt(lit(oldest_days)))
                .then(lit(too_old))
                .otherwise(lit(NULL).cast(DataType::String))
                .alias("date_error"),
            when(col("sku").is_null().or(col("sku").eq(lit(""))))
                .then(lit("is missing"))
                .when(col("sku").is_in(lit(known), false).not())
                .then(lit("is not a product of this tenant"))
                .otherwise(lit(NULL).cast(DataType::String))
                .alias("sku_error"),
            when(
                col("quantity_raw")
                    .is_null()
                    .or(col("quantity_raw").eq(lit(""))),
            )
            .then(lit("is missing"))
            .when(
                col("quantity")
                    .is_null()
                    .or(col("quantity").is_finite().not()),
            )
            .then(lit("is not a number"))
            .when(col("quantity").lt(lit(0.0)))
            .then(lit("must not be negative"))
            .when(col("quantity").neq(col("quantity").round(0, RoundMode::HalfToEven)))
            .then(lit("must be a whole number of units"))
            .when(col("quantity").gt(lit(1e12)))
            .then(lit("is too large"))
            .otherwise(lit(NULL).cast(DataType::String))
            .alias("quantity_error"),
        ])
        .with_column(
            col("date_error")
                .is_null()
                .and(col("sku_error").is_null())
                .and(col("quantity_error").is_null())
                .alias("good"),
        )
}

/// The good rows, summed per SKU and day, as the history loads them.
fn good_rows(good: &DataFrame) -> Result<DailyRows, UnreadableFile> {
    let mut rows = DailyRows::default();
    let skus = good.column("sku").and_then(|c| c.str().cloned());
    let days = good.column("day").and_then(|c| c.i32().cloned());
    let quantities = good.column("quantity").and_then(|c| c.f64().cloned());
    let (skus, days, quantities) = match (skus, days, quantities) {
        (Ok(s), Ok(d), Ok(q)) => (s, d, q),
        _ => {
            return Err(UnreadableFile(
                "the file's columns could not be read".into(),
            ));
        }
    };
    for ((sku, day), quantity) in skus.iter().zip(days.iter()).zip(quantities.iter()) {
        if let (Some(sku), Some(day), Some(quantity)) = (sku, day, quantity) {
            rows.skus.push(sku.to_string());
            rows.days.push(history::date_of(day));
            rows.quantities.push(quantity as i64);
        }
    }
    Ok(rows)
}

fn polars_failure(e: PolarsError) -> UnreadableFile {
    UnreadableFile(format!("the file could not be read as CSV: {e}"))
}

fn frame_height(good: &DataFrame, counts: &str) -> Result<u64, UnreadableFile> {
    let rows = good
        .column(counts)
        .and_then(|c| c.cast(&DataType::UInt64))
        .map_err(polars_failure)?;
    let rows = rows.u64().map_err(polars_failure)?;
    Ok(rows.sum().unwrap_or(0))
}

/// The longest header line accepted (also checked as an upload arrives).
pub const MAX_HEADER_BYTES: usize = 4096;

/// Why a header line is refused, `length` saying how long it is (the job knows; an upload still
/// arriving knows only that it is over the limit).
pub fn header_too_long(length: &str) -> String {
    format!(
        "header: the first line is {length} long; a header may be at most {MAX_HEADER_BYTES} bytes (expected `date,sku,quantity`)"
    )
}

fn read_csv(csv: &[u8]) -> Result<DataFrame, UnreadableFile> {
    if csv.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(UnreadableFile(
            "the file is empty: expected a header line `date,sku,quantity`".into(),
        ));
    }
    // A header is a few column names. One of megabytes (or of millions of columns) is refused
    // before polars builds a column for each name.
    let header_len = csv.iter().position(|&b| b == b'\n').unwrap_or(csv.len());
    if header_len > MAX_HEADER_BYTES {
        return Err(UnreadableFile(header_too_long(&format!(
            "{header_len} bytes"
        ))));
    }
    text_columns(csv, &["date", "sku", "quantity"]).map_err(|e| match e {
        CsvFileError::MissingColumn { column, found } => {
            // The header is the caller's text: quote only its start (a 60 MB header line would
            // otherwise become a 60 MB error in Redis and Postgres).
            let shown: String = found.chars().take(200).collect();
            let cut = if shown.len() < found.len() { "…" } else { "" };
            UnreadableFile(format!(
                "header: missing column `{column}` (expected `date,sku,quantity`; found `{shown}{cut}`)"
            ))
        }
        CsvFileError::Unreadable(e) => UnreadableFile(format!("the file could not be read as CSV: {e}")),
    })
}

fn collect_errors(bad: &DataFrame, report: &mut ImportReport) -> PolarsResult<()> {
    let line = bad.column("line")?.u64()?;
    let values = [
        (
            "date",
            bad.column("date_raw")?.str()?,
            bad.column("date_error")?.str()?,
        ),
        (
            "sku",
            bad.column("sku")?.str()?,
            bad.column("sku_error")?.str()?,
        ),
        (
            "quantity",
            bad.column("quantity_raw")?.str()?,
            bad.column("quantity_error")?.str()?,
        ),
    ];
    'rows: for i in 0..bad.height() {
        for (field, value, error) in &values {
            if let Some(message) = error.get(i) {
                if report.errors.len() == MAX_LISTED_ERRORS {
                    report.errors_truncated = true;
                    break 'rows;
                }
                report.errors.push(RowError {
                    line: line.get(i).unwrap_or(0),
                    field: (*field).to_string(),
                    value: value.get(i).unwrap_or("").chars().take(100).collect(),
                    message: message.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 21).unwrap()
    }

    fn skus() -> Vec<String> {
        vec!["MUG-1".into(), "TEE-2".into()]
    }

    #[test]
    fn good_rows_are_summed_per_sku_and_day() {
        let csv = b"date,sku,quantity,store\n2026-11-01,MUG-1,3,a\n2026-11-01,MUG-1,2,b\n2026-11-02,TEE-2,0,a\n";
        let (rows, report) = validate(csv, &skus(), today(), DateWindow::default()).unwrap();
        assert_eq!(rows.skus, ["MUG-1", "TEE-2"]);
        assert_eq!(rows.quantities, [5, 0]);
        assert_eq!(report.rows, 3);
        assert_eq!(report.rows_loaded, 3);
        assert_eq!(report.days_written, 2);
        assert_eq!(report.skus, 2);
        assert!(report.errors.is_empty());
    }

    #[test]
    fn each_bad_cell_is_reported_with_its_line_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "2026-13-01,MUG-1,1",
                "date",
                "is not a date in the form YYYY-MM-DD",
            ),
            (
                "01/11/2026,MUG-1,1",
                "date",
                "is not a date in the form YYYY-MM-DD",
            ),
            ("2027-01-01,MUG-1,1", "date", "is in the future"),
            (
                "0001-01-01,MUG-1,1",
                "date",
                "is more than 3650 days in the past (BACKROOM_MAX_PAST_DAYS)",
            ),
            (",MUG-1,1", "date", "is missing"),
            (
                "2026-11-01,NOPE,1",
                "sku",
                "is not a product of this tenant",
            ),
            ("2026-11-01,,1", "sku", "is missing"),
            ("2026-11-01,MUG-1,-4", "quantity", "must not be negative"),
            ("2026-11-01,MUG-1,lots", "quantity", "is not a number"),
            (
                "2026-11-01,MUG-1,1.5",
                "quantity",
                "must be a whole number of units",
            ),
            ("2026-11-01,MUG-1,", "quantity", "is missing"),
            ("2026-11-01,MUG-1", "quantity", "is missing"),
            ("2026-11-01,MUG-1,NaN", "quantity", "is not a number"),
        ];
        for (row, field, message) in cases {
            let csv = format!("date,sku,quantity\n2026-11-02,TEE-2,4\n{row}\n");
            let (rows, report) =
                validate(csv.as_bytes(), &skus(), today(), DateWindow::default()).unwrap();
            assert_eq!(report.rows_rejected, 1, "{row}: one rejected row");
            assert_eq!(rows.quantities, [4], "{row}: the good row is still loaded");
            let error = &report.errors[0];
            assert_eq!(
                (error.line, error.field.as_str(), error.message.as_str()),
                (3, *field, *message),
                "{row}"
            );
        }
    }

    #[test]
    fn a_file_without_the_needed_columns_is_unreadable() {
        for csv in ["", "day,sku,qty\n2026-11-01,MUG-1,1\n", "\n\n"] {
            assert!(
                validate(csv.as_bytes(), &skus(), today(), DateWindow::default()).is_err(),
                "{csv:?}"
            );
        }
        let err = validate(
            b"date,sku\n2026-11-01,MUG-1\n",
            &skus(),
            today(),
            DateWindow::default(),
        )
        .unwrap_err();
        assert!(err.0.contains("missing column `quantity`"), "{err}");
    }

    /// A header of megabytes once came back whole as the job's error (and so twice in Redis),
    /// and one of a million commas would be a million columns.
    #[test]
    fn a_huge_header_gives_a_short_error() {
        for header in ["x".repeat(5 << 20), ",".repeat(1 << 20)] {
            let csv = format!("{header},sku\n2026-11-01,MUG-1\n");
            let err =
                validate(csv.as_bytes(), &skus(), today(), DateWindow::default()).unwrap_err();
            assert!(err.0.len() < 400, "{} bytes", err.0.len());
            assert!(
                err.0.contains("a header may be at most 4096 bytes"),
                "{}",
                err.0
            );
        }
        // Under the limit, a header without a needed column is quoted only in part.
        let csv = format!("{},sku\n2026-11-01,MUG-1\n", "x".repeat(4000));
        let err = validate(csv.as_bytes(), &skus(), today(), DateWindow::default()).unwrap_err();
        assert!(err.0.len() < 400, "{} bytes", err.0.len());
        assert!(
            err.0.contains("missing column `date`") && err.0.ends_with("…`)"),
            "{}",
            err.0
        );
    }

    #[test]
    fn the_error_list_is_capped_but_every_bad_row_counted() {
        let mut csv = String::from("date,sku,quantity\n");
        for _ in 0..(MAX_LISTED_ERRORS + 10) {
            csv.push_str("2026-11-01,NOPE,1\n");
        }
        let (_, report) =
            validate(csv.as_bytes(), &skus(), today(), DateWindow::default()).unwrap();
        assert_eq!(report.rows_rejected, MAX_LISTED_ERRORS as u64 + 10);
        assert_eq!(report.errors.len(), MAX_LISTED_ERRORS);
        assert!(report.errors_truncated);
    }
}
