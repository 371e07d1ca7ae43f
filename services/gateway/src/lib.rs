//! natter-gateway: the edge of natter. REST and WebSocket (DESIGN.md §4),
//! JWT auth, publishing accepted commands to JetStream, and live delivery
//! with replay from per-device cursors.
//!
//! - [`config`]: settings from environment or flags.
//! - [`auth`]: password hashing, tokens, the `AuthUser` extractor.
//! - [`error`]: the one error type, for HTTP and WebSocket alike.
//! - [`directory`]: a read-through cache of users.
//! - [`chat`]: commands shared by REST and WebSocket (send, mark read).
//! - [`groups`]: group management, one `CHAT` event per change.
//! - [`delivery`]: live subscriptions, log replay, device cursors.
//! - [`control`]: cross-gateway session control (device replacement, profile changes).
//! - [`revocation`]: logged-out tokens, cluster-wide.
//! - [`presence`]: who is online, cluster-wide.
//! - [`typing`]: typing signals over core NATS.
//! - [`metrics`]: the Prometheus metrics on `/metrics`.
//! - [`http`]: the REST routers; [`ws`]: the WebSocket protocol and sessions.

pub mod auth;
pub mod chat;
pub mod config;
pub mod control;
pub mod delivery;
pub mod directory;
pub mod error;
pub mod groups;
pub mod http;
pub mod metrics;
pub mod presence;
pub mod revocation;
pub mod state;
pub mod typing;
pub mod ws;

pub use config::Config;

use natter_core::subjects;
use state::{AppState, Inner};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often acked cursors are written to PostgreSQL.
const CURSOR_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Serves the gateway on `listener` until `shutdown` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    natter_runtime::metrics::install()?;
    metrics::describe();
    let tokens =
        auth::TokenKeys::new(config.jwt_secret.as_deref(), config.dev, config.token_ttl())?;
    let pool = natter_runtime::database::pool(&config.database)?;
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let nats =
        natter_runtime::jetstream::connect(&config.nats, "natter-gateway", Some(events_tx)).await?;
    let js = natter_runtime::jetstream::context(nats.clone(), &config.nats);
    let settings = config.streams.settings();
    let mut backoff = Duration::from_millis(100);
    loop {
        match natter_runtime::jetstream::ensure_streams(&js, &settings).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "streams not ready; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(3));
            }
        }
    }
    let revocations =
        revocation::Revocations::open(&js, config.token_ttl(), settings.replicas).await?;
    let presence = presence::Presence::open(&js, config.presence_ttl(), settings.replicas).await?;
    let chat = js.get_stream(subjects::CHAT_STREAM).await?;
    let delivery = js.get_stream(subjects::DELIVERY_STREAM).await?;

    let state = AppState::new(Inner {
        hub: delivery::Hub::new(nats.clone(), config.session_queue),
        directory: directory::Directory::new(pool.clone()),
        cursors: delivery::CursorStore::new(pool.clone()),
        config,
        pool: pool.clone(),
        nats: nats.clone(),
        js,
        chat,
        delivery,
        tokens,
        revocations,
        presence,
        gateway_id: uuid::Uuid::now_v7(),
        shutdown: shutdown.clone(),
    });
    revocation::follow(state.clone(), shutdown.clone()).await?;
    tokio::spawn(control::run(state.clone(), shutdown.clone()));
    tokio::spawn(typing::run(state.clone(), shutdown.clone()));
    let presence_task = tokio::spawn(presence::run(state.clone(), shutdown.clone()));

    let writer_state = state.clone();
    let writer_shutdown = shutdown.clone();
    let cursor_writer = tokio::spawn(async move {
        writer_state
            .cursors
            .run_writer(CURSOR_FLUSH_INTERVAL, writer_shutdown)
            .await;
    });
    let events_state = state.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                async_nats::Event::Connected | async_nats::Event::SlowConsumer(_) => {
                    tracing::info!(%event, "NATS event; live sessions re-read their logs");
                    events_state.hub.resync_all();
                }
                other => tracing::info!(event = %other, "NATS connection event"),
            }
        }
    });

    let app = http::router(state.clone());
    tracing::info!(address = %listener.local_addr()?, "natter-gateway listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    shutdown.cancel();
    let _ = cursor_writer.await;
    let _ = presence_task.await;
    nats.flush().await.ok();
    pool.close().await;
    Ok(())
}
