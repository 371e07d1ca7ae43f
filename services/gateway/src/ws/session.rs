//! One WebSocket connection after its handshake: a single task that
//! multiplexes client frames, live delivery records, catch-up replays and
//! the confirmations of in-flight sends. Writes are bounded in time (a
//! reader that stops reading is closed) and every queue is bounded.
//!
//! The session is generic over its socket (any `Sink` and `Stream` of
//! WebSocket messages) and over its [`Backend`], so its rules — replay then
//! live with no gap and no duplicate, cumulative acks never beyond what was
//! delivered, a bad frame answered and survived — are tested in-process.

use crate::delivery::{Alarm, Attachment, Push, Stored};
use crate::error::ApiError;
use crate::metrics::{self, Path};
use crate::ws::protocol::{self, Command, SendMessage};
use crate::ws::refusals::Refusals;
use axum::extract::ws::{CloseFrame, Message as WsMessage, close_code};
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{Sink, SinkExt, Stream, StreamExt};
use natter_core::{ConversationId, DeviceId, Message, MessageId, UserId};
use natter_runtime::trace::Trace;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

/// Records read from the log per direct-get batch.
const REPLAY_BATCH: usize = 256;

/// A dependency did not answer; the session cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl Unavailable {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// A send's confirmation, resolved once JetStream acked its record. It runs
/// on a task of its own: while a session waits for room in the publish
/// window, the acks it holds must still come in and free that room.
pub type Confirmation = Pin<Box<dyn Future<Output = Result<Message, ApiError>> + Send>>;

