//! OpenTelemetry traces: one trace from a tenant's request through every job it causes.
//!
//! A request's span continues the caller's W3C `traceparent` (or starts a trace). Whatever is
//! enqueued inside a span carries that span's context: a job pushed directly, an outbox row (the
//! relay's span for it continues the request's trace, and the job continues the relay's span), a
//! dependent, a group's follow-up and a webhook delivery (an outbox row too). The queue stores it
//! with the job as a `traceparent` string, and each run of the job is a span, child of it: so the
//! retries of a job are spans of the same trace. Spans inside a job (a ledger transaction, a PDF
//! render, an SMTP send, a forecast chunk, a webhook call) are ordinary `tracing` spans.
//!
//! Off by default. On when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`). Export is
//! OTLP over HTTP/protobuf, batched by the SDK's batch processor on a thread of its own, with a
//! bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2,048 spans by default): when the collector is slow
//! or down, spans past the bound are dropped, and no request or job ever waits for it. Sampling
//! follows `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`; an unsampled trace still carries its
//! trace id from request to jobs, so the id a tenant quotes is always the same. The work of an
//! unsampled trace (a job run, a relay, a ledger batch, a request whose caller's trace we do not
//! sample) makes no OpenTelemetry spans at all (see [`unsampled`]): only its `traceparent` travels
//! (in the `traces` scenario of `benches/queue.rs`, a run at sampling 0.01 took 17.0 µs of the
//! worker's CPU against 16.2 with traces off).

use crate::config::SettingsError;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::sync::Arc;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};

/// How traces are exported; read from the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// Where spans go (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` followed by `/v1/traces`).
    pub endpoint: String,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on).
    pub sampler: SamplerSetting,
    /// `OTEL_SERVICE_NAME` (default `backroom`).
    pub service_name: String,
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds
    /// (default 10,000): the longest one export may take.
    pub timeout: Duration,
}

/// The samplers of the OpenTelemetry specification that need no remote service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl TraceSettings {
    /// `None` when traces are off. Errors name the variable at fault.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TraceSettings>, SettingsError> {
        let err = |var: &'static str, message: String| SettingsError { var, message };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(err(
                    "OTEL_TRACES_EXPORTER",
                    format!("'{other}' is not one of: otlp, none"),
                ));
            }
        }
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.trim().to_string()),
            (None, Some(base)) => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim().trim_end_matches('/')),
            ),
            (None, None) => return Ok(None),
        };
        let (var, endpoint) = endpoint;
        let parsed = url::Url::parse(&endpoint)
            .map_err(|e| err(var, format!("'{endpoint}' is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(err(
                var,
                format!("'{endpoint}' is not an http:// or https:// URL with a host"),
            ));
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = get(var)
                && protocol.trim() != "http/protobuf"
            {
                return Err(err(
                    var,
                    format!(
                        "'{}' is not supported: only http/protobuf is",
                        protocol.trim()
                    ),
                ));
            }
        }
        let timeout = match (
            get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
            get("OTEL_EXPORTER_OTLP_TIMEOUT"),
        ) {
            (Some(ms), _) => parse_timeout("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", &ms)?,
            (None, Some(ms)) => parse_timeout("OTEL_EXPORTER_OTLP_TIMEOUT", &ms)?,
            (None, None) => Duration::from_secs(10),
        };
        let arg = || -> Result<f64, SettingsError> {
            let raw = get("OTEL_TRACES_SAMPLER_ARG").ok_or_else(|| {
                err(
                    "OTEL_TRACES_SAMPLER_ARG",
                    "is not set (a ratio sampler needs a fraction from 0 to 1)".into(),
                )
            })?;
            raw.trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    err(
                        "OTEL_TRACES_SAMPLER_ARG",
                        format!("'{raw}' is not a fraction from 0 to 1"),
                    )
                })
        };
        let sampler = match get("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
            None | Some("parentbased_always_on") => SamplerSetting::ParentBasedAlwaysOn,
            Some("always_on") => SamplerSetting::AlwaysOn,
            Some("always_off") => SamplerSetting::AlwaysOff,
            Some("parentbased_always_off") => SamplerSetting::ParentBasedAlwaysOff,
            Some("traceidratio") => SamplerSetting::TraceIdRatio(arg()?),
            Some("parentbased_traceidratio") => SamplerSetting::ParentBasedTraceIdRatio(arg()?),
            Some(other) => {
                return Err(err(
                    "OTEL_TRACES_SAMPLER",
                    format!(
                        "'{other}' is not one of: always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
                    ),
                ));
            }
        };
        let service_name = get("OTEL_SERVICE_NAME")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "backroom".into());
        Ok(Some(TraceSettings {
            endpoint,
            sampler,
            service_name,
            timeout,
        }))
    }

    /// The share of new traces sampled: what a root span's sampler decides.
    fn root_ratio(&self) -> f64 {
        match self.sampler {
            SamplerSetting::AlwaysOn | SamplerSetting::ParentBasedAlwaysOn => 1.0,
            SamplerSetting::AlwaysOff | SamplerSetting::ParentBasedAlwaysOff => 0.0,
            SamplerSetting::TraceIdRatio(r) | SamplerSetting::ParentBasedTraceIdRatio(r) => r,
        }
    }

    fn sampler(&self) -> Sampler {
        match self.sampler {
            SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
            SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
            SamplerSetting::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            SamplerSetting::ParentBasedAlwaysOn => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
            }
            SamplerSetting::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerSetting::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

fn parse_timeout(var: &'static str, raw: &str) -> Result<Duration, SettingsError> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| (1..=600_000).contains(ms))
        .map(Duration::from_millis)
        .ok_or_else(|| SettingsError {
            var,
            message: format!("'{raw}' is not a number of milliseconds from 1 to 600000"),
        })
}

/// The tracer provider: OTLP/HTTP export through the SDK's batch processor (which reads the
/// `OTEL_BSP_*` variables: queue size, batch size, delay, export timeout).
pub(super) fn provider(settings: &TraceSettings) -> anyhow::Result<SdkTracerProvider> {
    let _ = CALLER_SAMPLE_RATIO.set(settings.root_ratio());
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.timeout)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(settings.sampler())
        .with_resource(resource)
        .build())
}

