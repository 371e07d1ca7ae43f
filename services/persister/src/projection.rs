//! The projection of `CHAT` records into PostgreSQL: one transaction per
//! batch, idempotent so a redelivered record changes nothing, and
//! deterministic so replaying `CHAT` into an empty database rebuilds the same
//! state. It returns what must be fanned out, in `CHAT` order.

use crate::membership::Membership;
use chrono::{DateTime, Utc};
use natter_core::{
    ChatEvent, ConversationId, DeliveryEvent, MessageId, MessageSent, MessagesRead, UserId,
    subjects,
};
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

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

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// PostgreSQL is unreachable or busy: retry the same batch later.
    #[error("transient database failure: {0}")]
    Transient(#[source] sqlx::Error),
    /// The data itself is refused: retrying the same records will fail again.
    #[error("database refused the batch: {0}")]
    Permanent(#[source] sqlx::Error),
}

impl ProjectionError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

impl From<sqlx::Error> for ProjectionError {
    fn from(e: sqlx::Error) -> Self {
        // SQLSTATE classes 22 (data exception) and 23 (integrity violation)
        // are about the rows, not the database's health.
        let permanent = match &e {
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => {
                true
            }
            _ => false,
        };
        if permanent {
            Self::Permanent(e)
        } else {
            Self::Transient(e)
        }
    }
}

/// Projects `records` (in `CHAT` order) in one transaction on `conn`.
/// Membership events split the batch: the records before one are projected
/// against the membership before it, the records after against the
/// membership after it.
pub async fn project(
    conn: &mut PgConnection,
    members: &mut Membership,
    records: &[Record],
) -> Result<Vec<Fanout>, ProjectionError> {
    let changed: HashSet<ConversationId> = records
        .iter()
        .filter_map(|r| r.event.changed_group())
        .map(ConversationId::from)
        .collect();
    let result = project_in_tx(conn, members, &changed, records).await;
    // Whether committed or rolled back, what the cache holds for a group
    // this batch touched may be stale.
    members.forget(&changed);
    let mut fanouts = result?;
    fanouts.sort_by_key(|f| f.chat_seq);
    Ok(fanouts)
}

async fn project_in_tx(
    conn: &mut PgConnection,
    members: &mut Membership,
    changed: &HashSet<ConversationId>,
    records: &[Record],
) -> Result<Vec<Fanout>, ProjectionError> {
    let mut tx = conn.begin().await?;
    let mut fanouts = Vec::with_capacity(records.len());
    let mut segment: Vec<&Record> = Vec::new();
    for record in records {
        if record.event.changed_group().is_some() {
            project_segment(&mut tx, members, changed, &segment, &mut fanouts).await?;
            segment.clear();
            crate::membership::project_group_event(&mut tx, record, &mut fanouts).await?;
        } else {
            segment.push(record);
        }
    }
    project_segment(&mut tx, members, changed, &segment, &mut fanouts).await?;
    tx.commit().await?;
    Ok(fanouts)
}

/// Messages and reads between two membership events.
async fn project_segment(
    tx: &mut PgConnection,
    members: &mut Membership,
    changed: &HashSet<ConversationId>,
    segment: &[&Record],
    fanouts: &mut Vec<Fanout>,
) -> Result<(), ProjectionError> {
    let mut messages: Vec<(u64, &MessageSent, Arc<Vec<UserId>>)> = Vec::new();
    for record in segment {
        let ChatEvent::MessageSent(m) = &record.event else {
            continue;
        };
        let recipients = match m.receiver_id {
            Some(receiver) if receiver != m.sender_id => Arc::new(vec![m.sender_id, receiver]),
            Some(_) => Arc::new(vec![m.sender_id]),
            None => {
                let current = members.of(tx, m.conversation_id, changed).await?;
                // Membership is decided at the message's place in CHAT: a
                // sender removed before it is refused here too.
                if !current.contains(&m.sender_id) {
                    let reason = format!(
                        "sender {} is not a member of {} at this point",
                        m.sender_id, m.conversation_id
                    );
                    tracing::warn!(chat_seq = record.chat_seq, %reason, "group message refused");
                    let payload =
                        serde_json::to_vec(&natter_core::ChatRecord::new(record.event.clone()))
                            .unwrap_or_default();
                    dead_letter(
                        tx,
                        record.chat_seq,
                        &subjects::chat_message(m.conversation_id),
                        &payload,
                        &reason,
                        1,
                    )
                    .await?;
                    continue;
                }
                current
            }
        };
        messages.push((record.chat_seq, m, recipients));
    }
    if !messages.is_empty() {
        project_messages(tx, &messages, fanouts).await?;
    }
    for record in segment {
        if let ChatEvent::MessagesRead(read) = &record.event {
            project_read(tx, record.chat_seq, read, fanouts).await?;
        }
    }
    Ok(())
}

async fn project_messages(
    tx: &mut PgConnection,
    messages: &[(u64, &MessageSent, Arc<Vec<UserId>>)],
    fanouts: &mut Vec<Fanout>,
) -> Result<(), ProjectionError> {
    // Conversations and memberships first (a direct conversation comes into
    // being with its first message).
    // Per conversation: kind, newest seq, first and newest message time.
    // Only the first message's time is a creation time no matter how the
    // records were batched, so a replay rebuilds the same row.
    struct Touched {
        kind: &'static str,
        last_seq: i64,
        first_at: DateTime<Utc>,
        last_at: DateTime<Utc>,
    }
    let mut conversations: BTreeMap<ConversationId, Touched> = BTreeMap::new();
    let mut members: BTreeMap<(ConversationId, UserId), ()> = BTreeMap::new();
    for (seq, m, _) in messages {
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
        entry.last_seq = entry.last_seq.max(*seq as i64);
        entry.last_at = entry.last_at.max(m.created_at);
        if let Some(receiver) = m.receiver_id {
            members.insert((m.conversation_id, m.sender_id), ());
            members.insert((m.conversation_id, receiver), ());
        }
    }
    let ids: Vec<Uuid> = conversations.keys().map(|id| id.0).collect();
    let kinds: Vec<&str> = conversations.values().map(|t| t.kind).collect();
    let last_seqs: Vec<i64> = conversations.values().map(|t| t.last_seq).collect();
    let first_ats: Vec<DateTime<Utc>> = conversations.values().map(|t| t.first_at).collect();
    let last_ats: Vec<DateTime<Utc>> = conversations.values().map(|t| t.last_at).collect();
    sqlx::query(
        "INSERT INTO conversations (id, kind, created_at, last_seq, last_activity_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::bigint[], $5::timestamptz[])
         ON CONFLICT (id) DO UPDATE SET
             last_seq = GREATEST(conversations.last_seq, EXCLUDED.last_seq),
             last_activity_at = GREATEST(conversations.last_activity_at, EXCLUDED.last_activity_at)",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&first_ats)
    .bind(&last_seqs)
    .bind(&last_ats)
    .execute(&mut *tx)
    .await?;

    if !members.is_empty() {
        let (conv_ids, user_ids): (Vec<Uuid>, Vec<Uuid>) =
            members.keys().map(|(c, u)| (c.0, u.0)).unzip();
        sqlx::query(
            "INSERT INTO conversation_members (conversation_id, user_id)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&conv_ids)
        .bind(&user_ids)
        .execute(&mut *tx)
        .await?;
    }

    // Every member's copy of the conversation's latest activity.
    sqlx::query(
        "UPDATE conversation_members m SET last_activity_at = GREATEST(m.last_activity_at, t.at)
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS t(conversation_id, at)
         WHERE m.conversation_id = t.conversation_id",
    )
    .bind(&ids)
    .bind(&last_ats)
    .execute(&mut *tx)
    .await?;

    let n = messages.len();
    let mut id = Vec::with_capacity(n);
    let mut conversation = Vec::with_capacity(n);
    let mut seq = Vec::with_capacity(n);
    let mut sender = Vec::with_capacity(n);
    let mut receiver = Vec::with_capacity(n);
    let mut group = Vec::with_capacity(n);
    let mut content = Vec::with_capacity(n);
    let mut client_msg_id = Vec::with_capacity(n);
    let mut created_at = Vec::with_capacity(n);
    for (s, m, _) in messages {
        id.push(m.id.0);
        conversation.push(m.conversation_id.0);
        seq.push(*s as i64);
        sender.push(m.sender_id.0);
        receiver.push(m.receiver_id.map(|r| r.0));
        group.push(m.group_id.map(|g| g.0));
        content.push(m.content.as_str());
        client_msg_id.push(m.client_msg_id.as_deref());
        created_at.push(m.created_at);
    }
    // The rows this transaction created, by id, with the CHAT sequence of
    // the record that created them (one send may appear twice in a batch).
    let inserted: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
        "INSERT INTO messages
             (id, conversation_id, seq, sender_id, receiver_id, group_id, content, client_msg_id, created_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], $5::uuid[],
                              $6::uuid[], $7::text[], $8::text[], $9::timestamptz[])
         ON CONFLICT DO NOTHING
         RETURNING id, seq",
    )
    .bind(&id)
    .bind(&conversation)
    .bind(&seq)
    .bind(&sender)
    .bind(&receiver)
    .bind(&group)
    .bind(&content)
    .bind(&client_msg_id)
    .bind(&created_at)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let created_by = |seq: u64, m: &MessageSent| inserted.get(&m.id.0) == Some(&(seq as i64));

    // Unread counters move only for rows this transaction created, so a
    // redelivered record counts once.
    let mut unread: BTreeMap<(Uuid, Uuid), i32> = BTreeMap::new();
    for (_, m, recipients) in messages.iter().filter(|(seq, m, _)| created_by(*seq, m)) {
        for reader in recipients.iter().filter(|r| **r != m.sender_id) {
            *unread.entry((m.conversation_id.0, reader.0)).or_default() += 1;
        }
    }
    if !unread.is_empty() {
        let (pairs, counts): (Vec<(Uuid, Uuid)>, Vec<i32>) = unread.into_iter().unzip();
        let (conv_ids, user_ids): (Vec<Uuid>, Vec<Uuid>) = pairs.into_iter().unzip();
        sqlx::query(
            "UPDATE conversation_members m SET unread_count = m.unread_count + t.n
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int[]) AS t(conversation_id, user_id, n)
             WHERE m.conversation_id = t.conversation_id AND m.user_id = t.user_id",
        )
        .bind(&conv_ids)
        .bind(&user_ids)
        .bind(&counts)
        .execute(&mut *tx)
        .await?;
    }

    // A record is fanned out when the stored row is this record: new, or
    // committed by an earlier delivery of the same record whose fan-out may
    // not have finished. A late retry of an already stored send (same id,
    // other CHAT sequence) is not delivered again.
    // Only the rows the insert skipped need a look; normally there are none.
    let skipped: Vec<Uuid> = id
        .iter()
        .filter(|id| !inserted.contains_key(*id))
        .copied()
        .collect();
    let stored_earlier: HashMap<Uuid, i64> = if skipped.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (Uuid, i64)>(
            "SELECT m.id, m.seq FROM UNNEST($1::uuid[]) AS t(id) JOIN messages m ON m.id = t.id",
        )
        .bind(&skipped)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    for (chat_seq, m, recipients) in messages {
        let is_this_record =
            created_by(*chat_seq, m) || stored_earlier.get(&m.id.0) == Some(&(*chat_seq as i64));
        if !is_this_record {
            continue;
        }
        let recipients = recipients.as_ref().clone();
        let message = (*m).clone().into_message(*chat_seq);
        let event = if m.group_id.is_some() {
            DeliveryEvent::ReceiveGroupMessage { message }
        } else {
            DeliveryEvent::ReceiveDirectMessage { message }
        };
        fanouts.push(Fanout {
            chat_seq: *chat_seq,
            event,
            recipients,
            dedupe: Dedupe::Message(m.id),
        });
    }
    Ok(())
}

