//! The live push: one core subscription to `live.deliver.<user>` per
//! connected user, shared by that user's sessions through the
//! [`Registry`]. Each session gets the records on a bounded queue; a
//! session whose queue is full is flagged as lagging and catches up from
//! the stream instead, so memory stays bounded and nothing is skipped.

use super::record::{Closing, DeliveryError, Stored, header_u64};
use super::registry::{Attachment, Feed, Registry, SessionInfo};
use futures::StreamExt;
use natter_core::{DeviceId, UserId, subjects};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// The live push for every connected user of this gateway.
pub struct Hub {
    nats: async_nats::Client,
    registry: Registry,
    /// Owns each user's forwarding task; every feed stops with `shutdown`.
    tasks: TaskTracker,
    shutdown: CancellationToken,
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
            registry: Registry::new(queue),
            tasks,
            shutdown,
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
        let (entry, attachment) = self.registry.new_session(user, device, jti);
        // The user's feed is opened outside the registry's lock: its
        // subscribe and flush are a round trip to NATS, and a connect storm
        // must not queue every user's connect behind every other's. A feed
        // joins the registry only once its subscription is active (the
        // promise above), and a session joins a feed only under the lock, so
        // a detach cannot stop the feed under a joining session.
        if let Err(entry) = self.registry.join_existing(user, entry) {
            let opened = self.open_feed(user).await?;
            self.registry.join_opened(user, opened, entry);
        }
        Ok(attachment)
    }

    /// Unregisters a session; the last one of a user ends its subscription.
    pub fn detach(&self, user: UserId, session: u64) {
        self.registry.detach(user, session);
    }

    /// Pushes an ephemeral frame to every session of `user` here.
    pub fn push_frame(&self, user: UserId, frame: Arc<str>) {
        self.registry.push_frame(user, frame);
    }

    /// Closes `user`'s sessions here that `matches` picks; returns how many.
    pub fn close_sessions(
        &self,
        user: UserId,
        closing: Closing,
        matches: impl Fn(&SessionInfo) -> bool,
    ) -> usize {
        self.registry.close_sessions(user, closing, matches)
    }

    /// How many users have a session here.
    pub fn user_count(&self) -> usize {
        self.registry.user_count()
    }

    /// Users with at least one session here.
    pub fn local_users(&self) -> Vec<UserId> {
        self.registry.local_users()
    }

    /// After a reconnect to NATS live records may have been missed while the
    /// connection was down: every session re-reads its log.
    pub fn resync_all(&self) {
        self.registry.resync_all();
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
        let feed = Arc::new(Feed::new(self.shutdown.child_token()));
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
            // Dropped, not awaited: the subscriber's drop unsubscribes, and
            // awaiting `unsubscribe` would make room for its 500-byte future
            // in the task every connected user holds (BENCHMARKS.md).
            drop(subscription);
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
