//! `GET /ws`: the handshake checks (token, origin, device), then a
//! connection's life around its [`Session`]: joining the hub, replacing the
//! device's older connection, presence, and the cleanup when it ends. The
//! session's [`Backend`] here is the real gateway: cursors in PostgreSQL,
//! the `DELIVERY` log, and the chat commands.

use crate::access::Authenticator;
use crate::auth::bearer_token;
use crate::chat::Chat;
use crate::control::{Control, ControlBus};
use crate::delivery::{Attachment, Contents, CursorStore, DeliveryLog, Hub, Stored};
use crate::directory::Directory;
use crate::error::ApiError;
use crate::metrics::{self, Closed};
use crate::presence::Presence;
use crate::typing::TypingSignals;
use crate::ws::protocol::SendMessage;
use crate::ws::refusals::Refusals;
use crate::ws::session::{Backend, Confirmation, End, Limits, Session, Unavailable, close};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use natter_core::{ConversationId, DeviceId, MessageId, UserId};
use natter_runtime::trace::Trace;
use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes read from a socket at a time: small, since most connections are
/// idle and each holds its read buffer all its life (1 KB rather than 4:
/// 2.8 KB less per idle socket, measured); a larger frame grows it.
const READ_BUFFER: usize = 1024;
/// Bytes of frames gathered before they are written to the socket (the
/// buffer grows only as frames are fed).
const WRITE_BUFFER: usize = 4 * 1024;
/// Bytes a connection may have queued for the network before writes block.
const MAX_WRITE_BUFFER: usize = 256 * 1024;

/// The close reason of a connection over `MAX_CONNECTIONS_PER_USER`.
pub const TOO_MANY: &str = "too many connections";

/// What every connection of this gateway shares.
#[derive(Clone)]
pub struct Connections {
    pub backend: Arc<Live>,
    pub auth: Authenticator,
    pub directory: Arc<Directory>,
    pub hub: Arc<Hub>,
    pub control: ControlBus,
    pub presence: Arc<Presence>,
    pub cursors: Arc<CursorStore>,
    pub limits: Limits,
    /// Browser origins allowed besides the gateway's own.
    pub allowed_origins: Arc<[String]>,
    pub max_frame_bytes: usize,
    /// Live sockets one user may have across the cluster.
    pub max_connections_per_user: usize,
    /// Connections refused over that limit: logged once per interval for
    /// the whole gateway, with a count, so no client can flood the logs.
    pub over_limit_log: Arc<std::sync::Mutex<Refusals>>,
    /// Owns every connection's task.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// The JWT, for clients that can set neither `Authorization` nor the
    /// subprotocol (it lands in proxies' logs).
    token: Option<String>,
    /// The device's id (default `default`): its cursor is where a
    /// reconnect resumes.
    #[param(pattern = r"^[A-Za-z0-9_.:\-]{1,64}$")]
    device: Option<String>,
}

/// The subprotocol the gateway speaks, answered to a client that offers it.
pub const SUBPROTOCOL: &str = "natter.v1";
/// The prefix of the subprotocol a browser carries its token in
/// (`bearer.<JWT>`): a browser cannot set `Authorization` on a WebSocket, and
/// a token in the query string lands in proxies' access logs.
const BEARER_PROTOCOL: &str = "bearer.";

/// The token offered as the subprotocol `bearer.<JWT>`, if any.
fn protocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix(BEARER_PROTOCOL))
        .filter(|token| !token.is_empty())
}

/// `GET /ws?token=&device=`: authenticate, check the origin, upgrade. The
/// token comes from the query, `Authorization: Bearer`, or the subprotocol
/// pair `natter.v1, bearer.<JWT>` (answered `natter.v1`, never the token).
#[utoipa::path(get, path = "/ws", tag = "websocket",
    description = "The WebSocket of the wire protocol (DESIGN §4): one JSON object per text frame, \
        `{\"event\", \"data\", \"ref\"}`. The token comes from `?token=`, `Authorization: Bearer`, \
        or the subprotocol pair `natter.v1, bearer.<JWT>` (answered `natter.v1`). The events are \
        listed in this operation's `x-websocket` extension.",
    params(Params,
        ("Sec-WebSocket-Protocol" = Option<String>, Header,
            description = "`natter.v1, bearer.<JWT>`: how browsers pass the token")),
    security((), ("bearer" = [])),
    responses((status = 101, description = "switched to the WebSocket protocol"), crate::error::ErrorResponses))]
