//! Device cursors: read at connect, advanced by client acks, written to
//! PostgreSQL in batches.

use natter_core::{DeviceId, UserId};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Device cursors: read at connect, advanced by client acks. Acks land in
/// memory and are written in batches; a read sees unwritten acks too.
pub struct CursorStore {
    pool: PgPool,
    pending: Mutex<HashMap<(UserId, DeviceId), u64>>,
}

impl CursorStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The device's cursor, or `None` for a device never seen.
    pub async fn load(&self, user: UserId, device: &DeviceId) -> Result<Option<u64>, sqlx::Error> {
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT delivered_seq FROM device_cursors WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user.0)
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let pending = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.get(&(user, device.clone())).copied());
        Ok(match (stored, pending) {
            (Some(s), Some(p)) => Some((s.max(0) as u64).max(p)),
            (Some(s), None) => Some(s.max(0) as u64),
            (None, p) => p,
        })
    }

    /// Registers a new device at `seq`; if it raced another registration,
    /// returns the stored cursor.
    pub async fn create(
        &self,
        user: UserId,
        device: &DeviceId,
        seq: u64,
    ) -> Result<u64, sqlx::Error> {
        let stored: i64 = sqlx::query_scalar(
            "INSERT INTO device_cursors (user_id, device_id, delivered_seq) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, device_id) DO UPDATE SET updated_at = device_cursors.updated_at
             RETURNING delivered_seq",
        )
        .bind(user.0)
        .bind(device.as_str())
        .bind(seq as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(stored.max(0) as u64)
    }

    /// Records a client ack; written by [`CursorStore::flush`].
    pub fn advance(&self, user: UserId, device: &DeviceId, seq: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            let entry = pending.entry((user, device.clone())).or_insert(seq);
            *entry = (*entry).max(seq);
        }
    }

    /// Writes all pending acks in one statement. They stay pending (and
    /// visible to [`CursorStore::load`]) until the write has committed, so a
    /// reconnect racing a flush never sees an older cursor.
    pub async fn flush(&self) -> Result<usize, sqlx::Error> {
        let batch: Vec<((UserId, DeviceId), u64)> = match self.pending.lock() {
            Ok(pending) => pending.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(_) => return Ok(0),
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let users: Vec<Uuid> = batch.iter().map(|((u, _), _)| u.0).collect();
        let devices: Vec<&str> = batch.iter().map(|((_, d), _)| d.as_str()).collect();
        let seqs: Vec<i64> = batch.iter().map(|(_, s)| *s as i64).collect();
        sqlx::query(
            "INSERT INTO device_cursors (user_id, device_id, delivered_seq)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[])
             ON CONFLICT (user_id, device_id) DO UPDATE
             SET delivered_seq = GREATEST(device_cursors.delivered_seq, EXCLUDED.delivered_seq),
                 updated_at = now()",
        )
        .bind(&users)
        .bind(&devices)
        .bind(&seqs)
        .execute(&self.pool)
        .await?;
        if let Ok(mut pending) = self.pending.lock() {
            for (key, written) in &batch {
                // An ack that arrived during the write stays for the next flush.
                if pending.get(key) == Some(written) {
                    pending.remove(key);
                }
            }
        }
        Ok(batch.len())
    }

    /// Flushes every `interval` until `shutdown`, then once more.
    pub async fn run_writer(&self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "cursor write failed; will retry");
            }
            if stop {
                return;
            }
        }
    }
}
