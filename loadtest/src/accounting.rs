//! Jepsen-style bookkeeping: what each device received, checked against
//! what was sent and accepted. Pure logic, so every verdict is unit-tested.
//!
//! A message is named by a [`MessageKey`] (its sender's index and its
//! number) carried in its content; order is judged by the server's `seq`
//! within each conversation, which every member must see strictly rising.

use crate::report::Accounting;
use std::collections::HashMap;

/// A message of this run: `sender << 32 | number`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey(pub u64);

impl MessageKey {
    pub fn new(sender: u32, number: u32) -> Self {
        Self((u64::from(sender) << 32) | u64::from(number))
    }

    pub fn sender(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The content that carries the key and the scheduled send time
    /// (microseconds since the Unix epoch): `lt|<sender>|<number>|<at>`.
    pub fn content(self, scheduled_us: i64) -> String {
        format!("lt|{}|{}|{scheduled_us}", self.sender(), self.0 as u32)
    }

    /// The key and the scheduled send time of a content this run wrote.
    pub fn parse(content: &str) -> Option<(Self, i64)> {
        let mut parts = content.split('|');
        if parts.next()? != "lt" {
            return None;
        }
        let sender = parts.next()?.parse().ok()?;
        let number = parts.next()?.parse().ok()?;
        let at = parts.next()?.parse().ok()?;
        Some((Self::new(sender, number), at))
    }
}

/// What one device received.
///
/// Judged per connection: a device that reconnects without having acked
/// is owed a replay from its cursor, so a message seen on an earlier
/// connection and again on a later one is a replay, not a duplicate, and
/// `seq` may start lower again.
#[derive(Debug, Default)]
pub struct DeviceLog {
    /// How many times each message arrived, over all connections.
    pub received: HashMap<MessageKey, u32>,
    /// Messages seen on the current connection.
    this_connection: std::collections::HashSet<MessageKey>,
    /// The highest `seq` seen per conversation on the current connection.
    last_seq: HashMap<String, u64>,
    /// Messages that arrived twice on one connection.
    pub duplicated: u64,
    /// Messages seen again on a later connection (legitimate replays).
    pub replayed_again: u64,
    pub out_of_order: u64,
    /// Frames whose content this run did not write.
    pub unexpected: u64,
}

impl DeviceLog {
    /// The device connected again: replay from its cursor starts over.
    pub fn reconnected(&mut self) {
        self.this_connection.clear();
        self.last_seq.clear();
    }

    /// Records one received message: its key (if the content is ours), its
    /// conversation and its `seq`.
    pub fn record(&mut self, key: Option<MessageKey>, conversation: &str, seq: u64) {
        let Some(key) = key else {
            self.unexpected += 1;
            return;
        };
        let count = self.received.entry(key).or_insert(0);
        *count += 1;
        if !self.this_connection.insert(key) {
            // A duplicate is counted as such, not also as misordered.
            self.duplicated += 1;
            return;
        }
        if *count > 1 {
            self.replayed_again += 1;
        }
        match self.last_seq.get_mut(conversation) {
            Some(last) if seq <= *last => self.out_of_order += 1,
            Some(last) => *last = seq,
            None => {
                self.last_seq.insert(conversation.to_owned(), seq);
            }
        }
    }
}

/// What happened to one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused,
    Unanswered,
}

/// One send and the devices (indexes into the run's device logs) it is owed to.
#[derive(Clone, Debug)]
pub struct Sent {
    pub key: MessageKey,
    pub outcome: Outcome,
    pub recipients: Vec<usize>,
}

