//! Groups over REST; members only. Members are read a page at a time
//! (`{members, next?}`, like `GET /api/users`): a group is never sent whole.

use super::extract::{AuthUser, JsonBody, QueryParams};
use super::schema::{AddMembersRequest, CreateGroupRequest, GroupBody, Members};
use crate::directory::Directory;
use crate::error::ApiError;
use crate::error::ErrorResponses;
use crate::groups::{DEFAULT_MEMBERS_PAGE, Groups, MAX_MEMBERS_PAGE};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use natter_core::{GroupId, UserId};
use serde::Deserialize;
use serde_json::Value;
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

/// Creates a group with the caller and `memberIds` (at most 1,000 members).
#[utoipa::path(post, path = "/api/groups", tag = "groups", security(("bearer" = [])),
    request_body = CreateGroupRequest,
    responses((status = 201, description = "created", body = GroupBody), ErrorResponses))]
async fn create(
    State(groups): State<Arc<Groups>>,
    State(directory): State<Arc<Directory>>,
    caller: AuthUser,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<GroupBody>), ApiError> {
    let creator = directory
        .get(caller.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    let group = groups.create(&creator, &body).await?;
    Ok((StatusCode::CREATED, Json(GroupBody { group })))
}

/// A group the caller is a member of.
#[utoipa::path(get, path = "/api/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the group's id")),
    responses((status = 200, description = "the group", body = GroupBody), ErrorResponses))]
async fn show(
    State(groups): State<Arc<Groups>>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<GroupBody>, ApiError> {
    let group = groups.member_view(caller.id, group_id(&id)?).await?;
    Ok(Json(GroupBody { group }))
}

/// Adds members (members may add others).
#[utoipa::path(post, path = "/api/groups/{id}/members", tag = "groups",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the group's id")),
    request_body = AddMembersRequest,
    responses((status = 200, description = "the group after the add", body = GroupBody), ErrorResponses))]
async fn add(
    State(groups): State<Arc<Groups>>,
    caller: AuthUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<GroupBody>, ApiError> {
    let group = groups.add(caller.id, group_id(&id)?, &body).await?;
    Ok(Json(GroupBody { group }))
}

/// Removes a member: the creator may remove anyone, a member themselves.
#[utoipa::path(delete, path = "/api/groups/{id}/members/{user}", tag = "groups",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the group's id"),
        ("user" = uuid::Uuid, Path, description = "the member's id")),
    responses((status = 204, description = "removed"), ErrorResponses))]
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

/// Deletes the group (its creator only).
#[utoipa::path(delete, path = "/api/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the group's id")),
    responses((status = 204, description = "deleted"), ErrorResponses))]
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
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct MembersPage {
    /// Members per page (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The last member id of the previous page (`next`); empty or absent
    /// for the first page.
    #[param(value_type = Option<String>, pattern = r"^$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    after: Option<String>,
}

/// A page of the group's members, in id order.
#[utoipa::path(get, path = "/api/groups/{id}/members", tag = "groups",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the group's id"), MembersPage),
    responses((status = 200, description = "a page of members", body = Members), ErrorResponses))]
async fn members(
    State(groups): State<Arc<Groups>>,
    caller: AuthUser,
    Path(id): Path<String>,
    QueryParams(page): QueryParams<MembersPage>,
) -> Result<Json<Members>, ApiError> {
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
        // The hyphenated form only, as the document's pattern says.
        Some(raw) => Some(
            Some(raw)
                .filter(|raw| raw.len() == 36)
                .and_then(|raw| raw.parse::<UserId>().ok())
                .ok_or_else(|| ApiError::bad_request("after must be a user id"))?,
        ),
    };
    let (members, next) = groups.members(caller.id, group, after, limit).await?;
    Ok(Json(Members { members, next }))
}
