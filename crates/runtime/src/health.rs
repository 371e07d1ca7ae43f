//! The readiness probe every natter process answers `/readyz` with.

use sqlx::PgPool;
use std::time::Duration;

/// Whether this process can reach its dependencies right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub nats: bool,
    pub postgres: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.nats && self.postgres
    }
}

/// NATS connected, and PostgreSQL answering a query within two seconds.
pub async fn probe(nats: &async_nats::Client, pool: &PgPool) -> Readiness {
    let postgres = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    Readiness {
        nats: nats.connection_state() == async_nats::connection::State::Connected,
        postgres,
    }
}
