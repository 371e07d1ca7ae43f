//! Session control across gateways over core NATS (`live.control.<user>`):
//! a device connecting replaces that device's older connection wherever it
//! is, and a profile change refreshes every gateway's copy of the user.

use crate::delivery::Closing;
use crate::state::AppState;
use bytes::Bytes;
use natter_core::{DeviceId, UserId, subjects};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The close code of a connection replaced by a newer one of its device.
pub const REPLACED: Closing = Closing {
    code: 4000,
    reason: "replaced by a newer connection of this device",
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// `session` (`<gateway>:<id>`) is now this device's connection.
    #[serde(rename_all = "camelCase")]
    DeviceConnected {
        device_id: DeviceId,
        session: String,
    },
    /// The user's display name changed.
    ProfileChanged,
}

/// The cluster-wide name of a session of this gateway.
pub fn session_key(state: &AppState, session: u64) -> String {
    format!("{}:{session}", state.gateway_id)
}

/// Tells every gateway (this one included) about `user`.
pub async fn announce(state: &AppState, user: UserId, control: &Control) {
    let payload = match serde_json::to_vec(control) {
        Ok(payload) => payload,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a control message");
            return;
        }
    };
    if let Err(e) = state
        .nats
        .publish(subjects::control(user), Bytes::from(payload))
        .await
    {
        tracing::warn!(error = %e, %user, "control message not sent");
    }
}

/// Applies control messages until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let nats = state.nats.clone();
    natter_runtime::jetstream::for_each_message(
        &nats,
        subjects::CONTROL_ALL,
        shutdown,
        |message| {
            let state = state.clone();
            async move { apply(&state, message).await }
        },
    )
    .await;
}

async fn apply(state: &AppState, message: async_nats::Message) {
    let Some(user) = message
        .subject
        .rsplit('.')
        .next()
        .and_then(|raw| raw.parse::<UserId>().ok())
    else {
        return;
    };
    match serde_json::from_slice::<Control>(&message.payload) {
        Ok(Control::DeviceConnected { device_id, session }) => {
            let own = state.gateway_id.to_string();
            let replaced = state.hub.close_sessions(user, REPLACED, |info| {
                info.device == device_id && format!("{own}:{}", info.id) != session
            });
            if replaced > 0 {
                tracing::info!(%user, device = %device_id, "older connection of the device replaced");
            }
        }
        Ok(Control::ProfileChanged) => state.directory.forget(user),
        Err(e) => tracing::warn!(error = %e, "unreadable control message ignored"),
    }
}
