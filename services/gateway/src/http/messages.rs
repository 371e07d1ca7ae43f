//! `POST /api/messages`: the socket's send pipeline over REST.

use super::extract::{AuthUser, JsonBody};
use super::schema::{SendMessageRequest, Sent};
use crate::chat::Chat;
use crate::config::Config;
use crate::error::ApiError;
use crate::error::ErrorResponses;
use crate::state::AppState;
use crate::ws::protocol::{Expect, SendMessage};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use std::sync::Arc;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/messages", post(send))
}

/// Sends a message, as the socket's `send_direct_message` and
/// `send_group_message` do: answered once JetStream stored it.
#[utoipa::path(post, path = "/api/messages", tag = "messages", security(("bearer" = [])),
    request_body = SendMessageRequest,
    responses((status = 202, description = "accepted", body = Sent), ErrorResponses))]
async fn send(
    State(chat): State<Arc<Chat>>,
    State(config): State<Arc<Config>>,
    caller: AuthUser,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<Sent>), ApiError> {
    let command = SendMessage::parse(&body, config.max_message_bytes, Expect::Either)?;
    let message = chat.submit(caller.id, command).await?.confirm().await?;
    Ok((StatusCode::ACCEPTED, Json(Sent { message })))
}
