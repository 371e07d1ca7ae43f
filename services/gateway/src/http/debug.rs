//! Operator views, for the users named in `ADMIN_USERS` only.

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new().route("/debug/active-users", get(active_users))
}

/// Everyone connected to any gateway: user, connection count, gateways.
/// Never socket ids or tokens.
async fn active_users(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<Value>, ApiError> {
    let user = state
        .directory
        .get(caller.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    if !state
        .config
        .admin_users
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&user.username))
    {
        return Err(ApiError::Forbidden("administrators only".into()));
    }
    let users = state.presence.active_users();
    let connections: usize = users.iter().map(|u| u.connections).sum();
    Ok(Json(json!({
        "activeUsers": users,
        "count": users.len(),
        "connections": connections,
    })))
}
