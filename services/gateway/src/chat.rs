//! The commands that change chat state, shared by REST and WebSocket so both
//! validate, publish and log alike: send a message, mark a conversation
//! read, append a group event. A command is accepted when JetStream
//! acknowledges its `CHAT` record — never before (DESIGN.md §1, invariant 1).
//!
//! A send is two steps, [`Chat::submit`] (validate, publish) and
//! [`Submitted::confirm`] (await the ack, answer with the stored message),
//! so a socket can pipeline many sends while REST awaits each in turn.

use crate::directory::{Directory, UserRecord};
use crate::earlier::Earlier;
use crate::error::ApiError;
use crate::presence::Presence;
use crate::throttle::PerUser;
use crate::ws::protocol::{SendMessage, Target};
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage, publish::PublishAck};
use bytes::Bytes;
use natter_core::{
    ChatEvent, ChatRecord, ConversationId, GroupId, Message, MessageId, MessageSent, MessagesRead,
    UserId, subjects,
};
use natter_runtime::backoff::Backoff;
use natter_runtime::trace::Trace;
use sqlx::PgPool;
use std::future::IntoFuture;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// What the chat commands need: the `CHAT` stream, the projection, who
/// exists and who is online, and each user's rate limits.
pub struct Chat {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    pool: PgPool,
    directory: Arc<Directory>,
    presence: Arc<Presence>,
    limits: ChatLimits,
    /// Until when lookups of earlier sends are not tried: one that failed
    /// says PostgreSQL is down, and trying each send again would hold every
    /// session's sends [`LOOKUP_PATIENCE`] apart.
    lookups_paused_until: std::sync::Mutex<Option<Instant>>,
    earlier: Earlier,
}

/// Per-user limits on the commands that write to `CHAT`: every send and
/// read marker costs a record, and fans out to every member.
pub struct ChatLimits {
    pub sends: PerUser,
    pub reads: PerUser,
    /// Bytes of delivery records a user's sends may make per second: a
    /// message costs its size once per recipient.
    pub fanout: PerUser,
}

/// What a delivery record holds besides the content (ids, names, times,
/// the JSON around them), for a send's fan-out cost.
const RECORD_OVERHEAD: usize = 512;

/// A user may send this many seconds' worth of their rate at once.
const SEND_BURST_SECONDS: f64 = 2.0;
/// Read markers a user may set per second, and in a burst: a client marks
/// a conversation read when it is opened, rarely more often.
const READ_RATE: f64 = 5.0;
const READ_BURST: f64 = 10.0;

impl ChatLimits {
    /// `send_rate` messages a second per user (`SEND_RATE_PER_SEC`), and
    /// `fanout_bytes` of delivery records a second (`FANOUT_BYTES_PER_SEC`).
    /// The fan-out burst always admits one largest message to a full group.
    pub fn new(send_rate: f64, fanout_bytes: f64, max_message_bytes: usize) -> Self {
        // Content that is all quotes or backslashes doubles once escaped.
        let largest = fanout_cost(natter_core::MAX_GROUP_MEMBERS, 2 * max_message_bytes);
        Self {
            sends: PerUser::new(send_rate, send_rate * SEND_BURST_SECONDS),
            reads: PerUser::new(READ_RATE, READ_BURST),
            fanout: PerUser::new(
                fanout_bytes,
                (fanout_bytes * SEND_BURST_SECONDS).max(largest),
            ),
        }
    }
}

/// The bytes of delivery records a message of `content_bytes` makes for
/// `recipients`.
fn fanout_cost(recipients: usize, content_bytes: usize) -> f64 {
    (recipients * (content_bytes + RECORD_OVERHEAD)) as f64
}

/// The bytes `content` takes in a JSON record: quotes, backslashes,
/// newlines and tabs are written escaped, two bytes each (content holds no
/// other control characters).
fn encoded_len(content: &str) -> usize {
    content.len()
        + content
            .bytes()
            .filter(|b| matches!(b, b'"' | b'\\' | b'\n' | b'\t'))
            .count()
}

/// What one user id adds to a `group_updated` record's `userIds`.
const NAMED_USER_BYTES: usize = 40;

/// A send handed to JetStream, its ack still to come; or a retry of a
/// message already stored, answered with it.
pub struct Submitted(Outcome);

enum Outcome {
    Published(Box<Pending>),
    Stored(Message),
}

