//! Session control across gateways over core NATS (`live.control.<user>`):
//! a device connecting replaces that device's older connection wherever it
//! is, and a profile change refreshes every gateway's copy of the user.

use crate::delivery::{Closing, Hub};
use crate::directory::Directory;
use bytes::Bytes;
use natter_core::{DeviceId, UserId, subjects};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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

/// This gateway's side of the control channel: its name among its peers,
/// and the NATS connection to tell them with.
#[derive(Clone)]
pub struct ControlBus {
    nats: async_nats::Client,
    gateway_id: Uuid,
}

impl ControlBus {
    pub fn new(nats: async_nats::Client, gateway_id: Uuid) -> Self {
        Self { nats, gateway_id }
    }

    pub fn gateway_id(&self) -> Uuid {
        self.gateway_id
    }

    /// The cluster-wide name of a session of this gateway.
    pub fn session_key(&self, session: u64) -> String {
        format!("{}:{session}", self.gateway_id)
    }

    /// Tells every gateway (this one included) about `user`.
    pub async fn announce(&self, user: UserId, control: &Control) {
        let payload = match serde_json::to_vec(control) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a control message");
                return;
            }
        };
        if let Err(e) = self
            .nats
            .publish(subjects::control(user), Bytes::from(payload))
            .await
        {
            tracing::warn!(error = %e, %user, "control message not sent");
        }
    }

    /// Applies control messages to `hub` and `directory` until `shutdown`.
    pub async fn run(self, hub: Arc<Hub>, directory: Arc<Directory>, shutdown: CancellationToken) {
        let nats = self.nats.clone();
        natter_runtime::jetstream::for_each_message(
            &nats,
            subjects::CONTROL_ALL,
            shutdown,
            |message| {
                self.apply(&hub, &directory, &message);
                std::future::ready(())
            },
        )
        .await;
    }

    fn apply(&self, hub: &Hub, directory: &Directory, message: &async_nats::Message) {
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
                let replaced = hub.close_sessions(user, REPLACED, |info| {
                    info.device == device_id && self.session_key(info.id) != session
                });
                if replaced > 0 {
                    tracing::info!(%user, device = %device_id, "older connection of the device replaced");
                }
            }
            Ok(Control::ProfileChanged) => directory.forget(user),
            Err(e) => tracing::warn!(error = %e, "unreadable control message ignored"),
        }
    }
}
