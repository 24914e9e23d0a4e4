//! Reading a CSV file (a tenant's sales upload, an analyst's series file) into a polars frame of
//! text columns. The `csv` crate does the reading rather than polars' own reader: that reader
//! drags polars' streaming engine, parquet, object_store, zstd and lz4 into every build, for files
//! of three columns. Every cell is kept as text; the callers' checks decide what is a date or a
//! number.

use polars::prelude::*;

/// The named columns of a CSV file (names matched trimmed and case-insensitively), as nullable
/// text, plus a `line` column: the file line each record starts on (the header is line 1).
/// Records shorter than the header have nulls in the missing cells; longer ones lose the extra
/// cells; invalid UTF-8 is replaced. A missing column is an error that names it.
pub fn text_columns(bytes: &[u8], wanted: &[&str]) -> Result<DataFrame, CsvFileError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .byte_headers()
        .map_err(unreadable)?
        .iter()
        .map(|name| String::from_utf8_lossy(name).trim().to_ascii_lowercase())
        .collect();
    let mut positions = Vec::with_capacity(wanted.len());
    for name in wanted {
        match header.iter().position(|h| h == name) {
            Some(at) => positions.push(at),
            None => {
                return Err(CsvFileError::MissingColumn {
                    column: (*name).to_string(),
                    found: header.join(","),
                });
            }
        }
    }
    let mut lines: Vec<u64> = Vec::new();
    let mut cells: Vec<Vec<Option<String>>> = vec![Vec::new(); wanted.len()];
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record).map_err(unreadable)? {
        lines.push(record.position().map_or(0, |p| start_line(bytes, p)));
        for (column, &at) in cells.iter_mut().zip(&positions) {
            column.push(
                record
                    .get(at)
                    .map(|cell| String::from_utf8_lossy(cell).into_owned()),
            );
        }
    }
    let height = lines.len();
    let mut columns = vec![Column::new("line".into(), lines)];
    for (name, values) in wanted.iter().zip(cells) {
        columns.push(Column::new((*name).into(), values));
    }
    DataFrame::new(height, columns).map_err(|e| CsvFileError::Unreadable(e.to_string()))
}

/// Why a CSV file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CsvFileError {
    #[error("missing column `{column}`")]
    MissingColumn {
        column: String,
        /// The header as found (the caller decides how much of it to quote).
        found: String,
    },
    #[error("the file could not be read as CSV: {0}")]
    Unreadable(String),
}

/// The line a record starts on. The reader notes a record's position before it skips the blank
/// lines in front of it, so those are counted here.
fn start_line(bytes: &[u8], at: &csv::Position) -> u64 {
    let from = usize::try_from(at.byte())
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let blank = bytes[from..]
        .iter()
        .take_while(|b| matches!(b, b'\n' | b'\r'))
        .filter(|b| **b == b'\n')
        .count();
    at.line() + blank as u64
}

fn unreadable(e: csv::Error) -> CsvFileError {
    CsvFileError::Unreadable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_found_by_trimmed_name_and_records_keep_their_file_lines() {
        let file = b" SKU ,Date,extra,Quantity\nA,2026-01-01,x,3\n\nB,2026-01-02\n\"C\nD\",2026-01-03,y,4,5\n";
        let frame = text_columns(file, &["date", "sku", "quantity"]).unwrap();
        let lines: Vec<u64> = frame
            .column("line")
            .unwrap()
            .u64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        // The blank line 3 is skipped; the quoted SKU spans lines 5 and 6.
        assert_eq!(lines, vec![2, 4, 5]);
        let text = |name: &str| -> Vec<Option<String>> {
            frame
                .column(name)
                .unwrap()
                .str()
                .unwrap()
                .iter()
                .map(|v| v.map(str::to_string))
                .collect()
        };
        assert_eq!(
            text("sku"),
            vec![Some("A".into()), Some("B".into()), Some("C\nD".into())]
        );
        // A short record has nulls for its missing cells; a long one loses its extra cells.
        assert_eq!(
            text("quantity"),
            vec![Some("3".into()), None, Some("4".into())]
        );
    }

    #[test]
    fn a_missing_column_is_named_with_the_header_found() {
        match text_columns(
            b"date,item,quantity\n2026-01-01,A,1\n",
            &["date", "sku", "quantity"],
        ) {
            Err(CsvFileError::MissingColumn { column, found }) => {
                assert_eq!(column, "sku");
                assert_eq!(found, "date,item,quantity");
            }
            other => panic!("expected a missing column, got {other:?}"),
        }
    }
}