/// The `tracing` layer that turns this crate's spans (at info and above) into OpenTelemetry
/// spans, except inside the work of an unsampled trace (see [`unsampled`]). Other crates' spans
/// stay out of traces (they are logs' business). The OpenTelemetry context is read from spans
/// explicitly (`traceparent_of`), never from a thread's "current context", so it is not
/// attached at every poll.
pub(super) fn layer<S>(provider: &SdkTracerProvider) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    let tracer = provider.tracer("backroom");
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_context_activation(false)
        .with_filter(SampledOnly(
            Targets::new()
                .with_default(LevelFilter::OFF)
                .with_target("backroom", LevelFilter::INFO),
        ))
        .boxed()
}

/// The OpenTelemetry layer's filter: this crate's spans and events, but none made inside the
/// work of an unsampled trace. Such a span would cost as much as an exported one (a span
/// builder, its attributes, a sampling decision) and export nothing.
struct SampledOnly(Targets);

impl<S> tracing_subscriber::layer::Filter<S> for SampledOnly {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        tracing_subscriber::layer::Filter::<S>::enabled(&self.0, meta, cx) && !in_unsampled()
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Asked again at every span: whether it is inside unsampled work changes.
        if self.0.would_enable(meta.target(), meta.level()) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        tracing_subscriber::layer::Filter::<S>::max_level_hint(&self.0)
    }
}

tokio::task_local! {
    /// While the work of an unsampled trace runs (a job run, a relay, a request): its
    /// `traceparent`, which what it enqueues carries on.
    static UNSAMPLED: Option<Arc<str>>;
}

/// `traceparent` when it names a trace that is not sampled and traces are on: the work done
/// for it then makes no OpenTelemetry spans (see [`in_trace`]), though its trace id still goes
/// into its log lines and on to everything it enqueues.
pub fn unsampled(traceparent: Option<&str>) -> Option<Arc<str>> {
    let traceparent = traceparent?;
    (traces_on() && !is_sampled(traceparent)).then(|| traceparent.into())
}

/// Whether this process exports traces (its exporter was built).
fn traces_on() -> bool {
    CALLER_SAMPLE_RATIO.get().is_some()
}

/// Whether a well-formed `traceparent` has its sampled flag set.
fn is_sampled(traceparent: &str) -> bool {
    traceparent
        .rsplit('-')
        .next()
        .and_then(|flags| u8::from_str_radix(flags, 16).ok())
        .is_some_and(|flags| flags & 1 == 1)
}

/// The span of work done for `traceparent` (a request, a relay, a job run), made by `make` and
/// made a child of `traceparent` ([`continue_trace`]); returned with the trace's [`unsampled`]
/// value, to run the work in with [`in_trace`]. `make` gives the span's `trace_id` field from
/// `traceparent` itself (see [`continue_trace`]).
pub fn span_for(
    traceparent: Option<&str>,
    make: impl FnOnce() -> tracing::Span,
) -> (tracing::Span, Option<Arc<str>>) {
    let unsampled = unsampled(traceparent);
    let span = in_trace_sync(unsampled.clone(), || {
        let span = make();
        continue_trace(&span, traceparent);
        span
    });
    (span, unsampled)
}

