//! Who is connected here: each connected user's feed and the sessions it
//! serves through bounded queues. No NATS: [`super::hub`] opens the feeds'
//! subscriptions, this module only keeps and feeds them.

use super::inbox::Inbox;
use super::record::{Closing, Push, Stored};
use natter_core::{DeviceId, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio_util::sync::CancellationToken;
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
    pub inbox: Arc<Inbox>,
    pub user: UserId,
    pub session: u64,
}

/// The hub's end of one session.
pub struct SessionTx {
    info: SessionInfo,
    inbox: Arc<Inbox>,
}

/// One user's live records, shared by the user's sessions here.
pub struct Feed {
    sessions: Mutex<Vec<SessionTx>>,
    /// Fired when the feed's last session leaves.
    pub stop: CancellationToken,
}

impl Feed {
    pub fn new(stop: CancellationToken) -> Self {
        Self {
            sessions: Mutex::new(Vec::new()),
            stop,
        }
    }

    fn sessions(&self) -> MutexGuard<'_, Vec<SessionTx>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn join(&self, session: SessionTx) {
        self.sessions().push(session);
    }

    /// Hands a record to every session; one whose queue is full is flagged
    /// as lagging and catches up from the log instead.
    pub fn dispatch(&self, record: Stored) {
        let record = Arc::new(record);
        for session in self.sessions().iter() {
            if !session.inbox.offer(Push::Record(record.clone())) {
                session.inbox.lag();
            }
        }
    }

    fn flag_all_lagging(&self) {
        for session in self.sessions().iter() {
            session.inbox.lag();
        }
    }
}

/// Every connected user's feed here.
pub struct Registry {
    /// Held only for map operations, never across an await.
    feeds: Mutex<HashMap<UserId, Arc<Feed>>>,
    /// How many users `feeds` holds, readable without its lock.
    users: AtomicUsize,
    next_session: AtomicU64,
    /// Records a session may have queued before it counts as lagging.
    queue: usize,
}

impl Registry {
    pub fn new(queue: usize) -> Self {
        Self {
            feeds: Mutex::new(HashMap::new()),
            users: AtomicUsize::new(0),
            next_session: AtomicU64::new(1),
            queue: queue.max(1),
        }
    }

    fn feeds(&self) -> MutexGuard<'_, HashMap<UserId, Arc<Feed>>> {
        self.feeds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new session's two ends, not yet joined to a feed.
    pub fn new_session(
        &self,
        user: UserId,
        device: DeviceId,
        jti: Uuid,
    ) -> (SessionTx, Attachment) {
        let inbox = Arc::new(Inbox::new(self.queue));
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let entry = SessionTx {
            info: SessionInfo {
                id: session,
                device,
                jti,
            },
            inbox: inbox.clone(),
        };
        let attachment = Attachment {
            inbox,
            user,
            session,
        };
        (entry, attachment)
    }

    /// Joins `session` to `user`'s feed if there is one; else hands it back.
    pub fn join_existing(&self, user: UserId, session: SessionTx) -> Result<(), SessionTx> {
        match self.feeds().get(&user) {
            Some(feed) => {
                feed.join(session);
                Ok(())
            }
            None => Err(session),
        }
    }

    /// Joins `session` to `user`'s feed, installing `opened` unless another
    /// session of the user installed one meanwhile (then `opened` stops).
    pub fn join_opened(&self, user: UserId, opened: Arc<Feed>, session: SessionTx) {
        let mut feeds = self.feeds();
        let feed = feeds.entry(user).or_insert_with(|| opened.clone());
        if !Arc::ptr_eq(feed, &opened) {
            opened.stop.cancel();
        }
        feed.join(session);
        self.users.store(feeds.len(), Ordering::Relaxed);
    }

    /// Unregisters a session; the last one of a user stops its feed.
    pub fn detach(&self, user: UserId, session: u64) {
        let mut feeds = self.feeds();
        let Some(feed) = feeds.get(&user) else {
            return;
        };
        let empty = {
            let mut sessions = feed.sessions();
            sessions.retain(|s| s.info.id != session);
            sessions.is_empty()
        };
        if empty {
            feed.stop.cancel();
            feeds.remove(&user);
            self.users.store(feeds.len(), Ordering::Relaxed);
        }
    }

