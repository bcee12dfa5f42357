//! Logs and traces for every Mnemosyne process.
//!
//! [`init`] installs the process' `tracing` subscriber: log lines on stderr
//! (text, or JSON lines), and, when an OTLP endpoint is given, an
//! OpenTelemetry layer that exports Mnemosyne's spans to it (gRPC, batched
//! on the Tokio runtime). Off by default: with no endpoint, spans cost
//! only what `tracing` costs for a span nobody records.
//!
//! A trace follows a request across processes in W3C trace context
//! (`traceparent` and `tracestate` gRPC metadata): a client [`inject`]s the
//! current span's context into its request, a server [`adopt`]s it as the
//! parent of its own span. Sampling is decided where a trace starts (the
//! client, or a server for a request that carries no context) with
//! [`TraceConfig::sample_ratio`]; every later process follows the sampled
//! flag it receives, so a trace is exported whole or not at all.
//!
//! Only spans whose target starts with `mnemo` go to the exporter (not the
//! gRPC and HTTP libraries' own spans); the log lines follow the log filter.
//! A JSON log line written inside a traced request carries the request's
//! trace id in its span fields (`"trace_id"`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    span_processor_with_async_runtime::BatchSpanProcessor, BatchConfigBuilder, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{filter, EnvFilter, Layer as _};

/// The metadata key of W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Default share of traces a process starts that are exported.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// How long the exporter waits before sending a batch of finished spans.
const EXPORT_DELAY: Duration = Duration::from_millis(500);

/// True once [`init`] installed an exporter in this process.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Where and how much to trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// OTLP/gRPC collector URL (`http://host:4317`); `None` or empty: no
    /// export.
    pub otlp_endpoint: Option<String>,
    /// Share (0 to 1) of the traces this process starts that are sampled.
    /// Requests arriving with a trace context follow its sampled flag.
    pub sample_ratio: f64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig { otlp_endpoint: None, sample_ratio: DEFAULT_SAMPLE_RATIO }
    }
}

impl TraceConfig {
    /// An error for an endpoint that is not an http:// URL or a ratio
    /// outside [0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!("otlp-sample-ratio {} must be in [0, 1]", self.sample_ratio));
        }
        // The exporter is built without TLS: an https endpoint could never
        // be reached.
        match self.endpoint() {
            Some(e) if !e.starts_with("http://") => {
                Err(format!("otlp-endpoint {e:?} must be an http:// URL (TLS is not built in)"))
            }
            _ => Ok(()),
        }
    }

    fn endpoint(&self) -> Option<&str> {
        self.otlp_endpoint.as_deref().filter(|e| !e.is_empty())
    }
}

/// Flushes and stops the exporter when dropped (or by [`Telemetry::shutdown`]).
#[must_use = "dropping it stops the trace exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter. Blocks: call
    /// it off the async workers (e.g. in `spawn_blocking`), with the Tokio
    /// runtime still running.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("trace exporter did not shut down cleanly: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs this process' subscriber: log lines on stderr filtered by
/// `RUST_LOG` or `log_filter` (e.g. `"info,raft=warn"`), as JSON lines when
/// `json`; and, with an endpoint in `trace`, span export to it as
/// `service` (OpenTelemetry's `service.name`). Must be called inside a
/// Tokio runtime when exporting. A call in a process that already has a
/// subscriber changes nothing.
pub fn init(service: &str, log_filter: &str, json: bool, trace: &TraceConfig) -> Result<Telemetry, String> {
    use std::io::IsTerminal as _;
    trace.validate()?;
    global::set_text_map_propagator(TraceContextPropagator::new());
    if tracing::dispatcher::has_been_set() {
        return Ok(Telemetry { provider: None });
    }
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(log_filter));
    let filter = filter.map_err(|e| format!("log filter {log_filter:?}: {e}"))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        fmt.json().with_current_span(true).with_span_list(false).with_filter(filter).boxed()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).with_filter(filter).boxed()
    };
    let (traces, provider) = match trace.endpoint() {
        None => (None, None),
        Some(endpoint) => {
            let provider = provider(service, endpoint, trace.sample_ratio)?;
            let tracer = provider.tracer(service.to_string());
            let ours = filter::filter_fn(|m| m.is_span() && m.target().starts_with("mnemo"));
            (Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(ours)), Some(provider))
        }
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

