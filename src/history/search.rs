//! Searching the job history by what a support person knows: a query of `key:value` terms such
//! as `tenant:acme kind:invoice status:dead args.order_number:ORD-2026-000123 error:"timeout"
//! after:2026-11-01`, newest first, in stable pages (keyset on finish time and id).
//!
//! Terms (all must hold): `tenant:<slug>`, `queue:<name>`, `kind:<kind or queue>` (`invoice`
//! also matches the `invoices` queue), `status:<succeeded|failed|dead|cancelled>` (or a live
//! state, for `live`), `id:<job id>`,
//! `key:<idempotency key>`, `error:<text>` (in the last error, at least 3 characters; a bare word
//! means the same), `after:<date or time>` and `before:<date or time>` (finish time), and
//! `args.<path>:<value>` (the payload holds that value at that path; numbers and booleans match
//! as such or as text). Each kind of term is served by an index: the tenant and finish time by a
//! b-tree, `args.` by the payload's `jsonb_path_ops` GIN index (containment), `error:` by a
//! trigram GIN index.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

/// The longest query accepted, and the most terms in one.
pub const MAX_QUERY_CHARS: usize = 1000;
pub const MAX_TERMS: usize = 20;

/// One term of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Tenant(String),
    Queue(String),
    Kind(String),
    Status(String),
    Id(String),
    Key(String),
    Error(String),
    After(DateTime<Utc>),
    Before(DateTime<Utc>),
    /// The payload contains this JSON (built from a dotted path and a value).
    Args(Vec<Value>),
}

/// A parsed query. The tenant a caller is limited to (a tenant's own API) is set apart, so no
/// term can widen it.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub terms: Vec<Term>,
    /// The one tenant whose jobs are searched (a tenant's own list).
    pub tenant_id: Option<Uuid>,
    /// The tenants whose jobs may be found (an admin limited to some tenants); `None`: all.
    pub within: Option<Vec<Uuid>>,
}

/// Splits a query into words, keeping `"quoted values"` whole.
fn words(q: &str) -> Result<Vec<String>, String> {
    let mut out = vec![];
    let mut current = String::new();
    let mut quoted = false;
    for c in q.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if quoted {
        return Err("has an unclosed quote".into());
    }
    if !current.is_empty() {
        out.push(current);
    }
    Ok(out)
}

/// An RFC 3339 time, or a date (its start, UTC).
fn time(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok()?;
    Some(day.and_time(NaiveTime::MIN).and_utc())
}

/// `{"a": {"b": v}}` for the path `a.b`; numbers and booleans as such and as text.
fn containment(path: &str, raw: &str) -> Result<Vec<Value>, String> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) || parts.len() > 8 {
        return Err(format!(
            "args.{path}: a path is up to 8 names joined by dots"
        ));
    }
    let mut values = vec![Value::String(raw.to_string())];
    if let Ok(n) = raw.parse::<i64>() {
        values.push(json!(n));
    } else if let Ok(x) = raw.parse::<f64>()
        && x.is_finite()
    {
        values.push(json!(x));
    } else if let Ok(b) = raw.parse::<bool>() {
        values.push(json!(b));
    }
    Ok(values
        .into_iter()
        .map(|v| {
            parts
                .iter()
                .rev()
                .fold(v, |inner, name| json!({ (*name): inner }))
        })
        .collect())
}

impl Term {
    /// One `key:value` term (a bare word is `error:`); the error says what is wrong with it.
    pub fn parse(key: &str, value: &str) -> Result<Term, String> {
        if value.is_empty() {
            return Err("has no value".into());
        }
        Ok(match key {
            "tenant" => Term::Tenant(value.to_string()),
            "queue" => Term::Queue(value.to_string()),
            "kind" => Term::Kind(value.to_string()),
            "status" => match value {
                "succeeded" | "failed" | "dead" | "cancelled" | "queued" | "waiting"
                | "scheduled" | "running" | "retrying" => Term::Status(value.into()),
                _ => {
                    return Err("must be one of succeeded, failed, dead, cancelled (the \
                                history) or queued, waiting, scheduled, running, retrying \
                                (live jobs)"
                        .into());
                }
            },
            "id" => Term::Id(value.to_string()),
            "key" => Term::Key(value.to_string()),
            "error" if value.chars().count() < 3 => {
                return Err("search error text by at least 3 characters".into());
            }
            "error" => Term::Error(value.to_string()),
            "after" | "before" => {
                let t = time(value)
                    .ok_or("expected a date (2026-11-01) or an RFC 3339 time".to_string())?;
                if key == "after" {
                    Term::After(t)
                } else {
                    Term::Before(t)
                }
            }
            k => match k.strip_prefix("args.") {
                Some(path) => Term::Args(containment(path, value)?),
                None => {
                    return Err("unknown; use tenant, queue, kind, status, id, key, error, \
                                after, before or args.<path>"
                        .into());
                }
            },
        })
    }
}

impl Query {
    /// Parses a query; the error names the term at fault.
    pub fn parse(q: &str) -> Result<Query, String> {
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(format!("must be at most {MAX_QUERY_CHARS} characters"));
        }
        let words = words(q)?;
        if words.len() > MAX_TERMS {
            return Err(format!("may have at most {MAX_TERMS} terms"));
        }
        let terms = words
            .iter()
            .map(|word| {
                let (key, value) = word.split_once(':').unwrap_or(("error", word));
                Term::parse(key, value).map_err(|e| format!("{word}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Query {
            terms,
            ..Query::default()
        })
    }
}

/// A job of the history, as searches show it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct HistoryJob {
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// The tenant's slug.
    pub tenant: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub payload: Value,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
}

/// Where the previous page ended: its last job's finish time and id.
pub type Cursor = (DateTime<Utc>, String);

