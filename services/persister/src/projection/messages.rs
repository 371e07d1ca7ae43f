//! Sent messages in the projection: recipients, rows, conversations,
//! message counts and the delivery records they fan out to.
//!
//! A direct conversation comes into being with its first message. A batch's
//! messages are written with one statement: its rows, their conversations,
//! the direct conversations' members and the counts, in one round trip.

use super::dead_letter;
use super::error::ProjectionError;
use super::membership::Membership;
use super::record::{Dedupe, Fanout, Record};
use chrono::{DateTime, Utc};
use natter_core::{
    ChatEvent, ChatRecord, ConversationId, DeliveryEvent, MessageSent, UserId, subjects,
};
use sqlx::PgConnection;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// A message of the batch with the `CHAT` sequence of its record and who
/// receives it.
struct Sent<'a> {
    chat_seq: u64,
    message: &'a MessageSent,
    recipients: Arc<Vec<UserId>>,
}

/// Projects the messages of `segment` (records between two membership
/// events, in `CHAT` order) and queues their delivery records.
pub async fn project_messages(
    tx: &mut PgConnection,
    members: &mut Membership,
    changed: &HashSet<ConversationId>,
    segment: &[&Record],
    fanouts: &mut Vec<Fanout>,
) -> Result<(), ProjectionError> {
    let mut sent = Vec::new();
    for record in segment {
        let ChatEvent::MessageSent(message) = &record.event else {
            continue;
        };
        if let Some(recipients) = recipients(tx, members, changed, record, message).await? {
            sent.push(Sent {
                chat_seq: record.chat_seq,
                message,
                recipients,
            });
        }
    }
    if sent.is_empty() {
        return Ok(());
    }
    let inserted = write(tx, &sent).await?;
    queue_deliveries(tx, &sent, &inserted, fanouts).await
}

/// Who receives `message`: both parties of a direct message, the members of
/// a group. `None` if its sender is not a member of the group at this point
/// in `CHAT`: then the record is refused and dead-lettered here.
async fn recipients(
    tx: &mut PgConnection,
    members: &mut Membership,
    changed: &HashSet<ConversationId>,
    record: &Record,
    message: &MessageSent,
) -> Result<Option<Arc<Vec<UserId>>>, ProjectionError> {
    let m = message;
    let recipients = match m.receiver_id {
        Some(receiver) if receiver != m.sender_id => Arc::new(vec![m.sender_id, receiver]),
        Some(_) => Arc::new(vec![m.sender_id]),
        None => {
            let current = members.of(tx, m.conversation_id, changed).await?;
            // Membership is decided at the message's place in CHAT: a
            // sender removed before it is refused here too.
            if !current.contains(&m.sender_id) {
                refuse(tx, record, m).await?;
                return Ok(None);
            }
            current
        }
    };
    Ok(Some(recipients))
}

/// Dead-letters a group message whose sender is not a member.
async fn refuse(
    tx: &mut PgConnection,
    record: &Record,
    m: &MessageSent,
) -> Result<(), ProjectionError> {
    let reason = format!(
        "sender {} is not a member of {} at this point",
        m.sender_id, m.conversation_id
    );
    tracing::warn!(chat_seq = record.chat_seq, %reason, "group message refused");
    let payload = serde_json::to_vec(&ChatRecord::new(record.event.clone())).unwrap_or_default();
    dead_letter::store(
        tx,
        record.chat_seq,
        &subjects::chat_message(m.conversation_id),
        &payload,
        &reason,
        1,
    )
    .await
}

/// A conversation's part of the batch. Only the first message's time is a
/// creation time no matter how the records were batched, so a replay
/// rebuilds the same row.
struct Touched {
    kind: &'static str,
    last_seq: i64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
}