async fn project_read(
    tx: &mut PgConnection,
    chat_seq: u64,
    read: &MessagesRead,
    fanouts: &mut Vec<Fanout>,
) -> Result<(), ProjectionError> {
    // "Read up to" never reaches past what was accepted before the read
    // itself, so a replay computes the same position.
    let up_to: Option<i64> = sqlx::query_scalar(
        "WITH target AS (
             SELECT COALESCE(max(seq), 0) AS top FROM messages
             WHERE conversation_id = $1 AND seq < $2 AND ($3::bigint IS NULL OR seq <= $3)
         )
         UPDATE conversation_members m
         SET last_read_seq = GREATEST(m.last_read_seq, target.top),
             unread_count = (
                 SELECT count(*) FROM messages
                 WHERE conversation_id = $1 AND sender_id <> $4
                   AND seq > GREATEST(m.last_read_seq, target.top))
         FROM target
         WHERE m.conversation_id = $1 AND m.user_id = $4
         RETURNING m.last_read_seq",
    )
    .bind(read.conversation_id.0)
    .bind(chat_seq as i64)
    .bind(read.up_to_seq.map(|s| s as i64))
    .bind(read.reader_id.0)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(up_to) = up_to else {
        tracing::warn!(chat_seq, conversation = %read.conversation_id, reader = %read.reader_id,
            "read receipt from a non-member ignored");
        return Ok(());
    };
    let recipients: Vec<UserId> = sqlx::query_scalar::<_, Uuid>(
        "SELECT user_id FROM conversation_members WHERE conversation_id = $1 ORDER BY user_id",
    )
    .bind(read.conversation_id.0)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(UserId)
    .collect();
    fanouts.push(Fanout {
        chat_seq,
        event: DeliveryEvent::MessagesRead {
            conversation_id: read.conversation_id,
            reader_id: read.reader_id,
            up_to_seq: up_to.max(0) as u64,
        },
        recipients,
        dedupe: Dedupe::Record(chat_seq),
    });
    Ok(())
}

/// Stores a record that can never be projected, for an operator to inspect.
pub async fn dead_letter(
    conn: &mut PgConnection,
    chat_seq: u64,
    subject: &str,
    payload: &[u8],
    error: &str,
    deliveries: i64,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "INSERT INTO dead_letters (chat_seq, subject, payload, error, deliveries)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (chat_seq) DO UPDATE SET error = EXCLUDED.error, deliveries = EXCLUDED.deliveries",
    )
    .bind(chat_seq as i64)
    .bind(subject)
    .bind(payload)
    .bind(error)
    .bind(deliveries as i32)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
