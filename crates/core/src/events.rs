//! The records of the `CHAT` stream: every accepted chat state change.
//! Payloads are JSON with a `type` tag and a schema version `v`.

use crate::ids::{ConversationId, GroupId, MessageId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The schema version written into every record.
pub const SCHEMA_VERSION: u16 = 1;

/// The time a record is accepted, at the precision PostgreSQL stores
/// (microseconds), so the time a sender is told and the time history shows
/// are the same to the digit.
pub fn accepted_at() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// One `CHAT` record: a versioned, tagged event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRecord {
    pub v: u16,
    #[serde(flatten)]
    pub event: ChatEvent,
}

impl ChatRecord {
    pub fn new(event: ChatEvent) -> Self {
        Self {
            v: SCHEMA_VERSION,
            event,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    MessageSent(MessageSent),
    MessagesRead(MessagesRead),
    GroupCreated(GroupCreated),
    MembersAdded(MembersAdded),
    MemberRemoved(MemberRemoved),
    GroupDeleted(GroupDeleted),
}

impl ChatEvent {
    /// A short label for metrics and logs: `direct`, `group`, `read`,
    /// `group_created`, `members_added`, `member_removed` or `group_deleted`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MessageSent(m) if m.group_id.is_some() => "group",
            Self::MessageSent(_) => "direct",
            Self::MessagesRead(_) => "read",
            Self::GroupCreated(_) => "group_created",
            Self::MembersAdded(_) => "members_added",
            Self::MemberRemoved(_) => "member_removed",
            Self::GroupDeleted(_) => "group_deleted",
        }
    }

    /// When the gateway accepted this event.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Self::MessageSent(m) => m.created_at,
            Self::MessagesRead(r) => r.at,
            Self::GroupCreated(e) => e.at,
            Self::MembersAdded(e) => e.at,
            Self::MemberRemoved(e) => e.at,
            Self::GroupDeleted(e) => e.at,
        }
    }

    /// The group whose membership this event changes, if any.
    pub fn changed_group(&self) -> Option<GroupId> {
        match self {
            Self::GroupCreated(e) => Some(e.group_id),
            Self::MembersAdded(e) => Some(e.group_id),
            Self::MemberRemoved(e) => Some(e.group_id),
            Self::GroupDeleted(e) => Some(e.group_id),
            Self::MessageSent(_) | Self::MessagesRead(_) => None,
        }
    }
}

/// A group came into being with its creator and first members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupCreated {
    pub group_id: GroupId,
    pub name: String,
    pub creator_id: UserId,
    /// Every member, the creator included.
    pub member_ids: Vec<UserId>,
    pub at: DateTime<Utc>,
}

/// `actor` added users to a group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersAdded {
    pub group_id: GroupId,
    pub actor_id: UserId,
    pub user_ids: Vec<UserId>,
    pub at: DateTime<Utc>,
}

/// `actor` removed a member (the member itself: it left).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRemoved {
    pub group_id: GroupId,
    pub actor_id: UserId,
    pub user_id: UserId,
    pub at: DateTime<Utc>,
}

/// `actor` (the group's creator) deleted a group: its history, its sends
/// and its membership end here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDeleted {
    pub group_id: GroupId,
    pub actor_id: UserId,
    pub at: DateTime<Utc>,
}

/// A message the gateway accepted. Its `seq` is the `CHAT` sequence the
/// record was stored at, known only from the PubAck.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSent {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub sender_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<GroupId>,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl MessageSent {
    /// The wire view of this message once stored at `seq`.
    pub fn into_message(self, seq: u64) -> Message {
        Message {
            id: self.id,
            conversation_id: self.conversation_id,
            seq,
            sender_id: self.sender_id,
            sender_name: self.sender_name,
            receiver_id: self.receiver_id,
            group_id: self.group_id,
            content: self.content,
            client_msg_id: self.client_msg_id,
            created_at: self.created_at,
        }
    }
}

/// A member read a conversation up to `up_to_seq` (`None`: everything
/// accepted before this record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesRead {
    pub conversation_id: ConversationId,
    pub reader_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to_seq: Option<u64>,
    pub at: DateTime<Utc>,
}

/// A message as clients see it (DESIGN.md §4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: u64,
    pub sender_id: UserId,
    pub sender_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<GroupId>,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_type_tag_and_version() {
        let sender = UserId::generate();
        let receiver = UserId::generate();
        let record = ChatRecord::new(ChatEvent::MessageSent(MessageSent {
            id: MessageId::for_send(sender, Some("c1")),
            conversation_id: ConversationId::direct(sender, receiver),
            sender_id: sender,
            sender_name: "Ann".into(),
            receiver_id: Some(receiver),
            group_id: None,
            content: "hi".into(),
            client_msg_id: Some("c1".into()),
            created_at: Utc::now(),
        }));
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["type"], "message_sent");
        assert_eq!(json["receiverId"], receiver.to_string());
        assert!(json.get("groupId").is_none());
        let back: ChatRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
