//! Groups over REST; members only.

use super::JsonBody;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::groups;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use natter_core::{GroupId, UserId};
use serde_json::{Value, json};

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
    State(state): State<AppState>,
    caller: AuthUser,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let creator = state
        .directory
        .get(caller.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    let group = groups::create(&state, &creator, &body).await?;
    Ok((StatusCode::CREATED, Json(json!({ "group": group }))))
}

async fn show(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let group = groups::member_view(&state, caller.id, group_id(&id)?).await?;
    Ok(Json(json!({ "group": group })))
}

async fn add(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let group = groups::add(&state, caller.id, group_id(&id)?, &body).await?;
    Ok(Json(json!({ "group": group })))
}

async fn remove(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user: UserId = user
        .parse()
        .map_err(|_| ApiError::bad_request("user id must be a UUID"))?;
    groups::remove(&state, caller.id, group_id(&id)?, user).await?;
    Ok(StatusCode::NO_CONTENT)
}
