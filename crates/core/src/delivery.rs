//! The records of a user's delivery log (`deliver.<user>` in `DELIVERY`).
//!
//! A record is the socket frame without its `cursor`: `{"event", "data"}`.
//! The gateway splices the cursor (the record's `DELIVERY` sequence) in
//! front, so a record is serialised once by the persister and never again.
//!
//! Every record is at most [`MAX_RECORD_BYTES`] by construction: its parts
//! are bounded (content, names, a change's user ids), never a whole group.

use crate::events::Message;
use crate::ids::{ConversationId, GroupId, MessageId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The header of a delivery record that carries when its event was accepted
/// (microseconds since the Unix epoch), so delivery latency is measured
/// without decoding the record.
pub const ACCEPTED_AT_HEADER: &str = "Natter-Accepted-At";

/// The header of a delivery record stored without its message's content:
/// the message's id. A message whose copies together would be large (a big
/// message into a big group) is stored once, in PostgreSQL, and each copy
/// carries only this reference; the gateway fills the content in before
/// the frame reaches a socket, once per message.
pub const CONTENT_OF_HEADER: &str = "Natter-Content-Of";

/// The header of a delivery record that names the sequence of its user's
/// record before it (0: the first). The persister publishes each record
/// with JetStream's own expectation header set to the user's last record,
/// so the stream stores it only if that claim is true, and keeps the header
/// with the record: a user's records are a chain the gateway walks back
/// from the newest, reading a replay without scanning the stream. A record
/// without it (stored by an older natter) ends the walk.
pub const PREVIOUS_HEADER: &str = "Nats-Expected-Last-Subject-Sequence";

/// The largest delivery record (DESIGN.md §4). The limits on what a record
/// holds keep every record within it (the tests below build the worst
/// case); the fan-out refuses anything larger rather than let it block a log.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// The most members a group may have, and so the most user ids one
/// `group_updated` change carries.
pub const MAX_GROUP_MEMBERS: usize = 1000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum DeliveryEvent {
    ReceiveDirectMessage {
        message: Message,
    },
    ReceiveGroupMessage {
        message: Message,
    },
    #[serde(rename_all = "camelCase")]
    MessagesRead {
        conversation_id: ConversationId,
        reader_id: UserId,
        up_to_seq: u64,
    },
    GroupUpdated {
        group: Group,
        change: GroupChange,
    },
}

/// A group as clients see it: its members are read a page at a time over
/// REST, so a group is the same few bytes however large it grows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
    pub member_count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

/// What a `group_updated` reports: what changed, for whom, by whom.
/// `user_ids` are the members a group was created with, those added, or the
/// one removed (empty for a deletion): never more than a group holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupChange {
    pub kind: ChangeKind,
    pub user_ids: Vec<UserId>,
    pub by: UserId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    MembersAdded,
    MemberRemoved,
    Deleted,
}

/// The socket frame for a delivery record stored at `cursor`: the record
/// with `"cursor":N` inserted as its first field.
pub fn frame_with_cursor(record: &[u8], cursor: u64) -> Option<String> {
    let body = std::str::from_utf8(record).ok()?;
    let rest = body.trim_start().strip_prefix('{')?;
    let mut frame = String::with_capacity(body.len() + 24);
    frame.push_str("{\"cursor\":");
    frame.push_str(&cursor.to_string());
    if !rest.trim_start().starts_with('}') {
        frame.push(',');
    }
    frame.push_str(rest);
    Some(frame)
}

impl DeliveryEvent {
    /// This record with its message's content left out, to be stored by
    /// reference ([`CONTENT_OF_HEADER`]); `None` when it carries no message.
    pub fn without_content(&self) -> Option<(MessageId, Self)> {
        let mut event = self.clone();
        match &mut event {
            Self::ReceiveDirectMessage { message } | Self::ReceiveGroupMessage { message } => {
                message.content.clear();
                Some((message.id, event))
            }
            Self::MessagesRead { .. } | Self::GroupUpdated { .. } => None,
        }
    }
}

