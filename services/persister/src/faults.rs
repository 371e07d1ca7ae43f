//! Fault injection for tests: hooks that make the persister behave as if it
//! crashed between two steps of a batch (invariants 1 and 3, DESIGN.md §1).

use natter_core::UserId;
use std::sync::Arc;

/// A fault hook: given a batch's CHAT sequences, `true` means "crash here".
pub type FaultHook = Arc<dyn Fn(&[u64]) -> bool + Send + Sync>;

/// Fault injection for tests: each hook is asked after a step and, if it
/// answers `true`, the persister behaves as if it crashed right there (the
/// batch is neither fanned out further nor acked, and is redelivered).
#[derive(Clone, Default)]
pub struct FaultHooks {
    /// Called after a batch's transaction committed, with its CHAT sequences.
    pub after_commit: Option<FaultHook>,
    /// Called after a batch's fan-out was published, before the acks.
    pub after_fanout: Option<FaultHook>,
    /// Asked before each chunk of the large fan-out lane; `false` holds
    /// the lane (what waits in it stays unpublished) while batches flow.
    pub lane_open: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// Asked before each delivery record is published, with its `CHAT`
    /// sequence and recipient; `true` loses it: it is not stored and its
    /// ack fails as a timeout, as when a stream leader dies under it.
    pub lose_publish: Option<Arc<dyn Fn(u64, UserId) -> bool + Send + Sync>>,
    /// Asked for each `CHAT` record pulled, with its stream sequence;
    /// `true` loses it on its way: the persister never sees it, as when the
    /// node delivering it dies.
    pub lose_pulled: Option<Arc<dyn Fn(u64) -> bool + Send + Sync>>,
}

impl FaultHooks {
    /// Whether to crash right after the batch `seqs` committed.
    pub(crate) fn crash_after_commit(&self, seqs: &[u64]) -> bool {
        self.after_commit.as_ref().is_some_and(|hook| hook(seqs))
    }

    /// Whether the large fan-out lane may publish its next chunk.
    pub(crate) fn lane_open(&self) -> bool {
        self.lane_open.as_ref().is_none_or(|open| open())
    }

    /// Whether the delivery record of `chat_seq` for `recipient` is lost.
    pub(crate) fn lose_publish(&self, chat_seq: u64, recipient: UserId) -> bool {
        self.lose_publish
            .as_ref()
            .is_some_and(|lose| lose(chat_seq, recipient))
    }

    /// Whether the pulled `CHAT` record at `stream_seq` is lost.
    pub(crate) fn lose_pulled(&self, stream_seq: u64) -> bool {
        self.lose_pulled
            .as_ref()
            .is_some_and(|lose| lose(stream_seq))
    }

    /// Whether to crash right after the batch `seqs` was fanned out.
    pub(crate) fn crash_after_fanout(&self, seqs: &[u64]) -> bool {
        self.after_fanout.as_ref().is_some_and(|hook| hook(seqs))
    }
}