/// The key a page ends at (made opaque by `api::pagination`).
pub fn cursor_key(job: &HistoryJob) -> String {
    format!("{}|{}", job.finished_at.timestamp_micros(), job.id)
}

pub fn parse_cursor_key(raw: &str) -> Option<Cursor> {
    let (micros, id) = raw.split_once('|')?;
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    Some((at, id.to_string()))
}

fn like_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// The plan Postgres chooses for a search (`EXPLAIN`), one line per node.
pub async fn plan(conn: &mut sqlx::PgConnection, query: &Query) -> sqlx::Result<Vec<String>> {
    sql("EXPLAIN ", query, None, 50)
        .build_query_scalar::<String>()
        .fetch_all(conn)
        .await
}

/// The search's SQL, after `prefix` (`EXPLAIN ` to see its plan).
fn sql(prefix: &str, query: &Query, after: Option<&Cursor>, limit: i64) -> QueryBuilder<Postgres> {
    let mut b = QueryBuilder::new(prefix);
    b.push(
        "SELECT h.id, h.queue, h.kind, t.slug AS tenant, h.status, h.attempts, h.payload, \
         h.result, h.last_error, h.created_at, h.started_at, h.finished_at \
         FROM job_history h LEFT JOIN tenants t ON t.id = h.tenant_id WHERE true",
    );
    if let Some(tenant) = query.tenant_id {
        b.push(" AND h.tenant_id = ").push_bind(tenant);
    }
    if let Some(tenants) = &query.within {
        b.push(" AND h.tenant_id = ANY(")
            .push_bind(tenants.clone())
            .push(")");
    }
    for term in &query.terms {
        match term {
            Term::Tenant(slug) => {
                b.push(" AND h.tenant_id = (SELECT id FROM tenants WHERE slug = ")
                    .push_bind(slug.clone())
                    .push(")");
            }
            Term::Queue(q) => {
                b.push(" AND h.queue = ").push_bind(q.clone());
            }
            Term::Kind(k) => {
                b.push(" AND (h.kind = ")
                    .push_bind(k.clone())
                    .push(" OR h.queue = ")
                    .push_bind(k.clone())
                    .push(" OR h.queue = ")
                    .push_bind(format!("{k}s"))
                    .push(")");
            }
            Term::Status(s) => {
                b.push(" AND h.status = ").push_bind(s.clone());
            }
            Term::Id(id) => {
                b.push(" AND h.id = ").push_bind(id.clone());
            }
            Term::Key(key) => {
                b.push(" AND h.idempotency_key = ").push_bind(key.clone());
            }
            Term::Error(text) => {
                b.push(" AND h.last_error ILIKE ")
                    .push_bind(like_pattern(text));
            }
            Term::After(t) => {
                b.push(" AND h.finished_at >= ").push_bind(*t);
            }
            Term::Before(t) => {
                b.push(" AND h.finished_at < ").push_bind(*t);
            }
            Term::Args(options) => {
                b.push(" AND (false");
                for v in options {
                    b.push(" OR h.payload @> ").push_bind(v.clone());
                }
                b.push(")");
            }
        }
    }
    if let Some((at, id)) = after {
        b.push(" AND (h.finished_at, h.id) < (")
            .push_bind(*at)
            .push(", ")
            .push_bind(id.clone())
            .push(")");
    }
    b.push(" ORDER BY h.finished_at DESC, h.id DESC LIMIT ")
        .push_bind(limit);
    b
}

/// Up to `limit + 1` jobs matching `query` after `after`, newest first (the extra one says
/// there is another page: `api::pagination::Page::from_rows`).
pub async fn search(
    db: &PgPool,
    query: &Query,
    after: Option<&Cursor>,
    limit: i64,
) -> sqlx::Result<Vec<HistoryJob>> {
    sql("", query, after, limit + 1)
        .build_query_as()
        .fetch_all(db)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses_into_its_terms() {
        let q = Query::parse(
            r#"tenant:acme kind:invoice status:dead args.order_number:ORD-2026-000123 error:"timed out" after:2026-11-01"#,
        )
        .unwrap();
        assert_eq!(q.terms.len(), 6);
        assert_eq!(q.terms[0], Term::Tenant("acme".into()));
        assert_eq!(q.terms[2], Term::Status("dead".into()));
        assert_eq!(
            q.terms[3],
            Term::Args(vec![json!({"order_number": "ORD-2026-000123"})])
        );
        assert_eq!(q.terms[4], Term::Error("timed out".into()));
        assert_eq!(
            q.terms[5],
            Term::After("2026-11-01T00:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn numbers_match_as_numbers_and_as_text_and_bad_terms_are_named() {
        let q = Query::parse("args.line.qty:3").unwrap();
        assert_eq!(
            q.terms[0],
            Term::Args(vec![
                json!({"line": {"qty": "3"}}),
                json!({"line": {"qty": 3}})
            ])
        );
        for (bad, names) in [
            ("colour:red", "colour"),
            ("status:sleeping", "status:sleeping"),
            ("error:ab", "ab"),
            ("ab", "ab"),
            ("after:yesterday", "after:yesterday"),
            (r#"error:"open"#, "quote"),
            ("args..x:1", "args."),
        ] {
            let e = Query::parse(bad).unwrap_err();
            assert!(e.contains(names), "{bad}: {e}");
        }
        assert!(Query::parse(&"x".repeat(1001)).is_err());
        assert!(Query::parse(&"status:dead ".repeat(21)).is_err());
    }

    #[test]
    fn cursors_round_trip() {
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let raw = format!("{}|stock_abc", at.timestamp_micros());
        assert_eq!(parse_cursor_key(&raw), Some((at, "stock_abc".to_string())));
        assert_eq!(parse_cursor_key("nonsense"), None);
    }
}
