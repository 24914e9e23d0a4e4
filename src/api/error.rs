//! The one error type of the HTTP API, rendered as `application/problem+json`.
//!
//! 4xx variants carry a message the caller can act on and, for validation, the field at fault.
//! 5xx variants wrap the underlying error, log its whole chain once inside the request span, and
//! show the client only a generic title and the `request_id` to quote when asking for help.
//! A dependency that is down (Postgres, Redis) is a 503 with `Retry-After`, never a 500.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

tokio::task_local! {
    /// The id of the request being served; set by `api::middleware::request_context`.
    pub static REQUEST_ID: String;
}

/// The current request's id, or `None` outside a request.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// One invalid field: `field` is a JSON path such as `adjustments[3].delta`.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub request_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {detail}")]
    Conflict {
        detail: String,
        field: Option<String>,
    },
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// The body stopped arriving (`BACKROOM_HEADER_TIMEOUT_SECS` between two parts of it).
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// The whole request took longer than `BACKROOM_REQUEST_TIMEOUT_SECS`.
    #[error("the request took longer than {after_secs} s")]
    TookTooLong { after_secs: u64 },
    #[error("{dependency} is unavailable")]
    Unavailable {
        dependency: &'static str,
        #[source]
        source: anyhow::Error,
    },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// A 422 naming one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation(vec![FieldError::new(field, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::TookTooLong { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Error::BadRequest(_) => ("malformed-request", "Malformed request"),
            Error::Validation(_) => ("validation", "Some fields are invalid"),
            Error::Unauthorized(_) => ("unauthorized", "Missing or invalid credentials"),
            Error::Forbidden(_) => ("forbidden", "Not allowed"),
            Error::NotFound(_) => ("not-found", "Not found"),
            Error::MethodNotAllowed => ("method-not-allowed", "Method not allowed"),
            Error::Conflict { .. } => ("conflict", "Conflict"),
            Error::PayloadTooLarge(_) => ("payload-too-large", "Request body too large"),
            Error::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Error::RateLimited { .. } => ("rate-limited", "Too many requests"),
            Error::RequestTimeout(_) => ("request-timeout", "Request timeout"),
            Error::TookTooLong { .. } => ("too-long", "The request took too long"),
            Error::Unavailable { .. } => ("unavailable", "A dependency is unavailable"),
            Error::Internal(_) => ("internal", "Internal server error"),
        }
    }

    fn detail_and_errors(&self) -> (String, Vec<FieldError>) {
        match self {
            Error::BadRequest(m)
            | Error::Unauthorized(m)
            | Error::Forbidden(m)
            | Error::NotFound(m)
            | Error::PayloadTooLarge(m)
            | Error::RequestTimeout(m)
            | Error::UnsupportedMediaType(m) => (m.clone(), vec![]),
            Error::TookTooLong { after_secs } => (
                format!("the request did not finish within {after_secs} s; retry later"),
                vec![],
            ),
            Error::Validation(errors) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                (format!("invalid: {}", fields.join(", ")), errors.clone())
            }
            Error::MethodNotAllowed => ("this path does not accept that method".into(), vec![]),
            Error::Conflict { detail, field } => (
                detail.clone(),
                field
                    .iter()
                    .map(|f| FieldError::new(f.clone(), detail.clone()))
                    .collect(),
            ),
            Error::RateLimited { retry_after_secs } => (
                format!("rate limit exceeded; retry after {retry_after_secs} s"),
                vec![],
            ),
            Error::Unavailable { dependency, .. } => (
                format!("{dependency} is unavailable; nothing was accepted, retry later"),
                vec![],
            ),
            Error::Internal(_) => (
                "an unexpected error occurred; quote the request_id when reporting it".into(),
                vec![],
            ),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Error::Internal(e) => tracing::error!(error = ?e, "request failed"),
            Error::Unavailable { dependency, source } => {
                tracing::warn!(dependency, error = ?source, "dependency unavailable")
            }
            _ => {}
        }
        let (slug, title) = self.slug_and_title();
        let (detail, errors) = self.detail_and_errors();
        let problem = Problem {
            kind: format!("https://backroom.dev/problems/{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail,
            errors,
            request_id: current_request_id(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let retry_after = match self {
            Error::RateLimited { retry_after_secs } => Some(retry_after_secs),
            Error::Unavailable { .. } => Some(5),
            Error::TookTooLong { .. } => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Postgres errors: a database that cannot be reached or used right now (down, restarting,
/// out of connections, refusing or cancelling statements, a lock or statement timeout, a
/// serialization conflict) is 503 with `Retry-After`; what can only be a fault of ours (a
/// constraint the handler did not expect, a decoding error) is a 500.
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if postgres_unavailable(&e) {
            Error::Unavailable {
                dependency: "postgres",
                source: e.into(),
            }
        } else {
            Error::Internal(anyhow::Error::new(e).context("while querying Postgres"))
        }
    }
}

/// Whether `e` says Postgres could not serve the statement now, rather than that the statement
/// was wrong. SQLSTATE classes: 08 connection, 40 transaction rollback (serialization, deadlock),
/// 53 insufficient resources, 57 operator intervention (shutdown, cannot connect now, statement
/// cancelled or timed out), 58 system error; 55P03 a lock not available in time.
pub fn postgres_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
        }),
        _ => false,
    }
}

/// Redis errors: every failure to reach or use Redis during a request (down, a dropped
/// connection, a timeout, a server still loading its data after a restart, a cluster moving
/// slots) is 503 with `Retry-After`. The error itself is logged.
impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Unavailable {
            dependency: "redis",
            source: e.into(),
        }
    }
}

impl From<crate::jobs::EnqueueError> for Error {
    fn from(e: crate::jobs::EnqueueError) -> Self {
        match e {
            crate::jobs::EnqueueError::Queue(e) => e.into(),
            crate::jobs::EnqueueError::Database(e) => e.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps a violation of constraint `name` to `then`, and any other database error as usual
/// (conventions: by constraint name, never by parsing messages).
pub fn on_constraint(e: sqlx::Error, name: &str, then: impl FnOnce() -> Error) -> Error {
    let matches = e
        .as_database_error()
        .and_then(|d| d.constraint())
        .is_some_and(|c| c == name);
    if matches { then() } else { e.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: Error) -> (u16, Option<String>) {
        let response = e.into_response();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        (response.status().as_u16(), retry)
    }

    #[test]
    fn redis_that_is_loading_or_refusing_is_503_with_retry_after() {
        for e in [
            redis::RedisError::from((redis::ServerErrorKind::BusyLoading.into(), "loading")),
            redis::RedisError::from((redis::ServerErrorKind::TryAgain.into(), "try again")),
            redis::RedisError::from((redis::ServerErrorKind::ReadOnly.into(), "read only replica")),
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            let (status, retry) = answer(e.into());
            assert_eq!(status, 503);
            assert!(retry.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0)));
        }
    }

    #[test]
    fn postgres_out_of_reach_is_503_and_our_own_faults_are_500() {
        let (status, retry) = answer(sqlx::Error::PoolTimedOut.into());
        assert_eq!((status, retry.is_some()), (503, true));
        assert!(postgres_unavailable(&sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
        )));
        assert!(!postgres_unavailable(&sqlx::Error::RowNotFound));
        assert_eq!(answer(sqlx::Error::RowNotFound.into()).0, 500);
    }
}
