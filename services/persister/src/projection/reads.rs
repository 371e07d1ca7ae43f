//! Read receipts in the projection: a member's read position and seen
//! count, and the `messages_read` every member of the conversation hears.

use super::error::ProjectionError;
use super::membership;
use super::record::{Dedupe, Fanout};
use natter_core::{DeliveryEvent, MessagesRead};
use sqlx::PgConnection;

/// Moves the reader's read position and queues its `messages_read`.
pub async fn project_read(
    tx: &mut PgConnection,
    chat_seq: u64,
    read: &MessagesRead,
    fanouts: &mut Vec<Fanout>,
) -> Result<(), ProjectionError> {
    // "Read up to" never reaches past what was accepted before the read
    // itself, so a replay computes the same position. Seen: every message
    // of the conversation but the others' after that position.
    let up_to: Option<i64> = sqlx::query_scalar(
        "WITH target AS (
             SELECT COALESCE(max(seq), 0) AS top FROM messages
             WHERE conversation_id = $1 AND seq < $2 AND ($3::bigint IS NULL OR seq <= $3)
         )
         UPDATE conversation_members m
         SET last_read_seq = GREATEST(m.last_read_seq, target.top),
             seen_count = c.message_count - (
                 SELECT count(*) FROM messages
                 WHERE conversation_id = $1 AND sender_id <> $4
                   AND seq > GREATEST(m.last_read_seq, target.top))
         FROM target, conversations c
         WHERE c.id = $1 AND m.conversation_id = $1 AND m.user_id = $4
         RETURNING m.last_read_seq",
    )
    .bind(read.conversation_id.0)
    .bind(chat_seq as i64)
    .bind(read.up_to_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
    .bind(read.reader_id.0)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(up_to) = up_to else {
        tracing::warn!(chat_seq, conversation = %read.conversation_id, reader = %read.reader_id,
            "read receipt from a non-member ignored");
        return Ok(());
    };
    let recipients = membership::members(tx, read.conversation_id).await?;
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
