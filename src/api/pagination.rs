//! Cursor pagination shared by every list: `?limit=` (default 50, at most 500) and an opaque
//! `?cursor=` that encodes the last key of the previous page, so pages stay stable while rows are
//! added (keyset pagination, no OFFSET scans).

use super::error::Error;
use super::extract::FieldErrors;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1..=500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A validated page request; `after` is the decoded cursor key.
pub struct PageRequest {
    pub limit: i64,
    pub after: Option<String>,
}

impl PageParams {
    /// Validates the page parameters, recording problems in `errors`.
    pub fn parse_into(&self, errors: &mut FieldErrors) -> Option<PageRequest> {
        let limit = match self.limit.as_deref() {
            None => Some(DEFAULT_LIMIT),
            Some(raw) => errors.check(
                "limit",
                raw.parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("must be a whole number from 1 to {MAX_LIMIT}")),
            ),
        };
        let after = match self.cursor.as_deref() {
            None | Some("") => Some(None),
            Some(raw) => errors
                .check(
                    "cursor",
                    decode_cursor(raw).ok_or("is not a cursor from this API".into()),
                )
                .map(Some),
        };
        Some(PageRequest {
            limit: limit?,
            after: after?,
        })
    }

    pub fn parse(&self) -> Result<PageRequest, Error> {
        let mut errors = FieldErrors::default();
        let page = self.parse_into(&mut errors);
        errors.finish()?;
        Ok(page.expect("no errors means a page"))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows (the extra row only says "there is more").
    pub fn from_rows(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Self {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|last| encode_cursor(&key(last)))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("c1:{key}"))
}

fn decode_cursor(raw: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix("c1:").map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_limits_are_checked() {
        let c = encode_cursor("0192-abc");
        assert_eq!(decode_cursor(&c).as_deref(), Some("0192-abc"));
        assert!(decode_cursor("garbage!").is_none());
        let page = |limit: Option<&str>| PageParams {
            limit: limit.map(str::to_string),
            cursor: None,
        };
        assert_eq!(page(None).parse().unwrap().limit, 50);
        assert_eq!(page(Some("500")).parse().unwrap().limit, 500);
        for bad in ["0", "501", "-1", "ten"] {
            assert!(page(Some(bad)).parse().is_err(), "limit={bad}");
        }
    }

    #[test]
    fn pages_report_more_only_when_there_is_more() {
        let p = Page::from_rows(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(
            decode_cursor(p.next_cursor.as_deref().unwrap()).as_deref(),
            Some("2")
        );
        let p = Page::from_rows(vec![1, 2], 2, |n| n.to_string());
        assert!(p.next_cursor.is_none());
    }
}
