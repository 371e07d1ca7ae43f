//! The caller's contact list (the seed's contacts/add and contacts/remove):
//! private to its owner, bounded, and the people whose presence the caller
//! sees without sharing a conversation.

use super::extract::AuthUser;
use super::schema::{Contact, Contacts};
use crate::error::ApiError;
use crate::error::ErrorResponses;
use crate::presence::Presence;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use natter_core::UserId;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// The most contacts one user may keep.
pub const MAX_CONTACTS: i64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/contacts", get(list))
        .route("/api/contacts/{user}", put(add).delete(remove))
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request("user id must be a UUID"))
}

/// `{contacts: [{id, username, displayName, online}]}`, by display name.
/// The caller's contacts (at most 1,000), by display name.
#[utoipa::path(get, path = "/api/contacts", tag = "contacts", security(("bearer" = [])),
    responses((status = 200, description = "the contacts", body = Contacts), ErrorResponses))]
async fn list(
    State(pool): State<PgPool>,
    State(presence): State<Arc<Presence>>,
    caller: AuthUser,
) -> Result<Json<Contacts>, ApiError> {
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT u.id, u.username, u.display_name
         FROM contacts c JOIN users u ON u.id = c.contact_id
         WHERE c.owner_id = $1
         ORDER BY lower(u.display_name), u.id
         LIMIT $2",
    )
    .bind(caller.id.0)
    .bind(MAX_CONTACTS)
    .fetch_all(&pool)
    .await?;
    let contacts = rows
        .into_iter()
        .map(|(id, username, display_name)| Contact {
            id: UserId(id),
            username,
            display_name,
            online: presence.is_online(UserId(id)),
        })
        .collect();
    Ok(Json(Contacts { contacts }))
}

/// `PUT /api/contacts/{userId}`: adds a known user; adding one twice is fine.
/// Adds a user to the caller's contacts (idempotent).
#[utoipa::path(put, path = "/api/contacts/{user}", tag = "contacts", security(("bearer" = [])),
    params(("user" = uuid::Uuid, Path, description = "the user's id")),
    responses((status = 204, description = "a contact"), ErrorResponses))]
async fn add(
    State(pool): State<PgPool>,
    caller: AuthUser,
    Path(user): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = user_id(&user)?;
    if user == caller.id {
        return Err(ApiError::bad_request(
            "you cannot add yourself as a contact",
        ));
    }
    let added: Option<bool> = sqlx::query_scalar(
        "WITH target AS (SELECT id FROM users WHERE id = $2),
              kept AS (SELECT count(*) AS n FROM contacts WHERE owner_id = $1),
              inserted AS (
                  INSERT INTO contacts (owner_id, contact_id)
                  SELECT $1, target.id FROM target, kept WHERE kept.n < $3
                  ON CONFLICT DO NOTHING
                  RETURNING 1
              )
         SELECT EXISTS (SELECT 1 FROM inserted)
                OR EXISTS (SELECT 1 FROM contacts WHERE owner_id = $1 AND contact_id = $2)
         FROM target",
    )
    .bind(caller.id.0)
    .bind(user.0)
    .bind(MAX_CONTACTS)
    .fetch_optional(&pool)
    .await?;
    match added {
        None => Err(ApiError::NotFound(format!("user {user} not found"))),
        Some(false) => Err(ApiError::bad_request(format!(
            "a contact list holds at most {MAX_CONTACTS} people"
        ))),
        Some(true) => Ok(StatusCode::NO_CONTENT),
    }
}

/// `DELETE /api/contacts/{userId}`: removing someone who is not a contact is fine.
/// Removes a user from the caller's contacts (idempotent).
#[utoipa::path(delete, path = "/api/contacts/{user}", tag = "contacts", security(("bearer" = [])),
    params(("user" = uuid::Uuid, Path, description = "the user's id")),
    responses((status = 204, description = "not a contact"), ErrorResponses))]
async fn remove(
    State(pool): State<PgPool>,
    caller: AuthUser,
    Path(user): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = user_id(&user)?;
    sqlx::query("DELETE FROM contacts WHERE owner_id = $1 AND contact_id = $2")
        .bind(caller.id.0)
        .bind(user.0)
        .execute(&pool)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
