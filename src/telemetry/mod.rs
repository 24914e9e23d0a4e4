//! Logging and tracing set-up: JSON lines in production, readable lines on a terminal, and, when
//! the standard `OTEL_*` variables name a collector, OpenTelemetry traces exported over OTLP.
//!
//! Called once by `main`; tests stay silent unless `TEST_LOG` is set (see `tests/suite/helpers.rs`).
//! Traces are off by default; [`traces`] says how a trace follows a request through the outbox
//! and the queues into every job it causes.

pub mod traces;

use crate::config::LogFormat;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use traces::TraceSettings;

/// The exporter's provider, kept to flush what is buffered when the process ends.
static PROVIDER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber: logs filtered by `filter`, and traces exported as `traces`
/// says (none when `None`). A second call (as in tests) is a no-op.
pub fn init(format: LogFormat, filter: &str, traces: Option<&TraceSettings>) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let otel = traces.and_then(|settings| match traces::provider(settings) {
        Ok(provider) => {
            let layer = traces::layer(&provider);
            let _ = PROVIDER.set(provider);
            Some(layer)
        }
        Err(e) => {
            eprintln!("warning: traces are off: cannot build the OTLP exporter: {e}");
            None
        }
    });
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel)
        .try_init();
}

/// Exports the spans still buffered (waiting at most the exporter's timeout) and stops the
/// exporter. Called by `main` once the runtime has stopped; nothing when traces are off.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        eprintln!("warning: the last traces were not exported: {e}");
    }
}
