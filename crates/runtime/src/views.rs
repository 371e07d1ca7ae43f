//! Read-model queries more than one process answers with: the persister puts
//! them in delivery records, the gateway in REST replies.

use natter_core::{Group, GroupId, Member, UserId};
use sqlx::PgConnection;
use uuid::Uuid;

/// A group with its members in join order, or `None` if there is none.
pub async fn group(conn: &mut PgConnection, group: GroupId) -> Result<Option<Group>, sqlx::Error> {
    let row: Option<(Option<String>, Option<Uuid>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as(
            "SELECT name, created_by, created_at FROM conversations WHERE id = $1 AND kind = 'group'",
        )
        .bind(group.0)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((name, created_by, created_at)) = row else {
        return Ok(None);
    };
    let members: Vec<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT m.user_id, u.username, u.display_name
         FROM conversation_members m LEFT JOIN users u ON u.id = m.user_id
         WHERE m.conversation_id = $1
         ORDER BY m.joined_seq, m.user_id",
    )
    .bind(group.0)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(Group {
        id: group,
        name: name.unwrap_or_default(),
        created_by: UserId(created_by.unwrap_or_default()),
        created_at,
        members: members
            .into_iter()
            .map(|(id, username, display_name)| Member {
                id: UserId(id),
                username: username.unwrap_or_default(),
                display_name: display_name.unwrap_or_default(),
            })
            .collect(),
    }))
}
