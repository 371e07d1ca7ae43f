//! A session's inbox: its user's live records and frames (bounded), whether
//! it fell behind, and whether it must close; small while the socket idles.

use super::record::{Closing, Push};
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;

/// Pushes a drained queue may keep room for; a larger one is given back.
const KEPT_ROOM: usize = 32;

/// One small allocation per session, held for the socket's whole life: it
/// holds no queue until something is queued, and gives the queue back once
/// a burst is drained.
pub struct Inbox {
    state: Mutex<State>,
    /// Wakes whatever the session waits on whenever `state` changes.
    changed: Notify,
}

struct State {
    pushes: VecDeque<Push>,
    /// Pushes it may hold before its session counts as lagging.
    capacity: usize,
    lagged: bool,
    closing: Option<Closing>,
}

/// What needs the session before its pushes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// The session must close.
    Close(Closing),
    /// Records were left out: the session reads its log instead.
    Lagged,
}

impl Inbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                pushes: VecDeque::new(),
                capacity: capacity.max(1),
                lagged: false,
                closing: None,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `push`; `false`, with nothing queued, if the inbox is full.
    pub fn offer(&self, push: Push) -> bool {
        {
            let mut state = self.state();
            if state.pushes.len() >= state.capacity {
                return false;
            }
            state.pushes.push_back(push);
        }
        self.changed.notify_waiters();
        true
    }

    /// Flags the session as lagging. The records it has queued go: its
    /// catch-up reads them from the log with whatever was left out.
    pub fn lag(&self) {
        {
            let mut state = self.state();
            state.lagged = true;
            state.pushes.retain(|push| matches!(push, Push::Frame(_)));
        }
        self.changed.notify_waiters();
    }

    /// Tells the session to close (the latest reason wins).
    pub fn close(&self, closing: Closing) {
        self.state().closing = Some(closing);
        self.changed.notify_waiters();
    }

    /// Waits for a close or a lag; a lag is reported once.
    pub async fn alarm(&self) -> Alarm {
        self.wait(|state| match state.closing {
            Some(closing) => Some(Alarm::Close(closing)),
            None => std::mem::take(&mut state.lagged).then_some(Alarm::Lagged),
        })
        .await
    }

    /// Waits for the next push, in the order they were queued.
    pub async fn next(&self) -> Push {
        self.wait(|state| {
            let push = state.pushes.pop_front()?;
            if state.pushes.is_empty() && state.pushes.capacity() > KEPT_ROOM {
                state.pushes = VecDeque::new();
            }
            Some(push)
        })
        .await
    }

    /// Waits until `take` finds something. Cancel-safe: what `take` has not
    /// taken stays.
    async fn wait<T>(&self, mut take: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            // Registered before looking, so a change made after the look
            // wakes it.
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if let Some(found) = take(&mut self.state()) {
                return found;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::record::Stored;
    use bytes::Bytes;
    use futures::FutureExt;
    use std::sync::Arc;
    use std::time::Duration;

    fn record(seq: u64) -> Push {
        let stored = Stored::new(seq, None, None, Bytes::from_static(b"{}"));
        Push::Record(Arc::new(stored))
    }

    fn seq(push: Push) -> Option<u64> {
        match push {
            Push::Record(record) => Some(record.seq),
            Push::Frame(_) => None,
        }
    }

    #[test]
    fn pushes_come_out_in_order_up_to_the_capacity() {
        let inbox = Inbox::new(2);
        assert!(inbox.offer(record(1)));
        assert!(inbox.offer(record(2)));
        assert!(!inbox.offer(record(3)), "a full inbox refuses");
        assert_eq!(inbox.next().now_or_never().and_then(seq), Some(1));
        assert!(inbox.offer(record(3)), "room again once one is taken");
        assert_eq!(inbox.next().now_or_never().and_then(seq), Some(2));
        assert_eq!(inbox.next().now_or_never().and_then(seq), Some(3));
        assert!(inbox.next().now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_for_a_push_and_for_an_alarm() {
        let inbox = Arc::new(Inbox::new(4));
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { seq(inbox.next().await) }
        });
        tokio::task::yield_now().await;
        inbox.offer(record(7));
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(woken.expect("woken").unwrap(), Some(7));

        let alarmed = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.alarm().await }
        });
        tokio::task::yield_now().await;
        inbox.lag();
        let alarm = tokio::time::timeout(Duration::from_secs(5), alarmed).await;
        assert_eq!(alarm.expect("woken").unwrap(), Alarm::Lagged);
    }

    #[test]
    fn a_lag_is_told_once_and_drops_queued_records_but_not_frames() {
        let inbox = Inbox::new(8);
        inbox.offer(record(1));
        inbox.offer(Push::Frame(Arc::from("typing")));
        inbox.offer(record(2));
        inbox.lag();
        assert_eq!(inbox.alarm().now_or_never(), Some(Alarm::Lagged));
        assert_eq!(inbox.alarm().now_or_never(), None, "told once");
        assert!(matches!(inbox.next().now_or_never(), Some(Push::Frame(f)) if &*f == "typing"));
        assert!(inbox.next().now_or_never().is_none());
    }

    #[test]
    fn a_close_stays_told_and_comes_before_a_lag() {
        let inbox = Inbox::new(8);
        let closing = Closing {
            code: 4000,
            reason: "replaced",
        };
        inbox.lag();
        inbox.close(closing);
        for _ in 0..2 {
            assert_eq!(inbox.alarm().now_or_never(), Some(Alarm::Close(closing)));
        }
    }

    #[test]
    fn a_drained_burst_gives_its_room_back() {
        let inbox = Inbox::new(1000);
        for seq in 0..500 {
            assert!(inbox.offer(record(seq)));
        }
        assert!(inbox.state().pushes.capacity() >= 500);
        for _ in 0..500 {
            assert!(inbox.next().now_or_never().is_some());
        }
        assert_eq!(inbox.state().pushes.capacity(), 0);
        // A small queue keeps its room between pushes.
        for seq in 0..4 {
            inbox.offer(record(seq));
            inbox.next().now_or_never();
        }
        assert!(inbox.state().pushes.capacity() > 0);
    }
}
