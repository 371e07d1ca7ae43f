//! Group membership in the projection: the membership events, the one
//! query for a conversation's members, and the membership cache.
//!
//! Each event's SQL queues a `group_updated`. The cache of who is in each
//! group serves the fan-out of group messages; it is filled from PostgreSQL
//! on a miss and forgotten for every group a batch changes, so it never
//! outlives what the persister itself projected.

use super::error::ProjectionError;
use super::record::{Dedupe, Fanout, Record};
use natter_core::{
    ChatEvent, ConversationId, DeliveryEvent, Group, GroupChange, GroupCreated, GroupId,
    MemberRemoved, MembersAdded, UserId,
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
/// who hears of it besides the members (a removed member).
struct Applied {
    group: GroupId,
    change: GroupChange,
    also_to: Option<UserId>,
}

/// Applies one membership event and queues its `group_updated`.
pub async fn project_group_event(
    tx: &mut PgConnection,
    record: &Record,
    fanouts: &mut Vec<Fanout>,
) -> Result<(), ProjectionError> {
    let Some(applied) = apply(tx, record).await? else {
        return Ok(());
    };
    let seq = record.chat_seq as i64;
    sqlx::query("UPDATE conversations SET group_seq = GREATEST(group_seq, $2) WHERE id = $1")
        .bind(applied.group.0)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    let view = group_view(tx, applied.group).await?;
    let mut recipients: Vec<UserId> = view.members.iter().map(|m| m.id).collect();
    // The removed member hears of it too, so its clients drop the group.
    if let Some(removed) = applied.also_to
        && !recipients.contains(&removed)
    {
        recipients.push(removed);
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
/// an unknown group, or not a membership event at all.
async fn apply(tx: &mut PgConnection, record: &Record) -> Result<Option<Applied>, ProjectionError> {
    let seq = record.chat_seq as i64;
    match &record.event {
        ChatEvent::GroupCreated(e) => create_group(tx, e, seq).await.map(Some),
        ChatEvent::MembersAdded(e) => add_to_group(tx, e, seq).await,
        ChatEvent::MemberRemoved(e) => remove_from_group(tx, e, seq).await,
        ChatEvent::MessageSent(_) | ChatEvent::MessagesRead(_) => Ok(None),
    }
}

async fn create_group(
    tx: &mut PgConnection,
    e: &GroupCreated,
    seq: i64,
) -> Result<Applied, ProjectionError> {
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
    add_members(tx, e.group_id, &e.member_ids, seq, e.at).await?;
    Ok(Applied {
        group: e.group_id,
        change: GroupChange::Created {
            actor_id: e.creator_id,
        },
        also_to: None,
    })
}

async fn add_to_group(
    tx: &mut PgConnection,
    e: &MembersAdded,
    seq: i64,
) -> Result<Option<Applied>, ProjectionError> {
    if !group_exists(tx, e.group_id).await? {
        tracing::warn!(chat_seq = seq, group = %e.group_id, "members added to an unknown group ignored");
        return Ok(None);
    }
    add_members(tx, e.group_id, &e.user_ids, seq, e.at).await?;
    Ok(Some(Applied {
        group: e.group_id,
        change: GroupChange::MembersAdded {
            actor_id: e.actor_id,
            user_ids: e.user_ids.clone(),
        },
        also_to: None,
    }))
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
        change: GroupChange::MemberRemoved {
            actor_id: e.actor_id,
            user_id: e.user_id,
        },
        also_to: Some(e.user_id),
    }))
}

/// New members see the group as active from when they joined.
async fn add_members(
    tx: &mut PgConnection,
    group: GroupId,
    users: &[UserId],
    seq: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    let ids: Vec<Uuid> = users.iter().map(|u| u.0).collect();
    sqlx::query(
        "INSERT INTO conversation_members (conversation_id, user_id, joined_seq, last_activity_at)
         SELECT $1, user_id, $3, $4 FROM UNNEST($2::uuid[]) AS t(user_id)
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

async fn group_exists(tx: &mut PgConnection, group: GroupId) -> Result<bool, ProjectionError> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND kind = 'group')",
    )
    .bind(group.0)
    .fetch_one(&mut *tx)
    .await?)
}

/// The group as the transaction sees it.
async fn group_view(tx: &mut PgConnection, group: GroupId) -> Result<Group, ProjectionError> {
    natter_runtime::views::group(tx, group)
        .await?
        .ok_or_else(|| ProjectionError::Permanent(sqlx::Error::RowNotFound))
}
