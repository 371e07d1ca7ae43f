//! The commands that change chat state, shared by REST and WebSocket so both
//! validate alike: send a message, mark a conversation read. A command is
//! accepted when JetStream acknowledges its `CHAT` record — never before.

use crate::directory::UserRecord;
use crate::error::ApiError;
use crate::state::AppState;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use natter_core::{
    ChatEvent, ChatRecord, ClientMsgId, ConversationId, GroupId, Message, MessageContent,
    MessageId, MessageSent, MessagesRead, UserId, subjects,
};
use serde_json::{Map, Value};
use std::future::IntoFuture;
use tracing::Instrument;

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Direct(UserId),
    Group(GroupId),
}

/// A validated send command.
#[derive(Debug, Clone)]
pub struct SendMessage {
    pub target: Target,
    pub content: MessageContent,
    pub client_msg_id: Option<ClientMsgId>,
}

/// Which targets a send accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Direct,
    Group,
    Either,
}

impl SendMessage {
    /// Parses `{receiverId | groupId, content, clientMsgId?}`.
    pub fn parse(data: &Value, max_bytes: usize, expect: Expect) -> Result<Self, ApiError> {
        let data = data
            .as_object()
            .ok_or_else(|| ApiError::bad_request("data must be an object"))?;
        let receiver = data.get("receiverId").filter(|v| !v.is_null());
        let group = data.get("groupId").filter(|v| !v.is_null());
        let target = match (expect, receiver, group) {
            (Expect::Direct | Expect::Either, Some(receiver), None) => {
                Target::Direct(UserId(parse_uuid(receiver, "receiverId")?))
            }
            (Expect::Group | Expect::Either, None, Some(group)) => {
                Target::Group(GroupId(parse_uuid(group, "groupId")?))
            }
            (Expect::Either, Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give receiverId or groupId, not both",
                ));
            }
            (Expect::Group, _, None) => return Err(ApiError::bad_request("groupId is required")),
            (Expect::Either, None, None) => {
                return Err(ApiError::bad_request("receiverId or groupId is required"));
            }
            _ => return Err(ApiError::bad_request("receiverId is required")),
        };
        let content = match data.get("content") {
            Some(Value::String(s)) => MessageContent::parse(s.clone(), max_bytes)?,
            Some(_) => return Err(ApiError::bad_request("content must be a string")),
            None => return Err(ApiError::bad_request("content is required")),
        };
        let client_msg_id = optional_str(data, "clientMsgId")?
            .map(ClientMsgId::parse)
            .transpose()?;
        Ok(Self {
            target,
            content,
            client_msg_id,
        })
    }
}

/// A UUID field, or `bad_request` naming it.
pub fn parse_uuid(value: &Value, field: &str) -> Result<uuid::Uuid, ApiError> {
    value
        .as_str()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::bad_request(format!("{field} must be a UUID")))
}

/// An optional string field.
pub fn optional_str<'a>(
    data: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
    }
}

/// An optional non-negative integer field.
pub fn optional_u64(data: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{field} must be a non-negative integer"))
        }),
    }
}

/// Checks a send and builds its record. A direct send needs no database
/// round trip when the receiver is already known to this gateway; a group
/// send checks the sender's membership.
pub async fn prepare(
    state: &AppState,
    sender: &UserRecord,
    command: SendMessage,
) -> Result<MessageSent, ApiError> {
    let client_msg_id = command.client_msg_id.map(|c| c.as_str().to_owned());
    let (conversation_id, receiver_id, group_id) = match command.target {
        Target::Direct(receiver) => {
            if receiver == sender.id {
                return Err(ApiError::bad_request("cannot send a message to yourself"));
            }
            if state.directory.get(receiver).await?.is_none() {
                return Err(ApiError::NotFound(format!("user {receiver} not found")));
            }
            (
                ConversationId::direct(sender.id, receiver),
                Some(receiver),
                None,
            )
        }
        Target::Group(group) => {
            // Non-members and unknown groups look alike: nothing leaks.
            if !is_member(state, sender.id, group.into()).await? {
                return Err(ApiError::Forbidden(format!(
                    "not a member of group {group}"
                )));
            }
            (ConversationId::from(group), None, Some(group))
        }
    };
    Ok(MessageSent {
        id: MessageId::for_send(sender.id, client_msg_id.as_deref()),
        conversation_id,
        sender_id: sender.id,
        sender_name: sender.display_name.clone(),
        receiver_id,
        group_id,
        content: command.content.into_string(),
        client_msg_id,
        created_at: natter_core::events::accepted_at(),
    })
}

/// A record handed to JetStream, its ack still to come.
pub struct Pending {
    ack: PublishAckFuture,
    /// Open from the publish until the ack: JetStream's share of the time.
    span: tracing::Span,
}

impl Pending {
    pub async fn ack(self) -> Result<PublishAck, PublishError> {
        self.ack.into_future().instrument(self.span).await
    }
}

/// Hands the record to JetStream with the current trace in its
/// `traceparent` header; the ack comes with [`Pending::ack`].
pub async fn publish(state: &AppState, sent: &MessageSent) -> Result<Pending, ApiError> {
    let payload = serde_json::to_vec(&ChatRecord::new(ChatEvent::MessageSent(sent.clone())))
        .map_err(ApiError::internal)?;
    let span = tracing::info_span!("jetstream.publish", stream = subjects::CHAT_STREAM);
    let mut message = PublishMessage::build()
        .payload(Bytes::from(payload))
        .message_id(sent.id.to_string());
    if let Some(traceparent) = natter_runtime::trace::traceparent(&span) {
        message = message.header(natter_runtime::trace::TRACEPARENT, traceparent.as_str());
    }
    let ack = state
        .js
        .send_publish(subjects::chat_message(sent.conversation_id), message)
        .instrument(span.clone())
        .await
        .map_err(not_accepted)?;
    Ok(Pending { ack, span })
}

