//! Publishing delivery records: each event serialised once, published to
//! every recipient's `deliver.<user>` in `CHAT` order with a `Nats-Msg-Id`
//! that makes a repeated fan-out a no-op, acks awaited together.

use crate::projection::Fanout;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use futures::future::try_join_all;
use natter_core::subjects;

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("cannot encode a delivery record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("publishing a delivery record failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
}

/// Publishes every fan-out and waits until JetStream stored all of them.
/// Returns how many records were published.
pub async fn publish(js: &jetstream::Context, fanouts: &[Fanout]) -> Result<usize, FanoutError> {
    let mut acks: Vec<PublishAckFuture> = Vec::new();
    for fanout in fanouts {
        let payload = Bytes::from(serde_json::to_vec(&fanout.event)?);
        for recipient in &fanout.recipients {
            let message = PublishMessage::build()
                .payload(payload.clone())
                .message_id(fanout.message_id(*recipient));
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
