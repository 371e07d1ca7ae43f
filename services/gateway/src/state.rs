//! The state every handler shares.

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::delivery::{CursorStore, Hub};
use crate::directory::Directory;
use crate::presence::Presence;
use crate::revocation::Revocations;
use async_nats::jetstream;
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub chat: jetstream::stream::Stream,
    pub delivery: jetstream::stream::Stream,
    pub tokens: TokenKeys,
    pub directory: Directory,
    pub hub: Hub,
    pub cursors: CursorStore,
    pub revocations: Revocations,
    pub presence: Presence,
    /// This gateway's name among its peers.
    pub gateway_id: uuid::Uuid,
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    pub fn tokens(&self) -> &TokenKeys {
        &self.0.tokens
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
