//! W3C trace context across NATS: the `traceparent` header that makes one
//! message one trace through gateway, JetStream, persister and delivery.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header name W3C Trace Context gives the propagated span.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` value for `span`, or `None` when OpenTelemetry is off.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.traceparent
}

/// Makes `span` a child of the span a `traceparent` value names; a missing
/// or malformed value leaves `span` the root of a new trace.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = remote_context(traceparent) {
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the span a `traceparent` names (a batch that serves many
/// traces links to each instead of belonging to one).
pub fn link_to(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = remote_context(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// The `traceparent` header of a NATS message, if any.
pub fn from_headers(headers: Option<&HeaderMap>) -> Option<&str> {
    headers?.get(TRACEPARENT).map(|v| v.as_str())
}

fn remote_context(traceparent: Option<&str>) -> Option<opentelemetry::Context> {
    let carrier = Carrier {
        traceparent: Some(traceparent?.to_owned()),
    };
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The one field of W3C Trace Context natter carries (no `tracestate`).
#[derive(Default)]
struct Carrier {
    traceparent: Option<String>,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.traceparent = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT)
            .then_some(self.traceparent.as_deref())
            .flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_traceparent_starts_no_trace() {
        assert!(remote_context(Some("not-a-traceparent")).is_none());
        assert!(remote_context(None).is_none());
    }

    #[test]
    fn valid_traceparent_is_understood() {
        let cx = remote_context(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .expect("valid");
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
