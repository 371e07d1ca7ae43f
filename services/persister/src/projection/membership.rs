//! Group membership in the projection: the membership events, the one
//! query for a conversation's members, and the membership cache.
//!
//! Each event's SQL queues a `group_updated`; an add past the member cap is
//! refused whole and dead-lettered. The cache of who is in each
//! group serves the fan-out of group messages; it is filled from PostgreSQL
//! on a miss and forgotten for every group a batch changes, so it never
//! outlives what the persister itself projected.

use super::dead_letter;
use super::error::ProjectionError;
use super::record::{Dedupe, Fanout, Record};
use natter_core::{
    ChangeKind, ChatEvent, ChatRecord, ConversationId, DeliveryEvent, Group, GroupChange,
    GroupCreated, GroupDeleted, GroupId, MAX_GROUP_MEMBERS, MemberRemoved, MembersAdded, UserId,
    subjects,
};
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// Groups the cache keeps before it starts over (a bound, not a policy).
const CACHE_LIMIT: usize = 100_000;

#[derive(Default)]
pub struct Membership {
    groups: HashMap<ConversationId, Arc<Vec<UserId>>>,
}

impl Membership {
    /// The members of `conversation` as the transaction sees them.
    pub async fn of(
        &mut self,
        tx: &mut PgConnection,
        conversation: ConversationId,
        changed: &HashSet<ConversationId>,
    ) -> Result<Arc<Vec<UserId>>, ProjectionError> {
        if !changed.contains(&conversation)
            && let Some(hit) = self.groups.get(&conversation)
        {
            return Ok(hit.clone());
        }
        let members = Arc::new(members(tx, conversation).await?);
        // A group this batch changed is read inside the transaction and
        // must not be cached: the transaction may still roll back.
        if !changed.contains(&conversation) {
            if self.groups.len() >= CACHE_LIMIT {
                self.groups.clear();
            }
            self.groups.insert(conversation, members.clone());
        }
        Ok(members)
    }

    pub fn forget(&mut self, groups: &HashSet<ConversationId>) {
        for group in groups {
            self.groups.remove(group);
        }
    }
}

/// The members of `conversation` as the transaction sees them, by id.
pub async fn members(
    tx: &mut PgConnection,
    conversation: ConversationId,
) -> Result<Vec<UserId>, ProjectionError> {
    Ok(sqlx::query_scalar::<_, Uuid>(
        "SELECT user_id FROM conversation_members WHERE conversation_id = $1 ORDER BY user_id",
    )
    .bind(conversation.0)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(UserId)
    .collect())
}

/// A membership event applied: which group, the change to announce, and
/// who hears of it besides the members (a removed member; everyone who was
/// in a deleted group).
struct Applied {
    group: GroupId,
    change: GroupChange,
    also_to: Vec<UserId>,
}

/// Applies one membership event and queues its `group_updated`.
pub async fn project_group_event(
    tx: &mut PgConnection,
    record: &Record,
    fanouts: &mut Vec<Fanout>,
) -> Result<(), ProjectionError> {
    let applied = apply(tx, record).await?;
    if let Some(group) = record.event.changed_group() {
        // Refused or not, the event is settled: whoever waits for it stops.
        sqlx::query("UPDATE conversations SET group_seq = GREATEST(group_seq, $2) WHERE id = $1")
            .bind(group.0)
            .bind(record.chat_seq as i64)
            .execute(&mut *tx)
            .await?;
    }
    let Some(applied) = applied else {
        return Ok(());
    };
    let view = group_view(tx, applied.group).await?;
    let mut recipients = members(tx, applied.group.into()).await?;
    for user in applied.also_to {
        if !recipients.contains(&user) {
            recipients.push(user);
        }
    }
    fanouts.push(Fanout {
        chat_seq: record.chat_seq,
        event: DeliveryEvent::GroupUpdated {
            group: view,
            change: applied.change,
        },
        recipients,
        dedupe: Dedupe::Record(record.chat_seq),
    });
    Ok(())
}

/// The event's SQL. `None` when there is nothing to announce: an event for
/// an unknown or deleted group, one refused, or not a membership event.
async fn apply(tx: &mut PgConnection, record: &Record) -> Result<Option<Applied>, ProjectionError> {
    let seq = record.chat_seq as i64;
    match &record.event {
        ChatEvent::GroupCreated(e) => create_group(tx, record, e, seq).await,
        ChatEvent::MembersAdded(e) => add_to_group(tx, record, e, seq).await,
        ChatEvent::MemberRemoved(e) => remove_from_group(tx, e, seq).await,
        ChatEvent::GroupDeleted(e) => delete_group(tx, e, seq).await,
        ChatEvent::MessageSent(_) | ChatEvent::MessagesRead(_) => Ok(None),
    }
}

