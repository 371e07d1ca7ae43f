//! The delivery types every part of [`super`] shares: a stored record of
//! a user's log, what the hub pushes to a session, and why a session closes.

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use natter_core::MessageId;
use natter_core::delivery::{ACCEPTED_AT_HEADER, CONTENT_OF_HEADER, PREVIOUS_HEADER};
use std::sync::Arc;

/// A record of a user's delivery log.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Its `DELIVERY` sequence: the cursor a client acks.
    pub seq: u64,
    /// The sequence of the user's previous record (0 for the first), when
    /// known: a live record whose `last_seq` is not the last one a session
    /// sent reveals a gap, and a replay walks back along them. The server
    /// adds it to a live record; a stored one carries it from the
    /// persister.
    pub last_seq: Option<u64>,
    pub payload: Bytes,
    /// The `traceparent` of the fan-out that stored it: delivery continues
    /// the message's trace.
    pub traceparent: Option<String>,
    /// When its event was accepted, for the delivery latency.
    pub accepted_at: Option<DateTime<Utc>>,
    /// The message whose content the record leaves out, for a record
    /// stored by reference: the content is filled in before it is sent.
    pub content_of: Option<MessageId>,
}

impl Stored {
    pub fn new(
        seq: u64,
        last_seq: Option<u64>,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Self {
        Self {
            seq,
            last_seq: last_seq.or_else(|| header_u64(headers?, PREVIOUS_HEADER)),
            payload,
            traceparent: natter_runtime::trace::from_headers(headers).map(str::to_owned),
            accepted_at: headers
                .and_then(|h| h.get(ACCEPTED_AT_HEADER))
                .and_then(|v| v.as_str().parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_micros),
            content_of: headers
                .and_then(|h| h.get(CONTENT_OF_HEADER))
                .and_then(|v| v.as_str().parse().ok()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("NATS request failed: {0}")]
    Nats(String),
    #[error("the delivery log did not answer in time")]
    Timeout,
    #[error("PostgreSQL request failed: {0}")]
    Database(String),
    #[error("unexpected reply from the delivery log: {0}")]
    Protocol(String),
}

/// What the hub pushes to a session. Small, because every session's queue
/// holds a block of these from the start: an idle socket pays for it.
#[derive(Clone, Debug)]
pub enum Push {
    /// A record of the user's delivery log, shared by the user's sessions.
    Record(Arc<Stored>),
    /// An ephemeral frame (typing, presence), dropped if the session is behind.
    Frame(Arc<str>),
}

/// Why the server closes a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: &'static str,
}

pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().parse().ok()
}
