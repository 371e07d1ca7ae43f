//! One WebSocket connection: the handshake checks, then a single task that
//! multiplexes client frames, live delivery records, catch-up replays and
//! the acks of in-flight sends. Writes are bounded in time (a reader that
//! stops reading is closed) and every queue is bounded.

use crate::chat;
use crate::control::{self, Control};
use crate::delivery::{self, Attachment, Push, Stored};
use crate::error::ApiError;
use crate::metrics::{self, Closed, Path};
use crate::state::AppState;
use crate::typing;
use crate::ws::protocol::{self, Command};
use crate::ws::throttle::Throttle;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use axum::extract::ws::{
    CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade, close_code,
};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::stream::{FuturesOrdered, SplitSink};
use futures::{SinkExt, StreamExt};
use natter_core::{DeviceId, MessageSent, UserId, delivery::frame_with_cursor};
use serde::Deserialize;
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use tokio::time::Instant;
use tracing::Instrument;

/// Records read from the log per direct-get batch.
const REPLAY_BATCH: usize = 256;
/// Per-connection socket buffers: small, since most connections are idle.
const SOCKET_BUFFER: usize = 4 * 1024;
/// Bytes a connection may have queued for the network before writes block.
const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// Typing signals a connection may send per second, and in a burst.
const TYPING_RATE: f64 = 2.0;
const TYPING_BURST: f64 = 5.0;
/// A connection may send this many seconds' worth of its rate at once.
const SEND_BURST_SECONDS: f64 = 2.0;

#[derive(Debug, Deserialize)]
pub struct Params {
    token: Option<String>,
    device: Option<String>,
}

/// `GET /ws?token=&device=`: authenticate, check the origin, upgrade.
pub async fn upgrade(
    State(state): State<AppState>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    check_origin(&state, &headers)?;
    let token = params
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .or_else(|| crate::auth::bearer_token(&headers))
        .ok_or_else(|| ApiError::Unauthorized("missing token".into()))?;
    let claims = crate::auth::authenticate(&state, token)?;
    let device = match params.device.as_deref() {
        Some(raw) => DeviceId::parse(raw)?,
        None => DeviceId::default(),
    };
    let user = state
        .directory
        .get(UserId(claims.sub))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    tracing::debug!(user = %user.id, username = %user.username, "handshake accepted");
    let max_frame = state.config.max_frame_bytes;
    Ok(ws
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| run(state, socket, user.id, device, claims.jti)))
}

/// A handshake with an `Origin` must come from an allowed origin or the
/// gateway's own; one without (a non-browser client) is judged by its token.
fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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
    if own || state.config.allowed_origins.iter().any(|o| o == origin) {
        Ok(())
    } else {
        tracing::warn!(origin, "WebSocket handshake from a foreign origin refused");
        Err(ApiError::Forbidden("origin not allowed".into()))
    }
}

/// A send waiting for its JetStream ack.
struct InFlight {
    reference: Option<Value>,
    sent: MessageSent,
    /// When its frame arrived, for the accept latency.
    received: Instant,
    /// The root of the message's trace.
    span: tracing::Span,
}

type Ack = Pin<Box<dyn Future<Output = (InFlight, Result<PublishAck, PublishError>)> + Send>>;

struct Session {
    state: AppState,
    user: UserId,
    device: DeviceId,
    /// Typing signals allowed per second (and burst).
    typing: Throttle,
    /// Sends allowed per second (and burst).
    sends: Throttle,
    sink: SplitSink<WebSocket, WsMessage>,
    /// The highest `DELIVERY` sequence written to this socket (or the
    /// device's cursor before anything was).
    last_sent: u64,
}

