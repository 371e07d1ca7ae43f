//! Logged-out tokens, cluster-wide: a JetStream KV bucket keyed by token id
//! (`jti`), watched by every gateway into a local set that REST and the
//! handshake consult without a round trip, and that closes the sockets a
//! revoked token opened.

use crate::auth::Claims;
use crate::delivery::Closing;
use crate::error::ApiError;
use crate::state::AppState;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use natter_core::{UserId, subjects};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How a revoked token's sockets are closed (policy violation).
pub const REVOKED: Closing = Closing {
    code: 1008,
    reason: "token revoked",
};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Revoked {
    user_id: UserId,
    /// The token's own expiry: after it, the entry means nothing.
    exp: u64,
}

pub struct Revocations {
    store: kv::Store,
    /// Revoked token id → the token's expiry (unix seconds).
    revoked: RwLock<HashMap<Uuid, u64>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Revocations {
    /// Opens (or declares) the bucket and loads what it holds. Entries live
    /// as long as a token can.
    pub async fn open(
        js: &jetstream::Context,
        token_ttl: Duration,
        replicas: usize,
    ) -> Result<Self, ApiError> {
        let store = js
            .create_or_update_key_value(kv::Config {
                bucket: subjects::REVOCATIONS_BUCKET.to_owned(),
                history: 1,
                max_age: token_ttl + Duration::from_secs(60),
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(ApiError::internal)?;
        Ok(Self {
            store,
            revoked: RwLock::new(HashMap::new()),
        })
    }

    pub fn is_revoked(&self, jti: Uuid) -> bool {
        self.revoked
            .read()
            .map(|r| r.get(&jti).is_some_and(|exp| *exp + 60 >= now()))
            .unwrap_or(true)
    }

    /// Revokes the token of `claims`: durable first, then visible here at once.
    pub async fn revoke(&self, claims: &Claims) -> Result<(), ApiError> {
        let value = serde_json::to_vec(&Revoked {
            user_id: UserId(claims.sub),
            exp: claims.exp,
        })
        .map_err(ApiError::internal)?;
        self.store
            .put(claims.jti.simple().to_string(), Bytes::from(value))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "revocation not stored");
                ApiError::Unavailable("logout could not be recorded; retry".into())
            })?;
        self.remember(claims.jti, claims.exp);
        Ok(())
    }

    fn remember(&self, jti: Uuid, exp: u64) {
        if let Ok(mut revoked) = self.revoked.write() {
            let now = now();
            if revoked.len() > 10_000 {
                revoked.retain(|_, exp| *exp + 60 >= now);
            }
            revoked.insert(jti, exp);
        }
    }
}

/// Follows the bucket until `shutdown`: every revocation, from any gateway,
/// enters the local set and closes the token's sockets here. Returns once
/// the bucket's current content is loaded, the follower running.
pub async fn follow(state: AppState, shutdown: CancellationToken) -> Result<(), ApiError> {
    let revocations = &state.revocations;
    let mut watch = revocations
        .store
        .watch_all()
        .await
        .map_err(ApiError::internal)?;
    // Load what is there before serving, so no revoked token slips in.
    let mut keys = revocations.store.keys().await.map_err(ApiError::internal)?;
    while let Some(key) = keys.next().await {
        let Ok(key) = key else { continue };
        if let Ok(Some(value)) = revocations.store.get(&key).await
            && let (Ok(jti), Ok(entry)) = (
                Uuid::parse_str(&key),
                serde_json::from_slice::<Revoked>(&value),
            )
        {
            revocations.remember(jti, entry.exp);
        }
    }
    tokio::spawn(async move {
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return,
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "revocation watch error");
                        continue;
                    }
                    None => return,
                },
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let (Ok(jti), Ok(revoked)) = (
                Uuid::parse_str(&entry.key),
                serde_json::from_slice::<Revoked>(&entry.value),
            ) else {
                continue;
            };
            state.revocations.remember(jti, revoked.exp);
            let closed = state
                .hub
                .close_sessions(revoked.user_id, REVOKED, |info| info.jti == jti);
            if closed > 0 {
                tracing::info!(user = %revoked.user_id, closed, "sockets of a revoked token closed");
            }
        }
    });
    Ok(())
}
