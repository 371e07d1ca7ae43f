//! Delivery to connected devices (DESIGN.md §1–2).
//!
//! - [`Hub`]: one core subscription to `live.deliver.<user>` per connected
//!   user, shared by that user's sessions. Each session gets the records on a
//!   bounded queue; a session whose queue is full is flagged as lagging and
//!   catches up from the stream instead, so memory stays bounded and nothing
//!   is skipped.
//! - [`read_log`]: replay of a user's log from a sequence with one batched
//!   JetStream direct get, no consumer created.
//! - [`CursorStore`]: the durable per-device cursors, written in batches.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use natter_core::delivery::ACCEPTED_AT_HEADER;
use natter_core::{DeviceId, UserId, subjects};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A record of a user's delivery log.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Its `DELIVERY` sequence: the cursor a client acks.
    pub seq: u64,
    /// The sequence of the user's previous record (0 for the first), when
    /// known: a live record whose `last_seq` is not the last one a session
    /// sent reveals a gap.
    pub last_seq: Option<u64>,
    pub payload: Bytes,
    /// The `traceparent` of the fan-out that stored it: delivery continues
    /// the message's trace.
    pub traceparent: Option<String>,
    /// When its event was accepted, for the delivery latency.
    pub accepted_at: Option<DateTime<Utc>>,
}

impl Stored {
    fn new(seq: u64, last_seq: Option<u64>, headers: Option<&HeaderMap>, payload: Bytes) -> Self {
        Self {
            seq,
            last_seq,
            payload,
            traceparent: natter_runtime::trace::from_headers(headers).map(str::to_owned),
            accepted_at: headers
                .and_then(|h| h.get(ACCEPTED_AT_HEADER))
                .and_then(|v| v.as_str().parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_micros),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("NATS request failed: {0}")]
    Nats(String),
    #[error("the delivery log did not answer in time")]
    Timeout,
    #[error("unexpected reply from the delivery log: {0}")]
    Protocol(String),
}

/// What the hub pushes to a session.
#[derive(Clone, Debug)]
pub enum Push {
    /// A record of the user's delivery log.
    Record(Stored),
    /// An ephemeral frame (typing, presence), dropped if the session is behind.
    Frame(Arc<str>),
}

/// Why the server closes a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: &'static str,
}

/// What the hub knows of a session, to pick sessions to close.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub device: DeviceId,
    pub jti: Uuid,
}

/// One session's view of the hub.
pub struct Attachment {
    pub rx: mpsc::Receiver<Push>,
    pub lagged: Arc<Notify>,
    pub closed: watch::Receiver<Option<Closing>>,
    pub user: UserId,
    pub session: u64,
}

struct SessionTx {
    info: SessionInfo,
    tx: mpsc::Sender<Push>,
    lagged: Arc<Notify>,
    close: watch::Sender<Option<Closing>>,
}

struct Feed {
    sessions: Mutex<Vec<SessionTx>>,
    stop: CancellationToken,
}

impl Feed {
    fn join(&self, session: SessionTx) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.push(session);
        }
    }

    fn dispatch(&self, record: Stored) {
        let Ok(sessions) = self.sessions.lock() else {
            return;
        };
        for session in sessions.iter() {
            if session.tx.try_send(Push::Record(record.clone())).is_err() {
                session.lagged.notify_one();
            }
        }
    }

    fn flag_all_lagging(&self) {
        if let Ok(sessions) = self.sessions.lock() {
            for session in sessions.iter() {
                session.lagged.notify_one();
            }
        }
    }
}

/// The live push for every connected user of this gateway.
pub struct Hub {
    nats: async_nats::Client,
    /// Held only for map operations, never across an await.
    feeds: Mutex<HashMap<UserId, Arc<Feed>>>,
    /// How many users `feeds` holds, readable without its lock.
    users: AtomicUsize,
    next_session: AtomicU64,
    queue: usize,
}

impl Hub {
    pub fn new(nats: async_nats::Client, queue: usize) -> Self {
        Self {
            nats,
            feeds: Mutex::new(HashMap::new()),
            users: AtomicUsize::new(0),
            next_session: AtomicU64::new(1),
            queue: queue.max(1),
        }
    }

    /// Registers a session. When this returns, the user's live subscription
    /// is active on the server, so anything stored afterwards reaches the
    /// session (live, or as a detectable gap).
    pub async fn attach(
        &self,
        user: UserId,
        device: DeviceId,
        jti: Uuid,
    ) -> Result<Attachment, DeliveryError> {
        let (tx, rx) = mpsc::channel(self.queue);
        let (close, closed) = watch::channel(None);
        let lagged = Arc::new(Notify::new());
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let entry = SessionTx {
            info: SessionInfo {
                id: session,
                device,
                jti,
            },
            tx,
            lagged: lagged.clone(),
            close,
        };
        // The user's feed is opened outside the lock: its subscribe and flush
        // are a round trip to NATS, and a connect storm must not queue every
        // user's connect behind every other's. A feed enters the map only
        // once its subscription is active (the promise above), and a session
        // joins a feed only under the lock, so a detach cannot close the
        // feed under a joining session.
        if let Some(feed) = self.lock_feeds().get(&user) {
            feed.join(entry);
        } else {
            let opened = self.open_feed(user).await?;
            let mut feeds = self.lock_feeds();
            let feed = feeds.entry(user).or_insert_with(|| opened.clone());
            if !Arc::ptr_eq(feed, &opened) {
                // Another session of this user opened one meanwhile.
                opened.stop.cancel();
            }
            feed.join(entry);
            self.users.store(feeds.len(), Ordering::Relaxed);
        }
        Ok(Attachment {
            rx,
            lagged,
            closed,
            user,
            session,
        })
    }

