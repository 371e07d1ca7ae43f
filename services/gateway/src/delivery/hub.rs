//! The live push: one core subscription to `live.deliver.<user>` per
//! connected user, shared by that user's sessions. Each session gets the
//! records on a bounded queue; a session whose queue is full is flagged as
//! lagging and catches up from the stream instead, so memory stays bounded
//! and nothing is skipped.

use super::record::{Closing, DeliveryError, Push, Stored, header_u64};
use futures::StreamExt;
use natter_core::{DeviceId, UserId, subjects};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

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
    /// Owns each user's forwarding task; every feed stops with `shutdown`.
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Held only for map operations, never across an await.
    feeds: Mutex<HashMap<UserId, Arc<Feed>>>,
    /// How many users `feeds` holds, readable without its lock.
    users: AtomicUsize,
    next_session: AtomicU64,
    queue: usize,
}

impl Hub {
    pub fn new(
        nats: async_nats::Client,
        queue: usize,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            nats,
            tasks,
            shutdown,
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
            stop: self.shutdown.child_token(),
        });
        let forward = feed.clone();
        self.tasks.spawn(async move {
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

fn live_record(message: &async_nats::Message) -> Option<Stored> {
    let headers = message.headers.as_ref()?;
    Some(Stored::new(
        header_u64(headers, "Nats-Sequence")?,
        header_u64(headers, "Nats-Last-Sequence"),
        Some(headers),
        message.payload.clone(),
    ))
}
