//! The wiring: one handle to each part of a running gateway, so an axum
//! handler extracts exactly the parts it uses (`State<Arc<Chat>>`, …)
//! through [`axum::extract::FromRef`]. No part depends on this struct.

use crate::access::Authenticator;
use crate::auth::TokenKeys;
use crate::auth::attempts::AttemptLimiter;
use crate::auth::hashing::PasswordHashing;
use crate::chat::Chat;
use crate::config::Config;
use crate::control::ControlBus;
use crate::delivery::{CursorStore, Hub};
use crate::directory::Directory;
use crate::groups::Groups;
use crate::presence::Presence;
use crate::revocation::Revocations;
use crate::ws::upgrade::Connections;
use axum::extract::FromRef;
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub auth: Authenticator,
    pub tokens: Arc<TokenKeys>,
    pub directory: Arc<Directory>,
    pub revocations: Arc<Revocations>,
    pub presence: Arc<Presence>,
    pub chat: Arc<Chat>,
    pub groups: Arc<Groups>,
    pub hub: Arc<Hub>,
    pub cursors: Arc<CursorStore>,
    pub control: ControlBus,
    /// What the WebSocket endpoint needs.
    pub connections: Arc<Connections>,
    pub attempts: Arc<AttemptLimiter>,
    pub hashing: Arc<PasswordHashing>,
}
