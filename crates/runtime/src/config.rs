//! Argument groups shared by the binaries; every flag can also come from the
//! environment variable DESIGN.md §5 names.

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated for a cluster; may carry
    /// `user:password@` (its value is never shown in `--help`).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// A NATS credentials file.
    #[arg(long, env = "NATS_CREDS", hide_env_values = true)]
    pub nats_creds: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the NATS servers' certificates:
    /// with it, every connection to NATS uses TLS and checks the server
    /// against it (`deploy/README.md`, "TLS").
    #[arg(long, env = "NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// JetStream publishes one process may have awaiting their ack; a
    /// publish beyond it waits for an earlier ack.
    #[arg(long, env = "NATS_PUBLISH_WINDOW", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub nats_publish_window: u32,
}

#[derive(Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL (its value is never shown in `--help`).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/natter",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

#[derive(Args, Clone, Debug)]
pub struct StreamArgs {
    /// Replicas of the CHAT and DELIVERY streams (1 on one server, 3 in a cluster).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// How long the DELIVERY stream keeps a record, in seconds (default 7 days).
    /// A device offline longer than this gets `resync_required`.
    #[arg(long, env = "DELIVERY_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub delivery_max_age_secs: u64,
    /// Most bytes the CHAT stream may hold (0: no limit). CHAT is the source
    /// of truth, so a full CHAT refuses new records (sends get
    /// `unavailable`) rather than dropping old ones. Each node reserves this
    /// much of its JetStream `max_file_store`.
    #[arg(long, env = "CHAT_MAX_BYTES", default_value_t = DEFAULT_CHAT_MAX_BYTES)]
    pub chat_max_bytes: u64,
    /// Most bytes the DELIVERY stream may hold (0: no limit). When full, the
    /// oldest records go, as with `DELIVERY_MAX_AGE_SECS`: a device further
    /// behind gets `resync_required`.
    #[arg(long, env = "DELIVERY_MAX_BYTES", default_value_t = DEFAULT_DELIVERY_MAX_BYTES)]
    pub delivery_max_bytes: u64,
}

/// Defaults that fit a development machine: a nats-server without a
/// `max_file_store` may reserve 75 % of the free disk, and declaring a
/// stream whose `max_bytes` does not fit fails. Production sizes them to
/// its nodes (deploy/compose sets both).
const DEFAULT_CHAT_MAX_BYTES: u64 = 1024 * 1024 * 1024;
const DEFAULT_DELIVERY_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// How the streams are declared: what [`StreamArgs`] configure.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub replicas: usize,
    pub delivery_max_age: Duration,
    /// `None`: no limit.
    pub chat_max_bytes: Option<u64>,
    pub delivery_max_bytes: Option<u64>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            delivery_max_age: Duration::from_secs(7 * 24 * 3600),
            chat_max_bytes: Some(DEFAULT_CHAT_MAX_BYTES),
            delivery_max_bytes: Some(DEFAULT_DELIVERY_MAX_BYTES),
        }
    }
}

impl StreamArgs {
    pub fn settings(&self) -> StreamSettings {
        StreamSettings {
            replicas: self.stream_replicas.max(1),
            delivery_max_age: Duration::from_secs(self.delivery_max_age_secs),
            chat_max_bytes: (self.chat_max_bytes > 0).then_some(self.chat_max_bytes),
            delivery_max_bytes: (self.delivery_max_bytes > 0).then_some(self.delivery_max_bytes),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    #[default]
    Pretty,
}

/// Logs and traces. The `OTEL_*` variables keep their OpenTelemetry meaning.
#[derive(Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// OTLP/HTTP collector base URL (e.g. http://127.0.0.1:4318); traces are
    /// exported to `<endpoint>/v1/traces` when set, and nowhere otherwise.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// Which traces to keep. Default: `parentbased_always_on` when exporting,
    /// `always_off` otherwise (trace ids are still made, propagated and logged).
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_enum)]
    pub otel_traces_sampler: Option<SamplerKind>,
    /// The ratio for the `*traceidratio` samplers, 0.0–1.0.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0)]
    pub otel_traces_sampler_arg: f64,
    /// Turns OpenTelemetry off entirely: no spans, no trace ids in logs, no
    /// `traceparent` headers.
    #[arg(long, env = "OTEL_SDK_DISABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub otel_sdk_disabled: bool,
}

/// The samplers of the OpenTelemetry specification's `OTEL_TRACES_SAMPLER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerKind {
    #[value(name = "always_on")]
    AlwaysOn,
    #[value(name = "always_off")]
    AlwaysOff,
    #[value(name = "traceidratio")]
    TraceIdRatio,
    #[value(name = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    #[value(name = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    #[value(name = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}
