//! One message, one trace: the W3C `traceparent` that carries it through
//! gateway, JetStream, persister and delivery, and the [`Trace`] each step
//! holds.
//!
//! Whether a trace is sampled is decided once, where it starts or arrives,
//! before anything is built. A sampled trace is made of `tracing` spans
//! that the OpenTelemetry layer exports. An unsampled one (every trace when
//! no collector is set) builds no span at all: it keeps its ids, which its
//! log lines carry and its `traceparent` passes on. Spans were the largest
//! single cost of the gateway's own code per message (BENCHMARKS.md).

use async_nats::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::SamplerKind;

/// The header name W3C Trace Context gives the propagated span.
pub const TRACEPARENT: &str = "traceparent";

/// The sampling of this process, set once with its subscriber; unset when
/// OpenTelemetry is off.
static SAMPLING: OnceLock<Sampling> = OnceLock::new();

thread_local! {
    /// The unsampled trace whose work this thread is doing right now, for
    /// the log formatter.
    static UNSAMPLED: Cell<Option<Ids>> = const { Cell::new(None) };
}

/// Which traces get spans, decided as OpenTelemetry's samplers decide
/// (`OTEL_TRACES_SAMPLER`): a root by its rule, a continued trace by its
/// parent's sampled flag when the rule follows parents.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    root: Rule,
    follow_parent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Always,
    Never,
    /// The trace-id ratio rule: sampled when the trace id's low 63 bits
    /// fall below this bound (the ratio times 2^63).
    Below(u64),
}

impl Sampling {
    /// Every trace is sampled.
    pub fn always() -> Self {
        Sampling {
            root: Rule::Always,
            follow_parent: false,
        }
    }

    /// No trace is sampled: ids only.
    pub fn never() -> Self {
        Sampling {
            root: Rule::Never,
            follow_parent: false,
        }
    }

    /// The sampler `OTEL_TRACES_SAMPLER` names, with its ratio argument.
    pub fn of(kind: SamplerKind, ratio: f64) -> Self {
        // The ratio times 2^63; the `as` saturates, and a NaN is 0.
        let below = (ratio.clamp(0.0, 1.0) * 9_223_372_036_854_775_808.0) as u64;
        let (root, follow_parent) = match kind {
            SamplerKind::AlwaysOn => (Rule::Always, false),
            SamplerKind::AlwaysOff => (Rule::Never, false),
            SamplerKind::TraceIdRatio => (Rule::Below(below), false),
            SamplerKind::ParentBasedAlwaysOn => (Rule::Always, true),
            SamplerKind::ParentBasedAlwaysOff => (Rule::Never, true),
            SamplerKind::ParentBasedTraceIdRatio => (Rule::Below(below), true),
        };
        Sampling {
            root,
            follow_parent,
        }
    }

    /// Whether the trace `trace_id` is sampled here, given its parent's
    /// sampled flag if it continues one.
    fn samples(&self, parent_sampled: Option<bool>, trace_id: TraceId) -> bool {
        if self.follow_parent
            && let Some(sampled) = parent_sampled
        {
            return sampled;
        }
        match self.root {
            Rule::Always => true,
            Rule::Never => false,
            Rule::Below(bound) => {
                let low = u128::from_be_bytes(trace_id.to_bytes()) as u64;
                (low >> 1) < bound
            }
        }
    }

    /// Makes this the process's sampling; the first call wins.
    pub(crate) fn install(self) {
        let _ = SAMPLING.set(self);
    }
}

/// A trace's ids, without a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ids {
    trace_id: TraceId,
    span_id: SpanId,
}

/// One step's part in a trace: a `tracing` span when the trace is sampled
/// (or when OpenTelemetry is off: a span for the logs alone, which costs
/// nothing unless a log filter wants it), its ids otherwise.
#[derive(Clone, Debug)]
pub struct Trace(Kind);

#[derive(Clone, Debug)]
enum Kind {
    Span(tracing::Span),
    Unsampled(Ids),
}

impl Trace {
    /// A new trace, rooted at the span `make` builds if it is sampled.
    pub fn start(make: impl FnOnce() -> tracing::Span) -> Trace {
        Trace::decide(None, make)
    }

    /// Continues the trace a `traceparent` value names, with the span
    /// `make` builds if it is sampled; a missing or malformed value starts
    /// a new trace.
    pub fn continue_from(traceparent: Option<&str>, make: impl FnOnce() -> tracing::Span) -> Trace {
        Trace::decide(traceparent.and_then(Parent::parse), make)
    }

