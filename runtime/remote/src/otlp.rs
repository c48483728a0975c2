//! Spans exported over OTLP/HTTP (protobuf) with opentelemetry-otlp: each
//! hop's span of a sampled request (`up` and a router: the server span of
//! `/score`; a node: its span under the router's), with the trace and span
//! ids the client sees in `traceparent`. The SDK's batch processor keeps a
//! bounded queue (2048 spans, dropped when full) and exports from its own
//! thread, so the request path only hands a span over.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

use crate::trace::Span;

/// Where spans go.
#[derive(Debug)]
pub struct SpanExport {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

/// One finished span, as the request path saw it.
pub struct Finished<'a> {
    pub span: &'a Span,
    pub name: &'static str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// The error, for a failed request (5xx).
    pub error: Option<String>,
}

impl SpanExport {
    /// Exports to `endpoint`, the collector's base URL
    /// (`http://127.0.0.1:4318`, as OTEL_EXPORTER_OTLP_ENDPOINT: spans go to
    /// its `/v1/traces`), naming this process `service`.
    pub fn start(endpoint: &str, service: &str) -> Result<SpanExport, String> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        if !url.starts_with("http://") {
            return Err(format!(
                "--otlp-endpoint {endpoint}: only plain http:// collectors are supported (a local agent or sidecar)"
            ));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&url)
            .build()
            .map_err(|e| format!("OTLP exporter for {url}: {e}"))?;
        let mut processor = BatchSpanProcessor::builder(exporter).build();
        processor.set_resource(&Resource::builder().with_service_name(service.to_string()).build());
        let scope = InstrumentationScope::builder("wasmscore")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        tracing::info!(endpoint = %url, service, "exporting spans over OTLP/HTTP");
        Ok(SpanExport { processor, scope })
    }

    /// Hands a span to the exporter (sampled traces only; never blocks).
    pub fn record(&self, f: Finished<'_>) {
        let s = f.span;
        if !s.record {
            return;
        }
        let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&s.trace_id), SpanId::from_hex(&s.span_id)) else {
            return;
        };
        let parent = s.parent_id.as_deref().and_then(|p| SpanId::from_hex(p).ok());
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, false, TraceState::default()),
            parent_span_id: parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(f.name),
            start_time: f.start,
            end_time: f.end,
            attributes: f.attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: match f.error {
                Some(e) => Status::error(e),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// Exports what is queued (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown() {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}
