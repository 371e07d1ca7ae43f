//! Groups over REST; members only.

use super::extract::{AuthUser, JsonBody};
use crate::directory::Directory;
use crate::error::ApiError;
use crate::groups::Groups;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use natter_core::{GroupId, UserId};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/groups", post(create))
        .route("/api/groups/{id}", get(show))
        .route("/api/groups/{id}/members", post(add))
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