/// A published send.
struct Pending {
    sent: MessageSent,
    ack: PublishAckFuture,
    /// Open from the publish until the ack: JetStream's share of the time.
    publish_trace: Trace,
    /// Where a duplicate's original is read back from.
    stream: jetstream::stream::Stream,
    /// To publish the record again when its ack is lost.
    js: jetstream::Context,
}

/// How long a send may wait for JetStream to accept it, republished under
/// the same message id (deduplicated) while a stream leader is elected or
/// a node is lost, before it is answered `unavailable`: an election takes
/// 4 to 9 s. Shorter than the web client's 15 s, so the answer comes first.
const ACCEPT_PATIENCE: Duration = Duration::from_secs(12);

/// How long a send with a `clientMsgId` waits for PostgreSQL to say whether
/// it was stored before (a point lookup takes a millisecond).
const LOOKUP_PATIENCE: Duration = Duration::from_millis(500);
/// After a lookup failed, how long sends go without one before the next try.
const LOOKUP_PAUSE: Duration = Duration::from_secs(1);

/// Whether a publish may have been lost on its way rather than refused:
/// no ack in time, no stream leader to answer, the connection dropped, or
/// an earlier publish of the same message id still waiting for its quorum
/// (its outcome is unknown until that settles).
fn lost_on_the_way(error: &PublishError) -> bool {
    match error.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::BrokenPipe => true,
        PublishErrorKind::Other => {
            natter_runtime::jetstream::publish_error_code(error)
                == Some(jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
        }
        _ => false,
    }
}

/// JetStream's ack of `sent`, whose record went out as `first`; the record
/// is published again (same message id, so stored once) while it is lost on
/// the way, up to [`ACCEPT_PATIENCE`].
async fn acked(
    js: &jetstream::Context,
    sent: &MessageSent,
    trace: &Trace,
    first: PublishAckFuture,
) -> Result<PublishAck, ApiError> {
    let deadline = Instant::now() + ACCEPT_PATIENCE;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let mut ack = first;
    loop {
        let error = match trace.clone().instrument(ack.into_future()).await {
            Ok(ack) => return Ok(ack),
            Err(error) => error,
        };
        let delay = backoff.next_delay();
        if !lost_on_the_way(&error) || Instant::now() + delay >= deadline {
            return Err(not_accepted(error));
        }
        tracing::debug!(error = %error, "publish lost on the way; publishing again");
        crate::metrics::publish_retried();
        tokio::time::sleep(delay).await;
        ack = publish_record(js, sent, trace)
            .await
            .map_err(not_accepted)?;
    }
}

/// Hands `sent`'s `CHAT` record to JetStream under its message id, with
/// `trace` in its `traceparent` header.
async fn publish_record(
    js: &jetstream::Context,
    sent: &MessageSent,
    trace: &Trace,
) -> Result<PublishAckFuture, PublishError> {
    let payload = serde_json::to_vec(&ChatRecord::new(ChatEvent::MessageSent(sent.clone())))
        .map_err(|e| PublishError::with_source(PublishErrorKind::Other, e))?;
    let mut message = PublishMessage::build()
        .payload(Bytes::from(payload))
        .message_id(sent.id.to_string());
    if let Some(traceparent) = trace.traceparent() {
        message = message.header(natter_runtime::trace::TRACEPARENT, traceparent.as_str());
    }
    trace
        .clone()
        .instrument(js.send_publish(subjects::chat_message(sent.conversation_id), message))
        .await
}

impl Chat {
    pub fn new(
        js: jetstream::Context,
        stream: jetstream::stream::Stream,
        pool: PgPool,
        directory: Arc<Directory>,
        presence: Arc<Presence>,
        limits: ChatLimits,
    ) -> Self {
        Self {
            earlier: Earlier::start(&pool, LOOKUP_PATIENCE),
            js,
            stream,
            pool,
            directory,
            presence,
            limits,
            lookups_paused_until: std::sync::Mutex::new(None),
        }
    }

