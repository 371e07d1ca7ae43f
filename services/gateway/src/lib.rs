//! natter-gateway: the edge of natter. REST and WebSocket (DESIGN.md §4),
//! JWT auth, publishing accepted commands to JetStream, and live delivery
//! with replay from per-device cursors.
//!
//! A message's path through the gateway, one hop a line (DESIGN.md §1):
//! 1. [`ws::session`] (or `POST /api/messages` in [`http`]) parses the
//!    command with [`ws::protocol`];
//! 2. [`chat::Chat::submit`] validates it and publishes `chat.msg.<conv>`
//!    to `CHAT` with a `Nats-Msg-Id` and the trace's `traceparent`;
//! 3. [`chat::Submitted::confirm`] awaits JetStream's ack: only then is the
//!    sender told `message_sent` (invariant 1);
//! 4. the persister projects it and fans it out to `deliver.<user>`;
//! 5. [`delivery::Hub`] receives the republished `live.deliver.<user>`
//!    and hands it to each of the user's sessions;
//! 6. the session writes it, or, after a gap, replays the log from the
//!    device's cursor with [`delivery::log`] (invariant 4);
//! 7. the client's `ack` advances the cursor in [`delivery::cursors`].
//!
//! The parts, each given only what it uses:
//! - [`config`]: settings from environment or flags.
//! - [`auth`]: tokens, password hashing and login/signup attempt limits;
//!   [`access`]: token checks against [`revocation`], the cluster's
//!   logged-out tokens; [`address`]: the client address limits key on.
//! - [`origin`]: the `ALLOWED_ORIGINS` entries, checked at start.
//! - [`error`]: the one error type, for HTTP and WebSocket alike.
//! - [`directory`]: a read-through cache of users.
//! - [`chat`]: the commands shared by REST and WebSocket (send, mark read).
//! - [`groups`]: group management, one `CHAT` event per change.
//! - [`delivery`]: live subscriptions, log replay, device cursors.
//! - [`control`]: cross-gateway session control (device replacement, profile changes).
//! - [`presence`]: who is online, cluster-wide; [`typing`]: typing signals.
//! - [`throttle`]: per-user rate limits on sends, read markers and typing.
//! - [`metrics`]: the Prometheus metrics on `/metrics`.
//! - [`http`]: the REST routers; [`ws`]: the WebSocket protocol and sessions.
//! - [`state`]: the wiring of all of the above for the routers.

pub mod access;
pub mod address;
pub mod auth;
pub mod chat;
pub mod config;
pub mod control;
pub mod delivery;
pub mod directory;
pub mod earlier;
pub mod error;
pub mod groups;
pub mod http;
pub mod metrics;
pub mod origin;
pub mod presence;
pub mod revocation;
pub mod state;
pub mod throttle;
pub mod typing;
pub mod ws;

pub use config::Config;

use async_nats::jetstream;
use axum::serve::ListenerExt as _;
use natter_core::subjects;
use natter_runtime::backoff::until_ready;
use state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often acked cursors are written to PostgreSQL.
const CURSOR_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Serves the gateway on `listener` until `shutdown` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Box::pin(serve(config, listener, shutdown, TaskTracker::new())).await
}

/// [`run`] with the tracker that owns every task the gateway spawns: when
/// this returns, the tracker is closed and empty.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> anyhow::Result<()> {
    natter_runtime::metrics::install()?;
    metrics::describe();
    // Configuration errors end the process; everything after them is waited for.
    let tokens =
        auth::TokenKeys::new(config.jwt_secret.as_deref(), config.dev, config.token_ttl())?;
    let pool = natter_runtime::database::pool(&config.database)?;
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let nats = natter_runtime::jetstream::connect(
        &config.nats,
        "natter-gateway",
        natter_core::subjects::GATEWAY_INBOX,
        Some(events_tx),
    )
    .await?;
    // Replays read the delivery log on connections of their own: the server
    // answers a batched direct get inside the asking connection's read loop,
    // so a reconnection storm's replays would hold every publish, presence
    // write and stream question of the gateway behind them, and on one
    // connection they would be answered one at a time.
    let mut reads = Vec::with_capacity(READ_CONNECTIONS);
    for _ in 0..READ_CONNECTIONS {
        reads.push(
            natter_runtime::jetstream::connect(
                &config.nats,
                "natter-gateway-reads",
                natter_core::subjects::GATEWAY_INBOX,
                None,
            )
            .await?,
        );
    }
    let waited = Dependencies::wait(&config, &nats, &reads, &pool, &shutdown);
    let result = match Box::pin(waited).await {
        Some(dependencies) => {
            let state = wire(
                config,
                tokens,
                pool.clone(),
                nats.clone(),
                dependencies,
                &tasks,
                &shutdown,
            );
            Box::pin(serve_until_shutdown(
                state, listener, events, &tasks, &shutdown,
            ))
            .await
        }
        None => Ok(()),
    };
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    nats.flush().await.ok();
    drop(reads);
    pool.close().await;
    result
}

