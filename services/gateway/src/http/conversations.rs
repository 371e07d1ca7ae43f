//! A conversation's history and read position. Members only: anyone else
//! gets `not_found`, never data.

use super::extract::{AuthUser, QueryParams};
use super::schema::{ConversationEntry, History, Peer};
use crate::chat::Chat;
use crate::earlier::MessageRow;
use crate::error::ApiError;
use crate::error::ErrorResponses;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use natter_core::{ConversationId, GroupId, Message, UserId};
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::types::Json as SqlJson;
use std::sync::Arc;
use uuid::Uuid;

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/conversations", get(list))
        .route("/api/conversations/{id}/messages", get(history))
        .route("/api/conversations/{id}/read", post(read))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Only messages with a lower `seq` (the newest page before it).
    #[param(minimum = 0)]
    before: Option<i64>,
    /// Only messages with a higher `seq`, read forward.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Messages per page (default 50).
    #[param(minimum = 1, maximum = 200)]
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

/// A stored message `m` (sender joined as `s`) as a JSON object in the
/// shape of [`Message`], or NULL when there is no row.
pub(crate) const MESSAGE_JSON: &str = "CASE WHEN m.id IS NULL THEN NULL ELSE json_build_object(
     'id', m.id, 'conversationId', m.conversation_id, 'seq', m.seq,
     'senderId', m.sender_id, 'senderName', s.display_name,
     'receiverId', m.receiver_id, 'groupId', m.group_id, 'content', m.content,
     'clientMsgId', m.client_msg_id, 'createdAt', m.created_at) END";

#[derive(sqlx::FromRow)]
struct ConversationRow {
    id: Uuid,
    kind: String,
    name: Option<String>,
    last_activity_at: DateTime<Utc>,
    unread_count: i64,
    last_read_seq: i64,
    peer_id: Option<Uuid>,
    peer_username: Option<String>,
    peer_display_name: Option<String>,
    last_message: Option<SqlJson<Message>>,
}

/// Conversations one page lists by default, and at most.
const DEFAULT_CONVERSATIONS: i64 = 200;
const MAX_CONVERSATIONS: i64 = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ConversationPage {
    /// Only conversations whose last activity is older (the previous page's
    /// last `lastActivityAt`).
    before: Option<DateTime<Utc>>,
    /// Conversations per page (default 200).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The caller's conversations, direct and group, newest activity first
/// (`?limit=`, default 200, at most 1000; `?before=` for the next page). A
/// conversation's activity is its last message, or the caller's joining if
/// later; its unread count is its message count less what the caller has
/// seen. The plan reads the caller's memberships with their conversations
/// (a top-N sort over them), then at most one peer and one message per
/// listed conversation.
#[utoipa::path(get, path = "/api/conversations", tag = "conversations",
    security(("bearer" = [])), params(ConversationPage),
    responses((status = 200, description = "newest activity first", body = Vec<ConversationEntry>),
        ErrorResponses))]
async fn list(
    State(pool): State<PgPool>,
    caller: AuthUser,
    QueryParams(page): QueryParams<ConversationPage>,
) -> Result<Json<Vec<ConversationEntry>>, ApiError> {
    let limit = page.limit.unwrap_or(DEFAULT_CONVERSATIONS);
    if !(1..=MAX_CONVERSATIONS).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_CONVERSATIONS}"
        )));
    }
    // The caller's page comes first; peers and last messages are looked up
    // for that page only.
    let sql = format!(
        "WITH activity AS (
             SELECT me.conversation_id, me.last_read_seq,
                    GREATEST(c.last_activity_at, me.last_activity_at) AS last_activity_at,
                    c.message_count - me.seen_count AS unread_count
             FROM conversation_members me
             JOIN conversations c ON c.id = me.conversation_id
             WHERE me.user_id = $1
         ),
         mine AS (
             SELECT * FROM activity
             WHERE $2::timestamptz IS NULL OR last_activity_at < $2
             ORDER BY last_activity_at DESC, conversation_id
             LIMIT $3
         )
         SELECT c.id, c.kind, c.name, mine.last_activity_at, mine.unread_count, mine.last_read_seq,
                peer.user_id AS peer_id, pu.username AS peer_username,
                pu.display_name AS peer_display_name, {MESSAGE_JSON} AS last_message
         FROM mine
         JOIN conversations c ON c.id = mine.conversation_id
         LEFT JOIN LATERAL (
             SELECT o.user_id FROM conversation_members o
             WHERE c.kind = 'direct' AND o.conversation_id = c.id AND o.user_id <> $1
             LIMIT 1
         ) peer ON true
         LEFT JOIN users pu ON pu.id = peer.user_id
         LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.last_seq
         LEFT JOIN users s ON s.id = m.sender_id
         ORDER BY mine.last_activity_at DESC, c.id"
    );
    let rows: Vec<ConversationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(caller.id.0)
        .bind(page.before)
        .bind(limit)
        .fetch_all(&pool)
        .await?;
    let conversations = rows
        .into_iter()
        .map(|row| ConversationEntry {
            id: ConversationId(row.id),
            kind: row.kind,
            unread_count: row.unread_count,
            last_read_seq: row.last_read_seq,
            last_activity_at: row.last_activity_at,
            last_message: row.last_message.map(|SqlJson(m)| m),
            group_id: row.name.is_some().then_some(GroupId(row.id)),
            name: row.name,
            peer: row.peer_id.map(|peer| Peer {
                id: UserId(peer),
                username: row.peer_username,
                display_name: row.peer_display_name,
            }),
        })
        .collect();
    Ok(Json(conversations))
}

/// A page of the conversation's history, in `seq` order. Members only.
#[utoipa::path(get, path = "/api/conversations/{id}/messages", tag = "conversations",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the conversation's id"), Page),
    responses((status = 200, description = "a page of messages", body = History), ErrorResponses))]
async fn history(
    State(pool): State<PgPool>,
    State(chat): State<Arc<Chat>>,
    caller: AuthUser,
    Path(id): Path<String>,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<History>, ApiError> {
    let conversation = conversation_id(&id)?;
    chat.ensure_member(caller.id, conversation).await?;
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
        .fetch_all(&pool)
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
    Ok(Json(History { messages, has_more }))
}

/// `POST /api/conversations/{id}/read`: read up to `upToSeq`, or everything
/// so far without it (or without a body).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReadBody {
    up_to_seq: Option<u64>,
}

/// Marks the conversation read; members get a `messages_read` event.
#[utoipa::path(post, path = "/api/conversations/{id}/read", tag = "conversations",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the conversation's id")),
    request_body(content = Option<ReadBody>, description = "optional"),
    responses((status = 204, description = "read"), ErrorResponses))]
async fn read(
    State(chat): State<Arc<Chat>>,
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
    chat.mark_read(caller.id, conversation, up_to).await?;
    Ok(StatusCode::NO_CONTENT)
}
