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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool that never connects: these tests must not reach a database.
    fn directory() -> Directory {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        Directory::new(pool)
    }

    #[tokio::test]
    async fn a_remembered_user_is_answered_from_the_cache() {
        let directory = directory();
        let id = UserId::generate();
        directory.remember(UserRecord {
            id,
            username: "alice".into(),
            display_name: "Alice".into(),
        });
        let user = directory.get(id).await.unwrap().unwrap();
        assert_eq!(user.display_name, "Alice");
    }

    #[tokio::test]
    async fn a_forgotten_user_is_read_again() {
        let directory = directory();
        let id = UserId::generate();
        directory.remember(UserRecord {
            id,
            username: "alice".into(),
            display_name: "Alice".into(),
        });
        directory.forget(id);
        assert!(directory.cached(id).is_none());
        // The read goes to the database, which is unreachable here.
        assert!(directory.get(id).await.is_err());
    }
}
