//! Groups over REST; members only. Members are read a page at a time
//! (`{members, next?}`, like `GET /api/users`): a group is never sent whole.

use super::extract::{AuthUser, JsonBody, QueryParams};
use crate::directory::Directory;
use crate::error::ApiError;
use crate::groups::{DEFAULT_MEMBERS_PAGE, Groups, MAX_MEMBERS_PAGE};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use natter_core::{GroupId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/groups", post(create))
        .route("/api/groups/{id}", get(show).delete(destroy))
        .route("/api/groups/{id}/members", get(members).post(add))
        .route("/api/groups/{id}/members/{user}", delete(remove))
}

fn group_id(raw: &str) -> Result<GroupId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request("group id must be a UUID"))
}

async fn create(
    State(groups): State<Arc<Groups>>,
    State(directory): State<Arc<Directory>>,
    caller: AuthUser,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let creator = directory
        .get(caller.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    let group = groups.create(&creator, &body).await?;
    Ok((StatusCode::CREATED, Json(json!({ "group": group }))))
}

async fn show(
    State(groups): State<Arc<Groups>>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let group = groups.member_view(caller.id, group_id(&id)?).await?;
    Ok(Json(json!({ "group": group })))
}

async fn add(
    State(groups): State<Arc<Groups>>,
    caller: AuthUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let group = groups.add(caller.id, group_id(&id)?, &body).await?;
    Ok(Json(json!({ "group": group })))
}

async fn remove(
    State(groups): State<Arc<Groups>>,
    caller: AuthUser,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user: UserId = user
        .parse()
        .map_err(|_| ApiError::bad_request("user id must be a UUID"))?;
    groups.remove(caller.id, group_id(&id)?, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn destroy(
    State(groups): State<Arc<Groups>>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    groups.delete(caller.id, group_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of a members page, as given: parsed below so a bad value is
/// answered with the JSON error like every other.
#[derive(Deserialize)]
struct MembersPage {
    limit: Option<String>,
    after: Option<String>,
}

async fn members(
    State(groups): State<Arc<Groups>>,
    caller: AuthUser,
    Path(id): Path<String>,
    QueryParams(page): QueryParams<MembersPage>,
) -> Result<Json<Value>, ApiError> {
    let group = group_id(&id)?;
    let limit = match page.limit.as_deref() {
        None => DEFAULT_MEMBERS_PAGE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_MEMBERS_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be 1 to {MAX_MEMBERS_PAGE}"))
            })?,
    };
    let after = match page.after.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<UserId>()
                .map_err(|_| ApiError::bad_request("after must be a user id"))?,
        ),
    };
    let (members, next) = groups.members(caller.id, group, after, limit).await?;
    let mut body = json!({ "members": members });
    if let Some(next) = next {
        body["next"] = json!(next);
    }
    Ok(Json(body))
}