    /// Validates a send by `sender` and hands its record to JetStream with
    /// the current trace in its `traceparent` header; logs it as accepted.
    pub async fn submit(
        &self,
        sender: UserId,
        command: SendMessage,
    ) -> Result<Submitted, ApiError> {
        self.limits
            .sends
            .check(sender)
            .map_err(|wait| ApiError::rate_limited("too many messages; slow down", wait))?;
        // Looked up per send (a cache hit), so a new display name shows on
        // the next message.
        let sender = self
            .directory
            .get(sender)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
        let (sent, recipients) = self.prepare(&sender, command).await?;
        if let Some(span) = Trace::current().span() {
            span.record("message_id", tracing::field::display(sent.id));
            span.record(
                "conversation",
                tracing::field::display(sent.conversation_id),
            );
        }
        if sent.client_msg_id.is_some()
            && let Some(stored) = self.stored_if_reachable(sent.id).await
        {
            return Ok(Submitted(Outcome::Stored(same_message(&sent, stored)?)));
        }
        self.limits
            .fanout
            .check_cost(
                sent.sender_id,
                fanout_cost(recipients, encoded_len(&sent.content)),
            )
            .map_err(|wait| {
                ApiError::rate_limited("too much sent to too many people; slow down", wait)
            })?;
        let (ack, publish_trace) = self.publish(&sent).await?;
        self.log_accepted(&sent);
        Ok(Submitted(Outcome::Published(Box::new(Pending {
            sent,
            ack,
            publish_trace,
            stream: self.stream.clone(),
            js: self.js.clone(),
        }))))
    }

    /// Charges `user`'s fan-out budget for a group change that sends
    /// `recipients` members a `group_updated` naming `named` users: adding
    /// 999 people to a group makes a million user ids of records, which
    /// the change rate alone would let one user repeat every second.
    pub fn charge_group_change(
        &self,
        user: UserId,
        recipients: usize,
        named: usize,
    ) -> Result<(), ApiError> {
        self.limits
            .fanout
            .check_cost(user, fanout_cost(recipients, named * NAMED_USER_BYTES))
            .map_err(|wait| {
                ApiError::rate_limited("too many group changes to too many people; slow down", wait)
            })
    }