    fn decide(parent: Option<Parent>, make: impl FnOnce() -> tracing::Span) -> Trace {
        let Some(sampling) = SAMPLING.get() else {
            return Trace(Kind::Span(make()));
        };
        let ids = RandomIdGenerator::default();
        let trace_id = parent.map_or_else(|| ids.new_trace_id(), |p| p.trace_id);
        if !sampling.samples(parent.map(|p| p.sampled), trace_id) {
            return Trace(Kind::Unsampled(Ids {
                trace_id,
                span_id: ids.new_span_id(),
            }));
        }
        let span = make();
        if let Some(parent) = parent {
            // Sampled here, so sampled from here on, whatever the parent's
            // flag said (a rule that does not follow parents).
            let context = SpanContext::new(
                parent.trace_id,
                parent.span_id,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            );
            let _ =
                span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
        }
        Trace(Kind::Span(span))
    }

    /// The trace the current task is in: its unsampled ids, else the
    /// current span.
    pub fn current() -> Trace {
        match UNSAMPLED.get() {
            Some(ids) => Trace(Kind::Unsampled(ids)),
            None => Trace(Kind::Span(tracing::Span::current())),
        }
    }

    /// A step inside this one: the span `make` builds under this one's when
    /// sampled, this trace's ids otherwise.
    pub fn child(&self, make: impl FnOnce(&tracing::Span) -> tracing::Span) -> Trace {
        match &self.0 {
            // Outside any trace: the step starts its own.
            Kind::Span(span) if span.is_none() => Trace::start(|| make(span)),
            Kind::Span(span) => Trace(Kind::Span(make(span))),
            Kind::Unsampled(ids) => Trace(Kind::Unsampled(*ids)),
        }
    }

    /// The span, if this trace is made of spans.
    pub fn span(&self) -> Option<&tracing::Span> {
        match &self.0 {
            Kind::Span(span) => Some(span),
            Kind::Unsampled(_) => None,
        }
    }

    /// The `traceparent` value that continues this trace, or `None` when
    /// OpenTelemetry is off.
    pub fn traceparent(&self) -> Option<String> {
        match &self.0 {
            Kind::Span(span) => span_traceparent(span),
            Kind::Unsampled(ids) => Some(format!("00-{}-{}-00", ids.trace_id, ids.span_id)),
        }
    }

    /// The trace's id, or `None` when OpenTelemetry is off.
    pub fn trace_id(&self) -> Option<TraceId> {
        match &self.0 {
            Kind::Span(span) => {
                let context = span.context().span().span_context().clone();
                context.is_valid().then(|| context.trace_id())
            }
            Kind::Unsampled(ids) => Some(ids.trace_id),
        }
    }

    /// Links this step to the step a `traceparent` names (a batch that
    /// serves many traces links to each instead of belonging to one); only
    /// sampled steps keep links.
    pub fn link_to(&self, traceparent: Option<&str>) {
        if let (Kind::Span(span), Some(parent)) = (&self.0, traceparent.and_then(Parent::parse)) {
            let flags = if parent.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            span.add_link(SpanContext::new(
                parent.trace_id,
                parent.span_id,
                flags,
                true,
                TraceState::default(),
            ));
        }
    }

    /// Runs `f` inside this trace: its log lines carry the trace's id.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _entered = self.enter();
        f()
    }

    /// `future`, run inside this trace each time it is polled.
    pub fn instrument<F: Future>(self, future: F) -> Traced<F> {
        Traced {
            future,
            trace: self,
        }
    }

    fn enter(&self) -> Entered<'_> {
        match &self.0 {
            Kind::Span(span) => Entered {
                previous: UNSAMPLED.replace(None),
                _span: Some(span.enter()),
            },
            Kind::Unsampled(ids) => Entered {
                previous: UNSAMPLED.replace(Some(*ids)),
                _span: None,
            },
        }
    }
}

/// The id of the unsampled trace this thread works in right now, if any.
pub(crate) fn unsampled_trace_id() -> Option<TraceId> {
    UNSAMPLED.get().map(|ids| ids.trace_id)
}

/// While a trace is entered: its span entered, or its ids current.
struct Entered<'a> {
    previous: Option<Ids>,
    _span: Option<tracing::span::Entered<'a>>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        UNSAMPLED.set(self.previous);
    }
}

pin_project_lite::pin_project! {
    /// A future run inside a [`Trace`].
    pub struct Traced<F> {
        #[pin]
        future: F,
        trace: Trace,
    }
}

impl<F: Future> Future for Traced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.trace.enter();
        this.future.poll(cx)
    }
}

/// The `traceparent` value for `span`, or `None` when it is in no trace.
fn span_traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let context = cx.span().span_context().clone();
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// The `traceparent` header of a NATS message, if any.
pub fn from_headers(headers: Option<&HeaderMap>) -> Option<&str> {
    headers?.get(TRACEPARENT).map(|v| v.as_str())
}

/// What a `traceparent` value says (W3C Trace Context, level 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parent {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

