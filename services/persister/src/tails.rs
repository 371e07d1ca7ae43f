//! Where each user's delivery log ends: the `DELIVERY` sequence of the last
//! record stored on `deliver.<user>`.
//!
//! Every delivery record is published with
//! `Nats-Expected-Last-Subject-Sequence` set to its user's tail, so
//! JetStream stores it only if that record really is the last one of the
//! user's log, and the header, stored with the record, names the record
//! before it ([`natter_core::delivery::PREVIOUS_HEADER`]). A user's records
//! thus form a chain the gateway walks back from the newest, reading a
//! replay by sequence instead of scanning the whole stream for one user's
//! records.
//!
//! The tails are a cache: a user not in it is asked of the stream's
//! leader, and a wrong one (a record stored by another persister, records
//! expired) is refused by the stream, forgotten and asked again.

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use futures::StreamExt;
use natter_core::{UserId, subjects};
use std::collections::{HashMap, HashSet};

/// Users whose tails one generation holds; two generations are kept, so at
/// most twice this many (about 16 MB).
pub const GENERATION: usize = 256 * 1024;

/// Tails asked of the stream at once, so a persister starting with many
/// recipients does not flood JetStream's API.
const LEARNING_AT_ONCE: usize = 32;

/// The tails of recently written users' logs, bounded: when the current
/// generation fills it becomes the previous one and the oldest is dropped,
/// so a user written to in either stays known.
#[derive(Debug)]
pub struct Tails {
    current: HashMap<UserId, u64>,
    previous: HashMap<UserId, u64>,
    generation: usize,
}

impl Default for Tails {
    fn default() -> Self {
        Self::with_generation(GENERATION)
    }
}

impl Tails {
    /// Tails kept `generation` users at a time (at least one).
    pub fn with_generation(generation: usize) -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
            generation: generation.max(1),
        }
    }

    /// `user`'s tail, if known (0: the log holds nothing of theirs).
    pub fn get(&mut self, user: UserId) -> Option<u64> {
        if let Some(seq) = self.current.get(&user) {
            return Some(*seq);
        }
        let seq = self.previous.remove(&user)?;
        self.insert(user, seq);
        Some(seq)
    }

    /// `user`'s log now ends at `seq`. An ack of a record stored earlier
    /// (a retry JetStream deduplicated) never moves a tail back.
    pub fn stored(&mut self, user: UserId, seq: u64) {
        let known = self.get(user).unwrap_or(0);
        self.insert(user, known.max(seq));
    }

    /// `user`'s tail as the stream says it is.
    pub fn learned(&mut self, user: UserId, seq: u64) {
        self.previous.remove(&user);
        self.insert(user, seq);
    }

    /// The stream refused `user`'s tail: it must be asked again.
    pub fn forget(&mut self, user: UserId) {
        self.current.remove(&user);
        self.previous.remove(&user);
    }

    fn insert(&mut self, user: UserId, seq: u64) {
        if self.current.len() >= self.generation && !self.current.contains_key(&user) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(user, seq);
    }

    /// Asks the stream's leader for the tail of every one of `users` not
    /// known yet, a few at a time.
    pub async fn learn_all(
        &mut self,
        js: &jetstream::Context,
        users: impl IntoIterator<Item = UserId>,
    ) -> Result<(), TailError> {
        let unknown: HashSet<UserId> = users
            .into_iter()
            .filter(|user| self.get(*user).is_none())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let stream = js.get_stream_no_info(subjects::DELIVERY_STREAM).await;
        let stream = stream.map_err(|e| TailError(e.to_string()))?;
        let mut answers = futures::stream::iter(unknown)
            .map(|user| {
                let stream = &stream;
                async move { (user, ask(stream, user).await) }
            })
            .buffer_unordered(LEARNING_AT_ONCE);
        while let Some((user, answer)) = answers.next().await {
            self.learned(user, answer?);
        }
        Ok(())
    }
}

/// The stream could not say where a user's log ends.
#[derive(Debug, thiserror::Error)]
#[error("asking where a delivery log ends failed: {0}")]
pub struct TailError(String);

/// The sequence of `user`'s last record, 0 if the stream holds none, as
/// the stream's leader answers (a replica might lag behind it).
async fn ask(stream: &jetstream::stream::Stream<()>, user: UserId) -> Result<u64, TailError> {
    match stream
        .get_last_raw_message_by_subject(&subjects::deliver(user))
        .await
    {
        Ok(record) => Ok(record.sequence),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(TailError(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_only_moves_forward_on_an_ack_and_anywhere_when_learned() {
        let mut tails = Tails::default();
        let ann = UserId::generate();
        assert_eq!(tails.get(ann), None);
        tails.stored(ann, 40);
        // A deduplicated retry of an earlier record answers its old sequence.
        tails.stored(ann, 12);
        assert_eq!(tails.get(ann), Some(40));
        // The stream knows better: the records expired.
        tails.learned(ann, 0);
        assert_eq!(tails.get(ann), Some(0));
        tails.forget(ann);
        assert_eq!(tails.get(ann), None);
    }

    #[test]
    fn the_oldest_generation_is_dropped_and_a_user_used_again_is_kept() {
        let mut tails = Tails::with_generation(2);
        let users: Vec<UserId> = (0..5).map(|_| UserId::generate()).collect();
        tails.stored(users[0], 1);
        tails.stored(users[1], 2);
        // The generation is full: [0, 1] becomes the previous one.
        tails.stored(users[2], 3);
        // 0 is used again: moved into the current generation [2, 0].
        assert_eq!(tails.get(users[0]), Some(1));
        // Full again: [2, 0] becomes the previous; 1 is dropped.
        tails.stored(users[3], 4);
        assert_eq!(tails.get(users[1]), None);
        assert_eq!(tails.get(users[0]), Some(1));
        assert_eq!(tails.get(users[2]), Some(3));
        let kept = tails.current.len() + tails.previous.len();
        assert!(kept <= 4, "{kept} kept");
    }
}
