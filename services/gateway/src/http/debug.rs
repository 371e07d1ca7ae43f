//! Operator views, for the users named in `ADMIN_USERS` only.

use super::extract::AuthUser;
use super::schema::ActiveUsers;
use crate::config::Config;
use crate::directory::Directory;
use crate::error::ApiError;
use crate::error::ErrorResponses;
use crate::presence::Presence;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

pub fn router() -> Router<AppState> {
    Router::new().route("/debug/active-users", get(active_users))
}

/// Everyone connected to any gateway: user, connection count, gateways.
/// Never socket ids or tokens.
#[utoipa::path(get, path = "/debug/active-users", tag = "operations",
    security(("bearer" = [])),
    responses((status = 200, description = "who is connected", body = ActiveUsers), ErrorResponses))]
async fn active_users(
    State(config): State<Arc<Config>>,
    State(directory): State<Arc<Directory>>,
    State(presence): State<Arc<Presence>>,
    caller: AuthUser,
) -> Result<Json<ActiveUsers>, ApiError> {
    let user = directory
        .get(caller.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    if !config
        .admin_users
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&user.username))
    {
        return Err(ApiError::Forbidden("administrators only".into()));
    }
    let users = presence.active_users();
    let connections: usize = users.iter().map(|u| u.connections).sum();
    Ok(Json(ActiveUsers {
        count: users.len(),
        active_users: users,
        connections,
    }))
}
