//! The process-wide tracing subscriber: `RUST_LOG`-filtered log lines (JSON
//! or human-readable) that carry the OpenTelemetry trace id, and the
//! OpenTelemetry layer that turns `tracing` spans into exported spans.
//! Built once, in `main` (or once per test process).

use crate::config::{LogFormat, SamplerKind, TelemetryArgs};
use crate::log_queue::{self, LogQueue};
use crate::trace::Sampling;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// The crates whose spans become OpenTelemetry spans, whatever `RUST_LOG`
/// says: a quiet log must not cut a trace short.
const TRACED_CRATES: [&str; 3] = ["natter_gateway", "natter_persister", "natter_runtime"];

/// How long an export may take before it is abandoned: exporting must never
/// hold up the process, and a dead collector must not stall shutdown.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed subscriber, for the log formatter to look up the trace id
/// of the span an event happens in.
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

/// How long the log lines still queued at shutdown may take to write.
const LOG_FLUSH_PATIENCE: Duration = Duration::from_secs(2);

/// What `main` keeps until the end: flushes the spans and log lines still
/// queued.
#[must_use = "dropping the guard does not flush; call `shutdown`"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    logs: Option<LogQueue>,
}

impl Telemetry {
    /// Exports what is still queued (bounded by the exporter's timeout),
    /// then writes the log lines still queued (bounded too).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
        if let Some(logs) = self.logs {
            logs.flush(LOG_FLUSH_PATIENCE);
        }
    }
}

/// Installs the global subscriber for `service` from its arguments, logging
/// to stdout through a [`LogQueue`]. `default_filter` applies when
/// `RUST_LOG` is unset.
pub fn init(
    service: &'static str,
    args: &TelemetryArgs,
    default_filter: &str,
) -> Result<Telemetry, TelemetryError> {
    let traces = if args.otel_sdk_disabled {
        None
    } else {
        Some(traces(service, args)?)
    };
    let logs = LogQueue::spawn(std::io::stdout(), log_queue::QUEUE_BYTES)
        .map_err(|e| TelemetryError(format!("cannot start the log writer: {e}")))?;
    // Colours only for a terminal: a file or a log shipper would keep the
    // escape codes, and writing them costs time on every line.
    let ansi = std::io::stdout().is_terminal();
    let mut telemetry = install(args.log_format, default_filter, traces, ansi, logs.clone())?;
    telemetry.logs = Some(logs);
    Ok(telemetry)
}

/// Where spans go and which traces get them.
pub struct Traces {
    provider: SdkTracerProvider,
    sampling: Sampling,
}

impl Traces {
    /// Spans of the traces `sampling` picks, handed to `provider`. natter
    /// decides sampling itself, before it builds a span
    /// ([`crate::trace`]); `provider` must sample every span it is given
    /// (the default `ParentBased(AlwaysOn)`, or `AlwaysOn`).
    pub fn new(provider: SdkTracerProvider, sampling: Sampling) -> Self {
        Traces { provider, sampling }
    }
}

/// The traces the arguments ask for: a batching OTLP/HTTP exporter (its own
/// thread; a full queue drops spans rather than wait) when an endpoint is
/// set, no exporter otherwise. Without an endpoint the default sampler
/// samples nothing: traces keep their ids (in logs and `traceparent`) and
/// build no span.
pub fn traces(service: &'static str, args: &TelemetryArgs) -> Result<Traces, TelemetryError> {
    let exporting = args.otel_exporter_otlp_endpoint.is_some();
    let kind = args.otel_traces_sampler.unwrap_or(if exporting {
        SamplerKind::ParentBasedAlwaysOn
    } else {
        SamplerKind::AlwaysOff
    });
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    if let Some(endpoint) = &args.otel_exporter_otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint))
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError(format!("cannot build the OTLP exporter: {e}")))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(Traces::new(
        builder.build(),
        Sampling::of(kind, args.otel_traces_sampler_arg),
    ))
}

