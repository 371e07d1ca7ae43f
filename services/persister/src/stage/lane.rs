//! The large fan-out lane: the copies of records that go to so many
//! recipients, or are so large, that publishing them all at once would hold
//! up every record accepted after them (one largest message to a full group
//! is 1,000 records of up to 64 KiB).
//!
//! The fan-out stage publishes them a chunk at a time between later batches,
//! so a later record waits for at most one chunk. A user's own order is
//! kept (invariant 5): before a later record goes to a user, that user's
//! copies still in the lane are taken out and published first
//! ([`Lane::take_for`]). A record's `CHAT` message (`M`) is held until all of
//! its copies are stored, and only then acked; acks may so come out of
//! `CHAT` order, which the rewind to the ack floor at start absorbs (every
//! record above the floor is fanned out again, a no-op for what was stored).

use crate::fanout::Copy;
use natter_core::UserId;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Copies waiting, in the order they were deferred, and the messages held
/// until their copies are stored.
#[derive(Debug)]
pub struct Lane<M> {
    /// By position: the order copies leave the lane in.
    queue: BTreeMap<u64, Copy>,
    /// The position the next deferred copy takes. Positions start in the
    /// middle of the range, so copies put back can go before the first.
    next: u64,
    bytes: usize,
    /// Each recipient's positions in the queue, in order.
    by_user: HashMap<UserId, VecDeque<u64>>,
    held: HashMap<u64, Held<M>>,
}

#[derive(Debug)]
struct Held<M> {
    message: M,
    /// Copies not yet stored, in the queue or being published.
    remaining: usize,
}

impl<M> Default for Lane<M> {
    fn default() -> Self {
        Self {
            queue: BTreeMap::new(),
            next: u64::MAX / 2,
            bytes: 0,
            by_user: HashMap::new(),
            held: HashMap::new(),
        }
    }
}

impl<M> Lane<M> {
    /// Whether no copy waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes of records waiting (each copy's payload): what bounds the
    /// lane's memory. A record stored by reference counts its small
    /// payload here, however much its copies will deliver; that size
    /// (`Copy::weight`) is what the lane's chunks and pace count.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The messages held, to keep them ours while the lane drains.
    pub fn held(&self) -> impl Iterator<Item = &M> {
        self.held.values().map(|h| &h.message)
    }

    /// Defers every copy of the record at `chat_seq`, holding `message`
    /// until they are all stored. A record without copies is returned at
    /// once, done.
    pub fn defer(&mut self, chat_seq: u64, message: M, copies: Vec<Copy>) -> Option<M> {
        if copies.is_empty() {
            return Some(message);
        }
        // A record of several fan-outs is held until all of them are stored.
        self.held
            .entry(chat_seq)
            .or_insert(Held {
                message,
                remaining: 0,
            })
            .remaining += copies.len();
        for copy in copies {
            let position = self.next;
            self.next += 1;
            self.bytes += copy.payload.len();
            self.by_user
                .entry(copy.recipient)
                .or_default()
                .push_back(position);
            self.queue.insert(position, copy);
        }
        None
    }

    /// `user`'s waiting copies, in order, out of the lane: to be published
    /// before anything later goes to `user`.
    pub fn take_for(&mut self, user: UserId) -> Vec<Copy> {
        let Some(positions) = self.by_user.remove(&user) else {
            return Vec::new();
        };
        let mine: Vec<Copy> = positions
            .into_iter()
            .filter_map(|position| self.queue.remove(&position))
            .collect();
        self.bytes -= mine.iter().map(|c| c.payload.len()).sum::<usize>();
        mine
    }

