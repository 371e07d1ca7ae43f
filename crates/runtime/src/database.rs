//! The PostgreSQL pool and the schema, embedded from `migrations/`.

use crate::config::DatabaseArgs;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

/// natter's one schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A pool that connects lazily, so a process starts (and reports not ready)
/// while PostgreSQL is down instead of failing.
pub fn pool(args: &DatabaseArgs) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(args.database_max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(&args.database_url)
}

/// Applies pending migrations. Concurrent callers are serialised by sqlx's
/// own advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