impl Parent {
    /// `version-traceid-parentid-flags`; a later version may append fields.
    fn parse(value: &str) -> Option<Parent> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let lower_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !lower_hex(version, 2)
            || version == "ff"
            || (version == "00" && rest.is_some())
            || !lower_hex(trace_id, 32)
            || !lower_hex(span_id, 16)
            || !lower_hex(flags, 2)
        {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some(Parent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[test]
    fn a_valid_traceparent_is_understood() {
        let parent = Parent::parse(SAMPLED).unwrap();
        assert_eq!(
            parent.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id.to_string(), "00f067aa0ba902b7");
        assert!(parent.sampled);
        assert!(!Parent::parse(UNSAMPLED_PARENT).unwrap().sampled);
        // A later version may carry more after the flags.
        assert!(
            Parent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some()
        );
    }

    #[test]
    fn a_malformed_traceparent_starts_no_trace() {
        for bad in [
            "not-a-traceparent",
            "",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(Parent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn samplers_decide_as_opentelemetry_names_them() {
        let id = |low: u64| TraceId::from(u128::from(low));
        let always = Sampling::of(SamplerKind::AlwaysOn, 1.0);
        assert!(always.samples(None, id(1)) && always.samples(Some(false), id(1)));
        let never = Sampling::of(SamplerKind::AlwaysOff, 1.0);
        assert!(!never.samples(None, id(1)) && !never.samples(Some(true), id(1)));
        let parent_on = Sampling::of(SamplerKind::ParentBasedAlwaysOn, 1.0);
        assert!(parent_on.samples(None, id(1)));
        assert!(!parent_on.samples(Some(false), id(1)));
        let parent_off = Sampling::of(SamplerKind::ParentBasedAlwaysOff, 1.0);
        assert!(!parent_off.samples(None, id(1)));
        assert!(parent_off.samples(Some(true), id(1)));
        // A quarter: the low 63 bits of the id below 2^61.
        let quarter = Sampling::of(SamplerKind::TraceIdRatio, 0.25);
        assert!(quarter.samples(None, id((1 << 62) - 2)));
        assert!(!quarter.samples(None, id(1 << 62)));
        assert!(!quarter.samples(Some(true), id(1 << 62)));
        let parent_quarter = Sampling::of(SamplerKind::ParentBasedTraceIdRatio, 0.25);
        assert!(parent_quarter.samples(Some(true), id(1 << 62)));
        assert!(!parent_quarter.samples(None, id(1 << 62)));
        // Out-of-range ratios are clamped.
        assert!(Sampling::of(SamplerKind::TraceIdRatio, 7.0).samples(None, id(u64::MAX)));
        assert!(!Sampling::of(SamplerKind::TraceIdRatio, -1.0).samples(None, id(0)));
    }

    #[test]
    fn the_ratio_rule_samples_about_its_share_of_random_traces() {
        let ids = RandomIdGenerator::default();
        let tenth = Sampling::of(SamplerKind::TraceIdRatio, 0.1);
        let sampled = (0..20_000)
            .filter(|_| tenth.samples(None, ids.new_trace_id()))
            .count();
        assert!((1_600..2_400).contains(&sampled), "{sampled} of 20,000");
    }

    #[test]
    fn an_unsampled_trace_is_current_inside_and_passes_its_ids_on() {
        let trace = Trace(Kind::Unsampled(Ids {
            trace_id: TraceId::from(7u128),
            span_id: SpanId::from(9u64),
        }));
        assert_eq!(
            trace.traceparent().as_deref(),
            Some("00-00000000000000000000000000000007-0000000000000009-00")
        );
        assert_eq!(unsampled_trace_id(), None);
        trace.in_scope(|| {
            assert_eq!(unsampled_trace_id(), Some(TraceId::from(7u128)));
            // A child keeps the ids; a sampled span entered inside hides them.
            assert_eq!(Trace::current().trace_id(), Some(TraceId::from(7u128)));
            Trace(Kind::Span(tracing::Span::none()))
                .in_scope(|| assert_eq!(unsampled_trace_id(), None));
            assert_eq!(unsampled_trace_id(), Some(TraceId::from(7u128)));
        });
        assert_eq!(unsampled_trace_id(), None);
    }

    #[tokio::test]
    async fn an_instrumented_future_is_in_its_trace_only_while_it_runs() {
        let trace = Trace(Kind::Unsampled(Ids {
            trace_id: TraceId::from(11u128),
            span_id: SpanId::from(1u64),
        }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(trace.instrument(async move {
            let before = unsampled_trace_id();
            rx.await.unwrap();
            (before, unsampled_trace_id())
        }));
        tokio::task::yield_now().await;
        assert_eq!(unsampled_trace_id(), None);
        tx.send(()).unwrap();
        let (before, after) = task.await.unwrap();
        assert_eq!(before, Some(TraceId::from(11u128)));
        assert_eq!(after, Some(TraceId::from(11u128)));
    }
}