    /// The message stored under `id` ([`Earlier`]), unless PostgreSQL does not answer within
    /// [`LOOKUP_PATIENCE`], or failed to in the last [`LOOKUP_PAUSE`]: sends
    /// must not wait for the projection, which may be down for a while. Without the lookup a retry is still stored
    /// once within JetStream's duplicate window (2 minutes); only a retry
    /// older than that, during the outage, could go unchecked.
    async fn stored_if_reachable(&self, id: MessageId) -> Option<Message> {
        let paused_until = *self
            .lookups_paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if paused_until.is_some_and(|until| Instant::now() < until) {
            crate::metrics::lookup_skipped();
            return None;
        }
        let failure = match tokio::time::timeout(LOOKUP_PATIENCE, self.earlier.stored(id)).await {
            Ok(Ok(stored)) => return stored,
            Ok(Err(e)) => e,
            Err(_) => "no answer in time".to_owned(),
        };
        tracing::warn!(error = %failure, pause_ms = LOOKUP_PAUSE.as_millis() as u64,
            "cannot look up earlier sends; publishing without for a while");
        crate::metrics::lookup_skipped();
        *self
            .lookups_paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + LOOKUP_PAUSE);
        None
    }

    /// Checks a send and builds its record, with how many will receive it.
    /// A direct send needs no database round trip when the receiver is
    /// already known to this gateway; a group send checks the sender's
    /// membership.
    async fn prepare(
        &self,
        sender: &UserRecord,
        command: SendMessage,
    ) -> Result<(MessageSent, usize), ApiError> {
        let client_msg_id = command.client_msg_id.map(|c| c.as_str().to_owned());
        let (conversation_id, receiver_id, group_id, recipients) = match command.target {
            Target::Direct(receiver) => {
                if receiver == sender.id {
                    return Err(ApiError::bad_request("cannot send a message to yourself"));
                }
                if self.directory.get(receiver).await?.is_none() {
                    return Err(ApiError::NotFound(format!("user {receiver} not found")));
                }
                (
                    ConversationId::direct(sender.id, receiver),
                    Some(receiver),
                    None,
                    2,
                )
            }
            Target::Group(group) => {
                // A direct conversation's id, or a deleted group's, names
                // no group: a group send there would be stored as one.
                let members = match self.group_membership(sender.id, group).await? {
                    None => {
                        return Err(ApiError::NotFound(format!("group {group} not found")));
                    }
                    Some((false, _)) => {
                        return Err(ApiError::Forbidden(format!(
                            "not a member of group {group}"
                        )));
                    }
                    Some((true, members)) => members,
                };
                (ConversationId::from(group), None, Some(group), members)
            }
        };
        let sent = MessageSent {
            id: MessageId::for_send(sender.id, client_msg_id.as_deref()),
            conversation_id,
            sender_id: sender.id,
            sender_name: sender.display_name.clone(),
            receiver_id,
            group_id,
            content: command.content.into_string(),
            client_msg_id,
            created_at: natter_core::events::accepted_at(),
        };
        Ok((sent, recipients))
    }

    async fn publish(&self, sent: &MessageSent) -> Result<(PublishAckFuture, Trace), ApiError> {
        let trace = Trace::current().child(|parent| {
            tracing::info_span!(parent: parent, "jetstream.publish", stream = subjects::CHAT_STREAM)
        });
        let ack = publish_record(&self.js, sent, &trace)
            .await
            .map_err(not_accepted)?;
        Ok((ack, trace))
    }

    /// The seed's message-flow log line for an accepted send: who to whom,
    /// and whether the receiver is online anywhere in the cluster right now.
    fn log_accepted(&self, sent: &MessageSent) {
        match (sent.group_id, sent.receiver_id) {
            (Some(group), _) => tracing::info!(sender = %sent.sender_id, %group,
                message_id = %sent.id, "[GROUP MESSAGE] accepted for publishing"),
            (None, Some(receiver)) => {
                let online = self.presence.is_online(receiver);
                tracing::info!(sender = %sent.sender_id, %receiver,
                    receiver_online = online, message_id = %sent.id,
                    "[DIRECT MESSAGE] accepted for publishing");
                if !online {
                    tracing::info!(%receiver, message_id = %sent.id,
                        "receiver is offline; the message waits in its delivery log");
                }
            }
            (None, None) => {}
        }
    }

    /// Records that `reader` read `conversation` up to `up_to_seq` (default:
    /// everything accepted so far). Members only.
    pub async fn mark_read(
        &self,
        reader: UserId,
        conversation: ConversationId,
        up_to_seq: Option<u64>,
    ) -> Result<(), ApiError> {
        // Sequences are PostgreSQL bigints: a larger one can name no message
        // and would not survive the projection.
        if up_to_seq.is_some_and(|seq| i64::try_from(seq).is_err()) {
            return Err(ApiError::bad_request(format!(
                "upToSeq must be at most {}",
                i64::MAX
            )));
        }
        self.limits
            .reads
            .check(reader)
            .map_err(|wait| ApiError::rate_limited("too many read markers; slow down", wait))?;
        self.ensure_member(reader, conversation).await?;
        self.append(
            subjects::chat_read(conversation),
            ChatEvent::MessagesRead(MessagesRead {
                conversation_id: conversation,
                reader_id: reader,
                up_to_seq,
                at: natter_core::events::accepted_at(),
            }),
        )
        .await?;
        tracing::info!(user = %reader, %conversation, "messages marked as read");
        Ok(())
    }

    /// Appends one event to `CHAT` and waits for its ack: its sequence.
    pub async fn append(&self, subject: String, event: ChatEvent) -> Result<u64, ApiError> {
        let kind = event.kind();
        let payload = serde_json::to_vec(&ChatRecord::new(event)).map_err(ApiError::internal)?;
        let trace = Trace::current().child(|parent| {
            tracing::info_span!(parent: parent, "jetstream.publish", stream = subjects::CHAT_STREAM, kind)
        });
        let mut message = PublishMessage::build().payload(Bytes::from(payload));
        if let Some(traceparent) = trace.traceparent() {
            message = message.header(natter_runtime::trace::TRACEPARENT, traceparent.as_str());
        }
        let sequence = trace
            .instrument(async {
                let ack = self
                    .js
                    .send_publish(subject, message)
                    .await
                    .map_err(not_accepted)?;
                Ok::<_, ApiError>(ack.await.map_err(not_accepted)?.sequence)
            })
            .await?;
        crate::metrics::accepted(kind);
        Ok(sequence)
    }

    /// `not_found` unless `user` is a member: a non-member learns nothing,
    /// not even that the conversation exists.
    pub async fn ensure_member(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<(), ApiError> {
        if self.is_member(user, conversation).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!(
                "conversation {conversation} not found"
            )))
        }
    }

    /// Whether `user` is a member of `group`; `None` if `group` is not a
    /// group (a direct conversation, a deleted group, nothing at all).
    async fn group_membership(
        &self,
        user: UserId,
        group: GroupId,
    ) -> Result<Option<(bool, usize)>, ApiError> {
        let row: Option<(bool, i64)> = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM conversation_members m
                            WHERE m.conversation_id = c.id AND m.user_id = $2),
                    (SELECT count(*) FROM conversation_members m WHERE m.conversation_id = c.id)
             FROM conversations c
             WHERE c.id = $1 AND c.kind = 'group' AND c.deleted_seq IS NULL",
        )
        .bind(group.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(member, count)| (member, usize::try_from(count).unwrap_or(0))))
    }

    /// Whether `user` is a member of `conversation` now.
    pub async fn is_member(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<bool, ApiError> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2)",
        )
        .bind(conversation.0)
        .bind(user.0)
        .fetch_one(&self.pool)
        .await?)
    }
}

