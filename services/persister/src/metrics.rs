//! The persister's Prometheus metrics (DESIGN.md §6).
//!
//! Batch size and time, projection lag, records by kind, fan-out, consumer
//! backlog, redeliveries, dead letters and leadership; and how full the
//! `CHAT` and `DELIVERY` streams are.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use std::time::Duration;

pub const BATCH_SIZE: &str = "natter_persister_batch_size";
pub const BATCH_DURATION: &str = "natter_persister_batch_duration_seconds";
pub const PROJECTION_LAG: &str = "natter_persister_projection_lag_seconds";
pub const RECORDS: &str = "natter_persister_records_total";
pub const FANOUT_PUBLISHED: &str = "natter_persister_fanout_published_total";
pub const CONSUMER_PENDING: &str = "natter_persister_consumer_pending";
pub const CONSUMER_ACK_PENDING: &str = "natter_persister_consumer_ack_pending";
pub const REDELIVERIES: &str = "natter_persister_redeliveries_total";
pub const DEAD_LETTERS: &str = "natter_persister_dead_letters_total";
pub const LEADER: &str = "natter_persister_leader";
pub const PULL_RESTARTS: &str = "natter_persister_pull_restarts_total";
pub const LANE_BYTES: &str = "natter_persister_lane_bytes";
pub const STREAM_BYTES: &str = "natter_stream_bytes";
pub const STREAM_MAX_BYTES: &str = "natter_stream_max_bytes";

/// Gives every metric its help text; called once at start.
pub fn describe() {
    describe_histogram!(BATCH_SIZE, "CHAT records projected per transaction");
    describe_histogram!(
        BATCH_DURATION,
        metrics::Unit::Seconds,
        "from the start of a batch's projection to its ack, fan-out (and the wait for it) included"
    );
    describe_histogram!(
        PROJECTION_LAG,
        metrics::Unit::Seconds,
        "from a record's acceptance to its commit in PostgreSQL"
    );
    describe_counter!(RECORDS, "CHAT records projected and fanned out, by kind");
    describe_counter!(
        PULL_RESTARTS,
        "pull requests made again after the consumer's leader stopped answering"
    );
    describe_counter!(FANOUT_PUBLISHED, "delivery records published");
    describe_gauge!(
        CONSUMER_PENDING,
        "CHAT records not yet pulled by the persister"
    );
    describe_gauge!(
        CONSUMER_ACK_PENDING,
        "CHAT records pulled and not yet acked"
    );
    describe_counter!(REDELIVERIES, "CHAT records pulled more than once");
    describe_counter!(DEAD_LETTERS, "CHAT records set aside as dead letters");
    describe_gauge!(LEADER, "1 while this persister is the active one");
    describe_gauge!(
        LANE_BYTES,
        metrics::Unit::Bytes,
        "bytes of large fan-outs waiting in the lane (their records, not what they deliver)"
    );
    describe_gauge!(
        STREAM_BYTES,
        metrics::Unit::Bytes,
        "bytes a JetStream stream holds, by stream"
    );
    describe_gauge!(
        STREAM_MAX_BYTES,
        metrics::Unit::Bytes,
        "a JetStream stream's max_bytes, by stream (absent when unlimited)"
    );
    // Rare events still get a series from the start, so a dashboard shows 0
    // rather than no data.
    for counter in [FANOUT_PUBLISHED, REDELIVERIES, DEAD_LETTERS] {
        counter!(counter).increment(0);
    }
}

pub fn batch(records: usize, elapsed: Duration) {
    histogram!(BATCH_SIZE).record(records as f64);
    histogram!(BATCH_DURATION).record(elapsed.as_secs_f64());
}

pub fn committed(kind: &'static str, lag_seconds: f64) {
    counter!(RECORDS, "kind" => kind).increment(1);
    histogram!(PROJECTION_LAG).record(lag_seconds);
}

pub fn fanned_out(published: usize) {
    counter!(FANOUT_PUBLISHED).increment(published as u64);
}

pub fn consumer_backlog(pending: u64, ack_pending: usize) {
    gauge!(CONSUMER_PENDING).set(pending as f64);
    gauge!(CONSUMER_ACK_PENDING).set(ack_pending as f64);
}

pub fn redelivered() {
    counter!(REDELIVERIES).increment(1);
}

pub fn dead_lettered() {
    counter!(DEAD_LETTERS).increment(1);
}

pub fn lane(bytes: usize) {
    gauge!(LANE_BYTES).set(bytes as f64);
}

pub fn pull_restarted() {
    counter!(PULL_RESTARTS).increment(1);
}

pub fn leader(active: bool) {
    gauge!(LEADER).set(if active { 1.0 } else { 0.0 });
}

/// A stream's size and limit; no limit (`max_bytes` ≤ 0) leaves the limit
/// unset, so a fill ratio is never computed against it.
pub fn stream_size(stream: &'static str, bytes: u64, max_bytes: i64) {
    gauge!(STREAM_BYTES, "stream" => stream).set(bytes as f64);
    if max_bytes > 0 {
        gauge!(STREAM_MAX_BYTES, "stream" => stream).set(max_bytes as f64);
    }
}
