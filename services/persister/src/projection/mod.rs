//! The projection of `CHAT` records into PostgreSQL, one transaction per
//! batch; it returns what must be fanned out, in `CHAT` order (DESIGN.md §3).
//!
//! Idempotent, so a redelivered record changes nothing, and deterministic,
//! so replaying `CHAT` into an empty database rebuilds the same state.
//!
//! - `record`: the records going in and the delivery records coming out.
//! - `error`: transient or permanent failures.
//! - `messages`, `reads`, [`membership`]: one kind of event each.
//! - [`dead_letter`]: the table of records that can never be projected.

pub mod dead_letter;
mod error;
pub mod membership;
mod messages;
mod reads;
mod record;

pub use error::ProjectionError;
#[cfg(test)]
pub(crate) use record::Dedupe;
pub use record::{Fanout, Record};

use membership::Membership;
use natter_core::ConversationId;
use sqlx::{Connection, PgConnection};
use std::collections::HashSet;

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
            membership::project_group_event(&mut tx, record, &mut fanouts).await?;
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
    messages::project_messages(tx, members, changed, segment, fanouts).await?;
    for record in segment {
        if let natter_core::ChatEvent::MessagesRead(read) = &record.event {
            reads::project_read(tx, record.chat_seq, read, fanouts).await?;
        }
    }
    Ok(())
}
