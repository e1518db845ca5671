//! Traces over OTLP/gRPC (MeshConfig `tracing`), shared by mesh-proxy and
//! meshd. [`Traces`] follows the committed settings: its exporter is built
//! when tracing is turned on, rebuilt when the collector or the sampling
//! rate changes, and shut down when it is turned off — no restart. The
//! trace context of a request is read from its headers (W3C `traceparent`
//! and `tracestate`; B3's `x-b3-*` when there is no `traceparent`) and
//! written back for the next hop.
//!
//! A trace is sampled where it starts, at `sample_percent`; a request that
//! arrives with a sampling decision keeps it (parent-based sampling), so
//! the hops of one request are all recorded or none is.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider};
use raftmesh_api::Tracing;

/// Sampling when the settings name none.
pub const DEFAULT_SAMPLE_PERCENT: f64 = 1.0;

/// How long an export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Spans held for export at most (beyond, new ones are dropped: a slow or
/// absent collector never grows the program).
const MAX_QUEUE: usize = 4096;

/// An exporter in force.
pub struct Active {
    settings: Tracing,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The share of new traces sampled, 0–1.
    ratio: f64,
}

impl Active {
    /// The context a request carries ([`extract`]); a B3 request that left
    /// the sampling decision to us (no `x-b3-sampled`) is decided here,
    /// at this exporter's rate, keeping its trace id.
    pub fn parent(&self, headers: &HeaderMap) -> Context {
        extract_deciding(headers, Some(self.ratio))
    }

    /// Starts a span of `kind` under `parent`.
    pub fn start(&self, kind: SpanKind, name: String, parent: &Context) -> Hop {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&self.tracer, parent);
        Hop {
            cx: parent.with_span(span),
        }
    }
}

/// One program's traces.
pub struct Traces {
    resource: opentelemetry_sdk::Resource,
    current: ArcSwapOption<Active>,
    /// Serialises reconfigurations.
    changing: Mutex<()>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Traces")
    }
}

impl Traces {
    /// Traces of `service` (the OTel `service.name`) in `namespace`, from
    /// `instance` (none when empty).
    pub fn new(service: &str, namespace: &str, instance: &str) -> Self {
        let mut attrs = vec![KeyValue::new("service.namespace", namespace.to_string())];
        if !instance.is_empty() {
            attrs.push(KeyValue::new("service.instance.id", instance.to_string()));
        }
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(service.to_string())
            .with_attributes(attrs)
            .build();
        Self {
            resource,
            current: ArcSwapOption::empty(),
            changing: Mutex::new(()),
        }
    }

    /// The exporter in force, if tracing is on.
    pub fn active(&self) -> Option<Arc<Active>> {
        self.current.load_full()
    }

    /// A span `name` inside the span current on this task (attached with
    /// `opentelemetry::context::FutureExt::with_context`); `None` with
    /// tracing off or outside any span (work nobody traces stays out).
    pub fn child(&self, name: &str) -> Option<Hop> {
        let active = self.current.load_full()?;
        let cx = Context::current();
        cx.has_active_span()
            .then(|| active.start(SpanKind::Internal, name.to_string(), &cx))
    }

    /// Follows `settings` (`None`: off). Must run inside a tokio runtime
    /// (the exporter's channel and batch task live there).
    pub fn configure(&self, settings: Option<&Tracing>) {
        let _one = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.current.load();
        if now.as_ref().map(|a| &a.settings) == settings {
            return;
        }
        let next = match settings {
            None => None,
            Some(s) => match self.build(s) {
                Ok(a) => {
                    tracing::info!(collector = %s.collector, sample_percent = s.sample_percent.map_or(DEFAULT_SAMPLE_PERCENT, |p| p.percent()), "exporting traces over OTLP");
                    Some(Arc::new(a))
                }
                Err(e) => {
                    tracing::warn!(collector = %s.collector, error = %e, "cannot export traces to this collector; tracing stays off until MeshConfig tracing changes");
                    None
                }
            },
        };
        if let Some(old) = self.current.swap(next) {
            retire(old);
        }
    }

    fn build(&self, s: &Tracing) -> Result<Active, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", s.collector))
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let batch = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUE)
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
        let ratio = s
            .sample_percent
            .map_or(DEFAULT_SAMPLE_PERCENT / 100.0, |p| p.ratio());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(self.resource.clone())
            .build();
        let tracer = provider.tracer("raftmesh");
        Ok(Active {
            settings: s.clone(),
            provider,
            tracer,
            ratio,
        })
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(old) = self.current.swap(None) {
            retire(old);
        }
    }
}

/// Shuts an exporter down: its last spans are sent, off the runtime's
/// threads (the SDK blocks until its batch task answers, which would
/// deadlock a runtime thread that task needs).
fn retire(old: Arc<Active>) {
    let provider = old.provider.clone();
    drop(old);
    let stop = move || {
        let _ = provider.shutdown();
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(stop);
        }
        Err(_) => {
            std::thread::spawn(stop);
        }
    }
}

/// A span of one hop, ended when dropped.
pub struct Hop {
    cx: Context,
}

