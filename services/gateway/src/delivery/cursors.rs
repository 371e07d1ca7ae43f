//! Device cursors: read at connect, advanced by client acks, written to
//! PostgreSQL in batches, pruned once their device is gone for longer
//! than the delivery log keeps records.

use natter_core::{DeviceId, UserId};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Cursors deleted per statement by the pruner.
const PRUNE_BATCH: i64 = 1000;

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

    /// The device's cursor, or `None` for a device never seen; marks the
    /// device as seen now, so a device that connects but never acks is not
    /// pruned. An unknown device of a user whose cursors were pruned may be
    /// one of those: it gets cursor 0, older than any log that has dropped
    /// a record, so the session tells it `resync_required` and replays
    /// what the log still holds (DESIGN.md §1, invariant 4).
    pub async fn load(&self, user: UserId, device: &DeviceId) -> Result<Option<u64>, sqlx::Error> {
        let (stored, pruned): (Option<i64>, bool) = sqlx::query_as(
            "WITH seen AS (
                 UPDATE device_cursors SET updated_at = now()
                 WHERE user_id = $1 AND device_id = $2
                 RETURNING delivered_seq
             )
             SELECT (SELECT delivered_seq FROM seen),
                    EXISTS (SELECT 1 FROM device_cursor_prunes WHERE user_id = $1)",
        )
        .bind(user.0)
        .bind(device.as_str())
        .fetch_one(&self.pool)
        .await?;
        let stored = match (stored, pruned) {
            (Some(s), _) => Some(s.max(0) as u64),
            (None, true) => Some(0),
            (None, false) => None,
        };
        let pending = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.get(&(user, device.clone())).copied());
        Ok(match (stored, pending) {
            (Some(s), Some(p)) => Some(s.max(p)),
            (s, None) => s,
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
             ON CONFLICT (user_id, device_id) DO UPDATE SET updated_at = now()
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

    /// Deletes up to `batch` cursors of devices neither connected nor acked
    /// for `idle`, oldest first, and marks their users as having lost one
    /// (see [`CursorStore::load`]). Returns how many were deleted.
    pub async fn prune(&self, idle: Duration, batch: i64) -> Result<u64, sqlx::Error> {
        let deleted: i64 = sqlx::query_scalar(
            "WITH stale AS (
                 SELECT user_id, device_id FROM device_cursors
                 WHERE updated_at < now() - make_interval(secs => $1)
                 ORDER BY updated_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ), pruned AS (
                 DELETE FROM device_cursors d USING stale
                 WHERE d.user_id = stale.user_id AND d.device_id = stale.device_id
                 RETURNING d.user_id
             ), marked AS (
                 INSERT INTO device_cursor_prunes (user_id, pruned_at)
                 SELECT DISTINCT user_id, now() FROM pruned
                 ON CONFLICT (user_id) DO UPDATE SET pruned_at = EXCLUDED.pruned_at
             )
             SELECT count(*) FROM pruned",
        )
        .bind(idle.as_secs_f64())
        .bind(batch)
        .fetch_one(&self.pool)
        .await?;
        Ok(deleted.max(0) as u64)
    }

    /// Every `interval` until `shutdown`, prunes the cursors idle for
    /// `idle`, a batch at a time so no statement holds many rows.
    pub async fn run_pruner(
        &self,
        idle: Duration,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut pruned = 0;
            while !shutdown.is_cancelled() {
                match self.prune(idle, PRUNE_BATCH).await {
                    Ok(n) => {
                        pruned += n;
                        if n < PRUNE_BATCH as u64 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning device cursors failed; will retry");
                        break;
                    }
                }
            }
            if pruned > 0 {
                tracing::info!(
                    pruned,
                    idle_secs = idle.as_secs(),
                    "idle device cursors pruned"
                );
            }
        }
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
