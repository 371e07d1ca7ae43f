//! The caller and the people they can talk to.

use super::conversations::MESSAGE_JSON;
use super::extract::{AuthUser, JsonBody, QueryParams};
use super::schema::{People, Person, User};
use crate::control::{Control, ControlBus};
use crate::directory::{Directory, UserRecord};
use crate::error::ApiError;
use crate::error::ErrorResponses;
use crate::presence::Presence;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use natter_core::{ConversationId, DisplayName, Message, UserId};
use sqlx::PgPool;
use sqlx::types::Json as SqlJson;
use std::sync::Arc;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/me", get(me).patch(update_me))
        .route("/api/users", get(users))
}

/// The caller's profile.
#[utoipa::path(get, path = "/api/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "the caller", body = User), ErrorResponses))]
async fn me(
    State(directory): State<Arc<Directory>>,
    caller: AuthUser,
) -> Result<Json<User>, ApiError> {
    let user = directory
        .get(caller.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    Ok(Json(User::from(user.as_ref())))
}

/// `PATCH /api/me`: a new display name (1–64 characters).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ProfileChange {
    display_name: String,
}

/// `PATCH /api/me {displayName}`: others see the new name in the user list
/// and on the caller's later messages.
#[utoipa::path(patch, path = "/api/me", tag = "users", security(("bearer" = [])),
    request_body = ProfileChange,
    responses((status = 200, description = "the changed profile", body = User), ErrorResponses))]
async fn update_me(
    State(pool): State<PgPool>,
    State(directory): State<Arc<Directory>>,
    State(control): State<ControlBus>,
    caller: AuthUser,
    JsonBody(change): JsonBody<ProfileChange>,
) -> Result<Json<User>, ApiError> {
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
    Ok(Json(User::from(user.as_ref())))
}

/// People one page lists by default, and at most (DESIGN §4).
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;
/// The longest search prefix: longer than any name.
const MAX_QUERY_CHARS: usize = 64;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PeoplePage {
    /// A prefix of the username or the display name.
    #[param(max_length = 64)]
    q: Option<String>,
    /// People per page (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The last username of the previous page.
    after: Option<String>,
}

impl PeoplePage {
    fn limit(&self) -> Result<i64, ApiError> {
        match self.limit.as_deref() {
            None => Ok(DEFAULT_PAGE),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}"))),
        }
    }

    /// The `LIKE` patterns for the username and the lowercased display name.
    fn patterns(&self) -> Result<Option<(String, String)>, ApiError> {
        let Some(q) = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) else {
            return Ok(None);
        };
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(ApiError::bad_request(format!(
                "q must be at most {MAX_QUERY_CHARS} characters"
            )));
        }
        let q = q.to_lowercase();
        let escaped: String = q
            .chars()
            .flat_map(|c| match c {
                '\\' | '%' | '_' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        Ok(Some((format!("{escaped}%"), format!("{escaped}%"))))
    }
}

#[derive(sqlx::FromRow)]
struct PersonRow {
    id: Uuid,
    username: String,
    display_name: String,
    unread_count: Option<i64>,
    last_message: Option<SqlJson<Message>>,
    is_contact: bool,
    /// A contact, or someone the caller shares a conversation with: the
    /// only people whose presence the caller may see.
    known: bool,
}

/// Everyone else, a page at a time in username order, searched by prefix,
/// with the direct conversation's unread count and last message.
#[utoipa::path(get, path = "/api/users", tag = "users", security(("bearer" = [])),
    params(PeoplePage),
    responses((status = 200, description = "a page of people", body = People), ErrorResponses))]
async fn users(
    State(pool): State<PgPool>,
    State(presence): State<Arc<Presence>>,
    caller: AuthUser,
    QueryParams(page): QueryParams<PeoplePage>,
) -> Result<Json<People>, ApiError> {
    let limit = page.limit()?;
    let patterns = page.patterns()?;
    let rows: Vec<PersonRow> = sqlx::query_as(sqlx::AssertSqlSafe(people_sql()))
        .bind(caller.id.0)
        .bind(patterns.as_ref().map(|p| p.0.as_str()))
        .bind(patterns.as_ref().map(|p| p.1.as_str()))
        .bind(page.after.as_deref())
        .bind(limit + 1)
        .fetch_all(&pool)
        .await?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next = more
        .then(|| rows.last().map(|r| r.username.clone()))
        .flatten();
    let users = rows
        .iter()
        .map(|row| person(row, caller.id, &presence))
        .collect();
    Ok(Json(People { users, next }))
}

fn person(row: &PersonRow, caller: UserId, presence: &Presence) -> Person {
    let id = UserId(row.id);
    Person {
        id,
        username: row.username.clone(),
        display_name: row.display_name.clone(),
        online: row.known && presence.is_online(id),
        is_contact: row.is_contact,
        conversation_id: ConversationId::direct(caller, id),
        unread_count: row.unread_count.unwrap_or(0),
        last_message: row.last_message.as_ref().map(|SqlJson(m)| m.clone()),
    }
}

/// `$1` the caller, `$2`/`$3` the username/display-name patterns (or
/// NULL), `$4` the last username of the previous page (or NULL), `$5` the
/// page size plus one.
fn people_sql() -> String {
    format!(
        "SELECT u.id, u.username, u.display_name, mine.unread_count, last.message AS last_message,
                ct.contact_id IS NOT NULL AS is_contact,
                ct.contact_id IS NOT NULL OR EXISTS (
                    SELECT 1 FROM conversation_members a
                    JOIN conversation_members b ON b.conversation_id = a.conversation_id
                    WHERE a.user_id = $1 AND b.user_id = u.id
                ) AS known
         FROM users u
         LEFT JOIN contacts ct ON ct.owner_id = $1 AND ct.contact_id = u.id
         LEFT JOIN LATERAL (
             SELECT c.id, c.last_seq, c.message_count - me.seen_count AS unread_count
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
           AND ($2::text IS NULL OR u.username LIKE $2 OR lower(u.display_name) LIKE $3)
           AND ($4::text IS NULL OR u.username > $4)
         ORDER BY u.username
         LIMIT $5"
    )
}
