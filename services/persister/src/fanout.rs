//! Publishing delivery records to every recipient's `deliver.<user>`, in
//! `CHAT` order, with a `Nats-Msg-Id` that makes a repeated fan-out a no-op.
//!
//! Each event is serialised once, at most a window of acks is outstanding,
//! and each record carries its message's `traceparent` and acceptance time
//! in headers.

use crate::projection::Fanout;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
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
/// At most `window` acks are outstanding: the context admits only so many
/// (`NATS_PUBLISH_WINDOW`, of which this is the persister's only user), and
/// a publish that waited for room while the acks holding it went unpolled
/// would wait forever. `provenance` is keyed by `CHAT` sequence. Returns
/// how many records were published.
pub async fn publish(
    js: &jetstream::Context,
    window: usize,
    fanouts: &[Fanout],
    provenance: &HashMap<u64, Provenance>,
) -> Result<usize, FanoutError> {
    let window = window.max(1);
    let mut acks = FuturesUnordered::new();
    let mut published = 0;
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
            while acks.len() >= window {
                if let Some(ack) = acks.next().await {
                    ack?;
                }
            }
            let ack: PublishAckFuture = js
                .send_publish(subjects::deliver(*recipient), message)
                .await?;
            acks.push(ack.into_future());
            published += 1;
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(published)
}