/// Why a session ends.
enum End {
    ClientGone,
    Close(u16, &'static str),
}

async fn run(state: AppState, socket: WebSocket, user: UserId, device: DeviceId, jti: uuid::Uuid) {
    let (sink, mut stream) = socket.split();
    let attachment = match state.hub.attach(user, device.clone(), jti).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, %user, "cannot subscribe to live delivery");
            let mut sink = sink;
            let _ = sink
                .send(close(close_code::AGAIN, "delivery unavailable; retry"))
                .await;
            return;
        }
    };
    metrics::connection_opened();
    metrics::active_users(state.hub.user_count());
    let session_id = attachment.session;
    // This device's older connection, on any gateway, gives way.
    control::announce(
        &state,
        user,
        &Control::DeviceConnected {
            device_id: device.clone(),
            session: control::session_key(&state, session_id),
        },
    )
    .await;
    let presence_key = state
        .presence
        .connected(user, device.clone(), state.gateway_id, session_id)
        .await;
    let mut session = Session {
        state: state.clone(),
        user,
        device,
        typing: Throttle::new(TYPING_RATE, TYPING_BURST),
        sends: Throttle::new(
            state.config.send_rate_per_sec,
            state.config.send_rate_per_sec * SEND_BURST_SECONDS,
        ),
        sink,
        last_sent: 0,
    };
    tracing::info!(user = %session.user, device = %session.device, "[CONNECTION] user connected");
    let end = session.serve(&mut stream, attachment).await;
    state.hub.detach(user, session_id);
    metrics::active_users(state.hub.user_count());
    state.presence.disconnected(&presence_key).await;
    if let Err(e) = state.cursors.flush().await {
        tracing::warn!(error = %e, "cursor write at disconnect failed; will retry");
    }
    metrics::connection_closed(match end {
        End::ClientGone => Closed::Client,
        End::Close(_, reason) => Closed::Server(reason),
    });
    if let End::Close(code, reason) = end {
        // Bounded: a reader that stopped reading would hold the task forever.
        let _ = tokio::time::timeout(
            state.config.slow_reader_timeout(),
            session.sink.send(close(code, reason)),
        )
        .await;
    }
    tracing::info!(user = %session.user, device = %session.device, "[DISCONNECT] user disconnected");
}

