//! Typing signals: published once on `live.typing.<conversation>` with the
//! members to tell, and pushed by every gateway to those of them connected
//! to it. Never stored.

use crate::delivery::Hub;
use crate::error::ApiError;
use crate::throttle::PerUser;
use crate::ws::protocol;
use bytes::Bytes;
use natter_core::{ConversationId, UserId, subjects};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Typing {
    conversation_id: ConversationId,
    user_id: UserId,
    recipients: Vec<UserId>,
}

/// Typing signals a user may send per second, and in a burst.
const TYPING_RATE: f64 = 2.0;
const TYPING_BURST: f64 = 5.0;

/// Publishes typing signals for members of a conversation.
#[derive(Clone)]
pub struct TypingSignals {
    nats: async_nats::Client,
    pool: PgPool,
    /// Shared by the clones: one limit per user, not per connection.
    limits: Arc<PerUser>,
}

impl TypingSignals {
    pub fn new(nats: async_nats::Client, pool: PgPool) -> Self {
        Self {
            nats,
            pool,
            limits: Arc::new(PerUser::new(TYPING_RATE, TYPING_BURST)),
        }
    }

    /// `user` is typing in `conversation` (members only).
    pub async fn publish(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<(), ApiError> {
        self.limits
            .check(user)
            .map_err(|wait| ApiError::rate_limited("too many typing signals; slow down", wait))?;
        let members: Vec<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM conversation_members WHERE conversation_id = $1",
        )
        .bind(conversation.0)
        .fetch_all(&self.pool)
        .await?;
        if !members.contains(&user.0) {
            return Err(ApiError::NotFound(format!(
                "conversation {conversation} not found"
            )));
        }
        let signal = Typing {
            conversation_id: conversation,
            user_id: user,
            recipients: members
                .into_iter()
                .map(UserId)
                .filter(|m| *m != user)
                .collect(),
        };
        let payload = serde_json::to_vec(&signal).map_err(ApiError::internal)?;
        self.nats
            .publish(subjects::typing(conversation), Bytes::from(payload))
            .await
            .map_err(|_| ApiError::Unavailable("typing signal not sent".into()))
    }
}

/// Pushes typing signals to this gateway's sessions until `shutdown`.
pub async fn run(nats: async_nats::Client, hub: Arc<Hub>, shutdown: CancellationToken) {
    natter_runtime::jetstream::for_each_message(&nats, subjects::TYPING_ALL, shutdown, |message| {
        let hub = hub.clone();
        async move { deliver(&hub, message) }
    })
    .await;
}

fn deliver(hub: &Hub, message: async_nats::Message) {
    let Ok(signal) = serde_json::from_slice::<Typing>(&message.payload) else {
        return;
    };
    let frame: Arc<str> = protocol::typing(signal.conversation_id, signal.user_id).into();
    for recipient in signal.recipients {
        hub.push_frame(recipient, frame.clone());
    }
}
