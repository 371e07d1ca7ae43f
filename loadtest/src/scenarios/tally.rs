//! What every device of a run adds to as it goes: the live counters (for
//! progress and draining), its own log, and the last-member tracker of
//! `fanout`.

use crate::accounting::{DeviceLog, MessageKey, Outcome};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Live totals, for progress and for knowing when a run has drained.
#[derive(Debug, Default)]
pub struct Counters {
    pub attempted: AtomicU64,
    pub answered: AtomicU64,
    pub accepted: AtomicU64,
    /// First receipts of owed messages.
    pub delivered: AtomicU64,
    /// Deliveries of another party's traffic (see [`Run::foreign`]), not
    /// counted in the books.
    pub foreign: AtomicU64,
    /// Sends that went out more than once (see [`device`]).
    pub retried: AtomicU64,
    /// Connections made again after one dropped.
    pub reconnects: AtomicU64,
}

/// What one socket's reader saw.
#[derive(Debug, Default)]
pub struct ReaderLog {
    pub device: DeviceLog,
    /// For a sending socket: the outcome of each send, by number.
    pub outcomes: Vec<Outcome>,
    /// The last cursor delivered to this socket.
    pub cursor: u64,
    /// For a sending socket: how many sends went out (retries not counted).
    pub sent: u32,
    /// The sends that went out more than once.
    pub retried: std::collections::HashSet<u32>,
    /// How many times the device connected again.
    pub reconnects: u64,
    /// The first few deliveries that broke the books, in words, to find
    /// them in the services' logs.
    pub anomalies: Vec<String>,
}

/// Per message, how many members still wait for it; when the last one
/// has it, the latency to the last member is recorded.
pub struct LastMember {
    waiting: std::sync::Mutex<std::collections::HashMap<MessageKey, u32>>,
    members: u32,
    latency: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl LastMember {
    pub fn new(members: u32) -> Self {
        Self {
            waiting: std::sync::Mutex::new(std::collections::HashMap::new()),
            members,
            latency: std::sync::Mutex::new(crate::measure::micros()),
        }
    }

    pub(crate) fn arrived(&self, key: MessageKey, latency: Duration) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        let left = waiting.entry(key).or_insert(self.members);
        *left = left.saturating_sub(1);
        if *left == 0 {
            waiting.remove(&key);
            if let Ok(mut h) = self.latency.lock() {
                h.saturating_record(latency.as_micros() as u64);
            }
        }
    }

    pub fn summary(&self) -> Option<crate::report::LatencySummary> {
        self.latency
            .lock()
            .ok()
            .and_then(|h| crate::measure::summary(&h))
    }
}