/// What the gateway needs from NATS and PostgreSQL before it can serve.
struct Dependencies {
    js: jetstream::Context,
    chat: jetstream::stream::Stream,
    delivery: jetstream::stream::Stream,
    revocations: revocation::Revocations,
    presence: presence::Presence,
    /// The connections log reads go out on.
    reads: Vec<async_nats::Client>,
}

impl Dependencies {
    /// Waits, with backoff and a log line per attempt, until PostgreSQL,
    /// NATS and JetStream answer. `None` if `shutdown` came first.
    async fn wait(
        config: &Config,
        nats: &async_nats::Client,
        reads: &[async_nats::Client],
        pool: &sqlx::PgPool,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        let js = natter_runtime::jetstream::context(nats.clone(), &config.nats);
        let settings = config.streams.settings();
        until_ready("PostgreSQL", shutdown, || {
            sqlx::query("SELECT 1").execute(pool)
        })
        .await?;
        until_ready("JetStream streams", shutdown, || {
            natter_runtime::jetstream::ensure_streams(&js, &settings)
        })
        .await?;
        let ttl = config.token_ttl();
        let revocations = until_ready("revocations bucket", shutdown, || {
            revocation::Revocations::open(&js, ttl, settings.replicas)
        })
        .await?;
        let presence_ttl = config.presence_ttl();
        let presence = until_ready("presence bucket", shutdown, || {
            presence::Presence::open(&js, presence_ttl, settings.replicas)
        })
        .await?;
        let chat = until_ready("CHAT stream", shutdown, || {
            js.get_stream(subjects::CHAT_STREAM)
        })
        .await?;
        let delivery = until_ready("DELIVERY stream", shutdown, || {
            js.get_stream(subjects::DELIVERY_STREAM)
        })
        .await?;
        Some(Self {
            js,
            chat,
            delivery,
            revocations,
            presence,
            reads: reads.to_vec(),
        })
    }
}

