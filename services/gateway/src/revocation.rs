//! Logged-out tokens, cluster-wide: a JetStream KV bucket keyed by token id
//! (`jti`), watched by every gateway into a local set that REST and the
//! handshake consult without a round trip, and that closes the sockets a
//! revoked token opened.

use crate::auth::Claims;
use crate::delivery::{Closing, Hub};
use crate::error::ApiError;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use natter_core::{UserId, subjects};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
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

/// The revoked token ids this gateway knows of, with each token's expiry:
/// the part of [`Revocations`] that needs no NATS.
#[derive(Default)]
pub struct RevokedSet {
    /// Revoked token id → the token's expiry (unix seconds).
    revoked: RwLock<HashMap<Uuid, u64>>,
}

/// How long after its expiry a revoked token is still remembered, for clock skew.
const SKEW_SECS: u64 = 60;
/// Past this many entries, expired ones are dropped when a new one comes.
const PRUNE_ABOVE: usize = 10_000;

impl RevokedSet {
    /// Whether `jti` is revoked at `now` (unix seconds). A poisoned lock
    /// answers "revoked": refusing is the safe side.
    pub fn contains(&self, jti: Uuid, now: u64) -> bool {
        self.revoked
            .read()
            .map(|r| r.get(&jti).is_some_and(|exp| *exp + SKEW_SECS >= now))
            .unwrap_or(true)
    }

    pub fn insert(&self, jti: Uuid, exp: u64, now: u64) {
        if let Ok(mut revoked) = self.revoked.write() {
            if revoked.len() > PRUNE_ABOVE {
                revoked.retain(|_, exp| *exp + SKEW_SECS >= now);
            }
            revoked.insert(jti, exp);
        }
    }

    pub fn len(&self) -> usize {
        self.revoked.read().map(|r| r.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Revocations {
    store: kv::Store,
    set: RevokedSet,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Revocations {
    /// Opens (or declares) the bucket. Entries live as long as a token can.
    pub async fn open(
        js: &jetstream::Context,
        token_ttl: Duration,
        replicas: usize,
    ) -> Result<Self, ApiError> {
        let store = js
            .create_or_update_key_value(kv::Config {
                bucket: subjects::REVOCATIONS_BUCKET.to_owned(),
                history: 1,
                max_age: token_ttl + Duration::from_secs(SKEW_SECS),
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(ApiError::internal)?;
        Ok(Self {
            store,
            set: RevokedSet::default(),
        })
    }

    pub fn is_revoked(&self, jti: Uuid) -> bool {
        self.set.contains(jti, now())
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
        self.set.insert(claims.jti, claims.exp, now());
        Ok(())
    }

    /// Loads what the bucket holds, so no revoked token slips in, and
    /// returns the follower: every revocation, from any gateway, enters the
    /// local set and closes the token's sockets on `hub`, until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> Result<impl Future<Output = ()> + Send + 'static, ApiError> {
        let watch = self.store.watch_all().await.map_err(ApiError::internal)?;
        self.load().await?;
        Ok(async move {
            self.watch(watch, &hub, shutdown).await;
        })
    }

    async fn load(&self) -> Result<(), ApiError> {
        let mut keys = self.store.keys().await.map_err(ApiError::internal)?;
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(Some(value)) = self.store.get(&key).await
                && let (Ok(jti), Ok(entry)) = (
                    Uuid::parse_str(&key),
                    serde_json::from_slice::<Revoked>(&value),
                )
            {
                self.set.insert(jti, entry.exp, now());
            }
        }
        Ok(())
    }

    async fn watch(&self, mut watch: kv::Watch, hub: &Hub, shutdown: CancellationToken) {
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
            self.set.insert(jti, revoked.exp, now());
            let closed = hub.close_sessions(revoked.user_id, REVOKED, |info| info.jti == jti);
            if closed > 0 {
                tracing::info!(user = %revoked.user_id, closed, "sockets of a revoked token closed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_token_stays_revoked_until_its_expiry_and_skew_pass() {
        let set = RevokedSet::default();
        let jti = Uuid::now_v7();
        assert!(!set.contains(jti, 1_000));
        set.insert(jti, 1_000, 900);
        assert!(set.contains(jti, 1_000));
        assert!(set.contains(jti, 1_000 + SKEW_SECS));
        assert!(!set.contains(jti, 1_001 + SKEW_SECS));
        assert!(!set.contains(Uuid::now_v7(), 1_000));
    }

    #[test]
    fn expired_entries_are_pruned_once_the_set_is_large() {
        let set = RevokedSet::default();
        for _ in 0..=PRUNE_ABOVE {
            set.insert(Uuid::now_v7(), 10, 0);
        }
        let fresh = Uuid::now_v7();
        set.insert(fresh, 1_000_000, 10 + SKEW_SECS + 1);
        assert_eq!(set.len(), 1);
        assert!(set.contains(fresh, 1_000_000));
    }
}
