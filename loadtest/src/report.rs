//! What a run measured, in the form every output is made from: the
//! one-screen summary, the JSON file and the HTML report with SVG charts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Jepsen-style accounting of every message a run attempted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    /// Sends written to a socket.
    pub attempted: u64,
    /// Sends answered with `message_sent`.
    pub accepted: u64,
    /// Sends answered with an `error` frame (not accepted, so not owed).
    pub refused: u64,
    /// Sends with no answer by the end of the run (indeterminate).
    pub unanswered: u64,
    /// Deliveries received: each (recipient, message) counted once.
    pub delivered: u64,
    /// Deliveries owed (accepted × recipients) never received, although
    /// delivery had stopped making progress: the system dropped them.
    pub lost: u64,
    /// Deliveries owed and not received when the run ended while delivery
    /// was still making progress: the system was behind (overloaded), and
    /// whether they arrive later is not known.
    #[serde(default)]
    pub late: u64,
    /// Deliveries received more than once by the same device.
    pub duplicated: u64,
    /// Deliveries that arrived after a later message of the same conversation.
    pub out_of_order: u64,
    /// Deliveries of messages this run never sent (or not to this recipient).
    pub unexpected: u64,
}

impl Accounting {
    /// Everything that makes a run wrong, in words; empty when it is right.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (count, what) in [
            (self.lost, "deliveries LOST (accepted, never delivered)"),
            (
                self.late,
                "deliveries LATE (still arriving when the run ended: natter fell behind)",
            ),
            (
                self.unanswered,
                "sends UNANSWERED (neither accepted nor refused by the end: natter fell behind)",
            ),
            (self.duplicated, "deliveries DUPLICATED"),
            (self.out_of_order, "deliveries OUT OF ORDER"),
            (self.unexpected, "UNEXPECTED deliveries"),
        ] {
            if count > 0 {
                problems.push(format!("{count} {what}"));
            }
        }
        problems
    }
}

/// Percentiles of one latency, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// One bar of a latency histogram: samples at or below `le_ms` and above
/// the previous bar's bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub le_ms: f64,
    pub count: u64,
}

/// One second of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the measured part of the run started.
    pub t: u32,
    pub sent: u64,
    pub accepted: u64,
    pub delivered: u64,
    /// Sends that went out again this second (after `unavailable`, or
    /// unanswered when their socket dropped).
    #[serde(default)]
    pub retried: u64,
    /// Percentiles of the latencies that ended in this second (ms).
    pub accept_p50_ms: Option<f64>,
    pub accept_p99_ms: Option<f64>,
    pub delivery_p50_ms: Option<f64>,
    pub delivery_p99_ms: Option<f64>,
}

/// A stretch of at least [`crate::measure::STALL`] without one accepted send
/// (`kind` "accept") or one first delivery ("delivery"), between two that
/// happened: what a fault cost, to the millisecond.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stall {
    pub kind: String,
    pub from_unix_ms: i64,
    pub to_unix_ms: i64,
}

/// A finished run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `steady`, `fanout`, `connections` or `storm`.
    pub scenario: String,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// The measured part of the run, warm-up excluded, in seconds.
    pub duration_s: f64,
    /// The scenario's parameters as given.
    pub parameters: BTreeMap<String, serde_json::Value>,
    pub accounting: Accounting,
    /// Rates over the measured part, per second.
    pub sent_per_s: f64,
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    /// Send → `message_sent`.
    pub accept_latency: Option<LatencySummary>,
    /// Send (its scheduled time) → the recipient's frame; for `fanout`, to
    /// the last member; for `storm`, reconnect → device complete.
    pub delivery_latency: Option<LatencySummary>,
    pub delivery_histogram: Vec<Bucket>,
    pub timeline: Vec<Second>,
    /// When the timeline's second 0 began (Unix milliseconds).
    #[serde(default)]
    pub t0_unix_ms: Option<i64>,
    /// Every stall of accepts or deliveries in the measured part.
    #[serde(default)]
    pub stalls: Vec<Stall>,
    /// The first deliveries that broke the books, in words.
    #[serde(default)]
    pub anomalies: Vec<String>,
    /// Scenario-specific numbers, e.g. `connect_per_s`, `rss_kb_per_connection`,
    /// `storm_complete_s`.
    pub extra: BTreeMap<String, f64>,
    /// Whatever made the run wrong; empty means correct.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether the run was correct: nothing lost, duplicated, misordered
    /// or unexpected, and no other problem.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}