/// Builds every part of the gateway, each given only what it uses.
fn wire(
    config: Config,
    tokens: auth::TokenKeys,
    pool: sqlx::PgPool,
    nats: async_nats::Client,
    dependencies: Dependencies,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> AppState {
    let config = Arc::new(config);
    let tokens = Arc::new(tokens);
    let revocations = Arc::new(dependencies.revocations);
    let presence = Arc::new(dependencies.presence);
    let directory = Arc::new(directory::Directory::new(pool.clone()));
    let hub = Arc::new(delivery::Hub::new(
        nats.clone(),
        config.session_queue,
        tasks.clone(),
        shutdown.child_token(),
    ));
    let cursors = Arc::new(delivery::CursorStore::new(pool.clone()));
    let chat = Arc::new(chat::Chat::new(
        dependencies.js,
        dependencies.chat,
        pool.clone(),
        directory.clone(),
        presence.clone(),
        chat::ChatLimits::new(
            config.send_rate_per_sec,
            config.fanout_bytes_per_sec as f64,
            config.max_message_bytes,
        ),
    ));
    let auth = access::Authenticator::new(tokens.clone(), revocations.clone());
    let control = control::ControlBus::new(nats.clone(), uuid::Uuid::now_v7());
    let typing = typing::TypingSignals::new(nats.clone(), pool.clone());
    let backend = Arc::new(ws::upgrade::Live {
        cursors: cursors.clone(),
        log: delivery::DeliveryLog::new(dependencies.reads, dependencies.delivery),
        contents: delivery::Contents::new(pool.clone()),
        chat: chat.clone(),
        typing,
        tasks: tasks.clone(),
    });
    let connections = Arc::new(ws::upgrade::Connections {
        backend,
        auth: auth.clone(),
        directory: directory.clone(),
        hub: hub.clone(),
        control: control.clone(),
        presence: presence.clone(),
        cursors: cursors.clone(),
        limits: session_limits(&config),
        allowed_origins: config.allowed_origins.clone().into(),
        max_frame_bytes: config.max_frame_bytes,
        max_connections_per_user: config.max_connections_per_user.max(1),
        over_limit_log: Default::default(),
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
    });
    let (attempts, hashing) = sign_in_guards(&config);
    AppState {
        groups: Arc::new(groups::Groups::new(pool.clone(), chat.clone())),
        config,
        pool,
        nats,
        auth,
        tokens,
        directory,
        revocations,
        presence,
        chat,
        hub,
        cursors,
        control,
        connections,
        attempts,
        hashing,
    }
}

/// What bounds login and signup: attempts per client and name, and the
/// memory password hashing may hold.
fn sign_in_guards(
    config: &Config,
) -> (
    Arc<auth::attempts::AttemptLimiter>,
    Arc<auth::hashing::PasswordHashing>,
) {
    let attempts =
        auth::attempts::AttemptLimiter::new(config.auth_rate_per_min, auth::attempts::MAX_TRACKED);
    let hashing = auth::hashing::PasswordHashing::new(
        config.password_hash_memory(),
        std::thread::available_parallelism().map_or(1, usize::from),
        config.password_hash_wait(),
    );
    tracing::debug!(slots = hashing.size(), "password hashing slots");
    (Arc::new(attempts), Arc::new(hashing))
}

fn session_limits(config: &Config) -> ws::session::Limits {
    ws::session::Limits {
        max_message_bytes: config.max_message_bytes,
        max_inflight: config.session_max_inflight,
        ping_every: config.ws_ping_interval(),
        slow_reader: config.slow_reader_timeout(),
    }
}

/// Starts the background tasks, then serves HTTP until `shutdown`.
async fn serve_until_shutdown(
    state: AppState,
    listener: TcpListener,
    events: UnboundedReceiver<async_nats::Event>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Revoked tokens are loaded before the first request is served.
    let follower = until_ready("revocations", shutdown, || {
        state
            .revocations
            .clone()
            .follow(state.hub.clone(), shutdown.child_token())
    })
    .await;
    let Some(follower) = follower else {
        return Ok(());
    };
    tasks.spawn(follower);
    spawn_background(&state, events, tasks, shutdown);
    let app = http::router(state);
    tracing::info!(address = %listener.local_addr()?, "natter-gateway listening");
    // The peer address is what login and signup limits key on.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    // Frames are small and each session writes what it has in one go (it
    // buffers and flushes when idle): Nagle's algorithm would only hold the
    // last frame of a burst back until the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a connection");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    Ok(())
}

/// Connections for reading delivery logs (replays), beside the main one.
const READ_CONNECTIONS: usize = 4;

/// The gateway's own tasks, each stopping on a child of `shutdown`.
fn spawn_background(
    state: &AppState,
    events: UnboundedReceiver<async_nats::Event>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    tasks.spawn(state.control.clone().run(
        state.hub.clone(),
        state.directory.clone(),
        shutdown.child_token(),
    ));
    tasks.spawn(typing::run(
        state.nats.clone(),
        state.hub.clone(),
        shutdown.child_token(),
    ));
    tasks.spawn(presence::run(
        state.presence.clone(),
        state.hub.clone(),
        state.pool.clone(),
        shutdown.child_token(),
    ));
    let cursors = state.cursors.clone();
    let writer_shutdown = shutdown.child_token();
    tasks.spawn(async move {
        cursors
            .run_writer(CURSOR_FLUSH_INTERVAL, writer_shutdown)
            .await;
    });
    // A DELIVERY stream without an age limit keeps every record, and so
    // every cursor stays useful.
    let retention = state.config.streams.settings().delivery_max_age;
    if !retention.is_zero() {
        let cursors = state.cursors.clone();
        let interval = state.config.device_prune_interval();
        let pruner_shutdown = shutdown.child_token();
        tasks.spawn(async move {
            cursors
                .run_pruner(retention, interval, pruner_shutdown)
                .await;
        });
    }
    tasks.spawn(follow_connection(
        events,
        state.hub.clone(),
        shutdown.child_token(),
    ));
    tasks.spawn(delivery::watch::run(
        state.connections.backend.log.clone(),
        state.hub.clone(),
        shutdown.child_token(),
    ));
}

/// Reacts to NATS connection events until `shutdown`: after a reconnect or
/// a slow-consumer drop, live records may have been missed, so every
/// session re-reads its log.
async fn follow_connection(
    mut events: UnboundedReceiver<async_nats::Event>,
    hub: Arc<delivery::Hub>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        match event {
            async_nats::Event::Connected | async_nats::Event::SlowConsumer(_) => {
                tracing::info!(%event, "NATS event; live sessions re-read their logs");
                hub.resync_all();
            }
            other => tracing::info!(event = %other, "NATS connection event"),
        }
    }
}
