//! Leader election: one active persister at a time, elected by a PostgreSQL
//! advisory lock held on the connection it projects on (DESIGN.md §2).
//!
//! A persister that lost its lock connection cannot commit, so it cannot
//! fan out out of order behind a newer leader. The others wait as hot
//! standbys.

use natter_runtime::backoff::Backoff;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The advisory lock key that elects the active persister ("natter-p").
const LEADER_LOCK: i64 = 0x6e61_7474_6572_2d70;
/// How often a standby asks for the lock.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// The longest wait between two attempts after a database error.
const RETRY_MAX: Duration = Duration::from_secs(3);

/// The active persister's lock connection. Every projection runs on it.
pub struct Leader {
    pool: PgPool,
    conn: PgConnection,
    /// How many times the lock was taken again on a new connection: between
    /// two terms another persister may have projected.
    term: u64,
}

impl Leader {
    /// Waits until this process holds the lock, or `shutdown`.
    pub async fn elect(pool: &PgPool, shutdown: &CancellationToken) -> Option<Leader> {
        let mut backoff = Backoff::default();
        let mut announced = false;
        loop {
            match try_lock(pool).await {
                Ok(Some(conn)) => {
                    return Some(Leader {
                        pool: pool.clone(),
                        conn,
                        term: 0,
                    });
                }
                Ok(None) => {
                    if !announced {
                        tracing::info!("another persister is active; waiting as a standby");
                        announced = true;
                    }
                    // A standby asks every second; a database error after
                    // that backs off from there.
                    backoff = Backoff::new(STANDBY_POLL, RETRY_MAX);
                }
                Err(e) => tracing::warn!(error = %e, "cannot reach PostgreSQL to elect a leader"),
            }
            if !backoff.wait(shutdown).await {
                return None;
            }
        }
    }

    /// Changes whenever the lock was lost and taken again: what was cached
    /// from the database before may be stale.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The lock connection: only a transaction on it proves leadership.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// After a database error: keep leadership if the lock connection is
    /// fine or the lock can be taken again on a new one (a PostgreSQL
    /// restart releases it). `Ok(false)`: another persister took over.
    async fn recover(&mut self) -> Result<bool, sqlx::Error> {
        if sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .is_ok()
        {
            return Ok(true);
        }
        match try_lock(&self.pool).await? {
            Some(conn) => {
                self.conn = conn;
                self.term += 1;
                tracing::info!("re-took the persister lock on a new connection");
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Recovers after a database error, answering only whether another
    /// persister took over. A database still unreachable is not a loss of
    /// leadership: the caller retries and asks again.
    pub async fn deposed(&mut self) -> bool {
        matches!(self.recover().await, Ok(false))
    }
}

/// The lock's connection if this process now holds it; `None` if another
/// persister does.
async fn try_lock(pool: &PgPool) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if locked {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}
