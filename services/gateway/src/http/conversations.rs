//! A conversation's history and read position. Members only: anyone else
//! gets `not_found`, never data.

use crate::auth::AuthUser;
use crate::chat;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use natter_core::{ConversationId, GroupId, Message, MessageId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/conversations/{id}/messages", get(history))
        .route("/api/conversations/{id}/read", post(read))
}

#[derive(Deserialize)]
struct Page {
    before: Option<i64>,
    after: Option<i64>,
    limit: Option<i64>,
}

fn conversation_id(raw: &str) -> Result<ConversationId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request("conversation id must be a UUID"))
}

/// The columns of a stored message as clients see it; the query must join
/// the sender as `s`.
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.seq, m.sender_id, \
     s.display_name AS sender_name, m.receiver_id, m.group_id, m.content, m.client_msg_id, m.created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    id: Uuid,
    conversation_id: Uuid,
    seq: i64,
    sender_id: Uuid,
    sender_name: String,
    receiver_id: Option<Uuid>,
    group_id: Option<Uuid>,
    content: String,
    client_msg_id: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<MessageRow> for Message {
    fn from(row: MessageRow) -> Self {
        Message {
            id: MessageId(row.id),
            conversation_id: ConversationId(row.conversation_id),
            seq: row.seq.max(0) as u64,
            sender_id: UserId(row.sender_id),
            sender_name: row.sender_name,
            receiver_id: row.receiver_id.map(UserId),
            group_id: row.group_id.map(GroupId),
            content: row.content,
            client_msg_id: row.client_msg_id,
            created_at: row.created_at,
        }
    }
}

async fn history(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let conversation = conversation_id(&id)?;
    chat::ensure_member(&state, caller.id, conversation).await?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    if page.before.is_some_and(|b| b < 0) || page.after.is_some_and(|a| a < 0) {
        return Err(ApiError::bad_request(
            "before and after must be non-negative",
        ));
    }
    // With `after` the page reads forward; otherwise it is the newest page
    // (before `before`), read backwards and returned in seq order.
    let forward = page.after.is_some() && page.before.is_none();
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS}
         FROM messages m JOIN users s ON s.id = m.sender_id
         WHERE m.conversation_id = $1
           AND ($2::bigint IS NULL OR m.seq < $2)
           AND ($3::bigint IS NULL OR m.seq > $3)
         ORDER BY CASE WHEN $4 THEN m.seq END ASC, CASE WHEN NOT $4 THEN m.seq END DESC
         LIMIT $5"
    );
    let rows: Vec<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(conversation.0)
        .bind(page.before)
        .bind(page.after)
        .bind(forward)
        .bind(limit + 1)
        .fetch_all(&state.pool)
        .await?;
    let has_more = rows.len() as i64 > limit;
    let mut messages: Vec<Message> = rows
        .into_iter()
        .take(limit as usize)
        .map(Message::from)
        .collect();
    if !forward {
        messages.reverse();
    }
    Ok(Json(json!({"messages": messages, "hasMore": has_more})))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ReadBody {
    up_to_seq: Option<u64>,
}

async fn read(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let conversation = conversation_id(&id)?;
    // The body is optional: none means "everything so far".
    let up_to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<ReadBody>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
            .up_to_seq
    };
    chat::mark_read(&state, caller.id, conversation, up_to).await?;
    Ok(StatusCode::NO_CONTENT)
}