pub async fn upgrade(
    State(connections): State<Arc<Connections>>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    check_origin(&connections.allowed_origins, &headers)?;
    let token = params
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .or_else(|| bearer_token(&headers))
        .or_else(|| protocol_token(&headers))
        .ok_or_else(|| ApiError::Unauthorized("missing token".into()))?;
    let claims = connections.auth.authenticate(token)?;
    let device = match params.device.as_deref() {
        Some(raw) => DeviceId::parse(raw)?,
        None => DeviceId::default(),
    };
    let user = connections
        .directory
        .get(UserId(claims.sub))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    // Authenticated first: a request that is no upgrade at all learns only
    // that once its token is good.
    let ws = ws
        .map_err(|e| ApiError::bad_request(format!("a WebSocket upgrade is required here: {e}")))?;
    tracing::debug!(user = %user.id, username = %user.username, "handshake accepted");
    let max_frame = connections.max_frame_bytes;
    let user = user.id;
    Ok(ws
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            let expires = expiry_instant(claims.exp);
            let connection = Opened {
                user,
                device,
                jti: claims.jti,
                expires,
            };
            let tasks = connections.tasks.clone();
            tasks.track_future(connections.run(socket, connection))
        }))
}

/// The instant a token expiring at `exp` (unix seconds) expires, on the
/// runtime's clock.
fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    tokio::time::Instant::now() + std::time::Duration::from_secs(exp.saturating_sub(now))
}

/// A handshake with an `Origin` must come from an allowed origin or the
/// gateway's own; one without (a non-browser client) is judged by its token.
fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| ApiError::Forbidden("origin not allowed".into()))?;
    let own = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        });
    if own || allowed.iter().any(|o| o == origin) {
        Ok(())
    } else {
        tracing::warn!(origin, "WebSocket handshake from a foreign origin refused");
        Err(ApiError::Forbidden("origin not allowed".into()))
    }
}

/// What the handshake established about a connection.
struct Opened {
    user: UserId,
    device: DeviceId,
    jti: uuid::Uuid,
    /// When its token expires.
    expires: tokio::time::Instant,
}

/// A connection's session with the socket's sending half.
type LiveSession = Session<Live, SplitSink<WebSocket, axum::extract::ws::Message>>;

/// A connection that joined the hub and presence.
struct Joined {
    session: LiveSession,
    /// Its session in the hub.
    hub_session: u64,
    presence_key: String,
}

impl Connections {
    /// One connection, from joining the hub to its close frame.
    ///
    /// Its future is the connection's task, resident for the connection's
    /// whole life, so it holds only what an idle session needs: this is no
    /// `async fn` (which keeps each argument twice), and the joining and
    /// the leaving run boxed, only while they run (BENCHMARKS.md, memory
    /// per idle socket).
    fn run(
        self: Arc<Self>,
        socket: WebSocket,
        opened: Opened,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (sink, mut stream) = socket.split();
        async move {
            let Some((mut joined, attachment)) = Box::pin(self.join(sink, &opened)).await else {
                return;
            };
            let end = joined
                .session
                .serve(&mut stream, attachment, &self.shutdown)
                .await;
            Box::pin(self.leave(joined, &opened, end)).await;
        }
    }