/// What a session needs from the rest of the gateway.
pub trait Backend: Send + Sync + 'static {
    /// The device's cursor, or `None` for a device never seen.
    fn cursor(
        &self,
        user: UserId,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Option<u64>, Unavailable>> + Send;
    /// Registers a new device at `seq`; if another registration won a race,
    /// the cursor it stored.
    fn register(
        &self,
        user: UserId,
        device: &DeviceId,
        seq: u64,
    ) -> impl Future<Output = Result<u64, Unavailable>> + Send;
    /// A client's cumulative ack: everything up to `seq` is processed.
    fn advance(&self, user: UserId, device: &DeviceId, seq: u64);
    /// The first and last sequence of the delivery log.
    fn log_bounds(&self) -> impl Future<Output = Result<(u64, u64), Unavailable>> + Send;
    /// Up to `limit` of `user`'s records with sequence ≥ `from`, in order.
    fn read_log(
        &self,
        user: UserId,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Stored>, Unavailable>> + Send;
    /// `record` (stored by reference, of message `id`) with its content
    /// filled in; `None` if the message is not stored.
    fn fill_content(
        &self,
        id: MessageId,
        record: &Bytes,
    ) -> impl Future<Output = Result<Option<Bytes>, Unavailable>> + Send;
    /// Validates and publishes a send; the confirmation comes later.
    fn submit(
        &self,
        sender: UserId,
        send: SendMessage,
    ) -> impl Future<Output = Result<Confirmation, ApiError>> + Send;
    fn mark_read(
        &self,
        reader: UserId,
        conversation: ConversationId,
        up_to_seq: Option<u64>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn typing(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// A session's limits, from the gateway's configuration.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Sends awaiting their confirmation before frames stop being read.
    pub max_inflight: usize,
    pub ping_every: Duration,
    /// How long one write may block before the reader counts as too slow.
    pub slow_reader: Duration,
}

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientGone,
    Close(u16, &'static str),
}

/// A send waiting for its confirmation.
type InFlight = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// A confirmation and what its reply needs.
struct Reply {
    reference: Option<Value>,
    /// When its frame arrived, for the accept latency.
    received: Instant,
    /// The root of the message's trace.
    trace: Trace,
    outcome: Result<Message, ApiError>,
}

pub struct Session<B, S> {
    backend: Arc<B>,
    user: UserId,
    device: DeviceId,
    limits: Limits,
    sink: S,
    /// The highest `DELIVERY` sequence written to this socket (or the
    /// device's cursor before anything was).
    last_sent: u64,
    /// When the token that opened the socket expires: the socket closes then.
    expires: Option<Instant>,
    refusals: Refusals,
    /// Frames fed to the sink since it last flushed.
    unflushed: bool,
}

impl<B, S> Session<B, S>
where
    B: Backend,
    S: Sink<WsMessage> + Unpin + Send,
{
    pub fn new(backend: Arc<B>, user: UserId, device: DeviceId, limits: Limits, sink: S) -> Self {
        Self {
            backend,
            user,
            device,
            limits,
            sink,
            last_sent: 0,
            expires: None,
            refusals: Refusals::default(),
            unflushed: false,
        }
    }

    /// Closes the session (1008, "token expired") at `at`, when the token
    /// that authenticated it expires.
    pub fn expiring_at(mut self, at: Instant) -> Self {
        self.expires = Some(at);
        self
    }

    /// Serves the connection until the client goes, the server closes it,
    /// or `shutdown`; replies to accepted sends are written before it ends.
    pub async fn serve<R>(
        &mut self,
        stream: &mut R,
        live: Attachment,
        shutdown: &CancellationToken,
    ) -> End
    where
        R: Stream<Item = Result<WsMessage, axum::Error>> + Unpin + Send,
    {
        // The handshake's replay and the handling of each event below run
        // boxed: a future awaited in place is part of the session's task for
        // its whole life, and most sessions spend it idle (BENCHMARKS.md,
        // memory per idle socket); an allocation per event costs less than a
        // kilobyte held by every socket.
        if let Err(end) = Box::pin(self.start()).await {
            return end;
        }
        let mut inflight: FuturesOrdered<InFlight> = FuturesOrdered::new();
        let ping_every = self.limits.ping_every;
        let mut keepalive = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let max_inflight = self.limits.max_inflight.max(1);
        let expired = expiry(self.expires);
        tokio::pin!(expired);
        loop {
            // In this order, and the flush only when nothing else is ready: frames written
            // in the same tick leave in one write (the sink buffers what `send` feeds it).
            // The client's frames come before its deliveries, so a session busy with a
            // long stream of deliveries still hears the client's pongs (and does not take
            // it for silent); its sends are bounded by `max_inflight`, and their replies
            // come first once it is reached.
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(End::Close(close_code::AWAY, "server shutting down")),
                _ = &mut expired => {
                    tracing::info!(user = %self.user, device = %self.device, "token expired; connection closed");
                    Err(End::Close(close_code::POLICY, "token expired"))
                }
                alarm = live.inbox.alarm() => match alarm {
                    Alarm::Close(closing) => Err(End::Close(closing.code, closing.reason)),
                    Alarm::Lagged => Box::pin(self.catch_up()).await,
                },
                _ = keepalive.tick() => self.keepalive(last_heard).await,
                frame = stream.next(), if inflight.len() < max_inflight => match frame {
                    Some(Ok(frame)) => {
                        last_heard = Instant::now();
                        Box::pin(self.on_frame(frame, &mut inflight)).await
                    }
                    Some(Err(e)) => Err(self.read_failed(e)),
                    None => Err(End::ClientGone),
                },
                Some(reply) = inflight.next(), if !inflight.is_empty() => {
                    Box::pin(self.on_reply(reply)).await
                }
                push = live.inbox.next() => match push {
                    Push::Record(record) => {
                        Box::pin(self.on_live(Arc::unwrap_or_clone(record))).await
                    }
                    Push::Frame(frame) => self.send_text(frame.to_string(), "signal").await,
                },
                flushed = self.sink.flush(), if self.unflushed => {
                    self.unflushed = false;
                    flushed.map_err(|_| End::ClientGone)
                }
            };
            if let Err(end) = step {
                // Replies to accepted sends must not be lost to a close.
                while let Some(reply) = inflight.next().await {
                    if Box::pin(self.on_reply(reply)).await.is_err() {
                        break;
                    }
                }
                self.flush().await;
                return end;
            }
        }
    }

    /// Sends the close frame `end` calls for, bounded in time: a reader that
    /// stopped reading would hold the task forever.
    pub async fn close(&mut self, end: End) {
        if let End::Close(code, reason) = end {
            let _ =
                tokio::time::timeout(self.limits.slow_reader, self.sink.send(close(code, reason)))
                    .await;
        }
    }

    async fn keepalive(&mut self, last_heard: Instant) -> Result<(), End> {
        if last_heard.elapsed() > self.limits.ping_every * 2 {
            tracing::info!(user = %self.user, device = %self.device, "client silent; connection dropped");
            return Err(End::ClientGone);
        }
        self.send(WsMessage::Ping(Default::default())).await
    }

    /// `ready`, then everything the device missed.
    async fn start(&mut self) -> Result<(), End> {
        let cursor = match self.backend.cursor(self.user, &self.device).await {
            Ok(Some(cursor)) => {
                self.last_sent = cursor;
                self.send_text(protocol::ready(self.user, &self.device, cursor), "ready")
                    .await?;
                self.flush().await;
                let (first, _) = self
                    .backend
                    .log_bounds()
                    .await
                    .map_err(|e| self.unavailable(e))?;
                if cursor + 1 < first {
                    tracing::warn!(user = %self.user, device = %self.device, cursor, first,
                        "device cursor is older than the delivery log; resync required");
                    self.send_text(protocol::resync_required(), "resync_required")
                        .await?;
                }
                cursor
            }
            Ok(None) => {
                // A new device starts at the current end of the log.
                let (_, last) = self
                    .backend
                    .log_bounds()
                    .await
                    .map_err(|e| self.unavailable(e))?;
                let cursor = self
                    .backend
                    .register(self.user, &self.device, last)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                self.last_sent = cursor;
                self.send_text(protocol::ready(self.user, &self.device, cursor), "ready")
                    .await?;
                cursor
            }
            Err(e) => return Err(self.unavailable(e)),
        };
        tracing::debug!(user = %self.user, device = %self.device, cursor, "replaying from cursor");
        self.catch_up().await
    }

    fn unavailable(&self, e: Unavailable) -> End {
        tracing::warn!(error = %e, user = %self.user, "a dependency did not answer; session closed");
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
            // What is written so far goes out before waiting on the log.
            self.flush().await;
            let records = self
                .backend
                .read_log(self.user, self.last_sent + 1, REPLAY_BATCH)
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
            Some(previous) if previous > self.last_sent => Box::pin(self.catch_up()).await,
            _ => self.deliver(record, Path::Live).await.map(|_| ()),
        }
    }

    /// Writes one record to the socket, continuing the trace of its message.
    /// `Ok(false)`: the socket already had it.
    async fn deliver(&mut self, record: Stored, path: Path) -> Result<bool, End> {
        if record.seq <= self.last_sent {
            return Ok(false);
        }
        // Few fields: this span is made for every record every device gets
        // in a sampled trace.
        let trace = Trace::continue_from(record.traceparent.as_deref(), || {
            tracing::info_span!("gateway.deliver", seq = record.seq, path = path.as_str())
        });
        let payload = match record.content_of {
            None => Some(record.payload),
            Some(id) => Box::pin(
                trace
                    .child(|parent| tracing::info_span!(parent: parent, "content.fill"))
                    .instrument(self.backend.fill_content(id, &record.payload)),
            )
            .await
            .map_err(|e| self.unavailable(e))?,
        };
        match payload.and_then(|payload| protocol::delivery(&payload, record.seq)) {
            Some(frame) => {
                trace
                    .child(|parent| tracing::info_span!(parent: parent, "ws.write"))
                    .instrument(self.send_text(frame, "delivery"))
                    .await?;
                if let Some(accepted) = record.accepted_at {
                    metrics::delivered(path, natter_runtime::metrics::seconds_since(accepted));
                }
                trace.in_scope(|| {
                    tracing::info!(user = %self.user, device = %self.device,
                    seq = record.seq, path = path.as_str(), "delivered to the socket")
                });
            }
            None => trace.in_scope(|| {
                tracing::error!(seq = record.seq, "malformed delivery record skipped")
            }),
        }
        self.last_sent = record.seq;
        Ok(true)
    }

    async fn on_frame(
        &mut self,
        frame: WsMessage,
        inflight: &mut FuturesOrdered<InFlight>,
    ) -> Result<(), End> {
        let text = match frame {
            WsMessage::Text(text) => text,
            WsMessage::Binary(bytes) => {
                let error =
                    ApiError::bad_request("binary frames are not supported; send JSON text");
                metrics::frame_received("binary");
                self.log_refusal(&error, bytes.len());
                return self
                    .send_text(protocol::error_frame(&error, None), "error")
                    .await;
            }
            WsMessage::Close(_) => return Err(End::ClientGone),
            WsMessage::Ping(_) | WsMessage::Pong(_) => return Ok(()),
        };
        let received = Instant::now();
        let incoming = protocol::parse(text.as_str(), self.limits.max_message_bytes);
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
                self.log_refusal(&e, text.len());
                self.send_text(protocol::error_frame(&e, reference.as_ref()), "error")
                    .await
            }
        }
    }

    /// Logs a refused frame by its code and length, never its content, and at
    /// most once per interval per connection.
    fn log_refusal(&mut self, error: &ApiError, bytes: usize) {
        if let Some(suppressed) = self.refusals.note(Instant::now()) {
            tracing::info!(user = %self.user, device = %self.device, code = error.code(), bytes,
                suppressed, "frame refused");
        }
    }

    /// Runs one command; `Some` is a reply to write now.
    async fn execute(
        &mut self,
        command: Command,
        reference: Option<Value>,
        received: Instant,
        inflight: &mut FuturesOrdered<InFlight>,
    ) -> Result<Option<String>, ApiError> {
        match command {
            Command::SendMessage(send) => {
                let pending = self.submit(send, reference, received).await?;
                inflight.push_back(pending);
                Ok(None)
            }
            Command::MarkRead {
                conversation_id,
                up_to_seq,
            } => {
                self.backend
                    .mark_read(self.user, conversation_id, up_to_seq)
                    .await?;
                Ok(None)
            }
            Command::Ack { cursor } => {
                if cursor > self.last_sent {
                    return Err(ApiError::bad_request(format!(
                        "cursor {cursor} is ahead of what was delivered ({})",
                        self.last_sent
                    )));
                }
                self.backend.advance(self.user, &self.device, cursor);
                Ok(None)
            }
            Command::Ping => Ok(Some(protocol::pong(reference.as_ref()))),
            Command::JoinGroup => Ok(None),
            Command::Typing { conversation_id } => {
                self.backend.typing(self.user, conversation_id).await?;
                Ok(None)
            }
        }
    }

    /// Publishes a send in its own trace; its reply comes when it is confirmed.
    async fn submit(
        &mut self,
        send: SendMessage,
        reference: Option<Value>,
        received: Instant,
    ) -> Result<InFlight, ApiError> {
        // Each message is its own trace, not part of the connection's.
        let trace = Trace::start(|| {
            tracing::info_span!(
                parent: None,
                "ws.send_message",
                sender = %self.user,
                message_id = tracing::field::Empty,
                conversation = tracing::field::Empty,
            )
        });
        let confirmation = trace
            .clone()
            .instrument(self.backend.submit(self.user, send))
            .await?;
        Ok(Box::pin(async move {
            let outcome = confirmation.await;
            Reply {
                reference,
                received,
                trace,
                outcome,
            }
        }))
    }

    async fn on_reply(&mut self, reply: Reply) -> Result<(), End> {
        let Reply {
            reference,
            received,
            trace,
            outcome,
        } = reply;
        let (frame, kind) = match outcome {
            Ok(message) => {
                metrics::accept_latency(received.elapsed());
                (
                    protocol::message_sent(&message, reference.as_ref()),
                    "message_sent",
                )
            }
            Err(e) => (protocol::error_frame(&e, reference.as_ref()), "error"),
        };
        trace.instrument(self.send_text(frame, kind)).await
    }

    async fn send_text(&mut self, text: String, kind: &'static str) -> Result<(), End> {
        self.send(WsMessage::Text(text.into())).await?;
        metrics::frame_sent(kind);
        Ok(())
    }

    /// Hands `message` to the sink, which writes it to the socket once its buffer fills or
    /// the session flushes (when it has nothing else to do, or it ends).
    async fn send(&mut self, message: WsMessage) -> Result<(), End> {
        let write = self.sink.feed(message);
        match tokio::time::timeout(self.limits.slow_reader, write).await {
            Ok(Ok(())) => {
                self.unflushed = true;
                Ok(())
            }
            Ok(Err(_)) => Err(End::ClientGone),
            Err(_) => {
                tracing::warn!(user = %self.user, device = %self.device, "slow reader disconnected");
                Err(End::Close(close_code::POLICY, "slow reader"))
            }
        }
    }

    /// Writes whatever the sink still holds, bounded in time like any write.
    async fn flush(&mut self) {
        if self.unflushed {
            let _ = tokio::time::timeout(self.limits.slow_reader, self.sink.flush()).await;
            self.unflushed = false;
        }
    }

    fn read_failed(&self, e: axum::Error) -> End {
        let error = e.into_inner();
        if is_over_capacity(error.as_ref()) {
            tracing::warn!(user = %self.user, "frame over the size limit; closing");
            End::Close(close_code::SIZE, "frame too large")
        } else {
            tracing::debug!(%error, "socket read failed");
            End::ClientGone
        }
    }
}

/// Whether a read failed on a frame or message over the configured limits.
fn is_over_capacity(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    matches!(
        error.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Resolves at `at`, or never.
async fn expiry(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub fn close(code: u16, reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