impl Submitted {
    pub fn message_id(&self) -> MessageId {
        match &self.0 {
            Outcome::Published(pending) => pending.sent.id,
            Outcome::Stored(message) => message.id,
        }
    }

    /// Awaits JetStream's ack and answers with the accepted message. A
    /// duplicate publish (the same message id within the duplicate window)
    /// answers with the stored original, if it is the same message.
    pub async fn confirm(self) -> Result<Message, ApiError> {
        let message = match self.0 {
            Outcome::Stored(message) => message,
            Outcome::Published(pending) => {
                let Pending {
                    sent,
                    ack,
                    publish_trace,
                    stream,
                    js,
                } = *pending;
                let ack = acked(&js, &sent, &publish_trace, ack).await?;
                crate::metrics::accepted(if sent.group_id.is_some() {
                    "group"
                } else {
                    "direct"
                });
                if ack.duplicate {
                    same_message(&sent, original(&stream, ack.sequence).await?)?
                } else {
                    sent.into_message(ack.sequence)
                }
            }
        };
        tracing::info!(message_id = %message.id, seq = message.seq, "confirmation sent to sender");
        Ok(message)
    }
}

/// `earlier`, if `sent` is a retry of it: the same conversation and
/// content under the same `clientMsgId`. Anything else reuses the id for
/// another message, which is refused rather than answered with the earlier
/// one (DESIGN §4).
fn same_message(sent: &MessageSent, earlier: Message) -> Result<Message, ApiError> {
    if earlier.conversation_id == sent.conversation_id && earlier.content == sent.content {
        Ok(earlier)
    } else {
        Err(ApiError::bad_request(
            "clientMsgId was already used for another message; use a new one",
        ))
    }
}

/// The message stored at `sequence`, which a duplicate publish named.
async fn original(stream: &jetstream::stream::Stream, sequence: u64) -> Result<Message, ApiError> {
    let stored = stream
        .direct_get(sequence)
        .await
        .map_err(ApiError::internal)?;
    match serde_json::from_slice::<ChatRecord>(&stored.payload) {
        Ok(ChatRecord {
            event: ChatEvent::MessageSent(original),
            ..
        }) => Ok(original.into_message(sequence)),
        _ => Err(ApiError::internal(format!(
            "CHAT record {sequence} is not the duplicate message"
        ))),
    }
}

fn not_accepted(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "JetStream did not accept a record");
    ApiError::Unavailable("the message was not accepted; retry".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_contents_cost_is_what_json_writes_of_it() {
        for content in [
            "plain",
            "say \"hi\"",
            "a\\b",
            "two\nlines\tand a tab",
            "héllo 😀",
            "",
        ] {
            let json = serde_json::to_string(content).unwrap();
            assert_eq!(encoded_len(content), json.len() - 2, "{content:?}");
        }
    }

    #[test]
    fn a_publish_whose_outcome_is_unknown_is_published_again_and_a_refusal_is_not() {
        use natter_runtime::jetstream::refused_publish;
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::BrokenPipe,
        ] {
            assert!(lost_on_the_way(&PublishError::new(kind)), "{kind:?}");
        }
        // "duplicate message id is in process": the first publish still
        // waits for its quorum.
        assert!(lost_on_the_way(&refused_publish(10158)));
        // Too large, or refused outright: publishing again cannot help.
        assert!(!lost_on_the_way(&refused_publish(10054)));
        assert!(!lost_on_the_way(&PublishError::new(
            PublishErrorKind::MaxPayloadExceeded
        )));
    }
}