/// Runs `work` as the work of `unsampled`'s trace (see [`unsampled`]); as is when `None`.
pub async fn in_trace<F: std::future::Future>(unsampled: Option<Arc<str>>, work: F) -> F::Output {
    UNSAMPLED.scope(unsampled, work).await
}

/// [`in_trace`] for synchronous work, such as making the span of unsampled work.
pub fn in_trace_sync<R>(unsampled: Option<Arc<str>>, work: impl FnOnce() -> R) -> R {
    UNSAMPLED.sync_scope(unsampled, work)
}

/// The unsampled trace whose work runs here, if any (to carry into a blocking thread).
pub fn current_unsampled() -> Option<Arc<str>> {
    UNSAMPLED.try_with(Option::clone).ok().flatten()
}

fn in_unsampled() -> bool {
    UNSAMPLED.try_with(Option::is_some).unwrap_or(false)
}

/// The share of callers' traces sampled (set with the exporter; none while traces are off).
static CALLER_SAMPLE_RATIO: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// A caller's `traceparent` as this service continues it: its trace and parent span kept, its
/// sampled flag decided here, at the configured share, rather than by the caller. A tenant thus
/// cannot make its own traces exported at a higher rate than the operator chose (crowding
/// other tenants' spans out of the exporter's bounded queue); a request without one starts a
/// trace sampled the same way. `None` for anything but a well-formed W3C version-00 value.
pub fn from_caller(traceparent: &str) -> Option<String> {
    let cx = context_of(traceparent.trim())?;
    let sc = cx.span().span_context().clone();
    let ratio = CALLER_SAMPLE_RATIO.get().copied().unwrap_or(0.0);
    let sampled = ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio);
    Some(format_traceparent(sc.trace_id(), sc.span_id(), sampled))
}

/// A W3C version-00 `traceparent`.
fn format_traceparent(
    trace_id: opentelemetry::trace::TraceId,
    span_id: opentelemetry::trace::SpanId,
    sampled: bool,
) -> String {
    format!(
        "00-{trace_id}-{span_id}-{}",
        if sampled { "01" } else { "00" }
    )
}

/// The W3C `traceparent` of the current span, when it is part of a trace (traces on), or of the
/// unsampled trace whose work runs here; what a job enqueued here stores.
pub fn current_traceparent() -> Option<String> {
    match current_unsampled() {
        Some(traceparent) => Some(traceparent.to_string()),
        None => traceparent_of(&tracing::Span::current()),
    }
}

/// The W3C `traceparent` of `span`, when it is part of a trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| format_traceparent(sc.trace_id(), sc.span_id(), sc.is_sampled()))
}

/// Makes `span` a child of `traceparent` (a valid W3C value; anything else is ignored and the
/// span starts its own trace). The span's `trace_id` field (when it declares one) is given the
/// trace's id by its maker when it has a `traceparent` (recorded later, a field costs the JSON
/// logs a re-serialization of all the span's fields), and is recorded here only when the span
/// starts a trace of its own.
fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if span.is_disabled() || in_unsampled() {
        // Unsampled work's span is no OpenTelemetry span: its trace id is all there is.
        return;
    }
    match traceparent.and_then(context_of) {
        Some(cx) => {
            let _ = span.set_parent(cx);
        }
        None => {
            if let Some(own) = traceparent_of(span) {
                span.record("trace_id", trace_id_of(&own).unwrap_or_default());
            }
        }
    }
}

/// Whether the work of `unsampled` (see [`unsampled`]) makes OpenTelemetry spans: traces are on
/// and its trace is sampled. Fields only traces read are recorded only then.
pub fn makes_spans(unsampled: &Option<Arc<str>>) -> bool {
    unsampled.is_none() && traces_on()
}

/// Puts a job run's outcome on its OpenTelemetry span: the `outcome` attribute, and an error
/// status unless it is `succeeded`. Set on the span directly rather than recorded as a `tracing`
/// field: a recorded field makes the JSON log layer serialize all of the span's fields again,
/// which was a third of what traces cost the stock workload at sampling 1.0 (perf: 3.2 % of the
/// process's CPU in the log layer's `on_record`). The log line of a run that did not succeed
/// names its outcome itself.
pub fn set_outcome(span: &tracing::Span, outcome: &'static str) {
    if span.is_disabled() {
        return;
    }
    span.set_attribute("outcome", outcome);
    if outcome != "succeeded" {
        span.set_status(opentelemetry::trace::Status::error(""));
    }
}