    /// Joins the hub and presence and announces the device; `None` (with
    /// the close frame sent) if the connection cannot go on.
    async fn join(
        &self,
        mut sink: SplitSink<WebSocket, axum::extract::ws::Message>,
        opened: &Opened,
    ) -> Option<(Joined, Attachment)> {
        let Opened {
            user,
            ref device,
            jti,
            expires,
        } = *opened;
        let attachment = match self.hub.attach(user, device.clone(), jti).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, %user, "cannot subscribe to live delivery");
                let _ = sink
                    .send(close(close_code::AGAIN, "delivery unavailable; retry"))
                    .await;
                return None;
            }
        };
        let session_id = attachment.session;
        let presence_key = match self
            .presence
            .connected(
                user,
                device.clone(),
                self.control.gateway_id(),
                session_id,
                self.max_connections_per_user,
            )
            .await
        {
            Ok(key) => key,
            Err(e) => {
                // After the handshake, so the client sees why (a refused
                // upgrade is an HTTP status most browser APIs hide).
                let suppressed = self
                    .over_limit_log
                    .lock()
                    .ok()
                    .and_then(|mut log| log.note(tokio::time::Instant::now()));
                if let Some(suppressed) = suppressed {
                    tracing::warn!(error = %e, %device, suppressed,
                        "connection refused: too many connections");
                }
                self.hub.detach(user, session_id);
                let _ = sink.send(close(close_code::POLICY, TOO_MANY)).await;
                return None;
            }
        };
        metrics::connection_opened();
        metrics::active_users(self.hub.user_count());
        // This device's older connection, on any gateway, gives way.
        let replaces = Control::DeviceConnected {
            device_id: device.clone(),
            session: self.control.session_key(session_id),
        };
        self.control.announce(user, &replaces).await;
        let session = Session::new(
            self.backend.clone(),
            user,
            device.clone(),
            self.limits.clone(),
            sink,
        )
        .expiring_at(expires);
        tracing::info!(%user, %device, "[CONNECTION] user connected");
        let joined = Joined {
            session,
            hub_session: session_id,
            presence_key,
        };
        Some((joined, attachment))
    }

    /// Leaves the hub and presence, writes the device's cursor, and sends
    /// the close frame `end` calls for.
    async fn leave(&self, joined: Joined, opened: &Opened, end: End) {
        let Joined {
            mut session,
            hub_session,
            presence_key,
        } = joined;
        let (user, device) = (opened.user, &opened.device);
        self.hub.detach(user, hub_session);
        metrics::active_users(self.hub.user_count());
        self.presence.disconnected(&presence_key).await;
        if let Err(e) = self.cursors.flush().await {
            tracing::warn!(error = %e, "cursor write at disconnect failed; will retry");
        }
        metrics::connection_closed(match end {
            End::ClientGone => Closed::Client,
            End::Close(_, reason) => Closed::Server(reason),
        });
        session.close(end).await;
        tracing::info!(%user, %device, "[DISCONNECT] user disconnected");
    }
}

/// The gateway behind every session: device cursors, the delivery log, and
/// the chat commands.
pub struct Live {
    pub cursors: Arc<CursorStore>,
    pub log: DeliveryLog,
    /// Fills in the records stored by reference.
    pub contents: Contents,
    pub chat: Arc<Chat>,
    pub typing: TypingSignals,
    /// Owns the tasks that await sends' acks.
    pub tasks: TaskTracker,
}

impl Backend for Live {
    async fn cursor(&self, user: UserId, device: &DeviceId) -> Result<Option<u64>, Unavailable> {
        self.cursors
            .load(user, device)
            .await
            .map_err(Unavailable::new)
    }

    async fn register(
        &self,
        user: UserId,
        device: &DeviceId,
        seq: u64,
    ) -> Result<u64, Unavailable> {
        self.cursors
            .create(user, device, seq)
            .await
            .map_err(Unavailable::new)
    }

    fn advance(&self, user: UserId, device: &DeviceId, seq: u64) {
        self.cursors.advance(user, device, seq);
    }

    async fn log_bounds(&self) -> Result<(u64, u64), Unavailable> {
        self.log.bounds().await.map_err(Unavailable::new)
    }

    async fn read_log(
        &self,
        user: UserId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, Unavailable> {
        self.log
            .read(user, from, limit)
            .await
            .map_err(Unavailable::new)
    }

    async fn fill_content(
        &self,
        id: MessageId,
        record: &Bytes,
    ) -> Result<Option<Bytes>, Unavailable> {
        self.contents
            .fill(id, record)
            .await
            .map_err(Unavailable::new)
    }

    async fn submit(&self, sender: UserId, send: SendMessage) -> Result<Confirmation, ApiError> {
        let submitted = self.chat.submit(sender, send).await?;
        let confirmed = self
            .tasks
            .spawn(Trace::current().instrument(submitted.confirm()));
        Ok(Box::pin(async move {
            confirmed.await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "a send's confirmation task failed");
                Err(ApiError::Unavailable(
                    "the message was not accepted; retry".into(),
                ))
            })
        }))
    }

    async fn mark_read(
        &self,
        reader: UserId,
        conversation: ConversationId,
        up_to_seq: Option<u64>,
    ) -> Result<(), ApiError> {
        self.chat.mark_read(reader, conversation, up_to_seq).await
    }

    async fn typing(&self, user: UserId, conversation: ConversationId) -> Result<(), ApiError> {
        self.typing.publish(user, conversation).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn output_size<F, A, B, C, R>(_: &F) -> usize
    where
        F: FnOnce(A, B, C) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// A connection's future is its task, resident for the connection's
    /// whole life; whatever a step awaits in place is held by every idle
    /// socket (5,136 bytes in a release build with every step in place;
    /// BENCHMARKS.md, memory per idle socket).
    #[test]
    fn an_idle_connection_holds_a_small_future() {
        let size = output_size(&Connections::run);
        assert!(
            size <= 2_048,
            "a connection's future is {size} bytes: box the step that grew it"
        );
    }
}