    /// The next copies to publish: from the front, until they deliver
    /// `max_bytes` (at least one).
    pub fn next_chunk(&mut self, max_bytes: usize) -> Vec<Copy> {
        let mut chunk: Vec<Copy> = Vec::new();
        let mut delivered = 0;
        while let Some(entry) = self.queue.first_entry() {
            let weight = entry.get().weight();
            if !chunk.is_empty() && delivered + weight > max_bytes {
                break;
            }
            let copy = entry.remove();
            delivered += weight;
            self.bytes -= copy.payload.len();
            // The front of the queue is its recipient's first copy.
            if let Some(positions) = self.by_user.get_mut(&copy.recipient) {
                positions.pop_front();
                if positions.is_empty() {
                    self.by_user.remove(&copy.recipient);
                }
            }
            chunk.push(copy);
        }
        chunk
    }

    /// Puts a chunk that failed to publish back in front, in its order.
    pub fn put_back(&mut self, chunk: Vec<Copy>) {
        let first = self
            .queue
            .first_key_value()
            .map_or(self.next, |(position, _)| *position);
        let start = first - chunk.len() as u64;
        for (offset, copy) in chunk.into_iter().enumerate().rev() {
            let position = start + offset as u64;
            self.bytes += copy.payload.len();
            self.by_user
                .entry(copy.recipient)
                .or_default()
                .push_front(position);
            self.queue.insert(position, copy);
        }
    }