/// An OTLP/gRPC exporter to `endpoint`, batched on the Tokio runtime.
fn provider(service: &str, endpoint: &str, ratio: f64) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("OTLP exporter to {endpoint}: {e}"))?;
    let batches = BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build();
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(batches)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(Resource::builder().with_service_name(service.to_string()).build())
        .build())
}

/// True if this process exports spans (see [`init`]).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Writes the context of the current span into `metadata` as W3C trace
/// context, so the server's spans join its trace. Nothing is written
/// outside a recorded span.
pub fn inject(metadata: &mut MetadataMap) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// True if `metadata` carries a trace context: the request is part of a
/// trace, and its handler should record a span even when this process does
/// not export (the span's trace id then still reaches the log lines).
pub fn carries_trace(metadata: &MetadataMap) -> bool {
    metadata.contains_key(TRACEPARENT)
}

/// The span of one gRPC call of `method` served here (named `method` in
/// traces, kind `server`, fields `region_id` and `trace_id` to fill):
/// recorded when this process exports traces or the call carries a trace
/// context, a child of that context; otherwise disabled, costing nothing.
pub fn server_span(method: &'static str, metadata: &MetadataMap) -> tracing::Span {
    if !(exporting() || carries_trace(metadata)) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "grpc_request",
        otel.name = method,
        otel.kind = "server",
        region_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    adopt(&span, metadata);
    span
}

/// A tonic client interceptor that [`inject`]s the current span's trace
/// context into every request of the client it wraps.
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateTrace;

impl tonic::service::Interceptor for PropagateTrace {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject(request.metadata_mut());
        Ok(request)
    }
}

/// Makes the trace context in `metadata` (if any) the parent of `span`, and
/// records the trace id in `span`'s `trace_id` field (declared
/// `tracing::field::Empty` by the caller) for the log lines.
pub fn adopt(span: &tracing::Span, metadata: &MetadataMap) {
    if span.is_disabled() {
        return;
    }
    let parent = global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(metadata)));
    let remote = parent.span().span_context().clone();
    if remote.is_valid() {
        span.set_parent(parent);
    }
    // With an exporter the span's own context names the trace (a new one
    // for a request that came without); without, the caller's id is all
    // there is. An id is logged only if it leads somewhere: a trace that
    // is exported, or the caller's.
    let own = span.context().span().span_context().clone();
    let trace_id = match (own.is_valid() && own.is_sampled(), remote.is_valid()) {
        (true, _) => Some(own.trace_id()),
        (false, true) => Some(remote.trace_id()),
        (false, false) => None,
    };
    if let Some(id) = trace_id {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// True if `span` belongs to a trace that is exported (sampled).
pub fn is_sampled(span: &tracing::Span) -> bool {
    !span.is_disabled() && span.context().span().span_context().is_sampled()
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(&value)) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(|k| match k {
                KeyRef::Ascii(k) => k.as_str(),
                KeyRef::Binary(k) => k.as_str(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_endpoints_and_ratios_are_refused() {
        let ok = TraceConfig { otlp_endpoint: Some("http://127.0.0.1:4317".into()), sample_ratio: 0.5 };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(TraceConfig::default().validate(), Ok(()));
        let empty = TraceConfig { otlp_endpoint: Some(String::new()), ..TraceConfig::default() };
        assert_eq!(empty.validate(), Ok(()), "an empty endpoint means off");
        let no_scheme = TraceConfig { otlp_endpoint: Some("127.0.0.1:4317".into()), ..ok.clone() };
        assert!(no_scheme.validate().unwrap_err().contains("http://"));
        let tls = TraceConfig { otlp_endpoint: Some("https://collector:4317".into()), ..ok.clone() };
        assert!(tls.validate().unwrap_err().contains("TLS"));
        let ratio = TraceConfig { sample_ratio: 1.5, ..ok };
        assert!(ratio.validate().unwrap_err().contains("[0, 1]"));
    }

    #[test]
    fn a_traceparent_round_trips_through_grpc_metadata() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut md = MetadataMap::new();
        md.insert(TRACEPARENT, header.parse().unwrap());
        assert!(carries_trace(&md));
        let cx = global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(&md)));
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert!(sc.is_sampled() && sc.is_remote());
        let mut out = MetadataMap::new();
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(&mut out)));
        assert_eq!(out.get(TRACEPARENT).and_then(|v| v.to_str().ok()), Some(header));
        assert!(!carries_trace(&MetadataMap::new()));
    }
}