impl Hop {
    /// Writes this span's context into `headers` (`traceparent`, its
    /// `tracestate`, and B3's headers when the request carried them), for
    /// the next hop.
    pub fn inject(&self, headers: &mut HeaderMap) {
        TraceContextPropagator::new().inject_context(&self.cx, &mut Headers(headers));
        if headers.contains_key("x-b3-traceid") {
            let sc = self.cx.span().span_context().clone();
            let mut set = |k: &'static str, v: String| {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    headers.insert(HeaderName::from_static(k), v);
                }
            };
            set("x-b3-traceid", sc.trace_id().to_string());
            set("x-b3-spanid", sc.span_id().to_string());
            set(
                "x-b3-sampled",
                if sc.is_sampled() { "1" } else { "0" }.to_string(),
            );
            headers.remove("x-b3-parentspanid");
        }
    }

    /// The context of this span (to run work inside it).
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Whether the span is recorded (sampled).
    pub fn recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// Adds attributes.
    pub fn set(&self, attrs: Vec<KeyValue>) {
        if self.recording() {
            self.cx.span().set_attributes(attrs);
        }
    }

    /// Marks the span failed.
    pub fn fail(&self, why: String) {
        if self.recording() {
            self.cx.span().set_status(Status::error(why));
        }
    }

    /// The span's trace id (hex).
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// The context a request carries: its W3C `traceparent` (and
/// `tracestate`), else B3's `x-b3-traceid`/`x-b3-spanid`/`x-b3-sampled`;
/// an empty context (a new trace) when neither is valid.
pub fn extract(headers: &HeaderMap) -> Context {
    extract_deciding(headers, None)
}

/// [`extract`]; with `ratio`, a B3 request without a sampling decision is
/// sampled by its trace id at that rate (as a root would be), else it is
/// not sampled.
fn extract_deciding(headers: &HeaderMap, ratio: Option<f64>) -> Context {
    let cx = TraceContextPropagator::new().extract(&ReadHeaders(headers));
    if cx.span().span_context().is_valid() {
        return cx;
    }
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    let (Some(t), Some(s)) = (get("x-b3-traceid"), get("x-b3-spanid")) else {
        return Context::new();
    };
    let hex =
        |v: &str, n: &[usize]| n.contains(&v.len()) && v.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(t, &[16, 32]) || !hex(s, &[16]) {
        return Context::new();
    }
    let trace = format!("{t:0>32}");
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&trace), SpanId::from_hex(s)) else {
        return Context::new();
    };
    let sampled = match (get("x-b3-sampled"), get("x-b3-flags")) {
        (_, Some("1")) | (Some("1" | "true"), _) => true,
        (None, None) => ratio.is_some_and(|r| by_ratio(trace_id, r)),
        _ => false,
    };
    let sc = SpanContext::new(
        trace_id,
        span_id,
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    );
    if !sc.is_valid() {
        return Context::new();
    }
    Context::new().with_remote_span_context(sc)
}

/// Whether a trace id falls in the sampled share `ratio` (the same rule as
/// the SDK's trace-id-ratio sampler: its low 64 bits, halved, below
/// `ratio` of 2^63).
fn by_ratio(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes([
        bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
    ]);
    (low >> 1) < (ratio.max(0.0) * (1u64 << 63) as f64) as u64
}

/// A header map as the propagator reads and writes it.
struct Headers<'a>(&'a mut HeaderMap);

/// Read-only view for extraction.
struct ReadHeaders<'a>(&'a HeaderMap);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_of(cx: &Context) -> (String, String, bool) {
        let sc = cx.span().span_context().clone();
        (
            sc.trace_id().to_string(),
            sc.span_id().to_string(),
            sc.is_sampled(),
        )
    }

    #[test]
    fn the_context_comes_from_traceparent_else_b3_else_nowhere() {
        let mut h = HeaderMap::new();
        assert!(!extract(&h).span().span_context().is_valid());
        h.insert("x-b3-traceid", "80f198ee56343ba8".parse().unwrap());
        h.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().unwrap());
        h.insert("x-b3-sampled", "1".parse().unwrap());
        assert_eq!(
            span_of(&extract(&h)),
            (
                "000000000000000080f198ee56343ba8".into(),
                "e457b5a2e4d86bd1".into(),
                true
            )
        );
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            span_of(&extract(&h)),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into(),
                false
            )
        );
        // No B3 decision: decided at the exporter's rate, trace id kept.
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", "80f198ee56343ba8".parse().unwrap());
        h.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().unwrap());
        assert!(!span_of(&extract(&h)).2);
        assert!(span_of(&extract_deciding(&h, Some(1.0))).2);
        assert!(!span_of(&extract_deciding(&h, Some(0.0))).2);
        assert_eq!(
            span_of(&extract_deciding(&h, Some(1.0))).0,
            "000000000000000080f198ee56343ba8"
        );
        // Malformed values start a new trace.
        for (k, v) in [
            ("traceparent", "00-zz-00f067aa0ba902b7-01"),
            ("x-b3-traceid", "not-hex"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(k, v.parse().unwrap());
            h.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().unwrap());
            assert!(!extract(&h).span().span_context().is_valid(), "{k}: {v}");
        }
    }
}
