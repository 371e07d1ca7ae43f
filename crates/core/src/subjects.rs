//! NATS names: streams, the persister's consumer, subjects and message ids.
//! Nothing else in natter formats a subject.

use crate::ids::{ConversationId, GroupId, MessageId, UserId};

pub const CHAT_STREAM: &str = "CHAT";
pub const DELIVERY_STREAM: &str = "DELIVERY";
pub const PERSISTER_CONSUMER: &str = "persister";

/// Everything the `CHAT` stream stores.
pub const CHAT_SUBJECTS: [&str; 3] = ["chat.msg.*", "chat.read.*", "chat.group.*"];
/// Everything the `DELIVERY` stream stores.
pub const DELIVER_ALL: &str = "deliver.>";
/// Where the server republishes each stored delivery record.
pub const LIVE_DELIVER_ALL: &str = "live.deliver.>";

pub fn chat_message(conversation: ConversationId) -> String {
    format!("chat.msg.{conversation}")
}

pub fn chat_read(conversation: ConversationId) -> String {
    format!("chat.read.{conversation}")
}

pub fn chat_group(group: GroupId) -> String {
    format!("chat.group.{group}")
}

/// A user's delivery log.
pub fn deliver(user: UserId) -> String {
    format!("deliver.{user}")
}

/// The live push of a user's delivery log (republished by the server).
pub fn live_deliver(user: UserId) -> String {
    format!("live.deliver.{user}")
}

/// Session control for one user (core NATS, never stored): a device
/// connected elsewhere, the profile changed.
pub fn control(user: UserId) -> String {
    format!("live.control.{user}")
}

/// Every user's session control.
pub const CONTROL_ALL: &str = "live.control.*";

/// Typing signals for a conversation (core NATS, never stored).
pub fn typing(conversation: ConversationId) -> String {
    format!("live.typing.{conversation}")
}

/// Every conversation's typing signals.
pub const TYPING_ALL: &str = "live.typing.*";

/// The JetStream KV bucket of revoked token ids.
pub const REVOCATIONS_BUCKET: &str = "revocations";

/// The JetStream KV bucket of live connections, a key per connection.
pub const PRESENCE_BUCKET: &str = "presence";

/// The gateway's and the persister's reply subjects (`<prefix>.…`): their
/// own, so `deploy/nats/accounts.conf` can keep each from reading the
/// other's replies (API answers, PubAcks, pulled records).
pub const GATEWAY_INBOX: &str = "_INBOX_gateway";
pub const PERSISTER_INBOX: &str = "_INBOX_persister";

/// The `Nats-Msg-Id` of a message's delivery record for one recipient, so a
/// re-run fan-out stores nothing twice.
pub fn delivery_message_id(message: MessageId, recipient: UserId) -> String {
    format!("{message}.{recipient}")
}

/// The `Nats-Msg-Id` of the delivery record that a non-message `CHAT` record
/// (identified by its sequence, stable across redeliveries) produces for one
/// recipient.
pub fn delivery_record_id(chat_seq: u64, recipient: UserId) -> String {
    format!("chat-{chat_seq}.{recipient}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_their_stream_filters() {
        let user = UserId::generate();
        let conv = ConversationId::direct(user, UserId::generate());
        assert!(chat_message(conv).starts_with("chat.msg."));
        assert!(chat_read(conv).starts_with("chat.read."));
        assert_eq!(live_deliver(user), format!("live.{}", deliver(user)));
    }
}
