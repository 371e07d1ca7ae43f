//! Who exists: a read-through cache of users, so the send path checks a
//! receiver without a query, and keeps accepting sends between known users
//! while PostgreSQL is down.

use crate::error::ApiError;
use natter_core::UserId;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

pub struct Directory {
    pool: PgPool,
    cache: RwLock<HashMap<UserId, Arc<UserRecord>>>,
}

impl Directory {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The user, from the cache or the database; `None` if there is none.
    pub async fn get(&self, id: UserId) -> Result<Option<Arc<UserRecord>>, ApiError> {
        if let Some(hit) = self.cached(id) {
            return Ok(Some(hit));
        }
        let row: Option<(Uuid, String, String)> =
            sqlx::query_as("SELECT id, username, display_name FROM users WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, username, display_name)| {
            self.remember(UserRecord {
                id: UserId(id),
                username,
                display_name,
            })
        }))
    }

    pub fn remember(&self, user: UserRecord) -> Arc<UserRecord> {
        let user = Arc::new(user);
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(user.id, user.clone());
        }
        user
    }

    /// Drops a user's cached record (its profile changed).
    pub fn forget(&self, id: UserId) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(&id);
        }
    }

    fn cached(&self, id: UserId) -> Option<Arc<UserRecord>> {
        self.cache.read().ok()?.get(&id).cloned()
    }
}
