//! natter-persister: projects the `CHAT` stream into PostgreSQL and fans each
//! event out to its recipients' delivery logs (DESIGN.md §1–3).
//!
//! The crate, one module a line:
//! - [`config`]: the configuration, from the environment or flags.
//! - [`faults`]: fault hooks that let tests crash the persister between steps.
//! - `leader`: leader election on a PostgreSQL advisory lock.
//! - [`consumer`]: the run loop (elect, consume, start over) and the consumer's setup.
//! - `stage`: the two overlapping pipeline stages, projection and fan-out; dead letters, acks.
//! - [`projection`]: one transaction per batch; idempotent SQL for messages, reads, groups.
//! - [`fanout`]: publishing `deliver.<user>` records in `CHAT` order.
//! - [`tails`]: where each user's log ends, so each record names the one before it.
//! - `error`: why a consumer run stops.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` on `PERSISTER_PORT`.
//! - [`metrics`]: the Prometheus metrics.
//! - [`capacity`]: how full the streams are, for the metrics.
//!
//! A message's path through the persister, one hop a line; the numbers are
//! the invariants of DESIGN.md §1 that each hop keeps:
//! 1. pull: the durable consumer `persister` on `CHAT`, on the one leader (`consumer`, `leader`).
//! 2. project: one PostgreSQL transaction per batch, idempotent SQL (`stage::project`; 3).
//! 3. fan out: `deliver.<uid>`, `Nats-Msg-Id <msgId>.<uid>`, in `CHAT` order (`stage::fanout`; 2, 5).
//! 4. ack: only once fanned out; a crash before that redelivers the batch (`stage::fanout`; 1, 3).

pub mod capacity;
pub mod config;
pub mod consumer;
mod error;
pub mod fanout;
pub mod faults;
pub mod health;
mod leader;
pub mod metrics;
pub mod projection;
mod stage;
pub mod tails;

pub use config::Config;
pub use faults::{FaultHook, FaultHooks};

use natter_runtime::backoff::until_ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs the persister until `shutdown` fires: migrations, streams, the
/// health endpoints on `listener`, and the consumer. Waits for NATS and
/// PostgreSQL as long as it takes; returns an error only for a bad
/// configuration.
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
    let client = natter_runtime::jetstream::connect(
        &config.nats,
        "natter-persister",
        natter_core::subjects::PERSISTER_INBOX,
        None,
    )
    .await?;
    let js = natter_runtime::jetstream::context(client.clone(), &config.nats);

    // Every task the persister spawns stops on `tasks_stop` and is awaited
    // before `run` returns.
    let tasks = TaskTracker::new();
    let tasks_stop = shutdown.child_token();
    let migrated = Arc::new(AtomicBool::new(false));
    let health = tasks.spawn(health::serve(
        listener,
        health::HealthState {
            pool: pool.clone(),
            nats: client.clone(),
            migrated: migrated.clone(),
        },
        tasks_stop.clone(),
    ));

    // Every persister reports, the standbys too: the alerts take the max.
    tasks.spawn(capacity::watch(js.clone(), tasks_stop.clone()));
    if migrate(&pool, &shutdown).await {
        migrated.store(true, Ordering::Relaxed);
        consumer::run(&config, pool.clone(), js, hooks, shutdown.clone()).await;
    }
    tasks_stop.cancel();
    tasks.close();
    tasks.wait().await;
    if let Err(e) = health.await {
        tracing::warn!(error = %e, "health server task failed");
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "NATS flush at shutdown failed");
    }
    pool.close().await;
    Ok(())
}

/// Applies the schema, retrying while PostgreSQL is unreachable. `false`
/// if `shutdown` came first.
async fn migrate(pool: &sqlx::PgPool, shutdown: &CancellationToken) -> bool {
    let migrated = until_ready("PostgreSQL migrations", shutdown, || {
        natter_runtime::database::migrate(pool)
    })
    .await;
    if migrated.is_some() {
        tracing::info!("database schema is up to date");
    }
    migrated.is_some()
}