async fn create_group(
    tx: &mut PgConnection,
    record: &Record,
    e: &GroupCreated,
    seq: i64,
) -> Result<Option<Applied>, ProjectionError> {
    let distinct: HashSet<UserId> = e.member_ids.iter().copied().collect();
    if distinct.len() > MAX_GROUP_MEMBERS {
        refuse(tx, record, e.group_id, too_many(distinct.len())).await?;
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO conversations
             (id, kind, name, created_by, created_at, last_seq, last_activity_at, group_seq)
         VALUES ($1, 'group', $2, $3, $4, 0, $4, $5)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(e.group_id.0)
    .bind(&e.name)
    .bind(e.creator_id.0)
    .bind(e.at)
    .bind(seq)
    .execute(&mut *tx)
    .await?;
    // A redelivered creation of a group deleted since adds nobody back.
    if !group_exists(tx, e.group_id).await? {
        return Ok(None);
    }
    add_members(tx, e.group_id, &e.member_ids, seq, e.at).await?;
    Ok(Some(Applied {
        group: e.group_id,
        change: GroupChange {
            kind: ChangeKind::Created,
            user_ids: e.member_ids.clone(),
            by: e.creator_id,
        },
        also_to: Vec::new(),
    }))
}

/// Adds all of `e.user_ids` or, if the group would then hold more than
/// [`MAX_GROUP_MEMBERS`], none of them: the gateway checks before it
/// publishes, but two adds checked at once both pass, and only here, in
/// `CHAT` order, is the count certain.
async fn add_to_group(
    tx: &mut PgConnection,
    record: &Record,
    e: &MembersAdded,
    seq: i64,
) -> Result<Option<Applied>, ProjectionError> {
    if !group_exists(tx, e.group_id).await? {
        tracing::warn!(chat_seq = seq, group = %e.group_id, "members added to an unknown group ignored");
        return Ok(None);
    }
    let current: HashSet<UserId> = members(tx, e.group_id.into()).await?.into_iter().collect();
    let after = current.len()
        + e.user_ids
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|u| !current.contains(u))
            .count();
    if after > MAX_GROUP_MEMBERS {
        refuse(tx, record, e.group_id, too_many(after)).await?;
        return Ok(None);
    }
    add_members(tx, e.group_id, &e.user_ids, seq, e.at).await?;
    Ok(Some(Applied {
        group: e.group_id,
        change: GroupChange {
            kind: ChangeKind::MembersAdded,
            user_ids: e.user_ids.clone(),
            by: e.actor_id,
        },
        also_to: Vec::new(),
    }))
}

fn too_many(members: usize) -> String {
    format!("a group has at most {MAX_GROUP_MEMBERS} members; this would make {members}")
}

/// Dead-letters a membership event that must not be applied, in the
/// batch's transaction, so a replay refuses it alike.
async fn refuse(
    tx: &mut PgConnection,
    record: &Record,
    group: GroupId,
    reason: String,
) -> Result<(), ProjectionError> {
    tracing::warn!(chat_seq = record.chat_seq, %group, %reason, "membership event refused");
    let payload = serde_json::to_vec(&ChatRecord::new(record.event.clone())).unwrap_or_default();
    dead_letter::store(
        tx,
        record.chat_seq,
        &subjects::chat_group(group),
        &payload,
        &reason,
        1,
    )
    .await
}

async fn remove_from_group(
    tx: &mut PgConnection,
    e: &MemberRemoved,
    seq: i64,
) -> Result<Option<Applied>, ProjectionError> {
    if !group_exists(tx, e.group_id).await? {
        tracing::warn!(chat_seq = seq, group = %e.group_id, "removal from an unknown group ignored");
        return Ok(None);
    }
    sqlx::query("DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2")
        .bind(e.group_id.0)
        .bind(e.user_id.0)
        .execute(&mut *tx)
        .await?;
    Ok(Some(Applied {
        group: e.group_id,
        change: GroupChange {
            kind: ChangeKind::MemberRemoved,
            user_ids: vec![e.user_id],
            by: e.actor_id,
        },
        also_to: vec![e.user_id],
    }))
}

/// Marks the group deleted and removes its members, so every membership
/// check (history, sends, reads, the conversation list) answers as for a
/// group that never was. Its messages stay in the table, out of reach.
async fn delete_group(
    tx: &mut PgConnection,
    e: &GroupDeleted,
    seq: i64,
) -> Result<Option<Applied>, ProjectionError> {
    if !group_exists(tx, e.group_id).await? {
        tracing::warn!(chat_seq = seq, group = %e.group_id, "deletion of an unknown group ignored");
        return Ok(None);
    }
    let former = members(tx, e.group_id.into()).await?;
    sqlx::query("DELETE FROM conversation_members WHERE conversation_id = $1")
        .bind(e.group_id.0)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE conversations SET deleted_seq = $2 WHERE id = $1")
        .bind(e.group_id.0)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    Ok(Some(Applied {
        group: e.group_id,
        change: GroupChange {
            kind: ChangeKind::Deleted,
            user_ids: Vec::new(),
            by: e.actor_id,
        },
        also_to: former,
    }))
}

/// New members see the group as active from when they joined, and have
/// seen every message before it: their unread count starts at zero.
async fn add_members(
    tx: &mut PgConnection,
    group: GroupId,
    users: &[UserId],
    seq: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    let ids: Vec<Uuid> = users.iter().map(|u| u.0).collect();
    sqlx::query(
        "INSERT INTO conversation_members
             (conversation_id, user_id, joined_seq, last_activity_at, seen_count)
         SELECT $1, t.user_id, $3, $4, c.message_count
         FROM UNNEST($2::uuid[]) AS t(user_id) JOIN conversations c ON c.id = $1
         ON CONFLICT DO NOTHING",
    )
    .bind(group.0)
    .bind(&ids)
    .bind(seq)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether `group` is a group that was not deleted.
async fn group_exists(tx: &mut PgConnection, group: GroupId) -> Result<bool, ProjectionError> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM conversations
                        WHERE id = $1 AND kind = 'group' AND deleted_seq IS NULL)",
    )
    .bind(group.0)
    .fetch_one(&mut *tx)
    .await?)
}

/// The group as the transaction sees it; a deleted group as it was, with
/// no members left.
async fn group_view(tx: &mut PgConnection, group: GroupId) -> Result<Group, ProjectionError> {
    natter_runtime::views::group_even_deleted(tx, group)
        .await?
        .ok_or_else(|| ProjectionError::Permanent(sqlx::Error::RowNotFound))
}
