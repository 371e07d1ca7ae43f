//! The caller and the people they can talk to.

use super::auth::user_json;
use super::conversations::MESSAGE_JSON;
use super::extract::{AuthUser, JsonBody};
use crate::control::{Control, ControlBus};
use crate::directory::{Directory, UserRecord};
use crate::error::ApiError;
use crate::presence::Presence;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use natter_core::{ConversationId, DisplayName, Message, UserId};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::types::Json as SqlJson;
use std::sync::Arc;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/me", get(me).patch(update_me))
        .route("/api/users", get(users))
}

async fn me(
    State(directory): State<Arc<Directory>>,
    caller: AuthUser,
) -> Result<Json<Value>, ApiError> {
    let user = directory
        .get(caller.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    Ok(Json(user_json(&user)))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileChange {
    display_name: String,
}

/// `PATCH /api/me {displayName}`: others see the new name in the user list
/// and on the caller's later messages.
async fn update_me(
    State(pool): State<PgPool>,
    State(directory): State<Arc<Directory>>,
    State(control): State<ControlBus>,
    caller: AuthUser,
    JsonBody(change): JsonBody<ProfileChange>,
) -> Result<Json<Value>, ApiError> {
    let display_name = DisplayName::parse(&change.display_name)?;
    let username: Option<String> =
        sqlx::query_scalar("UPDATE users SET display_name = $2 WHERE id = $1 RETURNING username")
            .bind(caller.id.0)
            .bind(display_name.as_str())
            .fetch_optional(&pool)
            .await?;
    let username = username.ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    let user = directory.remember(UserRecord {
        id: caller.id,
        username,
        display_name: display_name.into_string(),
    });
    control.announce(caller.id, &Control::ProfileChanged).await;
    Ok(Json(user_json(&user)))
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    username: String,
    display_name: String,
    unread_count: Option<i32>,
    last_message: Option<SqlJson<Message>>,
}

/// Everyone else, with the direct conversation's unread count and last message.
async fn users(
    State(pool): State<PgPool>,
    State(presence): State<Arc<Presence>>,
    caller: AuthUser,
) -> Result<Json<Value>, ApiError> {
    let sql = format!(
        "SELECT u.id, u.username, u.display_name, mine.unread_count, last.message AS last_message
         FROM users u
         LEFT JOIN LATERAL (
             SELECT c.id, c.last_seq, me.unread_count
             FROM conversation_members me
             JOIN conversation_members them
               ON them.conversation_id = me.conversation_id AND them.user_id = u.id
             JOIN conversations c ON c.id = me.conversation_id AND c.kind = 'direct'
             WHERE me.user_id = $1
         ) mine ON true
         LEFT JOIN LATERAL (
             SELECT {MESSAGE_JSON} AS message
             FROM messages m JOIN users s ON s.id = m.sender_id
             WHERE m.conversation_id = mine.id AND m.seq = mine.last_seq
         ) last ON true
         WHERE u.id <> $1
         ORDER BY u.display_name, u.id"
    );
    let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(caller.id.0)
        .fetch_all(&pool)
        .await?;
    let users: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            json!({
                "id": row.id,
                "username": row.username,
                "displayName": row.display_name,
                "online": presence.is_online(UserId(row.id)),
                "conversationId": ConversationId::direct(caller.id, UserId(row.id)),
                "unreadCount": row.unread_count.unwrap_or(0),
                "lastMessage": row.last_message.map(|SqlJson(m)| m),
            })
        })
        .collect();
    Ok(Json(Value::Array(users)))
}