/// The accepted message once its ack arrived. A duplicate publish (the same
/// message id within the duplicate window) answers with the stored original.
pub async fn confirm(
    state: &AppState,
    sent: MessageSent,
    ack: Result<PublishAck, PublishError>,
) -> Result<Message, ApiError> {
    let ack = ack.map_err(not_accepted)?;
    crate::metrics::accepted(if sent.group_id.is_some() {
        "group"
    } else {
        "direct"
    });
    if !ack.duplicate {
        return Ok(sent.into_message(ack.sequence));
    }
    let stored = state
        .chat
        .direct_get(ack.sequence)
        .await
        .map_err(ApiError::internal)?;
    match serde_json::from_slice::<ChatRecord>(&stored.payload) {
        Ok(ChatRecord {
            event: ChatEvent::MessageSent(original),
            ..
        }) => Ok(original.into_message(ack.sequence)),
        _ => Err(ApiError::internal(format!(
            "CHAT record {} is not the duplicate message",
            ack.sequence
        ))),
    }
}

/// Send, wait for the ack, confirm: the whole pipeline for one message.
pub async fn send(
    state: &AppState,
    sender: &UserRecord,
    command: SendMessage,
) -> Result<Message, ApiError> {
    let sent = prepare(state, sender, command).await?;
    let pending = publish(state, &sent).await?;
    let span = tracing::Span::current();
    log_accepted(state, &span, &sent);
    let message = confirm(state, sent, pending.ack().await).await?;
    tracing::info!(message_id = %message.id, seq = message.seq, "confirmation sent to sender");
    Ok(message)
}

/// Records that `reader` read `conversation` up to `up_to_seq` (default:
/// everything accepted so far). Members only.
pub async fn mark_read(
    state: &AppState,
    reader: UserId,
    conversation: ConversationId,
    up_to_seq: Option<u64>,
) -> Result<(), ApiError> {
    ensure_member(state, reader, conversation).await?;
    append(
        state,
        subjects::chat_read(conversation),
        ChatEvent::MessagesRead(MessagesRead {
            conversation_id: conversation,
            reader_id: reader,
            up_to_seq,
            at: natter_core::events::accepted_at(),
        }),
    )
    .await?;
    Ok(())
}

/// Appends one event to `CHAT` and waits for its ack: its sequence.
pub async fn append(state: &AppState, subject: String, event: ChatEvent) -> Result<u64, ApiError> {
    let kind = event.kind();
    let payload = serde_json::to_vec(&ChatRecord::new(event)).map_err(ApiError::internal)?;
    let span = tracing::info_span!("jetstream.publish", stream = subjects::CHAT_STREAM, kind);
    let mut message = PublishMessage::build().payload(Bytes::from(payload));
    if let Some(traceparent) = natter_runtime::trace::traceparent(&span) {
        message = message.header(natter_runtime::trace::TRACEPARENT, traceparent.as_str());
    }
    let sequence = async {
        let ack = state
            .js
            .send_publish(subject, message)
            .await
            .map_err(not_accepted)?;
        Ok::<_, ApiError>(ack.await.map_err(not_accepted)?.sequence)
    }
    .instrument(span)
    .await?;
    crate::metrics::accepted(kind);
    Ok(sequence)
}

/// `not_found` unless `user` is a member: a non-member learns nothing, not
/// even that the conversation exists.
pub async fn ensure_member(
    state: &AppState,
    user: UserId,
    conversation: ConversationId,
) -> Result<(), ApiError> {
    if is_member(state, user, conversation).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "conversation {conversation} not found"
        )))
    }
}

/// Whether `user` is a member of `conversation` now.
pub async fn is_member(
    state: &AppState,
    user: UserId,
    conversation: ConversationId,
) -> Result<bool, ApiError> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2)",
    )
    .bind(conversation.0)
    .bind(user.0)
    .fetch_one(&state.pool)
    .await?)
}

/// The seed's message-flow log line for an accepted send: who to whom, and
/// whether the receiver is online anywhere in the cluster right now.
pub fn log_accepted(state: &AppState, span: &tracing::Span, sent: &MessageSent) {
    match (sent.group_id, sent.receiver_id) {
        (Some(group), _) => tracing::info!(parent: span, sender = %sent.sender_id, %group,
            message_id = %sent.id, "[GROUP MESSAGE] accepted for publishing"),
        (None, Some(receiver)) => {
            let online = state.presence.is_online(receiver);
            tracing::info!(parent: span, sender = %sent.sender_id, %receiver,
                receiver_online = online, message_id = %sent.id,
                "[DIRECT MESSAGE] accepted for publishing");
            if !online {
                tracing::info!(parent: span, %receiver, message_id = %sent.id,
                    "receiver is offline; the message waits in its delivery log");
            }
        }
        (None, None) => {}
    }
}

fn not_accepted(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "JetStream did not accept a record");
    ApiError::Unavailable("the message was not accepted; retry".into())
}
