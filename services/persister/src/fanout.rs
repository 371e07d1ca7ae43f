//! Publishing delivery records: each event serialised once, published to
//! every recipient's `deliver.<user>` in `CHAT` order with a `Nats-Msg-Id`
//! that makes a repeated fan-out a no-op, acks awaited together. Each record
//! carries its message's `traceparent` and acceptance time in headers.

use crate::projection::Fanout;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use natter_core::delivery::ACCEPTED_AT_HEADER;
use natter_core::subjects;
use std::collections::HashMap;

/// Where a `CHAT` record came from: the trace its delivery continues and
/// when it was accepted.
#[derive(Clone, Debug)]
pub struct Provenance {
    pub traceparent: Option<String>,
    pub accepted_at: DateTime<Utc>,
    /// The record's span in the persister, for its log lines.
    pub span: tracing::Span,
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("cannot encode a delivery record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("publishing a delivery record failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
}

/// Publishes every fan-out and waits until JetStream stored all of them.
/// `provenance` is keyed by `CHAT` sequence. Returns how many records were
/// published.
pub async fn publish(
    js: &jetstream::Context,
    fanouts: &[Fanout],
    provenance: &HashMap<u64, Provenance>,
) -> Result<usize, FanoutError> {
    let mut acks: Vec<PublishAckFuture> = Vec::new();
    for fanout in fanouts {
        let payload = Bytes::from(serde_json::to_vec(&fanout.event)?);
        let origin = provenance.get(&fanout.chat_seq);
        let accepted_at = origin.map(|o| o.accepted_at.timestamp_micros().to_string());
        let traceparent = origin.and_then(|o| o.traceparent.as_deref());
        for recipient in &fanout.recipients {
            let mut message = PublishMessage::build()
                .payload(payload.clone())
                .message_id(fanout.message_id(*recipient));
            if let Some(traceparent) = traceparent {
                message = message.header(natter_runtime::trace::TRACEPARENT, traceparent);
            }
            if let Some(accepted_at) = &accepted_at {
                message = message.header(ACCEPTED_AT_HEADER, accepted_at.as_str());
            }
            acks.push(
                js.send_publish(subjects::deliver(*recipient), message)
                    .await?,
            );
        }
    }
    let published = acks.len();
    try_join_all(acks.into_iter().map(|ack| async move { ack.await })).await?;
    Ok(published)
}
