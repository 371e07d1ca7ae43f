//! Every delivery record fits [`MAX_RECORD_BYTES`] by construction: the
//! worst case of each kind, built from the largest values the edge accepts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use chrono::Utc;
use natter_core::delivery::MAX_RECORD_BYTES;
use natter_core::{
    ChangeKind, ClientMsgId, ConversationId, DeliveryEvent, DisplayName, Group, GroupChange,
    GroupId, GroupName, MAX_CONTENT_BYTES, MAX_GROUP_MEMBERS, Message, MessageContent, MessageId,
    UserId,
};

/// The four-byte character that JSON keeps as four bytes: the most bytes a
/// label's character can cost.
const WIDEST: char = '\u{1F600}';

/// A name of `n` characters, each as wide as JSON makes any.
fn widest(n: usize) -> String {
    std::iter::repeat_n(WIDEST, n).collect()
}

fn size(event: &DeliveryEvent) -> usize {
    serde_json::to_vec(event).unwrap().len()
}

/// The largest content the edge accepts: every byte a quote, each escaped
/// to two (the costliest escape left once control characters are refused).
fn worst_message() -> Message {
    let content = MessageContent::parse("\"".repeat(MAX_CONTENT_BYTES), MAX_CONTENT_BYTES)
        .unwrap()
        .into_string();
    let sender_name = DisplayName::parse(&widest(64)).unwrap().into_string();
    let client_msg_id = ClientMsgId::parse(&"\\".repeat(64)).unwrap();
    let sender = UserId::generate();
    let group = GroupId::generate();
    Message {
        id: MessageId::for_send(sender, Some(client_msg_id.as_str())),
        conversation_id: ConversationId::from(group),
        seq: u64::MAX,
        sender_id: sender,
        sender_name,
        receiver_id: Some(UserId::generate()),
        group_id: Some(group),
        content,
        client_msg_id: Some(client_msg_id.as_str().to_owned()),
        created_at: Utc::now(),
    }
}

#[test]
fn the_largest_message_record_fits() {
    let message = worst_message();
    let group = size(&DeliveryEvent::ReceiveGroupMessage {
        message: message.clone(),
    });
    let direct = size(&DeliveryEvent::ReceiveDirectMessage { message });
    println!("largest message record: {group} bytes (limit {MAX_RECORD_BYTES})");
    assert!(group <= MAX_RECORD_BYTES, "{group} bytes");
    assert!(direct <= MAX_RECORD_BYTES, "{direct} bytes");
}

#[test]
fn a_group_update_for_a_full_group_fits() {
    let name = GroupName::parse(&widest(100)).unwrap().into_string();
    let by = UserId::generate();
    let event = DeliveryEvent::GroupUpdated {
        group: Group {
            id: GroupId::generate(),
            name,
            created_by: by,
            created_at: Utc::now(),
            member_count: MAX_GROUP_MEMBERS as u32,
        },
        change: GroupChange {
            kind: ChangeKind::MembersAdded,
            user_ids: (0..MAX_GROUP_MEMBERS).map(|_| UserId::generate()).collect(),
            by,
        },
    };
    let bytes = size(&event);
    println!("largest group_updated record: {bytes} bytes (limit {MAX_RECORD_BYTES})");
    assert!(bytes <= MAX_RECORD_BYTES, "{bytes} bytes");
}

#[test]
fn a_read_receipt_fits() {
    let reader = UserId::generate();
    let bytes = size(&DeliveryEvent::MessagesRead {
        conversation_id: ConversationId::from(GroupId::generate()),
        reader_id: reader,
        up_to_seq: u64::MAX,
    });
    assert!(bytes <= MAX_RECORD_BYTES, "{bytes} bytes");
}