fn close(code: u16, reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

impl Session {
    async fn serve(
        &mut self,
        stream: &mut futures::stream::SplitStream<WebSocket>,
        mut live: Attachment,
    ) -> End {
        if let Err(end) = self.start().await {
            return end;
        }
        let max_inflight = self.state.config.session_max_inflight.max(1);
        let shutdown = self.state.shutdown.clone();
        let mut inflight: FuturesOrdered<Ack> = FuturesOrdered::new();
        let ping_every = self.state.config.ws_ping_interval();
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let step = tokio::select! {
                _ = shutdown.cancelled() => Err(End::Close(close_code::AWAY, "server shutting down")),
                _ = keepalive.tick() => {
                    if last_heard.elapsed() > ping_every * 2 {
                        tracing::info!(user = %self.user, device = %self.device, "client silent; connection dropped");
                        Err(End::ClientGone)
                    } else {
                        self.send(WsMessage::Ping(Default::default())).await
                    }
                }
                frame = stream.next(), if inflight.len() < max_inflight => match frame {
                    Some(Ok(frame)) => {
                        last_heard = tokio::time::Instant::now();
                        self.on_frame(frame, &mut inflight).await
                    }
                    Some(Err(e)) => Err(self.read_failed(e)),
                    None => Err(End::ClientGone),
                },
                Some(push) = live.rx.recv() => match push {
                    Push::Record(record) => self.on_live(record).await,
                    Push::Frame(frame) => self.send_text(frame.to_string(), "signal").await,
                },
                Ok(()) = live.closed.changed() => match *live.closed.borrow() {
                    Some(closing) => Err(End::Close(closing.code, closing.reason)),
                    None => Ok(()),
                },
                _ = live.lagged.notified() => self.catch_up().await,
                Some((flight, ack)) = inflight.next(), if !inflight.is_empty() => {
                    self.on_ack(flight, ack).await
                }
            };
            if let Err(end) = step {
                // Replies to accepted sends must not be lost to a close.
                while let Some((flight, ack)) = inflight.next().await {
                    if self.on_ack(flight, ack).await.is_err() {
                        break;
                    }
                }
                return end;
            }
        }
    }

    /// `ready`, then everything the device missed.
    async fn start(&mut self) -> Result<(), End> {
        let state = self.state.clone();
        let cursor = match state.cursors.load(self.user, &self.device).await {
            Ok(Some(cursor)) => {
                self.last_sent = cursor;
                self.send_text(
                    protocol::frame(
                        "ready",
                        json!({"userId": self.user, "deviceId": self.device, "cursor": cursor}),
                        None,
                    ),
                    "ready",
                )
                .await?;
                let (first, _) = delivery::log_bounds(&state.delivery)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                if cursor + 1 < first {
                    tracing::warn!(user = %self.user, device = %self.device, cursor, first,
                        "device cursor is older than the delivery log; resync required");
                    self.send_text(protocol::frame(
                        "resync_required",
                        json!({"reason": "the device was away longer than the delivery log is kept; reload over REST"}),
                        None,
                    ), "resync_required")
                    .await?;
                }
                cursor
            }
            Ok(None) => {
                // A new device starts at the current end of the log.
                let (_, last) = delivery::log_bounds(&state.delivery)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                let cursor = state
                    .cursors
                    .create(self.user, &self.device, last)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                self.last_sent = cursor;
                self.send_text(
                    protocol::frame(
                        "ready",
                        json!({"userId": self.user, "deviceId": self.device, "cursor": cursor}),
                        None,
                    ),
                    "ready",
                )
                .await?;
                cursor
            }
            Err(e) => return Err(self.unavailable(e)),
        };
        tracing::debug!(user = %self.user, device = %self.device, cursor, "replaying from cursor");
        self.catch_up().await
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> End {
        tracing::warn!(error = %e, user = %self.user, "session cannot start");
        End::Close(close_code::AGAIN, "temporarily unavailable; reconnect")
    }

    /// Sends every record of the user's log after `last_sent`.
    async fn catch_up(&mut self) -> Result<(), End> {
        let started = Instant::now();
        let mut replayed = 0;
        let result = self.replay(&mut replayed).await;
        if replayed > 0 {
            metrics::replayed(replayed, started.elapsed());
            tracing::info!(user = %self.user, device = %self.device, events = replayed,
                elapsed_ms = started.elapsed().as_millis() as u64, "missed events replayed");
        }
        result
    }

    async fn replay(&mut self, replayed: &mut usize) -> Result<(), End> {
        loop {
            let records = delivery::read_log(
                &self.state.nats,
                self.user,
                self.last_sent + 1,
                REPLAY_BATCH,
            )
            .await
            .map_err(|e| self.unavailable(e))?;
            let full = records.len() >= REPLAY_BATCH;
            for record in records {
                if self.deliver(record, Path::Replay).await? {
                    *replayed += 1;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn on_live(&mut self, record: Stored) -> Result<(), End> {
        if record.seq <= self.last_sent {
            return Ok(());
        }
        match record.last_seq {
            // Something of this user's was stored between what we sent and
            // this record: fetch it from the log, which includes this one.
            Some(previous) if previous > self.last_sent => self.catch_up().await,
            _ => self.deliver(record, Path::Live).await.map(|_| ()),
        }
    }

    /// Writes one record to the socket, continuing the trace of its message.
    /// `Ok(false)`: the socket already had it.
    async fn deliver(&mut self, record: Stored, path: Path) -> Result<bool, End> {
        if record.seq <= self.last_sent {
            return Ok(false);
        }
        // Few fields: this span is made for every record every device gets.
        let span = tracing::info_span!("gateway.deliver", seq = record.seq, path = path.as_str());
        natter_runtime::trace::continue_from(&span, record.traceparent.as_deref());
        match frame_with_cursor(&record.payload, record.seq) {
            Some(frame) => {
                let write = tracing::info_span!(parent: &span, "ws.write");
                self.send_text(frame, "delivery").instrument(write).await?;
                if let Some(accepted) = record.accepted_at {
                    metrics::delivered(path, natter_runtime::metrics::seconds_since(accepted));
                }
                tracing::info!(parent: &span, user = %self.user, device = %self.device,
                    seq = record.seq, path = path.as_str(), "delivered to the socket");
            }
            None => tracing::error!(parent: &span, seq = record.seq,
                "malformed delivery record skipped"),
        }
        self.last_sent = record.seq;
        Ok(true)
    }

    async fn on_frame(
        &mut self,
        frame: WsMessage,
        inflight: &mut FuturesOrdered<Ack>,
    ) -> Result<(), End> {
        let text = match frame {
            WsMessage::Text(text) => text,
            WsMessage::Binary(_) => {
                let error =
                    ApiError::bad_request("binary frames are not supported; send JSON text");
                metrics::frame_received("binary");
                return self
                    .send_text(protocol::error_frame(&error, None), "error")
                    .await;
            }
            WsMessage::Close(_) => return Err(End::ClientGone),
            WsMessage::Ping(_) | WsMessage::Pong(_) => return Ok(()),
        };
        let received = Instant::now();
        let incoming = protocol::parse(text.as_str(), self.state.config.max_message_bytes);
        let reference = incoming.reference;
        let result = match incoming.command {
            Ok(command) => {
                metrics::frame_received(command.name());
                self.execute(command, reference.clone(), received, inflight)
                    .await
            }
            Err(e) => {
                metrics::frame_received("invalid");
                Err(e)
            }
        };
        match result {
            Ok(Some(reply)) => self.send_text(reply, "reply").await,
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::info!(user = %self.user, code = e.code(), error = %e, "command refused");
                self.send_text(protocol::error_frame(&e, reference.as_ref()), "error")
                    .await
            }
        }
    }

    async fn execute(
        &mut self,
        command: Command,
        reference: Option<Value>,
        received: Instant,
        inflight: &mut FuturesOrdered<Ack>,
    ) -> Result<Option<String>, ApiError> {
        match command {
            Command::SendMessage(send) => {
                if !self.sends.allow() {
                    return Err(ApiError::RateLimited("too many messages; slow down".into()));
                }
                // Looked up per send (a cache hit), so a new display name
                // shows on the next message.
                let sender = self
                    .state
                    .directory
                    .get(self.user)
                    .await?
                    .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
                // Each message is its own trace, not part of the connection's.
                let span = tracing::info_span!(
                    parent: None,
                    "ws.send_message",
                    sender = %self.user,
                    message_id = tracing::field::Empty,
                    conversation = tracing::field::Empty,
                );
                let state = self.state.clone();
                let (sent, pending) = async move {
                    let sent = chat::prepare(&state, &sender, send).await?;
                    let pending = chat::publish(&state, &sent).await?;
                    Ok::<_, ApiError>((sent, pending))
                }
                .instrument(span.clone())
                .await?;
                span.record("message_id", tracing::field::display(sent.id));
                span.record(
                    "conversation",
                    tracing::field::display(sent.conversation_id),
                );
                chat::log_accepted(&self.state, &span, &sent);
                let flight = InFlight {
                    reference,
                    sent,
                    received,
                    span,
                };
                // The ack is awaited on a task of its own: while this
                // session waits for room in the publish window, the acks
                // it holds must still come in and free that room.
                let ack = tokio::spawn(pending.ack());
                inflight.push_back(Box::pin(async move {
                    let ack = ack.await.unwrap_or_else(|e| {
                        Err(PublishError::with_source(PublishErrorKind::Other, e))
                    });
                    (flight, ack)
                }));
                Ok(None)
            }
            Command::MarkRead {
                conversation_id,
                up_to_seq,
            } => {
                chat::mark_read(&self.state, self.user, conversation_id, up_to_seq).await?;
                tracing::info!(user = %self.user, conversation = %conversation_id, "messages marked as read");
                Ok(None)
            }
            Command::Ack { cursor } => {
                if cursor > self.last_sent {
                    return Err(ApiError::bad_request(format!(
                        "cursor {cursor} is ahead of what was delivered ({})",
                        self.last_sent
                    )));
                }
                self.state.cursors.advance(self.user, &self.device, cursor);
                Ok(None)
            }
            Command::Ping => Ok(Some(protocol::frame("pong", json!({}), reference.as_ref()))),
            Command::JoinGroup => Ok(None),
            Command::Typing { conversation_id } => {
                if !self.typing.allow() {
                    return Err(ApiError::RateLimited(
                        "too many typing signals; slow down".into(),
                    ));
                }
                typing::publish(&self.state, self.user, conversation_id).await?;
                Ok(None)
            }
        }
    }

    async fn on_ack(
        &mut self,
        flight: InFlight,
        ack: Result<PublishAck, PublishError>,
    ) -> Result<(), End> {
        let InFlight {
            reference,
            sent,
            received,
            span,
        } = flight;
        let (frame, kind) = match chat::confirm(&self.state, sent, ack)
            .instrument(span.clone())
            .await
        {
            Ok(message) => {
                metrics::accept_latency(received.elapsed());
                tracing::info!(parent: &span, message_id = %message.id, seq = message.seq,
                    "confirmation sent to sender");
                (
                    protocol::message_sent(&message, reference.as_ref()),
                    "message_sent",
                )
            }
            Err(e) => (protocol::error_frame(&e, reference.as_ref()), "error"),
        };
        self.send_text(frame, kind).instrument(span).await
    }

    async fn send_text(&mut self, text: String, kind: &'static str) -> Result<(), End> {
        self.send(WsMessage::Text(text.into())).await?;
        metrics::frame_sent(kind);
        Ok(())
    }

    async fn send(&mut self, message: WsMessage) -> Result<(), End> {
        let write = self.sink.send(message);
        match tokio::time::timeout(self.state.config.slow_reader_timeout(), write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::ClientGone),
            Err(_) => {
                tracing::warn!(user = %self.user, device = %self.device, "slow reader disconnected");
                Err(End::Close(close_code::POLICY, "slow reader"))
            }
        }
    }

    fn read_failed(&self, e: axum::Error) -> End {
        let text = e.to_string();
        if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
            tracing::warn!(user = %self.user, "frame over the size limit; closing");
            End::Close(close_code::SIZE, "frame too large")
        } else {
            tracing::debug!(error = %text, "socket read failed");
            End::ClientGone
        }
    }
}