/// The OTLP/HTTP traces URL for a base endpoint, as the specification
/// derives it from `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// Installs the global subscriber: log lines to `writer` (pretty ones in
/// colour if `ansi`), and spans to `traces` when there are any (none:
/// OpenTelemetry is off). Tests pass an in-memory exporter's provider and a
/// capturing writer.
pub fn install<W>(
    format: LogFormat,
    default_filter: &str,
    traces: Option<Traces>,
    ansi: bool,
    writer: W,
) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = format == LogFormat::Json;
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceId {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
                json,
            })
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .event_format(WithTraceId {
                inner: tracing_subscriber::fmt::format().compact(),
                json,
            })
            .with_ansi(ansi)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    let provider = traces.map(|traces| {
        traces.sampling.install();
        traces.provider
    });
    let otel = provider.as_ref().map(|provider| {
        // Spans of natter's crates; of their events only warnings and
        // errors (as span events): the info lines are for logs, and turning
        // each into a span event would cost more than the span itself.
        let traced = filter_fn(|metadata| {
            let level = if metadata.is_span() {
                Level::INFO
            } else {
                Level::WARN
            };
            metadata.level() <= &level
                && TRACED_CRATES
                    .iter()
                    .any(|c| metadata.target().starts_with(c))
        });
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("natter"))
            .with_tracked_inactivity(false)
            // natter reads a span's context from the span, never from
            // OpenTelemetry's thread-local current context.
            .with_context_activation(false)
            .with_threads(false)
            // Span names say where a span comes from; per-span source
            // locations and levels would cost an attribute each.
            .with_location(false)
            .with_level(false)
            .with_target(false)
            .with_filter(traced)
    });
    let subscriber = tracing_subscriber::registry().with(fmt).with(otel);
    let dispatch = Dispatch::new(subscriber);
    let weak = dispatch.downgrade();
    tracing::dispatcher::set_global_default(dispatch).map_err(|e| TelemetryError(e.to_string()))?;
    let _ = DISPATCH.set(weak);
    Ok(Telemetry {
        provider,
        logs: None,
    })
}

/// The trace id of the span an event happens in, if it belongs to a trace.
fn trace_id_of(span_id: &tracing::span::Id) -> Option<String> {
    let dispatch = DISPATCH.get()?.upgrade()?;
    let cx = tracing_opentelemetry::get_otel_context(span_id, &dispatch)?;
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// A log line formatter that adds `trace_id` to every line written inside a
/// trace (an unsampled one entered, or a traced span), so an operator can go
/// from a log line to its trace and to the other services' lines of it.
struct WithTraceId<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // The event's own parent if it names one, else the current span.
        let span_id = ctx
            .event_scope()
            .and_then(|mut scope| scope.next())
            .map(|span| span.id());
        let trace_id = crate::trace::unsampled_trace_id()
            .map(|id| id.to_string())
            .or_else(|| span_id.as_ref().and_then(trace_id_of));
        let Some(trace_id) = trace_id else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "trace_id={trace_id} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not install telemetry: {0}")]
pub struct TelemetryError(String);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    #[test]
    fn traces_url_follows_the_otlp_rule() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn samplers_take_their_opentelemetry_names() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            telemetry: TelemetryArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "x",
            "--otel-traces-sampler",
            "parentbased_traceidratio",
            "--otel-traces-sampler-arg",
            "0.25",
            "--otel-sdk-disabled",
            "true",
        ])
        .unwrap();
        let t = cli.telemetry;
        assert_eq!(
            t.otel_traces_sampler,
            Some(SamplerKind::ParentBasedTraceIdRatio)
        );
        assert!((t.otel_traces_sampler_arg - 0.25).abs() < f64::EPSILON);
        assert!(t.otel_sdk_disabled);
        assert!(
            <Cli as clap::Parser>::try_parse_from(["x", "--otel-traces-sampler", "sometimes"])
                .is_err()
        );
    }

    /// Keeps what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    // The subscriber is process-wide: this is the only test here that
    // installs one (nextest runs each test in a process of its own).
    #[test]
    fn pretty_lines_in_a_trace_start_with_its_trace_id_and_no_colour_codes() {
        let captured = Captured::default();
        let provider = SdkTracerProvider::builder().build();
        let traces = Traces::new(provider, Sampling::always());
        let _telemetry = install(
            LogFormat::Pretty,
            "info",
            Some(traces),
            false,
            captured.clone(),
        )
        .unwrap();
        tracing::info!("outside any span");
        let span = tracing::info_span!("natter_runtime_test");
        let trace_id = span.context().span().span_context().trace_id().to_string();
        span.in_scope(|| tracing::info!("inside the span"));
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let inside = text
            .lines()
            .find(|l| l.contains("inside the span"))
            .unwrap();
        assert!(
            inside.starts_with(&format!("trace_id={trace_id} ")),
            "{inside}"
        );
        let outside = text
            .lines()
            .find(|l| l.contains("outside any span"))
            .unwrap();
        assert!(!outside.contains("trace_id="), "{outside}");
        // Not for a terminal: no colour codes.
        assert!(!text.contains('\x1b'), "{text:?}");
    }
}
