//! natter-persister: projects the `CHAT` stream into PostgreSQL and fans each
//! event out to its recipients' delivery logs (DESIGN.md §1–3).
//!
//! - [`consumer`]: leader election, the durable pull consumer, batching,
//!   retry, dead letters and acks.
//! - [`projection`]: one transaction per batch; idempotent SQL.
//! - [`membership`]: group membership events and the membership cache.
//! - [`fanout`]: publishing `deliver.<user>` records in `CHAT` order.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` on `PERSISTER_PORT`.
//! - [`metrics`]: the Prometheus metrics.

pub mod consumer;
pub mod fanout;
pub mod health;
pub mod membership;
pub mod metrics;
pub mod projection;

use clap::Parser;
use natter_runtime::config::{DatabaseArgs, NatsArgs, StreamArgs, TelemetryArgs};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The persister's configuration: environment variables or flags.
#[derive(Parser, Clone, Debug)]
#[command(name = "natter-persister", version, about)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Port of the health and metrics endpoints.
    #[arg(long, env = "PERSISTER_PORT", default_value_t = 8001)]
    pub port: u16,
    /// Address the health and metrics endpoints listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: String,
    /// Most CHAT records projected in one transaction.
    #[arg(long, env = "PERSISTER_BATCH_MAX", default_value_t = 500)]
    pub batch_max: usize,
    /// How long a batch waits to fill after its first record, in milliseconds.
    #[arg(long, env = "PERSISTER_BATCH_WAIT_MS", default_value_t = 2)]
    pub batch_wait_ms: u64,
    /// Deliveries of a record that fails to project before it is dead-lettered.
    #[arg(long, env = "PERSISTER_MAX_DELIVER", default_value_t = 5)]
    pub max_deliver: i64,
    /// Seconds JetStream waits for an ack before redelivering.
    #[arg(long, env = "PERSISTER_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
}

impl Config {
    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }
}

/// A fault hook: given a batch's CHAT sequences, `true` means "crash here".
pub type FaultHook = Arc<dyn Fn(&[u64]) -> bool + Send + Sync>;

/// Fault injection for tests: each hook is asked after a step and, if it
/// answers `true`, the persister behaves as if it crashed right there (the
/// batch is neither fanned out further nor acked, and is redelivered).
#[derive(Clone, Default)]
pub struct FaultHooks {
    /// Called after a batch's transaction committed, with its CHAT sequences.
    pub after_commit: Option<FaultHook>,
    /// Called after a batch's fan-out was published, before the acks.
    pub after_fanout: Option<FaultHook>,
}

/// Applies the schema, retrying while PostgreSQL is unreachable. `false`
/// if `shutdown` came first.
async fn migrate(pool: &sqlx::PgPool, shutdown: &CancellationToken) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match natter_runtime::database::migrate(pool).await {
            Ok(()) => {
                tracing::info!("database schema is up to date");
                return true;
            }
            Err(e) => tracing::warn!(error = %e, "cannot apply migrations yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
}

/// Runs the persister until `shutdown` fires: migrations, streams, the
/// health endpoints on `listener`, and the consumer.
pub async fn run(
    config: Config,
    listener: TcpListener,
    hooks: FaultHooks,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    natter_runtime::metrics::install()?;
    metrics::describe();
    metrics::leader(false);
    let pool = natter_runtime::database::pool(&config.database)?;
    let client = natter_runtime::jetstream::connect(&config.nats, "natter-persister", None).await?;
    let js = natter_runtime::jetstream::context(client.clone(), &config.nats);

    let migrated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = tokio::spawn(health::serve(
        listener,
        health::HealthState {
            pool: pool.clone(),
            nats: client.clone(),
            migrated: migrated.clone(),
        },
        shutdown.clone(),
    ));

    if migrate(&pool, &shutdown).await {
        migrated.store(true, std::sync::atomic::Ordering::Relaxed);
        consumer::run(&config, pool.clone(), js, hooks, shutdown.clone()).await;
    }
    shutdown.cancel();
    if let Err(e) = health.await {
        tracing::warn!(error = %e, "health server task failed");
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "NATS flush at shutdown failed");
    }
    pool.close().await;
    Ok(())
}