/// Makes `span` a child of another span (one serving several, as a batch), recording its
/// trace id; nothing when traces are off.
pub fn continue_span(span: &tracing::Span, parent: &tracing::Span) {
    if span.is_disabled() || parent.is_disabled() {
        return;
    }
    let cx = parent.context();
    let trace_id = cx.span().span_context().trace_id();
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// Links `span` to another span (one span serving several traces, as a batch).
pub fn link_span(span: &tracing::Span, other: &tracing::Span) {
    if span.is_disabled() || other.is_disabled() {
        return;
    }
    let sc = other.context().span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}

/// The (remote) context a well-formed version-00 `traceparent` names.
fn context_of(traceparent: &str) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let mut parts = traceparent.split('-');
    let (version, _trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id_of(traceparent)?).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    sc.is_valid()
        .then(|| opentelemetry::Context::new().with_remote_span_context(sc))
}

/// The trace id (32 lowercase hex digits) in a `traceparent`, when it is well formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32
        && trace_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && trace_id.bytes().any(|b| b != b'0'))
    .then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, SettingsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TraceSettings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_set() {
        assert_eq!(settings(&[]).unwrap(), None);
        let on = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(on.sampler, SamplerSetting::ParentBasedAlwaysOn);
        assert_eq!(on.service_name, "backroom");
        let traces_url = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:9999/x"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(traces_url.endpoint, "http://b:9999/x");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), off]).unwrap(),
                None
            );
        }
    }

    #[test]
    fn bad_otel_settings_name_their_variable() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318");
        for (vars, var) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![base, ("OTEL_TRACES_EXPORTER", "jaeger")],
                "OTEL_TRACES_EXPORTER",
            ),
            (
                vec![base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![base, ("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![base, ("OTEL_TRACES_SAMPLER", "traceidratio")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![
                    base,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")],
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ),
        ] {
            assert_eq!(settings(&vars).unwrap_err().var, var, "{vars:?}");
        }
        let ratio = settings(&[
            base,
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(ratio.sampler, SamplerSetting::ParentBasedTraceIdRatio(0.01));
    }

    #[test]
    fn trace_ids_are_read_only_from_well_formed_traceparents() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id_of(&format!("00-{id}-00f067aa0ba902b7-01")),
            Some(id)
        );
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id_of("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("garbage"), None);
    }

    #[test]
    fn a_callers_traceparent_keeps_its_ids_but_not_its_sampling_decision() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        // No exporter in this test process: the configured share is none, so even a caller that
        // asks for sampling is not sampled; its trace and parent are kept.
        assert_eq!(
            from_caller(&format!("00-{id}-00F067AA0BA902B7-01")).as_deref(),
            Some(format!("00-{id}-00f067aa0ba902b7-00").as_str())
        );
        for bad in [
            format!("01-{id}-00f067aa0ba902b7-01"),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{id}-00f067aa0ba902b7"),
            format!("00-{id}-00f067aa0ba902b7-01-extra"),
            "00-xyz-00f067aa0ba902b7-01".to_string(),
        ] {
            assert_eq!(from_caller(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_sampled_flag_is_read_from_the_last_field() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert!(is_sampled(&format!("00-{id}-00f067aa0ba902b7-01")));
        assert!(is_sampled(&format!("00-{id}-00f067aa0ba902b7-03")));
        assert!(!is_sampled(&format!("00-{id}-00f067aa0ba902b7-00")));
        assert!(!is_sampled(&format!("00-{id}-00f067aa0ba902b7-02")));
        assert!(!is_sampled(&format!("00-{id}-00f067aa0ba902b7-zz")));
    }

    #[test]
    fn a_traceparent_names_a_remote_context_only_when_well_formed() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let cx = context_of(&format!("00-{id}-00f067aa0ba902b7-01")).unwrap();
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), id);
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(
            !context_of(&format!("00-{id}-00f067aa0ba902b7-00"))
                .unwrap()
                .span()
                .span_context()
                .is_sampled()
        );
        for bad in [
            format!("00-{id}-00f067aa0ba902b7"),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{id}-00f067aa0ba902bz-01"),
            format!("00-{id}-00f067aa0ba902b7-01-x"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string(),
        ] {
            assert!(context_of(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_a_tracing_layer_nothing_is_propagated() {
        let span = tracing::info_span!("request", trace_id = tracing::field::Empty);
        assert_eq!(traceparent_of(&span), None);
    }
}
