//! The gateway's Prometheus metrics (DESIGN.md §6; the seed's "Monitoring
//! in Production"): connections, frames, accepted messages, errors by code,
//! accept and delivery latency, replays and active users. The names are
//! what `deploy/grafana/natter.json` and the alert rules query.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use std::time::Duration;

pub const CONNECTIONS_OPEN: &str = "natter_ws_connections_open";
pub const CONNECTIONS_OPENED: &str = "natter_ws_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "natter_ws_connections_closed_total";
pub const FRAMES_RECEIVED: &str = "natter_ws_frames_received_total";
pub const FRAMES_SENT: &str = "natter_ws_frames_sent_total";
pub const MESSAGES_ACCEPTED: &str = "natter_messages_accepted_total";
pub const ERRORS: &str = "natter_errors_total";
pub const PUBLISH_RETRIES: &str = "natter_publish_retries_total";
pub const LIVE_RESYNCS: &str = "natter_live_resyncs_total";
pub const LOOKUPS_SKIPPED: &str = "natter_send_lookups_skipped_total";
pub const HTTP_REQUESTS: &str = "natter_http_requests_total";
pub const ACCEPT_LATENCY: &str = "natter_accept_latency_seconds";
pub const DELIVERY_LATENCY: &str = "natter_delivery_latency_seconds";
pub const REPLAYED_EVENTS: &str = "natter_replayed_events_total";
pub const REPLAY_DURATION: &str = "natter_replay_duration_seconds";
pub const LOG_READS: &str = "natter_log_reads_total";
pub const ACTIVE_USERS: &str = "natter_active_users";

/// Gives every metric its help text; called once at start.
pub fn describe() {
    describe_gauge!(CONNECTIONS_OPEN, "WebSocket connections open now");
    describe_counter!(CONNECTIONS_OPENED, "WebSocket connections accepted");
    describe_counter!(CONNECTIONS_CLOSED, "WebSocket connections ended, by reason");
    describe_counter!(FRAMES_RECEIVED, "client frames received, by command");
    describe_counter!(FRAMES_SENT, "frames written to sockets, by kind");
    describe_counter!(
        MESSAGES_ACCEPTED,
        "chat events acknowledged by JetStream, by kind"
    );
    describe_counter!(ERRORS, "errors answered to clients, by code");
    describe_counter!(
        LOOKUPS_SKIPPED,
        "sends with a clientMsgId published without checking PostgreSQL for an earlier one (it did not answer)"
    );
    describe_counter!(
        PUBLISH_RETRIES,
        "sends published again after their ack was lost (a stream leader election, a node lost)"
    );
    describe_counter!(
        LIVE_RESYNCS,
        "times every live session re-read its log because DELIVERY's leader was out of reach or changed, by cause"
    );
    describe_counter!(HTTP_REQUESTS, "REST requests answered, by status");
    describe_histogram!(
        ACCEPT_LATENCY,
        metrics::Unit::Seconds,
        "from a send frame's arrival to its message_sent"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "from acceptance to the write to a recipient's socket, live or replayed"
    );
    describe_counter!(
        REPLAYED_EVENTS,
        "delivery records written to sockets from the log (catch-up)"
    );
    describe_histogram!(
        REPLAY_DURATION,
        metrics::Unit::Seconds,
        "time to replay a device's backlog"
    );
    describe_counter!(
        LOG_READS,
        "reads of a user's delivery log, by how: walked back record by record, or scanned for (a long or broken chain)"
    );
    describe_gauge!(ACTIVE_USERS, "users with a connection to this gateway");
    // Series that exist from the start, so a dashboard shows 0 rather than
    // no data.
    for counter in [CONNECTIONS_OPENED, REPLAYED_EVENTS] {
        counter!(counter).increment(0);
    }
    for gauge in [CONNECTIONS_OPEN, ACTIVE_USERS] {
        gauge!(gauge).increment(0.0);
    }
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug)]
pub enum Closed {
    /// The client closed it or the network dropped it.
    Client,
    /// The server closed it (shutdown, slow reader, replaced, revoked).
    Server(&'static str),
}

pub fn connection_opened() {
    counter!(CONNECTIONS_OPENED).increment(1);
    gauge!(CONNECTIONS_OPEN).increment(1.0);
}

pub fn connection_closed(how: Closed) {
    let reason = match how {
        Closed::Client => "client",
        Closed::Server(reason) => reason,
    };
    counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
    gauge!(CONNECTIONS_OPEN).decrement(1.0);
}

pub fn frame_received(command: &'static str) {
    counter!(FRAMES_RECEIVED, "event" => command).increment(1);
}

pub fn frame_sent(kind: &'static str) {
    counter!(FRAMES_SENT, "event" => kind).increment(1);
}

pub fn accepted(kind: &'static str) {
    counter!(MESSAGES_ACCEPTED, "kind" => kind).increment(1);
}

pub fn lookup_skipped() {
    counter!(LOOKUPS_SKIPPED).increment(1);
}

pub fn publish_retried() {
    counter!(PUBLISH_RETRIES).increment(1);
}

pub fn live_resync(cause: &'static str) {
    counter!(LIVE_RESYNCS, "cause" => cause).increment(1);
}

pub fn error(code: &'static str) {
    counter!(ERRORS, "code" => code).increment(1);
}

pub fn http_request(status: u16) {
    counter!(HTTP_REQUESTS, "status" => status.to_string()).increment(1);
}

pub fn accept_latency(elapsed: Duration) {
    histogram!(ACCEPT_LATENCY).record(elapsed.as_secs_f64());
}

/// How a record reached the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Live,
    Replay,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Live => "live",
            Path::Replay => "replay",
        }
    }
}

pub fn delivered(path: Path, seconds_since_accept: f64) {
    histogram!(DELIVERY_LATENCY, "path" => path.as_str()).record(seconds_since_accept);
}

pub fn replayed(events: usize, elapsed: Duration) {
    counter!(REPLAYED_EVENTS).increment(events as u64);
    histogram!(REPLAY_DURATION).record(elapsed.as_secs_f64());
}

pub fn log_read(how: &'static str) {
    counter!(LOG_READS, "how" => how).increment(1);
}

pub fn active_users(users: usize) {
    gauge!(ACTIVE_USERS).set(users as f64);
}