/// Each conversation's part of the batch.
fn touched(sent: &[Sent<'_>]) -> BTreeMap<ConversationId, Touched> {
    let mut conversations: BTreeMap<ConversationId, Touched> = BTreeMap::new();
    for s in sent {
        let m = s.message;
        let kind = if m.group_id.is_some() {
            "group"
        } else {
            "direct"
        };
        let entry = conversations.entry(m.conversation_id).or_insert(Touched {
            kind,
            last_seq: 0,
            first_at: m.created_at,
            last_at: m.created_at,
        });
        entry.last_seq = entry.last_seq.max(s.chat_seq as i64);
        entry.last_at = entry.last_at.max(m.created_at);
    }
    conversations
}

/// The two parties of each direct message, as members of its conversation.
fn direct_members(sent: &[Sent<'_>]) -> BTreeSet<(ConversationId, UserId)> {
    let mut members = BTreeSet::new();
    for m in sent.iter().map(|s| s.message) {
        if let Some(receiver) = m.receiver_id {
            members.insert((m.conversation_id, m.sender_id));
            members.insert((m.conversation_id, receiver));
        }
    }
    members
}

/// The batch's `messages` rows, one vector per column as `UNNEST` takes
/// them; a row is added by [`MessageRows::push`] alone.
struct MessageRows<'a> {
    id: Vec<Uuid>,
    conversation: Vec<Uuid>,
    seq: Vec<i64>,
    sender: Vec<Uuid>,
    receiver: Vec<Option<Uuid>>,
    group: Vec<Option<Uuid>>,
    content: Vec<&'a str>,
    client_msg_id: Vec<Option<&'a str>>,
    created_at: Vec<DateTime<Utc>>,
}

impl<'a> MessageRows<'a> {
    fn of(sent: &[Sent<'a>]) -> Self {
        let n = sent.len();
        let mut rows = Self {
            id: Vec::with_capacity(n),
            conversation: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            sender: Vec::with_capacity(n),
            receiver: Vec::with_capacity(n),
            group: Vec::with_capacity(n),
            content: Vec::with_capacity(n),
            client_msg_id: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
        };
        for s in sent {
            rows.push(s.chat_seq, s.message);
        }
        rows
    }

    fn push(&mut self, chat_seq: u64, m: &'a MessageSent) {
        self.id.push(m.id.0);
        self.conversation.push(m.conversation_id.0);
        self.seq.push(chat_seq as i64);
        self.sender.push(m.sender_id.0);
        self.receiver.push(m.receiver_id.map(|r| r.0));
        self.group.push(m.group_id.map(|g| g.0));
        self.content.push(m.content.as_str());
        self.client_msg_id.push(m.client_msg_id.as_deref());
        self.created_at.push(m.created_at);
    }
}

/// Whether this record's delivery created the message's row.
fn created_by(inserted: &HashMap<Uuid, i64>, s: &Sent<'_>) -> bool {
    inserted.get(&s.message.id.0) == Some(&(s.chat_seq as i64))
}

/// The statement [`write`] runs: `$1`-`$9` the rows ([`MessageRows`]),
/// `$10`-`$14` the conversations ([`touched`]), `$15`-`$16` the direct
/// conversations' members ([`direct_members`]).
const WRITE_BATCH: &str = "WITH inserted AS (
         INSERT INTO messages
             (id, conversation_id, seq, sender_id, receiver_id, group_id, content, client_msg_id, created_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], $5::uuid[],
                              $6::uuid[], $7::text[], $8::text[], $9::timestamptz[])
         ON CONFLICT DO NOTHING
         RETURNING id, seq, conversation_id, sender_id, group_id
     ), per_conversation AS (
         SELECT conversation_id, count(*) AS n FROM inserted GROUP BY conversation_id
     ), per_sender AS (
         SELECT conversation_id, sender_id, bool_or(group_id IS NOT NULL) AS in_group, count(*) AS n
         FROM inserted GROUP BY conversation_id, sender_id
     ), conversations AS (
         INSERT INTO conversations (id, kind, created_at, last_seq, last_activity_at, message_count)
         SELECT t.id, t.kind, t.created_at, t.last_seq, t.last_activity_at, COALESCE(c.n, 0)
         FROM UNNEST($10::uuid[], $11::text[], $12::timestamptz[], $13::bigint[], $14::timestamptz[])
              AS t(id, kind, created_at, last_seq, last_activity_at)
         LEFT JOIN per_conversation c ON c.conversation_id = t.id
         ON CONFLICT (id) DO UPDATE SET
             last_seq = GREATEST(conversations.last_seq, EXCLUDED.last_seq),
             last_activity_at = GREATEST(conversations.last_activity_at, EXCLUDED.last_activity_at),
             message_count = conversations.message_count + EXCLUDED.message_count
     ), direct AS (
         INSERT INTO conversation_members (conversation_id, user_id, seen_count)
         SELECT t.conversation_id, t.user_id, COALESCE(s.n, 0)
         FROM UNNEST($15::uuid[], $16::uuid[]) AS t(conversation_id, user_id)
         LEFT JOIN per_sender s
             ON s.conversation_id = t.conversation_id AND s.sender_id = t.user_id
         ON CONFLICT (conversation_id, user_id) DO UPDATE
             SET seen_count = conversation_members.seen_count + EXCLUDED.seen_count
             WHERE EXCLUDED.seen_count > 0
     ), senders AS (
         UPDATE conversation_members m SET seen_count = m.seen_count + s.n
         FROM per_sender s
         WHERE s.in_group AND m.conversation_id = s.conversation_id AND m.user_id = s.sender_id
     )
     SELECT id, seq FROM inserted";

