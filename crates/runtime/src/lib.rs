//! What every natter process shares.
//!
//! - [`backoff`]: the one exponential backoff, and waiting for a dependency at start.
//! - [`config`]: clap argument groups (each flag also an environment variable).
//! - [`telemetry`]: the tracing subscriber (logs and OpenTelemetry spans), built once per process.
//! - [`trace`]: one trace per message: sampled ones as spans, the rest as ids, and the
//!   W3C `traceparent` carried in NATS headers.
//! - [`log_queue`]: log lines written by a thread of their own, behind a bounded queue.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`shutdown`]: a cancellation token fired by SIGINT/SIGTERM.
//! - [`jetstream`]: connecting to NATS and declaring the streams idempotently.
//! - [`database`]: the PostgreSQL pool and the embedded migrations.
//! - [`health`]: the readiness probe behind `/readyz`.
//! - [`views`]: read-model queries shared by the services.

pub mod backoff;
pub mod config;
pub mod database;
pub mod health;
pub mod jetstream;
pub mod log_queue;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod views;