    /// Pushes an ephemeral frame to every session of `user` here; a
    /// session that is behind does without.
    pub fn push_frame(&self, user: UserId, frame: Arc<str>) {
        let feed = self.feeds().get(&user).cloned();
        if let Some(feed) = feed {
            for session in feed.sessions().iter() {
                session.inbox.offer(Push::Frame(frame.clone()));
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
        let Some(feed) = self.feeds().get(&user).cloned() else {
            return 0;
        };
        let mut closed = 0;
        for session in feed.sessions().iter().filter(|s| matches(&s.info)) {
            session.inbox.close(closing);
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
        self.feeds().keys().copied().collect()
    }

    /// Every session re-reads its log (live records may have been missed).
    pub fn resync_all(&self) {
        for feed in self.feeds().values() {
            feed.flag_all_lagging();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::inbox::Alarm;
    use bytes::Bytes;
    use futures::FutureExt;

    fn record(seq: u64) -> Stored {
        Stored::new(seq, None, None, Bytes::from_static(b"{}"))
    }

    /// `n` sessions of one user on one feed.
    fn sessions(registry: &Registry, user: UserId, n: usize) -> (Arc<Feed>, Vec<Attachment>) {
        let feed = Arc::new(Feed::new(CancellationToken::new()));
        let mut attachments = Vec::new();
        for i in 0..n {
            let (entry, attachment) = registry.new_session(
                user,
                DeviceId::parse(&format!("d{i}")).unwrap(),
                Uuid::now_v7(),
            );
            if let Err(entry) = registry.join_existing(user, entry) {
                registry.join_opened(user, feed.clone(), entry);
            }
            attachments.push(attachment);
        }
        (feed, attachments)
    }

    #[tokio::test]
    async fn a_full_queue_flags_its_session_as_lagging_and_spares_the_others() {
        let registry = Registry::new(2);
        let user = UserId::generate();
        let (feed, attachments) = sessions(&registry, user, 2);
        feed.dispatch(record(1));
        feed.dispatch(record(2));
        // The second session reads; the first does not.
        for _ in 0..2 {
            attachments[1].inbox.next().await;
        }
        feed.dispatch(record(3));
        assert_eq!(
            attachments[0].inbox.alarm().now_or_never(),
            Some(Alarm::Lagged),
            "the full session is told it lags"
        );
        assert_eq!(attachments[1].inbox.alarm().now_or_never(), None);
        assert!(matches!(attachments[1].inbox.next().await, Push::Record(r) if r.seq == 3));
    }

    #[test]
    fn the_last_session_to_leave_stops_its_feed() {
        let registry = Registry::new(4);
        let user = UserId::generate();
        let (feed, attachments) = sessions(&registry, user, 2);
        assert_eq!(registry.user_count(), 1);
        registry.detach(user, attachments[0].session);
        assert!(!feed.stop.is_cancelled());
        registry.detach(user, attachments[1].session);
        assert!(feed.stop.is_cancelled());
        assert_eq!(registry.user_count(), 0);
        assert!(registry.local_users().is_empty());
    }

    #[test]
    fn a_feed_opened_twice_keeps_the_first_and_stops_the_second() {
        let registry = Registry::new(4);
        let user = UserId::generate();
        let first = Arc::new(Feed::new(CancellationToken::new()));
        let second = Arc::new(Feed::new(CancellationToken::new()));
        let (a, _keep_a) = registry.new_session(user, DeviceId::default(), Uuid::now_v7());
        let (b, _keep_b) = registry.new_session(user, DeviceId::default(), Uuid::now_v7());
        registry.join_opened(user, first.clone(), a);
        registry.join_opened(user, second.clone(), b);
        assert!(second.stop.is_cancelled());
        assert!(!first.stop.is_cancelled());
        assert_eq!(first.sessions().len(), 2);
    }

    #[tokio::test]
    async fn close_reaches_only_the_sessions_it_picks() {
        let registry = Registry::new(4);
        let user = UserId::generate();
        let (_feed, attachments) = sessions(&registry, user, 3);
        let target = attachments[1].session;
        let closing = Closing {
            code: 4000,
            reason: "replaced",
        };
        assert_eq!(
            registry.close_sessions(user, closing, |s| s.id == target),
            1
        );
        assert_eq!(
            attachments[1].inbox.alarm().now_or_never(),
            Some(Alarm::Close(closing))
        );
        assert_eq!(attachments[0].inbox.alarm().now_or_never(), None);
        assert_eq!(
            registry.close_sessions(UserId::generate(), closing, |_| true),
            0
        );
    }

    #[tokio::test]
    async fn frames_go_to_every_session_of_the_user_and_no_one_else() {
        let registry = Registry::new(4);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let (_a, alices) = sessions(&registry, alice, 2);
        let (_b, bobs) = sessions(&registry, bob, 1);
        registry.push_frame(alice, Arc::from("typing"));
        for attachment in &alices {
            let frame = attachment.inbox.next().now_or_never();
            assert!(matches!(frame, Some(Push::Frame(f)) if &*f == "typing"));
        }
        assert!(bobs[0].inbox.next().now_or_never().is_none());
    }
}