/// Writes the batch's messages in one statement, whose parts see the same
/// snapshot and are checked together at its end (a new conversation's
/// messages and members refer to it):
/// - `inserted`: the rows not stored yet (a redelivered record's row is);
/// - `conversations`: each touched conversation, created by its first
///   message, its last sequence and activity moved on, and its count of
///   messages grown by its new rows;
/// - `direct`: the two parties of each direct conversation as members, a
///   sender's count of seen messages grown by its new rows (unread = the
///   conversation's count - the member's seen count; a member with nothing
///   new is not written);
/// - `senders`: a group sender's seen count grown the same way (the sender
///   is a member at this point in `CHAT`, or the record was refused).
///
/// Only rows this statement created count, so a redelivered record counts
/// once. Returns those rows by id, with the `CHAT` sequence of the record
/// that created each (one send may appear twice in a batch).
async fn write(
    tx: &mut PgConnection,
    sent: &[Sent<'_>],
) -> Result<HashMap<Uuid, i64>, ProjectionError> {
    let rows = MessageRows::of(sent);
    let conversations = touched(sent);
    let ids: Vec<Uuid> = conversations.keys().map(|id| id.0).collect();
    let kinds: Vec<&str> = conversations.values().map(|t| t.kind).collect();
    let last_seqs: Vec<i64> = conversations.values().map(|t| t.last_seq).collect();
    let first_ats: Vec<DateTime<Utc>> = conversations.values().map(|t| t.first_at).collect();
    let last_ats: Vec<DateTime<Utc>> = conversations.values().map(|t| t.last_at).collect();
    let (member_convs, member_ids): (Vec<Uuid>, Vec<Uuid>) =
        direct_members(sent).iter().map(|(c, u)| (c.0, u.0)).unzip();
    Ok(sqlx::query_as::<_, (Uuid, i64)>(WRITE_BATCH)
        .bind(&rows.id)
        .bind(&rows.conversation)
        .bind(&rows.seq)
        .bind(&rows.sender)
        .bind(&rows.receiver)
        .bind(&rows.group)
        .bind(&rows.content)
        .bind(&rows.client_msg_id)
        .bind(&rows.created_at)
        .bind(&ids)
        .bind(&kinds)
        .bind(&first_ats)
        .bind(&last_seqs)
        .bind(&last_ats)
        .bind(&member_convs)
        .bind(&member_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect())
}

/// A record is fanned out when the stored row is this record: new, or
/// committed by an earlier delivery of the same record whose fan-out may
/// not have finished. A late retry of an already stored send (same id,
/// other `CHAT` sequence) is not delivered again.
async fn queue_deliveries(
    tx: &mut PgConnection,
    sent: &[Sent<'_>],
    inserted: &HashMap<Uuid, i64>,
    fanouts: &mut Vec<Fanout>,
) -> Result<(), ProjectionError> {
    // Every record that did not create its row, redelivered or reusing an
    // id, is compared with the row that holds its id (one this same
    // transaction may have just written).
    let others: Vec<Uuid> = sent
        .iter()
        .filter(|s| !created_by(inserted, s))
        .map(|s| s.message.id.0)
        .collect();
    let stored_earlier = stored_rows(tx, &others).await?;
    for s in sent {
        let stored = stored_earlier.get(&s.message.id.0);
        let is_this_record =
            created_by(inserted, s) || stored.is_some_and(|row| row.seq == s.chat_seq as i64);
        if !is_this_record {
            if let Some(row) = stored.filter(|row| !row.is_same_message(s.message)) {
                refuse_reused_id(tx, s, row).await?;
            }
            continue;
        }
        let m = s.message;
        let message = m.clone().into_message(s.chat_seq);
        let event = if m.group_id.is_some() {
            DeliveryEvent::ReceiveGroupMessage { message }
        } else {
            DeliveryEvent::ReceiveDirectMessage { message }
        };
        fanouts.push(Fanout {
            chat_seq: s.chat_seq,
            event,
            recipients: s.recipients.as_ref().clone(),
            dedupe: Dedupe::Message(m.id),
        });
    }
    Ok(())
}

/// A stored row a record's insert was skipped for.
struct StoredRow {
    seq: i64,
    conversation_id: Uuid,
    content: String,
}

impl StoredRow {
    /// Whether `m` is a retry of this message: the same conversation and
    /// content under the same `clientMsgId`.
    fn is_same_message(&self, m: &MessageSent) -> bool {
        self.conversation_id == m.conversation_id.0 && self.content == m.content
    }
}

/// The stored rows of `ids`, by id. Only records that did not create their
/// row need a look; normally there are none.
async fn stored_rows(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, StoredRow>, ProjectionError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, i64, Uuid, String)> = sqlx::query_as(
        "SELECT m.id, m.seq, m.conversation_id, m.content
         FROM UNNEST($1::uuid[]) AS t(id) JOIN messages m ON m.id = t.id",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, seq, conversation_id, content)| {
            let row = StoredRow {
                seq,
                conversation_id,
                content,
            };
            (id, row)
        })
        .collect())
}

/// Dead-letters a send whose `clientMsgId` (so its message id) is already
/// taken by another message: one the gateway could not catch because the
/// first was not yet projected when the broker had forgotten it. Recorded,
/// never dropped in silence (DESIGN §4).
async fn refuse_reused_id(
    tx: &mut PgConnection,
    s: &Sent<'_>,
    stored: &StoredRow,
) -> Result<(), ProjectionError> {
    let m = s.message;
    let reason = format!(
        "message id {} (its clientMsgId) already names another message, stored at CHAT sequence {}",
        m.id, stored.seq
    );
    tracing::warn!(chat_seq = s.chat_seq, %reason, "send refused");
    let payload =
        serde_json::to_vec(&ChatRecord::new(ChatEvent::MessageSent(m.clone()))).unwrap_or_default();
    dead_letter::store(
        tx,
        s.chat_seq,
        &subjects::chat_message(m.conversation_id),
        &payload,
        &reason,
        1,
    )
    .await
}