/// Checks every send against every device's log.
pub fn reconcile(sends: &[Sent], devices: &[DeviceLog]) -> Accounting {
    let mut accounting = Accounting {
        attempted: sends.len() as u64,
        ..Accounting::default()
    };
    let mut owed: HashMap<(usize, MessageKey), bool> = HashMap::new();
    for sent in sends {
        match sent.outcome {
            Outcome::Accepted => accounting.accepted += 1,
            Outcome::Refused => accounting.refused += 1,
            Outcome::Unanswered => accounting.unanswered += 1,
        }
        for &device in &sent.recipients {
            // A refused send is owed to nobody; an unanswered one may or
            // may not have been stored, so its delivery is allowed, not owed.
            owed.insert((device, sent.key), sent.outcome == Outcome::Accepted);
        }
    }
    for (index, device) in devices.iter().enumerate() {
        accounting.out_of_order += device.out_of_order;
        accounting.unexpected += device.unexpected;
        accounting.duplicated += device.duplicated;
        for (&key, &count) in &device.received {
            match owed.get(&(index, key)) {
                Some(_) => accounting.delivered += 1,
                None => accounting.unexpected += u64::from(count),
            }
        }
    }
    accounting.lost = owed
        .iter()
        .filter(|((device, key), must)| {
            **must
                && !devices
                    .get(*device)
                    .is_some_and(|d| d.received.contains_key(key))
        })
        .count() as u64;
    accounting
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(n: u32) -> MessageKey {
        MessageKey::new(7, n)
    }

    fn accepted(n: u32, to: usize) -> Sent {
        Sent {
            key: key(n),
            outcome: Outcome::Accepted,
            recipients: vec![to],
        }
    }

    /// Device 0 receives `numbers` (seq = number + 1) in that order.
    fn device(numbers: &[u32]) -> DeviceLog {
        let mut log = DeviceLog::default();
        for &n in numbers {
            log.record(Some(key(n)), "c", u64::from(n) + 1);
        }
        log
    }

    #[test]
    fn content_round_trips() {
        let k = MessageKey::new(12, 34);
        assert_eq!(MessageKey::parse(&k.content(99)), Some((k, 99)));
        assert_eq!(MessageKey::parse("hello"), None);
        assert_eq!(MessageKey::parse("lt|1|x|3"), None);
    }

    #[test]
    fn a_clean_run_has_no_problems() {
        let sends: Vec<Sent> = (0..5).map(|n| accepted(n, 0)).collect();
        let a = reconcile(&sends, &[device(&[0, 1, 2, 3, 4])]);
        assert_eq!(a.attempted, 5);
        assert_eq!(a.accepted, 5);
        assert_eq!(a.delivered, 5);
        assert!(a.problems().is_empty(), "{a:?}");
    }

    #[test]
    fn a_lost_message_is_detected() {
        let sends: Vec<Sent> = (0..5).map(|n| accepted(n, 0)).collect();
        let a = reconcile(&sends, &[device(&[0, 1, 3, 4])]);
        assert_eq!(a.lost, 1);
        assert_eq!(a.delivered, 4);
        assert_eq!(a.problems().len(), 1);
    }

    #[test]
    fn a_duplicated_message_is_detected() {
        let sends: Vec<Sent> = (0..3).map(|n| accepted(n, 0)).collect();
        let a = reconcile(&sends, &[device(&[0, 1, 1, 2])]);
        assert_eq!(a.duplicated, 1);
        assert_eq!(a.out_of_order, 0, "a duplicate is not also misordered");
        assert_eq!(a.delivered, 3);
        assert_eq!(a.lost, 0);
    }

    #[test]
    fn a_reordered_message_is_detected() {
        let sends: Vec<Sent> = (0..4).map(|n| accepted(n, 0)).collect();
        let a = reconcile(&sends, &[device(&[0, 2, 1, 3])]);
        assert_eq!(a.out_of_order, 1);
        assert_eq!(a.lost, 0);
        assert_eq!(a.duplicated, 0);
    }

    #[test]
    fn a_replay_on_a_new_connection_is_not_a_duplicate() {
        let sends: Vec<Sent> = (0..3).map(|n| accepted(n, 0)).collect();
        let mut log = device(&[0, 1]);
        log.reconnected();
        for n in [0, 1, 2] {
            log.record(Some(key(n)), "c", u64::from(n) + 1);
        }
        assert_eq!(log.replayed_again, 2);
        let a = reconcile(&sends, &[log]);
        assert_eq!((a.duplicated, a.out_of_order, a.lost), (0, 0, 0), "{a:?}");
        assert_eq!(a.delivered, 3);
    }

    #[test]
    fn order_is_judged_per_conversation() {
        let mut log = DeviceLog::default();
        log.record(Some(key(0)), "a", 10);
        log.record(Some(key(1)), "b", 2);
        log.record(Some(key(2)), "a", 11);
        assert_eq!(log.out_of_order, 0);
    }

    #[test]
    fn unexpected_deliveries_are_detected() {
        let sends = vec![accepted(0, 0)];
        let mut log = device(&[0]);
        // Not ours at all, and ours but owed to another device.
        log.record(None, "c", 5);
        let mut other = DeviceLog::default();
        other.record(Some(key(0)), "c", 1);
        let a = reconcile(&sends, &[log, other]);
        assert_eq!(a.unexpected, 2);
        assert_eq!(a.delivered, 1);
    }

    #[test]
    fn refused_and_unanswered_sends_are_not_owed() {
        let sends = vec![
            Sent {
                key: key(0),
                outcome: Outcome::Refused,
                recipients: vec![0],
            },
            Sent {
                key: key(1),
                outcome: Outcome::Unanswered,
                recipients: vec![0],
            },
        ];
        let a = reconcile(&sends, &[device(&[1])]);
        assert_eq!(
            (a.refused, a.unanswered, a.lost, a.unexpected),
            (1, 1, 0, 0)
        );
        assert_eq!(a.delivered, 1, "an unanswered send may still arrive");
    }
}
