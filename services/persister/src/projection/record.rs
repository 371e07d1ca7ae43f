//! What goes into the projection and what comes out: a decoded `CHAT`
//! record, and the delivery records it fans out to.

use natter_core::{ChatEvent, DeliveryEvent, MessageId, UserId, subjects};

/// A decoded `CHAT` record and the sequence it is stored at.
#[derive(Clone, Debug)]
pub struct Record {
    pub chat_seq: u64,
    pub event: ChatEvent,
}

/// One delivery record to publish to each recipient's log.
#[derive(Clone, Debug)]
pub struct Fanout {
    pub chat_seq: u64,
    pub event: DeliveryEvent,
    pub recipients: Vec<UserId>,
    pub(crate) dedupe: Dedupe,
}

/// What makes a delivery record's `Nats-Msg-Id` unique: a message is
/// delivered once per recipient whichever `CHAT` record carried it; any
/// other event once per record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dedupe {
    Message(MessageId),
    Record(u64),
}

impl Fanout {
    /// The `Nats-Msg-Id` of this record in `recipient`'s log.
    pub fn message_id(&self, recipient: UserId) -> String {
        match self.dedupe {
            Dedupe::Message(id) => subjects::delivery_message_id(id, recipient),
            Dedupe::Record(seq) => subjects::delivery_record_id(seq, recipient),
        }
    }
}
