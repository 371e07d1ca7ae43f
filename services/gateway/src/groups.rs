//! Group management: create, add, remove, delete, look up, list members.
//! Each change is one `CHAT` event validated against the current membership,
//! so a change is applied whole or not at all; the reply waits (briefly)
//! until the persister has projected it, so the caller reads its own write.

use crate::chat::Chat;
use crate::directory::UserRecord;
use crate::error::ApiError;
use crate::throttle::PerUser;
use crate::ws::protocol::parse_uuid;
use natter_core::{
    ChatEvent, Group, GroupCreated, GroupDeleted, GroupId, GroupName, Member, MemberRemoved,
    MembersAdded, UserId, subjects,
};
use natter_runtime::backoff::Backoff;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The most members a group may have.
pub const MAX_MEMBERS: usize = natter_core::MAX_GROUP_MEMBERS;
/// Members a page holds unless the caller asks for fewer or more.
pub const DEFAULT_MEMBERS_PAGE: u32 = 100;
/// The most members one page holds.
pub const MAX_MEMBERS_PAGE: u32 = 200;
/// How long a change's reply waits for the projection.
const PROJECTION_WAIT: Duration = Duration::from_secs(3);

/// Group changes a user may make per second, and in a burst: each is a
/// `CHAT` record and a delivery record to every member.
const CHANGE_RATE: f64 = 1.0;
const CHANGE_BURST: f64 = 10.0;

/// Group changes: each one a `CHAT` event, validated against the projection.
pub struct Groups {
    pool: PgPool,
    chat: Arc<Chat>,
    /// Changes per user (create, add, remove, delete).
    changes: PerUser,
}

impl Groups {
    pub fn new(pool: PgPool, chat: Arc<Chat>) -> Self {
        Self {
            pool,
            chat,
            changes: PerUser::new(CHANGE_RATE, CHANGE_BURST),
        }
    }

    /// `rate_limited` once `user` changed groups more often than allowed.
    fn allow_change(&self, user: UserId) -> Result<(), ApiError> {
        self.changes
            .check(user)
            .map_err(|wait| ApiError::rate_limited("too many group changes; slow down", wait))
    }