/// A record stored by reference with its message's `content` filled in:
/// the record as it would have been stored whole. `None` if `record` is not
/// a message record.
pub fn with_content(record: &[u8], content: String) -> Option<Vec<u8>> {
    let mut event: DeliveryEvent = serde_json::from_slice(record).ok()?;
    match &mut event {
        DeliveryEvent::ReceiveDirectMessage { message }
        | DeliveryEvent::ReceiveGroupMessage { message } => message.content = content,
        DeliveryEvent::MessagesRead { .. } | DeliveryEvent::GroupUpdated { .. } => return None,
    }
    serde_json::to_vec(&event).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_carries_cursor_event_and_data() {
        let reader = UserId::generate();
        let record = serde_json::to_vec(&DeliveryEvent::MessagesRead {
            conversation_id: ConversationId::direct(reader, UserId::generate()),
            reader_id: reader,
            up_to_seq: 7,
        })
        .unwrap();
        let frame = frame_with_cursor(&record, 42).unwrap();
        let json: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(json["cursor"], 42);
        assert_eq!(json["event"], "messages_read");
        assert_eq!(json["data"]["upToSeq"], 7);
        assert_eq!(json["data"]["readerId"], reader.to_string());
    }

    #[test]
    fn group_updated_carries_the_change_not_the_members() {
        let by = UserId::generate();
        let record = serde_json::to_value(DeliveryEvent::GroupUpdated {
            group: Group {
                id: GroupId::generate(),
                name: "Team".into(),
                created_by: by,
                created_at: Utc::now(),
                member_count: 3,
            },
            change: GroupChange {
                kind: ChangeKind::MembersAdded,
                user_ids: vec![by],
                by,
            },
        })
        .unwrap();
        assert_eq!(record["event"], "group_updated");
        assert_eq!(record["data"]["group"]["memberCount"], 3);
        assert!(record["data"]["group"].get("members").is_none());
        assert_eq!(record["data"]["change"]["kind"], "members_added");
        assert_eq!(record["data"]["change"]["userIds"][0], by.to_string());
        assert_eq!(record["data"]["change"]["by"], by.to_string());
    }

    #[test]
    fn a_record_stored_by_reference_is_filled_in_to_the_whole_record() {
        let sender = UserId::generate();
        let message = Message {
            id: MessageId::for_send(sender, Some("c-1")),
            conversation_id: ConversationId(uuid::Uuid::now_v7()),
            seq: 9,
            sender_id: sender,
            sender_name: "Ann \"A\"".into(),
            receiver_id: None,
            group_id: Some(GroupId::generate()),
            content: "line one\n\"quoted\" \u{1F600}".repeat(100),
            client_msg_id: Some("c-1".into()),
            created_at: Utc::now(),
        };
        let event = DeliveryEvent::ReceiveGroupMessage {
            message: message.clone(),
        };
        let whole = serde_json::to_vec(&event).unwrap();
        let (id, bare) = event.without_content().unwrap();
        assert_eq!(id, message.id);
        let stored = serde_json::to_vec(&bare).unwrap();
        assert!(stored.len() < 400, "{} bytes stored", stored.len());
        assert_eq!(with_content(&stored, message.content).unwrap(), whole);
    }

    #[test]
    fn only_message_records_are_stored_by_reference() {
        let reader = UserId::generate();
        let read = DeliveryEvent::MessagesRead {
            conversation_id: ConversationId::direct(reader, UserId::generate()),
            reader_id: reader,
            up_to_seq: 7,
        };
        assert!(read.without_content().is_none());
        let record = serde_json::to_vec(&read).unwrap();
        assert!(with_content(&record, "x".into()).is_none());
        assert!(with_content(b"not json", "x".into()).is_none());
    }

    #[test]
    fn frame_rejects_non_objects() {
        assert!(frame_with_cursor(b"[1]", 1).is_none());
        assert_eq!(frame_with_cursor(b"{}", 3).unwrap(), "{\"cursor\":3}");
    }
}
