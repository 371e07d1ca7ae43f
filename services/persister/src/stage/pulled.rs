//! A `CHAT` message as the projection stage pulled it: decoded, with its
//! delivery count and its span in the message's trace.

use crate::projection::Record;
use async_nats::jetstream;
use natter_core::ChatRecord;
use natter_runtime::trace::{self, Trace};

/// A pulled message with its decoded record.
pub struct Pulled {
    pub message: jetstream::Message,
    pub chat_seq: u64,
    pub delivered: i64,
    /// `None` once the record was settled some other way (dead-lettered).
    pub record: Option<Result<Record, String>>,
    /// This record's part of its message's trace, open until it is settled.
    pub trace: Trace,
    /// `trace` as a `traceparent`, for the delivery records it fans out to.
    pub traceparent: Option<String>,
}

impl Pulled {
    /// Decodes `message`; a record that does not decode is kept with the
    /// reason, to be dead-lettered.
    pub fn decode(message: jetstream::Message) -> Pulled {
        let (chat_seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(_) => (0, 1),
        };
        let record = match serde_json::from_slice::<ChatRecord>(&message.payload) {
            Ok(r) => Ok(Record {
                chat_seq,
                event: r.event,
            }),
            Err(e) => Err(format!("undecodable record: {e}")),
        };
        let kind = match &record {
            Ok(r) => r.event.kind(),
            Err(_) => "undecodable",
        };
        let trace = Trace::continue_from(
            trace::from_headers(message.headers.as_ref()),
            || tracing::info_span!(parent: None, "persister.persist", chat_seq, delivered, kind),
        );
        let traceparent = trace.traceparent();
        Pulled {
            message,
            chat_seq,
            delivered,
            record: Some(record),
            trace,
            traceparent,
        }
    }

    /// The record, if it decoded and is not settled yet.
    pub fn record(&self) -> Option<&Record> {
        self.record.as_ref().and_then(|r| r.as_ref().ok())
    }
}