    /// A list of user ids: an array of distinct UUIDs, each a known user.
    async fn parse_users(
        &self,
        value: Option<&Value>,
        field: &str,
    ) -> Result<Vec<UserId>, ApiError> {
        let items = value.and_then(Value::as_array).ok_or_else(|| {
            ApiError::bad_request(format!("{field} must be an array of user ids"))
        })?;
        if items.len() > MAX_MEMBERS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_MEMBERS} users at a time"
            )));
        }
        let mut ids = Vec::with_capacity(items.len());
        let mut seen = HashSet::new();
        for item in items {
            let id = UserId(parse_uuid(item, field)?);
            if !seen.insert(id) {
                return Err(ApiError::bad_request(format!("{field} lists {id} twice")));
            }
            ids.push(id);
        }
        let raw: Vec<Uuid> = ids.iter().map(|u| u.0).collect();
        let known: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE id = ANY($1)")
            .bind(&raw)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
        let unknown: Vec<String> = raw
            .iter()
            .filter(|id| !known.contains(id))
            .map(Uuid::to_string)
            .collect();
        // A field naming no one is bad input (400): a 404 would say the
        // group at the path is missing.
        if !unknown.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{field} names unknown users: {}",
                unknown.join(", ")
            )));
        }
        Ok(ids)
    }

    /// `POST /api/groups {name, memberIds}`: the creator is always a member.
    pub async fn create(&self, creator: &UserRecord, body: &Value) -> Result<Group, ApiError> {
        let name = match body.get("name") {
            Some(Value::String(name)) => GroupName::parse(name)?,
            Some(_) => return Err(ApiError::bad_request("name must be a string")),
            None => return Err(ApiError::bad_request("name is required")),
        };
        let listed = self.parse_users(body.get("memberIds"), "memberIds").await?;
        let mut members = vec![creator.id];
        members.extend(listed.into_iter().filter(|id| *id != creator.id));
        if members.len() > MAX_MEMBERS {
            return Err(too_many());
        }
        let group = GroupId::generate();
        self.allow_change(creator.id)?;
        self.chat
            .charge_group_change(creator.id, members.len(), members.len())?;
        let seq = self
            .chat
            .append(
                subjects::chat_group(group),
                ChatEvent::GroupCreated(GroupCreated {
                    group_id: group,
                    name: name.into_string(),
                    creator_id: creator.id,
                    member_ids: members,
                    at: natter_core::events::accepted_at(),
                }),
            )
            .await?;
        tracing::info!(%group, creator = %creator.id, "group created");
        self.projected(group, seq).await
    }

    /// `POST /api/groups/{id}/members {userIds}`: members add others. The
    /// persister has the last word on the member cap: an add that two
    /// concurrent requests both passed here is refused there, whole.
    pub async fn add(
        &self,
        actor: UserId,
        group: GroupId,
        body: &Value,
    ) -> Result<Group, ApiError> {
        let current = self.member_view(actor, group).await?;
        let users = self.parse_users(body.get("userIds"), "userIds").await?;
        if users.is_empty() {
            return Err(ApiError::bad_request("userIds must not be empty"));
        }
        let already = self.members_among(group, &users).await?;
        if !already.is_empty() {
            let listed: Vec<String> = already.iter().map(ToString::to_string).collect();
            return Err(ApiError::bad_request(format!(
                "already members: {}",
                listed.join(", ")
            )));
        }
        if current.member_count as usize + users.len() > MAX_MEMBERS {
            return Err(too_many());
        }
        self.allow_change(actor)?;
        self.chat.charge_group_change(
            actor,
            current.member_count as usize + users.len(),
            users.len(),
        )?;
        let seq = self
            .chat
            .append(
                subjects::chat_group(group),
                ChatEvent::MembersAdded(MembersAdded {
                    group_id: group,
                    actor_id: actor,
                    user_ids: users,
                    at: natter_core::events::accepted_at(),
                }),
            )
            .await?;
        self.wait_for_projection(group, seq).await?;
        if self.refused(seq).await? {
            return Err(too_many());
        }
        self.projected(group, seq).await
    }

    /// Which of `users` are members of `group` now.
    async fn members_among(
        &self,
        group: GroupId,
        users: &[UserId],
    ) -> Result<Vec<UserId>, ApiError> {
        let raw: Vec<Uuid> = users.iter().map(|u| u.0).collect();
        let found: Vec<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM conversation_members
             WHERE conversation_id = $1 AND user_id = ANY($2) ORDER BY user_id",
        )
        .bind(group.0)
        .bind(&raw)
        .fetch_all(&self.pool)
        .await?;
        Ok(found.into_iter().map(UserId).collect())
    }

    /// Whether the persister refused the group event at `seq` (it
    /// dead-letters what it must not apply).
    async fn refused(&self, seq: u64) -> Result<bool, ApiError> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM dead_letters WHERE chat_seq = $1)",
        )
        .bind(seq as i64)
        .fetch_one(&self.pool)
        .await?)
    }

    /// `DELETE /api/groups/{id}/members/{userId}`: a member may leave; only the
    /// group's creator removes others.
    pub async fn remove(
        &self,
        actor: UserId,
        group: GroupId,
        user: UserId,
    ) -> Result<(), ApiError> {
        let current = self.member_view(actor, group).await?;
        if self.members_among(group, &[user]).await?.is_empty() {
            return Err(ApiError::NotFound(format!(
                "user {user} is not a member of group {group}"
            )));
        }
        if user != actor && current.created_by != actor {
            return Err(ApiError::Forbidden(
                "only the group's creator removes other members".into(),
            ));
        }
        self.allow_change(actor)?;
        self.chat
            .charge_group_change(actor, current.member_count as usize, 1)?;
        let seq = self
            .chat
            .append(
                subjects::chat_group(group),
                ChatEvent::MemberRemoved(MemberRemoved {
                    group_id: group,
                    actor_id: actor,
                    user_id: user,
                    at: natter_core::events::accepted_at(),
                }),
            )
            .await?;
        self.wait_for_projection(group, seq).await?;
        Ok(())
    }

    /// `DELETE /api/groups/{id}`: the creator deletes the group for everyone.
    pub async fn delete(&self, actor: UserId, group: GroupId) -> Result<(), ApiError> {
        let current = self.member_view(actor, group).await?;
        if current.created_by != actor {
            return Err(ApiError::Forbidden(
                "only the group's creator deletes it".into(),
            ));
        }
        self.allow_change(actor)?;
        self.chat
            .charge_group_change(actor, current.member_count as usize, 0)?;
        let seq = self
            .chat
            .append(
                subjects::chat_group(group),
                ChatEvent::GroupDeleted(GroupDeleted {
                    group_id: group,
                    actor_id: actor,
                    at: natter_core::events::accepted_at(),
                }),
            )
            .await?;
        tracing::info!(%group, by = %actor, "group deleted");
        self.wait_for_projection(group, seq).await
    }

    /// `GET /api/groups/{id}/members`: up to `limit` members after `after`
    /// (a member id), in id order, and the `after` of the next page if any.
    pub async fn members(
        &self,
        user: UserId,
        group: GroupId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<(Vec<Member>, Option<UserId>), ApiError> {
        self.member_view(user, group).await?;
        let mut conn = self.pool.acquire().await?;
        let mut page =
            natter_runtime::views::members_page(&mut conn, group, after, limit + 1).await?;
        let next = if page.len() > limit as usize {
            page.truncate(limit as usize);
            page.last().map(|m| m.id)
        } else {
            None
        };
        Ok((page, next))
    }

    /// The group, if `user` is one of its members; `not_found` otherwise, so a
    /// non-member cannot tell whether the group exists. A direct
    /// conversation's id, or a deleted group's, is not a group either.
    pub async fn member_view(&self, user: UserId, group: GroupId) -> Result<Group, ApiError> {
        let not_found = || ApiError::NotFound(format!("group {group} not found"));
        let mut conn = self.pool.acquire().await?;
        let view = natter_runtime::views::group(&mut conn, group)
            .await?
            .ok_or_else(not_found)?;
        if self.chat.is_member(user, group.into()).await? {
            Ok(view)
        } else {
            Err(not_found())
        }
    }

    /// The group once the persister projected `seq` (or as it stands after
    /// [`PROJECTION_WAIT`], if the persister is behind: the change is accepted
    /// either way).
    async fn projected(&self, group: GroupId, seq: u64) -> Result<Group, ApiError> {
        self.wait_for_projection(group, seq).await?;
        let mut conn = self.pool.acquire().await?;
        natter_runtime::views::group(&mut conn, group)
            .await?
            .ok_or_else(|| {
                ApiError::Unavailable(
                    "the group was accepted and is not visible yet; retry shortly".into(),
                )
            })
    }

    async fn wait_for_projection(&self, group: GroupId, seq: u64) -> Result<(), ApiError> {
        let deadline = Instant::now() + PROJECTION_WAIT;
        let mut pause = Backoff::new(Duration::from_millis(2), Duration::from_millis(50));
        loop {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT group_seq FROM conversations WHERE id = $1")
                    .bind(group.0)
                    .fetch_optional(&self.pool)
                    .await?;
            if applied.is_some_and(|applied| applied >= seq as i64) || Instant::now() > deadline {
                return Ok(());
            }
            tokio::time::sleep(pause.next_delay()).await;
        }
    }
}

fn too_many() -> ApiError {
    ApiError::bad_request(format!("a group has at most {MAX_MEMBERS} members"))
}
