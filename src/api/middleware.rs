//! Per-request context: a request id (taken from `x-request-id` when the caller sent a sane one),
//! a tracing span that every log line of the request inherits, one completion log line, and
//! panics turned into a problem document instead of a dropped connection.

use super::error::{Error, REQUEST_ID};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::any::Any;
use std::time::{Duration, Instant};
use tower_http::timeout::TimeoutBody;
use tracing::Instrument;

const REQUEST_ID_HEADER: &str = "x-request-id";

pub async fn request_context(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // A caller's W3C trace context is continued (traces on; its sampling decided here): the jobs
    // this request causes carry the request span's context. Unsampled, the request makes no
    // OpenTelemetry spans.
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::telemetry::traces::from_caller);
    let (span, unsampled) = crate::telemetry::traces::span_for(traceparent.as_deref(), || {
        tracing::info_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            request_id = %request_id,
            tenant_id = tracing::field::Empty,
            trace_id = traceparent
                .as_deref()
                .and_then(crate::telemetry::traces::trace_id_of),
            status = tracing::field::Empty,
            "otel.kind" = "server",
        )
    });
    let started = Instant::now();
    let mut response = crate::telemetry::traces::in_trace(
        unsampled,
        REQUEST_ID.scope(request_id.clone(), next.run(req)),
    )
    .instrument(span.clone())
    .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16();
    span.record("status", status);
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, latency_ms, "request finished");
        } else {
            tracing::debug!(status, latency_ms, "request finished");
        }
    });
    response
}

/// Bounds the whole request (`BACKROOM_REQUEST_TIMEOUT_SECS`): past it the caller gets 503 and the
/// handler is dropped, wherever it was waiting.
pub async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Error::TookTooLong {
            after_secs: limit.as_secs(),
        }
        .into_response(),
    }
}

/// Cuts a body that stops arriving for `idle` (a slow client holding a handler and its memory).
pub async fn body_idle_timeout(State(idle): State<Duration>, req: Request, next: Next) -> Response {
    next.run(req.map(|body| Body::new(TimeoutBody::new(idle, body))))
        .await
}

/// `CatchPanicLayer` hook: a panicking handler becomes a 500 problem; the panic is logged.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(non-string panic)");
    Error::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}
