//! `POST /api/messages`: the socket's send pipeline over REST.

use super::JsonBody;
use crate::auth::AuthUser;
use crate::chat::{self, Expect, SendMessage};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/messages", post(send))
}

async fn send(
    State(state): State<AppState>,
    caller: AuthUser,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let command = SendMessage::parse(&body, state.config.max_message_bytes, Expect::Either)?;
    let sender = state
        .directory
        .get(caller.id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown user".into()))?;
    let message = chat::send(&state, &sender, command).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "message": message }))))
}