    fn lock_feeds(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Arc<Feed>>> {
        self.feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Unregisters a session; the last one of a user ends its subscription.
    pub fn detach(&self, user: UserId, session: u64) {
        let mut feeds = self.lock_feeds();
        let Some(feed) = feeds.get(&user) else {
            return;
        };
        let empty = match feed.sessions.lock() {
            Ok(mut sessions) => {
                sessions.retain(|s| s.info.id != session);
                sessions.is_empty()
            }
            Err(_) => true,
        };
        if empty {
            feed.stop.cancel();
            feeds.remove(&user);
            self.users.store(feeds.len(), Ordering::Relaxed);
        }
    }

    /// Pushes an ephemeral frame to every session of `user` here.
    pub fn push_frame(&self, user: UserId, frame: Arc<str>) {
        let feed = self.lock_feeds().get(&user).cloned();
        if let Some(feed) = feed
            && let Ok(sessions) = feed.sessions.lock()
        {
            for session in sessions.iter() {
                // Ephemeral: a session that is behind does without.
                let _ = session.tx.try_send(Push::Frame(frame.clone()));
            }
        }
    }

    /// Closes `user`'s sessions here that `matches` picks; returns how many.
    pub fn close_sessions(
        &self,
        user: UserId,
        closing: Closing,
        matches: impl Fn(&SessionInfo) -> bool,
    ) -> usize {
        let feed = self.lock_feeds().get(&user).cloned();
        let Some(feed) = feed else {
            return 0;
        };
        let Ok(sessions) = feed.sessions.lock() else {
            return 0;
        };
        let mut closed = 0;
        for session in sessions.iter().filter(|s| matches(&s.info)) {
            session.close.send_replace(Some(closing));
            closed += 1;
        }
        closed
    }

    /// How many users have a session here.
    pub fn user_count(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// Users with at least one session here.
    pub fn local_users(&self) -> Vec<UserId> {
        self.lock_feeds().keys().copied().collect()
    }

    /// After a reconnect to NATS live records may have been missed while the
    /// connection was down: every session re-reads its log.
    pub fn resync_all(&self) {
        for feed in self.lock_feeds().values() {
            feed.flag_all_lagging();
        }
    }

    async fn open_feed(&self, user: UserId) -> Result<Arc<Feed>, DeliveryError> {
        let mut subscription = self
            .nats
            .subscribe(subjects::live_deliver(user))
            .await
            .map_err(|e| DeliveryError::Nats(e.to_string()))?;
        // The flush round trip guarantees the server has the subscription.
        self.nats
            .flush()
            .await
            .map_err(|e| DeliveryError::Nats(e.to_string()))?;
        let feed = Arc::new(Feed {
            sessions: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
        });
        let forward = feed.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = forward.stop.cancelled() => break,
                    message = subscription.next() => match message {
                        Some(message) => match live_record(&message) {
                            Some(record) => forward.dispatch(record),
                            None => tracing::warn!(subject = %message.subject,
                                "live record without sequence headers ignored"),
                        },
                        None => break,
                    },
                }
            }
            let _ = subscription.unsubscribe().await;
        });
        Ok(feed)
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().parse().ok()
}

fn live_record(message: &async_nats::Message) -> Option<Stored> {
    let headers = message.headers.as_ref()?;
    Some(Stored::new(
        header_u64(headers, "Nats-Sequence")?,
        header_u64(headers, "Nats-Last-Sequence"),
        Some(headers),
        message.payload.clone(),
    ))
}

/// Reads up to `limit` records of `user`'s log with sequence ≥ `from`, in
/// order, with one batched direct get.
pub async fn read_log(
    nats: &async_nats::Client,
    user: UserId,
    from: u64,
    limit: usize,
) -> Result<Vec<Stored>, DeliveryError> {
    let inbox = nats.new_inbox();
    let mut replies = nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| DeliveryError::Nats(e.to_string()))?;
    let request = serde_json::json!({
        "seq": from.max(1),
        "next_by_subj": subjects::deliver(user),
        "batch": limit,
    });
    nats.publish_with_reply(
        format!("$JS.API.DIRECT.GET.{}", subjects::DELIVERY_STREAM),
        inbox,
        Bytes::from(request.to_string()),
    )
    .await
    .map_err(|e| DeliveryError::Nats(e.to_string()))?;

    let mut records = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .map_err(|_| DeliveryError::Timeout)?
            .ok_or_else(|| DeliveryError::Nats("reply subscription closed".into()))?;
        match message.status.map(|s| s.as_u16()) {
            None => {
                let seq = message
                    .headers
                    .as_ref()
                    .and_then(|h| header_u64(h, "Nats-Sequence"))
                    .ok_or_else(|| {
                        DeliveryError::Protocol("record without Nats-Sequence".into())
                    })?;
                records.push(Stored::new(
                    seq,
                    None,
                    message.headers.as_ref(),
                    message.payload,
                ));
                if records.len() >= limit {
                    break;
                }
            }
            // 204: end of batch; 404: nothing at or after `from`.
            Some(204) | Some(404) => break,
            Some(other) => {
                return Err(DeliveryError::Protocol(format!(
                    "status {other} {}",
                    message.description.unwrap_or_default()
                )));
            }
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(records)
}

/// The first and last sequence `DELIVERY` holds.
pub async fn log_bounds(stream: &jetstream::stream::Stream) -> Result<(u64, u64), DeliveryError> {
    let info = stream
        .get_info()
        .await
        .map_err(|e| DeliveryError::Nats(e.to_string()))?;
    Ok((info.state.first_sequence, info.state.last_sequence))
}

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