    /// Counts `copies` stored; returns the messages (with their `CHAT`
    /// sequences) all of whose copies now are.
    pub fn stored<'a>(&mut self, copies: impl IntoIterator<Item = &'a Copy>) -> Vec<(u64, M)> {
        let mut done = Vec::new();
        for copy in copies {
            let Some(held) = self.held.get_mut(&copy.chat_seq) else {
                continue;
            };
            held.remaining = held.remaining.saturating_sub(1);
            if held.remaining == 0
                && let Some(held) = self.held.remove(&copy.chat_seq)
            {
                done.push((copy.chat_seq, held.message));
            }
        }
        done
    }

    /// Gives up on the record at `chat_seq` (no retry can store it): its
    /// waiting copies leave the lane, and its message is returned, to be
    /// dead-lettered and acked.
    pub fn abandon(&mut self, chat_seq: u64) -> Option<M> {
        let held = self.held.remove(&chat_seq)?;
        let gone: Vec<u64> = self
            .queue
            .iter()
            .filter(|(_, c)| c.chat_seq == chat_seq)
            .map(|(position, _)| *position)
            .collect();
        for position in gone {
            if let Some(copy) = self.queue.remove(&position) {
                self.bytes -= copy.payload.len();
                if let Some(positions) = self.by_user.get_mut(&copy.recipient) {
                    positions.retain(|p| *p != position);
                    if positions.is_empty() {
                        self.by_user.remove(&copy.recipient);
                    }
                }
            }
        }
        Some(held.message)
    }

    /// Whether the record at `chat_seq` is held here.
    pub fn holds(&self, chat_seq: u64) -> bool {
        self.held.contains_key(&chat_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize) -> Vec<UserId> {
        (0..n).map(|_| UserId::generate()).collect()
    }

    fn copies(chat_seq: u64, to: &[UserId], bytes: usize) -> Vec<Copy> {
        to.iter()
            .map(|u| Copy::for_test(chat_seq, *u, bytes))
            .collect()
    }

    #[test]
    fn copies_stored_by_reference_weigh_on_the_pace_not_on_memory() {
        let to = users(3);
        let mut lane = Lane::default();
        let big: Vec<Copy> = to
            .iter()
            .map(|u| Copy::for_test_by_reference(1, *u, 300, 33_000))
            .collect();
        lane.defer(1, (), big);
        // Memory: three small payloads, however much they deliver; a lane
        // counting deliveries would hold batches back for records it does
        // not hold.
        assert_eq!(lane.bytes(), 900);
        // Chunks are cut by what they deliver: one 33 KB delivery each.
        assert_eq!(lane.next_chunk(40_000).len(), 1);
        assert_eq!(lane.bytes(), 600);
        assert_eq!(lane.next_chunk(70_000).len(), 2);
        assert_eq!(lane.bytes(), 0);
    }

    #[test]
    fn drains_in_chunks_in_order_and_releases_a_message_once_all_its_copies_are_stored() {
        let to = users(10);
        let mut lane = Lane::default();
        assert!(lane.defer(1, "one", copies(1, &to, 100)).is_none());
        assert!(lane.defer(2, "two", copies(2, &to[..2], 100)).is_none());
        assert_eq!(lane.bytes(), 1200);
        let first = lane.next_chunk(450);
        assert_eq!(first.len(), 4);
        assert!(lane.stored(&first).is_empty());
        let mut rest = Vec::new();
        while !lane.is_empty() {
            rest.extend(lane.next_chunk(450));
        }
        assert_eq!(rest.len(), 8);
        assert_eq!(rest.iter().filter(|c| c.chat_seq == 1).count(), 6);
        assert_eq!(lane.stored(&rest[..6]), vec![(1, "one")]);
        assert_eq!(lane.stored(&rest[6..]), vec![(2, "two")]);
        assert_eq!(lane.bytes(), 0);
    }

    #[test]
    fn a_chunk_holds_at_least_one_copy_however_large() {
        let mut lane = Lane::default();
        lane.defer(1, (), copies(1, &users(2), 1000));
        assert_eq!(lane.next_chunk(10).len(), 1);
    }

    #[test]
    fn a_users_copies_are_taken_out_in_order_before_anything_later_goes_to_them() {
        let to = users(3);
        let mut lane = Lane::default();
        lane.defer(1, "one", copies(1, &to, 10));
        lane.defer(2, "two", copies(2, &to, 10));
        let mine = lane.take_for(to[1]);
        assert_eq!(
            mine.iter()
                .map(|c| (c.chat_seq, c.recipient))
                .collect::<Vec<_>>(),
            vec![(1, to[1]), (2, to[1])]
        );
        assert!(lane.take_for(to[1]).is_empty());
        assert_eq!(lane.bytes(), 40);
        let rest = lane.next_chunk(usize::MAX);
        assert!(rest.iter().all(|c| c.recipient != to[1]));
        assert!(lane.stored(&rest).is_empty());
        let mut done = lane.stored(&mine);
        done.sort_unstable();
        assert_eq!(done, vec![(1, "one"), (2, "two")]);
    }

    #[test]
    fn a_chunk_put_back_comes_out_first_again() {
        let to = users(4);
        let mut lane = Lane::default();
        lane.defer(1, (), copies(1, &to, 10));
        let chunk = lane.next_chunk(20);
        let order: Vec<_> = chunk.iter().map(|c| c.recipient).collect();
        lane.put_back(chunk);
        assert_eq!(lane.bytes(), 40);
        let again: Vec<_> = lane.next_chunk(20).iter().map(|c| c.recipient).collect();
        assert_eq!(again, order);
        assert_eq!(lane.take_for(order[0]).len(), 0);
        assert_eq!(lane.take_for(to[3]).len(), 1);
    }

    #[test]
    fn an_abandoned_record_leaves_the_lane_and_its_message_is_returned() {
        let to = users(3);
        let mut lane = Lane::default();
        lane.defer(1, "one", copies(1, &to, 10));
        lane.defer(2, "two", copies(2, &to, 10));
        assert!(lane.holds(1));
        assert_eq!(lane.abandon(1), Some("one"));
        assert!(!lane.holds(1));
        assert_eq!(lane.bytes(), 30);
        let rest = lane.next_chunk(usize::MAX);
        assert!(rest.iter().all(|c| c.chat_seq == 2));
        assert_eq!(lane.stored(&rest), vec![(2, "two")]);
        assert_eq!(lane.defer(3, "empty", Vec::new()), Some("empty"));
        // Two fan-outs of one record: held until both are stored.
        lane.defer(4, "four", copies(4, &to[..1], 10));
        lane.defer(4, "four again", copies(4, &to[1..2], 10));
        let first = lane.next_chunk(10);
        assert!(lane.stored(&first).is_empty());
        let second = lane.next_chunk(10);
        assert_eq!(lane.stored(&second), vec![(4, "four")]);
    }
}
