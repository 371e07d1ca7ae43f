//! Read-model queries more than one process answers with: the persister puts
//! them in delivery records, the gateway in REST replies.

use natter_core::{Group, GroupId, Member, UserId};
use sqlx::PgConnection;
use uuid::Uuid;

/// A group's row: name, creator, creation time, member count.
type GroupRow = (
    Option<String>,
    Option<Uuid>,
    chrono::DateTime<chrono::Utc>,
    i64,
);

/// A group with its member count, or `None` if there is none (or it was
/// deleted). Never its members: a group may hold a thousand; read those a
/// page at a time with [`members_page`].
pub async fn group(conn: &mut PgConnection, group: GroupId) -> Result<Option<Group>, sqlx::Error> {
    find(conn, group, false).await
}

/// [`group`], deleted or not: what a deletion's `group_updated` announces.
pub async fn group_even_deleted(
    conn: &mut PgConnection,
    group: GroupId,
) -> Result<Option<Group>, sqlx::Error> {
    find(conn, group, true).await
}

async fn find(
    conn: &mut PgConnection,
    group: GroupId,
    even_deleted: bool,
) -> Result<Option<Group>, sqlx::Error> {
    let row: Option<GroupRow> = sqlx::query_as(
        "SELECT c.name, c.created_by, c.created_at,
                    (SELECT count(*) FROM conversation_members m WHERE m.conversation_id = c.id)
             FROM conversations c
             WHERE c.id = $1 AND c.kind = 'group' AND ($2 OR c.deleted_seq IS NULL)",
    )
    .bind(group.0)
    .bind(even_deleted)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((name, created_by, created_at, count)) = row else {
        return Ok(None);
    };
    Ok(Some(Group {
        id: group,
        name: name.unwrap_or_default(),
        created_by: UserId(created_by.unwrap_or_default()),
        created_at,
        member_count: u32::try_from(count).unwrap_or(u32::MAX),
    }))
}

/// Up to `limit` members of `group` in id order, starting after `after`.
pub async fn members_page(
    conn: &mut PgConnection,
    group: GroupId,
    after: Option<UserId>,
    limit: u32,
) -> Result<Vec<Member>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT m.user_id, u.username, u.display_name
         FROM conversation_members m LEFT JOIN users u ON u.id = m.user_id
         WHERE m.conversation_id = $1 AND ($2::uuid IS NULL OR m.user_id > $2)
         ORDER BY m.user_id
         LIMIT $3",
    )
    .bind(group.0)
    .bind(after.map(|a| a.0))
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, username, display_name)| Member {
            id: UserId(id),
            username: username.unwrap_or_default(),
            display_name: display_name.unwrap_or_default(),
        })
        .collect())
}
